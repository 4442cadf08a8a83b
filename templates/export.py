"""Export of a trained canonical model, for use outside BWS.

For a model called NAME, in the output folder:
    NAME_weights.npz        float32 weights, keys "params/<layer>/<kernel|bias>"
    NAME_flax.msgpack       flax.serialization bytes of {"params": {"layer_<i>": ...}}
                            for bws.templates.flax_model.flax_model(description)
    NAME_keras.json         Keras model JSON (loads in Keras 3 and in bws.templates.keras)
    NAME_keras_weights.npz  the weights in Keras get_weights() order: arr_0, arr_1, ...
    NAME_engine.json        the engine model description (canonical JSON)
"""
from __future__ import annotations

import json
import os
from typing import Any

import flax.serialization
import numpy as np

from .canonical import params_to_float
from .flax_model import flax_variables
from .keras.models import model_from_engine_description


def export_model(description: dict[str, Any], params: dict, out_dir: str, name: str = "model") -> list[str]:
    """Write the files above; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    float_params = params_to_float(params)
    paths = []

    def path(suffix: str) -> str:
        paths.append(os.path.join(out_dir, f"{name}_{suffix}"))
        return paths[-1]

    np.savez(path("weights.npz"), **{f"params/{layer}/{key}": value for layer, weights in sorted(float_params.items())
                                      for key, value in sorted(weights.items())})
    with open(path("flax.msgpack"), "wb") as f:
        f.write(flax.serialization.to_bytes(flax_variables(float_params)))
    keras_model = model_from_engine_description(description, name=name)
    with open(path("keras.json"), "w", encoding="utf-8") as f:
        f.write(keras_model.to_json())
    np.savez(path("keras_weights.npz"), *[float_params[str(index)][weight]
                                          for index, weight, _ in keras_model.weight_shapes()])
    with open(path("engine.json"), "w", encoding="utf-8") as f:
        json.dump(description, f, sort_keys=True, indent=1)
    return paths
