"""Keras layers with Keras argument names and defaults, each compiled to one
layer of the engine's model description (docs/interfaces.md).

Every layer maps to exactly one engine layer, so a Keras layer's weights are the
engine's `params/<index>/kernel` and `params/<index>/bias`. An argument the engine
cannot reproduce bit for bit (a regularizer, a constraint, dilation, a seeded
initializer...) is an `UnsupportedKerasFeature` naming the layer and argument;
an argument left at a neutral value (None, channels_last, dilation 1...) is
accepted, because that is what real Keras writes in its JSON.
"""
from __future__ import annotations

import math
import re
from typing import Any

from bws.engine.model import ACTIVATIONS, INITIALIZERS

from ..errors import KerasModelError, UnsupportedKerasFeature

# Activations and initializers the engine computes canonically (its model description).
SUPPORTED_ACTIVATIONS = ACTIVATIONS
SUPPORTED_INITIALIZERS = INITIALIZERS
# Keras's leaky_relu *activation* (keras.activations.leaky_relu, tf.nn.leaky_relu)
# has slope 0.2; the LeakyReLU *layer* defaults to 0.3.
LEAKY_RELU_ACTIVATION_SLOPE = 0.2

# Arguments real Keras writes into every layer config that carry no semantics
# for a canonical model when they have these values.
_NEUTRAL_ARGUMENTS: dict[str, tuple[Any, ...]] = {
    "kernel_regularizer": (None,),
    "bias_regularizer": (None,),
    "activity_regularizer": (None,),
    "kernel_constraint": (None,),
    "bias_constraint": (None,),
    "data_format": (None, "channels_last"),
    "dilation_rate": (1, (1, 1), [1, 1]),
    "groups": (1,),
    "quantization_config": (None,),
    "lora_rank": (None,),
    "lora_alpha": (None,),
    "noise_shape": (None,),
    "seed": (None,),
    "trainable": (True,),
    "dtype": (None, "float32"),
    "autocast": (True,),
    "input_dim": (None,),  # tf.keras 2 writes it next to batch_input_shape
}


def _snake_case(name: str) -> str:
    """Keras's to_snake_case: LeakyReLU -> leaky_re_lu, GlorotUniform -> glorot_uniform."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", re.sub(r"\W+", "", name))
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _dtype_name(value: Any) -> Any:
    """Keras 3 writes dtypes as a DTypePolicy dict; keep its name."""
    if isinstance(value, dict) and value.get("class_name") in ("DTypePolicy", "Policy"):
        config = value.get("config")
        return config.get("name") if isinstance(config, dict) else config
    return value


def check_neutral_arguments(layer: str, arguments: dict[str, Any]) -> None:
    """Reject any argument left over after a layer took its own: unknown ones and
    known ones with a value the engine does not implement."""
    for key, value in sorted(arguments.items()):
        if key == "dtype":
            value = _dtype_name(value)
        if key not in _NEUTRAL_ARGUMENTS:
            raise UnsupportedKerasFeature(f"layer {layer!r}: argument {key!r} is not supported")
        neutral = _NEUTRAL_ARGUMENTS[key]
        if isinstance(value, list):
            value = tuple(value)
        if value not in neutral:
            raise UnsupportedKerasFeature(
                f"layer {layer!r}: argument {key}={value!r} is not supported (only {neutral[0]!r})"
            )


def normalize_activation(layer: str, activation: Any) -> str:
    if activation is None:
        return "linear"
    if not isinstance(activation, str):
        raise UnsupportedKerasFeature(
            f"layer {layer!r}: activation {activation!r} is not supported; give one of {', '.join(SUPPORTED_ACTIVATIONS)} by name"
        )
    if activation not in SUPPORTED_ACTIVATIONS:
        raise UnsupportedKerasFeature(
            f"layer {layer!r}: activation {activation!r} is not supported; supported: {', '.join(SUPPORTED_ACTIVATIONS)}"
        )
    return activation


def normalize_initializer(layer: str, argument: str, value: Any) -> str:
    """Accept 'he_normal', keras.initializers objects' JSON form
    ({'class_name': 'HeNormal', 'config': {...}}), and nothing seeded."""
    if isinstance(value, dict):
        config = value.get("config") or {}
        if not isinstance(config, dict):
            raise KerasModelError(f"layer {layer!r}: {argument} config must be an object, got {config!r}")
        for key, setting in sorted(config.items()):
            if setting is not None:
                raise UnsupportedKerasFeature(
                    f"layer {layer!r}: {argument} option {key}={setting!r} is not supported "
                    "(the engine draws initial weights from the task seed)"
                )
        value = _snake_case(str(value.get("class_name", "")))
    if not isinstance(value, str) or value not in SUPPORTED_INITIALIZERS:
        raise UnsupportedKerasFeature(
            f"layer {layer!r}: {argument}={value!r} is not supported; supported: {', '.join(SUPPORTED_INITIALIZERS)}"
        )
    return value


def _pair(layer: str, argument: str, value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise KerasModelError(f"layer {layer!r}: {argument} must be a positive int or a pair of them, got {value!r}")
    return (int(value[0]), int(value[1]))


def _padding(layer: str, value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in ("valid", "same"):
        raise UnsupportedKerasFeature(f"layer {layer!r}: padding={value!r} is not supported (valid or same)")
    return value.lower()


def _spatial_output(size: int, window: int, stride: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    return (size - window) // stride + 1


_NAME_COUNTERS: dict[str, int] = {}


def _auto_name(prefix: str) -> str:
    """Keras-style unique names (dense, dense_1, ...), per process."""
    count = _NAME_COUNTERS.get(prefix, 0)
    _NAME_COUNTERS[prefix] = count + 1
    return prefix if count == 0 else f"{prefix}_{count}"


class Layer:
    """A Keras layer: its arguments, shape inference, weights and engine form."""

    #: The class name Keras writes in JSON for this layer.
    keras_class = "Layer"
    #: Its names in other Keras versions' JSON.
    keras_aliases: tuple[str, ...] = ()

    def __init__(self, name: str | None = None, input_shape=None, batch_input_shape=None, **kwargs: Any):
        self.name = name if name is not None else _auto_name(_snake_case(self.keras_class))
        if not isinstance(self.name, str) or not self.name:
            raise KerasModelError(f"a layer name must be a non-empty string, got {self.name!r}")
        check_neutral_arguments(self.name, kwargs)
        # Keras lets the first layer of a Sequential declare the model's input:
        # Dense(32, input_shape=(64,)); tf.keras 2 JSON writes batch_input_shape.
        if input_shape is None and batch_input_shape is not None:
            if not isinstance(batch_input_shape, (list, tuple)) or len(batch_input_shape) < 2:
                raise KerasModelError(f"layer {self.name!r}: batch_input_shape must be (batch, ...), got {batch_input_shape!r}")
            input_shape = batch_input_shape[1:]
        self.declared_input_shape = None if input_shape is None else _shape(self.name, input_shape)
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None

    # -- shapes ------------------------------------------------------------
    def build(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Fix the per-example input shape; returns the output shape."""
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(self.compute_output_shape(self.input_shape))
        return self.output_shape

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape

    # -- weights -----------------------------------------------------------
    def weight_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of each weight in Keras order (kernel, then bias)."""
        return []

    def count_params(self) -> int:
        return sum(math.prod(shape) for _, shape in self.weight_shapes())

    # -- serialization -----------------------------------------------------
    def arguments(self) -> dict[str, Any]:
        """This layer's own Keras arguments (besides name)."""
        return {}

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "trainable": True, "dtype": "float32", **self.arguments()}

    def engine_layer(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- functional API ----------------------------------------------------
    def __call__(self, tensor: "KerasTensor") -> "KerasTensor":
        if not isinstance(tensor, KerasTensor):
            raise UnsupportedKerasFeature(
                f"layer {self.name!r} called on {type(tensor).__name__}; only single keras.Input chains are supported"
            )
        if self.input_shape is not None:
            raise UnsupportedKerasFeature(f"layer {self.name!r} is called twice; shared layers are not supported")
        return KerasTensor(self.build(tensor.shape), layer=self, inbound=tensor)

    def __repr__(self) -> str:
        return f"<{self.keras_class} name={self.name!r}>"


class KerasTensor:
    """The symbolic tensor of the functional API: a shape and where it came from."""

    def __init__(self, shape: tuple[int, ...], layer: Layer, inbound: "KerasTensor | None"):
        self.shape = tuple(shape)
        self.layer = layer
        self.inbound = inbound

    def __repr__(self) -> str:
        return f"<KerasTensor shape=(None, {', '.join(map(str, self.shape))}) from {self.layer.name!r}>"


def _shape(layer: str, value: Any) -> tuple[int, ...]:
    if (
        not isinstance(value, (tuple, list))
        or not value
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
    ):
        raise KerasModelError(f"layer {layer!r}: shape must be a non-empty tuple of positive ints, got {value!r}")
    return tuple(int(d) for d in value)


class InputLayer(Layer):
    keras_class = "InputLayer"

    def __init__(self, shape=None, batch_size=None, name=None, batch_shape=None,
                 batch_input_shape=None, sparse=False, ragged=False, optional=False, **kwargs):
        super().__init__(name=name if name is not None else _auto_name("input_layer"), **kwargs)
        if batch_shape is None:
            batch_shape = batch_input_shape
        if shape is None and batch_shape is not None:
            if not isinstance(batch_shape, (list, tuple)) or len(batch_shape) < 2:
                raise KerasModelError(f"layer {self.name!r}: batch_shape must be (batch, ...), got {batch_shape!r}")
            shape = batch_shape[1:]
        if shape is None:
            raise KerasModelError(f"layer {self.name!r}: an Input needs a shape")
        for argument, value in (("sparse", sparse), ("ragged", ragged), ("optional", optional)):
            if value:
                raise UnsupportedKerasFeature(f"layer {self.name!r}: {argument} inputs are not supported")
        if batch_size is not None:
            raise UnsupportedKerasFeature(
                f"layer {self.name!r}: a fixed batch_size is not supported (the task's batch schedule sets it)"
            )
        self.shape = _shape(self.name, shape)
        self.build(self.shape)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "batch_shape": [None, *self.shape], "dtype": "float32",
                "sparse": False, "ragged": False}


def Input(shape=None, batch_size=None, name=None, dtype=None, batch_shape=None, **kwargs) -> KerasTensor:
    """`keras.Input`: the symbolic input of a functional model."""
    layer = InputLayer(shape=shape, batch_size=batch_size, name=name, dtype=dtype, batch_shape=batch_shape, **kwargs)
    return KerasTensor(layer.shape, layer=layer, inbound=None)


class Dense(Layer):
    keras_class = "Dense"

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
            raise KerasModelError(f"layer {self.name!r}: units must be a positive int, got {units!r}")
        self.units = units
        self.activation = normalize_activation(self.name, activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = normalize_initializer(self.name, "kernel_initializer", kernel_initializer)
        self.bias_initializer = normalize_initializer(self.name, "bias_initializer", bias_initializer)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise UnsupportedKerasFeature(
                f"layer {self.name!r}: Dense on a rank-{len(input_shape)} input {input_shape} is not supported; add a Flatten before it"
            )
        return (self.units,)

    def weight_shapes(self):
        shapes = [("kernel", (self.input_shape[0], self.units))]
        return shapes + [("bias", (self.units,))] if self.use_bias else shapes

    def arguments(self):
        return {"units": self.units, "activation": self.activation, "use_bias": self.use_bias,
                "kernel_initializer": self.kernel_initializer, "bias_initializer": self.bias_initializer}

    def engine_layer(self):
        return {"type": "dense", **self.arguments(), "alpha": LEAKY_RELU_ACTIVATION_SLOPE}


class Conv2D(Layer):
    keras_class = "Conv2D"
    keras_aliases = ("Convolution2D",)

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(filters, int) or isinstance(filters, bool) or filters <= 0:
            raise KerasModelError(f"layer {self.name!r}: filters must be a positive int, got {filters!r}")
        self.filters = filters
        self.kernel_size = _pair(self.name, "kernel_size", kernel_size)
        self.strides = _pair(self.name, "strides", strides)
        self.padding = _padding(self.name, padding)
        self.activation = normalize_activation(self.name, activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = normalize_initializer(self.name, "kernel_initializer", kernel_initializer)
        self.bias_initializer = normalize_initializer(self.name, "bias_initializer", bias_initializer)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise KerasModelError(
                f"layer {self.name!r}: Conv2D needs (height, width, channels) inputs, got {input_shape}"
            )
        height, width, _ = input_shape
        out_h = _spatial_output(height, self.kernel_size[0], self.strides[0], self.padding)
        out_w = _spatial_output(width, self.kernel_size[1], self.strides[1], self.padding)
        if out_h <= 0 or out_w <= 0:
            raise KerasModelError(f"layer {self.name!r}: kernel {self.kernel_size} is larger than its input {input_shape}")
        return (out_h, out_w, self.filters)

    def weight_shapes(self):
        shapes = [("kernel", (*self.kernel_size, self.input_shape[2], self.filters))]
        return shapes + [("bias", (self.filters,))] if self.use_bias else shapes

    def arguments(self):
        return {"filters": self.filters, "kernel_size": list(self.kernel_size), "strides": list(self.strides),
                "padding": self.padding, "activation": self.activation, "use_bias": self.use_bias,
                "kernel_initializer": self.kernel_initializer, "bias_initializer": self.bias_initializer}

    def engine_layer(self):
        return {"type": "conv2d", **self.arguments(), "alpha": LEAKY_RELU_ACTIVATION_SLOPE}


class _Pooling2D(Layer):
    engine_type = ""

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.pool_size = _pair(self.name, "pool_size", pool_size)
        self.strides = self.pool_size if strides is None else _pair(self.name, "strides", strides)
        self.padding = _padding(self.name, padding)
        if self.padding != "valid":
            raise UnsupportedKerasFeature(f"layer {self.name!r}: padding={padding!r} is not supported for pooling (valid only)")

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise KerasModelError(f"layer {self.name!r}: pooling needs (height, width, channels) inputs, got {input_shape}")
        height, width, channels = input_shape
        out_h = _spatial_output(height, self.pool_size[0], self.strides[0], self.padding)
        out_w = _spatial_output(width, self.pool_size[1], self.strides[1], self.padding)
        if out_h <= 0 or out_w <= 0:
            raise KerasModelError(f"layer {self.name!r}: pool {self.pool_size} is larger than its input {input_shape}")
        return (out_h, out_w, channels)

    def arguments(self):
        return {"pool_size": list(self.pool_size), "strides": list(self.strides), "padding": self.padding}

    def engine_layer(self):
        return {"type": self.engine_type, **self.arguments()}


class MaxPooling2D(_Pooling2D):
    keras_class = "MaxPooling2D"
    keras_aliases = ("MaxPool2D",)
    engine_type = "max_pool2d"


class AveragePooling2D(_Pooling2D):
    keras_class = "AveragePooling2D"
    keras_aliases = ("AvgPool2D",)
    engine_type = "avg_pool2d"


class Flatten(Layer):
    keras_class = "Flatten"

    def compute_output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def engine_layer(self):
        return {"type": "flatten"}


class Reshape(Layer):
    keras_class = "Reshape"

    def __init__(self, target_shape, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if (
            not isinstance(target_shape, (list, tuple))
            or not target_shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1) for d in target_shape)
            or list(target_shape).count(-1) > 1
        ):
            raise KerasModelError(f"layer {self.name!r}: target_shape must be positive ints (one -1 allowed), got {target_shape!r}")
        self.target_shape = tuple(target_shape)

    def compute_output_shape(self, input_shape):
        size = math.prod(input_shape)
        known = math.prod(d for d in self.target_shape if d != -1)
        shape = tuple(size // known if d == -1 else d for d in self.target_shape)
        if math.prod(shape) != size:
            raise KerasModelError(f"layer {self.name!r}: cannot reshape {input_shape} into {self.target_shape}")
        return shape

    def arguments(self):
        return {"target_shape": list(self.target_shape)}

    def engine_layer(self):
        return {"type": "reshape", "target_shape": list(self.output_shape or self.target_shape)}


class Dropout(Layer):
    keras_class = "Dropout"

    def __init__(self, rate, noise_shape=None, seed=None, name=None, **kwargs):
        super().__init__(name=name, noise_shape=noise_shape, seed=seed, **kwargs)
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
            raise KerasModelError(f"layer {self.name!r}: rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)

    def arguments(self):
        return {"rate": self.rate}

    def engine_layer(self):
        return {"type": "dropout", "rate": self.rate}


class Activation(Layer):
    keras_class = "Activation"

    def __init__(self, activation, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.activation = normalize_activation(self.name, activation)

    def arguments(self):
        return {"activation": self.activation}

    def engine_layer(self):
        if self.activation == "softmax":
            raise UnsupportedKerasFeature(
                f"layer {self.name!r}: a separate Activation('softmax') is not supported; "
                "give the last Dense or Conv2D activation='softmax'"
            )
        return {"type": "activation", "activation": self.activation, "alpha": LEAKY_RELU_ACTIVATION_SLOPE}


class LeakyReLU(Layer):
    keras_class = "LeakyReLU"

    def __init__(self, negative_slope=0.3, name=None, alpha=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if alpha is not None:  # the tf.keras 2 name of negative_slope
            negative_slope = alpha
        if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool) or negative_slope < 0:
            raise KerasModelError(f"layer {self.name!r}: negative_slope must be a float >= 0, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def arguments(self):
        return {"negative_slope": self.negative_slope}

    def engine_layer(self):
        return {"type": "leaky_relu", "alpha": self.negative_slope}


class ReLU(Layer):
    keras_class = "ReLU"

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if max_value is not None:
            raise UnsupportedKerasFeature(f"layer {self.name!r}: argument max_value={max_value!r} is not supported")
        if threshold not in (0, 0.0, None):
            raise UnsupportedKerasFeature(f"layer {self.name!r}: argument threshold={threshold!r} is not supported")
        if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool) or negative_slope < 0:
            raise KerasModelError(f"layer {self.name!r}: negative_slope must be a float >= 0, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def arguments(self):
        return {"max_value": None, "negative_slope": self.negative_slope, "threshold": 0.0}

    def engine_layer(self):
        if self.negative_slope:
            return {"type": "leaky_relu", "alpha": self.negative_slope}
        return {"type": "activation", "activation": "relu"}


# Keras class name (any version) -> layer class; what model_from_json accepts.
LAYER_CLASSES: dict[str, type[Layer]] = {}
for _cls in (InputLayer, Dense, Conv2D, MaxPooling2D, AveragePooling2D, Flatten, Reshape, Dropout,
             Activation, LeakyReLU, ReLU):
    for _name in (_cls.keras_class, *_cls.keras_aliases):
        LAYER_CLASSES[_name] = _cls


def layer_from_config(class_name: str, config: dict[str, Any]) -> Layer:
    """Build a layer from its Keras JSON (`class_name`, `config`)."""
    cls = LAYER_CLASSES.get(class_name)
    if cls is None:
        raise UnsupportedKerasFeature(
            f"layer class {class_name!r} ({config.get('name', '?')!r}) is not supported; "
            f"supported: {', '.join(sorted(c.keras_class for c in set(LAYER_CLASSES.values())))}"
        )
    if not isinstance(config, dict):
        raise KerasModelError(f"layer {class_name!r}: config must be an object, got {type(config).__name__}")
    try:
        return cls(**config)
    except TypeError as exc:  # a required Keras argument missing from the JSON
        raise KerasModelError(f"layer {class_name!r} ({config.get('name', '?')!r}): {exc}") from None
