"""Shared hypothesis strategies and helpers of the property suite.

- byte mutations (`mutated`): what a faulty or hostile peer does to a valid
  encoding: flip a bit, truncate, append, insert, overwrite a run;
- signature malleation (`high_s`): the other, high-S, encoding of a valid
  ECDSA signature (valid ECDSA, invalid in BWS);
- extreme integers of each precision the canonical arithmetic uses
  (`extreme_ints`, `int_arrays`), weighted towards the values where
  saturation, rounding and overflow bugs live;
- named integer tensors (`integer_tensors`, `tensor_bundles`) of every
  committable dtype, for the tensor codec and the roots;
- `describe_state_difference`: a structural diff of two spec `State`s, printed
  when the node and the spec disagree on a state root.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import strategies as st

from bws.spec import containers as C
from bws.spec.constants import TENSOR_DTYPE_CODES
from bws.spec.crypto import CURVE_ORDER
from bws.spec.encoding import encode, get_fields, is_map_type

# ---------------------------------------------------------------------------
# Bytes
# ---------------------------------------------------------------------------
MUTATIONS = ("flip", "truncate", "extend", "insert", "overwrite")


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """`data` changed by one hostile edit (never returned unchanged)."""
    data = bytearray(data)
    operation = draw(st.sampled_from(MUTATIONS))
    if operation == "flip" and data:
        index = draw(st.integers(0, len(data) - 1))
        data[index] ^= 1 << draw(st.integers(0, 7))
    elif operation == "truncate" and data:
        del data[draw(st.integers(0, len(data) - 1)):]
    elif operation == "overwrite" and data:
        start = draw(st.integers(0, len(data) - 1))
        replacement = draw(st.binary(min_size=1, max_size=8))
        before = bytes(data[start:start + len(replacement)])
        data[start:start + len(replacement)] = replacement
        if bytes(data[start:start + len(replacement)]) == before:
            data.append(0)
    elif operation == "insert":
        index = draw(st.integers(0, len(data)))
        data[index:index] = draw(st.binary(min_size=1, max_size=8))
    else:  # extend (also the fallback for an empty input)
        data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


def high_s(signature: bytes) -> bytes:
    """(r, n - s): the malleated twin of a low-S signature r ‖ s."""
    s = int.from_bytes(signature[32:], "big")
    return signature[:32] + (CURVE_ORDER - s).to_bytes(32, "big")


def flip_bit(data: bytes, index: int = 0) -> bytes:
    """`data` with the lowest bit of byte `index` flipped."""
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1:]


def with_proof_signature(block: C.Block, which: str, signature: bytes) -> C.Block:
    """`block` with the signature of its proof's `which` ("message" or "commitment") replaced."""
    proof = block.proofs[0]
    signed = dataclasses.replace(getattr(proof, which), signature=signature)
    return dataclasses.replace(block, proofs=[dataclasses.replace(proof, **{which: signed})])


# ---------------------------------------------------------------------------
# Integers at the edges of each precision
# ---------------------------------------------------------------------------
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def extreme_ints(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers in [low, high], mostly at or next to the bounds, zero, ±1 and
    powers of two (where shifts and rounding change behaviour)."""
    special = {low, high, low + 1, high - 1, 0, 1, -1}
    bits = max(abs(low), abs(high)).bit_length()
    for b in range(bits + 1):
        special.update({2**b, 2**b - 1, 2**b + 1, -(2**b), -(2**b) + 1, -(2**b) - 1})
    special = sorted(v for v in special if low <= v <= high)
    return st.one_of(st.sampled_from(special), st.integers(low, high))


def int_arrays(shape, low: int, high: int, dtype=np.int64) -> st.SearchStrategy[np.ndarray]:
    """Arrays of `shape` filled from `extreme_ints`, sometimes all one value
    (all zeros, all saturated), which is where normalisation shifts go to the edge."""
    size = int(np.prod(shape))
    values = extreme_ints(low, high)
    varied = st.lists(values, min_size=size, max_size=size)
    constant = values.map(lambda v: [v] * size)
    return st.one_of(varied, constant).map(lambda xs: np.array(xs, dtype=dtype).reshape(shape))


MAX_DRAWN_ELEMENTS = 1024


@st.composite
def integer_tensors(draw, max_dims: int = 3) -> np.ndarray:
    """An array of any committable dtype, up to `max_dims` dimensions of 0..5 and at most
    MAX_DRAWN_ELEMENTS elements (hypothesis draws lists of a few thousand at most), values over
    the dtype's range."""
    dtype = np.dtype(draw(st.sampled_from(sorted(TENSOR_DTYPE_CODES))))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=max_dims).filter(
        lambda dims: int(np.prod(dims)) <= MAX_DRAWN_ELEMENTS)))
    info = np.iinfo(dtype)
    size = int(np.prod(shape))
    values = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=size, max_size=size))
    return np.array(values, dtype=dtype).reshape(shape)


tensor_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/_", min_size=1, max_size=24)


def tensor_bundles(names: st.SearchStrategy[str] = tensor_names) -> st.SearchStrategy[dict]:
    """Flat {name: integer tensor} bundles of up to 6 tensors."""
    return st.dictionaries(names, integer_tensors(), max_size=6)


# ---------------------------------------------------------------------------
# State diff
# ---------------------------------------------------------------------------
def describe_state_difference(a: C.State, b: C.State, labels=("node", "spec")) -> str:
    """Field by field: scalars that differ, and for maps the keys only one side
    has and the entries that differ. Empty when the states are equal."""
    lines = []
    for name, typ in get_fields(C.State):
        left, right = getattr(a, name), getattr(b, name)
        if is_map_type(typ):
            for key in sorted(set(left) | set(right), key=lambda k: encode(k, typ.KEY)):
                shown = _short(encode(key, typ.KEY))
                if key not in right:
                    lines.append(f"{name}[{shown}]: only in {labels[0]}: {_describe(left[key])}")
                elif key not in left:
                    lines.append(f"{name}[{shown}]: only in {labels[1]}: {_describe(right[key])}")
                elif left[key] != right[key]:
                    lines.append(f"{name}[{shown}]: {labels[0]} {_describe(left[key])} != {labels[1]} "
                                 f"{_describe(right[key])}")
        elif left != right:
            lines.append(f"{name}: {labels[0]} {_describe(left)} != {labels[1]} {_describe(right)}")
    return "\n".join(lines)


def _short(data: bytes) -> str:
    return data.hex() if len(data) <= 12 else data.hex()[:16] + "…"


def _describe(value) -> str:
    if dataclasses.is_dataclass(value):
        fields = ", ".join(f"{f.name}={_describe(getattr(value, f.name))}" for f in dataclasses.fields(value)
                           if not isinstance(getattr(value, f.name), (list, bytes)) or f.name != "task_definition")
        return f"{type(value).__name__}({fields})"
    if isinstance(value, (bytes, bytearray)):
        return _short(bytes(value))
    if isinstance(value, list):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    return repr(value)
