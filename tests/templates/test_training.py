"""Canonical training: acceptance accuracies on digits, determinism, real Keras
fixtures training, and the exported model files."""
import glob
import os

import flax.serialization
import jax
import numpy as np
import pytest

from bws.engine.commit import state_root
from bws.templates import datasets, jobs, keras
from bws.templates.export import export_model
from bws.templates.flax_model import flax_model, flax_variables
from bws.templates.canonical import CanonicalModel, params_to_float
from bws.templates.task import task_data
from bws.templates.training import train_supervised

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="module")
def trained_cnn(data_dir):
    """The cnn template with its defaults (init seed 0), trained once for the module."""
    task = jobs.make_task("cnn", "digits", data_dir=data_dir)
    data = task_data(task, data_dir)
    return task, data, train_supervised(task, data, progress=False)


def test_dnn_template_reaches_96_percent_on_digits(data_dir):
    task = jobs.make_task("dnn", "digits", data_dir=data_dir)  # the template defaults, init seed 0
    result = train_supervised(task, task_data(task, data_dir), progress=False)
    assert result.test_metrics["test_accuracy"] >= 0.96, result.test_metrics


@pytest.mark.slow
def test_cnn_template_reaches_96_percent_on_digits(trained_cnn):
    assert trained_cnn[2].test_metrics["test_accuracy"] >= 0.96, trained_cnn[2].test_metrics


def test_training_is_bit_exact_across_runs(data_dir):
    task = jobs.make_task("dnn", "digits", epochs=1, batch_size=128, data_dir=data_dir)
    data = task_data(task, data_dir)
    roots = {state_root(jax.device_get(train_supervised(task, data, progress=False).params["model"])) for _ in range(2)}
    assert len(roots) == 1


def _digits(data_dir, shape):
    split = datasets.load_split("digits", "train", data_dir=data_dir)
    return (split.inputs / 16.0).reshape((-1, *shape)).astype(np.float32), split.labels


@pytest.mark.parametrize("path", sorted(p for p in glob.glob(os.path.join(FIXTURES, "*.json")) if "unsupported" not in p),
                         ids=os.path.basename)
def test_real_keras_fixtures_train(path, data_dir):
    with open(path, encoding="utf-8") as f:
        model = keras.models.model_from_json(f.read())
    model.compile(optimizer=keras.optimizers.Adam(0.003), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=model.last_activation != "softmax"))
    x, y = _digits(data_dir, model.input_shape[1:])
    history = model.fit(x[:512], y[:512], batch_size=64, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert history.history["accuracy"][-1] > 0.3  # chance is 0.1


def test_keras_fit_evaluate_predict_weights_round_trip(data_dir):
    x, y = _digits(data_dir, (64,))
    model = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = x[:600], y[:600]
    history = model.fit(x, y, batch_size=50, epochs=2, verbose=0, validation_data=(x[:100], y[:100]))
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    loss, accuracy = model.evaluate(x, y, verbose=0)
    probabilities = model.predict(x[:20])
    assert probabilities.shape == (20, 10) and np.allclose(probabilities.sum(axis=1), 1.0, atol=0.01)
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(64, 32), (32,), (32, 10), (10,)]
    clone = keras.models.model_from_json(model.to_json())
    clone.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    clone.set_weights(weights)
    assert clone.evaluate(x, y, return_dict=True)["accuracy"] == pytest.approx(accuracy, abs=0.01)
    with pytest.raises(keras.models.KerasModelError, match="labels outside"):
        model.fit(x[:10], np.full(10, 12), batch_size=5, verbose=0)


@pytest.mark.slow
def test_exports_load_in_flax_and_keras(trained_cnn, tmp_path):
    task, data, result = trained_cnn
    params = result.params["model"]
    paths = export_model(task.model, params, str(tmp_path), "model")
    assert all(os.path.getsize(p) > 0 for p in paths)
    canonical = CanonicalModel(task.model)
    canonical.state = dict(canonical.state, params=jax.tree.map(np.asarray, params))
    reference = canonical.predict(data.test_float).argmax(-1)

    # flax: the msgpack restores into the flax twin of the model
    model = flax_model(task.model)
    template = flax_variables(params_to_float(jax.device_get(params)))
    with open(os.path.join(tmp_path, "model_flax.msgpack"), "rb") as f:
        variables = flax.serialization.from_bytes(template, f.read())
    flax_predictions = np.asarray(model.apply(variables, data.test_float)).argmax(-1)
    assert np.mean(flax_predictions == reference) > 0.97

    # Keras: the JSON and the get_weights-ordered arrays rebuild the model
    with open(os.path.join(tmp_path, "model_keras.json"), encoding="utf-8") as f:
        keras_model = keras.models.model_from_json(f.read())
    keras_model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    stored = np.load(os.path.join(tmp_path, "model_keras_weights.npz"))
    keras_model.set_weights([stored[f"arr_{i}"] for i in range(len(stored.files))])
    assert np.mean(keras_model.predict(data.test_float).argmax(-1) == reference) > 0.97
    with np.load(os.path.join(tmp_path, "model_weights.npz")) as weights:
        assert sorted(weights.files)[0] == "params/0/bias"


def test_regressor_template_beats_predicting_the_mean(data_dir):
    task = jobs.make_task("dnn_regressor", "digits", epochs=3, data_dir=data_dir)
    result = train_supervised(task, task_data(task, data_dir), progress=False)
    # Targets are label / 9, whose variance (the MSE of predicting the mean) is about 0.10.
    assert result.test_metrics["test_loss"] < 0.05, result.test_metrics
    assert "test_accuracy" not in result.test_metrics
