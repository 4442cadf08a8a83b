"""Keras losses, with Keras argument names and defaults, and their engine form.

The engine fuses a final softmax (or sigmoid) into its cross-entropy, so what a
Keras loss compiles to depends on the model's last activation; `engine_loss`
decides, and refuses combinations whose Keras meaning the engine would not
reproduce (e.g. probabilities fed to a loss told they are logits)."""
from __future__ import annotations

from typing import Any

from ..errors import KerasModelError, UnsupportedKerasFeature


class Loss:
    keras_class = "Loss"
    default_name = "loss"

    def __init__(self, name: str | None = None, reduction: str = "sum_over_batch_size", **kwargs: Any):
        self.name = name or self.default_name
        if reduction not in ("sum_over_batch_size", "auto", "mean"):
            raise UnsupportedKerasFeature(f"loss {self.name!r}: reduction={reduction!r} is not supported (mean over the batch only)")
        for key, value in sorted(kwargs.items()):
            if key == "dtype" and value in (None, "float32"):
                continue
            raise UnsupportedKerasFeature(f"loss {self.name!r}: argument {key}={value!r} is not supported")

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "reduction": "sum_over_batch_size"}

    def engine_loss(self, last_activation: str) -> dict[str, Any]:
        raise NotImplementedError


class _CrossEntropy(Loss):
    engine_type = ""
    probability_activation = ""

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0, axis: int = -1, **kwargs: Any):
        super().__init__(**kwargs)
        if label_smoothing not in (0, 0.0):
            raise UnsupportedKerasFeature(f"loss {self.name!r}: label_smoothing={label_smoothing!r} is not supported")
        if axis != -1:
            raise UnsupportedKerasFeature(f"loss {self.name!r}: axis={axis!r} is not supported (last axis only)")
        self.from_logits = bool(from_logits)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}

    def engine_loss(self, last_activation: str) -> dict[str, Any]:
        if self.from_logits and last_activation != "linear":
            raise UnsupportedKerasFeature(
                f"loss {self.name!r}: from_logits=True but the model ends in {last_activation!r}; end in a linear layer"
            )
        if not self.from_logits and last_activation != self.probability_activation:
            raise UnsupportedKerasFeature(
                f"loss {self.name!r}: from_logits=False needs a model ending in {self.probability_activation!r}, "
                f"not {last_activation!r}; end in {self.probability_activation} or pass from_logits=True"
            )
        return {"type": self.engine_type}


class SparseCategoricalCrossentropy(_CrossEntropy):
    keras_class = "SparseCategoricalCrossentropy"
    default_name = "sparse_categorical_crossentropy"
    engine_type = "softmax_cross_entropy"
    probability_activation = "softmax"

    def __init__(self, from_logits: bool = False, ignore_class: int | None = None, **kwargs: Any):
        if ignore_class is not None:
            raise UnsupportedKerasFeature(f"loss: ignore_class={ignore_class!r} is not supported")
        super().__init__(from_logits=from_logits, **kwargs)


class CategoricalCrossentropy(_CrossEntropy):
    keras_class = "CategoricalCrossentropy"
    default_name = "categorical_crossentropy"
    engine_type = "categorical_cross_entropy"
    probability_activation = "softmax"


class BinaryCrossentropy(_CrossEntropy):
    keras_class = "BinaryCrossentropy"
    default_name = "binary_crossentropy"
    engine_type = "sigmoid_binary_cross_entropy"
    probability_activation = "sigmoid"


class MeanSquaredError(Loss):
    keras_class = "MeanSquaredError"
    default_name = "mean_squared_error"

    def engine_loss(self, last_activation: str) -> dict[str, Any]:
        if last_activation == "softmax":
            raise UnsupportedKerasFeature(f"loss {self.name!r}: mean squared error after a softmax is not supported")
        return {"type": "mse"}


_BY_NAME = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
}
_BY_CLASS = {cls.keras_class: cls for cls in set(_BY_NAME.values())}


def get(identifier: Any) -> Loss:
    """`keras.losses.get`: a Loss from an instance, a name, or its JSON config."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    if isinstance(identifier, dict) and identifier.get("class_name") in _BY_CLASS:
        config = _config(identifier)
        return _BY_CLASS[identifier["class_name"]](**config)
    if identifier is None:
        raise KerasModelError("compile() needs a loss")
    raise UnsupportedKerasFeature(f"loss {identifier!r} is not supported; supported: {', '.join(sorted(_BY_NAME))}")


def _config(identifier: dict) -> dict:
    config = identifier.get("config") or {}
    if not isinstance(config, dict):
        raise KerasModelError(f"loss {identifier.get('class_name')}: config must be an object, got {config!r}")
    return config
