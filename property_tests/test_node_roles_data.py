"""The roles' tensor bundle codec, request parser and reveal check: round
trips on random integer tensors, and any bytes at all give a bundle or a
DataError (an ApiError for a reveal), never another exception."""
from types import SimpleNamespace

import numpy as np
from hypothesis import given, strategies as st

from bws.engine.commit import tensors_root
from bws.node.api import ApiError
from bws.node.roles.client import accept_reveal
from bws.node.roles.data import (
    DATA_TENSORS, DataError, bundle_root, decode_checked, decode_tensors, parse_request,
)
from bws.spec.constants import TASK_EVALUATION, TASK_TRAINING
from bws.spec.hashing import compute_tensors_root
from bws.spec.tensors import encode_tensor_bundle
from property_tests.strategies import tensor_bundles

@given(tensor_bundles())
def test_round_trip_keeps_values_dtypes_and_root(bundle):
    decoded = decode_tensors(encode_tensor_bundle(bundle))
    assert sorted(decoded) == sorted(bundle)
    for name, array in bundle.items():
        assert decoded[name].dtype == array.dtype and decoded[name].shape == array.shape
        assert np.array_equal(decoded[name], array)
    assert bundle_root(decoded) == bytes(compute_tensors_root(bundle))
    assert decode_checked(encode_tensor_bundle(bundle), bundle_root(bundle)).keys() == bundle.keys()


@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_data_error(data):
    try:
        decode_tensors(data)
    except DataError:
        pass


@given(tensor_bundles(), st.integers(0, 10_000), st.integers(0, 255))
def test_a_flipped_byte_is_caught_by_the_root(bundle, position, value):
    encoded = bytearray(encode_tensor_bundle(bundle))
    position %= len(encoded)
    if encoded[position] == value:
        return
    encoded[position] = value
    try:
        decode_checked(bytes(encoded), bundle_root(bundle))
    except DataError:
        return
    raise AssertionError("a changed bundle passed as the original")


@given(st.binary(max_size=40))
def test_request_parser_accepts_only_exact_requests(data):
    try:
        root = parse_request(data, DATA_TENSORS, 32)
    except DataError:
        assert data[:1] != DATA_TENSORS or len(data) != 33
        return
    assert data == DATA_TENSORS + root


@given(st.one_of(st.binary(max_size=512), tensor_bundles().map(encode_tensor_bundle)), st.booleans())
def test_a_reveal_of_any_bytes_is_taken_only_for_its_task_in_evaluation(raw, in_evaluation):
    """POST /reveal's check (node/roles/client.py): a bundle whose root a task in evaluation commits to, or an
    ApiError (400 not a bundle, 404 nobody commits to it, 409 not in evaluation), never another exception."""
    try:
        root = bundle_root(decode_tensors(raw))
    except DataError:
        root = b"\x00" * 32
    status = TASK_EVALUATION if in_evaluation else TASK_TRAINING
    state = SimpleNamespace(tasks={b"\x01" * 32: SimpleNamespace(test_set_hash=root, status=status)})
    try:
        task_id, revealed_root, _ = accept_reveal(state, raw)
    except ApiError as error:
        assert error.status in (400, 404, 409) and error.message
        return
    assert in_evaluation and task_id == b"\x01" * 32 and revealed_root == root


@given(tensor_bundles(), st.booleans(), st.booleans())
def test_the_engine_root_is_the_spec_root_whatever_the_memory_layout(bundle, big_endian, strided):
    """engine/commit.tensors_root hashes each tensor's own buffer instead of its encoding: the same root as
    the spec's compute_tensors_root, for big-endian and non-contiguous arrays too."""
    laid_out = {}
    for name, array in bundle.items():
        if big_endian:
            array = array.astype(array.dtype.newbyteorder(">"))
        if strided and array.ndim:
            array = np.repeat(array, 2, axis=0)[::2]
        laid_out[name] = array
    assert tensors_root(laid_out) == bytes(compute_tensors_root(bundle)) == bundle_root(laid_out)
