"""One canonical training iteration in NumPy: the reference the engine must
match bit for bit. Written for reading; see arithmetic.py for the conventions.

The model is the canonical model dict (bws.engine ModelSpec.to_dict(): every
default filled in). Tensors:

* inputs x, activations, regression targets: int32, ACT_FRAC_BITS (F16)
* parameters, updates: int32, PARAM_FRAC_BITS (F24)
* back-propagated deltas, gradients, Adam m, SGD velocity: int32, GRAD_FRAC_BITS (F28)
* Adam v: int64, ADAM_V_FRAC_BITS (F48)

state = {"params": {layer index: {"kernel", "bias"}}, "opt": {...},
         "step": int32, "seed": uint32[2], ("residual": {...})}
"""
from __future__ import annotations

import math

import numpy as np

from .. import constants as K
from .arithmetic import (contract, contraction_to_fixed, derive_key, divide_round, float_to_fixed,
                         multiply_q30, natural_log, normalise, power_q30, random_words, round_shift, saturate32,
                         table_lookup)

F_ACT, F_PARAM, F_GRAD, F_HYPER, F_PROB, F_V = (K.ACT_FRAC_BITS, K.PARAM_FRAC_BITS, K.GRAD_FRAC_BITS,
                                                K.HYPER_FRAC_BITS, K.PROB_FRAC_BITS, K.ADAM_V_FRAC_BITS)
ONE = 1 << F_HYPER


# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------
def same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same': output ceil(size / stride), the extra row at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def layer_shapes(model: dict) -> list[tuple[tuple, tuple]]:
    shape = tuple(model["input_shape"])
    shapes = []
    for layer in model["layers"]:
        kind = layer["type"]
        if kind == "dense":
            out = (layer["units"],)
        elif kind == "conv2d":
            (kh, kw), (sh, sw) = layer["kernel_size"], layer["strides"]
            if layer["padding"] == "same":
                out = (-(-shape[0] // sh), -(-shape[1] // sw), layer["filters"])
            else:
                out = ((shape[0] - kh) // sh + 1, (shape[1] - kw) // sw + 1, layer["filters"])
        elif kind in ("max_pool2d", "avg_pool2d"):
            (ph, pw), (sh, sw) = layer["pool_size"], layer["strides"]
            out = ((shape[0] - ph) // sh + 1, (shape[1] - pw) // sw + 1, shape[2])
        elif kind == "flatten":
            out = (math.prod(shape),)
        elif kind == "reshape":
            out = tuple(layer["target_shape"])
        else:
            out = shape
        shapes.append((shape, out))
        shape = out
    return shapes


def parameter_shapes(model: dict) -> dict:
    shapes = {}
    for index, (layer, (in_shape, _)) in enumerate(zip(model["layers"], layer_shapes(model))):
        if layer["type"] == "dense":
            kernel, bias = (in_shape[0], layer["units"]), (layer["units"],)
        elif layer["type"] == "conv2d":
            kernel, bias = tuple(layer["kernel_size"]) + (in_shape[2], layer["filters"]), (layer["filters"],)
        else:
            continue
        shapes[str(index)] = {"kernel": kernel}
        if layer["use_bias"]:
            shapes[str(index)]["bias"] = bias
    return shapes


# ---------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------
def initial_tensor(seed_key, layer: int, slot: int, shape, initializer: str) -> np.ndarray:
    """zeros, ones, or a uniform integer in [-L, L]: L = floor(sqrt(scale * 2**48 / fan)),
    value = floor(word * (2L + 1) / 2**32) - L for the tensor's threefry words."""
    if initializer == "zeros":
        return np.zeros(shape, np.int32)
    if initializer == "ones":
        return np.full(shape, 1 << F_PARAM, np.int32)
    if len(shape) == 1:
        fan_in = fan_out = shape[0]
    else:
        receptive = math.prod(shape[:-2])
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    scale, fan = {"glorot_uniform": (6, fan_in + fan_out), "he_uniform": (6, fan_in),
                  "lecun_uniform": (3, fan_in)}[initializer]
    limit = math.isqrt(scale * (1 << (2 * F_PARAM)) // fan)
    words = random_words(derive_key(seed_key, K.RANDOM_TAG_INIT, layer, slot), shape).astype(np.int64)
    return (((words * (2 * limit + 1)) >> 32) - limit).astype(np.int32)


def init_state(model: dict, seed: int) -> dict:
    seed_key = np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32)
    params = {}
    for layer, shapes in parameter_shapes(model).items():
        config = model["layers"][int(layer)]
        params[layer] = {"kernel": initial_tensor(seed_key, int(layer), 0, shapes["kernel"], config["kernel_initializer"])}
        if "bias" in shapes:
            params[layer]["bias"] = initial_tensor(seed_key, int(layer), 1, shapes["bias"], config["bias_initializer"])
    state = {"params": params, "opt": optimizer_init(model["optimizer"], params),
             "step": np.int32(0), "seed": seed_key}
    if model["update"]["type"] == "threshold":
        state["residual"] = {k: {n: np.zeros_like(a) for n, a in p.items()} for k, p in params.items()}
    return state


# ---------------------------------------------------------------------------
# Activations: z, y in F16, deltas in F28
# ---------------------------------------------------------------------------
def sigmoid(z):
    return table_lookup(K.SIGMOID_TABLE, z, K.TABLE_SIGMOID_MIN)


def activate(kind: str, z, alpha: float) -> np.ndarray:
    z = np.asarray(z, dtype=np.int64)
    if kind == "linear":
        return z.astype(np.int32)
    if kind == "relu":
        return np.maximum(z, 0).astype(np.int32)
    if kind == "leaky_relu":
        return np.where(z > 0, z, round_shift(z * float_to_fixed(alpha, F_HYPER), F_HYPER)).astype(np.int32)
    if kind == "sigmoid":
        return saturate32(sigmoid(z))
    if kind == "tanh":  # tanh(z) = 2 sigmoid(2z) - 1
        return saturate32(2 * sigmoid(2 * z) - (1 << F_ACT))
    if kind == "softmax":
        return saturate32(round_shift(softmax(z)[0], F_PROB - F_ACT))
    raise ValueError(kind)


def activation_gradient(kind: str, z, y, delta, alpha: float) -> np.ndarray:
    delta = np.asarray(delta, dtype=np.int64)
    if kind == "linear":
        return delta.astype(np.int32)
    if kind == "relu":
        return np.where(z > 0, delta, 0).astype(np.int32)
    if kind == "leaky_relu":
        return saturate32(np.where(z > 0, delta, round_shift(delta * float_to_fixed(alpha, F_HYPER), F_HYPER)))
    y = np.asarray(y, dtype=np.int64)
    if kind == "sigmoid":
        slope = round_shift(y * ((1 << F_ACT) - y), F_ACT)    # y (1 - y)
    else:
        slope = (1 << F_ACT) - round_shift(y * y, F_ACT)      # tanh: 1 - y^2
    return saturate32(round_shift(delta * slope, F_ACT))


def softmax(z):
    """p = e / sum(e), e = EXP_TABLE(z - max z) with PROB_FRAC_BITS; p floored."""
    t = np.asarray(z, dtype=np.int64) - np.max(z, axis=-1, keepdims=True)
    e = table_lookup(K.EXP_TABLE, t, -K.TABLE_EXP_SPAN)
    total = np.sum(e, axis=-1, keepdims=True)
    return np.floor_divide(e << F_PROB, total), t, total


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------
def windows(x, window, strides, out_hw):
    """x[:, dy + i*sh, dx + j*sw, :] for each window offset (dy, dx), row-major."""
    (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
    return [x[:, dy:dy + (ho - 1) * sh + 1:sh, dx:dx + (wo - 1) * sw + 1:sw, :]
            for dy in range(kh) for dx in range(kw)]


def unwindow(parts, window, strides, in_hw) -> np.ndarray:
    """Add each window offset's values back at their input positions (int64)."""
    (kh, kw), (sh, sw) = window, strides
    first = parts[0]
    total = np.zeros((first.shape[0],) + tuple(in_hw) + (first.shape[3],), dtype=np.int64)
    for index, part in enumerate(parts):
        dy, dx = divmod(index, kw)
        ho, wo = part.shape[1], part.shape[2]
        total[:, dy:dy + (ho - 1) * sh + 1:sh, dx:dx + (wo - 1) * sw + 1:sw, :] += part
    return total


def conv_padding(layer, in_shape):
    if layer["padding"] != "same":
        return (0, 0), (0, 0)
    (kh, kw), (sh, sw) = layer["kernel_size"], layer["strides"]
    return same_padding(in_shape[0], kh, sh), same_padding(in_shape[1], kw, sw)


def patches(layer, in_shape, out_shape, q):
    """im2col of the normalised input: [B, Ho, Wo, kh*kw*C], (dy, dx, c) order."""
    pad_h, pad_w = conv_padding(layer, in_shape)
    q = np.pad(q, [(0, 0), pad_h, pad_w, (0, 0)])
    return np.concatenate(windows(q, layer["kernel_size"], layer["strides"], out_shape[:2]), axis=-1)


def forward_layer(model, index, params, x, *, train, state):
    layer, (in_shape, out_shape) = model["layers"][index], layer_shapes(model)[index]
    slices, kind = model["slices"], layer["type"]
    if kind in ("dense", "conv2d"):
        qx, shift_x = normalise(x, slices)
        kernel = params["kernel"]
        if kind == "conv2d":
            qx = patches(layer, in_shape, out_shape, qx)
            kernel = kernel.reshape(-1, layer["filters"])
        qk, shift_k = normalise(kernel, slices)
        total = contract(qx, slices, qk, ([qx.ndim - 1], [0]))
        z = contraction_to_fixed(total, shift_x + shift_k, F_ACT + F_PARAM, F_ACT)
        if "bias" in params:
            z = saturate32(z.astype(np.int64) + round_shift(params["bias"], F_PARAM - F_ACT))
        y = activate(layer["activation"], z, layer["alpha"])
        return y, {"z": z, "y": y, "qx": (qx, shift_x), "qk": (qk, shift_k)}
    if kind == "max_pool2d":
        parts = windows(x, layer["pool_size"], layer["strides"], out_shape[:2])
        y = np.max(np.stack(parts), axis=0)
        return y, {"parts": parts, "y": y}
    if kind == "avg_pool2d":
        parts = windows(x, layer["pool_size"], layer["strides"], out_shape[:2])
        return saturate32(divide_round(np.sum(np.stack(parts).astype(np.int64), axis=0), len(parts))), {}
    if kind in ("flatten", "reshape"):
        return x.reshape((x.shape[0],) + out_shape), {}
    if kind == "dropout":
        if not train or layer["rate"] == 0:
            return x, {}
        key = derive_key(state["seed"], K.RANDOM_TAG_DROPOUT, index, int(state["step"]))
        keep = random_words(key, x.shape).astype(np.int64) >= float_to_fixed(layer["rate"], 32)
        scale = dropout_scale(layer["rate"])
        return np.where(keep, saturate32(round_shift(x.astype(np.int64) * scale, F_PARAM)), 0).astype(np.int32), \
            {"keep": keep}
    activation = "leaky_relu" if kind == "leaky_relu" else layer["activation"]
    y = activate(activation, x, layer["alpha"])
    return y, {"z": x, "y": y}


def dropout_scale(rate: float) -> int:
    """1 / (1 - rate) with PARAM_FRAC_BITS, round half up of the exact value."""
    numerator, denominator = float(rate).as_integer_ratio()
    # 1 / (1 - n/d) = d / (d - n)
    return (2 * denominator * (1 << F_PARAM) + (denominator - numerator)) // (2 * (denominator - numerator))


def backward_layer(model, index, params, cache, delta, *, need_input_delta, fused):
    layer, (in_shape, out_shape) = model["layers"][index], layer_shapes(model)[index]
    slices, kind = model["slices"], layer["type"]
    if kind in ("dense", "conv2d"):
        if not fused:
            delta = activation_gradient(layer["activation"], cache["z"], cache["y"], delta, layer["alpha"])
        qd, shift_d = normalise(delta, slices)
        (qx, shift_x), (qk, shift_k) = cache["qx"], cache["qk"]
        rows_x = qx.reshape(-1, qx.shape[-1])
        rows_d = qd.reshape(-1, qd.shape[-1])
        kernel_grad = contraction_to_fixed(contract(rows_x, slices, rows_d, ([0], [0])), shift_x + shift_d,
                                           F_ACT + F_GRAD, F_GRAD)
        grads = {"kernel": kernel_grad.reshape(params["kernel"].shape)}
        if "bias" in params:
            grads["bias"] = saturate32(np.sum(delta.astype(np.int64).reshape(-1, delta.shape[-1]), axis=0))
        if not need_input_delta:
            return None, grads
        total = contract(qd, slices, qk, ([qd.ndim - 1], [1]))
        delta_in = contraction_to_fixed(total, shift_d + shift_k, F_GRAD + F_PARAM, F_GRAD)
        if kind == "conv2d":
            delta_in = col2im(layer, in_shape, delta_in)
        return delta_in, grads
    if kind == "max_pool2d":
        # the delta goes to the first maximum of each window (row-major order)
        taken = np.zeros(cache["y"].shape, dtype=bool)
        parts = []
        for part in cache["parts"]:
            first = (part == cache["y"]) & ~taken
            taken |= first
            parts.append(np.where(first, delta, 0))
        return saturate32(unwindow(parts, layer["pool_size"], layer["strides"], in_shape[:2])), {}
    if kind == "avg_pool2d":
        count = layer["pool_size"][0] * layer["pool_size"][1]
        share = divide_round(delta, count)
        return saturate32(unwindow([share] * count, layer["pool_size"], layer["strides"], in_shape[:2])), {}
    if kind in ("flatten", "reshape"):
        return delta.reshape((delta.shape[0],) + in_shape), {}
    if kind == "dropout":
        if "keep" not in cache:
            return delta, {}
        scaled = saturate32(round_shift(delta.astype(np.int64) * dropout_scale(layer["rate"]), F_PARAM))
        return np.where(cache["keep"], scaled, 0).astype(np.int32), {}
    if fused:
        return delta, {}
    activation = "leaky_relu" if kind == "leaky_relu" else layer["activation"]
    return activation_gradient(activation, cache["z"], cache["y"], delta, layer["alpha"]), {}


def col2im(layer, in_shape, patch_deltas):
    (kh, kw), c = layer["kernel_size"], in_shape[2]
    pad_h, pad_w = conv_padding(layer, in_shape)
    parts = [patch_deltas[..., k * c:(k + 1) * c] for k in range(kh * kw)]
    padded_hw = (in_shape[0] + sum(pad_h), in_shape[1] + sum(pad_w))
    total = unwindow(parts, (kh, kw), layer["strides"], padded_hw)
    return saturate32(total[:, pad_h[0]:pad_h[0] + in_shape[0], pad_w[0]:pad_w[0] + in_shape[1], :])


# ---------------------------------------------------------------------------
# Losses: delta (F28) of the mean loss w.r.t. the output (or the logits when
# softmax/sigmoid is fused with the cross-entropy), and the metrics
# ---------------------------------------------------------------------------
def loss_and_delta(kind: str, out, targets):
    batch = out.shape[0]
    if kind in ("softmax_cross_entropy", "categorical_cross_entropy"):
        p, t, total = softmax(out)
        log_total = natural_log(total, F_PROB)
        if kind == "softmax_cross_entropy":
            onehot = np.zeros(p.shape, np.int64)
            onehot[np.arange(batch), targets] = 1 << F_PROB
            losses = log_total[:, 0] - t[np.arange(batch), targets]
            truth = targets
        else:
            onehot = targets.astype(np.int64) << (F_PROB - F_ACT)
            losses = round_shift(np.sum(targets.astype(np.int64) * (log_total - t), axis=-1), F_ACT)
            truth = np.argmax(targets, axis=-1)
        delta = saturate32(divide_round(p - onehot, batch << (F_PROB - F_GRAD)))
        correct = int(np.sum(np.argmax(out, axis=-1) == truth))
        return delta, {"loss_sum": int(np.sum(losses)), "correct": correct}
    width = math.prod(out.shape[1:])
    y = targets.astype(np.int64)
    if kind == "sigmoid_binary_cross_entropy":
        s = sigmoid(out)
        delta = saturate32(divide_round((s - y) << (F_GRAD - F_ACT), batch * width))
        element = -round_shift(y * natural_log(s, F_ACT) + ((1 << F_ACT) - y) * natural_log((1 << F_ACT) - s, F_ACT),
                               F_ACT)
        losses = divide_round(np.sum(element.reshape(batch, -1), axis=1), width)
        half = 1 << (F_ACT - 1)
        return delta, {"loss_sum": int(np.sum(losses)), "correct": int(np.sum((s >= half) == (y >= half)))}
    diff = out.astype(np.int64) - y  # mse: d/d out of mean((out - y)^2) = 2 (out - y) / (B * width)
    delta = saturate32(divide_round(diff << (F_GRAD - F_ACT + 1), batch * width))
    losses = divide_round(np.sum(round_shift(diff * diff, F_ACT).reshape(batch, -1), axis=1), width)
    return delta, {"loss_sum": int(np.sum(losses))}


# ---------------------------------------------------------------------------
# Optimizers (Keras semantics): gradients F28 -> update F24
# ---------------------------------------------------------------------------
def optimizer_init(config: dict, params: dict) -> dict:
    def zeros(dtype):
        return {k: {n: np.zeros(a.shape, dtype) for n, a in p.items()} for k, p in params.items()}
    if config["type"] == "adam":
        return {"m": zeros(np.int32), "v": zeros(np.int64)}
    return {"velocity": zeros(np.int32)} if config["momentum"] > 0 else {}


def adam_ratio(m, v, epsilon_squared: int) -> np.ndarray:
    """m / sqrt(v + eps^2) in F30 (m in F28, v in F48), through the 1/sqrt
    table: w = max(v + eps^2, 1) is cut to its top 11 or 12 bits by an even
    shift 2j, w >> 2j indexes RSQRT_TABLE (30 fractional bits), and
    m * 2**-28 * 2**24 * RSQRT / 2**(30 + j) * 2**30 = m * RSQRT / 2**(4 + j)."""
    w = np.maximum(v.astype(np.int64) + epsilon_squared, 1)
    bit_lengths = sum(((w >> k) > 0).astype(np.int64) for k in range(63))
    j = np.maximum(bit_lengths - 11, 0) // 2
    product = m.astype(np.int64) * np.asarray(K.RSQRT_TABLE, dtype=np.int64)[w >> (2 * j)]
    shift = 4 + j
    return (product + (np.int64(1) << (shift - 1))) >> shift


def optimizer_update(config: dict, grads: dict, opt: dict, step: int):
    lr = float_to_fixed(config["learning_rate"], F_HYPER)
    update = {k: {} for k in grads}
    new_opt = {name: {k: {} for k in grads} for name in opt}
    if config["type"] == "sgd":
        momentum = float_to_fixed(config["momentum"], F_HYPER)
        for k in grads:
            for n, g in grads[k].items():
                lr_g = round_shift(g.astype(np.int64) * lr, F_HYPER)
                if not opt:
                    update[k][n] = saturate32(round_shift(-lr_g, F_GRAD - F_PARAM))
                    continue
                velocity = saturate32(round_shift(opt["velocity"][k][n].astype(np.int64) * momentum, F_HYPER) - lr_g)
                new_opt["velocity"][k][n] = velocity
                moved = (round_shift(velocity.astype(np.int64) * momentum, F_HYPER) - lr_g) if config["nesterov"] \
                    else velocity
                update[k][n] = saturate32(round_shift(moved, F_GRAD - F_PARAM))
        return update, new_opt
    beta_1, beta_2 = float_to_fixed(config["beta_1"], F_HYPER), float_to_fixed(config["beta_2"], F_HYPER)
    epsilon_squared = float_to_fixed(config["epsilon"] ** 2, F_V)
    t = step + 1
    # lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), in [0, 1]
    root = math.isqrt((ONE - power_q30(beta_2, t)) << F_HYPER)
    lr_t = min(max(int(divide_round(lr * root, max(ONE - power_q30(beta_1, t), 1))), 0), ONE)
    for k in grads:
        for n, g in grads[k].items():
            g = g.astype(np.int64)
            m_old = opt["m"][k][n].astype(np.int64)
            m = saturate32(m_old + round_shift((g - m_old) * (ONE - beta_1), F_HYPER))
            v_old = opt["v"][k][n]
            v = np.maximum(v_old + multiply_q30(round_shift(g * g, 2 * F_GRAD - F_V) - v_old, ONE - beta_2), 0)
            ratio = np.clip(adam_ratio(m, v, epsilon_squared), -(1 << 32), 1 << 32)  # m / sqrt(v + eps^2), F30
            update[k][n] = saturate32(-round_shift(lr_t * ratio, 2 * F_HYPER - F_PARAM))
            new_opt["m"][k][n], new_opt["v"][k][n] = m, v
    return update, new_opt


# ---------------------------------------------------------------------------
# The iteration
# ---------------------------------------------------------------------------
FUSED = {"softmax_cross_entropy": "softmax", "categorical_cross_entropy": "softmax",
         "sigmoid_binary_cross_entropy": "sigmoid"}


def forward(model, params, x, *, train=False, state=None):
    caches = []
    for index in range(len(model["layers"])):
        x, cache = forward_layer(model, index, params.get(str(index), {}), x, train=train, state=state)
        caches.append(cache)
    return x, caches


def predict(model: dict, params: dict, x) -> np.ndarray:
    return forward(model, params, np.asarray(x, np.int32))[0]


def count_correct(model: dict, params: dict, x, y) -> int:
    """How many test examples the model gets right (the spec's `Evaluate`):
    the argmax of its outputs against the label (or one-hot target); with a
    sigmoid binary cross-entropy loss, each output at least one half against
    its target at least one half."""
    out, y = predict(model, params, x), np.asarray(y)
    if model["loss"]["type"] == "sigmoid_binary_cross_entropy":
        half = 1 << (F_ACT - 1)
        return int(np.sum((out >= half) == (y >= half)))
    truth = y if y.ndim == 1 else np.argmax(y, axis=-1)
    return int(np.sum(np.argmax(out, axis=-1) == truth))


def add(a: dict, b: dict) -> dict:
    """int32 addition with two's complement wrap-around (order-free)."""
    return {k: {n: np.asarray(a[k][n], np.int32) + np.asarray(b[k][n], np.int32) for n in a[k]} for k in a}


def iteration(model: dict, state: dict, batch: dict, peer_update_sum: dict):
    """(state, batch, summed peer updates) -> (new state, own update, metrics)."""
    with np.errstate(over="ignore"):
        merged = add(state["params"], peer_update_sum)
    out, caches = forward(model, merged, batch["x"], train=True, state=state)
    last = len(model["layers"]) - 1
    fused = FUSED.get(model["loss"]["type"]) == model["layers"][last].get("activation")
    delta, metrics = loss_and_delta(model["loss"]["type"], caches[last]["z"] if fused else out, batch["y"])
    first = min((i for i, layer in enumerate(model["layers"]) if layer["type"] in ("dense", "conv2d")), default=0)
    grads = {}
    for index in range(last, -1, -1):
        delta, layer_grads = backward_layer(model, index, merged.get(str(index), {}), caches[index], delta,
                                            need_input_delta=index > first, fused=fused and index == last)
        if layer_grads:
            grads[str(index)] = layer_grads
        if delta is None:
            break
    step = int(state["step"])
    own, opt = optimizer_update(model["optimizer"], grads, state["opt"], step)
    new_state = {"opt": opt, "step": np.int32(step + 1), "seed": state["seed"]}
    if model["update"]["type"] == "threshold":
        threshold = float_to_fixed(model["update"]["threshold"], F_PARAM)
        pending = {k: {n: saturate32(state["residual"][k][n].astype(np.int64) + own[k][n]) for n in own[k]}
                   for k in own}
        own = {k: {n: np.where(np.abs(p) >= threshold, p, 0).astype(np.int32) for n, p in pending[k].items()}
               for k in pending}
        new_state["residual"] = {k: {n: pending[k][n] - own[k][n] for n in own[k]} for k in own}
    with np.errstate(over="ignore"):
        new_state["params"] = add(merged, own)
    metrics["count"] = int(batch["x"].shape[0])
    return new_state, own, metrics
