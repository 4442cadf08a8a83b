"""Keras optimizers (SGD with momentum, Adam), Keras names and defaults, and
their engine form. The engine turns the float hyper-parameters into fixed point
once, by its documented rounding rule."""
from __future__ import annotations

import math
from typing import Any

from ..errors import KerasModelError, UnsupportedKerasFeature

# Arguments Keras writes into optimizer configs that are harmless at these values.
_NEUTRAL = {
    "weight_decay": (None, 0, 0.0), "clipnorm": (None,), "clipvalue": (None,), "global_clipnorm": (None,),
    "use_ema": (False,), "ema_momentum": None, "ema_overwrite_frequency": None,
    "loss_scale_factor": (None,), "gradient_accumulation_steps": (None,), "jit_compile": None,
    "is_legacy_optimizer": (False,), "decay": (0, 0.0), "amsgrad": (False,),
}


def _float(owner: str, argument: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        if isinstance(value, dict):
            raise UnsupportedKerasFeature(f"optimizer {owner!r}: {argument} schedules are not supported (a constant only)")
        raise KerasModelError(f"optimizer {owner!r}: {argument} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


class Optimizer:
    keras_class = "Optimizer"

    def __init__(self, name: str | None = None, **kwargs: Any):
        self.name = name or self.keras_class.lower()
        for key, value in sorted(kwargs.items()):
            if key not in _NEUTRAL:
                raise UnsupportedKerasFeature(f"optimizer {self.name!r}: argument {key!r} is not supported")
            if _NEUTRAL[key] is not None and value not in _NEUTRAL[key]:
                raise UnsupportedKerasFeature(f"optimizer {self.name!r}: argument {key}={value!r} is not supported")

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, **self.engine_optimizer()}

    def engine_optimizer(self) -> dict[str, Any]:
        raise NotImplementedError


class SGD(Optimizer):
    keras_class = "SGD"

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.learning_rate = _float(self.name, "learning_rate", learning_rate, 0.0, 1e3)
        self.momentum = _float(self.name, "momentum", momentum, 0.0, 1.0)
        self.nesterov = bool(nesterov)

    def engine_optimizer(self):
        return {"type": "sgd", "learning_rate": self.learning_rate, "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    keras_class = "Adam"

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, **kwargs: Any):
        super().__init__(**kwargs)
        self.learning_rate = _float(self.name, "learning_rate", learning_rate, 0.0, 1e3)
        self.beta_1 = _float(self.name, "beta_1", beta_1, 0.0, 1.0)
        self.beta_2 = _float(self.name, "beta_2", beta_2, 0.0, 1.0)
        self.epsilon = _float(self.name, "epsilon", epsilon, 0.0, 1.0)

    def engine_optimizer(self):
        return {"type": "adam", "learning_rate": self.learning_rate, "beta_1": self.beta_1,
                "beta_2": self.beta_2, "epsilon": self.epsilon}


_BY_NAME = {"sgd": SGD, "adam": Adam}
_BY_CLASS = {"SGD": SGD, "Adam": Adam}


def get(identifier: Any) -> Optimizer:
    """`keras.optimizers.get`: an Optimizer from an instance, a name, or its JSON config."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, dict) and identifier.get("class_name") in _BY_CLASS:
        return _BY_CLASS[identifier["class_name"]](**_config(identifier))
    raise UnsupportedKerasFeature(f"optimizer {identifier!r} is not supported; supported: SGD, Adam")


def _config(identifier: dict) -> dict:
    config = identifier.get("config") or {}
    if not isinstance(config, dict):
        raise KerasModelError(f"optimizer {identifier.get('class_name')}: config must be an object, got {config!r}")
    return config
