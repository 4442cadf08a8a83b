"""Commitments: a pytree of integer tensors -> a Merkle root over its named
tensors (spec.hashing.compute_tensors_root), so one tensor can be proven or
bisected later. Names are the `/`-joined dict keys (`params/0/kernel`)."""
from __future__ import annotations

import hashlib

import numpy as np

from bws.spec.hashing import compute_merkle_root, compute_tensor_leaf, get_tensor_leaf_prefix
from bws.spec.tensors import encode_tensor_header

__all__ = ["flatten", "unflatten", "tensors_root", "state_root", "update_root", "batch_root", "tensor_leaves",
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


def tensors_root(flat: dict[str, np.ndarray]) -> bytes:
    """The spec's compute_tensors_root of named tensors, each leaf hashed from
    the spec's prefix and header and then the tensor's own little-endian
    buffer, with no encoded copy (the same bytes in the same order: roots of
    a model state are taken every iteration by miners, verifiers and
    supervisors; property_tests/test_node_roles_data.py holds it to the spec)."""
    leaves = []
    for name in sorted(flat):
        array = np.asarray(flat[name])
        leaf = hashlib.sha256(get_tensor_leaf_prefix(name) + encode_tensor_header(array))
        leaf.update(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).reshape(-1).view(np.uint8))
        leaves.append(leaf.digest())
    return bytes(compute_merkle_root(leaves))


def state_root(state: dict) -> bytes:
    return tensors_root(flatten(state))


def update_root(update: dict) -> bytes:
    return tensors_root(flatten(update))


def batch_root(batch: dict) -> bytes:
    return tensors_root(flatten(batch))
