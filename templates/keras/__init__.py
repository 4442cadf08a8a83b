"""A Keras-compatible API whose models compile to the canonical engine.

    from bws.templates import keras
    model = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
"""
from . import layers, losses, models, optimizers
from .layers import Input
from .models import Model, Sequential, model_from_json

__all__ = ["Input", "Model", "Sequential", "layers", "losses", "models", "model_from_json", "optimizers"]
