"""A flax.linen model for any engine model description: the float32 twin of a
canonical model. Used to export trained models (a flax-loadable checkpoint) and
by bench/accuracy.py as the float baseline trained with optax.

Parameters are {"params": {"layer_<i>": {"kernel", "bias"}}} with the engine's
layer index i and Keras/flax layouts (dense (in, out); conv (kh, kw, in, out)).
"""
from __future__ import annotations

import json
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from bws.engine.iteration import FUSED_ACTIVATIONS


def _activate(kind: str, x, alpha: float):
    if kind == "linear":
        return x
    if kind == "relu":
        return nn.relu(x)
    if kind == "leaky_relu":
        return nn.leaky_relu(x, alpha)
    if kind == "tanh":
        return jnp.tanh(x)
    if kind == "sigmoid":
        return nn.sigmoid(x)
    if kind == "softmax":
        return nn.softmax(x)
    raise ValueError(f"activation {kind!r}")


class FlaxModel(nn.Module):
    """`description_json`: the engine model description as JSON (hashable).
    `logits=True` leaves out the last activation when the loss fuses it
    (softmax/sigmoid), so optax's cross-entropies take the output."""

    description_json: str
    logits: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        description = json.loads(self.description_json)
        layers = description["layers"]
        fused = FUSED_ACTIVATIONS.get(description["loss"]["type"])
        for index, layer in enumerate(layers):
            kind = layer["type"]
            name = f"layer_{index}"
            if kind in ("dense", "conv2d"):
                if kind == "dense":
                    x = nn.Dense(layer["units"], use_bias=layer["use_bias"], name=name)(x)
                else:
                    x = nn.Conv(layer["filters"], tuple(layer["kernel_size"]), strides=tuple(layer["strides"]),
                                padding=layer["padding"].upper(), use_bias=layer["use_bias"], name=name)(x)
                activation = layer["activation"]
                if self.logits and index == len(layers) - 1 and activation == fused:
                    activation = "linear"
                x = _activate(activation, x, layer["alpha"])
            elif kind == "max_pool2d":
                x = nn.max_pool(x, tuple(layer["pool_size"]), strides=tuple(layer["strides"]), padding="VALID")
            elif kind == "avg_pool2d":
                x = nn.avg_pool(x, tuple(layer["pool_size"]), strides=tuple(layer["strides"]), padding="VALID")
            elif kind == "flatten":
                x = x.reshape((x.shape[0], -1))
            elif kind == "reshape":
                x = x.reshape((x.shape[0], *layer["target_shape"]))
            elif kind == "dropout":
                x = nn.Dropout(layer["rate"], deterministic=not train)(x)
            elif kind == "activation":
                x = _activate(layer["activation"], x, layer["alpha"])
            elif kind == "leaky_relu":
                x = nn.leaky_relu(x, layer["alpha"])
            else:
                raise ValueError(f"layer type {kind!r}")
        return x


def flax_model(description: dict[str, Any], logits: bool = False) -> FlaxModel:
    return FlaxModel(json.dumps(description, sort_keys=True), logits=logits)


def flax_variables(float_params: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Engine-structured float params {"0": {"kernel", ...}} -> flax variables."""
    return {"params": {f"layer_{layer}": {name: jnp.asarray(value) for name, value in weights.items()}
                       for layer, weights in float_params.items()}}
