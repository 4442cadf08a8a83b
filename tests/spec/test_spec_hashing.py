"""Merkle roots and proofs, tensor commitments."""
import hashlib

import numpy as np
import pytest

from bws.spec.hashing import (
    ZERO_HASH, compute_merkle_proof, compute_merkle_root, compute_tensor_leaf, compute_tensors_root, is_valid_merkle_proof,
)
from bws.spec.tensors import CommitmentError, encode_tensor


def leaves(n):
    return [hashlib.sha256(bytes([i])).digest() for i in range(n)]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 13])
def test_every_leaf_has_a_valid_proof(count):
    items = leaves(count)
    root = compute_merkle_root(items)
    for index in range(count):
        proof = compute_merkle_proof(items, index)
        assert is_valid_merkle_proof(items[index], index, count, proof, root)


def test_proofs_fail_for_wrong_leaf_index_count_or_root():
    items = leaves(5)
    root = compute_merkle_root(items)
    proof = compute_merkle_proof(items, 2)
    assert not is_valid_merkle_proof(items[3], 2, 5, proof, root)
    assert not is_valid_merkle_proof(items[2], 3, 5, proof, root)
    assert not is_valid_merkle_proof(items[2], 2, 6, proof, root)
    assert not is_valid_merkle_proof(items[2], 2, 5, proof, ZERO_HASH)
    assert not is_valid_merkle_proof(items[2], 7, 5, proof, root)


def test_padding_with_zero_leaves_changes_the_root():
    items = leaves(3)
    assert compute_merkle_root(items) != compute_merkle_root(items + [ZERO_HASH])
    assert compute_merkle_root([]) != compute_merkle_root([ZERO_HASH])


def test_tensor_encoding_layout():
    array = np.array([[1, -2, 3]], dtype=np.int32)
    expected = bytes([3, 2]) + (1).to_bytes(4, "little") + (3).to_bytes(4, "little") + array.astype("<i4").tobytes()
    assert encode_tensor(array) == expected
    big_endian = array.astype(">i4")
    assert encode_tensor(big_endian) == expected


def test_tensor_leaf_layout_and_root_by_sorted_name():
    array = np.arange(4, dtype=np.int8)
    leaf = compute_tensor_leaf("params/0/kernel", array)
    name = b"params/0/kernel"
    assert leaf == hashlib.sha256(b"BWS/tensor" + len(name).to_bytes(2, "little") + name + encode_tensor(array)).digest()
    tensors = {"b": np.zeros(2, np.int32), "a": np.ones(3, np.int64)}
    assert compute_tensors_root(tensors) == compute_merkle_root(
        [compute_tensor_leaf("a", tensors["a"]), compute_tensor_leaf("b", tensors["b"])])


def test_one_bit_or_dtype_or_shape_changes_the_root():
    base = {"w": np.arange(6, dtype=np.int32).reshape(2, 3)}
    root = compute_tensors_root(base)
    assert compute_tensors_root({"w": base["w"] ^ np.array(1, np.int32) * (np.arange(6).reshape(2, 3) == 4)}) != root
    assert compute_tensors_root({"w": base["w"].astype(np.int64)}) != root
    assert compute_tensors_root({"w": base["w"].reshape(3, 2)}) != root


def test_floats_are_never_committed():
    with pytest.raises(CommitmentError, match="integers only"):
        encode_tensor(np.zeros(2, np.float32))
