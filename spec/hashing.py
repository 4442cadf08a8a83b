"""SHA-256 hashing, Merkle roots and tensor commitments.

Every commitment is SHA-256. Merkle trees are binary, padded with ZERO_HASH to
a power of two, with the leaf count mixed into the root (a list and the same
list with trailing zero leaves never share a root). Tensors commit through
their canonical byte form (spec/tensors.py): integers only, since floats never
appear in a commitment.
"""
import hashlib

from .constants import DOMAIN_TENSOR
from .encoding import encode
from .tensors import encode_tensor, encode_tensor_name
from .types import Bytes32

ZERO_HASH = Bytes32(b"\x00" * 32)


def hash_bytes(data: bytes) -> Bytes32:
    """SHA-256 of `data`."""
    return Bytes32(hashlib.sha256(data).digest())


def compute_merkle_root(leaves: list[Bytes32]) -> Bytes32:
    """Root of the binary SHA-256 tree over `leaves`, padded with ZERO_HASH to a
    power of two, with the leaf count mixed in so that lists of different
    lengths never share a root."""
    layer = list(leaves) or [ZERO_HASH]
    while len(layer) & (len(layer) - 1):
        layer.append(ZERO_HASH)
    while len(layer) > 1:
        layer = [hash_bytes(layer[i] + layer[i + 1]) for i in range(0, len(layer), 2)]
    return hash_bytes(layer[0] + len(leaves).to_bytes(8, "little"))


def compute_merkle_proof(leaves: list[Bytes32], index: int) -> list[Bytes32]:
    """Sibling hashes from leaf `index` up to (not including) the root."""
    assert 0 <= index < len(leaves)
    layer = list(leaves)
    while len(layer) & (len(layer) - 1):
        layer.append(ZERO_HASH)
    proof = []
    while len(layer) > 1:
        proof.append(layer[index ^ 1])
        layer = [hash_bytes(layer[i] + layer[i + 1]) for i in range(0, len(layer), 2)]
        index //= 2
    return proof


def is_valid_merkle_proof(leaf: Bytes32, index: int, count: int, proof: list[Bytes32], root: Bytes32) -> bool:
    """Whether `proof` shows `leaf` at `index` of a list of `count` leaves with `root`."""
    if not 0 <= index < count:
        return False
    node = leaf
    for sibling in proof:
        node = hash_bytes(sibling + node) if index & 1 else hash_bytes(node + sibling)
        index //= 2
    return hash_bytes(node + count.to_bytes(8, "little")) == root


def hash_object(value) -> Bytes32:
    """SHA-256 of the canonical encoding of a container (its id, digest or hash)."""
    return hash_bytes(encode(value))


def compute_tensor_leaf(name: str, array) -> Bytes32:
    """Leaf of one named tensor: hash(DOMAIN_TENSOR ‖ u16le(len(name)) ‖ name ‖ encode_tensor(array))."""
    return compute_encoded_tensor_leaf(name, encode_tensor(array))


def get_tensor_leaf_prefix(name: str) -> bytes:
    """DOMAIN_TENSOR ‖ u16le(len(name)) ‖ name: what precedes a named tensor's encoding in its leaf."""
    return DOMAIN_TENSOR + encode_tensor_name(name)


def compute_encoded_tensor_leaf(name: str, encoded_tensor: bytes) -> Bytes32:
    """`compute_tensor_leaf` of a tensor given as its `encode_tensor` bytes."""
    return hash_bytes(get_tensor_leaf_prefix(name) + encoded_tensor)


def compute_tensors_root(tensors: dict) -> Bytes32:
    """Root of a named set of tensors (a flattened pytree: `/`-joined names):
    the Merkle root of their leaves in increasing order of name. Model state
    roots, update roots and batch roots are all of this form."""
    return compute_merkle_root([compute_tensor_leaf(name, tensors[name]) for name in sorted(tensors)])
