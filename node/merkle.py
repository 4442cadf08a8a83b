"""The spec's Merkle tree (spec/hashing.py `compute_merkle_root`,
`compute_merkle_proof`) kept in memory, for the node's hot paths: the state
root re-hashes only the changed entries' paths (node/transition.py), and a
miner proves a batch every iteration without re-hashing every batch root
(node/roles/library.py)."""
from __future__ import annotations

import hashlib

from bws.spec.hashing import ZERO_HASH
from bws.spec.types import Root


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class MerkleTree:
    """`compute_merkle_root` of a list of leaves, kept layer by layer so that
    changing k of n leaves rehashes k paths (k·log n hashes), not the tree."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.count = len(leaves)
        layer = list(leaves) or [bytes(ZERO_HASH)]
        layer += [bytes(ZERO_HASH)] * ((1 << (len(layer) - 1).bit_length()) - len(layer))  # to a power of two
        self.layers = [layer]
        while len(layer) > 1:
            layer = [sha256(layer[i] + layer[i + 1]) for i in range(0, len(layer), 2)]
            self.layers.append(layer)

    @property
    def leaves(self) -> list[bytes]:
        return self.layers[0]

    def update(self, changed: dict[int, bytes]) -> None:
        """Set leaf `position` to `leaf` for each item of `changed`."""
        positions = set(changed)
        for position, leaf in changed.items():
            self.layers[0][position] = leaf
        for below, above in zip(self.layers, self.layers[1:]):
            positions = {position // 2 for position in positions}
            for position in positions:
                above[position] = sha256(below[2 * position] + below[2 * position + 1])

    def proof(self, index: int) -> list[Root]:
        """The spec's `compute_merkle_proof(leaves, index)`: the sibling on the path at each layer below the top."""
        return [Root(layer[(index >> depth) ^ 1]) for depth, layer in enumerate(self.layers[:-1])]

    @property
    def root(self) -> bytes:
        return sha256(self.layers[-1][0] + self.count.to_bytes(8, "little"))
