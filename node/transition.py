"""The node's block transition: the spec's rules, on faster primitives.

The rules exist once, in the spec (spec/state_transition.py). The node runs
them as they are, under `use_primitives(NODE_PRIMITIVES)` (spec/primitives.py),
which replaces the three slow primitives the rules call:

- *Signatures through libsecp256k1* (node/keys.py) instead of python-ecdsa,
  each verdict remembered (`is_valid_signature`): a block's signatures were
  verified by `validation.precheck_block` when it arrived, and the
  transition finds them there instead of verifying them again.
- *No deep copy* (`copy_state`). State entries (accounts, stakes, tasks) are
  frozen dataclasses that the rules replace, never modify; so the post-state
  is a shallow copy of the parent's with new dicts of its three maps, sharing
  the entries the block does not replace. The parent state is never modified.
- *An incremental state root* (`StateRootCache`): the leaf hash of every map
  entry and scalar field is remembered with the very object it was computed
  from, and recomputed only for an object not seen before (an entry the
  block replaced). Validity needs no convention about who mutates states:
  a cached leaf is used only for the identical (frozen) object. Each map's
  Merkle tree is kept from one root to the next in the spec's leaf order, so
  a block rehashes the paths of the entries it changed, not the whole map.

Each replacement returns exactly what the spec's definition returns
(tests/node/test_transition.py, property_tests/test_node_transition_vs_spec.py),
so the node's verdicts, reasons, post-states and roots are the spec's.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import threading
from functools import lru_cache

from bws.spec import containers as C
from bws.spec import state_transition as spec
from bws.spec.constants import MAX_FRAUD_PROOFS_PER_BLOCK
from bws.spec.encoding import ByteVector, Container, FixedWidthInt, boolean, get_fields, is_map_type
from bws.spec.hashing import compute_merkle_root, hash_bytes
from bws.spec.pouw import compute_message_digest, is_valid_signed_iteration_message
from bws.spec.primitives import Primitives, use_primitives
from bws.spec.state_transition import InvalidBlock, Oracles
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


def claimed_result(message: C.IterationMessage) -> C.ReplayResult:
    """The roots an iteration message claims, as a replay would give them."""
    return C.ReplayResult(update_root=message.work.update_root, state_after_root=message.work.state_after_root)


def claimed_score(task: C.Task, scored: C.ScoredModel) -> int:
    """The score an evaluation result claims for a model, as an evaluation would give it."""
    return int(scored.correct)


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
# Signatures
# ---------------------------------------------------------------------------
@lru_cache(maxsize=16384)
def _signature_verdict(public_key: bytes, signing_root: bytes, signature: bytes) -> bool:
    return keys.is_valid_signature(public_key, signing_root, signature)


def is_valid_signature(public_key: bytes, signing_root: bytes, signature: bytes) -> bool:
    """The spec's signature rule through libsecp256k1, each verdict remembered
    (a pure function of its bytes: a block's signatures are verified once, by
    precheck_block, and found here again by its transition)."""
    return _signature_verdict(bytes(public_key), bytes(signing_root), bytes(signature))


NODE_PRIMITIVES = Primitives(
    is_valid_signature=is_valid_signature, compute_state_root=compute_state_root, copy_state=copy_state)


def is_signed_iteration_message_valid(signed: C.SignedIterationMessage) -> bool:
    """The spec's `is_valid_signed_iteration_message`, on the node's primitives."""
    with use_primitives(NODE_PRIMITIVES):
        return is_valid_signed_iteration_message(signed)


# ---------------------------------------------------------------------------
# The transition: the spec's functions on the node's primitives
# ---------------------------------------------------------------------------
def process_block(state: C.State, block: C.Block, oracles: Oracles) -> C.State:
    """The state after `block`, without the state root check (what a miner
    fills the header's root from), or InvalidBlock(reason). `state` is not modified."""
    post = copy_state(state)
    with use_primitives(NODE_PRIMITIVES):
        try:
            spec.process_block(post, block, oracles)
        except Exception as error:
            raise InvalidBlock(spec.get_failure_reason(error)) from None
    return post


def state_transition(state: C.State, block: C.Block, oracles: Oracles) -> C.State:
    """The spec's `state_transition`: the state after `block`, or
    InvalidBlock(reason); `state` is not modified."""
    with use_primitives(NODE_PRIMITIVES):
        return spec.state_transition(state, block, oracles)


def apply_transaction(state: C.State, signed: C.SignedTransaction, fee_recipient: bytes, oracles: Oracles) -> C.State:
    """The spec's `apply_transaction`: the state after one transaction, or
    InvalidTransaction(reason); `state` is not modified."""
    with use_primitives(NODE_PRIMITIVES):
        return spec.apply_transaction(state, signed, fee_recipient, oracles)


def trusting_transition(state: C.State, block: C.Block) -> C.State:
    """`state_transition` for a node that does not replay iterations (no
    verifier role). It takes every iteration's claimed roots and every
    evaluation result's claimed scores, except for the
    fraud proofs the block carries: whether each is proven (the miner is
    slashed) or a false accusation (the disputer pays) depends on a replay, so
    it takes the outcome the header's state root commits to. Taking the claims
    there too would refuse every block with a proven fraud, which verifiers
    accept: a chain split. Each candidate outcome is tried, "all proven" first
    (at most 2**MAX_FRAUD_PROOFS_PER_BLOCK; a block with more breaks a rule)."""
    accused = sorted({bytes(compute_message_digest(signed.transaction.body.evidence.message.message))
                      for signed in block.transactions if spec.is_fraud_proof(signed.transaction)})
    if len(accused) > MAX_FRAUD_PROOFS_PER_BLOCK:  # the rule, checked before trying 2**n outcomes
        return state_transition(state, block, Oracles(replay=lambda task, message: claimed_result(message),
                                                      evaluate=claimed_score))
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
            return state_transition(state, block, Oracles(replay=replay, evaluate=claimed_score))
        except InvalidBlock as error:
            first_error = first_error or error
    raise first_error
