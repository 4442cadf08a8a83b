"""Canonical layers, losses and optimizers (JAX): forward and hand-written
backward of every op, in integers only.

Formats (spec/constants.py): activations ACT_FRAC_BITS (F16) int32, parameters
PARAM_FRAC_BITS (F24) int32, deltas and gradients GRAD_FRAC_BITS (F28) int32.
Contractions (dense, conv) run as int8 x int8 -> int32 dots over the slices of
block-normalised operands; see `split` and `contract`.
"""
from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
from jax.extend.random import threefry2x32_p

from bws.spec import constants as K

from .fixed import (I8, I32, I64, U32, bit_length, div_round, interpolate, isqrt, ln_fixed, mul_q30, power_q30,
                    saturate32, shift_round, shift_round_dynamic, to_fixed)

F_ACT, F_PARAM, F_GRAD, F_HYPER, F_PROB, F_V = (K.ACT_FRAC_BITS, K.PARAM_FRAC_BITS, K.GRAD_FRAC_BITS,
                                                K.HYPER_FRAC_BITS, K.PROB_FRAC_BITS, K.ADAM_V_FRAC_BITS)
DIGIT = K.SLICE_DIGIT_BITS


# ---------------------------------------------------------------------------
# Contractions
# ---------------------------------------------------------------------------
def split(x, slices: int):
    """Block-normalise x and cut it into int8 digits.

    shift = bit_length(max |x|) - 7*slices; q = round_half_up(x / 2**shift)
    clipped to +-(2**(7*slices) - 1) (a left shift when shift <= 0, exact);
    digits low to high: d_i = (q >> 7i) & 127 for i < slices-1, the top digit
    q >> 7(slices-1) signed. Returns (digits, shift) with x ~= q * 2**shift.

    x is int32 and all the element-wise work stays in int32: with M = max |x|
    <= 2**31, shift <= 32 - 7 = 25, so a right shift is in range; a left
    shift happens only when bit_length(M) <= 7*slices, by 7*slices -
    bit_length(M), so |x| << left < 2**(7*slices) <= 2**21 (the reference's
    clip before a left shift never bites). Round half up without the
    overflow of x + 2**(s-1): (x >> s) + bit s-1 of x.
    """
    if x.dtype != I32:
        raise TypeError(f"split: x must be int32, got {x.dtype}")
    largest, smallest = _max_and_min(x)
    # max |x| in int64: |-2**31| does not fit int32 (wrapped sums of updates can hold it)
    magnitude = jnp.maximum(largest.astype(I64), -smallest.astype(I64))
    shift = (bit_length(magnitude) - DIGIT * slices).astype(I32)
    right, left = jnp.maximum(shift, 0), jnp.maximum(-shift, 0)
    round_bit = (x >> jnp.maximum(right - 1, 0)) & (right > 0).astype(I32)
    bound = (1 << (DIGIT * slices)) - 1
    q = jnp.clip(((x << left) >> right) + round_bit, -bound, bound)
    digits = [((q >> (DIGIT * i)) & 127).astype(I8) for i in range(slices - 1)]
    digits.append((q >> (DIGIT * (slices - 1))).astype(I8))
    return digits, shift


def _max_and_min(x):
    """(max x, min x) of an int32 array in one pass: a two-operand reduce,
    which XLA:CPU runs in a fraction of the time of one jnp.max (measured:
    70 us against 150 us for jnp.max and 270 us for max and min of a 784x512
    array). Order-free: max and min are associative and commutative, and the
    inits are their identities (engine/checker.py checks both)."""
    limits = jnp.iinfo(I32)
    return jax.lax.reduce((x, x), (jnp.asarray(limits.min, I32), jnp.asarray(limits.max, I32)),
                          lambda a, b: (jnp.maximum(a[0], b[0]), jnp.minimum(a[1], b[1])), tuple(range(x.ndim)))


CONTRACTION_MULTIPLE = 16
"""Every int8 dot contracts over a multiple of this many elements: contracted
axes are zero-padded, which adds nothing to an exact integer sum. Measured on
an H100 with jax/jaxlib 0.11.2: XLA:GPU's int8 x int8 -> int32 dot returns
exactly twice the true sum for contraction sizes 2, 3, 5, 9 and 10 (1, 4, 8,
16, 17, 32, 33, 64 and 784 were exact), and padded to a multiple of 16 every
size measured was exact. The jaxpr checker enforces the rule."""


def _pad_contracted(digits, axes):
    """Zero-pad `axes` of each digit array to a multiple of CONTRACTION_MULTIPLE."""
    widths = [(0, 0)] * digits[0].ndim
    for axis in axes:
        widths[axis] = (0, -digits[0].shape[axis] % CONTRACTION_MULTIPLE)
    if not any(high for _, high in widths):
        return digits
    return [jnp.pad(d, widths) for d in digits]


def contract(digits_a, digits_b, dimension_numbers):
    """Exact int64 sum over the kept digit pairs, i + j >= slices - 1, of
    dot(a_i, b_j) << 7(i+j) (the dropped pairs weigh at most 2**-(7*(slices-1))
    of the top pair); each dot is int8 x int8 with int32 accumulation, over
    contracted axes padded to a multiple of CONTRACTION_MULTIPLE.

    The pairs of one weight i + j are one dot over the digits concatenated
    along the contracted axis (a_i | a_i' ...) . (b_j ; b_j' ...) when that
    cannot overflow: every digit product is at most 128 * 128 = 2**14, so
    pairs * size <= MAX_CONTRACTION_SIZE keeps the int32 sum below 2**31.
    Otherwise (or with several contracted axes) each pair is its own dot."""
    slices = len(digits_a)
    (axes_a, axes_b), _ = dimension_numbers
    digits_a, digits_b = _pad_contracted(digits_a, axes_a), _pad_contracted(digits_b, axes_b)
    size = math.prod(digits_a[0].shape[axis] for axis in axes_a)
    total = None
    for weight in range(slices - 1, 2 * slices - 1):
        pairs = [(i, weight - i) for i in range(slices) if 0 <= weight - i < slices]
        if len(pairs) > 1 and len(axes_a) == 1 and len(pairs) * size <= K.MAX_CONTRACTION_SIZE:
            operands = [(jnp.concatenate([digits_a[i] for i, _ in pairs], axis=axes_a[0]),
                         jnp.concatenate([digits_b[j] for _, j in pairs], axis=axes_b[0]))]
        else:
            operands = [(digits_a[i], digits_b[j]) for i, j in pairs]
        for a, b in operands:
            part = jax.lax.dot_general(a, b, dimension_numbers, preferred_element_type=I32)
            part = part.astype(I64) << (DIGIT * weight)
            total = part if total is None else total + part
    return total


def _row_major_transpose(d):
    """d[N, P] -> d.T as a materialised row-major array. XLA:CPU's fast int8
    dot wants the contracted axis of the left operand minor; a plain transpose
    is folded into the dot (and falls off the fast path), the 3-D round trip
    is not."""
    rows, cols = d.shape
    return jnp.transpose(d.reshape(rows, cols, 1), (1, 2, 0)).reshape(cols, rows)


def contract_rows(digits_a, digits_b, *, transpose_in_loop: bool = False):
    """Like `contract` for a[N, P] and b[N, Q] over the row axis N -> [P, Q].
    N may exceed MAX_CONTRACTION_SIZE (batch x pixels): rows are cut into
    chunks whose int32 partial sums cannot overflow, summed in int64 (the
    exact result does not depend on the chunking).

    `transpose_in_loop` transposes the digits of `a` inside a loop over them.
    A loop's operands are materialised, so the transposing copy reads int8
    digits. Without it XLA:CPU fuses a's whole producer chain into the copy
    (for a dense layer's input: the previous layer's partial products,
    recombination, rescale, activation and split) and runs it unvectorised in
    transposed order: 6.7 ms instead of 0.5 ms per digit for a 1024x512
    activation. Convolution patches come from pads of already materialised
    digits, where the loop only adds copies, so they go without it."""
    rows = digits_a[0].shape[0]
    chunk = K.MAX_CONTRACTION_SIZE // len(digits_a)  # small enough for `contract` to join each weight's pairs
    total = None
    for start in range(0, rows, chunk):
        rows_a = [d[start:start + chunk] for d in digits_a]
        if transpose_in_loop:
            part_a = list(jax.lax.map(_row_major_transpose, jnp.stack(rows_a)))
        else:
            part_a = [_row_major_transpose(d) for d in rows_a]
        part_b = [d[start:start + chunk] for d in digits_b]
        part = contract(part_a, part_b, (((1,), (0,)), ((), ())))
        total = part if total is None else total + part
    return total


def rescale(total, shift, frac_in: int, frac_out: int):
    """A contraction result worth total * 2**shift with frac_in fractional bits
    -> int32 with frac_out fractional bits (round half up, saturating)."""
    return saturate32(shift_round_dynamic(total, (frac_in - frac_out) - shift))


# ---------------------------------------------------------------------------
# Activations (pre-activation z and outputs y in F16; deltas in F28)
# ---------------------------------------------------------------------------
def _sigmoid(z):
    return interpolate(K.SIGMOID_TABLE, z, K.TABLE_SIGMOID_MIN)


def activation_forward(kind: str, z, alpha: float):
    """y = f(z). softmax here is the output probabilities (for predict); in
    training it is fused with the cross-entropy."""
    if kind == "linear":
        return z
    if kind == "relu":
        return jnp.maximum(z, 0)
    if kind == "leaky_relu":
        return jnp.where(z > 0, z, saturate32(shift_round(z.astype(I64) * to_fixed(alpha, F_HYPER), F_HYPER)))
    if kind == "sigmoid":
        return saturate32(_sigmoid(z))
    if kind == "tanh":
        return saturate32(2 * _sigmoid(2 * z.astype(I64)) - (1 << F_ACT))
    if kind == "softmax":
        return saturate32(shift_round(softmax_probabilities(z)[0], F_PROB - F_ACT))
    raise ValueError(kind)


def activation_backward(kind: str, z, y, delta, alpha: float):
    """dL/dz from dL/dy = delta."""
    if kind == "linear":
        return delta
    if kind == "relu":
        return jnp.where(z > 0, delta, 0)
    if kind == "leaky_relu":
        return jnp.where(z > 0, delta, saturate32(shift_round(delta.astype(I64) * to_fixed(alpha, F_HYPER), F_HYPER)))
    y = y.astype(I64)
    if kind == "sigmoid":
        derivative = shift_round(y * ((1 << F_ACT) - y), F_ACT)
    elif kind == "tanh":
        derivative = (1 << F_ACT) - shift_round(y * y, F_ACT)
    else:
        raise ValueError(f"no backward for activation {kind} outside a fused loss")
    return saturate32(shift_round(delta.astype(I64) * derivative, F_ACT))


# ---------------------------------------------------------------------------
# Randomness: threefry-2x32
# ---------------------------------------------------------------------------
def derive_key(seed_key, tag: int, a, b):
    """key(tag, a, b) = threefry2x32(seed_key, (tag << 24 | a, b)), a < 2**24."""
    x0 = jnp.asarray((tag << 24), U32) | jnp.asarray(a, U32)
    k0, k1 = threefry2x32_p.bind(seed_key[0], seed_key[1], x0, jnp.asarray(b, U32))
    return jnp.stack([k0, k1])


def random_bits(key, shape):
    """bits[i] = first word of threefry2x32(key, (0, i)) over the C-order index i."""
    count = math.prod(shape)
    counter = jax.lax.iota(U32, count)
    word, _ = threefry2x32_p.bind(key[0], key[1], jnp.zeros_like(counter), counter)
    return word.reshape(shape)


def uniform_init(seed_key, layer_index: int, slot: int, shape, initializer: str):
    """Keras-style initializer as integers (PARAM_FRAC_BITS): the limit L is
    floor(sqrt(scale * 2**48 / fan)) and a value is ((bits * (2L+1)) >> 32) - L."""
    if initializer == "zeros":
        return jnp.zeros(shape, I32)
    if initializer == "ones":
        return jnp.full(shape, 1 << F_PARAM, I32)
    limit = init_limit(shape, initializer)
    bits = random_bits(derive_key(seed_key, K.RANDOM_TAG_INIT, layer_index, slot), shape).astype(I64)
    return ((bits * (2 * limit + 1)) >> 32).astype(I32) - limit


def init_limit(shape, initializer: str) -> int:
    if len(shape) == 1:
        fan_in = fan_out = shape[0]
    else:
        receptive = math.prod(shape[:-2])
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    numerator, fan = {"glorot_uniform": (6, fan_in + fan_out), "he_uniform": (6, fan_in),
                      "lecun_uniform": (3, fan_in)}[initializer]
    return math.isqrt(numerator * (1 << (2 * F_PARAM)) // fan)


def dropout_scale(rate: float) -> int:
    """1 / (1 - rate) with PARAM_FRAC_BITS (rate <= 0.95 keeps products in int64)."""
    exact = 1 / (1 - Fraction(rate))
    return int((exact * (1 << F_PARAM) + Fraction(1, 2)) // 1)


def dropout_keep(seed_key, layer_index: int, step, shape, rate: float):
    """Keep an element when its random word >= round_half_up(rate * 2**32)."""
    threshold = to_fixed(rate, 32)
    bits = random_bits(derive_key(seed_key, K.RANDOM_TAG_DROPOUT, layer_index, step), shape)
    return bits.astype(I64) >= threshold


# ---------------------------------------------------------------------------
# Layers: forward returns (y, cache); backward(cache, delta) -> (delta_in, grads)
# ---------------------------------------------------------------------------
def _same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def _windows(x, window, strides, out_hw):
    """Every (dy, dx) offset of a window, as strided slices of x[B, H, W, C]."""
    (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
    return [x[:, dy:dy + (ho - 1) * sh + 1:sh, dx:dx + (wo - 1) * sw + 1:sw, :]
            for dy in range(kh) for dx in range(kw)]


def _scatter_windows(parts, window, strides, in_hw):
    """Inverse of `_windows`: place each part back at its offset (zero
    interior padding) and add them up in int64."""
    (_, kw), (sh, sw), (h, w) = window, strides, in_hw
    total = None
    for index, part in enumerate(parts):
        dy, dx = divmod(index, kw)
        ho, wo = part.shape[1], part.shape[2]
        config = [(0, 0, 0), (dy, h - dy - (ho - 1) * sh - 1, sh - 1), (dx, w - dx - (wo - 1) * sw - 1, sw - 1), (0, 0, 0)]
        placed = jax.lax.pad(part.astype(I64), jnp.asarray(0, I64), config)
        total = placed if total is None else total + placed
    return total


def _place_windows(parts, window, strides, in_hw):
    """`_scatter_windows`, cheaper where the windows tile the input without
    overlap (strides = window): every input position then gets at most one
    part, so the parts are interleaved (a stack and a transpose) instead of
    padded and added; the values are the same. Keeps the parts' dtype."""
    (kh, kw), (h, w) = window, in_hw
    if tuple(strides) != (kh, kw):
        return _scatter_windows(parts, window, strides, in_hw)
    batch, ho, wo, channels = parts[0].shape
    grid = jnp.stack(parts).reshape(kh, kw, batch, ho, wo, channels)
    placed = jnp.transpose(grid, (2, 3, 0, 4, 1, 5)).reshape(batch, ho * kh, wo * kw, channels)
    return jnp.pad(placed, [(0, 0), (0, h - ho * kh), (0, w - wo * kw), (0, 0)])


def _affine(params, x_digits, slices):
    """z = x @ kernel + bias over the last axis of x (given as its digits), F16."""
    digits_x, shift_x = x_digits
    digits_k, shift_k = split(params["kernel"], slices)
    total = contract(digits_x, digits_k, (((digits_x[0].ndim - 1,), (0,)), ((), ())))
    z = rescale(total, shift_x + shift_k, F_ACT + F_PARAM, F_ACT)
    if "bias" in params:
        z = saturate32(z.astype(I64) + shift_round(params["bias"], F_PARAM - F_ACT))
    return z, (digits_k, shift_k)


def layer_forward(shape_info, params, x, slices, *, train=False, seed_key=None, step=None):
    config, kind = shape_info.config, shape_info.config["type"]
    if kind in ("dense", "conv2d"):
        if kind == "dense":
            x_digits = split(x, slices)
            flat = params
        else:
            x_digits = _im2col_digits(shape_info, x, slices)
            kh, kw = config["kernel_size"]
            flat = dict(params, kernel=params["kernel"].reshape(kh * kw * shape_info.in_shape[2], config["filters"]))
        z, k_digits = _affine(flat, x_digits, slices)
        y = activation_forward(config["activation"], z, config["alpha"])
        return y, {"z": z, "y": y, "x_digits": x_digits, "k_digits": k_digits}
    if kind == "max_pool2d":
        windows = _windows(x, config["pool_size"], config["strides"], shape_info.out_shape[:2])
        y = windows[0]
        for w in windows[1:]:
            y = jnp.maximum(y, w)
        return y, {"windows": windows, "y": y}
    if kind == "avg_pool2d":
        windows = _windows(x, config["pool_size"], config["strides"], shape_info.out_shape[:2])
        total = sum(w.astype(I64) for w in windows)
        return saturate32(div_round(total, len(windows))), {}
    if kind in ("flatten", "reshape"):
        return x.reshape((x.shape[0],) + shape_info.out_shape), {}
    if kind == "dropout":
        if not train or config["rate"] == 0:
            return x, {}
        keep = dropout_keep(seed_key, shape_info.index, step, x.shape, config["rate"])
        y = jnp.where(keep, saturate32(shift_round(x.astype(I64) * dropout_scale(config["rate"]), F_PARAM)), 0)
        return y, {"keep": keep}
    if kind in ("activation", "leaky_relu"):
        activation = "leaky_relu" if kind == "leaky_relu" else config["activation"]
        y = activation_forward(activation, x, config["alpha"])
        return y, {"z": x, "y": y}
    raise ValueError(kind)


def _im2col_digits(shape_info, x, slices):
    """Split x once, then gather each digit's patches [B, Ho, Wo, kh*kw*C]
    in (dy, dx, c) order, matching kernel.reshape(kh*kw*C, filters)."""
    config = shape_info.config
    digits, shift = split(x, slices)
    (kh, kw), strides = config["kernel_size"], config["strides"]
    if config["padding"] == "same":
        h, w = shape_info.in_shape[:2]
        pad_h, pad_w = _same_padding(h, kh, strides[0]), _same_padding(w, kw, strides[1])
        digits = [jnp.pad(d, [(0, 0), pad_h, pad_w, (0, 0)]) for d in digits]
    out_hw = shape_info.out_shape[:2]
    patches = [jnp.concatenate(_windows(d, (kh, kw), strides, out_hw), axis=-1) for d in digits]
    return patches, shift


def layer_backward(shape_info, params, cache, delta, slices, *, need_input_delta=True, fused_activation=False):
    """dL/dx and the parameter gradients (F28) from dL/dy = delta (F28)."""
    config, kind = shape_info.config, shape_info.config["type"]
    if kind in ("dense", "conv2d"):
        if not fused_activation:
            delta = activation_backward(config["activation"], cache["z"], cache["y"], delta, config["alpha"])
        digits_d, shift_d = split(delta, slices)
        (digits_x, shift_x), (digits_k, shift_k) = cache["x_digits"], cache["k_digits"]
        width = digits_x[0].shape[-1]
        rows_x = [d.reshape(-1, width) for d in digits_x]
        rows_d = [d.reshape(-1, delta.shape[-1]) for d in digits_d]
        kernel_grad = rescale(contract_rows(rows_x, rows_d, transpose_in_loop=kind == "dense"), shift_x + shift_d,
                              F_ACT + F_GRAD, F_GRAD)
        grads = {"kernel": kernel_grad.reshape(params["kernel"].shape)}
        if "bias" in params:
            grads["bias"] = saturate32(jnp.sum(delta.astype(I64), axis=tuple(range(delta.ndim - 1))))
        if not need_input_delta:
            return None, grads
        dimensions = (((delta.ndim - 1,), (1,)), ((), ()))
        if kind == "dense":
            return rescale(contract(digits_d, digits_k, dimensions), shift_d + shift_k, F_GRAD + F_PARAM, F_GRAD), grads
        # conv: one contraction per window offset (kernel rows k*C .. (k+1)*C-1), so each part's
        # rescale has one consumer and fuses into col2im's sum (the same values as cutting one
        # contraction over every row into parts, without materialising nine padded int64 parts)
        channels = shape_info.in_shape[2]
        parts = [rescale(contract(digits_d, [d[k * channels:(k + 1) * channels] for d in digits_k], dimensions),
                         shift_d + shift_k, F_GRAD + F_PARAM, F_GRAD)
                 for k in range(digits_k[0].shape[0] // channels)]
        return _col2im(shape_info, parts), grads
    if kind == "max_pool2d":
        taken = None
        parts = []
        for window in cache["windows"]:
            first = window == cache["y"]
            first = first if taken is None else first & ~taken
            taken = first if taken is None else taken | first
            parts.append(jnp.where(first, delta, 0))
        return saturate32(_place_windows(parts, config["pool_size"], config["strides"], shape_info.in_shape[:2])), {}
    if kind == "avg_pool2d":
        (ph, pw) = config["pool_size"]
        share = div_round(delta, ph * pw)
        parts = [share] * (ph * pw)
        return saturate32(_place_windows(parts, config["pool_size"], config["strides"], shape_info.in_shape[:2])), {}
    if kind in ("flatten", "reshape"):
        return delta.reshape((delta.shape[0],) + shape_info.in_shape), {}
    if kind == "dropout":
        if "keep" not in cache:
            return delta, {}
        scaled = saturate32(shift_round(delta.astype(I64) * dropout_scale(config["rate"]), F_PARAM))
        return jnp.where(cache["keep"], scaled, 0), {}
    if kind in ("activation", "leaky_relu"):
        if fused_activation:
            return delta, {}
        activation = "leaky_relu" if kind == "leaky_relu" else config["activation"]
        return activation_backward(activation, cache["z"], cache["y"], delta, config["alpha"]), {}
    raise ValueError(kind)


def _col2im(shape_info, parts):
    """Patch deltas, one [B, Ho, Wo, C] part per window offset (dy, dx) in
    row-major order -> input deltas [B, H, W, C] (F28)."""
    config = shape_info.config
    (kh, kw), strides = config["kernel_size"], config["strides"]
    h, w, _ = shape_info.in_shape
    pad_h, pad_w = ((0, 0), (0, 0))
    if config["padding"] == "same":
        pad_h, pad_w = _same_padding(h, kh, strides[0]), _same_padding(w, kw, strides[1])
    total = _scatter_windows(parts, (kh, kw), strides, (h + sum(pad_h), w + sum(pad_w)))
    return saturate32(total[:, pad_h[0]:pad_h[0] + h, pad_w[0]:pad_w[0] + w, :])


# ---------------------------------------------------------------------------
# Losses: (output, targets) -> (delta F28 w.r.t. the output or fused logits, metrics)
# ---------------------------------------------------------------------------
def softmax_probabilities(z):
    """p = e / sum(e) with e = EXP_TABLE(z - max z) (F30); also returns t = z - max
    and the row sums (for the loss)."""
    t = z.astype(I64) - jnp.max(z, axis=-1, keepdims=True).astype(I64)
    e = interpolate(K.EXP_TABLE, t, -K.TABLE_EXP_SPAN)
    total = jnp.sum(e, axis=-1, keepdims=True)
    return jnp.floor_divide(e << F_PROB, total), t, total


def loss_forward_backward(kind: str, out, targets):
    batch = out.shape[0]
    if kind in ("softmax_cross_entropy", "categorical_cross_entropy"):
        p, t, total = softmax_probabilities(out)
        log_total = ln_fixed(total, F_PROB)  # ln(sum e), F16
        if kind == "softmax_cross_entropy":
            onehot = jax.nn.one_hot(targets, out.shape[-1], dtype=I64) << F_PROB
            losses = log_total[:, 0] - jnp.take_along_axis(t, targets[:, None].astype(I32), axis=1)[:, 0]
            truth = targets
        else:
            onehot = targets.astype(I64) << (F_PROB - F_ACT)
            losses = shift_round(jnp.sum(targets.astype(I64) * (log_total - t), axis=-1), F_ACT)
            truth = jnp.argmax(targets, axis=-1)
        delta = saturate32(div_round(p - onehot, batch << (F_PROB - F_GRAD)))
        correct = jnp.sum(jnp.argmax(out, axis=-1) == truth).astype(I32)
        return delta, {"loss_sum": jnp.sum(losses), "correct": correct}
    width = math.prod(out.shape[1:])
    if kind == "sigmoid_binary_cross_entropy":
        s = _sigmoid(out)
        y = targets.astype(I64)
        delta = saturate32(div_round((s - y) << (F_GRAD - F_ACT), batch * width))
        ln_s, ln_not_s = ln_fixed(s, F_ACT), ln_fixed((1 << F_ACT) - s, F_ACT)
        element = -shift_round(y * ln_s + ((1 << F_ACT) - y) * ln_not_s, F_ACT)
        losses = div_round(jnp.sum(element.reshape(batch, -1), axis=1), width)
        correct = jnp.sum((s >= 1 << (F_ACT - 1)) == (y >= 1 << (F_ACT - 1))).astype(I32)
        return delta, {"loss_sum": jnp.sum(losses), "correct": correct}
    if kind == "mse":
        diff = out.astype(I64) - targets.astype(I64)
        delta = saturate32(div_round(diff << (F_GRAD - F_ACT + 1), batch * width))
        losses = div_round(jnp.sum(shift_round(diff * diff, F_ACT).reshape(batch, -1), axis=1), width)
        return delta, {"loss_sum": jnp.sum(losses)}
    raise ValueError(kind)


# ---------------------------------------------------------------------------
# Optimizers: (grads F28, opt state, step) -> (update F24, new opt state)
def adam_ratio(m, v, epsilon_squared: int):
    """m / sqrt(v + eps^2) with 30 fractional bits, m in F28, v in F48:
    w = max(v + eps^2, 1); j = max(0, ceil((bit_length(w) - 12) / 2));
    1/sqrt(w) = RSQRT_TABLE[w >> 2j] * 2**-(30 + j) (the index truncated), so
    ratio = round(m * RSQRT_TABLE[w >> 2j] / 2**(4 + j)).

    The index w >> 2j has 11 or 12 bits (w itself when bit_length(w) <= 11),
    so it is inside the 4096-entry table and the lookup skips bounds
    handling. The shift 4 + j is in [4, 30] (bit_length(w) <= 63), so the
    rounding is a plain right shift, and m * RSQRT_TABLE[...] < 2**31 * 2**30
    leaves room for the half added."""
    w = jnp.maximum(v + epsilon_squared, 1)
    half_shift = jnp.maximum(bit_length(w) - 11, 0) >> 1
    index = w >> (2 * half_shift)
    reciprocal = jnp.asarray(K.RSQRT_TABLE, I64).at[index].get(mode="promise_in_bounds")
    shift = 4 + half_shift
    return (m.astype(I64) * reciprocal + (jnp.asarray(1, I64) << (shift - 1))) >> shift


# ---------------------------------------------------------------------------
def optimizer_init(config: dict, params: dict) -> dict:
    zeros = lambda dtype: {name: {k: jnp.zeros(v.shape, dtype) for k, v in p.items()} for name, p in params.items()}
    if config["type"] == "adam":
        return {"m": zeros(I32), "v": zeros(I64)}
    if config["momentum"] > 0:
        return {"velocity": zeros(I32)}
    return {}


def optimizer_step(config: dict, grads: dict, opt: dict, step):
    """Keras semantics. SGD: v = momentum*v - lr*g; update = v (nesterov:
    momentum*v - lr*g); plain: -lr*g. Adam: lr_t = lr*sqrt(1-b2^t)/(1-b1^t),
    m += (1-b1)(g-m), v += (1-b2)(g^2-v), update = -lr_t*m/(sqrt(v)+eps)."""
    lr = to_fixed(config["learning_rate"], F_HYPER)
    leaves = [(name, key) for name in sorted(grads) for key in sorted(grads[name])]
    update = {name: {} for name in grads}
    new_opt = {k: {name: {} for name in grads} for k in opt}
    if config["type"] == "sgd":
        momentum = to_fixed(config["momentum"], F_HYPER)
        for name, key in leaves:
            step_term = shift_round(grads[name][key].astype(I64) * lr, F_HYPER)  # lr*g, F28
            if not opt:
                update[name][key] = saturate32(shift_round(-step_term, F_GRAD - F_PARAM))
                continue
            velocity = saturate32(shift_round(opt["velocity"][name][key].astype(I64) * momentum, F_HYPER) - step_term)
            new_opt["velocity"][name][key] = velocity
            if config["nesterov"]:
                moved = shift_round(velocity.astype(I64) * momentum, F_HYPER) - step_term
            else:
                moved = velocity
            update[name][key] = saturate32(shift_round(moved, F_GRAD - F_PARAM))
        return update, new_opt
    one = 1 << F_HYPER
    beta_1, beta_2 = to_fixed(config["beta_1"], F_HYPER), to_fixed(config["beta_2"], F_HYPER)
    for name, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
        if not 0 <= beta < one:  # ModelSpec refuses these; a direct caller gets the reason, not an XLA error
            raise ValueError(f"adam {name}={config[name]!r} must be in [0, 1) and below 1 - 2**-{F_HYPER + 1} "
                             "(it rounds to 1 in fixed point)")
    epsilon_squared = to_fixed(config["epsilon"] ** 2, F_V)
    t = step.astype(I32) + 1
    bias_1, bias_2 = power_q30(beta_1, t), power_q30(beta_2, t)
    lr_t = div_round(lr * isqrt((one - bias_2) << F_HYPER), jnp.maximum(one - bias_1, 1))
    lr_t = jnp.clip(lr_t, 0, one)
    # Adam is element-wise; each tensor is its own fused loop (concatenating
    # them into one vector first cost more in copies than the loop itself).
    for name, key in leaves:
        g, m_old, v_old = grads[name][key].astype(I64), opt["m"][name][key].astype(I64), opt["v"][name][key]
        m = saturate32(m_old + shift_round((g - m_old) * (one - beta_1), F_HYPER))
        g_squared = shift_round(g * g, 2 * F_GRAD - F_V)
        v = jnp.maximum(v_old + mul_q30(g_squared - v_old, one - beta_2), 0)
        ratio = jnp.clip(adam_ratio(m, v, epsilon_squared), -(1 << 32), 1 << 32)  # m / sqrt(v + eps^2), F30
        update[name][key] = saturate32(-shift_round(lr_t * ratio, 2 * F_HYPER - F_PARAM))
        new_opt["m"][name][key], new_opt["v"][name][key] = m, v
    return update, new_opt
