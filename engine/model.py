"""The engine-level model description (`ModelSpec`): what the Keras-compatible
templates compile to, and what an iteration vector carries.

The description and its rules are the spec's (bws.spec.models), so the spec
accepts exactly the models the engine runs; here its errors become the
engine's (`ModelSpecError` is an `EngineError`), and the CLI's short model
names are parsed.
"""
from __future__ import annotations

from typing import Any

from bws.spec import models
from bws.spec.models import ACTIVATIONS, INITIALIZERS, LOSSES, LayerShape  # noqa: F401 (the engine's names)


class EngineError(Exception):
    """Base class of every error the engine reports on bad input."""


class ModelSpecError(EngineError, models.ModelSpecError):
    """A model description is malformed; the message names the bad field."""


class ModelSpec(models.ModelSpec):
    """The spec's model description (bws.spec.models: the one list of what a
    task may name), with its errors reported as the engine's."""

    @classmethod
    def from_dict(cls, d: Any) -> "ModelSpec":
        try:
            return super().from_dict(d)
        except models.ModelSpecError as error:
            raise ModelSpecError(str(error)) from None


def parse_model_shorthand(text: str) -> dict:
    """The CLI's short model names, e.g. ``mlp:784-512-256-10`` (relu hidden
    layers, softmax output, Adam) and ``cnn:28x28x1-8-16-10`` (3x3 'same'
    convolutions each followed by 2x2 max pooling, then a softmax dense layer)."""
    kind, _, body = text.partition(":")
    try:
        if kind == "mlp":
            sizes = [int(v) for v in body.split("-")]
            if len(sizes) < 2:
                raise ValueError
            layers = [{"type": "dense", "units": n, "activation": "relu"} for n in sizes[1:-1]]
            layers.append({"type": "dense", "units": sizes[-1], "activation": "softmax"})
            input_shape = [sizes[0]]
        elif kind == "cnn":
            image, *rest = body.split("-")
            input_shape = [int(v) for v in image.split("x")]
            *filters, classes = [int(v) for v in rest]
            if len(input_shape) != 3 or not filters:
                raise ValueError
            layers = []
            for f in filters:
                layers += [{"type": "conv2d", "filters": f, "kernel_size": [3, 3], "padding": "same", "activation": "relu"},
                           {"type": "max_pool2d", "pool_size": [2, 2]}]
            layers += [{"type": "flatten"}, {"type": "dense", "units": classes, "activation": "softmax"}]
        else:
            raise ValueError
    except ValueError:
        raise ModelSpecError(f"model: expected mlp:IN-H1-...-OUT or cnn:HxWxC-F1-...-CLASSES, got {text!r}") from None
    return {"input_shape": input_shape, "layers": layers, "loss": {"type": "softmax_cross_entropy"},
            "optimizer": {"type": "adam"}, "slices": 2}
