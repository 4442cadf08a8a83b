"""The model a task names: the one list of layers, arguments, losses and
optimizers that the engine runs, and the shapes and work they imply.

A task definition's `model` is this description (docs/interfaces.md). The
spec accepts a task only if the engine can run its model: both read it with
`ModelSpec.from_dict` below (bws.engine.model builds on it), so a task that
escrows a fee can always be mined. `ModelSpec.from_dict(d).to_dict()` is
canonical: every default filled in, keys sorted when serialised. Bad input
raises `ModelSpecError` naming the field (e.g. ``layers[2].units``).
"""
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from . import constants as K
from .constants import ALLOWED_SLICES, MAX_CONTRACTION_SIZE


class ModelSpecError(ValueError):
    """A model description is malformed or names what the engine cannot run; the message names the field."""


def to_fixed(value: float, frac_bits: int) -> int:
    """A hyper-parameter given as a float -> integer with `frac_bits` fractional
    bits, round half up, computed on the exact binary value of the double."""
    scaled = Fraction(value) * (1 << frac_bits)
    return int((scaled + Fraction(1, 2)) // 1)


ACTIVATIONS = ("linear", "relu", "leaky_relu", "tanh", "sigmoid", "softmax")
LOSSES = ("softmax_cross_entropy", "categorical_cross_entropy", "sigmoid_binary_cross_entropy", "mse")
INITIALIZERS = ("glorot_uniform", "he_uniform", "lecun_uniform", "zeros", "ones")
PADDINGS = ("valid", "same")
UPDATE_KINDS = ("dense", "threshold")

# layer type -> {field: (kind, default)}; a default of REQUIRED must be given.
REQUIRED = object()
LAYER_FIELDS: dict[str, dict[str, tuple[str, Any]]] = {
    "dense": {
        "units": ("posint", REQUIRED),
        "activation": ("activation", "linear"),
        "alpha": ("fraction", 0.3),
        "use_bias": ("bool", True),
        "kernel_initializer": ("initializer", "glorot_uniform"),
        "bias_initializer": ("initializer", "zeros"),
    },
    "conv2d": {
        "filters": ("posint", REQUIRED),
        "kernel_size": ("pair", REQUIRED),
        "strides": ("pair", [1, 1]),
        "padding": ("padding", "valid"),
        "activation": ("activation", "linear"),
        "alpha": ("fraction", 0.3),
        "use_bias": ("bool", True),
        "kernel_initializer": ("initializer", "glorot_uniform"),
        "bias_initializer": ("initializer", "zeros"),
    },
    "max_pool2d": {"pool_size": ("pair", [2, 2]), "strides": ("pair", None), "padding": ("padding", "valid")},
    "avg_pool2d": {"pool_size": ("pair", [2, 2]), "strides": ("pair", None), "padding": ("padding", "valid")},
    "flatten": {},
    "reshape": {"target_shape": ("shape", REQUIRED)},
    "dropout": {"rate": ("dropout_rate", REQUIRED)},
    "activation": {"activation": ("activation", REQUIRED), "alpha": ("fraction", 0.3)},
    "leaky_relu": {"alpha": ("fraction", 0.3)},
}
OPTIMIZER_FIELDS: dict[str, dict[str, tuple[str, Any]]] = {
    "sgd": {"learning_rate": ("rate", 0.01), "momentum": ("fraction", 0.0), "nesterov": ("bool", False)},
    "adam": {
        "learning_rate": ("rate", 0.001),
        "beta_1": ("fraction", 0.9),
        "beta_2": ("fraction", 0.999),
        "epsilon": ("rate", 1e-7),
    },
}


def _check(kind: str, value: Any, where: str) -> Any:
    """Validate one field value of the given kind and return its canonical form."""
    def fail(what: str) -> ModelSpecError:
        return ModelSpecError(f"{where}: {what}, got {value!r}")

    if kind == "posint":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value > 1 << 20:
            raise fail("must be an integer in 1..1048576")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise fail("must be true or false")
        return value
    if kind in ("fraction", "rate", "dropout_rate"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise fail("must be a finite number")
        low_ok = value >= 0
        high = {"fraction": (value < 1, "[0, 1)"), "rate": (value <= 1, "[0, 1]"),
                "dropout_rate": (value <= 0.95, "[0, 0.95]")}[kind]
        if not (low_ok and high[0]):
            raise fail(f"must be in {high[1]}")
        if kind == "fraction" and to_fixed(value, K.HYPER_FRAC_BITS) >= 1 << K.HYPER_FRAC_BITS:
            raise fail(f"must be below 1 - 2**-{K.HYPER_FRAC_BITS + 1} (it would round to exactly 1 in fixed point)")
        return float(value)
    if kind == "pair":
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64 for v in value)):
            raise fail("must be an integer 1..64 or a list of two")
        return [int(v) for v in value]
    if kind == "shape":
        if (not isinstance(value, (list, tuple)) or not 1 <= len(value) <= 3
                or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1 << 20 for v in value)):
            raise fail("must be a list of 1 to 3 positive integers")
        return [int(v) for v in value]
    choices = {"activation": ACTIVATIONS, "initializer": INITIALIZERS, "padding": PADDINGS}[kind]
    if value not in choices:
        raise fail(f"must be one of {', '.join(choices)}")
    return value


def _fields(d: Any, fields: dict[str, tuple[str, Any]], where: str, type_key: str) -> dict:
    if not isinstance(d, dict):
        raise ModelSpecError(f"{where}: must be an object, got {type(d).__name__}")
    unknown = set(d) - set(fields) - {type_key}
    if unknown:
        raise ModelSpecError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    out = {}
    for name, (kind, default) in fields.items():
        if name in d:
            out[name] = _check(kind, d[name], f"{where}.{name}")
        elif default is REQUIRED:
            raise ModelSpecError(f"{where}.{name}: missing")
        else:
            out[name] = default
    return out


def _type_of(d: Any, where: str, choices) -> str:
    if not isinstance(d, dict):
        raise ModelSpecError(f"{where}: must be an object, got {type(d).__name__}")
    kind = d.get("type")
    if kind not in choices:
        raise ModelSpecError(f"{where}.type: must be one of {', '.join(choices)}, got {kind!r}")
    return kind


def _conv_out(size: int, window: int, stride: int, padding: str) -> int:
    return -(-size // stride) if padding == "same" else (size - window) // stride + 1


@dataclass(frozen=True)
class LayerShape:
    """A layer with the shapes flowing in and out of it (batch axis left out)."""
    index: int
    config: dict
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    input_shape: tuple[int, ...]
    layers: tuple[dict, ...]
    loss: dict
    optimizer: dict
    slices: int
    update: dict

    @classmethod
    def from_dict(cls, d: Any) -> "ModelSpec":
        if not isinstance(d, dict):
            raise ModelSpecError(f"model: must be an object, got {type(d).__name__}")
        unknown = set(d) - {"input_shape", "layers", "loss", "optimizer", "slices", "update"}
        if unknown:
            raise ModelSpecError(f"model: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        for required in ("input_shape", "layers", "loss", "optimizer"):
            if required not in d:
                raise ModelSpecError(f"{required}: missing")
        input_shape = _check("shape", d["input_shape"], "input_shape")
        if not isinstance(d["layers"], list) or not d["layers"]:
            raise ModelSpecError("layers: must be a non-empty list")
        if len(d["layers"]) > 64:
            raise ModelSpecError("layers: at most 64 layers")
        layers = []
        for i, layer in enumerate(d["layers"]):
            where = f"layers[{i}]"
            kind = _type_of(layer, where, tuple(LAYER_FIELDS))
            config = {"type": kind, **_fields(layer, LAYER_FIELDS[kind], where, "type")}
            if kind in ("max_pool2d", "avg_pool2d") and config["strides"] is None:
                config["strides"] = list(config["pool_size"])
            if kind == "activation" and config["activation"] == "softmax":
                raise ModelSpecError(f"{where}.activation: softmax only as the last dense/conv layer's activation")
            layers.append(config)
        loss_kind = _type_of(d["loss"], "loss", LOSSES)
        loss = {"type": loss_kind, **_fields(d["loss"], {}, "loss", "type")}
        opt_kind = _type_of(d["optimizer"], "optimizer", tuple(OPTIMIZER_FIELDS))
        optimizer = {"type": opt_kind, **_fields(d["optimizer"], OPTIMIZER_FIELDS[opt_kind], "optimizer", "type")}
        slices = d.get("slices", 2)
        if slices not in ALLOWED_SLICES or isinstance(slices, bool):
            raise ModelSpecError(f"slices: must be one of {ALLOWED_SLICES}, got {slices!r}")
        update = d.get("update", {"type": "dense"})
        update_kind = _type_of(update, "update", UPDATE_KINDS)
        update_fields = {"threshold": ("rate", REQUIRED)} if update_kind == "threshold" else {}
        update = {"type": update_kind, **_fields(update, update_fields, "update", "type")}
        spec = cls(tuple(input_shape), tuple(layers), loss, optimizer, int(slices), update)
        spec.layer_shapes()  # validates shapes, activations and the loss pairing
        return spec

    def to_dict(self) -> dict:
        return json.loads(self.to_json())

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces."""
        return json.dumps(
            {"input_shape": list(self.input_shape), "layers": list(self.layers), "loss": self.loss,
             "optimizer": self.optimizer, "slices": self.slices, "update": self.update},
            sort_keys=True, separators=(",", ":"))

    def layer_shapes(self) -> list[LayerShape]:
        """Each layer with its input and output shapes; raises ModelSpecError on a mismatch."""
        shape = tuple(self.input_shape)
        out = []
        for i, config in enumerate(self.layers):
            where = f"layers[{i}]"
            kind = config["type"]
            if kind == "dense":
                if len(shape) != 1:
                    raise ModelSpecError(f"{where}: dense needs a flat input, got shape {list(shape)} (add a flatten layer)")
                if shape[0] > MAX_CONTRACTION_SIZE:
                    raise ModelSpecError(f"{where}: input width {shape[0]} exceeds {MAX_CONTRACTION_SIZE}")
                new = (config["units"],)
            elif kind == "conv2d":
                if len(shape) != 3:
                    raise ModelSpecError(f"{where}: conv2d needs an HWC input, got shape {list(shape)}")
                (kh, kw), (sh, sw) = config["kernel_size"], config["strides"]
                if kh * kw * shape[2] > MAX_CONTRACTION_SIZE:
                    raise ModelSpecError(f"{where}: kernel too large for int32 accumulation")
                if config["padding"] == "valid" and (shape[0] < kh or shape[1] < kw):
                    raise ModelSpecError(f"{where}.kernel_size: larger than the input {list(shape)}")
                new = (_conv_out(shape[0], kh, sh, config["padding"]), _conv_out(shape[1], kw, sw, config["padding"]),
                       config["filters"])
            elif kind in ("max_pool2d", "avg_pool2d"):
                if len(shape) != 3:
                    raise ModelSpecError(f"{where}: {kind} needs an HWC input, got shape {list(shape)}")
                if config["padding"] != "valid":
                    raise ModelSpecError(f"{where}.padding: pooling supports only 'valid'")
                (ph, pw), (sh, sw) = config["pool_size"], config["strides"]
                if shape[0] < ph or shape[1] < pw:
                    raise ModelSpecError(f"{where}.pool_size: larger than the input {list(shape)}")
                new = (_conv_out(shape[0], ph, sh, "valid"), _conv_out(shape[1], pw, sw, "valid"), shape[2])
            elif kind == "flatten":
                new = (math.prod(shape),)
            elif kind == "reshape":
                new = tuple(config["target_shape"])
                if math.prod(new) != math.prod(shape):
                    raise ModelSpecError(f"{where}.target_shape: {list(new)} does not hold {math.prod(shape)} values")
            else:  # dropout, activation, leaky_relu keep the shape
                new = shape
            if config.get("activation") == "softmax" and i != len(self.layers) - 1:
                raise ModelSpecError(f"{where}.activation: softmax only in the last layer")
            out.append(LayerShape(i, config, shape, new))
            shape = new
        self._check_loss(out)
        return out

    def _check_loss(self, shapes: list[LayerShape]) -> None:
        last = shapes[-1]
        activation = last.config.get("activation", "linear") if last.config["type"] in ("dense", "conv2d") else "linear"
        if last.config["type"] == "activation":
            activation = last.config["activation"]
        kind = self.loss["type"]
        allowed = {"softmax_cross_entropy": ("softmax", "linear"), "categorical_cross_entropy": ("softmax", "linear"),
                   "sigmoid_binary_cross_entropy": ("sigmoid", "linear"),
                   "mse": ("linear", "relu", "leaky_relu", "tanh", "sigmoid")}[kind]
        if activation not in allowed:
            raise ModelSpecError(f"loss.type: {kind} needs the last activation to be one of {', '.join(allowed)}, "
                                 f"got {activation}")
        if kind in ("softmax_cross_entropy", "categorical_cross_entropy", "sigmoid_binary_cross_entropy") \
                and last.config["type"] not in ("dense", "conv2d", "activation"):
            raise ModelSpecError(f"loss.type: {kind} needs a dense, conv2d or activation layer last")
        if kind in ("softmax_cross_entropy", "categorical_cross_entropy") and len(last.out_shape) != 1:
            raise ModelSpecError(f"loss.type: {kind} needs a flat output, got {list(last.out_shape)}")

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layer_shapes()[-1].out_shape

    def label_shape(self) -> tuple[int, ...]:
        """Shape of one target: () for integer labels, else the output shape."""
        return () if self.loss["type"] == "softmax_cross_entropy" else self.output_shape
