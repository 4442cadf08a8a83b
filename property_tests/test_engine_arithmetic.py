"""Hypothesis: the engine's integer primitives against the NumPy reference and
against exact Python integer arithmetic."""
import math

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from bws.engine import fixed, ops
from bws.spec import constants as K
from bws.spec.reference import arithmetic as ref

int32s = st.integers(-(2**31 - 1), 2**31 - 1)
small_int64s = st.integers(-(2**60), 2**60)


def round_half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


@given(st.lists(small_int64s, min_size=8, max_size=8), st.integers(-70, 70))
def test_power_of_two_scaling(values, shift):
    engine = np.asarray(fixed.shift_round_dynamic(jnp.asarray(values, jnp.int64), jnp.asarray(shift, jnp.int32)))
    assert np.array_equal(engine, ref.scale_by_power_of_two(np.asarray(values, np.int64), shift))
    if 0 < shift <= 62:
        assert engine.tolist() == [round_half_up(v, 1 << shift) for v in values]
    if -20 <= shift <= 0 and all(abs(v) < 2**40 for v in values):
        assert engine.tolist() == [v << -shift for v in values]


@given(st.lists(small_int64s, min_size=8, max_size=8), st.integers(1, 2**31))
def test_division(values, d):
    engine = np.asarray(fixed.div_round(jnp.asarray(values, jnp.int64), d)).tolist()
    assert engine == [round_half_up(v, d) for v in values] == ref.divide_round(np.asarray(values), d).tolist()


@given(st.lists(st.integers(0, 2**62 - 1), min_size=8, max_size=8))
def test_isqrt(values):
    engine = np.asarray(fixed.isqrt(jnp.asarray(values, jnp.int64))).tolist()
    assert engine == [math.isqrt(v) for v in values] == ref.integer_sqrt(np.asarray(values)).tolist()


@given(st.lists(st.integers(-(2**60), 2**60), min_size=8, max_size=8), st.integers(0, 2**30))
def test_multiply_q30(values, c):
    engine = np.asarray(fixed.mul_q30(jnp.asarray(values, jnp.int64), c)).tolist()
    assert engine == [round_half_up(v * c, 1 << 30) for v in values] == ref.multiply_q30(np.asarray(values), c).tolist()


@given(st.integers(0, 2**30), st.integers(0, 2**31 - 1))
def test_power(base, exponent):
    assert int(fixed.power_q30(base, jnp.asarray(exponent, jnp.int32))) == ref.power_q30(base, exponent)


@given(st.lists(int32s, min_size=16, max_size=16))
def test_tables_and_log(values):
    x = np.asarray(values, np.int32)
    for table, lo in ((K.SIGMOID_TABLE, K.TABLE_SIGMOID_MIN), (K.EXP_TABLE, -K.TABLE_EXP_SPAN)):
        assert np.array_equal(np.asarray(fixed.interpolate(table, jnp.asarray(x), lo)), ref.table_lookup(table, x, lo))
    positive = np.abs(x.astype(np.int64)) + 1
    assert np.array_equal(np.asarray(fixed.ln_fixed(jnp.asarray(positive), 30)), ref.natural_log(positive, 30))


# each new shape compiles the eager ops again: fixed list sizes, and fewer examples where shapes vary
FEWER = settings(max_examples=max(10, settings.default.max_examples // 4))


@FEWER
@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=32, max_size=32), st.sampled_from([1, 2, 3]))
def test_split_digits_reconstruct_the_normalised_operand(values, slices):
    """Over the whole int32 range: -2**31 cannot come from saturation, but a
    wrapped sum of peer updates can put it in the merged parameters."""
    x = np.asarray(values, np.int32)
    digits, shift = ops.split(jnp.asarray(x), slices)
    q, ref_shift = ref.normalise(x, slices)
    assert int(shift) == ref_shift
    rebuilt = sum(np.asarray(d, np.int64) << (7 * i) for i, d in enumerate(digits))
    assert np.array_equal(rebuilt, q)
    assert all(np.asarray(d).dtype == np.int8 for d in digits)
    if np.any(x):
        assert (1 << (7 * slices - 1)) <= np.abs(q).max() < (1 << (7 * slices))
        # the normalised value is within half a unit of x / 2**shift
        assert np.all(np.abs(q * 2.0**shift - x) <= max(2.0**shift, 1))


@FEWER
@given(st.sampled_from([1, 17, 40]), st.sampled_from([1, 2, 3]), st.integers(0, 2**32 - 1))
def test_contraction_matches_reference(k, slices, seed):
    rows, cols = 4, 5  # few distinct shapes: each one compiles the eager ops
    rng = np.random.default_rng(seed)
    a = (rng.integers(-(2**31 - 1), 2**31 - 1, (rows, k)) >> rng.integers(0, 31)).astype(np.int32)
    b = (rng.integers(-(2**31 - 1), 2**31 - 1, (k, cols)) >> rng.integers(0, 31)).astype(np.int32)
    digits_a, shift_a = ops.split(jnp.asarray(a), slices)
    digits_b, shift_b = ops.split(jnp.asarray(b), slices)
    engine = np.asarray(ops.contract(digits_a, digits_b, (((1,), (0,)), ((), ()))))
    qa, _ = ref.normalise(a, slices)
    qb, _ = ref.normalise(b, slices)
    assert np.array_equal(engine, ref.contract(qa, slices, qb, ([1], [0])))
    if slices == 1:  # nothing dropped: the exact product of the normalised operands
        assert np.array_equal(engine, qa @ qb)
