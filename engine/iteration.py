"""The training iteration and the engine's public functions.

state = {"params": {layer: {"kernel", "bias"}}, "opt": {...}, "step": int32[],
         "seed": uint32[2], ("residual": {...} for threshold updates)}
iteration(state, batch, peer_update_sum) -> (new_state, update, metrics):
  merged = params + peer_update_sum            (int32, wrapping: order-free)
  grads  = backward(forward(merged, batch))    (F28)
  delta, opt = optimizer(grads, opt, step)     (F24)
  update = delta (dense) or the thresholded part of residual + delta
  params = merged + update; step += 1
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bws.spec import constants as K

from . import ops
from .fixed import I32, I64, U32, saturate32, to_fixed
from .model import EngineError, ModelSpec
from .settings import require_settings

FUSED_ACTIVATIONS = {"softmax_cross_entropy": "softmax", "categorical_cross_entropy": "softmax",
                     "sigmoid_binary_cross_entropy": "sigmoid"}


class BatchError(EngineError):
    """A batch, state or update does not fit the model."""


def _as_spec(spec) -> ModelSpec:
    return spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec)


def param_shapes(spec: ModelSpec) -> dict[str, dict[str, tuple[int, ...]]]:
    """Parameter shapes by layer index (as a string) and name."""
    shapes = {}
    for info in spec.layer_shapes():
        config = info.config
        if config["type"] == "dense":
            kernel = (info.in_shape[0], config["units"])
            bias = (config["units"],)
        elif config["type"] == "conv2d":
            kernel = tuple(config["kernel_size"]) + (info.in_shape[2], config["filters"])
            bias = (config["filters"],)
        else:
            continue
        shapes[str(info.index)] = {"kernel": kernel, **({"bias": bias} if config["use_bias"] else {})}
    return shapes


def seed_key(seed: int):
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise EngineError(f"seed: must be an integer in [0, 2**64), got {seed!r}")
    return jnp.asarray([seed >> 32, seed & 0xFFFFFFFF], U32)


def init_state(spec, seed: int) -> dict:
    """Initial state from threefry: kernel slot 0, bias slot 1 of each layer."""
    require_settings()
    spec = _as_spec(spec)
    key = seed_key(seed)
    cache_key = spec.to_json()
    if cache_key not in _INIT_CACHE:
        _INIT_CACHE[cache_key] = jax.jit(lambda key: _init_state(spec, key))
    return _INIT_CACHE[cache_key](key)


_INIT_CACHE: dict[str, Any] = {}


def _init_state(spec: ModelSpec, key) -> dict:
    params = {}
    for layer, shapes in param_shapes(spec).items():
        config = spec.layers[int(layer)]
        params[layer] = {name: ops.uniform_init(key, int(layer), slot, shape, config[f"{name}_initializer"])
                         for slot, (name, shape) in enumerate(sorted(shapes.items(), key=lambda kv: kv[0] != "kernel"))}
    state = {"params": params, "opt": ops.optimizer_init(spec.optimizer, params),
             "step": jnp.asarray(0, I32), "seed": key}
    if spec.update["type"] == "threshold":
        state["residual"] = zeros_like_params(params)
    return state


def zeros_like_params(params: dict) -> dict:
    return jax.tree.map(lambda a: jnp.zeros(a.shape, I32), params)


def forward(spec: ModelSpec, params: dict, x, *, train=False, seed=None, step=None):
    """Canonical forward pass; returns the output and every layer's cache."""
    caches = []
    for info in spec.layer_shapes():
        x, cache = ops.layer_forward(info, params.get(str(info.index), {}), x, spec.slices,
                                     train=train, seed_key=seed, step=step)
        caches.append(cache)
    return x, caches


def is_loss_fused(spec: ModelSpec) -> bool:
    """Whether the loss takes the last layer's pre-activation (softmax/sigmoid fused)."""
    last = spec.layers[-1]
    return FUSED_ACTIVATIONS.get(spec.loss["type"]) == last.get("activation")


def loss_input(spec: ModelSpec, out, caches):
    """What the loss reads: the last pre-activation when the loss fuses it, else the output."""
    return caches[-1]["z"] if is_loss_fused(spec) else out


def backward(spec: ModelSpec, params: dict, caches: list, delta, *, fused: bool, through_input: bool = False):
    """Back-propagate dL/d(output) `delta` through every layer, last to first.

    `fused`: `delta` is taken at the last layer's pre-activation (see
    `is_loss_fused`). Returns (dL/d(input) when `through_input`, else None;
    the parameter gradients; the steps taken, as (layer info, its gradients,
    the delta it passed down or None), for per-op traces). Without
    `through_input` the pass stops at the first layer with parameters."""
    infos = spec.layer_shapes()
    first_with_params = 0 if through_input else min(
        (i.index for i in infos if i.config["type"] in ("dense", "conv2d")), default=0)
    grads, steps = {}, []
    for info in reversed(infos):
        layer = str(info.index)
        delta, layer_grads = ops.layer_backward(
            info, params.get(layer, {}), caches[info.index], delta, spec.slices,
            need_input_delta=through_input or info.index > first_with_params,
            fused_activation=fused and info.index == len(infos) - 1)
        if layer_grads:
            grads[layer] = layer_grads
        steps.append((info, layer_grads, delta))
        if delta is None:
            break
    return delta, grads, steps


def gradients(spec: ModelSpec, params: dict, batch: dict, *, seed=None, step=None):
    """Parameter gradients (F28) of the mean loss on the batch, and the metrics."""
    out, caches = forward(spec, params, batch["x"], train=True, seed=seed, step=step)
    delta, metrics = ops.loss_forward_backward(spec.loss["type"], loss_input(spec, out, caches), batch["y"])
    _, grads, _ = backward(spec, params, caches, delta, fused=is_loss_fused(spec))
    return grads, metrics


def add_trees(a: dict, b: dict) -> dict:
    """Element-wise int32 sum (two's complement wrap-around: associative and
    commutative, so any order of peers gives the same bits)."""
    return jax.tree.map(lambda x, y: (x + y).astype(x.dtype), a, b)


def sum_updates(updates: list[dict], spec=None, params: dict | None = None) -> dict:
    """Sum a set of peer updates (any order). With no updates, zeros shaped like
    `params` (or like the spec's parameters)."""
    if not updates:
        if params is None:
            params = {layer: {name: np.zeros(shape, np.int32) for name, shape in shapes.items()}
                      for layer, shapes in param_shapes(_as_spec(spec)).items()}
        return jax.tree.map(lambda a: jnp.zeros(np.shape(a), I32), params)
    total = jax.tree.map(lambda a: jnp.asarray(a, I32), updates[0])
    for update in updates[1:]:
        total = add_trees(total, jax.tree.map(lambda a: jnp.asarray(a, I32), update))
    return total


def _iteration(spec: ModelSpec, state, batch, peer_update_sum):
    merged = add_trees(state["params"], peer_update_sum)
    grads, metrics = gradients(spec, merged, batch, seed=state["seed"], step=state["step"])
    delta, opt = ops.optimizer_step(spec.optimizer, grads, state["opt"], state["step"])
    new_state = {"opt": opt, "step": state["step"] + 1, "seed": state["seed"]}
    if spec.update["type"] == "threshold":
        threshold = to_fixed(spec.update["threshold"], K.PARAM_FRAC_BITS)
        pending = jax.tree.map(lambda r, d: saturate32(r.astype(I64) + d), state["residual"], delta)
        update = jax.tree.map(lambda p: jnp.where(jnp.abs(p) >= threshold, p, 0), pending)
        new_state["residual"] = jax.tree.map(lambda p, u: p - u, pending, update)
    else:
        update = delta
    new_state["params"] = add_trees(merged, update)
    metrics = dict(metrics, count=jnp.asarray(batch["x"].shape[0], I32))
    return new_state, update, metrics


def make_iteration(spec, *, jit: bool = True):
    """The iteration as one function (jitted unless jit=False). Jitted
    functions are cached per canonical model, so each compiles once per shape."""
    require_settings()
    spec = _as_spec(spec)
    if not jit:
        return lambda state, batch, peer_update_sum: _iteration(spec, state, batch, peer_update_sum)
    key = spec.to_json()
    if key not in _ITERATION_CACHE:
        _ITERATION_CACHE[key] = jax.jit(lambda state, batch, peer_update_sum:
                                        _iteration(spec, state, batch, peer_update_sum))
    return _ITERATION_CACHE[key]


_ITERATION_CACHE: dict[str, Any] = {}


def check_batch(spec, batch: Any) -> dict:
    """Validate a batch against the model; returns it as int32 arrays."""
    spec = _as_spec(spec)
    if not isinstance(batch, dict) or set(batch) != {"x", "y"}:
        raise BatchError("batch: must be a dict with exactly the keys x and y")
    x, y = np.asarray(batch["x"]), np.asarray(batch["y"])
    if x.dtype != np.int32 or y.dtype != np.int32:
        raise BatchError(f"batch: x and y must be int32, got {x.dtype} and {y.dtype}")
    if x.ndim < 1 or x.shape[1:] != tuple(spec.input_shape) or x.shape[0] < 1:
        raise BatchError(f"batch.x: shape {list(x.shape)} does not match the input shape {list(spec.input_shape)}")
    if y.shape != (x.shape[0],) + spec.label_shape():
        raise BatchError(f"batch.y: shape {list(y.shape)}, expected {[x.shape[0], *spec.label_shape()]}")
    if spec.loss["type"] == "softmax_cross_entropy":
        classes = spec.output_shape[0]
        if y.size and (y.min() < 0 or y.max() >= classes):
            raise BatchError(f"batch.y: labels must be in [0, {classes})")
    return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


def predict(spec, params: dict, x):
    """Canonical forward (inference: no dropout); output in F16 (softmax: probabilities)."""
    require_settings()
    spec = _as_spec(spec)
    return _predict_jit(spec.to_json())(params, jnp.asarray(x, I32))


_PREDICT_CACHE: dict[str, Any] = {}


def _predict_jit(spec_json: str):
    if spec_json not in _PREDICT_CACHE:
        spec = ModelSpec.from_dict(__import__("json").loads(spec_json))
        _PREDICT_CACHE[spec_json] = jax.jit(lambda params, x: forward(spec, params, x)[0])
    return _PREDICT_CACHE[spec_json]


def evaluate(spec, params: dict, x, y, batch_size: int = 1024) -> dict:
    """Integer-exact accuracy: {"correct", "count", "accuracy" (Fraction)}.
    Classification by argmax of the output (labels or one-hot targets);
    sigmoid outputs by threshold 0.5 per element."""
    spec = _as_spec(spec)
    x, y = np.asarray(x), np.asarray(y)
    correct = 0
    count = 0
    for start in range(0, len(x), batch_size):
        out = np.asarray(predict(spec, params, x[start:start + batch_size]))
        target = y[start:start + batch_size]
        if spec.loss["type"] == "sigmoid_binary_cross_entropy":
            half = 1 << (K.ACT_FRAC_BITS - 1)
            correct += int(np.sum((out >= half) == (target >= half)))
            count += target.size
            continue
        truth = target if target.ndim == 1 else np.argmax(target, axis=-1)
        correct += int(np.sum(np.argmax(out, axis=-1) == truth))
        count += len(truth)
    return {"correct": correct, "count": count, "accuracy": Fraction(correct, max(count, 1))}


def quantize_inputs(values, frac_bits: int = K.ACT_FRAC_BITS) -> np.ndarray:
    """Dataset floats -> int32 fixed point: round half up of value * 2**frac_bits,
    computed exactly (float64 scaling by a power of two is exact, floor of
    x + 0.5 then too for |x| < 2**52), saturated to +-(2**31 - 1)."""
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise EngineError("quantize_inputs: values must be finite")
    scaled = np.floor(np.ldexp(array, frac_bits) + 0.5)
    return np.clip(scaled, K.INT32_MIN, K.INT32_MAX).astype(np.int32)
