"""The node's block transition: the spec's verdicts, post-states and roots, faster.

`state_transition(state, block, replay, prechecked)` and
`apply_transaction(state, signed, fee_recipient, replay)` give exactly what
the spec's functions of the same names give (spec/state_transition.py): the
same post-state, the same state root, and for a broken rule the same
`InvalidBlock` / `InvalidTransaction` reason, checked in the same order. They
replace the three slow parts of the spec's definition and call the spec's own
small functions for the rest:

- *No deep copy.* State entries (accounts, stakes, tasks) are frozen
  dataclasses that the rules replace, never modify; so the post-state is a
  shallow copy of the parent's with new dicts of its three maps, sharing the
  entries the block does not replace. The parent state is never modified.
- *Signatures through libsecp256k1* (node/keys.py) instead of python-ecdsa;
  with `prechecked` (the block passed `validation.precheck_block`) the proof's
  and the transactions' signatures and the transactions root, which that
  check verified, are not verified again. Dispute evidence (rare) goes
  through the spec's `process_dispute`, python-ecdsa included.
- *An incremental state root* (`StateRootCache`): the leaf hash of every map
  entry and scalar field is remembered with the very object it was computed
  from, and recomputed only for an object not seen before (an entry the
  block replaced). Validity needs no convention about who mutates states:
  a cached leaf is used only for the identical (frozen) object. Each map's
  Merkle tree is kept from one root to the next in the spec's leaf order, so
  a block rehashes the paths of the entries it changed, not the whole map.
  The root equals the spec's `compute_state_root` bit for bit
  (tests/node/test_transition.py and
  property_tests/test_node_transition_vs_spec.py hold it to that).

What the block changes is applied by the spec's functions where they are
cheap (stake releases, the task lifecycle, transaction bodies, rewards,
difficulty); the header check, the proof of useful work and the transaction
envelope are the node's, with the spec's rule order and reasons.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import threading

from bws.spec import containers as C
from bws.spec import state_transition as spec
from bws.spec.constants import MAX_FRAUD_PROOFS_PER_BLOCK, ROLE_MINER, TASK_EVALUATION, TASK_TRAINING
from bws.spec.encoding import ByteVector, Container, FixedWidthInt, boolean, get_fields, is_map_type
from bws.spec.hashing import ZERO_HASH, compute_merkle_root, hash_bytes, hash_object, is_valid_merkle_proof
from bws.spec.pouw import (
    compute_header_commitment, compute_iteration_message_signing_root, compute_message_digest, compute_nonce,
    compute_nonce_seed, get_nonce_allowance, is_valid_pow,
)
from bws.spec.state_transition import InvalidBlock, InvalidTransaction, Replay, ReplayUnavailable
from bws.spec.tasks import compute_batch_index, get_member_index
from bws.spec.types import Root

from . import keys
from .merkle import MerkleTree, sha256

STATE_FIELDS = get_fields(C.State)


def _is_fixed_width(typ: type) -> bool:
    if isinstance(typ, type) and issubclass(typ, (ByteVector, FixedWidthInt, boolean)):
        return True
    return isinstance(typ, type) and issubclass(typ, Container) and all(_is_fixed_width(t) for _, t in get_fields(typ))


# The spec orders a map's leaves by their bytes, key ‖ value; the cache orders
# them by the key's encoding, the same order when every key has one width.
for _name, _typ in STATE_FIELDS:
    if is_map_type(_typ) and not _is_fixed_width(_typ.KEY):
        raise TypeError(f"State.{_name}: keys of {_typ.KEY.__name__} vary in width; "
                        "StateRootCache needs fixed-width keys")


def _require(condition: bool, reason: str) -> None:
    """A rule: like the spec's `assert`, turned into InvalidBlock / InvalidTransaction by the caller."""
    if not condition:
        raise AssertionError(reason)


def claimed_result(message: C.IterationMessage) -> C.ReplayResult:
    """The roots an iteration message claims, as a replay would give them."""
    return C.ReplayResult(update_root=message.work.update_root, state_after_root=message.work.state_after_root)


def is_signed_iteration_message_valid(signed: C.SignedIterationMessage) -> bool:
    """The spec's rule (signed by the key of the miner it names), through libsecp256k1."""
    return (keys.compute_address(signed.public_key) == signed.message.work.miner
            and keys.is_valid_signature(signed.public_key, compute_iteration_message_signing_root(signed.message),
                                        signed.signature))


# ---------------------------------------------------------------------------
# The state root
# ---------------------------------------------------------------------------
class StateRootCache:
    """`compute_state_root` with the leaf of each scalar field and map entry
    remembered next to the object it hashes (module docstring), and each map's
    Merkle tree kept, in the spec's leaf order, from one root to the next. Not
    thread-safe by itself: `compute_state_root` shares one under a lock."""

    def __init__(self) -> None:
        self._field_leaves: dict[str, tuple[object, bytes]] = {}
        self._entry_leaves: dict[str, dict] = {name: {} for name, typ in STATE_FIELDS if is_map_type(typ)}
        self._trees: dict[str, tuple[dict, MerkleTree]] = {}  # map name -> (position of each key, tree)

    def state_root(self, state: C.State) -> Root:
        leaves = []
        for name, typ in STATE_FIELDS:
            value = getattr(state, name)
            leaves.append(self._map_root(name, typ, value) if is_map_type(typ) else self._field_leaf(name, typ, value))
        return Root(compute_merkle_root(leaves))

    def _field_leaf(self, name: str, typ: type, value) -> bytes:
        cached = self._field_leaves.get(name)
        if cached is None or cached[0] is not value:
            cached = (value, hash_bytes(typ.encode_value(value)))
            self._field_leaves[name] = cached
        return cached[1]

    def _entry_leaf(self, cache: dict, typ: type, key, value) -> tuple[bytes, bytes]:
        """(key encoding, leaf hash) of a map entry, encoded only for a value object not seen before."""
        cached = cache.get(key)
        if cached is None or cached[0] is not value:
            key_bytes = typ.KEY.encode_value(key)
            cached = (value, key_bytes, sha256(key_bytes + typ.VALUE.encode_value(value)))
            cache[key] = cached
        return cached[1], cached[2]

    def _map_root(self, name: str, typ: type, entries: dict) -> bytes:
        cache = self._entry_leaves[name]
        positions, tree = self._trees.get(name, ({}, None))
        if tree is not None and positions.keys() == entries.keys():  # same keys: same leaf order
            changed = {}
            for key, value in entries.items():
                leaf = self._entry_leaf(cache, typ, key, value)[1]
                if tree.leaves[positions[key]] != leaf:
                    changed[positions[key]] = leaf
            tree.update(changed)
        else:
            ordered = sorted(self._entry_leaf(cache, typ, key, value) + (key,) for key, value in entries.items())
            positions = {key: position for position, (_, _, key) in enumerate(ordered)}
            tree = MerkleTree([leaf for _, leaf, _ in ordered])
            self._trees[name] = (positions, tree)
        if len(cache) > 2 * len(entries) + 64:  # entries of other branches and deleted keys
            self._entry_leaves[name] = {key: cache[key] for key in entries}
        return tree.root


_ROOTS = StateRootCache()
_ROOTS_LOCK = threading.Lock()


def compute_state_root(state: C.State) -> Root:
    """The spec's `compute_state_root`, from the shared leaf cache."""
    with _ROOTS_LOCK:
        return _ROOTS.state_root(state)


# ---------------------------------------------------------------------------
# The copy of the parent state
# ---------------------------------------------------------------------------
def _copy_map(entries: dict) -> dict:
    copied = type(entries).__new__(type(entries))
    dict.update(copied, entries)  # no re-validation: the entries are valid, frozen objects
    return copied


def copy_state(state: C.State) -> C.State:
    """A state the rules may change without touching `state`: new dicts of the
    maps, sharing their (frozen) entries; scalars are immutable values."""
    copied = copy.copy(state)
    for name, typ in STATE_FIELDS:
        if is_map_type(typ):
            setattr(copied, name, _copy_map(getattr(state, name)))
    return copied


# ---------------------------------------------------------------------------
# Block steps: the spec's rules, order and reasons (spec/state_transition.py)
# ---------------------------------------------------------------------------
def process_block_header(state: C.State, block: C.Block, prechecked: bool) -> None:
    header = block.header
    _require(header.height == state.height + 1, f"height {header.height} does not follow {state.height}")
    parent = dataclasses.replace(state.latest_block_header, state_root=compute_state_root(state))
    _require(header.parent_hash == hash_object(parent), "parent hash is not the hash of the latest block")
    _require(header.timestamp > parent.timestamp, "timestamp not after the parent's")
    _require(header.target == state.target, f"target is not the expected {state.target:#x}")
    _require(prechecked or header.transactions_root == spec.compute_transactions_root(block.transactions),
             "transactions root mismatch")
    state.height = header.height
    state.latest_block_header = dataclasses.replace(header, state_root=Root(ZERO_HASH))


def process_stake_releases(state: C.State) -> None:
    # The spec's step sorts every stake by encoding; most blocks release none.
    if any(stake.release_height != 0 and stake.release_height <= state.height for stake in state.stakes.values()):
        spec.process_stake_releases(state)


def process_pouw(state: C.State, block: C.Block, replay: Replay, prechecked: bool) -> None:
    """The spec's `process_pouw`, rule for rule (its docstring numbers them)."""
    _require(len(block.proofs) == 1, "a block carries exactly one PoUW proof")
    header, proof = block.header, block.proofs[0]
    message, commitment = proof.message.message, proof.commitment.message
    work = message.work
    k = state.config.header_commitment_lag
    # 1. signatures and naming
    _require(prechecked or is_signed_iteration_message_valid(proof.message), "iteration message: bad signature")
    _require(prechecked or is_signed_iteration_message_valid(proof.commitment), "commitment message: bad signature")
    _require(work.miner == header.miner and commitment.work.miner == header.miner,
             "messages are not by the block's miner")
    _require(work.task_id == header.task_id and commitment.work.task_id == header.task_id,
             "messages are not for the block's task")
    _require(work.iteration == header.iteration, "iteration message is not for the header's iteration")
    _require(work.iteration >= k and commitment.work.iteration == work.iteration - k,
             "commitment message is not from iteration i - k")
    # 2. task and membership
    task = state.tasks.get(header.task_id)
    _require(task is not None, "unknown task")
    _require(task.status == TASK_TRAINING, "task is not in training")
    member_index = get_member_index(task, header.miner)
    _require(member_index is not None, "miner is not a member of the task's group")
    member = task.members[member_index]
    _require(not member.slashed, "miner was slashed in this task")
    _require(C.StakeKey(owner=header.miner, role=ROLE_MINER) in state.stakes,
             "miner has no stake left to answer for its work")
    _require(work.iteration < task.iterations, "iteration beyond the task's iterations")
    _require(work.iteration >= member.next_minable_iteration,
             "iteration already used or older than the miner's last block")
    # 3. header committed k iterations ahead
    _require(commitment.header_commitment == compute_header_commitment(header),
             "header does not match the commitment of iteration i - k")
    # 4. data
    _require(work.batch_index == compute_batch_index(task, work.iteration, member_index),
             "batch index is not the schedule's")
    _require(is_valid_merkle_proof(work.batch_root, work.batch_index, task.num_batches, list(work.batch_proof),
                                   task.dataset_root), "batch root not proven in the dataset root")
    _require(len(work.peer_update_roots) < task.group_size, "more peer updates than other members")
    # 5. nonce and target
    _require(header.message_digest == compute_message_digest(message), "message digest mismatch")
    _require(header.nonce_index < get_nonce_allowance(state.config, task), "nonce index beyond the allowance")
    _require(header.nonce == compute_nonce(compute_nonce_seed(work), header.nonce_index),
             "nonce is not derived from the iteration")
    _require(is_valid_pow(header), "work hash above target")
    # 6. replay
    try:
        replayed = spec.check_replay(task, message, replay)
    except ReplayUnavailable as error:
        raise AssertionError("iteration inputs unavailable for replay") from error
    _require(replayed, "replay does not reproduce the iteration")
    members = list(task.members)
    members[member_index] = dataclasses.replace(
        member, recorded_iterations=member.recorded_iterations + 1, next_minable_iteration=work.iteration + 1)
    task = spec.set_task(state, header.task_id, task, members=members)
    if work.iteration == task.iterations - 1:
        spec.set_task(state, header.task_id, task, status=TASK_EVALUATION, status_height=state.height)


# The spec's body rules, applied as they are (a Dispute last, as in the spec's dispatch).
_BODY_RULES = {
    C.Transfer: spec.process_transfer, C.Stake: spec.process_stake, C.Unstake: spec.process_unstake,
    C.SubmitTask: spec.process_submit_task, C.CancelTask: spec.process_cancel_task,
    C.EvaluationResult: spec.process_evaluation_result,
}


def process_transaction(state: C.State, signed: C.SignedTransaction, fee_recipient: bytes, replay: Replay,
                        signature_checked: bool = False) -> None:
    """The spec's `process_transaction`: envelope, fee and nonce, then the body."""
    transaction = signed.transaction
    _require(transaction.chain_id == state.config.chain_id, "wrong chain id")
    _require(keys.compute_address(signed.public_key) == transaction.sender, "public key is not the sender's")
    _require(signature_checked or keys.is_valid_signature(
        signed.public_key, spec.compute_transaction_signing_root(transaction), signed.signature), "bad signature")
    account = state.accounts.get(transaction.sender)
    _require(account is not None, "unknown sender")
    _require(transaction.nonce == account.nonce, f"nonce {transaction.nonce} is not the expected {account.nonce}")
    _require(transaction.fee >= state.config.min_transaction_fee, "fee below the minimum")
    spec.decrease_balance(state, transaction.sender, transaction.fee)
    state.accounts[transaction.sender] = dataclasses.replace(
        state.accounts[transaction.sender], nonce=account.nonce + 1)
    spec.increase_balance(state, fee_recipient, transaction.fee)
    body = transaction.body
    rule = _BODY_RULES.get(type(body))
    if rule is not None:
        rule(state, transaction, body)
    else:
        spec.process_dispute(state, transaction, body, replay)


def process_transactions(state: C.State, block: C.Block, replay: Replay, prechecked: bool) -> None:
    _require(spec.get_fraud_proof_count(block) <= MAX_FRAUD_PROOFS_PER_BLOCK,
             f"more than {MAX_FRAUD_PROOFS_PER_BLOCK} fraud proofs in the block")
    for index, signed in enumerate(block.transactions):
        try:
            process_transaction(state, signed, block.header.miner, replay, signature_checked=prechecked)
        except AssertionError as error:
            raise AssertionError(f"transaction {index}: {error}") from None


def _apply_block(state: C.State, block: C.Block, replay: Replay, prechecked: bool) -> None:
    """The spec's `process_block` on `state` in place (AssertionError on a broken rule)."""
    process_block_header(state, block, prechecked)
    process_stake_releases(state)
    spec.process_task_lifecycle(state, block)
    process_pouw(state, block, replay, prechecked)
    process_transactions(state, block, replay, prechecked)
    spec.process_rewards(state, block)
    spec.process_difficulty(state, block)


# ---------------------------------------------------------------------------
# The transition
# ---------------------------------------------------------------------------
def _applied_to_copy(state: C.State, apply, invalid: type) -> C.State:
    """A copy of `state` (copy_state) changed by `apply`, or `invalid(reason)` for a broken rule."""
    post = copy_state(state)
    try:
        apply(post)
    except AssertionError as error:
        raise invalid(str(error) or "assertion failed") from None
    return post


def process_block(state: C.State, block: C.Block, replay: Replay, prechecked: bool = False) -> C.State:
    """The state after `block`, without the state root check (what a miner
    fills the header's root from), or InvalidBlock(reason). `state` is not modified."""
    return _applied_to_copy(state, lambda post: _apply_block(post, block, replay, prechecked), InvalidBlock)


def state_transition(state: C.State, block: C.Block, replay: Replay, prechecked: bool = False) -> C.State:
    """The spec's `state_transition`: the state after `block`, or
    InvalidBlock(reason); `state` is not modified. `prechecked`: the block
    passed `validation.precheck_block` (module docstring)."""
    post = process_block(state, block, replay, prechecked)
    if block.header.state_root != compute_state_root(post):
        raise InvalidBlock("state root mismatch")
    return post


def trusting_transition(state: C.State, block: C.Block, prechecked: bool = False) -> C.State:
    """`state_transition` for a node that does not replay iterations (no
    verifier role). It takes every iteration's claimed roots, except for the
    fraud proofs the block carries: whether each is proven (the miner is
    slashed) or a false accusation (the disputer pays) depends on a replay, so
    it takes the outcome the header's state root commits to. Taking the claims
    there too would refuse every block with a proven fraud, which verifiers
    accept: a chain split. Each candidate outcome is tried, "all proven" first
    (at most 2**MAX_FRAUD_PROOFS_PER_BLOCK; a block with more breaks a rule)."""
    accused = sorted({bytes(compute_message_digest(signed.transaction.body.evidence.message.message))
                      for signed in block.transactions if spec.is_fraud_proof(signed.transaction)})
    if len(accused) > MAX_FRAUD_PROOFS_PER_BLOCK:  # the rule, checked before trying 2**n outcomes
        return state_transition(state, block, lambda task, message: claimed_result(message), prechecked)
    first_error = None
    for proven in itertools.product((True, False), repeat=len(accused)):
        frauds = {digest for digest, is_proven in zip(accused, proven) if is_proven}

        def replay(task: C.Task, message: C.IterationMessage) -> C.ReplayResult:
            claimed = claimed_result(message)
            if bytes(compute_message_digest(message)) not in frauds:
                return claimed
            wrong = bytes(claimed.update_root)
            return dataclasses.replace(claimed, update_root=Root(bytes([wrong[0] ^ 1]) + wrong[1:]))
        try:
            return state_transition(state, block, replay, prechecked)
        except InvalidBlock as error:
            first_error = first_error or error
    raise first_error


def apply_transaction(state: C.State, signed: C.SignedTransaction, fee_recipient: bytes, replay: Replay) -> C.State:
    """The spec's `apply_transaction`: the state after one transaction, or
    InvalidTransaction(reason); `state` is not modified."""
    return _applied_to_copy(state, lambda post: process_transaction(post, signed, fee_recipient, replay),
                            InvalidTransaction)
