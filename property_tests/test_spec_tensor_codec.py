"""Hypothesis: the spec's tensor codec (spec/tensors.py). Tensors and bundles
round-trip exactly; any bytes, and any hostile edit of a valid bundle, decode
to something whose encoding is exactly those bytes or raise DecodeError,
never anything else; the bundle's root is the spec's root of its tensors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from bws.spec.constants import MAX_TENSOR_DIMS
from bws.spec.encoding import DecodeError
from bws.spec.hashing import compute_tensors_root
from bws.spec.tensors import decode_tensor, decode_tensor_bundle, encode_tensor, encode_tensor_bundle
from property_tests.strategies import integer_tensors, mutated, tensor_bundles

unicode_names = st.text(min_size=0, max_size=12)  # any code points, the empty name too


def assert_same_tensor(decoded: np.ndarray, original: np.ndarray) -> None:
    assert decoded.dtype == original.dtype and decoded.shape == original.shape
    assert np.array_equal(decoded, original)


@given(integer_tensors(max_dims=MAX_TENSOR_DIMS), st.booleans())
def test_a_tensor_round_trips_whatever_its_byte_order(array, big_endian):
    encoded = encode_tensor(array.astype(array.dtype.newbyteorder(">")) if big_endian else array)
    assert encoded == encode_tensor(array)
    assert_same_tensor(decode_tensor(encoded), array)


@given(tensor_bundles(st.one_of(unicode_names, st.text(alphabet="ab/", max_size=4))))
def test_a_bundle_round_trips_and_keeps_its_root(bundle):
    encoded = encode_tensor_bundle(bundle)
    decoded = decode_tensor_bundle(encoded)
    assert list(decoded) == sorted(bundle)
    for name, array in bundle.items():
        assert_same_tensor(decoded[name], array)
    assert encode_tensor_bundle(decoded) == encoded
    assert compute_tensors_root(decoded) == compute_tensors_root(bundle)


@pytest.mark.parametrize("decoder, encoder", [(decode_tensor, encode_tensor),
                                              (decode_tensor_bundle, encode_tensor_bundle)])
@given(data=st.binary(max_size=256))
def test_any_bytes_decode_canonically_or_raise_decode_error(decoder, encoder, data):
    try:
        value = decoder(data)
    except DecodeError as error:
        assert str(error)
        return
    assert encoder(value) == data


@given(st.data())
def test_an_edited_bundle_decodes_canonically_or_raises_decode_error(data):
    encoded = encode_tensor_bundle(data.draw(tensor_bundles()))
    edited = data.draw(mutated(encoded))
    try:
        decoded = decode_tensor_bundle(edited)
    except DecodeError as error:
        assert str(error)
        return
    assert encode_tensor_bundle(decoded) == edited  # one bundle, one encoding
