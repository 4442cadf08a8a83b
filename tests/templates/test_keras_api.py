"""The Keras-compatible API: layers, models, JSON, and compilation to the engine's model description."""
import glob
import json
import os

import numpy as np
import pytest

from bws.templates import keras
from bws.templates.errors import KerasModelError, UnsupportedKerasFeature

layers = keras.layers
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return f.read()


def small_cnn():
    return keras.Sequential([
        keras.Input(shape=(8, 8, 1)),
        layers.Conv2D(4, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(10, activation="softmax"),
    ], name="small_cnn")


def test_shapes_and_parameter_counts_follow_keras():
    model = small_cnn()
    assert model.input_shape == (None, 8, 8, 1)
    assert model.output_shape == (None, 10)
    assert [layer.output_shape for layer in model.layers] == [(8, 8, 4), (4, 4, 4), (64,), (10,)]
    assert model.count_params() == (3 * 3 * 1 * 4 + 4) + (64 * 10 + 10)
    assert model.weight_shapes() == [(0, "kernel", (3, 3, 1, 4)), (0, "bias", (4,)), (3, "kernel", (64, 10)), (3, "bias", (10,))]


def test_keras_defaults():
    dense = layers.Dense(3)
    assert (dense.activation, dense.use_bias, dense.kernel_initializer, dense.bias_initializer) == \
        ("linear", True, "glorot_uniform", "zeros")
    conv = layers.Conv2D(2, 5)
    assert (conv.kernel_size, conv.strides, conv.padding) == ((5, 5), (1, 1), "valid")
    pool = layers.AveragePooling2D(pool_size=3)
    assert pool.strides == (3, 3)
    assert layers.LeakyReLU().negative_slope == 0.3
    assert layers.LeakyReLU(alpha=0.1).negative_slope == 0.1  # the tf.keras 2 name


def test_summary_lists_layers_and_totals():
    lines = []
    small_cnn().summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert 'Model: "small_cnn"' in text and "(Conv2D)" in text and "(None, 4, 4, 4)" in text
    assert "Total params: 690" in text


def test_functional_chain_equals_sequential():
    inputs = keras.Input(shape=(64,))
    x = layers.Dense(16, activation="relu")(inputs)
    outputs = layers.Dense(10)(x)
    functional = keras.Model(inputs=inputs, outputs=outputs, name="f")
    sequential = keras.Sequential([keras.Input(shape=(64,)), layers.Dense(16, activation="relu"), layers.Dense(10)])
    for model in (functional, sequential):
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert functional.engine_description() == sequential.engine_description()


def test_first_layer_input_shape_argument():
    model = keras.Sequential([layers.Dense(4, input_shape=(6,)), layers.Dense(2)])
    assert model.input_shape == (None, 6)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(FIXTURES, "*.json"))), ids=os.path.basename)
def test_real_keras_fixtures_load_or_name_the_unsupported_layer(path):
    text = open(path, encoding="utf-8").read()
    if "unsupported_batchnorm" in path:
        with pytest.raises(UnsupportedKerasFeature, match="BatchNormalization"):
            keras.models.model_from_json(text)
        return
    model = keras.models.model_from_json(text)
    expected = {"dnn_sequential": 4810, "cnn_sequential": 6090, "mlp_functional": 2762}
    assert model.count_params() == next(v for k, v in expected.items() if k in path)
    # our JSON reloads to the same model
    again = keras.models.model_from_json(model.to_json())
    assert again.to_json() == model.to_json()


def test_keras3_and_tf_keras2_fixtures_compile_to_the_same_engine_model():
    for name in ("dnn_sequential", "cnn_sequential"):
        descriptions = []
        for flavour in ("keras3", "tf_keras2"):
            model = keras.models.model_from_json(fixture(f"{flavour}_{name}.json"))
            model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=model.last_activation != "softmax"))
            descriptions.append(model.engine_description())
        assert descriptions[0] == descriptions[1]


def test_engine_description_is_the_documented_dict():
    model = keras.Sequential([keras.Input(shape=(64,)), layers.Dense(32, activation="relu"), layers.Dropout(0.2),
                              layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.002), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], slices=3)
    description = model.engine_description()
    assert description["input_shape"] == [64]
    assert description["layers"][0]["type"] == "dense" and description["layers"][0]["units"] == 32
    assert description["layers"][1] == {"type": "dropout", "rate": 0.2}
    assert description["loss"] == {"type": "softmax_cross_entropy"}
    assert description["optimizer"]["type"] == "adam" and description["optimizer"]["learning_rate"] == 0.002
    assert description["slices"] == 3


@pytest.mark.parametrize("build, match", [
    (lambda: layers.Dense(4, kernel_regularizer="l2"), "kernel_regularizer"),
    (lambda: layers.Dense(4, activation="gelu"), "gelu"),
    (lambda: layers.Dense(4, kernel_initializer="he_normal"), "he_normal"),
    (lambda: layers.Conv2D(4, 3, dilation_rate=2), "dilation_rate"),
    (lambda: layers.MaxPooling2D(padding="same"), "padding"),
    (lambda: layers.ReLU(max_value=6.0), "max_value"),
    (lambda: layers.Dense(4, not_a_keras_argument=1), "not_a_keras_argument"),
    (lambda: layers.Dropout(0.5, seed=3), "seed"),
])
def test_unsupported_arguments_are_named(build, match):
    with pytest.raises(UnsupportedKerasFeature, match=match):
        build()


def test_unsupported_graphs_and_compile_arguments_are_named():
    a = keras.Input(shape=(4,))
    b = keras.Input(shape=(4,))
    with pytest.raises(UnsupportedKerasFeature, match="2 inputs"):
        keras.Model(inputs=[a, b], outputs=layers.Dense(1)(a))
    with pytest.raises(UnsupportedKerasFeature, match="subclassed"):
        keras.Model()
    model = keras.Sequential([keras.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    with pytest.raises(UnsupportedKerasFeature, match="rmsprop"):
        model.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(UnsupportedKerasFeature, match="from_logits=True"):
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(UnsupportedKerasFeature, match="label_smoothing"):
        keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    with pytest.raises(UnsupportedKerasFeature, match="auc"):
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["auc"])
    separate_softmax = keras.Sequential([keras.Input(shape=(4,)), layers.Dense(3), layers.Activation("softmax")])
    with pytest.raises(UnsupportedKerasFeature, match="Activation\\('softmax'\\)"):
        separate_softmax.compile(optimizer="adam", loss="sparse_categorical_crossentropy")


@pytest.mark.parametrize("text, error", [
    ("not json", KerasModelError),
    ("[]", KerasModelError),
    ('{"class_name": "Sequential", "config": {"layers": 3}}', KerasModelError),
    ('{"class_name": "Subclassed", "config": {}}', UnsupportedKerasFeature),
    ('{"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": {"units": 3}}]}}',
     KerasModelError),  # no input shape anywhere
    ('{"class_name": "Sequential", "config": {"layers": [{"class_name": "InputLayer", "config": {"batch_shape": [null, 4]}},'
     ' {"class_name": "LSTM", "config": {"units": 3, "name": "lstm"}}]}}', UnsupportedKerasFeature),
])
def test_bad_model_json_is_a_clear_error(text, error):
    with pytest.raises(error):
        keras.models.model_from_json(text)


def test_branching_functional_json_is_refused():
    document = json.loads(fixture("keras3_mlp_functional.json"))
    layers_ = document["config"]["layers"]
    stray = json.loads(json.dumps(layers_[-1]))
    stray["name"] = stray["config"]["name"] = "side_branch"
    layers_.append(stray)
    with pytest.raises(UnsupportedKerasFeature, match="side_branch"):
        keras.models.model_from_json(json.dumps(document))


def test_set_weights_checks_count_and_shapes_before_the_engine():
    model = keras.Sequential([keras.Input(shape=(4,)), layers.Dense(3)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(KerasModelError, match="2 weights"):
        model.set_weights([np.zeros((4, 3))])
    with pytest.raises(KerasModelError, match="shape"):
        model.set_weights([np.zeros((3, 4)), np.zeros(3)])
    with pytest.raises(KerasModelError, match="NaN"):
        model.set_weights([np.full((4, 3), np.nan), np.zeros(3)])


@pytest.mark.parametrize("kwargs, error, message", [
    (True, KerasModelError, "kwargs must be an object"),
    ({"training": True}, UnsupportedKerasFeature, r"call arguments \['training'\] are not supported"),
])
def test_an_inbound_node_with_call_arguments_is_refused_with_its_fault(kwargs, error, message):
    """Found by the nightly hypothesis profile: `"kwargs": true` was a TypeError."""
    path = os.path.join(os.path.dirname(__file__), "fixtures", "keras3_mlp_functional.json")
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    layer = next(entry for entry in document["config"]["layers"] if entry["inbound_nodes"])
    layer["inbound_nodes"][0]["kwargs"] = kwargs
    with pytest.raises(error, match=message):
        keras.models.model_from_json(json.dumps(document))
