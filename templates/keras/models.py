"""Keras models: `Sequential`, the functional `Model(inputs, outputs)` for chains
of layers, `model_from_json` for the JSON that real Keras writes (tf.keras 2.x
and Keras 3), and compile/fit/evaluate/predict through the canonical engine."""
from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from bws.engine.model import ModelSpec, ModelSpecError

from .. import canonical
from ..errors import KerasModelError, UnsupportedKerasFeature
from . import losses as losses_module
from . import optimizers as optimizers_module
from .layers import (
    LEAKY_RELU_ACTIVATION_SLOPE, Activation, AveragePooling2D, Conv2D, Dense, Dropout, Flatten, InputLayer,
    KerasTensor, Layer, LeakyReLU, MaxPooling2D, ReLU, Reshape, layer_from_config,
)

# Metrics that are plain classification accuracy in Keras.
ACCURACY_METRICS = ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy")
# The precision compile() uses unless told: 3 int8 slices (~23 bits), within
# float32's accuracy on the digits benchmarks (bench/accuracy.py).
DEFAULT_SLICES = 3


class History:
    """What `fit` returns, as in Keras: `history.history['loss']` per epoch."""

    def __init__(self, epoch: list[int], history: dict[str, list[float]]) -> None:
        self.epoch = epoch
        self.history = history


def _last_activation(layers: list[Layer]) -> str:
    """The activation the model's output passes through last (shape-only
    layers like Flatten or Dropout do not change it)."""
    for layer in reversed(layers):
        if isinstance(layer, (Dense, Conv2D, Activation)):
            return layer.activation
        if isinstance(layer, LeakyReLU):
            return "leaky_relu"
        if isinstance(layer, ReLU):
            return "leaky_relu" if layer.negative_slope else "relu"
    return "linear"


class Model:
    """A chain of layers from one input to one output. `Model(inputs, outputs)`
    builds it from the functional API; `Sequential` from a list."""

    def __init__(self, inputs: Any = None, outputs: Any = None, name: str | None = None, **kwargs: Any):
        if kwargs:
            raise UnsupportedKerasFeature(f"Model argument(s) {', '.join(sorted(kwargs))} not supported")
        self.name = name or "functional"
        self.input_layer: InputLayer | None = None
        self.layers: list[Layer] = []
        self._compiled: dict[str, Any] | None = None
        self._engine_model: Any = None  # the canonical model once compiled (templates.canonical)
        if type(self) is Model:
            if inputs is None or outputs is None:
                raise UnsupportedKerasFeature("subclassed models are not supported; use Model(inputs, outputs) or Sequential")
            self._init_functional(inputs, outputs)

    def _init_functional(self, inputs: Any, outputs: Any) -> None:
        inputs = self._single(inputs, "inputs")
        outputs = self._single(outputs, "outputs")
        chain: list[Layer] = []
        tensor = outputs
        while tensor.inbound is not None:
            chain.append(tensor.layer)
            tensor = tensor.inbound
        if tensor is not inputs:
            raise UnsupportedKerasFeature("the outputs do not come from the given inputs through a chain of layers")
        self.input_layer = inputs.layer
        self.layers = chain[::-1]
        if not self.layers:
            raise KerasModelError("a model needs at least one layer after its input")

    @staticmethod
    def _single(value: Any, what: str) -> KerasTensor:
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise UnsupportedKerasFeature(f"models with {len(value)} {what} are not supported (one input, one output)")
            value = value[0]
        if isinstance(value, dict):
            raise UnsupportedKerasFeature(f"dict {what} are not supported")
        if not isinstance(value, KerasTensor):
            raise KerasModelError(f"{what} must come from keras.Input and layer calls, got {type(value).__name__}")
        return value

    # -- structure -----------------------------------------------------------
    @property
    def built(self) -> bool:
        return self.input_layer is not None

    def _require_built(self) -> None:
        if not self.built:
            raise KerasModelError(f"model {self.name!r} has no input shape yet; start it with keras.Input(shape=...)")

    @property
    def input_shape(self) -> tuple:
        self._require_built()
        return (None, *self.input_layer.shape)

    @property
    def output_shape(self) -> tuple:
        self._require_built()
        return (None, *self.layers[-1].output_shape)

    @property
    def last_activation(self) -> str:
        """The activation the output passes through last ('linear' if none)."""
        self._require_built()
        return _last_activation(self.layers)

    def count_params(self) -> int:
        self._require_built()
        return sum(layer.count_params() for layer in self.layers)

    def weight_shapes(self) -> list[tuple[int, str, tuple[int, ...]]]:
        """(layer index, weight name, shape) in Keras `get_weights` order."""
        self._require_built()
        return [(index, name, shape) for index, layer in enumerate(self.layers) for name, shape in layer.weight_shapes()]

    def summary(self, print_fn: Callable[[str], Any] | None = None) -> None:
        """Print the Keras-style table of layers, output shapes and parameters."""
        self._require_built()
        print_fn = print_fn or print
        rows = [(f"{self.input_layer.name} (InputLayer)", str(self.input_shape), "0")]
        rows += [(f"{layer.name} ({layer.keras_class})", str((None, *layer.output_shape)), f"{layer.count_params():,}")
                 for layer in self.layers]
        widths = [max(len(header), *(len(row[i]) for row in rows)) for i, header in enumerate(("Layer (type)", "Output Shape", "Param #"))]
        line = "  ".join("-" * w for w in widths)
        print_fn(f'Model: "{self.name}"')
        print_fn(line)
        print_fn("  ".join(h.ljust(w) for h, w in zip(("Layer (type)", "Output Shape", "Param #"), widths)))
        print_fn(line.replace("-", "="))
        for row in rows:
            print_fn("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        print_fn(line)
        print_fn(f" Total params: {self.count_params():,}")
        print_fn(f" Trainable params: {self.count_params():,}")
        print_fn(" Non-trainable params: 0")

    # -- serialization -------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Keras 3's functional config (what `keras.Model.get_config` gives)."""
        self._require_built()
        entries = [_layer_entry(self.input_layer, None, functional=True)]
        previous = self.input_layer
        for layer in self.layers:
            entries.append(_layer_entry(layer, previous, functional=True))
            previous = layer
        return {"name": self.name, "trainable": True, "layers": entries,
                "input_layers": [[self.input_layer.name, 0, 0]], "output_layers": [[self.layers[-1].name, 0, 0]]}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps({"class_name": "Functional", "config": self.get_config(), "module": "keras.src.models.functional",
                           "registered_name": "Functional"}, **kwargs)

    # -- compile and the engine ----------------------------------------------
    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, metrics: Any = None, slices: int = DEFAULT_SLICES,
                seed: int = 0, **kwargs: Any) -> None:
        """Keras `compile`, plus BWS's `slices` (int8 slices per fixed-point
        number: 2 or 3) and `seed` (the canonical initialization's seed)."""
        self._require_built()
        for key, value in sorted(kwargs.items()):
            if key in ("run_eagerly", "jit_compile", "steps_per_execution", "auto_scale_loss") :
                continue  # execution knobs: the engine always runs one compiled, canonical iteration
            raise UnsupportedKerasFeature(f"compile argument {key}={value!r} is not supported")
        if isinstance(optimizer, str) and optimizer.lower() == "rmsprop":
            raise UnsupportedKerasFeature("optimizer 'rmsprop' (Keras's default) is not supported; pass SGD or Adam")
        metric_names = [] if metrics is None else list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
        for metric in metric_names:
            if metric not in ACCURACY_METRICS:
                raise UnsupportedKerasFeature(f"metric {metric!r} is not supported; supported: accuracy")
        if slices not in (2, 3):
            raise KerasModelError(f"slices must be 2 or 3, got {slices!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise KerasModelError(f"seed must be an int in [0, 2**32), got {seed!r}")
        loss_object = losses_module.get(loss)
        optimizer_object = optimizers_module.get(optimizer)
        self._compiled = {"loss": loss_object, "optimizer": optimizer_object, "metrics": metric_names,
                          "slices": slices, "seed": seed}
        self._compiled["description"] = self.engine_description()
        self._engine_model = None

    def engine_description(self) -> dict[str, Any]:
        """The engine's model description this compiled model compiles to."""
        if self._compiled is None:
            raise KerasModelError(f"model {self.name!r} is not compiled; call compile(optimizer=..., loss=...) first")
        last_activation = _last_activation(self.layers)
        description = {
            "input_shape": list(self.input_layer.shape),
            "layers": [layer.engine_layer() for layer in self.layers],
            "loss": self._compiled["loss"].engine_loss(last_activation),
            "optimizer": self._compiled["optimizer"].engine_optimizer(),
            "slices": self._compiled["slices"],
        }
        try:
            return ModelSpec.from_dict(description).to_dict()
        except ModelSpecError as exc:  # a combination the engine has no canonical form for
            message = str(exc)
            if message.startswith("layers["):
                index = int(message[len("layers["):message.index("]")])
                message = f"layer {self.layers[index].name!r} ({self.layers[index].keras_class}): {message}"
            raise UnsupportedKerasFeature(f"model {self.name!r}: {message}") from None

    def _canonical(self):
        if self._engine_model is None:
            description = self.engine_description()
            self._engine_model = canonical.CanonicalModel(description, seed=self._compiled["seed"])
        return self._engine_model

    # -- weights ---------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """The float32 weights in Keras order, decoded from the fixed-point state."""
        return self._canonical().get_float_weights(self.weight_shapes())

    def set_weights(self, weights: list[Any]) -> None:
        shapes = self.weight_shapes()
        if len(weights) != len(shapes):
            raise KerasModelError(f"set_weights: model {self.name!r} has {len(shapes)} weights, got {len(weights)}")
        arrays = []
        for (index, name, shape), value in zip(shapes, weights):
            array = np.asarray(value, dtype=np.float32)
            if array.shape != shape:
                raise KerasModelError(f"set_weights: {self.layers[index].name}/{name} has shape {shape}, got {array.shape}")
            if not np.all(np.isfinite(array)):
                raise KerasModelError(f"set_weights: {self.layers[index].name}/{name} holds NaN or infinity")
            arrays.append(array)
        self._canonical().set_float_weights(shapes, arrays)

    # -- training --------------------------------------------------------------
    def fit(self, x: Any = None, y: Any = None, batch_size: int | None = None, epochs: int = 1, verbose: Any = "auto",
            validation_data: Any = None, shuffle: bool = True, **kwargs: Any) -> History:
        """Local, single-node canonical training with a progress bar. Batches are
        the full batches of the task's deterministic schedule (the remainder of
        each epoch is dropped so every iteration has the same shape)."""
        for key, value in sorted(kwargs.items()):
            if value is not None:
                raise UnsupportedKerasFeature(f"fit argument {key}={value!r} is not supported")
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise KerasModelError(f"epochs must be a positive int, got {epochs!r}")
        batch_size = 32 if batch_size is None else batch_size
        return History(*self._canonical().fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose != 0,
                                              validation_data=validation_data, shuffle=shuffle,
                                              metrics=self._compiled["metrics"]))

    def evaluate(self, x: Any = None, y: Any = None, batch_size: int | None = None, verbose: Any = "auto",
                 return_dict: bool = False, **kwargs: Any):
        """Loss and metrics over (x, y), canonically; a list like Keras, or a dict."""
        for key, value in sorted(kwargs.items()):
            if value is not None:
                raise UnsupportedKerasFeature(f"evaluate argument {key}={value!r} is not supported")
        results = self._canonical().evaluate(x, y, metrics=self._compiled["metrics"])
        if return_dict:
            return results
        values = list(results.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x: Any, batch_size: int | None = None, verbose: Any = "auto", **kwargs: Any) -> np.ndarray:
        """The canonical forward pass, decoded to float32."""
        for key, value in sorted(kwargs.items()):
            if value is not None:
                raise UnsupportedKerasFeature(f"predict argument {key}={value!r} is not supported")
        return self._canonical().predict(x)


class Sequential(Model):
    """`keras.Sequential([...])`, with `add` and `pop`."""

    def __init__(self, layers: list[Any] | None = None, name: str | None = None, **kwargs: Any):
        super().__init__(name=name or "sequential", **kwargs)
        for layer in layers or []:
            self.add(layer)

    def add(self, layer: Any) -> None:
        if isinstance(layer, KerasTensor) and layer.inbound is None:
            layer = layer.layer  # keras.Input(...) as the first element
        if isinstance(layer, InputLayer):
            if self.input_layer is not None or self.layers:
                raise KerasModelError(f"Sequential {self.name!r}: an Input can only come first")
            self.input_layer = layer
            return
        if not isinstance(layer, Layer):
            raise UnsupportedKerasFeature(f"Sequential {self.name!r}: cannot add {type(layer).__name__}; add keras layers")
        if self.input_layer is None and not self.layers and layer.declared_input_shape is not None:
            self.input_layer = InputLayer(shape=layer.declared_input_shape)
        if self.input_layer is None:
            raise KerasModelError(
                f"Sequential {self.name!r}: the first layer needs an input shape; start with keras.Input(shape=...)"
            )
        layer.build(self.layers[-1].output_shape if self.layers else self.input_layer.shape)
        self.layers.append(layer)
        self._compiled = None
        self._engine_model = None

    def pop(self) -> Layer:
        if not self.layers:
            raise KerasModelError(f"Sequential {self.name!r} has no layer to pop")
        self._compiled = None
        self._engine_model = None
        return self.layers.pop()

    def get_config(self) -> dict[str, Any]:
        self._require_built()
        entries = [_layer_entry(layer, None, functional=False) for layer in (self.input_layer, *self.layers)]
        return {"name": self.name, "trainable": True, "layers": entries}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps({"class_name": "Sequential", "config": self.get_config(), "module": "keras",
                           "registered_name": None, "build_config": {"input_shape": list(self.input_shape)}}, **kwargs)


def _layer_entry(layer: Layer, inbound: Layer | None, functional: bool) -> dict[str, Any]:
    """One layer as Keras 3 serializes it; functional entries also name the
    layer that feeds them."""
    entry = {"class_name": layer.keras_class, "config": layer.get_config(), "module": "keras.layers",
             "registered_name": None}
    if functional:
        entry["name"] = layer.name
        entry["inbound_nodes"] = [] if inbound is None else [{
            "args": [{"class_name": "__keras_tensor__",
                      "config": {"shape": [None, *inbound.output_shape], "dtype": "float32",
                                 "keras_history": [inbound.name, 0, 0]}}],
            "kwargs": {}}]
    return entry


# ---------------------------------------------------------------------------
# model_from_json
# ---------------------------------------------------------------------------
def model_from_json(json_string: str | bytes, custom_objects: dict | None = None) -> Model:
    """Rebuild a model from `model.to_json()` of tf.keras 2.x, Keras 3, or this
    module. An unsupported layer or argument is an UnsupportedKerasFeature
    naming it; malformed JSON is a KerasModelError."""
    if custom_objects:
        raise UnsupportedKerasFeature("custom_objects are not supported (custom layers have no canonical form)")
    try:
        document = json.loads(json_string)
    except (ValueError, TypeError) as exc:
        raise KerasModelError(f"model JSON does not parse: {exc}") from None
    return model_from_config(document)


def model_from_config(document: Any) -> Model:
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise KerasModelError("model JSON must be an object with 'class_name' and 'config'")
    class_name = document.get("class_name")
    config = document["config"]
    if class_name == "Sequential":
        return _sequential_from_config(config)
    if class_name in ("Functional", "Model"):
        return _functional_from_config(config)
    raise UnsupportedKerasFeature(f"model class {class_name!r} is not supported (Sequential or Functional)")


def _entries(config: dict[str, Any]) -> list[dict[str, Any]]:
    entries = config.get("layers")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise KerasModelError("model config 'layers' must be a list of layer objects")
    for entry in entries:
        if not isinstance(entry.get("class_name"), str) or not isinstance(entry.get("config"), dict):
            raise KerasModelError(f"layer entry {str(entry)[:80]} lacks 'class_name' or 'config'")
    return entries


def _model_name(config: dict[str, Any], default: str) -> str:
    name = config.get("name", default)
    return name if isinstance(name, str) and name else default


def _sequential_from_config(config: dict[str, Any]) -> Sequential:
    model = Sequential(name=_model_name(config, "sequential"))
    entries = _entries(config)
    build_shape = config.get("build_input_shape")
    for position, entry in enumerate(entries):
        layer = layer_from_config(entry["class_name"], entry["config"])
        if position == 0 and not isinstance(layer, InputLayer) and layer.declared_input_shape is None \
                and isinstance(build_shape, list) and len(build_shape) > 1:
            model.add(InputLayer(batch_shape=build_shape))
        model.add(layer)
    model._require_built()
    if not model.layers:
        raise KerasModelError("the model has no layers")
    return model


def _inbound_names(entry: dict[str, Any]) -> list[str]:
    """Names of the layers feeding `entry`, from Keras 3's
    [{'args': [{'config': {'keras_history': [name, 0, 0]}}]}] or tf.keras 2's
    [[[name, 0, 0, {}]]]."""
    nodes = entry.get("inbound_nodes", [])
    if not isinstance(nodes, list):
        raise KerasModelError(f"layer {entry.get('name')!r}: inbound_nodes must be a list")
    if len(nodes) > 1:
        raise UnsupportedKerasFeature(f"layer {entry.get('name')!r} is called {len(nodes)} times; shared layers are not supported")
    names: list[str] = []
    for node in nodes:
        if isinstance(node, dict):
            arguments = node.get("args", [])
            keywords = node.get("kwargs", {})
            if not isinstance(keywords, dict):
                raise KerasModelError(f"layer {entry.get('name')!r}: an inbound node's kwargs must be an object")
            if keywords:
                raise UnsupportedKerasFeature(f"layer {entry.get('name')!r}: call arguments {sorted(keywords)} are not supported")
            for argument in arguments if isinstance(arguments, list) else [arguments]:
                config = argument.get("config") if isinstance(argument, dict) else None
                history = config.get("keras_history") if isinstance(config, dict) else None
                if not isinstance(history, list) or not history or not isinstance(history[0], str):
                    raise UnsupportedKerasFeature(f"layer {entry.get('name')!r}: inbound {str(argument)[:60]} is not a single tensor")
                names.append(history[0])
        elif isinstance(node, list):
            for tensor in node:
                if not isinstance(tensor, list) or not tensor or not isinstance(tensor[0], str):
                    raise KerasModelError(f"layer {entry.get('name')!r}: malformed inbound node {str(tensor)[:60]}")
                if len(tensor) > 3 and tensor[3]:
                    raise UnsupportedKerasFeature(f"layer {entry.get('name')!r}: call arguments {tensor[3]} are not supported")
                names.append(tensor[0])
        else:
            raise KerasModelError(f"layer {entry.get('name')!r}: malformed inbound node {str(node)[:60]}")
    return names


def _endpoint(value: Any, what: str) -> str:
    """The one layer name in Keras's input_layers/output_layers ([name, 0, 0] or [[name, 0, 0]])."""
    if isinstance(value, list) and value and isinstance(value[0], list):
        if len(value) != 1:
            raise UnsupportedKerasFeature(f"models with {len(value)} {what} are not supported (one input, one output)")
        value = value[0]
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise KerasModelError(f"model config {what} is malformed: {str(value)[:60]}")
    return value[0]


def _functional_from_config(config: dict[str, Any]) -> Model:
    entries = _entries(config)
    by_name: dict[str, dict[str, Any]] = {}
    for entry in entries:
        name = entry.get("name", entry["config"].get("name"))
        if not isinstance(name, str) or name in by_name:
            raise KerasModelError(f"layer names must be unique strings, got {name!r}")
        by_name[name] = entry
    input_name = _endpoint(config.get("input_layers"), "input_layers")
    output_name = _endpoint(config.get("output_layers"), "output_layers")
    chain = [output_name]
    while chain[-1] != input_name:
        entry = by_name.get(chain[-1])
        if entry is None:
            raise KerasModelError(f"layer {chain[-1]!r} is referenced but not defined")
        inbound = _inbound_names(entry)
        if len(inbound) != 1:
            raise UnsupportedKerasFeature(
                f"layer {chain[-1]!r} has {len(inbound)} inputs; only chains of single-input layers are supported"
            )
        if inbound[0] in chain:
            raise KerasModelError(f"the layer graph has a cycle through {inbound[0]!r}")
        chain.append(inbound[0])
    if len(chain) != len(by_name):
        extra = sorted(set(by_name) - set(chain))
        raise UnsupportedKerasFeature(f"layers {extra} are not on the input-to-output chain; branching graphs are not supported")
    chain.reverse()
    head = layer_from_config(by_name[chain[0]]["class_name"], by_name[chain[0]]["config"])
    if not isinstance(head, InputLayer):
        raise KerasModelError(f"the model input {chain[0]!r} is not an InputLayer")
    tensor = KerasTensor(head.shape, layer=head, inbound=None)
    inputs = tensor
    for name in chain[1:]:
        tensor = layer_from_config(by_name[name]["class_name"], by_name[name]["config"])(tensor)
    return Model(inputs=inputs, outputs=tensor, name=_model_name(config, "functional"))


def model_from_engine_description(description: dict[str, Any], name: str = "bws_model") -> Sequential:
    """The Keras model whose compilation gives `description` (layer names are
    Keras's defaults): how an exported task model becomes Keras again."""

    def keras_layer(spec: dict[str, Any]) -> Layer:
        kind = spec["type"]
        arguments = {k: v for k, v in spec.items() if k not in ("type", "alpha")}
        if kind in ("dense", "conv2d", "activation") and spec.get("alpha", LEAKY_RELU_ACTIVATION_SLOPE) != LEAKY_RELU_ACTIVATION_SLOPE:
            raise UnsupportedKerasFeature(f"engine {kind} layer with leaky_relu slope {spec['alpha']} has no Keras equivalent")
        if kind == "dense":
            return Dense(**arguments)
        if kind == "conv2d":
            return Conv2D(**arguments)
        if kind in ("max_pool2d", "avg_pool2d"):
            return (MaxPooling2D if kind == "max_pool2d" else AveragePooling2D)(**arguments)
        if kind == "flatten":
            return Flatten()
        if kind == "reshape":
            return Reshape(**arguments)
        if kind == "dropout":
            return Dropout(**arguments)
        if kind == "activation":
            return Activation(**arguments)
        if kind == "leaky_relu":
            return LeakyReLU(negative_slope=spec["alpha"])
        raise UnsupportedKerasFeature(f"engine layer type {kind!r} has no Keras equivalent here")

    model = Sequential([InputLayer(shape=description["input_shape"])], name=name)
    for spec in description["layers"]:
        model.add(keras_layer(spec))
    return model

