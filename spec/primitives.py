"""The primitives the rules call, and the seam for a faster implementation of them.

The rules (spec/state_transition.py, spec/pouw.py) are written once, here in
the spec. Three of the things they do are pure functions whose results are
fully defined below but whose direct definitions are slow: verifying a
signature (python-ecdsa), computing a state root (every leaf hashed again)
and copying a state (a deep copy). The rules call them through
`get_primitives()`, as consensus-specs calls `bls` through a switch and
execution-specs lets an optimized backend replace a few functions.

A node runs the spec's own rules under `use_primitives(faster)`
(node/transition.py): libsecp256k1 signatures, a state root from cached leaf
hashes, a copy that shares frozen entries. A replacement must return exactly
what the definition returns for every input; property tests hold the node's
to that (property_tests/test_node_transition_vs_spec.py). The choice is per
thread (a context variable): a test can run the spec's definitions and the
node's side by side.
"""
import contextlib
import contextvars
import copy
import dataclasses
from typing import Callable

from . import crypto
from .containers import State
from .encoding import encode, get_fields, is_map_type
from .hashing import compute_merkle_root, hash_bytes
from .types import Root


def compute_map_root(value: dict, map_type: type) -> Root:
    """Merkle root of a map's entries, each leaf hash(encode(key) ‖ encode(value)), by key encoding."""
    leaves = sorted(encode(k, map_type.KEY) + encode(v, map_type.VALUE) for k, v in value.items())
    return Root(compute_merkle_root([hash_bytes(leaf) for leaf in leaves]))


def compute_state_root(state: State) -> Root:
    """Merkle root over the state's fields in declaration order: a map field's
    leaf is its map root (so an account can be proven by a Merkle path), any
    other field's leaf is the hash of its encoding."""
    leaves = []
    for name, typ in get_fields(State):
        value = getattr(state, name)
        leaves.append(compute_map_root(value, typ) if is_map_type(typ) else hash_bytes(encode(value, typ)))
    return Root(compute_merkle_root(leaves))


def copy_state(state: State) -> State:
    """A state the rules may change without changing `state`."""
    return copy.deepcopy(state)


@dataclasses.dataclass(frozen=True)
class Primitives:
    """One implementation of each primitive the rules call."""
    is_valid_signature: Callable[[bytes, bytes, bytes], bool]  # (public key, signing root, signature)
    compute_state_root: Callable[[State], Root]
    copy_state: Callable[[State], State]


SPEC_PRIMITIVES = Primitives(
    is_valid_signature=crypto.is_valid_signature, compute_state_root=compute_state_root, copy_state=copy_state)

_ACTIVE = contextvars.ContextVar("bws_spec_primitives", default=SPEC_PRIMITIVES)


def get_primitives() -> Primitives:
    """The primitives the rules run on in this thread: the definitions above unless `use_primitives` says otherwise."""
    return _ACTIVE.get()


@contextlib.contextmanager
def use_primitives(primitives: Primitives):
    """Run the rules on `primitives` inside the `with` block (this thread only)."""
    token = _ACTIVE.set(primitives)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
