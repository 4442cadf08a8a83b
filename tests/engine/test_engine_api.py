"""The engine API: model validation, peer-update summing, predict/evaluate,
input quantization."""
import itertools
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bws import engine
from bws.engine import BatchError, EngineError, ModelSpec, ModelSpecError
from bws.engine.commit import state_root, update_root

MLP = engine.parse_model_shorthand("mlp:6-5-3")


def test_canonical_dict_fills_defaults_and_round_trips():
    spec = ModelSpec.from_dict(MLP)
    d = spec.to_dict()
    assert d["layers"][0]["kernel_initializer"] == "glorot_uniform" and d["update"] == {"type": "dense"}
    assert d["optimizer"] == {"type": "adam", "learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
    assert ModelSpec.from_dict(d) == spec and spec.to_json() == ModelSpec.from_dict(d).to_json()


@pytest.mark.parametrize("patch,field", [
    (lambda d: d["layers"][0].update(units=0), "layers[0].units"),
    (lambda d: d["layers"][1].update(activation="swish"), "layers[1].activation"),
    (lambda d: d["layers"][0].update(activation="softmax"), "layers[0].activation"),
    (lambda d: d.update(slices=4), "slices"),
    (lambda d: d.update(loss={"type": "hinge"}), "loss.type"),
    (lambda d: d.update(loss={"type": "mse"}), "loss.type"),  # softmax output needs a cross-entropy
    (lambda d: d.update(optimizer={"type": "adam", "beta_1": 1.5}), "optimizer.beta_1"),
    (lambda d: d["layers"].insert(0, {"type": "conv2d", "filters": 2, "kernel_size": 3}), "layers[0]"),
    (lambda d: d["layers"].insert(0, {"type": "dropout", "rate": 0.99}), "layers[0].rate"),
    (lambda d: d.update(bogus=1), "model: unknown field(s) bogus"),
    (lambda d: d.pop("input_shape"), "input_shape"),
])
def test_errors_name_the_field(patch, field):
    d = engine.parse_model_shorthand("mlp:6-5-3")
    patch(d)
    with pytest.raises(ModelSpecError) as error:
        ModelSpec.from_dict(d)
    assert str(error.value).startswith(field)


def test_peer_updates_sum_in_any_order():
    spec = ModelSpec.from_dict(MLP)
    params = jax.tree.map(np.asarray, engine.init_state(spec, 0)["params"])
    rng = np.random.default_rng(1)
    updates = [jax.tree.map(lambda a: rng.integers(-2**31 + 1, 2**31 - 1, a.shape).astype(np.int32), params)
               for _ in range(3)]  # large enough to wrap around
    roots = {update_root(jax.tree.map(np.asarray, engine.sum_updates(list(order), spec)))
             for order in itertools.permutations(updates)}
    assert len(roots) == 1
    assert update_root(jax.tree.map(np.asarray, engine.sum_updates([], spec))) == update_root(
        jax.tree.map(np.zeros_like, params))


def test_predict_and_evaluate_after_training():
    spec = ModelSpec.from_dict(dict(MLP, optimizer={"type": "adam", "learning_rate": 0.05}))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6))
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32)
    xq = engine.quantize_inputs(x)
    state = engine.init_state(spec, 0)
    step = engine.make_iteration(spec)
    for _ in range(60):
        state, _, metrics = step(state, engine.check_batch(spec, {"x": xq, "y": y}), engine.sum_updates([], spec))
    probabilities = np.asarray(engine.predict(spec, state["params"], xq))
    assert probabilities.shape == (64, 3) and np.all(np.abs(probabilities.sum(axis=1) - 2**16) <= 3)
    result = engine.evaluate(spec, state["params"], xq, y, batch_size=16)
    assert result["count"] == 64 and result["accuracy"] == Fraction(result["correct"], 64)
    assert result["accuracy"] > Fraction(3, 4)  # it learned the rule
    assert int(metrics["correct"]) == result["correct"]


def test_state_root_covers_every_tensor():
    spec = ModelSpec.from_dict(MLP)
    state = jax.tree.map(np.asarray, engine.init_state(spec, 0))
    before = state_root(state)
    state["opt"]["v"]["1"]["bias"] = state["opt"]["v"]["1"]["bias"] + 1
    assert state_root(state) != before


def test_quantize_inputs_rounds_half_up_and_saturates():
    q = engine.quantize_inputs([0.5 / 2**16, -0.5 / 2**16, 1.0, 1e9, -1e9])
    assert q.tolist() == [1, 0, 65536, 2**31 - 1, -(2**31 - 1)] and q.dtype == np.int32
    with pytest.raises(EngineError):
        engine.quantize_inputs([float("nan")])


def test_bad_batches_and_seeds_are_rejected():
    spec = ModelSpec.from_dict(MLP)
    with pytest.raises(BatchError, match="batch.x"):
        engine.check_batch(spec, {"x": np.zeros((2, 7), np.int32), "y": np.zeros(2, np.int32)})
    with pytest.raises(BatchError, match="labels"):
        engine.check_batch(spec, {"x": np.zeros((2, 6), np.int32), "y": np.full(2, 3, np.int32)})
    with pytest.raises(BatchError, match="int32"):
        engine.check_batch(spec, {"x": np.zeros((2, 6)), "y": np.zeros(2, np.int32)})
    with pytest.raises(EngineError, match="seed"):
        engine.init_state(spec, -1)


@pytest.mark.parametrize("name", ["beta_1", "beta_2"])
def test_optimizer_step_called_directly_names_a_beta_that_rounds_to_one(name):
    from bws.engine import ops
    params = {"0": {"kernel": jnp.zeros((2, 2), jnp.int32)}}
    config = {"type": "adam", "learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, name: 1 - 1e-12}
    with pytest.raises(ValueError, match=f"{name}.*rounds to 1"):
        ops.optimizer_step(config, params, ops.optimizer_init(config, params), jnp.asarray(0, jnp.int64))
