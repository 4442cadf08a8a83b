"""Commitments: a pytree of integer tensors -> a Merkle root over its named
tensors (spec.hashing.compute_tensors_root), so one tensor can be proven or
bisected later. Names are the `/`-joined dict keys (`params/0/kernel`)."""
from __future__ import annotations

import numpy as np

from bws.spec.hashing import compute_tensor_leaf, compute_tensors_root

__all__ = ["flatten", "unflatten", "state_root", "update_root", "batch_root", "tensor_leaves",
           "compute_tensor_leaf"]


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> {"a/b/c": numpy array}."""
    flat = {}
    for key in sorted(tree):
        value = tree[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def tensor_leaves(tree: dict) -> dict[str, bytes]:
    """Each tensor's Merkle leaf, by name."""
    return {name: compute_tensor_leaf(name, a) for name, a in flatten(tree).items()}


def state_root(state: dict) -> bytes:
    return compute_tensors_root(flatten(state))


def update_root(update: dict) -> bytes:
    return compute_tensors_root(flatten(update))


def batch_root(batch: dict) -> bytes:
    return compute_tensors_root(flatten(batch))
