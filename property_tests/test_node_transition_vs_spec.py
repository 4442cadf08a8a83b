"""The node's block transition against the spec's (hypothesis stateful testing).

Model: the spec's `state_transition` and `apply_transaction`
(spec/state_transition.py). System under test: the node's
(node/transition.py: the spec's rules on the node's primitives: shallow state
copies, libsecp256k1 signatures with remembered verdicts, the incremental
state root). Both start from the toy
chain's genesis (`ToyChain`: real keys, signatures, commitments and a real
toy training step to replay) and keep a tree of valid blocks, each with the
spec's post-state and the node's (so the node's states are the node's own
results, chained, as in `Chain`).

Rules mine blocks on any known block (forks) carrying random transactions of
every kind (transfer, stake, unstake, submit task, cancel task, evaluation
result, equivocation and fraud disputes, false accusations), each possibly
broken (nonce, fee, chain id, signature, key, amount, role, task, scores),
on the genesis task or on a client task in training; mutate blocks (state
root, signatures, height, timestamp, target, nonce, dropped transaction);
and apply single transactions and mempool-like sequences (the miner's use of
`apply_transaction`). Each block is judged by the spec, by the node, and, when
`precheck_block` passes it, by the node again with the verdicts precheck left. After every step:

- the verdicts agree, and an invalid block or transaction has the spec's reason;
- a valid block's node post-state equals the spec's, and the node's
  incremental root equals the spec's `compute_state_root`;
- every state in the tree still equals what it was (the node copies, never
  modifies, the parent state).
"""
from __future__ import annotations

import copy
import dataclasses
import os

from hypothesis import event, note, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from bws.node import transition as N
from bws.node.review import LOCKSTEP_COMMITMENT, TOY_CONFIG, ReviewError, ToyChain
from bws.node.validation import BlockRejected, precheck_block
from bws.spec import containers as C
from bws.spec import state_transition as T
from bws.spec.constants import ROLES, TASK_EVALUATION, TASK_TRAINING
from bws.spec.hashing import hash_bytes
from bws.spec.presets import COIN
from property_tests.strategies import flip_bit, high_s, with_proof_signature

TOY = ToyChain(dataclasses.replace(TOY_CONFIG, stake_lock_period=2))  # stakes are paid back within an example
ACTORS = ToyChain.MINERS + ToyChain.OTHERS
NAME_OF = {address: name for name, address in TOY.address.items()}
# Honest blocks slash nobody (slashed miners would stop the chain); the others may.
HONEST_KINDS = ("transfer", "transfer", "stake", "unstake", "unstake", "submit_task", "submit_task", "cancel_task",
                "evaluation", "evaluation", "false_accusation")  # repeats: weights
TRANSACTION_KINDS = HONEST_KINDS + ("equivocation", "fraud", "broken_link")
ENVELOPE_MUTATIONS = ("nonce_ahead", "nonce_used", "fee_below_minimum", "wrong_chain_id", "bad_signature", "high_s",
                      "key_not_senders")
BLOCK_MUTATIONS = ("state_root", "iteration_signature", "high_s_iteration_signature", "height", "timestamp", "target",
                   "nonce", "drop_transaction", "transaction_signature")


def build_prefix() -> list[tuple[C.Block, C.State]]:
    """Five valid blocks that take a client task to EVALUATION (deadline at
    height 10), so that short examples reach evaluation results, finalization
    and expiry: submitted (2), group selected (3), training with an iteration
    recorded (4), evaluation (5)."""
    state, parent = TOY.genesis_state, TOY.genesis_block
    blocks = []

    def extend(miner: str, transactions=(), task_id=None):
        nonlocal state, parent
        state, parent = TOY.extend(state, parent, miner, list(transactions), task_id=task_id)
        blocks.append((parent, state))

    extend("alice")
    extend("bob", [TOY.transaction(state, "client", TOY.submit_task_body(iterations=20, deadline=10))])
    extend("carol")
    (client_task_id,) = (task_id for task_id in state.tasks if task_id != TOY.genesis_task_id)
    extend(NAME_OF[state.tasks[client_task_id].members[0].address], task_id=client_task_id)
    extend("alice")
    assert state.tasks[client_task_id].status == TASK_EVALUATION
    return blocks


PREFIX = build_prefix()


def outcome(run):
    """(post-state, None) or (None, the reason it is invalid)."""
    try:
        return run(), None
    except (T.InvalidBlock, T.InvalidTransaction) as error:
        return None, error.reason


class TransitionVersusSpec(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        # Every valid block: (block, the spec's post-state, the node's post-state),
        # never the same state object on both sides.
        self.tree: list[tuple[C.Block, C.State, C.State]] = [
            (TOY.genesis_block, TOY.genesis_state, copy.deepcopy(TOY.genesis_state))]
        for block, spec_state in PREFIX:
            self.tree.append((block, spec_state, N.state_transition(self.tree[-1][2], block, TOY.oracles)))

    # -- comparing ------------------------------------------------------------------
    def _same(self, node, spec, what: str) -> None:
        (node_post, node_reason), (spec_post, spec_reason) = node, spec
        assert node_reason == spec_reason, f"{what}: node says {node_reason!r}, spec says {spec_reason!r}"
        if spec_post is not None:
            assert node_post == spec_post, f"{what}: the node's post-state differs from the spec's"
            assert N.compute_state_root(node_post) == T.compute_state_root(spec_post), f"{what}: state root differs"

    def judge_block(self, index: int, block: C.Block) -> None:
        """The spec's verdict against the node's, and the prechecked node's
        when precheck_block passes the block; a valid block joins the tree."""
        _, spec_state, node_state = self.tree[index]
        spec = outcome(lambda: T.state_transition(spec_state, block, TOY.oracles))
        node = outcome(lambda: N.state_transition(node_state, block, TOY.oracles))
        note(f"block at height {block.header.height}: spec {spec[1] or 'valid'}")
        event(f"block: {spec[1] or 'valid'}")
        self._same(node, spec, "block")
        try:
            precheck_block(block, spec_state.config)
        except BlockRejected as error:
            note(f"precheck: {error.reason}")
        else:
            node = outcome(lambda: N.state_transition(node_state, block, TOY.oracles))
            self._same(node, spec, "prechecked block")
        if spec[0] is not None:
            # A node that replays nothing (no verifier role) reaches the same state from the same valid
            # block: claimed roots for iterations, the state root's outcome for fraud proofs.
            trusting = outcome(lambda: N.trusting_transition(node_state, block))
            self._same(trusting, spec, "block without replay")
            self.tree.append((block, spec[0], node[0]))
            for signed in block.transactions:
                body = signed.transaction.body
                event(f"valid block carries a {type(getattr(body, 'evidence', body)).__name__}")
            if any(stake.release_height == spec[0].height for stake in spec_state.stakes.values()):
                event("a stake is paid back")
            for task_id, task in spec[0].tasks.items():
                before = spec_state.tasks.get(task_id)
                if before is None or before.status != task.status:
                    event(f"a task enters status {task.status}")

    # -- transactions -----------------------------------------------------------------
    def _draw_transactions(self, data, state: C.State, honest: bool) -> list[C.SignedTransaction]:
        """Up to 3 transactions to apply in order on `state`. Honest ones are
        drawn until the spec accepts them (a few tries each; one that never
        does is left out), so that blocks drive tasks through their lifecycle."""
        chosen, staged = [], state
        for _ in range(data.draw(st.integers(0, 3), label="transactions")):
            for _ in range(4 if honest else 1):
                signed = self._draw_transaction(data, staged, honest)
                post, reason = outcome(lambda: T.apply_transaction(staged, signed, TOY.address["sam"], TOY.oracles))
                if post is not None or not honest:
                    chosen.append(signed)
                    staged = post or staged
                    break
        return chosen

    def _draw_transaction(self, data, state: C.State, honest: bool) -> C.SignedTransaction:
        """A transaction of a drawn kind and sender with the sender's next
        nonce; an `honest` one has a sound envelope and plausible fields, any
        other may break anything."""
        def pick(label, sound, broken):
            return data.draw(st.sampled_from(sound if honest else sound + broken), label=label)

        kind = data.draw(st.sampled_from(HONEST_KINDS if honest else TRANSACTION_KINDS), label="kind")
        sender = data.draw(st.sampled_from(ACTORS), label="sender")
        in_evaluation = sorted(task_id for task_id, task in state.tasks.items() if task.status == TASK_EVALUATION)
        tasks = in_evaluation if honest and kind == "evaluation" and in_evaluation else sorted(state.tasks)
        task_id = data.draw(st.sampled_from(tasks), label="task") if tasks else hash_bytes(b"no task")
        task = state.tasks[task_id] if tasks else None
        if kind == "transfer":
            body = C.Transfer(recipient=TOY.address[data.draw(st.sampled_from(ACTORS), label="recipient")],
                              amount=pick("amount", [1, COIN], [0, 2000 * COIN]))
        elif kind == "stake":
            body = C.Stake(role=pick("role", list(ROLES), [len(ROLES)]),
                           amount=pick("amount", [COIN, 10 * COIN], [0, 2000 * COIN]))
        elif kind == "unstake":
            body = C.Unstake(role=data.draw(st.sampled_from(ROLES), label="role"))
        elif kind == "submit_task":
            sender = pick("client", ["client"], [sender])
            body = TOY.submit_task_body(
                group_size=data.draw(st.integers(1, 3), label="group size"),
                iterations=pick("iterations", [2, 3, 4], [1]),
                deadline=int(state.height) + pick("deadline after", [9, 12], [5, 8]),
                payment=pick("payment", [10 * COIN], [0]))
        elif kind == "cancel_task":
            if task is not None and pick("the client cancels", [True], [False]):
                sender = NAME_OF.get(task.client, sender)
            body = C.CancelTask(task_id=task_id)
        elif kind == "evaluation":
            if task is not None and task.evaluators and pick("an evaluator reports", [True], [False]):
                sender = NAME_OF.get(task.evaluators[0], sender)
            honest_result = (TOY.evaluation_result(state, task_id) if task is not None and task.status == TASK_EVALUATION
                             else C.EvaluationResult(task_id=task_id, models=[]))
            models = list(honest_result.models)
            if models and pick("a score off by", [0], [1, -1]) != 0:
                models[0] = dataclasses.replace(models[0], correct=max(0, int(models[0].correct) - 1)
                                                if models[0].correct else 1)
            body = dataclasses.replace(honest_result, models=pick("models", [models], [models[1:], models[::-1]]))
        else:
            body = C.Dispute(evidence=self._draw_evidence(data, state, kind))
        mutation = pick("envelope mutation", ["none"], list(ENVELOPE_MUTATIONS))
        address = TOY.address[sender]
        account = state.accounts.get(address)
        nonce = account.nonce if account else 0
        if mutation == "nonce_ahead" or (mutation == "nonce_used" and nonce > 0):
            nonce += 1 if mutation == "nonce_ahead" else -1
        signed = TOY.transaction(state, sender, body, fee=0 if mutation == "fee_below_minimum" else 1, nonce=nonce,
                                 chain_id=state.config.chain_id + 1 if mutation == "wrong_chain_id" else None)
        if mutation == "bad_signature":
            signed = dataclasses.replace(signed, signature=flip_bit(signed.signature, 40))
        elif mutation == "high_s":
            signed = dataclasses.replace(signed, signature=high_s(signed.signature))
        elif mutation == "key_not_senders":
            signed = dataclasses.replace(signed, public_key=TOY.transaction(state, "eve", body).public_key)
        note(f"transaction: {kind} by {sender} ({mutation})")
        return signed

    def _draw_evidence(self, data, state: C.State, kind: str):
        """Evidence against a drawn member of the genesis task, at a drawn iteration."""
        task = state.tasks[TOY.genesis_task_id]
        member_index = data.draw(st.integers(0, len(task.members) - 1), label="accused member")
        miner = NAME_OF[task.members[member_index].address]
        iteration = data.draw(st.integers(1, 6), label="iteration")
        first = TOY.honest_message(miner, TOY.genesis_task_id, task, iteration, hash_bytes(b"header A"))
        work = first.message.work
        if kind == "equivocation":
            second = TOY.honest_message(miner, TOY.genesis_task_id, task, iteration, hash_bytes(
                b"header B" if data.draw(st.booleans(), label="different headers") else b"header A"))
            return C.Equivocation(first=first, second=second)
        if kind == "false_accusation":
            return C.FraudProof(message=first)
        if kind == "broken_link":   # the toy's lockstep messages chain; a made-up state before does not
            earlier, later = (TOY.honest_message(miner, TOY.genesis_task_id, task, i, LOCKSTEP_COMMITMENT)
                              for i in (iteration, iteration + 1))
            if data.draw(st.booleans(), label="a state never trained to"):
                later = TOY.signed_message(miner, dataclasses.replace(
                    later.message.work, state_before_root=hash_bytes(b"a state never trained to")), LOCKSTEP_COMMITMENT)
            return C.BrokenLink(earlier=earlier, later=later)
        forged = data.draw(st.sampled_from(("update_root", "state_before_root")), label="forged field")
        return C.FraudProof(message=TOY.signed_message(
            miner, dataclasses.replace(work, **{forged: hash_bytes(b"forged " + forged.encode())}),
            hash_bytes(b"header A")))

    # -- rules ------------------------------------------------------------------------
    @rule(on_tip=st.sampled_from([True, True, True, False]), parent=st.integers(0, 10**6), honest=st.booleans(),
          spacing=st.integers(1, 30), data=st.data())
    def mine_block(self, on_tip, parent, honest, spacing, data):
        """A block on the newest block (or on any: a fork); an `honest` one
        carries honest transactions and is not mutated."""
        index = len(self.tree) - 1 if on_tip else parent % len(self.tree)
        parent_block, state, _ = self.tree[index]
        training = sorted(task_id for task_id, task in state.tasks.items() if task.status == TASK_TRAINING)
        task_id = data.draw(st.sampled_from(training), label="task mined") if training else TOY.genesis_task_id
        members = state.tasks[task_id].members
        miner = NAME_OF[data.draw(st.sampled_from([m.address for m in members]), label="miner")]
        transactions = self._draw_transactions(data, state, honest)
        timestamp = parent_block.header.timestamp + spacing
        try:
            try:
                block = TOY.mine(state, parent_block, miner, transactions, task_id=task_id, timestamp=timestamp)
            except AssertionError:  # the spec refuses the block: judge it unsealed
                block = TOY.mine(state, parent_block, miner, transactions, task_id=task_id, timestamp=timestamp,
                                 seal=False)
        except ReviewError as error:  # no iteration left to mine
            note(str(error))
            return
        mutation = "none" if honest else data.draw(st.sampled_from(("none",) + BLOCK_MUTATIONS), label="block mutation")
        note(f"{miner} mines on block {index} (height {state.height}), mutation {mutation}")
        self.judge_block(index, self._mutate(block, mutation, parent_block))

    @staticmethod
    def _mutate(block: C.Block, mutation: str, parent: C.Block) -> C.Block:
        header, proof = block.header, block.proofs[0]
        changes = {"state_root": dict(state_root=flip_bit(header.state_root)), "height": dict(height=header.height + 1),
                   "timestamp": dict(timestamp=parent.header.timestamp), "target": dict(target=header.target // 2),
                   "nonce": dict(nonce=flip_bit(header.nonce))}
        if mutation in changes:
            return dataclasses.replace(block, header=dataclasses.replace(header, **changes[mutation]))
        if mutation == "iteration_signature":
            return with_proof_signature(block, "message", flip_bit(proof.message.signature, 40))
        if mutation == "high_s_iteration_signature":
            return with_proof_signature(block, "message", high_s(proof.message.signature))
        if mutation == "drop_transaction" and block.transactions:
            return dataclasses.replace(block, transactions=list(block.transactions)[1:])
        if mutation == "transaction_signature" and block.transactions:
            first = block.transactions[0]
            first = dataclasses.replace(first, signature=flip_bit(first.signature, 40))
            return dataclasses.replace(block, transactions=[first] + list(block.transactions)[1:])
        return block

    @rule(parent=st.integers(0, 10**6), honest=st.booleans(), data=st.data())
    def apply_transactions(self, parent, honest, data):
        """A mempool-like sequence applied one by one on the previous result,
        as the miner selects transactions: each step judged by both."""
        _, spec_state, node_state = self.tree[parent % len(self.tree)]
        fee_recipient = TOY.address[data.draw(st.sampled_from(ACTORS), label="fee recipient")]
        for signed in self._draw_transactions(data, spec_state, honest):
            spec = outcome(lambda: T.apply_transaction(spec_state, signed, fee_recipient, TOY.oracles))
            node = outcome(lambda: N.apply_transaction(node_state, signed, fee_recipient, TOY.oracles))
            event(f"transaction: {spec[1] or 'valid'}")
            self._same(node, spec, "transaction")
            if spec[0] is not None:
                spec_state, node_state = spec[0], node[0]

    # -- invariants -------------------------------------------------------------------
    @invariant()
    def states_never_modified(self):
        for height, (_, spec_state, node_state) in enumerate(self.tree):
            assert node_state == spec_state, f"the node's state {height} in the tree changed after it was computed"


_NIGHTLY = os.environ.get("HYPOTHESIS_PROFILE") == "nightly"
TransitionVersusSpec.TestCase.settings = settings(stateful_step_count=60 if _NIGHTLY else 30,
                                                  max_examples=300 if _NIGHTLY else 10)
test_node_transition_follows_the_spec = TransitionVersusSpec.TestCase
