"""The task-definition parser on arbitrary and mutated input: it returns a
valid definition or raises TaskDefinitionError, never anything else; the
client's test file loader likewise (valid examples or DatasetError)."""
import copy
import json
import os
import tempfile

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from bws.templates.datasets import SplitArrays, load_test_file
from bws.templates.errors import DatasetError, TaskDefinitionError
from bws.templates.task import TASK_FORMAT, canonical_bytes, parse_task

VALID = {
    "format": TASK_FORMAT,
    "template": "dnn",
    "model": {"input_shape": [64], "layers": [
        {"activation": "softmax", "alpha": 0.2, "bias_initializer": "zeros", "kernel_initializer": "glorot_uniform",
         "type": "dense", "units": 10, "use_bias": True}],
        "loss": {"type": "softmax_cross_entropy"},
        "optimizer": {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-07, "learning_rate": 0.001, "type": "adam"},
        "slices": 2, "update": {"type": "dense"}},
    "dataset": {"name": "digits", "version": "1.0.0", "split": "train", "test_split": "test", "num_examples": 1501,
                "test_examples": 296, "input_range": [0.0, 1.0], "max_input": 16, "target": "label", "batch_size": 32,
                "schedule": {"rule": "bws-permutation/1", "seed": 0}, "num_batches": 46,
                "batches_root": "ab" * 32, "test_root": "cd" * 32},
    "hyperparameters": {"epochs": 1, "iterations": 46, "init_seed": 0},
    "slices": 2,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, prefix + (index,))


PATHS = [p for p in _paths(VALID) if p]


def _parse(data: bytes):
    try:
        return parse_task(data)
    except TaskDefinitionError as exc:
        assert str(exc)
        return None


def test_the_valid_document_parses():
    assert parse_task(canonical_bytes(VALID)).document == VALID


@given(st.binary(max_size=400))
def test_arbitrary_bytes(data):
    _parse(data)


@given(json_values)
def test_arbitrary_json(value):
    _parse(json.dumps(value).encode())


@given(st.sampled_from(PATHS), json_values | st.just("__delete__"))
def test_one_field_replaced_or_deleted(path, value):
    document = copy.deepcopy(VALID)
    target = document
    for key in path[:-1]:
        target = target[key]
    if value == "__delete__":
        del target[path[-1]]
    else:
        target[path[-1]] = value
    parsed = _parse(json.dumps(document).encode())
    if parsed is not None:  # whatever got through is canonical and re-parses to itself
        assert parse_task(parsed.to_bytes()).document == parsed.document


@given(st.integers(0, 2000), st.binary(min_size=1, max_size=3))
def test_byte_corruption(position, replacement):
    data = bytearray(canonical_bytes(VALID))
    position %= len(data)
    data[position:position + len(replacement)] = replacement
    _parse(bytes(data))


# -- the client's test file (bws task new --test-file) ------------------------------------------------------------
DIGITS_LIKE = SplitArrays(name="digits", version="1.0.0", split="train", inputs=np.zeros((2, 8, 8, 1), np.uint8),
                          labels=np.zeros(2, np.int64), num_classes=10, max_input=16)
array_dtypes = st.sampled_from(["uint8", "int8", "int32", "int64", "float32", "bool", "uint16"])


@st.composite
def client_file_arrays(draw) -> dict:
    """A valid test file's arrays, then maybe one change: a key dropped or added, a dtype, a shape, a value."""
    count = draw(st.integers(1, 4))
    arrays = {"x": np.array(draw(st.lists(st.integers(0, 16), min_size=count * 64, max_size=count * 64)),
                            np.uint8).reshape(count, 8, 8, 1),
              "y": np.array(draw(st.lists(st.integers(0, 9), min_size=count, max_size=count)), np.int64)}
    change = draw(st.sampled_from(["none", "drop", "add", "dtype", "shape", "value"]))
    key = draw(st.sampled_from(["x", "y"]))
    if change == "drop":
        del arrays[key]
    elif change == "add":
        arrays["z"] = arrays[key]
    elif change == "dtype":
        arrays[key] = arrays[key].astype(draw(array_dtypes))
    elif change == "shape":
        arrays[key] = arrays[key].reshape(draw(st.sampled_from([(-1,), (1, -1), (-1, 1)])))[:draw(st.integers(0, 4))]
    elif change == "value":
        flat = arrays[key].astype(np.int64).reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.integers(-300, 300))
        arrays[key] = flat.reshape(arrays[key].shape)
    return arrays


@given(st.one_of(client_file_arrays(), st.binary(max_size=300)))
def test_a_test_file_loads_as_valid_examples_or_is_refused_with_dataset_error(content):
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "test.npz")
        if isinstance(content, dict):
            np.savez(path, **content)
        else:
            with open(path, "wb") as f:
                f.write(content)
        try:
            split = load_test_file(path, DIGITS_LIKE)
        except DatasetError as error:
            assert str(error).startswith(("test file", "cannot read test file"))
            return
    assert split.inputs.shape[1:] == (8, 8, 1) and split.inputs.shape[0] == split.labels.shape[0] >= 1
    assert 0 <= split.inputs.min() and split.inputs.max() <= 16 and 0 <= split.labels.min() and split.labels.max() < 10
