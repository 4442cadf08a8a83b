"""Per-op intermediate commitments of one training iteration, for bisection.

An iteration is a fixed sequence of ops; each op's outputs are a small set of
named integer tensors, committed like any state (the spec's
`compute_tensors_root`). Two parties who disagree on an iteration's result
compare these roots in order: the first op whose root differs, while every
op before it agrees, is where their computations part (refereed delegation:
that op's inputs are outputs both sides already agree on, so one op replayed
on them settles who is wrong).

The ops, in execution order (i: layer index, TYPE: its layer type):

    merge                params + summed peer updates      params/<layer>/<name>
    forward/i/TYPE       layer i's output                  y
    loss                 loss gradient and loss sum        delta, loss_sum
    backward/i/TYPE      layer i's gradients, input delta  <name> (kernel, bias), delta_in
    optimizer            the optimizer's step and state    delta/<layer>/<name>, opt/...
    update               the update the miner shares       <layer>/<name>
    state_after          the model state after the iteration

`trace_iteration` runs them with the engine's ops (jitted per model, the same
functions `make_iteration` composes, so its `update` and `state_after` equal
the iteration's bit for bit); `reference_trace` runs them with the spec's
NumPy reference (`bws.spec.reference.training`). Both give the same roots.
"""
from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bws.spec import constants as K
from bws.spec.hashing import compute_tensors_root
from bws.spec.reference import training as reference

from . import ops
from .commit import flatten
from .fixed import I64, saturate32, to_fixed
from .iteration import _as_spec, add_trees, backward, is_loss_fused, loss_input
from .model import ModelSpec
from .settings import require_settings

Trace = list[tuple[str, dict[str, np.ndarray]]]


def _threshold_update(spec: ModelSpec, state: dict, delta: dict):
    """(update, new residual) of a threshold-update model (None residual for dense updates)."""
    if spec.update["type"] != "threshold":
        return delta, None
    threshold = to_fixed(spec.update["threshold"], K.PARAM_FRAC_BITS)
    pending = jax.tree.map(lambda r, d: saturate32(r.astype(I64) + d), state["residual"], delta)
    update = jax.tree.map(lambda p: jnp.where(jnp.abs(p) >= threshold, p, 0), pending)
    return update, jax.tree.map(lambda p, u: p - u, pending, update)


def _engine_trace(spec: ModelSpec, state, batch, peer_update_sum) -> list[tuple[str, dict]]:
    merged = add_trees(state["params"], peer_update_sum)
    trace: list[tuple[str, dict]] = [("merge", {"params": merged})]
    infos = spec.layer_shapes()
    x, caches = batch["x"], []
    for info in infos:
        x, cache = ops.layer_forward(info, merged.get(str(info.index), {}), x, spec.slices, train=True,
                                     seed_key=state["seed"], step=state["step"])
        caches.append(cache)
        trace.append((f"forward/{info.index}/{info.config['type']}", {"y": x}))
    delta, metrics = ops.loss_forward_backward(spec.loss["type"], loss_input(spec, x, caches), batch["y"])
    trace.append(("loss", {"delta": delta, "loss_sum": jnp.asarray(metrics["loss_sum"], I64)}))
    _, grads, steps = backward(spec, merged, caches, delta, fused=is_loss_fused(spec))
    for info, layer_grads, delta_in in steps:
        trace.append((f"backward/{info.index}/{info.config['type']}",
                      dict(layer_grads, **({} if delta_in is None else {"delta_in": delta_in}))))
    step_delta, opt = ops.optimizer_step(spec.optimizer, grads, state["opt"], state["step"])
    trace.append(("optimizer", {"delta": step_delta, "opt": opt}))
    update, residual = _threshold_update(spec, state, step_delta)
    trace.append(("update", update))
    new_state = {"opt": opt, "step": state["step"] + 1, "seed": state["seed"], "params": add_trees(merged, update)}
    if residual is not None:
        new_state["residual"] = residual
    trace.append(("state_after", new_state))
    return trace


_TRACE_CACHE: dict[str, Any] = {}


def trace_iteration(spec, state: dict, batch: dict, peer_update_sum: dict) -> Trace:
    """The iteration's ops with their output tensors (flat, numpy), engine arithmetic.
    Same arguments as `make_iteration(spec)`."""
    require_settings()
    spec = _as_spec(spec)
    key = spec.to_json()
    if key not in _TRACE_CACHE:
        # The op names are static (they depend on the model only): jit the outputs, keep the names aside.
        names: list[str] = []

        def outputs_only(s, b, p):
            trace = _engine_trace(spec, s, b, p)
            names[:] = [name for name, _ in trace]
            return [outputs for _, outputs in trace]
        _TRACE_CACHE[key] = (jax.jit(outputs_only), names)
    function, names = _TRACE_CACHE[key]
    outputs = jax.device_get(function(state, {"x": jnp.asarray(batch["x"]), "y": jnp.asarray(batch["y"])},
                                      peer_update_sum))
    return [(name, flatten(tensors)) for name, tensors in zip(names, outputs)]


def reference_trace(spec, state: dict, batch: dict, peer_update_sum: dict) -> Trace:
    """The same ops computed by the spec's NumPy reference (independent of XLA)."""
    model = json.loads(_as_spec(spec).to_json())
    state = jax.tree.map(np.asarray, jax.device_get(state))
    peer_update_sum = jax.tree.map(np.asarray, jax.device_get(peer_update_sum))
    x, y = np.asarray(batch["x"], np.int32), np.asarray(batch["y"], np.int32)
    with np.errstate(over="ignore"):
        merged = reference.add(state["params"], peer_update_sum)
    trace: list[tuple[str, dict]] = [("merge", {"params": merged})]
    layers = model["layers"]
    last = len(layers) - 1
    caches = []
    for index, layer in enumerate(layers):
        x, cache = reference.forward_layer(model, index, merged.get(str(index), {}), x, train=True, state=state)
        caches.append(cache)
        trace.append((f"forward/{index}/{layer['type']}", {"y": x}))
    fused = reference.FUSED.get(model["loss"]["type"]) == layers[last].get("activation")
    delta, metrics = reference.loss_and_delta(model["loss"]["type"], caches[last]["z"] if fused else x, y)
    trace.append(("loss", {"delta": delta, "loss_sum": np.asarray(metrics["loss_sum"], np.int64)}))
    first = min((i for i, layer in enumerate(layers) if layer["type"] in ("dense", "conv2d")), default=0)
    grads = {}
    for index in range(last, -1, -1):
        delta, layer_grads = reference.backward_layer(model, index, merged.get(str(index), {}), caches[index], delta,
                                                      need_input_delta=index > first, fused=fused and index == last)
        if layer_grads:
            grads[str(index)] = layer_grads
        trace.append((f"backward/{index}/{layers[index]['type']}",
                      dict(layer_grads, **({} if delta is None else {"delta_in": delta}))))
        if delta is None:
            break
    step_delta, opt = reference.optimizer_update(model["optimizer"], grads, state["opt"], int(state["step"]))
    trace.append(("optimizer", {"delta": step_delta, "opt": opt}))
    # The threshold rule and the final assembly are the reference iteration's own code: run it and read them off.
    new_state, update, _ = reference.iteration(model, state, {"x": np.asarray(batch["x"], np.int32), "y": y},
                                               peer_update_sum)
    trace.append(("update", update))
    trace.append(("state_after", new_state))
    return [(name, flatten(outputs)) for name, outputs in trace]


def trace_roots(trace: Trace) -> list[tuple[str, bytes]]:
    """(op name, commitment root of its outputs) in execution order."""
    return [(name, bytes(compute_tensors_root(outputs))) for name, outputs in trace]
