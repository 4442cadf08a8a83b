"""Hypothesis: the spec's task-definition reader and work counter accept or
reject any input with TaskDefinitionError, never another exception."""
import json

from hypothesis import given, strategies as st

from bws.spec.tasks import (
    TaskDefinitionError, compute_json_depth, compute_model_macs, compute_work_units, parse_task_definition,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.text(max_size=6) | st.sampled_from(
        ["dense", "conv2d", "max_pool2d", "avg_pool2d", "flatten", "reshape", "dropout", "same", "valid"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "units", "filters", "kernel_size", "pool_size", "strides", "padding",
                         "target_shape", "input_shape", "layers"]), children, max_size=5),
    max_leaves=20)

layers = st.fixed_dictionaries({"type": st.sampled_from(["dense", "conv2d", "max_pool2d", "flatten", "reshape",
                                                         "dropout", "lstm"])},
                               optional={"units": st.integers(-1, 9), "filters": st.integers(0, 5),
                                         "kernel_size": st.lists(st.integers(0, 4), max_size=3),
                                         "pool_size": st.lists(st.integers(1, 3), min_size=2, max_size=2),
                                         "strides": st.lists(st.integers(1, 3), min_size=2, max_size=2),
                                         "padding": st.sampled_from(["same", "valid", "full"]),
                                         "target_shape": st.lists(st.integers(1, 8), max_size=3)})
models = st.fixed_dictionaries({"input_shape": st.lists(st.integers(0, 9), max_size=3),
                                "layers": st.lists(layers, max_size=4)},
                               optional={"loss": st.sampled_from([{"type": "mse"}, {"type": "softmax_cross_entropy"}]),
                                         "optimizer": st.sampled_from([{"type": "sgd"}, {"type": "adam"}])})


def depth_of(value) -> int:
    """The nesting depth of a decoded JSON value, by recursion (the model of compute_json_depth)."""
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


@given(st.recursive(st.none() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=8),
                    lambda children: st.lists(children, max_size=3) | st.dictionaries(
                        st.text(alphabet='[]{}"\\ab', max_size=4), children, max_size=3), max_leaves=30))
def test_json_depth_ignores_brackets_inside_strings(value):
    assert compute_json_depth(json.dumps(value)) == depth_of(value)


@given(st.binary(max_size=200))
def test_arbitrary_bytes(data):
    try:
        definition = parse_task_definition(data)
    except TaskDefinitionError:
        return
    assert json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() == data


@given(json_values)
def test_arbitrary_json_models(model):
    try:
        assert compute_model_macs(model) >= 0
    except TaskDefinitionError:
        pass


@given(models, st.integers(-1, 64))
def test_layer_stacks(model, batch_size):
    data = json.dumps({"dataset": {"batch_size": batch_size}, "model": model}, sort_keys=True,
                      separators=(",", ":")).encode()
    try:
        units = compute_work_units(data)
    except TaskDefinitionError:
        return
    assert units == compute_model_macs(model) * batch_size * 3 and batch_size > 0
