"""Review tooling for the protocol spec: render it as one Markdown document,
diff it between two git revisions as a list of rule changes, and generate or
check its test vectors (spec/vectors/README.md).

The vectors come from a small, real chain (`ToyChain`): real keys and
signatures, real tensor commitments and Merkle proofs, real PoUW blocks; only
the training iteration is a toy (`toy_iteration`, a few integer ops), since
the spec takes the replay as a parameter and the engine's replay is tested
against its own vectors.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import hashlib
import inspect
import json
import subprocess
from pathlib import Path

import numpy as np

from bws.spec import containers as C
from bws.spec.constants import MAX_FRAUD_PROOFS_PER_BLOCK, ROLE_EVALUATOR, ROLE_MINER, ROLE_SUPERVISOR, TASK_TRAINING
from bws.spec.crypto import CURVE_ORDER, compute_address, get_public_key
from bws.spec.encoding import DecodeError, decode, encode
from bws.spec.genesis import create_genesis_state, get_genesis_block
from bws.spec.hashing import compute_merkle_proof, compute_merkle_root, compute_tensors_root, hash_bytes
from bws.spec.pouw import (
    compute_header_commitment, compute_input_mask_seed, compute_message_digest, compute_nonce, compute_nonce_seed,
    get_input_mask_seed, get_masked_batch, get_nonce_allowance, is_valid_pow, sign_iteration_message,
)
from bws.spec.presets import COIN, DEVNET, PRESETS
from bws.spec.state_transition import (
    InvalidBlock, InvalidTransaction, Oracles, ReplayUnavailable, apply_transaction, compute_block_hash,
    compute_state_root, compute_transactions_root, process_block, sign_transaction, state_transition,
)
from bws.spec.tasks import compute_batch_index, get_member_index

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec"


class ReviewError(Exception):
    """A review command could not do its work (bad revision, unreadable file, failed vector)."""


# ---------------------------------------------------------------------------
# A small real chain over a toy training iteration
# ---------------------------------------------------------------------------
TOY_INPUTS = 64  # input values an example: a batch has 256, so a header's input mask drops some (all but surely)
TOY_MODEL = {"input_shape": [TOY_INPUTS], "layers": [{"type": "dense", "units": 4, "activation": "relu", "use_bias": True,
                                              "kernel_initializer": "glorot_uniform", "bias_initializer": "zeros"}],
             "loss": {"type": "mse"}, "optimizer": {"type": "sgd", "learning_rate": 0.01, "momentum": 0.0,
                                                     "nesterov": False}, "slices": 2}
TOY_BATCH_SIZE = 4
TOY_NUM_BATCHES = 1200
TOY_GENESIS_ITERATIONS = 400  # x 3 members: every batch trained once
TOY_CONFIG = dataclasses.replace(DEVNET, initial_target=2**255, work_units_per_nonce=4096)
"""Devnet with a target any second hash meets and an allowance of 3 nonces
for the toy task, so a test chain mines a block every iteration or two."""


TOY_MAX_LATE_SECONDS = 16
LOCKSTEP_COMMITMENT = hash_bytes(b"toy: the header of an iteration that mines no block")


def toy_task_definition(iterations: int = TOY_GENESIS_ITERATIONS) -> bytes:
    """Canonical JSON of the toy task (what bws.templates would produce for it)."""
    definition = {"dataset": {"batch_size": TOY_BATCH_SIZE, "name": "toy"}, "iterations": iterations,
                  "model": TOY_MODEL, "template": "toy"}
    return json.dumps(definition, sort_keys=True, separators=(",", ":")).encode()


def toy_iteration(state: dict, batch: dict, peer_updates: list[dict]) -> tuple[dict, dict]:
    """One toy training step on int32 tensors: update = (Σx - n·w) >> 3, the
    new weights are w + update + Σ peer updates, the step counter grows by one.
    Returns (new state, update)."""
    weights, x = state["w"], batch["x"]
    update = (x.sum(axis=0, dtype=np.int64) - x.shape[0] * weights.astype(np.int64)) >> 3
    new_weights = weights.astype(np.int64) + update + sum((u["w"].astype(np.int64) for u in peer_updates), 0)
    return ({"w": new_weights.astype(np.int32), "step": np.asarray(state["step"] + 1, np.int32)},
            {"w": update.astype(np.int32)})


TOY_TEST_EXAMPLES = 16


def toy_test_set() -> dict:
    """The toy task's test set: inputs with values in [-8, 8) and labels 0 or 1."""
    values = np.frombuffer(hashlib.shake_256(b"bws toy test set").digest(TOY_TEST_EXAMPLES * (TOY_INPUTS + 1)), np.uint8)
    x = (values[:TOY_TEST_EXAMPLES * TOY_INPUTS].astype(np.int32) % 16 - 8).reshape(TOY_TEST_EXAMPLES, TOY_INPUTS)
    return {"x": x, "y": (values[TOY_TEST_EXAMPLES * TOY_INPUTS:] % 2).astype(np.int32)}


def toy_count_correct(state: dict, test_set: dict) -> int:
    """The toy model's score (the spec's `Evaluate`): it predicts 1 where x · w ≥ 0."""
    predictions = test_set["x"].astype(np.int64) @ state["w"].astype(np.int64) >= 0
    return int(np.sum(predictions == (test_set["y"] == 1)))


class ToyData:
    """Content-addressed tensors (model states, batches, updates, the test set)
    by root: what a verifier fetches from the network to replay an iteration
    or score a model."""

    def __init__(self):
        self.by_root: dict[bytes, dict] = {}

    def put(self, tensors: dict) -> bytes:
        root = compute_tensors_root(tensors)
        self.by_root[root] = tensors
        return root

    def get(self, root: bytes) -> dict:
        if root not in self.by_root:
            raise ReplayUnavailable(f"no tensors with root {root.hex()[:16]}")
        return self.by_root[root]

    def replay(self, task: C.Task, message: C.IterationMessage) -> C.ReplayResult:
        """The toy replay: fetch the inputs by root, run toy_iteration as step
        `work.iteration` on the batch masked for the message's header (the
        spec's `Replay`), return the roots."""
        work = message.work
        state = {**self.get(work.state_before_root), "step": np.asarray(work.iteration, np.int32)}
        new_state, update = toy_iteration(state, get_masked_batch(self.get(work.batch_root), get_input_mask_seed(message)),
                                          [self.get(root) for root in work.peer_update_roots])
        return C.ReplayResult(update_root=compute_tensors_root(update), state_after_root=compute_tensors_root(new_state))

    def evaluate(self, task: C.Task, scored: C.ScoredModel) -> int:
        """The toy evaluation: fetch the test set and the model by root, count what it gets right."""
        return toy_count_correct(self.get(scored.final_message.message.work.state_after_root),
                                 self.get(task.test_set_hash))


def toy_secret_key(name: str) -> bytes:
    """A deterministic secp256k1 secret key for a named test actor."""
    value = int.from_bytes(hashlib.sha256(b"bws-toy-key/" + name.encode()).digest(), "big") % (CURVE_ORDER - 1) + 1
    return value.to_bytes(32, "big")


class ToyChain:
    """Actors with keys, a genesis with one long-running task (members alice,
    bob, carol; supervisor sam; evaluator eve), the toy dataset, and helpers to
    sign transactions and mine valid blocks."""

    MINERS = ("alice", "bob", "carol", "dave", "frank")
    OTHERS = ("client", "sam", "eve", "mallory")

    def __init__(self, config: C.ChainConfig = TOY_CONFIG, genesis_timestamp: int = 1_700_000_000):
        self.config = config
        self.data = ToyData()
        self.keys = {name: toy_secret_key(name) for name in self.MINERS + self.OTHERS}
        self.address = {name: compute_address(get_public_key(key)) for name, key in self.keys.items()}
        batches = [{"x": np.arange(TOY_BATCH_SIZE * TOY_INPUTS, dtype=np.int32).reshape(TOY_BATCH_SIZE, TOY_INPUTS)
                    * (b + 1) * 8}
                   for b in range(TOY_NUM_BATCHES)]
        self.batch_roots = [self.data.put(batch) for batch in batches]
        self.dataset_root = compute_merkle_root(self.batch_roots)
        self.initial_state_root = self.data.put({"w": np.zeros(TOY_INPUTS, dtype=np.int32), "step": np.asarray(0, np.int32)})
        self.test_set_hash = self.data.put(toy_test_set())
        self.iteration_cache: dict = {}
        a = self.address
        self.genesis = C.GenesisConfig(
            config=config, timestamp=genesis_timestamp,
            accounts=[C.GenesisAccount(address=a[n], balance=1000 * COIN) for n in self.MINERS + self.OTHERS],
            stakes=[C.GenesisStake(owner=a[n], role=ROLE_MINER, amount=100 * COIN) for n in self.MINERS]
            + [C.GenesisStake(owner=a["sam"], role=ROLE_SUPERVISOR, amount=100 * COIN),
               C.GenesisStake(owner=a["eve"], role=ROLE_EVALUATOR, amount=100 * COIN)],
            tasks=[C.GenesisTask(
                client=a["client"], task_definition=toy_task_definition(), dataset_root=self.dataset_root,
                num_batches=TOY_NUM_BATCHES, test_set_hash=self.test_set_hash, iterations=TOY_GENESIS_ITERATIONS,
                evaluation_deadline=10**6, payment=0, members=[a["alice"], a["bob"], a["carol"]],
                supervisors=[a["sam"]], evaluators=[a["eve"]])],
        )
        self.genesis_state = create_genesis_state(self.genesis)
        self.genesis_block = get_genesis_block(self.genesis_state)
        self.genesis_task_id = next(iter(self.genesis_state.tasks))

    def replay(self, task: C.Task, message: C.IterationMessage) -> C.ReplayResult:
        return self.data.replay(task, message)

    @property
    def oracles(self) -> Oracles:
        """The toy replay and evaluation, as the spec's transition takes them."""
        return Oracles(replay=self.data.replay, evaluate=self.data.evaluate)

    # --- transactions -----------------------------------------------------
    def transaction(self, state: C.State, sender: str, body, fee: int = 1, nonce: int | None = None,
                    chain_id: int | None = None) -> C.SignedTransaction:
        """`body` signed by `sender` with its next nonce (unless given)."""
        account = state.accounts.get(self.address[sender])
        transaction = C.Transaction(
            chain_id=self.config.chain_id if chain_id is None else chain_id, sender=self.address[sender],
            nonce=(account.nonce if account else 0) if nonce is None else nonce, fee=fee, body=body)
        return sign_transaction(self.keys[sender], transaction)

    def submit_task_body(self, group_size: int = 2, iterations: int = 20, deadline: int = 60,
                         payment: int = 100 * COIN) -> C.SubmitTask:
        """A SubmitTask of the toy task over the toy dataset."""
        return C.SubmitTask(task_definition=toy_task_definition(iterations), dataset_root=self.dataset_root,
                            num_batches=TOY_NUM_BATCHES, test_set_hash=self.test_set_hash, group_size=group_size,
                            iterations=iterations, evaluation_deadline=deadline, payment=payment)

    # --- iterations ---------------------------------------------------------
    def iteration_work(self, task_id: bytes, task: C.Task, iteration: int, member_index: int,
                       header_commitment: bytes = LOCKSTEP_COMMITMENT) -> C.IterationWork:
        """The honest work of a member at an iteration, trained for the header
        whose commitment is given. The whole group is simulated in lockstep:
        each iteration starts from the member's lockstep state and applies
        the others' lockstep updates (iterations that mine no block commit to
        LOCKSTEP_COMMITMENT)."""
        key = (task_id, tuple(bytes(m.address) for m in task.members), iteration, member_index, header_commitment)
        if key not in self.iteration_cache:
            if iteration == 0:
                state_before, peers = self.initial_state_root, []
            else:
                state_before = self.iteration_work(task_id, task, iteration - 1, member_index).state_after_root
                peers = sorted(self.iteration_work(task_id, task, iteration - 1, other).update_root
                               for other in range(len(task.members)) if other != member_index)
            batch_index = compute_batch_index(task, iteration, member_index)
            batch = get_masked_batch(self.data.get(self.batch_roots[batch_index]),
                                     compute_input_mask_seed(task_id, iteration, header_commitment))
            new_state, update = toy_iteration(self.data.get(state_before), batch,
                                              [self.data.get(root) for root in peers])
            self.iteration_cache[key] = C.IterationWork(
                task_id=task_id, iteration=iteration, miner=task.members[member_index].address,
                state_before_root=state_before, batch_index=batch_index, batch_root=self.batch_roots[batch_index],
                batch_proof=compute_merkle_proof(self.batch_roots, batch_index), peer_update_roots=peers,
                update_root=self.data.put(update), state_after_root=self.data.put(new_state), loss=-iteration)
        return self.iteration_cache[key]

    def signed_message(self, miner: str, work: C.IterationWork, header_commitment: bytes) -> C.SignedIterationMessage:
        return sign_iteration_message(self.keys[miner], C.IterationMessage(work=work, header_commitment=header_commitment))

    def honest_message(self, miner: str, task_id: bytes, task: C.Task, iteration: int,
                       header_commitment: bytes) -> C.SignedIterationMessage:
        """`miner`'s honest IT_RES at `iteration`, trained for the header whose commitment is given."""
        work = self.iteration_work(task_id, task, iteration, get_member_index(task, self.address[miner]),
                                   header_commitment)
        return self.signed_message(miner, work, header_commitment)

    def evaluation_result(self, state: C.State, task_id: bytes) -> C.EvaluationResult:
        """An honest evaluator's result for a task in evaluation: each member's
        IT_RES of the task's last iteration (trained in lockstep) with the count
        its model gets right."""
        task = state.tasks[task_id]
        names = {address: name for name, address in self.address.items()}
        finals = [self.honest_message(names[member.address], task_id, task, task.iterations - 1, LOCKSTEP_COMMITMENT)
                  for member in task.members]
        return C.EvaluationResult(task_id=task_id, models=[
            C.ScoredModel(final_message=final, correct=self.data.evaluate(task, C.ScoredModel(final, 0)))
            for final in finals])

    # --- blocks -------------------------------------------------------------
    def header_template(self, state: C.State, parent: C.Block, miner: str, transactions=(),
                        timestamp: int | None = None, task_id: bytes | None = None) -> C.BlockHeader:
        """The committed part of the next header (PoUW fields and state root still zero)."""
        return C.BlockHeader(
            parent_hash=compute_block_hash(parent), height=state.height + 1,
            timestamp=parent.header.timestamp + state.config.target_block_time if timestamp is None else timestamp,
            state_root=bytes(32), transactions_root=compute_transactions_root(transactions),
            miner=self.address[miner], target=state.target, task_id=task_id or self.genesis_task_id, iteration=0,
            message_digest=bytes(32), nonce_index=0, nonce=bytes(32))

    def forge(self, state: C.State, header: C.BlockHeader, miner: str, work: C.IterationWork, transactions=(),
              require_pow: bool = True, header_commitment: bytes | None = None) -> C.Block | None:
        """A block with `header`'s committed fields and IT_RES(work) signed by
        `miner`, committing to that header (or to `header_commitment`), with
        the first nonce of the allowance that meets the target (None if none
        does; the first nonce if not `require_pow`), not yet sealed."""
        message = self.signed_message(miner, work, header_commitment or compute_header_commitment(header))
        seed = compute_nonce_seed(work)
        task = state.tasks.get(work.task_id)
        allowance = get_nonce_allowance(state.config, task) if task else 1
        for j in range(allowance):
            candidate = dataclasses.replace(header, iteration=work.iteration, nonce_index=j,
                                            message_digest=compute_message_digest(message.message),
                                            nonce=compute_nonce(seed, j))
            if is_valid_pow(candidate) or not require_pow:
                return C.Block(header=candidate, transactions=transactions, proofs=[C.PouwProof(message=message)])
        return None

    def mine(self, state: C.State, parent: C.Block, miner: str, transactions=(), task_id: bytes | None = None,
             iteration: int | None = None, timestamp: int | None = None, seal: bool = True) -> C.Block:
        """A block on `parent` (whose post-state is `state`) mined by `miner`
        with its first iteration (from `iteration`, or the first it may use)
        whose nonces meet the target, each trained for this header; sealed
        (valid) unless `seal` is False."""
        template = self.header_template(state, parent, miner, transactions, timestamp, task_id)
        task = state.tasks[template.task_id]
        member_index = get_member_index(task, self.address[miner])
        first = iteration if iteration is not None else task.members[member_index].next_minable_iteration
        # A short task may run out of iterations before one meets the target: then later timestamps are tried.
        for late in range(TOY_MAX_LATE_SECONDS):
            header = dataclasses.replace(template, timestamp=template.timestamp + late)
            for i in range(first, task.iterations if iteration is None else first + 1):
                work = self.iteration_work(header.task_id, task, i, member_index, compute_header_commitment(header))
                block = self.forge(state, header, miner, work, transactions)
                if block is not None:
                    return self.seal(state, block) if seal else block
        raise ReviewError(f"{miner} found no nonce under the target from iteration {first}")

    def seal(self, state: C.State, block: C.Block) -> C.Block:
        """`block` with its header's state root filled in (the root of the state after it)."""
        post = copy.deepcopy(state)
        process_block(post, block, self.oracles)
        return dataclasses.replace(block, header=dataclasses.replace(block.header, state_root=compute_state_root(post)))

    def extend(self, state: C.State, parent: C.Block, miner: str, transactions=(), **kwargs) -> tuple[C.State, C.Block]:
        """Mine a block and apply it; returns (post-state, block)."""
        block = self.mine(state, parent, miner, transactions, **kwargs)
        return state_transition(state, block, self.oracles), block


# ---------------------------------------------------------------------------
# Test vectors
# ---------------------------------------------------------------------------
def make_vector(name: str, kind: str, pre_state: C.State, subject, oracles: Oracles, fee_recipient=None,
                description: str = "") -> dict:
    """Run the spec on one case and record it: the post-state root, or the reason it is invalid.
    The replays and evaluations the case needs are recorded too, so another
    implementation can check itself without the toy trainer."""
    replays, evaluations = {}, {}

    def recording_replay(task, message):
        result = oracles.replay(task, message)
        replays[compute_message_digest(message).hex()] = {
            "update_root": result.update_root.hex(), "state_after_root": result.state_after_root.hex()}
        return result

    def recording_evaluate(task, scored):
        correct = oracles.evaluate(task, scored)
        evaluations[bytes(scored.final_message.message.work.state_after_root).hex()] = correct
        return correct

    recording = Oracles(replay=recording_replay, evaluate=recording_evaluate)
    vector = {"name": name, "kind": kind, "description": description, "pre_state": encode(pre_state).hex(),
              "pre_state_root": compute_state_root(pre_state).hex()}
    try:
        if kind == "block":
            vector["block"] = encode(subject).hex()
            post = state_transition(pre_state, subject, recording)
        else:
            vector["transaction"] = encode(subject).hex()
            vector["fee_recipient"] = fee_recipient.hex()
            post = apply_transaction(pre_state, subject, fee_recipient, recording)
        vector["expected"] = {"post_state_root": compute_state_root(post).hex()}
    except (InvalidBlock, InvalidTransaction) as error:
        vector["expected"] = {"invalid": error.reason}
    vector["replays"] = replays
    if evaluations:
        vector["evaluations"] = evaluations
    return vector


def table_oracles(replays: dict, evaluations: dict) -> Oracles:
    """A replay and an evaluation that answer from a vector's recorded tables (ReplayUnavailable otherwise)."""

    def replay(task, message):
        entry = replays.get(compute_message_digest(message).hex())
        if entry is None:
            raise ReplayUnavailable("no recorded replay for this message")
        return C.ReplayResult(update_root=bytes.fromhex(entry["update_root"]),
                              state_after_root=bytes.fromhex(entry["state_after_root"]))

    def evaluate(task, scored):
        correct = evaluations.get(bytes(scored.final_message.message.work.state_after_root).hex())
        if correct is None:
            raise ReplayUnavailable("no recorded evaluation for this model")
        return correct

    return Oracles(replay=replay, evaluate=evaluate)


def _read_vector_inputs(vector: dict):
    """The decoded pre-state, block or transaction, fee recipient and oracle tables of a vector; a
    malformed vector (a missing field, a field of the wrong type, bytes that do not decode) is a
    ReviewError naming it."""
    try:
        pre_state = decode(bytes.fromhex(vector["pre_state"]), C.State)
        replays, evaluations = vector.get("replays", {}), vector.get("evaluations", {})
        if not isinstance(replays, dict) or not isinstance(evaluations, dict) or not isinstance(vector["expected"], dict):
            raise TypeError("replays, evaluations and expected must be objects")
        if not all(isinstance(count, int) and count >= 0 for count in evaluations.values()):
            raise TypeError("evaluations must be counts")
        oracles = table_oracles(replays, evaluations)
        if vector["kind"] == "block":
            return pre_state, decode(bytes.fromhex(vector["block"]), C.Block), None, oracles
        if vector["kind"] == "transaction":
            return (pre_state, decode(bytes.fromhex(vector["transaction"]), C.SignedTransaction),
                    bytes.fromhex(vector["fee_recipient"]), oracles)
        raise ValueError(f"unknown kind {vector['kind']!r}")
    except (KeyError, TypeError, ValueError, DecodeError) as error:
        raise ReviewError(f"vector {vector.get('name', '?')!r} is malformed: {type(error).__name__}: {error}") from None


def check_vector(vector: dict) -> str | None:
    """Run the spec on a vector; None if it reproduces the expected outcome, else what differs."""
    pre_state, item, fee_recipient, oracles = _read_vector_inputs(vector)
    try:
        if fee_recipient is None:
            post = state_transition(pre_state, item, oracles)
        else:
            post = apply_transaction(pre_state, item, fee_recipient, oracles)
        outcome = {"post_state_root": compute_state_root(post).hex()}
    except (InvalidBlock, InvalidTransaction) as error:
        outcome = {"invalid": error.reason}
    return None if outcome == vector["expected"] else f"expected {vector['expected']}, got {outcome}"


def random_root(label: str) -> bytes:
    """A 32-byte value nobody computed: for tampering in invalid cases."""
    return hash_bytes(b"toy: not a real root/" + label.encode())


class VectorSet:
    """Collects vectors, checking each case's outcome against what the case expects."""

    def __init__(self, chain: ToyChain):
        self.chain = chain
        self.vectors: list[dict] = []

    def add(self, name: str, kind: str, pre_state: C.State, subject, expect_invalid: str | None = None,
            fee_recipient: bytes | None = None, description: str = "", oracles: Oracles | None = None) -> dict:
        vector = make_vector(name, kind, pre_state, subject, oracles or self.chain.oracles, fee_recipient, description)
        outcome = vector["expected"]
        if expect_invalid is None and "invalid" in outcome:
            raise ReviewError(f"vector {name}: expected valid, the spec says invalid: {outcome['invalid']}")
        if expect_invalid is not None and expect_invalid not in outcome.get("invalid", ""):
            raise ReviewError(f"vector {name}: expected invalid ({expect_invalid}), the spec says {outcome}")
        self.vectors.append(vector)
        return vector


def generate_vectors() -> list[dict]:
    """Every vector case: valid and invalid cases of every transaction kind and block rule."""
    c = ToyChain()
    out = VectorSet(c)
    a = c.address
    g, gb = c.genesis_state, c.genesis_block
    s1, b1 = c.extend(g, gb, "alice")
    submit = c.transaction(s1, "client", c.submit_task_body(group_size=2, iterations=20, deadline=10))
    s2, b2 = c.extend(s1, b1, "bob", [submit])
    client_task_id = next(t for t in s2.tasks if t != c.genesis_task_id)
    s3, b3 = c.extend(s2, b2, "carol")        # client task: GROUP_SELECTED
    member = next(n for n in c.MINERS if a[n] == s3.tasks[client_task_id].members[0].address)
    s4, b4 = c.extend(s3, b3, member, task_id=client_task_id)   # TRAINING, one iteration recorded
    s5, b5 = c.extend(s4, b4, "alice")        # EVALUATION (deadline 10 - evaluation period 5)
    fee_to = a["sam"]

    def tx(name, state, sender, body, expect=None, description="", **kwargs):
        out.add(name, "transaction", state, c.transaction(state, sender, body, **kwargs), expect, fee_to, description)

    # --- transfer and the transaction envelope --------------------------------
    transfer = C.Transfer(recipient=a["mallory"], amount=5 * COIN)
    tx("transfer/valid", s1, "alice", transfer, description="alice pays mallory 5 coin, fee 1 unit to sam")
    tx("transfer/new-account", s1, "alice", C.Transfer(recipient=random_root("new")[:20], amount=1),
       description="a transfer creates the recipient's account")
    tx("transfer/insufficient-balance", s1, "alice", C.Transfer(recipient=a["bob"], amount=10**6 * COIN),
       "insufficient balance")
    tx("transfer/zero-amount", s1, "alice", C.Transfer(recipient=a["bob"], amount=0), "transfer of nothing")
    tx("envelope/replayed-nonce", s2, "client", transfer, "nonce 0 is not the expected 1", nonce=0,
       description="the client's submit (nonce 0) is already included: the same nonce again is a replay")
    tx("envelope/future-nonce", s1, "alice", transfer, "nonce 5 is not the expected 0", nonce=5)
    tx("envelope/wrong-chain-id", s1, "alice", transfer, "wrong chain id", chain_id=DEVNET.chain_id + 1,
       description="replay of a transaction signed for another network")
    tx("envelope/fee-below-minimum", s1, "alice", transfer, "fee below the minimum", fee=0)
    tx("envelope/fee-unpayable", s1, "alice", transfer, "insufficient balance", fee=10**6 * COIN)
    signed = c.transaction(s1, "alice", transfer)
    out.add("envelope/bad-signature", "transaction", s1,
            dataclasses.replace(signed, signature=c.transaction(s1, "alice", transfer, fee=2).signature),
            "bad signature", fee_to)
    r, s = signed.signature[:32], int.from_bytes(signed.signature[32:], "big")
    out.add("envelope/high-s-signature", "transaction", s1,
            dataclasses.replace(signed, signature=r + (CURVE_ORDER - s).to_bytes(32, "big")), "bad signature", fee_to,
            "the malleated twin (r, n - s) of a valid signature is rejected")
    out.add("envelope/key-not-sender", "transaction", s1,
            dataclasses.replace(signed, public_key=get_public_key(c.keys["bob"])), "public key is not the sender's",
            fee_to)
    stranger = toy_secret_key("stranger")
    out.add("envelope/unknown-sender", "transaction", s1, sign_transaction(stranger, dataclasses.replace(
        signed.transaction, sender=compute_address(get_public_key(stranger)))), "unknown sender", fee_to)

    # --- staking ---------------------------------------------------------------
    tx("stake/valid", s1, "mallory", C.Stake(role=ROLE_MINER, amount=20 * COIN))
    tx("stake/top-up", s1, "alice", C.Stake(role=ROLE_MINER, amount=20 * COIN))
    tx("stake/unknown-role", s1, "mallory", C.Stake(role=7, amount=20 * COIN), "unknown role")
    tx("stake/zero", s1, "mallory", C.Stake(role=ROLE_MINER, amount=0), "stake of nothing")
    tx("stake/insufficient-balance", s1, "mallory", C.Stake(role=ROLE_MINER, amount=10**6 * COIN),
       "insufficient balance")
    unstake = c.transaction(s1, "frank", C.Unstake(role=ROLE_MINER))
    s_releasing, _ = c.extend(s1, b1, "bob", [unstake])
    tx("stake/while-releasing", s_releasing, "frank", C.Stake(role=ROLE_MINER, amount=COIN), "being released")
    tx("unstake/valid", s1, "frank", C.Unstake(role=ROLE_MINER))
    tx("unstake/no-stake", s1, "mallory", C.Unstake(role=ROLE_MINER), "no stake for this role")
    tx("unstake/already-releasing", s_releasing, "frank", C.Unstake(role=ROLE_MINER), "already being released")

    # --- tasks -----------------------------------------------------------------
    body = c.submit_task_body()
    tx("submit-task/valid", s1, "client", body)
    tx("submit-task/non-canonical-definition", s1, "client",
       dataclasses.replace(body, task_definition=json.dumps(json.loads(body.task_definition), indent=1).encode()),
       "not canonical JSON")
    bad_model = dict(json.loads(body.task_definition), model=dict(TOY_MODEL, layers=[{"type": "lstm"}]))
    tx("submit-task/unknown-layer", s1, "client", dataclasses.replace(
        body, task_definition=json.dumps(bad_model, sort_keys=True, separators=(",", ":")).encode()),
       "layers[0].type: must be one of")
    tx("submit-task/no-batches", s1, "client", dataclasses.replace(body, num_batches=0), "dataset without batches")
    tx("submit-task/group-size-zero", s1, "client", dataclasses.replace(body, group_size=0), "group size")
    tx("submit-task/group-too-large", s1, "client", dataclasses.replace(body, group_size=65), "group size")
    tx("submit-task/no-iterations", s1, "client", dataclasses.replace(body, iterations=0), "task without iterations")
    tx("submit-task/deadline-too-early", s1, "client", dataclasses.replace(body, evaluation_deadline=5),
       "deadline too early")
    tx("submit-task/no-payment", s1, "client", dataclasses.replace(body, payment=0), "task without payment")
    tx("submit-task/payment-unpayable", s1, "client", dataclasses.replace(body, payment=10**6 * COIN),
       "insufficient balance")
    cancel = C.CancelTask(task_id=client_task_id)
    tx("cancel-task/submitted", s2, "client", cancel, description="refund before the group is drawn")
    tx("attacks/m3-cancel-after-the-draw", s3, "client", cancel, "can no longer be cancelled",
       description="a client that cancels once its group is drawn could resubmit until it drew one it likes")
    tx("attacks/m3-cancel-before-the-draw", s2, "client", cancel, description="refund before the group is drawn")
    tx("cancel-task/training", s4, "client", cancel, "can no longer be cancelled")
    tx("cancel-task/not-client", s3, "mallory", cancel, "only the client may cancel")
    tx("cancel-task/unknown", s3, "client", C.CancelTask(task_id=random_root("task")), "unknown task")
    tx("evaluation/no-model", s5, "eve", C.EvaluationResult(task_id=client_task_id, models=[]),
       description="no final model scored (the evaluator found none): the best model's share goes to the members' "
                   "part, shared by their recorded iterations")
    tx("evaluation/before-the-progress-reached-the-end", s5, "eve", c.evaluation_result(s5, client_task_id),
       description="the deadline opened evaluation before a majority proved the last iteration: the members' "
                   "models of any iteration from the task's progress on may be scored, all of one iteration")

    # --- disputes --------------------------------------------------------------
    task = s4.tasks[c.genesis_task_id]
    first = c.honest_message("alice", c.genesis_task_id, task, 5, random_root("header A"))
    second = c.honest_message("alice", c.genesis_task_id, task, 5, random_root("header B"))
    honest = first.message.work
    tx("dispute/equivocation", s4, "mallory", C.Dispute(evidence=C.Equivocation(first=first, second=second)),
       description="alice trained one iteration for two headers: her stake is slashed, mallory gets half")
    tx("dispute/equivocation-identical", s4, "mallory", C.Dispute(evidence=C.Equivocation(first=first, second=first)),
       "identical")
    other = c.honest_message("alice", c.genesis_task_id, task, 6, random_root("header A"))
    tx("dispute/equivocation-different-iterations", s4, "mallory",
       C.Dispute(evidence=C.Equivocation(first=first, second=other)), "not for the same task")
    forged = dataclasses.replace(second, signature=first.signature)
    tx("dispute/equivocation-bad-signature", s4, "mallory",
       C.Dispute(evidence=C.Equivocation(first=first, second=forged)), "bad signature")
    fraud = c.signed_message("alice", dataclasses.replace(honest, update_root=random_root("update")),
                             random_root("header A"))
    tx("dispute/fraud", s4, "mallory", C.Dispute(evidence=C.FraudProof(message=fraud)),
       description="alice signed an update that replay does not reproduce")
    tx("dispute/false-accusation", s4, "mallory", C.Dispute(evidence=C.FraudProof(message=first)),
       description="alice's message replays exactly: nobody is slashed, mallory loses FALSE_DISPUTE_PENALTY")
    withheld = c.signed_message("alice", dataclasses.replace(honest, state_before_root=random_root("state")),
                                random_root("header A"))
    tx("dispute/inputs-unavailable", s4, "mallory", C.Dispute(evidence=C.FraudProof(message=withheld)),
       "unavailable")
    outsider = c.signed_message("dave", dataclasses.replace(honest, miner=a["dave"]), random_root("header A"))
    tx("dispute/not-a-member", s4, "mallory", C.Dispute(evidence=C.FraudProof(message=outsider)), "not a member")
    slash = c.transaction(s4, "mallory", C.Dispute(evidence=C.Equivocation(first=first, second=second)))
    s_slashed, b_slashed = c.extend(s4, b4, "bob", [slash])
    tx("dispute/already-slashed", s_slashed, "mallory", C.Dispute(evidence=C.FraudProof(message=fraud)),
       "already slashed in this task", description="one misbehaviour is punished once")
    step5, step6, step7 = (c.honest_message("alice", c.genesis_task_id, task, i, LOCKSTEP_COMMITMENT) for i in (5, 6, 7))
    jumped = c.signed_message("alice", dataclasses.replace(step6.message.work, state_before_root=random_root("state")),
                              LOCKSTEP_COMMITMENT)

    def broken_link(earlier, later):
        return C.Dispute(evidence=C.BrokenLink(earlier=earlier, later=later))
    tx("attacks/h6-a-state-never-trained-to", s4, "mallory", broken_link(step5, jumped),
       description="alice's iteration 6 does not start from the state her iteration 5 ended at: a member's states "
                   "are one chain, her stake is slashed")
    tx("attacks/h6-a-chain-of-states", s4, "mallory", broken_link(step5, step6), "starts from the state the earlier",
       description="honest iterations 5 and 6: the later starts where the earlier ended, nobody is slashed")
    tx("dispute/broken-link-not-consecutive", s4, "mallory", broken_link(step5, step7), "not of consecutive iterations")
    bobs = c.honest_message("bob", c.genesis_task_id, task, 6, LOCKSTEP_COMMITMENT)
    tx("dispute/broken-link-two-miners", s4, "mallory", broken_link(step5, bobs), "not for the same task and miner")
    tx("dispute/broken-link-bad-signature", s4, "mallory",
       broken_link(step5, dataclasses.replace(jumped, signature=step6.signature)), "bad signature")

    # --- blocks ----------------------------------------------------------------
    def block(name, pre, subject, expect=None, description=""):
        out.add(name, "block", pre, subject, expect, description=description)

    valid = c.mine(s1, b1, "bob")
    block("block/valid", s1, valid, description="bob mines on the genesis task")
    block("block/with-transaction", s1, c.mine(s1, b1, "bob", [c.transaction(s1, "alice", transfer)]))
    block("block/group-selection", s2, b3, description="the client task's group is drawn")
    block("block/training-on-client-task", s3, b4)
    block("block/evaluation-opens", s4, b5)
    too_many = [c.transaction(s4, "mallory", C.Dispute(evidence=C.FraudProof(message=c.signed_message(
        "alice", dataclasses.replace(honest, update_root=random_root(f"update {n}")), random_root("header A")))),
        nonce=s4.accounts[a["mallory"]].nonce + n) for n in range(MAX_FRAUD_PROOFS_PER_BLOCK + 1)]
    block("block/too-many-fraud-proofs", s4, c.mine(s4, b4, "bob", too_many, seal=False),
          f"more than {MAX_FRAUD_PROOFS_PER_BLOCK} fraud proofs",
          description="a node that does not replay decides each fraud proof from the state root: at most 4")
    state, parent = s5, b5
    while state.height < 9:
        state, parent = c.extend(state, parent, c.MINERS[state.height % 3], timestamp=parent.header.timestamp + 1)
    retarget = c.mine(state, parent, "alice", timestamp=parent.header.timestamp + 1)
    block("block/retarget", state, retarget,
          description="height 10, the first retarget: blocks came twice as fast as targeted, the target halves")
    state = state_transition(state, retarget, c.oracles)
    block("block/expiry", state, c.mine(state, retarget, "bob"),
          description="height 11 passes the client task's evaluation deadline unevaluated: the member whose "
                      "block proved an iteration is paid for that share of the 20 iterations, the rest is refunded")

    h = valid.header

    def with_header(**changes):
        return dataclasses.replace(valid, header=dataclasses.replace(h, **changes))

    block("block/wrong-height", s1, with_header(height=5), "height 5 does not follow 1")
    block("block/wrong-parent", s1, with_header(parent_hash=random_root("parent")), "parent hash")
    block("block/timestamp-not-later", s1, with_header(timestamp=b1.header.timestamp), "timestamp not after")
    block("block/wrong-target", s1, with_header(target=h.target // 2), "target is not the expected")
    block("block/wrong-transactions-root", s1, with_header(transactions_root=random_root("txs")),
          "transactions root mismatch")
    block("block/wrong-state-root", s1, with_header(state_root=random_root("state")), "state root mismatch")
    block("block/no-proof", s1, dataclasses.replace(valid, proofs=[]), "exactly one PoUW proof")
    proof = valid.proofs[0]
    block("block/bad-message-signature", s1, dataclasses.replace(valid, proofs=[dataclasses.replace(
        proof, message=dataclasses.replace(proof.message, signature=first.signature))]),
        "iteration message: bad signature")
    block("block/iteration-not-header's", s1, with_header(iteration=h.iteration + 1), "not for the header's iteration")
    block("block/task-not-header's", s1, with_header(task_id=random_root("task")), "not for the block's task")

    bob = get_member_index(s1.tasks[c.genesis_task_id], a["bob"])
    gtask = s1.tasks[c.genesis_task_id]
    template = c.header_template(s1, b1, "bob")
    committed = compute_header_commitment(template)
    work_of = lambda i, m=bob: c.iteration_work(c.genesis_task_id, gtask, i, m, committed)  # noqa: E731

    def forged(name, work, expect, miner="bob", header=template, pre=s1, description="", header_commitment=None):
        subject = (c.forge(pre, header, miner, work, header_commitment=header_commitment)
                   or c.forge(pre, header, miner, work, require_pow=False, header_commitment=header_commitment))
        block(name, pre, subject, expect, description)

    def tampered_with_pow(field: str) -> C.IterationWork:
        """Bob's work at iteration i with `field` set to a made-up root whose nonces meet the target."""
        for attempt in range(64):
            work = dataclasses.replace(work_of(i), **{field: random_root(f"{field}/{attempt}")})
            if c.forge(s1, template, "bob", work) is not None:
                return work
        raise ReviewError(f"no tampered {field} meets the target")

    i = h.iteration
    forged("block/miner-not-header's", work_of(i), "not by the block's miner",
           header=dataclasses.replace(template, miner=a["alice"]))
    forged("block/task-not-training", dataclasses.replace(work_of(i), task_id=client_task_id), "not in training",
           pre=s2, header=dataclasses.replace(c.header_template(s2, b2, "bob"), task_id=client_task_id))
    forged("block/unknown-task", dataclasses.replace(work_of(i), task_id=random_root("t")), "unknown task",
           header=dataclasses.replace(template, task_id=random_root("t")))
    forged("block/miner-not-member", dataclasses.replace(work_of(i), miner=a["dave"]),
           "not a member of the task's group", miner="dave", header=dataclasses.replace(template, miner=a["dave"]))
    alice_task = s_slashed.tasks[c.genesis_task_id]
    alice_header = c.header_template(s_slashed, b_slashed, "alice")
    forged("block/miner-slashed", c.iteration_work(c.genesis_task_id, alice_task,
                                                   alice_task.members[0].next_minable_iteration, 0,
                                                   compute_header_commitment(alice_header)),
           "miner was slashed in this task", miner="alice", header=alice_header, pre=s_slashed)
    forged("block/iteration-beyond-task", dataclasses.replace(work_of(i), iteration=1000),
           "beyond the task's iterations")
    s_after = state_transition(s1, valid, c.oracles)
    forged("block/iteration-reused", work_of(i), "already used", pre=s_after,
           header=c.header_template(s_after, valid, "bob"),
           description="bob's iteration already mined a block: it cannot mine another")
    other_header = random_root("other header")
    forged("block/header-not-committed", c.iteration_work(c.genesis_task_id, gtask, i, bob, other_header),
           "header is not the one the iteration commits to", header_commitment=other_header,
           description="an honest iteration trained for another header")
    forged("block/wrong-batch-index", dataclasses.replace(work_of(i), batch_index=(work_of(i).batch_index + 1) % 8),
           "batch index is not the schedule's")
    forged("block/bad-batch-proof", dataclasses.replace(work_of(i), batch_proof=[random_root("p")] * 3),
           "batch root not proven")
    forged("block/too-many-peer-updates", dataclasses.replace(
        work_of(i), peer_update_roots=sorted(random_root(f"peer{n}") for n in range(3))), "more peer updates")
    block("block/wrong-message-digest", s1, with_header(message_digest=random_root("digest")), "message digest mismatch")
    allowance = get_nonce_allowance(s1.config, gtask)
    seed = compute_nonce_seed(proof.message.message.work)
    block("block/nonce-index-beyond-allowance", s1,
          with_header(nonce_index=allowance, nonce=compute_nonce(seed, allowance)), "beyond the allowance")
    block("block/nonce-not-derived", s1, with_header(nonce=random_root("nonce")), "not derived from the iteration")
    above = None
    for later in range(i, i + 64):
        candidate = c.forge(s1, template, "bob", work_of(later), require_pow=False)
        later_seed = compute_nonce_seed(work_of(later))
        misses = [j for j in range(allowance) if not is_valid_pow(dataclasses.replace(
            candidate.header, nonce_index=j, nonce=compute_nonce(later_seed, j)))]
        if misses:
            above = dataclasses.replace(candidate, header=dataclasses.replace(
                candidate.header, nonce_index=misses[0], nonce=compute_nonce(later_seed, misses[0])))
            break
    block("block/work-above-target", s1, above, "work hash above target")
    forged("block/replay-mismatch", tampered_with_pow("update_root"), "replay does not reproduce", description="a fake iteration: the claimed update is not what training gives")
    forged("block/inputs-withheld", tampered_with_pow("state_before_root"), "unavailable",
           description="data withholding: the verifier cannot fetch the state before")
    block("block/invalid-transaction", s1,
          c.mine(s1, b1, "bob", [c.transaction(s1, "alice", transfer, nonce=3)], seal=False), "transaction 0: nonce")

    # --- attacks (issue codes: each refused case next to the honest one) ---------
    def relabelled(work: C.IterationWork, iteration: int) -> C.IterationWork:
        """`work`'s training step claimed as `iteration`: the state, masked
        batch and peers of `work`, and the roots its own step gives."""
        before = {**c.data.get(work.state_before_root), "step": np.asarray(work.iteration, np.int32)}
        batch = get_masked_batch(c.data.get(work.batch_root),
                                 compute_input_mask_seed(work.task_id, work.iteration, committed))
        new_state, update = toy_iteration(before, batch, [c.data.get(root) for root in work.peer_update_roots])
        return dataclasses.replace(work, iteration=iteration, update_root=c.data.put(update),
                                   state_after_root=c.data.put(new_state))

    def meeting_target(works, header=template) -> C.IterationWork:
        """The first work whose nonces meet the target of `header` (a cheat grinds for it)."""
        for work in works:
            if c.forge(s1, header, "bob", work) is not None:
                return work
        raise ReviewError("no candidate meets the target")

    block("attacks/c1-honest-step", s1, valid, description="bob's honest iteration: valid")
    claimed = meeting_target(dataclasses.replace(
        relabelled(work_of(i), later), batch_index=work_of(later).batch_index, batch_root=work_of(later).batch_root,
        batch_proof=work_of(later).batch_proof) for later in range(i + 1, i + 64))
    forged("attacks/c1-step-claimed-at-another-iteration", claimed, "replay does not reproduce",
           description="bob's step of iteration i (its state and update) claimed at a later iteration with that "
                       "iteration's batch: the replay trains the later iteration on its own batch and step")
    counted = meeting_target(dataclasses.replace(work_of(i), state_after_root=relabelled(
        dataclasses.replace(work_of(i), iteration=step), i).state_after_root) for step in range(i + 1, i + 64))
    forged("attacks/c1-step-counter-not-the-iteration", counted, "replay does not reproduce",
           description="the right batch and state, trained with another step count: the replay runs step i")
    def reused_for(headers, description, pre=s1, header_commitment=None, transactions=lambda header: ()):
        """Bob's step of iteration i, trained for `template`, claimed for the
        first of `headers` its nonces meet (a grinder tries them all)."""
        for header in headers:
            subject = c.forge(pre, header, "bob", work_of(i), transactions(header), header_commitment=header_commitment)
            if subject is not None:
                return subject
        raise ReviewError(f"no header meets the target: {description}")

    block("attacks/c2-honest-step-for-its-header", s1, valid,
          description="bob trained iteration i for this header (its input mask is keyed by it): valid")
    block("attacks/c2-step-for-another-timestamp", s1, reused_for(
        (dataclasses.replace(template, timestamp=template.timestamp + t) for t in range(1, 64)), "timestamps"),
        "replay does not reproduce",
        description="one step's roots claimed for a header with another timestamp: the replay masks the batch for "
                    "that header and trains another step")
    transfers = {}
    for n in range(64):
        txs = [c.transaction(s1, "alice", C.Transfer(recipient=a["mallory"], amount=n + 1))]
        transfers[compute_transactions_root(txs)] = txs
    block("attacks/c2-step-for-another-transaction-set", s1, reused_for(
        (dataclasses.replace(template, transactions_root=root) for root in transfers), "transaction sets",
        transactions=lambda header: transfers[header.transactions_root]), "replay does not reproduce",
        description="one step's roots claimed for a header with other transactions: another step is replayed")
    s1_sibling, b1_sibling = c.extend(g, gb, "carol")
    block("attacks/c2-step-on-another-parent", s1_sibling, reused_for(
        (dataclasses.replace(c.header_template(s1_sibling, b1_sibling, "bob"), timestamp=template.timestamp + t)
         for t in range(64)), "parents", pre=s1_sibling), "replay does not reproduce",
        description="one step's roots claimed on another fork's tip: the parent is part of the mask's key")
    block("attacks/c2-message-names-another-header", s1, reused_for(
        (dataclasses.replace(template, timestamp=template.timestamp + t) for t in range(1, 64)), "commitments",
        header_commitment=committed), "header is not the one the iteration commits to",
        description="the message names the header it was trained for, and the block has another")
    wrapping = c.submit_task_body(group_size=2, iterations=TOY_NUM_BATCHES // 2 + 1)
    tx("attacks/c1-task-wraps-its-batches", s1, "client", wrapping, "each batch is trained once",
       description="iterations x group size above the dataset's batches: a batch would be dealt twice")
    tx("attacks/c1-task-fits-its-batches", s1, "client",
       c.submit_task_body(group_size=2, iterations=TOY_NUM_BATCHES // 2),
       description="iterations x group size = the dataset's batches: valid")
    def with_model(model: dict) -> C.SubmitTask:
        definition = dict(json.loads(body.task_definition), model=model)
        return dataclasses.replace(body, task_definition=json.dumps(
            definition, sort_keys=True, separators=(",", ":")).encode())

    tx("attacks/l1-honest-task", s1, "client", body, description="the toy task: 3 nonces an iteration")
    tx("attacks/l1-trivial-model", s1, "client", with_model(dict(TOY_MODEL, input_shape=[1], layers=[
        dict(TOY_MODEL["layers"][0], units=1)])), "too little work to earn a nonce",
       description="one multiply-accumulate an example: it buys no lottery ticket (it bought a whole one before)")
    same_pooling = dict(TOY_MODEL, input_shape=[4, 4, 1], layers=[
        {"type": "max_pool2d", "pool_size": [2, 2], "padding": "same"}, {"type": "flatten"},
        dict(TOY_MODEL["layers"][0], units=4)])
    tx("attacks/l1-pooling-the-engine-cannot-run", s1, "client", with_model(same_pooling),
       "pooling supports only 'valid'",
       description="'same' pooling: the engine cannot run it, so its fee could never be mined")
    tx("attacks/m2-deadline-too-far", s1, "client",
       dataclasses.replace(body, evaluation_deadline=s1.height + 2**20 + 1), "more than 1048576 blocks ahead", description="a task every block would visit until a deadline of 2**63")
    tx("attacks/m2-deadline-in-reach", s1, "client", dataclasses.replace(body, evaluation_deadline=s1.height + 2**20),
       description="the furthest deadline a task may have")
    crowd = c.transaction(s1, "client", c.submit_task_body(group_size=len(c.MINERS) + 1))
    s_crowd, b_crowd = c.extend(s1, b1, "bob", [crowd])
    block("attacks/m2-unfillable-group-is-refunded", s_crowd, c.mine(s_crowd, b_crowd, "carol"),
          description="a group of 6 from 5 staked miners: the task expires at its one draw, the client is refunded "
                      "(it used to rescan every stake each block until its deadline)")
    def with_notes(notes) -> C.SubmitTask:
        definition = dict(json.loads(body.task_definition), notes=notes)
        return dataclasses.replace(body, task_definition=json.dumps(
            definition, sort_keys=True, separators=(",", ":")).encode())

    def nested(depth: int):
        return [] if depth == 1 else [nested(depth - 1)]

    tx("attacks/c3-definition-at-the-limits", s1, "client", with_notes([nested(30), 10**19]),
       description="an extra field nested 32 deep in all, with a 20-digit integer: the spec reads past it")
    tx("attacks/c3-definition-nested-too-deep", s1, "client", with_notes([nested(31)]), "nested deeper than 32",
       description="one level more: refused by the spec's bound, not by the interpreter's recursion limit")
    tx("attacks/c3-integer-too-long", s1, "client", with_notes([10**20]), "an integer of 21 digits",
       description="refused by the spec's bound, not by the interpreter's digit limit")
    late_submit = c.transaction(s1, "client", c.submit_task_body(group_size=2, iterations=20, deadline=40))
    h_state, h_block = c.extend(s1, b1, "bob", [late_submit])
    late_task_id = next(t for t in h_state.tasks if t != c.genesis_task_id)
    while h_state.tasks[late_task_id].status != TASK_TRAINING:
        h_state, h_block = c.extend(h_state, h_block, c.MINERS[h_state.height % 3])
    late_task = h_state.tasks[late_task_id]
    first, second = (name for member in late_task.members for name in c.MINERS if a[name] == member.address)
    last = late_task.iterations - 1
    skip = c.mine(h_state, h_block, first, task_id=late_task_id, iteration=last)
    block("attacks/h6-skip-to-the-last-iteration", h_state, skip,
          description=f"{first} proves the task's last iteration as its first block: valid (it is one replayed "
                      "step), but the task stays in training: one member of two is no majority")
    s_skip = state_transition(h_state, skip, c.oracles)
    evaluator = next(name for name in c.OTHERS if a[name] == late_task.evaluators[0])
    finished = c.mine(s_skip, skip, second, task_id=late_task_id, iteration=last)
    s_done = state_transition(s_skip, finished, c.oracles)
    finals = [b.proofs[0].message for b in (skip, finished)]   # each member's IT_RES of the last iteration
    if get_member_index(s_done.tasks[late_task_id], finals[0].message.work.miner) == 1:
        finals.reverse()
    scored = [C.ScoredModel(final_message=final, correct=c.data.evaluate(late_task, C.ScoredModel(final, 0)))
              for final in finals]
    late_result = C.EvaluationResult(task_id=late_task_id, models=scored)
    tx("attacks/h6-evaluation-after-a-skip", s_skip, evaluator, late_result, "task is not in evaluation",
       description="the skip did not end training: no evaluation, and at expiry no pay for training not proven")
    block("attacks/h6-a-majority-proved-the-last-iteration", s_skip, finished,
          description=f"{second} proves the last iteration too: a majority did, the task moves to evaluation")
    tx("attacks/h6-evaluation-once-a-majority-finished", s_done, evaluator,
       late_result, description="the evaluator reports once the group finished")

    # --- evaluation: every replaying node re-scores each final model -----------
    def result(*models):
        return C.EvaluationResult(task_id=late_task_id, models=list(models))

    def rescored(model, correct):
        return dataclasses.replace(model, correct=correct)

    block("block/with-evaluation-result", s_done, c.mine(s_done, finished, "carol",
                                                       [c.transaction(s_done, evaluator, late_result)]),
          description="a block finalizing a task: its evaluation result is re-scored as the block is applied")
    tx("evaluation/valid", s_done, evaluator, late_result,
       description=f"{evaluator} reports both members' final models with the counts they get right; the best is paid")
    tx("evaluation/member-left-out", s_done, evaluator, result(scored[1]),
       description="a member without a final model (or whose model the evaluator could not fetch) scores nothing")
    tx("evaluation/not-evaluator", s_done, "sam", late_result, "not an evaluator")
    tx("evaluation/not-in-evaluation", s_skip, evaluator, late_result, "not in evaluation")
    tx("evaluation/models-out-of-order", s_done, evaluator, result(scored[1], scored[0]), "in group order")
    tx("evaluation/model-twice", s_done, evaluator, result(scored[0], scored[0]), "in group order")
    outsider = c.signed_message("dave", dataclasses.replace(finals[0].message.work, miner=a["dave"]),
                                finals[0].message.header_commitment)
    tx("evaluation/model-of-a-non-member", s_done, evaluator, result(C.ScoredModel(outsider, scored[0].correct)),
       "not a member")
    forged_signature = dataclasses.replace(finals[0], signature=finals[1].signature)
    tx("evaluation/model-bad-signature", s_done, evaluator, result(C.ScoredModel(forged_signature, scored[0].correct)),
       "bad signature")
    earlier_name = next(name for name in (first, second) if a[name] == finals[0].message.work.miner)
    earlier = c.honest_message(earlier_name, late_task_id, late_task, last - 1, LOCKSTEP_COMMITMENT)
    earlier_scored = C.ScoredModel(earlier, c.data.evaluate(late_task, C.ScoredModel(earlier, 0)))
    tx("attacks/m3-model-of-an-earlier-iteration", s_done, evaluator, result(earlier_scored, scored[1]),
       "of one iteration",
       description="an evaluator may not score a rival's earlier, less trained model beside the others' final ones")
    other_earlier = c.honest_message(second if earlier_name == first else first, late_task_id, late_task, last - 1,
                                     LOCKSTEP_COMMITMENT)
    tx("evaluation/models-older-than-the-progress", s_done, evaluator, result(*sorted(
        [earlier_scored, C.ScoredModel(other_earlier, c.data.evaluate(late_task, C.ScoredModel(other_earlier, 0)))],
        key=lambda m: get_member_index(late_task, m.final_message.message.work.miner))),
       "older than the task's progress",
       description="a majority proved the last iteration: models of an earlier one are not the final ones")
    tx("attacks/m3-honest-scores", s_done, evaluator, late_result,
       description="each score is the count the model gets right on the revealed test set: valid")
    tx("attacks/m3-inflated-score", s_done, evaluator, result(scored[0], rescored(scored[1], scored[1].correct + 1)),
       "is not the", description="an evaluator that invents a score: every replaying node re-scores the model")
    tx("attacks/m3-deflated-score", s_done, evaluator,
       result(rescored(scored[0], max(scored[0].correct - 1, 0) if scored[0].correct else 1), scored[1]),
       "is not the", description="lowering a rival's score to pass the best model's share to another")

    def withheld(task, model):
        raise ReplayUnavailable("the client revealed the test split to the evaluator only")
    out.add("attacks/m3-test-set-withheld-from-the-network", "transaction", s_done,
            c.transaction(s_done, evaluator, late_result), "test set or model unavailable", fee_to,
            "a result whose test set nobody else can fetch is never accepted: no score goes unchecked",
            oracles=Oracles(replay=c.data.replay, evaluate=withheld))
    tx("attacks/m1-member-unstakes", s1, "carol", C.Unstake(role=ROLE_MINER), "locked while its owner is a member",
       description="carol holds a seat in the open genesis task: her miner stake stays to answer for her work")
    tx("attacks/m1-non-member-unstakes", s1, "frank", C.Unstake(role=ROLE_MINER),
       description="frank holds no seat: his stake is released after the lock period")
    return out.vectors


def write_vectors(vectors: list[dict], out_dir: Path) -> list[Path]:
    """Write vectors as JSON lines, one file per group (the name before '/'), sorted by name within each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[dict]] = {}
    for vector in vectors:
        groups.setdefault(vector["name"].split("/")[0], []).append(vector)
    written = []
    for group, items in sorted(groups.items()):
        path = out_dir / f"{group}.jsonl"
        path.write_text("".join(json.dumps(v, sort_keys=True) + "\n" for v in items))
        written.append(path)
    return written


def read_vectors(vector_dir: Path) -> list[dict]:
    """Every vector of every *.jsonl file in `vector_dir`."""
    vectors = []
    for path in sorted(vector_dir.glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                vector = json.loads(line)
            except json.JSONDecodeError as error:
                raise ReviewError(f"{path}:{number}: not JSON: {error}") from None
            if not isinstance(vector, dict):
                raise ReviewError(f"{path}:{number}: a vector is a JSON object, not {type(vector).__name__}")
            vectors.append(vector)
    if not vectors:
        raise ReviewError(f"no vectors (*.jsonl) in {vector_dir}")
    return vectors


# ---------------------------------------------------------------------------
# Reading the spec's source: definitions in order
# ---------------------------------------------------------------------------
SPEC_READING_ORDER = ("state_transition", "pouw", "tasks", "models", "genesis", "fork_choice", "primitives",
                      "containers", "types", "constants", "presets", "hashing", "crypto", "encoding", "tensors")
"""Modules in the order a reader meets them: the state transition first, the codec last; any other
spec module comes after, by path."""
SPEC_GUIDES = (("p2p-interface.md", "Networking"), ("honest-miner.md", "The honest miner"),
               ("THREATS.md", "Threat model"))
"""The spec's prose pages, rendered after its modules in this order."""


def order_spec_files(paths: list[str]) -> list[str]:
    """Spec source paths (relative, 'spec/x.py'), in reading order."""
    def rank(path: str):
        stem = Path(path).stem
        inside = Path(path).parent.name
        if inside == "spec" and stem in SPEC_READING_ORDER:
            return (0, SPEC_READING_ORDER.index(stem), path)
        return (1, 0, path)
    return sorted((p for p in paths if p.endswith(".py") and not p.endswith("__init__.py")), key=rank)


def extract_definitions(path: str, source: str) -> dict:
    """{(kind, qualified name): source lines} of the module's top-level constants, classes and functions.
    kind is 'module docstring', 'constant', 'type' (classes in types.py and
    containers.py), 'class' or 'function'."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise ReviewError(f"{path}: cannot parse: {error}") from None
    lines = source.splitlines()
    module = Path(path).with_suffix("").as_posix().replace("/", ".")
    definitions = {}
    docstring = ast.get_docstring(tree, clean=False)
    if docstring is not None:
        definitions[("module docstring", module)] = docstring + "\n"
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            kind, name = "constant", ", ".join(ast.unparse(t) for t in targets)
        elif isinstance(node, ast.ClassDef):
            kind = "type" if Path(path).stem in ("types", "containers") else "class"
            name = node.name
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            kind, name = "function", node.name
        else:
            continue
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        definitions[(kind, f"{module}.{name}")] = "\n".join(lines[start - 1:node.end_lineno]) + "\n"
    return definitions


def git_output(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise ReviewError(f"git {' '.join(args)}: {result.stderr.strip() or 'failed'}")
    return result.stdout


def read_spec_at(repo: Path, revision: str | None) -> dict[str, str]:
    """{path: source} of the spec's Python files at a git revision (None: the working tree)."""
    if revision is None:
        root = repo / "spec"
        return {p.relative_to(repo).as_posix(): p.read_text() for p in root.rglob("*.py")}
    paths = git_output(repo, "ls-tree", "-r", "--name-only", revision, "--", "spec").split()
    return {path: git_output(repo, "show", f"{revision}:{path}") for path in paths if path.endswith(".py")}


def diff_spec(repo: Path, revision_a: str, revision_b: str | None) -> str:
    """Markdown list of the constants, types, classes and functions added,
    removed or changed from `revision_a` to `revision_b` (None: the working
    tree), with a unified diff of each changed one."""
    def definitions(revision):
        found = {}
        for path, source in read_spec_at(repo, revision).items():
            found.update(extract_definitions(path, source))
        return found

    before, after = definitions(revision_a), definitions(revision_b)
    label_b = revision_b or "working tree"
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(key for key in set(before) & set(after) if before[key] != after[key])
    out = [f"# Spec changes: {revision_a} → {label_b}", "",
           f"{len(added)} added, {len(removed)} removed, {len(changed)} changed.", ""]
    for title, keys in (("Added", added), ("Removed", removed)):
        if keys:
            out += [f"## {title}", ""] + [f"- {kind} `{name}`" for kind, name in keys] + [""]
    if changed:
        out += ["## Changed", ""]
        for kind, name in changed:
            diff = difflib.unified_diff(before[(kind, name)].splitlines(), after[(kind, name)].splitlines(),
                                        f"{revision_a}:{name}", f"{label_b}:{name}", lineterm="")
            out += [f"### {kind} `{name}`", "", "```diff", *diff, "```", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Rendering the spec as one document
# ---------------------------------------------------------------------------
def _trailing_comment(line: str) -> str:
    """The `# note` at the end of a source line, if any (outside strings, by tokenizing)."""
    import io
    import tokenize
    try:
        for token in tokenize.generate_tokens(io.StringIO(line + "\n").readline):
            if token.type == tokenize.COMMENT:
                return token.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError):
        return ""
    return ""


def _comment_block_above(lines: list[str], lineno: int) -> list[str]:
    """The comment lines directly above line `lineno` (1-based), top to bottom."""
    block = []
    index = lineno - 2
    while index >= 0 and lines[index].lstrip().startswith("#"):
        block.append(lines[index].strip())
        index -= 1
    return block[::-1]


def _section_headings(lines: list[str]) -> list[tuple[int, str]]:
    """(line number, title) of each `# ----` / `# Title` / `# ----` banner."""
    def is_separator(line):
        text = line.strip()
        return text.startswith("#") and set(text) <= {"#", "-", " "} and text.count("-") > 10

    headings, index = [], 0
    while index < len(lines):
        if is_separator(lines[index]):
            end = index + 1
            while end < len(lines) and lines[end].lstrip().startswith("#") and not is_separator(lines[end]):
                end += 1
            if end < len(lines) and is_separator(lines[end]) and end > index + 1:
                headings.append((end + 1, " ".join(l.strip().lstrip("#").strip() for l in lines[index + 1:end])))
                index = end
        index += 1
    return headings


def render_constants(source: str) -> list[str]:
    """Constants as tables: one per comment-headed block, under the file's banner headings."""
    tree, lines, out = ast.parse(source), source.splitlines(), []
    headings = _section_headings(lines)
    in_table = False
    for node in tree.body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)):
            continue
        while headings and headings[0][0] < node.lineno:
            out += ["", f"### {headings.pop(0)[1]}"]
            in_table = False
        comments = [c for c in _comment_block_above(lines, node.lineno) if not c.strip("# -") == ""]
        if comments or not in_table:
            text = " ".join(c.lstrip("#").strip() for c in comments)
            out += [""] + ([text, ""] if text else []) + ["| name | value | note |", "| --- | --- | --- |"]
            in_table = True
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        name = ", ".join(ast.unparse(t) for t in targets)
        value = " ".join(ast.get_source_segment(source, node.value).split()).replace("|", "\\|")
        note = _trailing_comment(lines[node.end_lineno - 1]).replace("|", "\\|")
        out.append(f"| `{name}` | `{value}` | {note} |")
    return out


def render_presets() -> list[str]:
    """The preset values, one column per preset, from the live ChainConfig objects."""
    names = sorted(PRESETS)
    out = ["| parameter | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for field in dataclasses.fields(C.ChainConfig):
        values = [getattr(PRESETS[n], field.name) for n in names]
        shown = [(f"2**{v.bit_length() - 1}" if v & (v - 1) == 0 else hex(v)) if v >= 2**64 else str(v)
                 for v in values]
        out.append(f"| `{field.name}` | " + " | ".join(shown) + " |")
    return out


def render_classes_as_types(source: str) -> list[str]:
    """Each class: heading, docstring, and its annotated fields as a table (if any)."""
    tree, lines, out = ast.parse(source), source.splitlines(), []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        bases = ", ".join(ast.unparse(b) for b in node.bases)
        out += [f"### `{node.name}({bases})`", "", ast.get_docstring(node) or "", ""]
        fields = [n for n in node.body if isinstance(n, ast.AnnAssign)]
        constants = [n for n in node.body if isinstance(n, ast.Assign)]
        if fields:
            out += ["| field | type | note |", "| --- | --- | --- |"]
            for f in fields:
                note = _trailing_comment(lines[f.end_lineno - 1]).replace("|", "\\|")
                out.append(f"| `{ast.unparse(f.target)}` | `{ast.unparse(f.annotation)}` | {note} |")
            out.append("")
        for c in constants:
            out += [f"`{ast.unparse(c)}`", ""]
    return out


def render_functions(source: str, classes: bool = True) -> list[str]:
    """Each top-level public function, class (unless `classes` is False) and
    named value: signature, docstring, source."""
    tree, lines, out = ast.parse(source), source.splitlines(), []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and not classes:
            continue
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if isinstance(node, ast.FunctionDef):
                title = f"`{node.name}({ast.unparse(node.args)})`"
            else:
                title = f"`class {node.name}`"
            out += [f"### {title}", "", ast.get_docstring(node) or "", "", "```python",
                    *lines[start - 1:node.end_lineno], "```", ""]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            following = tree.body[tree.body.index(node) + 1] if node is not tree.body[-1] else None
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) \
                    and isinstance(following.value.value, str):
                name = ", ".join(ast.unparse(t) for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))
                out += [f"### `{name}`", "", inspect.cleandoc(following.value.value), ""]
            out += ["```python", *lines[node.lineno - 1:node.end_lineno], "```", ""]
    return out


def render_spec(spec_dir: Path = SPEC_DIR) -> str:
    """The whole spec as one Markdown document, in reading order: the state
    transition and the modules it calls first, the types, constants and codec
    last, then the networking rules, the honest miner's guide and the threat
    model."""
    paths = order_spec_files([p.relative_to(spec_dir.parent).as_posix() for p in spec_dir.rglob("*.py")])
    package_doc = ast.get_docstring(ast.parse((spec_dir / "__init__.py").read_text())) or ""
    out = ["# The BWS protocol", "", package_doc, "",
           "Rendered by `bws spec render` from the spec's source; every rule below is the code that runs.", "",
           "Contents: " + ", ".join(f"`{path}`" for path in paths)
           + ", " + ", ".join(title.lower() for _, title in SPEC_GUIDES) + ".", ""]
    for path in paths:
        source = (spec_dir.parent / path).read_text()
        paragraphs = (ast.get_docstring(ast.parse(source)) or "").split("\n\n")
        stem = Path(path).stem
        title = " ".join(paragraphs[0].split()) or stem
        out += [f"## `{path}`", "", f"**{title}**", "", "\n\n".join(paragraphs[1:]).strip(), ""]
        if stem == "constants":
            out += render_constants(source)
        elif stem == "presets":
            out += render_presets()
        elif stem in ("types", "containers"):
            out += render_classes_as_types(source) + render_functions(source, classes=False)
        else:
            out += render_functions(source)
        out.append("")
    for name, title in SPEC_GUIDES:
        guide = spec_dir / name
        if guide.exists():
            out += [f"## {title} (`spec/{name}`)", ""]
            out += [("#" + line) if line.startswith("#") else line for line in guide.read_text().splitlines()[1:]]
            out.append("")
    return "\n".join(out)
