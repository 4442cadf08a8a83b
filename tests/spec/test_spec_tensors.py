"""The tensor codec (spec/tensors.py): the byte layout, each kind of bad input
named, and the limits held on both sides."""
import numpy as np
import pytest

from bws.spec.constants import MAX_BUNDLE_TENSORS, MAX_TENSOR_DIMS
from bws.spec.encoding import DecodeError
from bws.spec.tensors import (
    CommitmentError, decode_tensor, decode_tensor_bundle, encode_tensor, encode_tensor_bundle,
)

BUNDLE = {"w": np.array([[1, -2]], np.int16), "b": np.array(7, np.uint8)}


def test_bundle_layout():
    assert encode_tensor_bundle(BUNDLE) == (
        (2).to_bytes(4, "little")
        + b"\x01\x00b" + bytes([5, 0]) + b"\x07"
        + b"\x01\x00w" + bytes([2, 2]) + (1).to_bytes(4, "little") + (2).to_bytes(4, "little")
        + (1).to_bytes(2, "little", signed=True) + (-2).to_bytes(2, "little", signed=True))


@pytest.mark.parametrize("edit, message", [
    (lambda b: b[:-1], "tensor 'w' data: truncated"),
    (lambda b: b + b"\x00", "1 trailing bytes"),
    (lambda b: (MAX_BUNDLE_TENSORS + 1).to_bytes(4, "little") + b[4:], "4097 tensors exceed the maximum 4096"),
    (lambda b: b[:7] + b"\x09" + b[8:], "tensor 'b': unknown dtype code 9"),
    (lambda b: b[:8] + b"\x09" + b[9:], "tensor 'b': 9 dimensions exceed the maximum 8"),
    (lambda b: b[:6] + b"\xff" + b[7:], "tensor 0 name: not UTF-8"),
    (lambda b: b[:6] + b"x" + b[7:], "tensor 'w': names not strictly increasing"),
])
def test_bad_bundles_are_named(edit, message):
    with pytest.raises(DecodeError, match=message):
        decode_tensor_bundle(edit(encode_tensor_bundle(BUNDLE)))


def test_a_name_given_twice_is_refused():
    one = encode_tensor_bundle({"a": np.zeros(1, np.int8)})
    with pytest.raises(DecodeError, match="tensor 'a': names not strictly increasing"):
        decode_tensor_bundle((2).to_bytes(4, "little") + one[4:] + one[4:])


def test_a_tensor_decodes_alone():
    array = np.arange(-3, 3, dtype=np.int64).reshape(2, 3)
    decoded = decode_tensor(encode_tensor(array))
    assert decoded.dtype == array.dtype and np.array_equal(decoded, array) and decoded.flags.writeable
    with pytest.raises(DecodeError, match="after the tensor: 1 trailing bytes"):
        decode_tensor(encode_tensor(array) + b"\x00")


def test_what_would_not_decode_is_not_encoded():
    with pytest.raises(CommitmentError, match="9 dimensions"):
        encode_tensor_bundle({"x": np.zeros((1,) * (MAX_TENSOR_DIMS + 1), np.int8)})
    with pytest.raises(CommitmentError, match="at most 4096 tensors"):
        encode_tensor_bundle({str(i): np.zeros(0, np.int8) for i in range(MAX_BUNDLE_TENSORS + 1)})
    with pytest.raises(CommitmentError, match="too long"):
        encode_tensor_bundle({"x" * (1 << 16): np.zeros(0, np.int8)})
