"""The canonical arithmetic, in NumPy, written for reading.

This is the definition the JAX engine (bws.engine) is held to, bit for bit. It
shares nothing with the engine but the numbers in spec/constants.py.

Conventions
-----------
* A fixed-point value is an integer q standing for q / 2**F; F depends on the
  kind of tensor (constants.*_FRAC_BITS).
* Rounding is one rule everywhere: round half up, floor(x / 2**s + 1/2).
* Saturation to int32 is symmetric: +-(2**31 - 1).
* Shift counts computed at run time are clipped to [-62, 62].
* Intermediate products are exact (int64, or Python integers where int64
  could overflow).
"""
from __future__ import annotations

import numpy as np

from .. import constants as K

INT32_LIMIT = K.INT32_MAX


def saturate32(x) -> np.ndarray:
    return np.clip(np.asarray(x, dtype=np.int64), -INT32_LIMIT, INT32_LIMIT).astype(np.int32)


def round_shift(x, s: int) -> np.ndarray:
    """round_half_up(x / 2**s) for s >= 0."""
    x = np.asarray(x, dtype=np.int64)
    return x if s == 0 else (x + (1 << (s - 1))) >> s


def scale_by_power_of_two(x, s: int) -> np.ndarray:
    """x * 2**-s, s an integer (computed at run time): for s > 0 round half up
    (s clipped to 62); for s <= 0 a left shift by min(-s, 62) of x clipped to
    +-(2**62 >> -s)."""
    x = np.asarray(x, dtype=np.int64)
    if s > 0:
        return round_shift(x, min(s, 62))
    left = min(-s, 62)
    limit = (1 << 62) >> left
    return np.clip(x, -limit, limit) << left


def divide_round(n, d) -> np.ndarray:
    """round_half_up(n / d) for d > 0."""
    n = np.asarray(n, dtype=np.int64)
    d = np.asarray(d, dtype=np.int64)
    return np.floor_divide(2 * n + d, 2 * d)


def bit_length(n: int) -> int:
    return int(n).bit_length()


def integer_sqrt(n) -> np.ndarray:
    """floor(sqrt(n)) for 0 <= n < 2**62: a float estimate, then exact
    integer corrections (the estimate is within 1 of the answer)."""
    n = np.asarray(n, dtype=np.int64)
    root = np.floor(np.sqrt(n.astype(np.float64))).astype(np.int64)
    for _ in range(2):
        root = np.where(root * root > n, root - 1, root)
        root = np.where((root + 1) * (root + 1) <= n, root + 1, root)
    return root


def multiply_q30(x, c: int) -> np.ndarray:
    """round_half_up(x * c / 2**30), computed with Python integers."""
    exact = np.asarray(x, dtype=np.int64).astype(object) * int(c)
    return np.asarray((exact + (1 << 29)) >> 30, dtype=np.int64).reshape(np.shape(x))


def power_q30(base: int, exponent: int) -> int:
    """base**exponent, base with 30 fractional bits, by square-and-multiply over
    the 31 low bits of the exponent, each product rounded half up."""
    result, square = 1 << 30, base
    for bit in range(31):
        if (exponent >> bit) & 1:
            result = (result * square + (1 << 29)) >> 30
        square = (square * square + (1 << 29)) >> 30
    return result


def float_to_fixed(value: float, frac_bits: int) -> int:
    """A hyper-parameter float -> integer: round half up of the exact binary
    value times 2**frac_bits."""
    numerator, denominator = float(value).as_integer_ratio()
    return (2 * numerator * (1 << frac_bits) + denominator) // (2 * denominator)


def table_lookup(table, x, first_sample: int) -> np.ndarray:
    """Linear interpolation in a table sampled every 2**-6 from `first_sample`,
    at x (ACT_FRAC_BITS), x clipped to the table's range."""
    table = np.asarray(table, dtype=np.int64)
    shift = K.TABLE_INDEX_SHIFT
    offset = np.asarray(x, dtype=np.int64) - (first_sample << K.ACT_FRAC_BITS)
    offset = np.clip(offset, 0, ((len(table) - 1) << shift) - 1)
    index, remainder = offset >> shift, offset & ((1 << shift) - 1)
    return table[index] + round_shift((table[index + 1] - table[index]) * remainder, shift)


def natural_log(p, frac_bits: int) -> np.ndarray:
    """ln(p / 2**frac_bits) in ACT_FRAC_BITS, for the reported loss only:
    p = 2**n * m with m in [1, 2), m taken to 8 bits, LOG_TABLE[m]."""
    p = np.maximum(np.asarray(p, dtype=np.int64), 1)
    out = np.empty(p.shape, dtype=np.int64)
    for index, value in np.ndenumerate(p):
        n = int(value).bit_length() - 1
        mantissa = int(scale_by_power_of_two(np.int64(value), n - 8))
        k = min(max(mantissa - 256, 0), 256)
        out[index] = (n - frac_bits) * K.LN2_FIXED + K.LOG_TABLE[k]
    return out


# ---------------------------------------------------------------------------
# Contractions
# ---------------------------------------------------------------------------
DIGIT = K.SLICE_DIGIT_BITS


def normalise(x, slices: int):
    """Block normalisation of a whole tensor: shift = bit_length(max|x|) - 7*slices,
    q = x * 2**-shift (round half up) clipped to +-(2**(7*slices) - 1).
    Returns (q, shift) with x ~= q * 2**shift."""
    x = np.asarray(x, dtype=np.int64)
    shift = bit_length(np.max(np.abs(x))) - DIGIT * slices
    bound = (1 << (DIGIT * slices)) - 1
    return np.clip(scale_by_power_of_two(x, shift), -bound, bound), shift


def digits(q, slices: int) -> list[np.ndarray]:
    """q = sum_i d_i * 2**(7i): the low digits in [0, 127], the top one signed."""
    low = [(q >> (DIGIT * i)) & 127 for i in range(slices - 1)]
    return low + [q >> (DIGIT * (slices - 1))]


def exact_tensordot(a, b, axes) -> np.ndarray:
    """Integer tensordot. It runs in float64, which is exact here: every
    product of two digits is below 2**14 and every partial sum below 2**53,
    so each float operation is exact whatever order BLAS adds in."""
    return np.rint(np.tensordot(a.astype(np.float64), b.astype(np.float64), axes)).astype(np.int64)


def contract(qa, slices: int, qb, axes) -> np.ndarray:
    """sum over digit pairs (i, j) with i + j >= slices - 1 of
    tensordot(a_i, b_j) * 2**(7(i+j)): the product of the two normalised
    operands, without the lowest-order cross terms."""
    da, db = digits(qa, slices), digits(qb, slices)
    total = 0
    for i in range(slices):
        for j in range(slices):
            if i + j >= slices - 1:
                total = total + (exact_tensordot(da[i], db[j], axes) << (DIGIT * (i + j)))
    return np.asarray(total, dtype=np.int64)


def contraction_to_fixed(total, shift: int, frac_in: int, frac_out: int) -> np.ndarray:
    """A contraction result worth total * 2**shift with frac_in fractional bits,
    as int32 with frac_out fractional bits."""
    return saturate32(scale_by_power_of_two(total, (frac_in - frac_out) - shift))


# ---------------------------------------------------------------------------
# Threefry-2x32 (20 rounds) and the random streams built on it
# ---------------------------------------------------------------------------
def threefry2x32(key: tuple[int, int], x0, x1):
    """The Threefry-2x32 block function on arrays of counter pairs."""
    mask = np.uint64(0xFFFFFFFF)
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    ks = [k0, k1, k0 ^ k1 ^ np.uint64(K.THREEFRY_PARITY)]
    x = [np.asarray(x0, dtype=np.uint64) + ks[0] & mask, np.asarray(x1, dtype=np.uint64) + ks[1] & mask]

    def rotate(v, r):
        return ((v << np.uint64(r)) | (v >> np.uint64(32 - r))) & mask

    for block in range(5):
        for r in K.THREEFRY_ROTATIONS[block % 2]:
            x[0] = (x[0] + x[1]) & mask
            x[1] = rotate(x[1], r) ^ x[0]
        x[0] = (x[0] + ks[(block + 1) % 3]) & mask
        x[1] = (x[1] + ks[(block + 2) % 3] + np.uint64(block + 1)) & mask
    return x[0].astype(np.uint32), x[1].astype(np.uint32)


def derive_key(seed_key, tag: int, a: int, b: int) -> tuple[int, int]:
    """key(tag, a, b) = threefry2x32(seed_key, (tag << 24 | a, b))."""
    y0, y1 = threefry2x32((int(seed_key[0]), int(seed_key[1])), np.uint32((tag << 24) | a), np.uint32(b))
    return int(y0), int(y1)


def random_words(key, shape) -> np.ndarray:
    """word i (C order) = first word of threefry2x32(key, (0, i))."""
    count = int(np.prod(shape, dtype=np.int64))
    counter = np.arange(count, dtype=np.uint64)
    first, _ = threefry2x32(key, np.zeros(count, np.uint64), counter)
    return first.reshape(shape)
