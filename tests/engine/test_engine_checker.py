"""The jaxpr checker: the whole iteration passes; a float op slipped in fails
with the primitive, its dtypes and where it came from."""
import jax.numpy as jnp
import numpy as np
import pytest

from bws.engine import ModelSpec, init_state, make_iteration, parse_model_shorthand, sum_updates
from bws.engine.checker import CanonicalityError, check_function, check_iteration

CNN_WITH_EVERYTHING = {
    "input_shape": [8, 8, 1],
    "layers": [{"type": "conv2d", "filters": 2, "kernel_size": 3, "padding": "same", "activation": "tanh"},
               {"type": "max_pool2d"}, {"type": "dropout", "rate": 0.1},
               {"type": "avg_pool2d", "pool_size": 2}, {"type": "flatten"},
               {"type": "dense", "units": 4, "activation": "sigmoid"}, {"type": "dense", "units": 3}],
    "loss": {"type": "mse"}, "optimizer": {"type": "sgd", "momentum": 0.9}}


@pytest.mark.parametrize("model", [parse_model_shorthand("mlp:10-8-3"), CNN_WITH_EVERYTHING])
def test_whole_iteration_is_canonical(model):
    assert check_iteration(model) > 100


def test_float_op_slipped_into_the_iteration_is_caught():
    spec = ModelSpec.from_dict(parse_model_shorthand("mlp:10-8-3"))
    iteration = make_iteration(spec, jit=False)

    def tampered(state, batch, peers):
        new_state, update, metrics = iteration(state, batch, peers)
        scale = jnp.exp(jnp.float32(0.5))  # a transcendental in float: not canonical
        update = dict(update, **{"0": {k: (v * scale).astype(jnp.int32) for k, v in update["0"].items()}})
        return new_state, update, metrics

    batch = {"x": np.zeros((2, 10), np.int32), "y": np.zeros((2,), np.int32)}
    with pytest.raises(CanonicalityError) as error:
        check_function(tampered, init_state(spec, 0), batch, sum_updates([], spec))
    message = str(error.value)
    assert "exp" in message and "float32" in message and "test_engine_checker.py" in message


def test_float_data_movement_is_caught_by_dtype():
    with pytest.raises(CanonicalityError, match="float32"):
        check_function(lambda x: (x.astype(jnp.float32) + 1).astype(jnp.int32), np.zeros(3, np.int32))


def test_float_inside_a_loop_body_is_found():
    import jax

    def body(i, carry):
        return carry + jnp.sqrt(jnp.float32(i)).astype(jnp.int32)

    with pytest.raises(CanonicalityError, match=r"float32.*body"):
        check_function(lambda x: jax.lax.fori_loop(0, 3, body, x), np.zeros(3, np.int32))


def test_int8_dot_over_an_unpadded_size_is_caught():
    import jax

    def unpadded(a, b):
        return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)

    with pytest.raises(CanonicalityError, match="contracts over 10 elements, not a multiple of 16"):
        check_function(unpadded, np.zeros((4, 10), np.int8), np.zeros((10, 3), np.int8))


def _two_operand_reduce(combine, inits):
    import jax

    return lambda x: jax.lax.reduce((x, x), tuple(jnp.asarray(v, jnp.int32) for v in inits), combine, (0,))


def test_multi_operand_reduce_of_order_free_operations_passes():
    both = _two_operand_reduce(lambda a, b: (jnp.maximum(a[0], b[0]), jnp.minimum(b[1], a[1])),
                               (-2**31, 2**31 - 1))
    assert check_function(both, np.arange(5, dtype=np.int32)) >= 1


@pytest.mark.parametrize("combine, inits, message", [
    (lambda a, b: (a[0] - b[0], a[1] + b[1]), (0, 0), "output 0 is not max/min/add"),          # not associative
    (lambda a, b: (jnp.maximum(a[0], b[1]), a[1] + b[1]), (-2**31, 0), "output 0 is not"),   # mixes operands
    (lambda a, b: (jnp.maximum(a[0], b[0]), a[1] + b[1]), (-2**31, 5), "starts from 5, not its identity 0"),
    (lambda a, b: (jnp.maximum(a[0], b[0]), a[1] * b[1]), (-2**31, 1), "output 1 is not"),
])
def test_order_dependent_reduce_is_caught(combine, inits, message):
    with pytest.raises(CanonicalityError, match=message):
        check_function(_two_operand_reduce(combine, inits), np.arange(5, dtype=np.int32))


@pytest.mark.parametrize("size", [1, 2, 3, 5, 9, 10, 17, 33])
def test_contractions_of_sizes_xla_gpu_miscomputed_are_exact(size):
    """The sizes XLA:GPU's int8 dot got wrong (twice the sum: 2, 3, 5, 9, 10) and some it got right,
    through the engine's padded contraction, against exact int64 products."""
    import jax

    from bws.engine import ops

    rng = np.random.default_rng(size)
    a = rng.integers(-2**20, 2**20, (6, size)).astype(np.int32)
    b = rng.integers(-2**20, 2**20, (5, size)).astype(np.int32)

    def product(a, b):
        (digits_a, shift_a), (digits_b, shift_b) = ops.split(a, 3), ops.split(b, 3)
        return ops.contract(digits_a, digits_b, (((1,), (1,)), ((), ()))), shift_a, shift_b

    check_function(product, a, b)
    total, shift_a, shift_b = jax.jit(product)(a, b)
    exact = a.astype(np.int64) @ b.astype(np.int64).T
    approx = np.asarray(total).astype(np.float64) * 2.0 ** (int(shift_a) + int(shift_b))
    assert np.allclose(approx, exact, rtol=2.0**-12, atol=2.0 ** (int(shift_a) + int(shift_b) + 16))
