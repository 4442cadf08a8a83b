"""Integer fixed-point primitives of the canonical arithmetic (JAX).

Every function maps integer arrays to integer arrays; every result is exactly
defined by the inputs, so XLA may fuse, reorder or split the work at will.
Rounding is one rule everywhere: round half up, i.e. floor(x / 2**s + 1/2),
computed as (x + 2**(s-1)) >> s with an arithmetic shift. Saturation to int32
is symmetric (+-(2**31 - 1)).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bws.spec import constants as K
from bws.spec.models import to_fixed  # noqa: F401 (one definition: the spec's)

I32, I64, I8, U32 = jnp.int32, jnp.int64, jnp.int8, jnp.uint32


def saturate32(x):
    """int64 (or int32) -> int32, clipped to +-(2**31 - 1)."""
    return jnp.clip(x.astype(I64), K.INT32_MIN, K.INT32_MAX).astype(I32)


def shift_round(x, s: int):
    """round_half_up(x / 2**s) for a static s >= 0, in int64."""
    x = x.astype(I64)
    if s == 0:
        return x
    return (x + (1 << (s - 1))) >> s


def shift_round_dynamic(x, s):
    """x * 2**-s for a traced int32 scalar s: right shift with round half up
    when s > 0, left shift when s <= 0. int64 in, int64 out; the caller keeps
    left shifts within range (they clip to +-(2**62 >> -s) first).

    Both directions in one branch-free expression (one pass, no select):
    (clip(x, +-limit) << left + half) >> right with right = clip(s, 0, 62),
    left = clip(-s, 0, 62), half = 2**(right-1) (0 when right = 0), and no
    clip (the whole int64 range) when right > 0."""
    x = x.astype(I64)
    s = s.astype(I64)
    right, left = jnp.clip(s, 0, 62), jnp.clip(-s, 0, 62)
    limit = jnp.asarray(2**62, I64) >> left
    low = jnp.where(right > 0, jnp.iinfo(I64).min, -limit)
    high = jnp.where(right > 0, jnp.iinfo(I64).max, limit)
    half = (jnp.asarray(1, I64) << right) >> 1
    return ((jnp.clip(x, low, high) << left) + half) >> right


def div_round(n, d):
    """round_half_up(n / d) for d > 0: floor((2n + d) / 2d), int64."""
    n = n.astype(I64)
    d = jnp.asarray(d, I64)
    return jnp.floor_divide(2 * n + d, 2 * d)


def bit_length(x):
    """Number of bits of a non-negative int64 (0 for 0)."""
    return 64 - jax.lax.clz(x.astype(I64))


def isqrt(n):
    """floor(sqrt(n)) of an int64 array with 0 <= n < 2**62, bit by bit (exact)."""
    n = n.astype(I64)
    root = jnp.zeros_like(n)
    for bit in reversed(range(31)):
        candidate = root + (1 << bit)
        root = jnp.where(candidate * candidate <= n, candidate, root)
    return root


def mul_q30(x, c):
    """round_half_up(x * c / 2**30) for |x| < 2**61 and 0 <= c <= 2**30, exact
    without 128-bit products: x = hi * 2**30 + lo with 0 <= lo < 2**30."""
    x = x.astype(I64)
    c = jnp.asarray(c, I64)
    hi = x >> 30
    lo = x & ((1 << 30) - 1)
    return hi * c + ((lo * c + (1 << 29)) >> 30)


def interpolate(table, x, lo: int):
    """Linear interpolation of a table sampled every 2**-6 from `lo`, at x with
    ACT_FRAC_BITS; x is clipped to the table's range. int64 out, the table's scale."""
    table = jnp.asarray(table, I64)
    size = table.shape[0]
    offset = x.astype(I64) - (lo << K.ACT_FRAC_BITS)
    offset = jnp.clip(offset, 0, ((size - 1) << K.TABLE_INDEX_SHIFT) - 1)
    index = offset >> K.TABLE_INDEX_SHIFT
    remainder = offset & ((1 << K.TABLE_INDEX_SHIFT) - 1)
    low, high = table[index], table[index + 1]
    return low + shift_round((high - low) * remainder, K.TABLE_INDEX_SHIFT)


def ln_fixed(p, frac_bits: int):
    """ln(p / 2**frac_bits) with ACT_FRAC_BITS for an int64 p >= 1 (loss reporting):
    p = 2**n * (1 + k/256 + ...), ln = (n - frac_bits) * ln2 + LOG_TABLE[k]."""
    p = jnp.maximum(p.astype(I64), 1)
    n = bit_length(p) - 1
    mantissa = shift_round_dynamic(p, n - 8)  # in [256, 512]
    k = jnp.clip(mantissa - 256, 0, 256)
    return (n - frac_bits) * K.LN2_FIXED + jnp.asarray(K.LOG_TABLE, I64)[k]


def power_q30(base: int, exponent):
    """base**exponent with base given with 30 fractional bits (0 <= base <= 2**30),
    exponent a traced int32 scalar >= 0; square-and-multiply over 31 bits, each
    product rounded half up."""
    result = jnp.asarray(1 << 30, I64)
    square = jnp.asarray(base, I64)
    exponent = exponent.astype(I64)
    for bit in range(31):
        result = jnp.where((exponent >> bit) & 1, shift_round(result * square, 30), result)
        square = shift_round(square * square, 30)
    return result
