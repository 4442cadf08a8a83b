"""Hypothesis: the vector file parser and the model description validator
accept or reject every input with their own error type, never crash."""
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from bws.engine.model import ModelSpec, ModelSpecError
from bws.engine.vector import VectorError, read_vector

FIXTURE = (Path(__file__).parent.parent / "tests/engine/vectors/cnn-8x8x1-4-8-10-b32.vec").read_bytes()


@given(st.binary(max_size=512))
def test_random_bytes(data):
    with pytest.raises(VectorError):
        read_vector(data)


@given(st.integers(0, len(FIXTURE) - 1), st.integers(1, 8), st.binary(min_size=1, max_size=8))
def test_mutated_fixture(position, length, replacement):
    data = FIXTURE[:position] + replacement + FIXTURE[position + length:]
    try:
        vector = read_vector(data)
    except VectorError:
        return
    assert vector.to_bytes() == data  # anything accepted is canonical


@given(st.integers(0, len(FIXTURE)))
def test_truncated_fixture(length):
    if length == len(FIXTURE):
        read_vector(FIXTURE[:length])
        return
    with pytest.raises(VectorError):
        read_vector(FIXTURE[:length])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 600) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20)
layer_types = st.sampled_from(["dense", "conv2d", "max_pool2d", "avg_pool2d", "flatten", "reshape", "dropout",
                               "activation", "leaky_relu", "lstm"])


@st.composite
def model_like(draw):
    layers = draw(st.lists(st.fixed_dictionaries({"type": layer_types}, optional={
        "units": st.integers(-1, 40), "filters": st.integers(0, 8), "kernel_size": json_values,
        "activation": st.sampled_from(["relu", "softmax", "tanh", "swish"]), "rate": json_values,
        "target_shape": json_values, "padding": st.sampled_from(["same", "valid", "full"])}), max_size=5))
    return draw(st.fixed_dictionaries({"layers": st.just(layers)}, optional={
        "input_shape": st.sampled_from([[8], [4, 4, 1], [0], "x", [8, 8, 1, 1]]),
        "loss": st.sampled_from([{"type": "mse"}, {"type": "softmax_cross_entropy"}, {"type": "hinge"}, 3]),
        "optimizer": st.sampled_from([{"type": "adam"}, {"type": "sgd", "momentum": 2}, {}]),
        "slices": st.integers(0, 4), "extra": json_values}))


@given(st.one_of(json_values, model_like()))
def test_model_validation(candidate):
    try:
        spec = ModelSpec.from_dict(candidate)
    except ModelSpecError as error:
        assert str(error)
        return
    assert ModelSpec.from_dict(spec.to_dict()) == spec
