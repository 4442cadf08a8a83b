"""The engine against the NumPy reference (spec/reference), bit for bit, over
every layer, activation, loss, optimizer, update kind and slice count."""
import jax
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from bws.engine import ModelSpec, init_state, make_iteration, quantize_inputs, sum_updates
from bws.engine.commit import flatten
from bws.spec.reference import arithmetic, training

MODELS = {
    "mlp-adam-threshold": {
        "input_shape": [20], "slices": 2, "update": {"type": "threshold", "threshold": 0.0005},
        "layers": [{"type": "dense", "units": 16, "activation": "relu"},
                   {"type": "dense", "units": 8, "activation": "relu", "kernel_initializer": "he_uniform"},
                   {"type": "dense", "units": 4, "activation": "softmax"}],
        "loss": {"type": "softmax_cross_entropy"}, "optimizer": {"type": "adam", "learning_rate": 0.01}},
    "mlp-nesterov-3slices": {
        "input_shape": [12], "slices": 3,
        "layers": [{"type": "dense", "units": 10, "activation": "tanh"},
                   {"type": "dropout", "rate": 0.25},
                   {"type": "dense", "units": 10, "activation": "sigmoid", "kernel_initializer": "lecun_uniform"},
                   {"type": "dense", "units": 8, "activation": "leaky_relu", "alpha": 0.2},
                   {"type": "leaky_relu", "alpha": 0.1},
                   {"type": "dense", "units": 5, "activation": "softmax"}],
        "loss": {"type": "categorical_cross_entropy"},
        "optimizer": {"type": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True}},
    "bce-sgd-1slice": {
        "input_shape": [9], "slices": 1,
        "layers": [{"type": "dense", "units": 7, "activation": "relu"},
                   {"type": "dense", "units": 3, "activation": "sigmoid", "bias_initializer": "ones"}],
        "loss": {"type": "sigmoid_binary_cross_entropy"}, "optimizer": {"type": "sgd", "learning_rate": 0.5}},
    "mse-momentum": {
        "input_shape": [6], "slices": 2,
        "layers": [{"type": "dense", "units": 8, "activation": "linear", "use_bias": False},
                   {"type": "activation", "activation": "tanh"},
                   {"type": "dense", "units": 2}],
        "loss": {"type": "mse"}, "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.5}},
    "cnn-pools": {
        "input_shape": [10, 9, 2], "slices": 2,
        "layers": [{"type": "conv2d", "filters": 4, "kernel_size": [3, 3], "padding": "same", "activation": "relu"},
                   {"type": "max_pool2d", "pool_size": [2, 2]},
                   {"type": "conv2d", "filters": 5, "kernel_size": [2, 3], "strides": [2, 1], "padding": "valid",
                    "activation": "tanh"},
                   {"type": "avg_pool2d", "pool_size": [1, 2], "strides": [1, 1]},
                   {"type": "flatten"},
                   {"type": "dense", "units": 3, "activation": "softmax"}],
        "loss": {"type": "softmax_cross_entropy"}, "optimizer": {"type": "adam"}},
    "reshape-cnn-dropout-3slices": {
        "input_shape": [36], "slices": 3,
        "layers": [{"type": "reshape", "target_shape": [6, 6, 1]},
                   {"type": "conv2d", "filters": 3, "kernel_size": 3, "strides": [2, 2], "padding": "same",
                    "activation": "leaky_relu"},
                   {"type": "dropout", "rate": 0.5},
                   {"type": "flatten"},
                   {"type": "dense", "units": 2, "activation": "sigmoid"}],
        "loss": {"type": "sigmoid_binary_cross_entropy"}, "optimizer": {"type": "adam", "learning_rate": 0.003}},
}


def _batch(spec: ModelSpec, rng, size: int) -> dict:
    x = quantize_inputs(rng.normal(0, 1.5, (size,) + tuple(spec.input_shape)))
    loss = spec.loss["type"]
    if loss == "softmax_cross_entropy":
        y = rng.integers(0, spec.output_shape[0], size).astype(np.int32)
    elif loss == "categorical_cross_entropy":
        y = quantize_inputs(rng.dirichlet(np.ones(spec.output_shape[0]), size))
    elif loss == "sigmoid_binary_cross_entropy":
        y = quantize_inputs(rng.integers(0, 2, (size,) + spec.output_shape))
    else:
        y = quantize_inputs(rng.normal(0, 1, (size,) + spec.output_shape))
    return {"x": x, "y": y}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_iterations_match_reference(name):
    spec = ModelSpec.from_dict(MODELS[name])
    model = spec.to_dict()
    rng = np.random.default_rng(5)
    engine_state, reference_state = init_state(spec, 11), training.init_state(model, 11)
    assert _mismatches(flatten(engine_state), flatten(reference_state)) == []
    iteration = make_iteration(spec)
    for step in range(3):
        batch = _batch(spec, rng, 8)
        params = jax.tree.map(np.asarray, engine_state["params"])
        peers = [jax.tree.map(lambda a: rng.integers(-3000, 3000, a.shape).astype(np.int32), params)
                 for _ in range(step)]
        peer_sum = jax.tree.map(np.asarray, sum_updates(peers, spec))
        engine_state, engine_update, engine_metrics = iteration(engine_state, batch, peer_sum)
        reference_state, reference_update, reference_metrics = training.iteration(
            model, reference_state, batch, peer_sum)
        assert _mismatches(flatten(engine_state), flatten(reference_state)) == [], f"state after step {step}"
        assert _mismatches(flatten(engine_update), flatten(reference_update)) == [], f"update at step {step}"
        assert {k: int(v) for k, v in engine_metrics.items()} == reference_metrics
    # the model learned something real: parameters moved
    assert any(np.any(a != 0) for a in flatten(engine_update).values()) or spec.update["type"] == "threshold"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_evaluation_matches_reference(name):
    """The spec's `Evaluate` (the count a model gets right) computed by the
    engine, as every replaying node runs it, equals the NumPy reference's."""
    from bws.engine import evaluate

    spec = ModelSpec.from_dict(MODELS[name])
    rng = np.random.default_rng(8)
    state = init_state(spec, 13)
    state, _, _ = make_iteration(spec)(state, _batch(spec, rng, 8), jax.tree.map(
        lambda a: np.zeros(a.shape, np.int32), jax.tree.map(np.asarray, state["params"])))
    params = jax.tree.map(np.asarray, state["params"])
    test = _batch(spec, rng, 40)
    engine_count = evaluate(spec, params, test["x"], test["y"], batch_size=16)["correct"]
    assert engine_count == training.count_correct(spec.to_dict(), params, test["x"], test["y"])


def _mismatches(a: dict, b: dict) -> list:
    assert set(a) == set(b), (sorted(set(a) ^ set(b)))
    return [k for k in sorted(a) if a[k].dtype != b[k].dtype or not np.array_equal(a[k], b[k])]


def test_reference_threefry_matches_jax():
    rng = np.random.default_rng(0)
    for _ in range(5):
        key = rng.integers(0, 2**32, 2, dtype=np.uint64).astype(np.uint32)
        counters = rng.integers(0, 2**32, 64, dtype=np.uint64).astype(np.uint32)
        expected = np.asarray(threefry_2x32(key, counters))
        first, second = arithmetic.threefry2x32(tuple(int(k) for k in key), counters[:32], counters[32:])
        assert np.array_equal(np.concatenate([first, second]), expected)


def test_glorot_initialization_statistics():
    spec = ModelSpec.from_dict(MODELS["mlp-adam-threshold"])
    kernel = np.asarray(init_state(spec, 3)["params"]["0"]["kernel"]) / 2**24
    limit = np.sqrt(6 / (20 + 16))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
    assert abs(kernel.mean()) < 0.1 and len(np.unique(kernel)) == kernel.size
    assert not np.array_equal(kernel, np.asarray(init_state(spec, 4)["params"]["0"]["kernel"]) / 2**24)
