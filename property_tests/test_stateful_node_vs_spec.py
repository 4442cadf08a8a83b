"""The node against the spec, step by step (hypothesis stateful testing).

Model: the spec's fork-choice store (`spec/fork_choice.py`: `on_block`,
`get_head`, one state per valid block). System under test: a node
(`bws.node.service.Node`: DuckDB store, validation, fork choice, orphans,
mempool) that is not started, so no network; blocks and transactions reach it
as bytes through `submit_block` / `submit_transaction`, the path the HTTP API
and gossip use. Both start from the toy chain's genesis (`ToyChain`: real
keys, signatures, commitments and a real toy training step to replay).

Rules mine valid blocks on any known block (forks), hold some back and
deliver them later (orphans, out of order), deliver duplicates, mutate valid
blocks into invalid ones (bad and high-S signatures, wrong target, forged PoUW
fields, wrong nonce, overspend, garbled bytes) and submit valid and invalid
transactions. After every step:

- the verdicts agree. A block on the current head gets the full verdict at
  once: accepted by the node exactly when the spec accepts it. A block on a
  side branch may be stored unjudged (the node runs the transition only when
  the branch would become the head), but a block the spec accepts is never
  refused;
- the node's head is the spec's head and the head states have the same root
  (on a mismatch the failure prints a structural diff of the two states);
- the mempool holds no transaction whose nonce the head state already used.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path

from hypothesis import note, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bws.node.api import ApiError
from bws.node.review import ToyChain
from bws.node.service import Node, NodeSettings
from bws.spec import containers as C
from bws.spec import fork_choice as F
from bws.spec.encoding import DecodeError, decode, encode
from bws.spec.pouw import compute_header_commitment, compute_nonce, compute_nonce_seed, get_nonce_allowance
from bws.spec.presets import COIN
from bws.spec.state_transition import (
    InvalidBlock, InvalidTransaction, apply_transaction, compute_block_hash, compute_state_root, state_transition,
)
from bws.spec.tasks import get_member_index
from property_tests.strategies import describe_state_difference, flip_bit, high_s, mutated, with_proof_signature

TOY = ToyChain()
MINERS = ("alice", "bob", "carol")          # the genesis task's group
SENDERS = ("client", "mallory", "dave", "frank", "sam")
ACCEPTED = ("connected", "reorg", "side", "known")
FEE_RECIPIENT = TOY.address["alice"]  # a miner who sends nothing here: fees never flow back to the sender

BLOCK_MUTATIONS = (
    "iteration_signature", "high_s_iteration_signature", "step_for_another_header", "wrong_target",
    "forged_update_root", "forged_state_after_root", "forged_batch_index", "forged_peer_updates",
    "nonce_not_derived", "nonce_index_beyond_allowance", "state_root", "timestamp_not_after_parent",
    "wrong_height", "transaction_wrong_nonce", "transaction_overspend", "transaction_bad_signature",
    "transaction_high_s",
)
TRANSACTION_MUTATIONS = (
    "none", "bad_signature", "high_s", "wrong_chain_id", "key_not_senders", "fee_below_minimum",
    "nonce_already_used", "overspend", "garbled",
)

# Quiet the node's "could not gossip: the network service is not running":
# this node is deliberately not started.
logging.getLogger("bws.node").setLevel(logging.ERROR)


class NodeVersusSpec(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self._directory = tempfile.TemporaryDirectory(prefix="bws-stateful-")
        self.node = Node(NodeSettings(data_dir=Path(self._directory.name), genesis=TOY.genesis, oracles=TOY.oracles))
        self.spec = F.get_forkchoice_store(TOY.genesis_state, TOY.genesis_block)
        genesis_hash = bytes(compute_block_hash(TOY.genesis_block))
        # Every valid block mined so far (delivered or not), with its post-state.
        self.mined: dict[bytes, tuple[C.Block, C.State]] = {genesis_hash: (TOY.genesis_block, TOY.genesis_state)}
        self.mined_order: list[bytes] = [genesis_hash]
        self.held: list[bytes] = []                 # mined, not yet delivered
        self.delivered: list[bytes] = []            # raw bytes of every delivery (for duplicates)
        self.delivered_headers: set[bytes] = set()  # block (header) hashes delivered
        self.waiting: dict[bytes, list[C.Block]] = {}   # parent hash -> children delivered before it

    def teardown(self):
        try:
            store_state = self.node.store.load_head_state()
            self._assert_same_state(store_state, "the node's DuckDB state")
        finally:
            self.node.store.close()
            self._directory.cleanup()

    # -- the spec side ---------------------------------------------------------
    def spec_head(self) -> bytes:
        return bytes(F.get_head(self.spec))

    def spec_judge(self, block: C.Block) -> bool | None:
        """Add `block` to the spec store: True valid (or a header already
        known), False invalid, None when its parent is not in the store (never
        delivered, or invalid): then it waits, like the node's orphan."""
        parent = bytes(block.header.parent_hash)
        block_hash = bytes(compute_block_hash(block))
        if block_hash in self.spec.blocks:
            return True
        if parent not in self.spec.states:
            self.waiting.setdefault(parent, []).append(block)
            return None
        try:
            F.on_block(self.spec, block, TOY.oracles)
        except InvalidBlock as error:
            note(f"spec: block {block_hash.hex()[:12]} invalid: {error.reason}")
            return False
        for child in self.waiting.pop(block_hash, []):
            self.spec_judge(child)
        return True

    # -- delivering ------------------------------------------------------------
    def deliver(self, raw: bytes, expect_valid: bool | None = None) -> None:
        """Give `raw` to the node and the spec; check the verdicts (module docstring)."""
        head_before = self.spec_head()
        try:
            status = self.node.submit_block(raw)["status"]
        except ApiError as error:
            status = "rejected"
            note(f"node: {error.message}")
        self.delivered.append(raw)
        try:
            block = decode(raw, C.Block)
        except DecodeError:
            assert status == "rejected", f"the node took bytes the spec cannot decode ({status})"
            return
        block_hash = bytes(compute_block_hash(block))
        first_delivery = block_hash not in self.delivered_headers
        self.delivered_headers.add(block_hash)
        new_to_spec = block_hash not in self.spec.blocks
        valid = self.spec_judge(block)
        note(f"delivered block {block_hash.hex()[:12]} at height {block.header.height}: node {status}, spec {valid}")
        if expect_valid is not None and valid is not None and new_to_spec:
            assert valid == expect_valid, f"the spec judged a {'valid' if expect_valid else 'mutated'} block {valid}"
        if valid:
            assert status in ACCEPTED, f"the node refused a block the spec accepts ({status})"
        elif valid is False and first_delivery and bytes(block.header.parent_hash) == head_before:
            assert status == "rejected", f"the node accepted ({status}) a block on its head that the spec rejects"
        else:
            assert status not in ("connected", "reorg"), \
                f"the node made a block the spec does not accept its head ({status})"

    # -- building blocks ---------------------------------------------------------
    def _mine(self, parent_hash: bytes, miner: str, spacing: int, transactions=()) -> C.Block:
        parent, state = self.mined[parent_hash]
        timestamp = parent.header.timestamp + spacing
        return TOY.mine(state, parent, miner, list(transactions), timestamp=timestamp)

    def _record(self, block: C.Block) -> bytes:
        parent, state = self.mined[bytes(block.header.parent_hash)]
        block_hash = bytes(compute_block_hash(block))
        if block_hash not in self.mined:
            self.mined[block_hash] = (block, state_transition(state, block, TOY.oracles))
            self.mined_order.append(block_hash)
        return block_hash

    def _pick_parent(self, index: int) -> bytes:
        return self.mined_order[index % len(self.mined_order)]

    def _mempool_transactions(self, state: C.State) -> list[C.SignedTransaction]:
        """What a miner takes from the node's mempool: its selection, keeping
        the transactions that apply in order on `state` (a template)."""
        chosen, post = [], state
        for pooled in self.node.mempool.select(8, 1 << 20):
            signed = decode(pooled.raw, C.SignedTransaction)
            try:
                post = apply_transaction(post, signed, FEE_RECIPIENT, TOY.oracles)
            except InvalidTransaction:
                continue
            chosen.append(signed)
        return chosen

    # -- rules: valid blocks ------------------------------------------------------
    @rule(parent=st.integers(0, 10**6), miner=st.sampled_from(MINERS), spacing=st.integers(1, 40),
          hold=st.booleans(), with_mempool=st.booleans())
    def mine_valid_block(self, parent, miner, spacing, hold, with_mempool):
        parent_hash = self._pick_parent(parent)
        state = self.mined[parent_hash][1]
        transactions = self._mempool_transactions(state) if with_mempool else []
        block = self._mine(parent_hash, miner, spacing, transactions)
        block_hash = self._record(block)
        if hold:
            self.held.append(block_hash)
        else:
            self.deliver(encode(block), expect_valid=True)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 10**6))
    def deliver_held_block(self, index):
        block_hash = self.held.pop(index % len(self.held))
        self.deliver(encode(self.mined[block_hash][0]), expect_valid=True)

    @precondition(lambda self: self.delivered)
    @rule(index=st.integers(0, 10**6))
    def deliver_duplicate(self, index):
        self.deliver(self.delivered[index % len(self.delivered)])

    @rule(miner=st.sampled_from(MINERS), spacing=st.integers(1, 40))
    def mine_on_head_with_forged_loss(self, miner, spacing):
        """The loss is informational: a block whose message reports another loss,
        consistently signed and with its nonces derived from it, is valid."""
        head = self.spec_head()
        honest = self._mine(head, miner, spacing)
        parent, state = self.mined[head]
        block = self._reforge(state, parent, honest, miner, lambda w: dataclasses.replace(w, loss=w.loss + 7),
                              require_pow=True)
        if block is not None:
            block = TOY.seal(state, block)
            self._record(block)
            self.deliver(encode(block), expect_valid=True)

    # -- rules: invalid blocks ---------------------------------------------------
    @rule(parent=st.integers(0, 10**6), on_head=st.booleans(), miner=st.sampled_from(MINERS),
          spacing=st.integers(1, 40), mutation=st.sampled_from(BLOCK_MUTATIONS), sender=st.sampled_from(SENDERS))
    def deliver_invalid_block(self, parent, on_head, miner, spacing, mutation, sender):
        parent_hash = self.spec_head() if on_head else self._pick_parent(parent)
        parent_block, state = self.mined[parent_hash]
        honest = self._mine(parent_hash, miner, spacing)
        block = self._mutate_block(state, parent_block, honest, miner, mutation, sender)
        note(f"mutation {mutation} on block at height {honest.header.height}")
        self.deliver(encode(block), expect_valid=False)

    @rule(parent=st.integers(0, 10**6), miner=st.sampled_from(MINERS), spacing=st.integers(1, 40), data=st.data())
    def deliver_garbled_block(self, parent, miner, spacing, data):
        honest = self._mine(self._pick_parent(parent), miner, spacing)
        raw = data.draw(mutated(encode(honest)), label="garbled block")
        self.deliver(raw)

    def _reforge(self, state, parent, honest, miner, tamper_work=lambda w: w, require_pow=False, trained_for=None,
                 **header_changes):
        """`honest` rebuilt by the miner with header fields changed and its
        work, trained for that header (or for the header whose commitment is
        `trained_for`), changed by `tamper_work`, signed and committing to the
        header, nonces derived from the tampered work (a proof of work if one
        of the allowance meets the target, else the first nonce, or None if
        `require_pow`); not sealed."""
        task = state.tasks[honest.header.task_id]
        member_index = get_member_index(task, TOY.address[miner])
        header = dataclasses.replace(
            TOY.header_template(state, parent, miner, honest.transactions, honest.header.timestamp), **header_changes)
        work = tamper_work(TOY.iteration_work(header.task_id, task, honest.header.iteration, member_index,
                                              trained_for or compute_header_commitment(header)))
        block = TOY.forge(state, header, miner, work, honest.transactions)
        if block is None and not require_pow:
            block = TOY.forge(state, header, miner, work, honest.transactions, require_pow=False)
        return block

    def _mutate_block(self, state, parent, honest, miner, mutation, sender) -> C.Block:
        proof = honest.proofs[0]
        header = honest.header
        if mutation == "iteration_signature":
            return with_proof_signature(honest, "message", flip_bit(proof.message.signature, 40))
        if mutation == "high_s_iteration_signature":
            return with_proof_signature(honest, "message", high_s(proof.message.signature))
        if mutation == "step_for_another_header":  # the iteration's step, claimed for a later timestamp
            return self._reforge(state, parent, honest, miner, trained_for=compute_header_commitment(header),
                                 timestamp=header.timestamp + 1)
        if mutation == "wrong_target":
            return self._reforge(state, parent, honest, miner, target=state.target // 2)
        if mutation == "forged_update_root":
            return self._reforge(state, parent, honest, miner, lambda w: dataclasses.replace(w, update_root=flip_bit(w.update_root)))
        if mutation == "forged_state_after_root":
            return self._reforge(state, parent, honest, miner,
                                 lambda w: dataclasses.replace(w, state_after_root=flip_bit(w.state_after_root)))
        if mutation == "forged_batch_index":
            return self._reforge(state, parent, honest, miner,
                                 lambda w: dataclasses.replace(w, batch_index=(w.batch_index + 1) % 8))
        if mutation == "forged_peer_updates":
            return self._reforge(state, parent, honest, miner,
                                 lambda w: dataclasses.replace(w, peer_update_roots=list(w.peer_update_roots)[:-1]
                                                               or [w.update_root]))
        if mutation == "nonce_not_derived":
            return dataclasses.replace(honest, header=dataclasses.replace(header, nonce=flip_bit(header.nonce)))
        if mutation == "nonce_index_beyond_allowance":
            allowance = get_nonce_allowance(state.config, state.tasks[header.task_id])
            seed = compute_nonce_seed(proof.message.message.work)
            return dataclasses.replace(honest, header=dataclasses.replace(
                header, nonce_index=allowance, nonce=compute_nonce(seed, allowance)))
        if mutation == "state_root":
            return dataclasses.replace(honest, header=dataclasses.replace(header, state_root=flip_bit(header.state_root)))
        if mutation == "timestamp_not_after_parent":
            return self._reforge(state, parent, honest, miner, timestamp=parent.header.timestamp)
        if mutation == "wrong_height":
            return self._reforge(state, parent, honest, miner, height=header.height + 1)
        # a block carrying one bad transaction of `sender`
        transaction = self._transaction(state, sender, mutation.removeprefix("transaction_"))
        block = TOY.mine(state, parent, miner, [transaction], timestamp=header.timestamp, seal=False)
        return block

    # -- transactions -------------------------------------------------------------
    def _transaction(self, state: C.State, sender: str, mutation: str, nonce: int | None = None,
                     amount: int = COIN, fee: int = 1) -> C.SignedTransaction:
        account = state.accounts[TOY.address[sender]]
        nonce = account.nonce if nonce is None else nonce
        if mutation == "overspend":
            amount = account.balance - fee + 1
        if mutation == "wrong_nonce":
            nonce = account.nonce + 1
        if mutation == "nonce_already_used":
            nonce = account.nonce - 1
        if mutation == "fee_below_minimum":
            fee = state.config.min_transaction_fee - 1
        body = C.Transfer(recipient=TOY.address["eve"], amount=amount)
        chain_id = state.config.chain_id + 1 if mutation == "wrong_chain_id" else None
        signed = TOY.transaction(state, sender, body, fee=fee, nonce=nonce, chain_id=chain_id)
        if mutation == "bad_signature":
            return dataclasses.replace(signed, signature=flip_bit(signed.signature, 40))
        if mutation == "high_s":
            return dataclasses.replace(signed, signature=high_s(signed.signature))
        if mutation == "key_not_senders":
            other = TOY.transaction(state, "eve", body)
            return dataclasses.replace(signed, public_key=other.public_key)
        return signed

    @rule(sender=st.sampled_from(SENDERS), mutation=st.sampled_from(TRANSACTION_MUTATIONS),
          amount=st.integers(1, 50 * COIN), fee=st.integers(1, 10**6), data=st.data())
    def submit_transaction(self, sender, mutation, amount, fee, data):
        head_state = self.mined[self.spec_head()][1]
        address = TOY.address[sender]
        if mutation == "nonce_already_used" and head_state.accounts[address].nonce == 0:
            mutation = "none"
        if head_state.config.min_transaction_fee <= 1 and mutation == "fee_below_minimum":
            mutation = "none"
        # A valid transaction follows the sender's pending ones; the spec judges
        # it after them, on the head state.
        pending = sorted((p for p in self.node.mempool.transactions() if p.sender == address), key=lambda p: p.nonce)
        state = head_state
        for pooled in pending:
            try:
                state = apply_transaction(state, decode(pooled.raw, C.SignedTransaction), FEE_RECIPIENT, TOY.oracles)
            except InvalidTransaction:
                break
        nonce = self.node.mempool.pending_nonce(address) if mutation not in ("nonce_already_used", "wrong_nonce") else None
        base = head_state if mutation in ("nonce_already_used", "overspend") else state
        signed = self._transaction(base, sender, mutation, nonce=nonce, amount=amount, fee=fee)
        raw = encode(signed)
        if mutation == "garbled":
            raw = data.draw(mutated(raw), label="garbled transaction")
        try:
            self.node.submit_transaction(raw)
            admitted = True
        except ApiError as error:
            admitted = False
            note(f"node refused transaction ({mutation}): {error.message}")
        try:
            decoded = decode(raw, C.SignedTransaction)
            apply_transaction(state, decoded, FEE_RECIPIENT, TOY.oracles)
            spec_valid = True
        except (DecodeError, InvalidTransaction) as error:
            spec_valid = False
            note(f"spec refuses transaction ({mutation}): {error}")
        if spec_valid:
            assert admitted, f"the node refused a transaction the spec accepts ({mutation})"
        if mutation not in ("none", "garbled"):
            assert not spec_valid, f"the spec accepted a {mutation} transaction"
            assert not admitted, f"the node admitted a {mutation} transaction"

    # -- invariants -----------------------------------------------------------------
    def _assert_same_state(self, node_state: C.State, what: str) -> None:
        spec_state = self.spec.states[F.get_head(self.spec)]
        if compute_state_root(node_state) != compute_state_root(spec_state):
            raise AssertionError(f"{what} differs from the spec's head state:\n"
                                 + describe_state_difference(node_state, spec_state))

    @invariant()
    def same_head_and_state_root(self):
        spec_head = self.spec_head()
        assert self.node.chain.head.hash == spec_head, (
            f"node head {self.node.chain.head.hash.hex()[:16]} (height {self.node.chain.head.height}) != spec head "
            f"{spec_head.hex()[:16]} (height {self.spec.blocks[spec_head].header.height})")
        self._assert_same_state(self.node.chain.head_state, "the node's head state")

    @invariant()
    def mempool_has_no_used_nonces(self):
        head_state = self.node.chain.head_state
        for pooled in self.node.mempool.transactions():
            account = head_state.accounts.get(pooled.sender)
            assert pooled.nonce >= (account.nonce if account else 0), "the mempool kept a transaction already mined"


# ci: a few dozen short runs (well under a minute); nightly: long runs with deep forks.
_NIGHTLY = os.environ.get("HYPOTHESIS_PROFILE") == "nightly"
NodeVersusSpec.TestCase.settings = settings(stateful_step_count=40 if _NIGHTLY else 12,
                                            max_examples=500 if _NIGHTLY else 20)
test_node_follows_the_spec = NodeVersusSpec.TestCase
