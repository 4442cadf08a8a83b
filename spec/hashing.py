"""SHA-256 hashing and Merkle roots."""
import hashlib

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
