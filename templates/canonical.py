"""The bridge from the Keras API and the job templates to the canonical engine.

Everything that trains or predicts goes through `bws.engine` (integer fixed
point); floats appear only at the edges: a user's float inputs are quantized
with the engine's `quantize_inputs`, and weights/outputs are decoded to float32
for the user (parameters have PARAM_FRAC_BITS, activations ACT_FRAC_BITS).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from bws import engine
from bws.engine.iteration import loss_input
from bws.spec import constants as K

from . import schedule
from .errors import KerasModelError

PARAM_SCALE = float(1 << K.PARAM_FRAC_BITS)
ACT_SCALE = float(1 << K.ACT_FRAC_BITS)
# The largest float a parameter can hold (int32 with PARAM_FRAC_BITS).
MAX_PARAM = (2**31 - 1) / PARAM_SCALE


def params_to_float(params: dict) -> dict[str, dict[str, np.ndarray]]:
    """Fixed-point parameters -> float32 arrays, same structure."""
    return {layer: {name: (np.asarray(value, dtype=np.float64) / PARAM_SCALE).astype(np.float32)
                    for name, value in weights.items()} for layer, weights in params.items()}


def quantize_params(values: np.ndarray, where: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if np.any(np.abs(array) > MAX_PARAM):
        raise KerasModelError(f"{where}: a weight's magnitude exceeds {MAX_PARAM:.3f}, the fixed-point range")
    return engine.quantize_inputs(array, K.PARAM_FRAC_BITS)


class CanonicalModel:
    """A compiled model's canonical state, with Keras-shaped entry points."""

    def __init__(self, description: dict[str, Any], seed: int = 0):
        self.spec = engine.ModelSpec.from_dict(description)
        self.seed = seed
        self.state = engine.init_state(self.spec, seed)
        self.epochs_done = 0
        self._iteration = engine.make_iteration(self.spec)
        spec = self.spec

        def metrics(params, x, y):
            out, caches = engine.forward(spec, params, x)
            _, values = engine.ops.loss_forward_backward(spec.loss["type"], loss_input(spec, out, caches), y)
            return values

        self._metrics = jax.jit(metrics)

    # -- data --------------------------------------------------------------
    def quantize_x(self, x: Any) -> np.ndarray:
        array = np.asarray(x, dtype=np.float32)
        expected = tuple(self.spec.input_shape)
        if array.ndim == len(expected):
            raise KerasModelError(f"x has shape {array.shape}: add the batch axis, e.g. x[None]")
        if array.shape[1:] != expected:
            raise KerasModelError(f"x has examples of shape {array.shape[1:]}, the model takes {expected}")
        try:
            return engine.quantize_inputs(array)
        except engine.EngineError as exc:
            raise KerasModelError(f"x: {exc}") from None

    def quantize_y(self, y: Any, count: int) -> np.ndarray:
        array = np.asarray(y)
        if self.spec.loss["type"] == "softmax_cross_entropy":
            array = array.reshape(-1) if array.ndim == 2 and array.shape[1] == 1 else array
            classes = self.spec.output_shape[0]
            if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer) and not np.all(array == np.round(array)):
                raise KerasModelError(f"y must be integer class labels for sparse categorical cross-entropy, got shape {array.shape}")
            labels = array.astype(np.int64)
            if labels.size and (labels.min() < 0 or labels.max() >= classes):
                raise KerasModelError(f"y holds labels outside [0, {classes})")
            result = labels.astype(np.int32)
        else:
            expected = (count, *self.spec.label_shape())
            array = np.asarray(array, dtype=np.float64)
            if array.shape != expected and array.size == math.prod(expected):
                array = array.reshape(expected)
            if array.shape != expected:
                raise KerasModelError(f"y has shape {array.shape}, the model's targets are {expected}")
            try:
                result = engine.quantize_inputs(array)
            except engine.EngineError as exc:
                raise KerasModelError(f"y: {exc}") from None
        if result.shape[0] != count:
            raise KerasModelError(f"x has {count} examples but y has {result.shape[0]}")
        return result

    # -- weights -----------------------------------------------------------
    def get_float_weights(self, shapes: Iterable[tuple[int, str, tuple[int, ...]]]) -> list[np.ndarray]:
        params = params_to_float(jax.device_get(self.state["params"]))
        return [params[str(index)][name] for index, name, _ in shapes]

    def set_float_weights(self, shapes, arrays: list[np.ndarray]) -> None:
        params = jax.tree.map(np.asarray, jax.device_get(self.state["params"]))
        for (index, name, _), array in zip(shapes, arrays):
            params[str(index)][name] = quantize_params(array, f"layer {index} {name}")
        self.state = dict(self.state, params=jax.tree.map(jnp.asarray, params))

    # -- training ----------------------------------------------------------
    def step(self, batch: dict[str, np.ndarray]):
        """One canonical iteration on a quantized batch (no peers)."""
        peers = engine.sum_updates([], params=self.state["params"])
        self.state, _, metrics = self._iteration(self.state, {"x": jnp.asarray(batch["x"]), "y": jnp.asarray(batch["y"])},
                                                 peers)
        return metrics

    def fit(self, x, y, *, batch_size: int, epochs: int, verbose: bool, validation_data, shuffle: bool,
            metrics: list[str]) -> tuple[list[int], dict[str, list[float]]]:
        """Train for `epochs` epochs and return (the epochs' numbers, each metric's value per epoch):
        what a Keras History holds as `epoch` and `history`."""
        from tqdm.auto import tqdm

        xq = self.quantize_x(x)
        yq = self.quantize_y(y, xq.shape[0])
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= xq.shape[0]:
            raise KerasModelError(f"batch_size must be an int in 1..{xq.shape[0]} (the number of examples), got {batch_size!r}")
        per_epoch = schedule.batches_per_epoch(xq.shape[0], batch_size)
        epochs_run: list[int] = []
        history: dict[str, list[float]] = {}
        for _ in range(epochs):
            epoch = self.epochs_done
            order = schedule.epoch_order(xq.shape[0], self.seed, epoch) if shuffle else np.arange(xq.shape[0])
            loss_sum = correct = count = 0
            bar = tqdm(range(per_epoch), desc=f"epoch {epoch + 1}", unit="it", disable=not verbose, leave=True)
            for slot in bar:
                picks = order[slot * batch_size:(slot + 1) * batch_size]
                values = jax.device_get(self.step({"x": xq[picks], "y": yq[picks]}))
                loss_sum += int(values["loss_sum"])
                correct += int(values.get("correct", 0))
                count += int(values["count"])
                bar.set_postfix(loss=f"{loss_sum / count / ACT_SCALE:.4f}")
            self.epochs_done += 1
            epochs_run.append(epoch)
            history.setdefault("loss", []).append(loss_sum / count / ACT_SCALE)
            if metrics:
                history.setdefault("accuracy", []).append(correct / count)
            if validation_data is not None:
                if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                    raise KerasModelError("validation_data must be (x_val, y_val)")
                for key, value in self.evaluate(*validation_data, metrics=metrics).items():
                    history.setdefault(f"val_{key}", []).append(value)
        return epochs_run, history

    def evaluate(self, x, y, *, metrics: list[str] = ("accuracy",)) -> dict[str, float]:
        xq = self.quantize_x(x)
        return self.evaluate_quantized(xq, self.quantize_y(y, xq.shape[0]), metrics=metrics)

    def evaluate_quantized(self, xq: np.ndarray, yq: np.ndarray, *, metrics: list[str] = ("accuracy",),
                           batch_size: int = 1024) -> dict[str, float]:
        """Mean loss (and accuracy) of the canonical forward pass, no dropout."""
        loss_sum = correct = 0
        for start in range(0, xq.shape[0], batch_size):
            values = jax.device_get(self._metrics(self.state["params"], jnp.asarray(xq[start:start + batch_size]),
                                                  jnp.asarray(yq[start:start + batch_size])))
            loss_sum += int(values["loss_sum"])
            correct += int(values.get("correct", 0))
        results = {"loss": loss_sum / max(xq.shape[0], 1) / ACT_SCALE}
        if metrics:
            results["accuracy"] = correct / max(xq.shape[0], 1)
        return results

    def predict(self, x) -> np.ndarray:
        xq = self.quantize_x(x)
        out = np.asarray(jax.device_get(engine.predict(self.spec, self.state["params"], xq)))
        return (out.astype(np.float64) / ACT_SCALE).astype(np.float32)
