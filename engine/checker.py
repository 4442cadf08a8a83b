"""The mechanical check that a compiled iteration is canonical.

`check_function(fn, *args)` traces fn with jax.make_jaxpr, walks the jaxpr and
every sub-jaxpr (jit/pjit, custom_jvp/vjp, while, cond, scan, ...), and raises
`CanonicalityError` on the first primitive outside ALLOWED_PRIMITIVES or any
value of a non-integer dtype (inputs, outputs, intermediates), naming the
primitive, its dtypes and the source line it came from.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import jax
import numpy as np
from jax._src import source_info_util

from .model import EngineError
from .ops import CONTRACTION_MULTIPLE


class CanonicalityError(EngineError):
    """The traced computation contains a non-canonical primitive or dtype."""


# Integer-exact primitives: data movement, integer arithmetic and comparisons,
# integer reductions, the int8 dot, threefry. Every one of them has a single
# correct result for integer operands, whatever the backend or thread count.
ALLOWED_PRIMITIVES = frozenset({
    # structure
    "jit", "pjit", "closed_call", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr",
    "while", "cond", "scan",
    # data movement
    "broadcast_in_dim", "concatenate", "reshape", "squeeze", "expand_dims", "slice", "dynamic_slice",
    "dynamic_update_slice", "gather", "pad", "transpose", "rev", "select_n", "iota", "copy", "copy_p", "split",
    "convert_element_type", "stack", "sharding_constraint",
    # integer arithmetic and logic
    "add", "sub", "mul", "div", "rem", "neg", "abs", "sign", "max", "min", "clamp",
    "and", "or", "xor", "not", "shift_left", "shift_right_arithmetic", "shift_right_logical", "clz",
    "population_count",
    # comparisons
    "eq", "ne", "lt", "le", "gt", "ge",
    # integer reductions and the contraction
    "reduce_sum", "reduce_max", "reduce_min", "reduce_and", "reduce_or", "argmax", "argmin", "dot_general",
    "reduce",  # multi-operand; its body and inits are checked by _check_reduce
    # randomness
    "threefry2x32",
})
ALLOWED_DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint32", "uint64", "key<fry>"})


def _dtype_name(var) -> str | None:
    aval = getattr(var, "aval", None)
    dtype = getattr(aval, "dtype", None)
    return None if dtype is None else str(dtype)


def _sub_jaxprs(params: dict) -> Iterator[Any]:
    for value in params.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def _where(eqn) -> str:
    try:
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 - a missing location must not hide the finding
        return "unknown location"


def check_jaxpr(jaxpr) -> int:
    """Walk a (closed) jaxpr; returns the number of equations checked."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for var in list(jaxpr.invars) + list(jaxpr.outvars) + list(jaxpr.constvars):
        dtype = _dtype_name(var)
        if dtype is not None and dtype not in ALLOWED_DTYPES:
            raise CanonicalityError(f"non-integer value of dtype {dtype} at the boundary of a traced function")
    checked = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        dtypes = sorted({d for d in map(_dtype_name, list(eqn.invars) + list(eqn.outvars)) if d is not None})
        if name not in ALLOWED_PRIMITIVES:
            raise CanonicalityError(f"primitive {name} ({', '.join(dtypes)}) is not canonical; from {_where(eqn)}")
        bad = [d for d in dtypes if d not in ALLOWED_DTYPES]
        if bad:
            raise CanonicalityError(f"primitive {name} computes in {', '.join(bad)} (only integers are canonical); "
                                    f"from {_where(eqn)}")
        if name == "dot_general" and "int8" in dtypes:
            _check_int8_contraction(eqn)
        if name == "reduce":
            _check_reduce(eqn)
        checked += 1
        for sub in _sub_jaxprs(eqn.params):
            checked += check_jaxpr(sub)
    return checked


def _check_int8_contraction(eqn) -> None:
    """int8 dots must contract over a multiple of ops.CONTRACTION_MULTIPLE elements (XLA:GPU miscomputes
    some other sizes; see engine/ops.py)."""
    (axes, _), _ = eqn.params["dimension_numbers"]
    shape = eqn.invars[0].aval.shape
    size = math.prod(shape[axis] for axis in axes)
    if size % CONTRACTION_MULTIPLE:
        raise CanonicalityError(f"int8 dot_general contracts over {size} elements, not a multiple of "
                                f"{CONTRACTION_MULTIPLE} (XLA:GPU's int8 dot miscomputes such sizes); from {_where(eqn)}")


# A general (multi-operand) reduce is order-free when every output is one of
# these associative, commutative integer operations of its own accumulator and
# element, started from the operation's identity (XLA may start each partial
# reduction of a split from the init value).
_REDUCE_IDENTITIES = {
    "max": lambda info: info.min, "min": lambda info: info.max,
    "add": lambda info: 0, "or": lambda info: 0, "xor": lambda info: 0, "and": lambda info: -1,
}


def _check_reduce(eqn) -> None:
    body = eqn.params["jaxpr"].jaxpr
    count = len(body.outvars)
    accumulators, elements = body.invars[:count], body.invars[count:]
    producers = {id(e.outvars[0]): e for e in body.eqns if len(e.outvars) == 1}
    for k, (out, init) in enumerate(zip(body.outvars, eqn.invars[count:])):
        step = producers.get(id(out))
        operands = {id(v) for v in step.invars} if step is not None else set()
        if (step is None or step.primitive.name not in _REDUCE_IDENTITIES or len(step.invars) != 2
                or operands != {id(accumulators[k]), id(elements[k])}):
            raise CanonicalityError(f"reduce output {k} is not max/min/add/and/or/xor of its accumulator and "
                                    f"element (an order-dependent reduction); from {_where(eqn)}")
        op = step.primitive.name
        info = np.iinfo(init.aval.dtype)
        identity = _REDUCE_IDENTITIES[op](info)
        value = getattr(init, "val", None)
        if value is None or int(value) != identity:
            raise CanonicalityError(f"reduce output {k} ({op}) starts from {value if value is not None else 'a traced value'}, "
                                    f"not its identity {identity} (a split reduction would count it twice); "
                                    f"from {_where(eqn)}")


def check_function(fn, *args) -> int:
    """Trace fn(*args) and check it; returns the number of equations checked."""
    return check_jaxpr(jax.make_jaxpr(fn)(*args))


def check_iteration(spec, batch_size: int = 2) -> int:
    """Check the whole compiled iteration (forward, backward, optimizer,
    update) of a model on a batch of zeros."""
    from .iteration import init_state, make_iteration, sum_updates
    from .model import ModelSpec

    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec)
    state = init_state(spec, 0)
    batch = {"x": np.zeros((batch_size,) + tuple(spec.input_shape), np.int32),
             "y": np.zeros((batch_size,) + spec.label_shape(), np.int32)}
    return check_function(make_iteration(spec), state, batch, sum_updates([], spec))
