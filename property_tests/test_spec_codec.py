"""Hypothesis: every spec container round-trips, and decoding arbitrary or
mutated bytes either gives a value whose encoding is exactly those bytes or
raises DecodeError, never anything else."""
import dataclasses
import inspect

from hypothesis import given, strategies as st

from bws.spec import containers as C
from bws.spec.encoding import (
    ByteVector, Container, DecodeError, _ByteList, _List, _Map, _Union, boolean, decode, encode, get_fields, int64,
    uint,
)

CONTAINERS = [obj for _, obj in inspect.getmembers(C, inspect.isclass)
              if issubclass(obj, Container) and obj is not Container and dataclasses.is_dataclass(obj)]
SMALL = 3  # elements per list/map in generated values: enough to exercise the codec, small enough to be fast


def strategy_for(typ: type) -> st.SearchStrategy:
    if issubclass(typ, uint):
        return st.integers(0, 2**typ.BITS - 1).map(typ)
    if typ is int64:
        return st.integers(-(2**63), 2**63 - 1)
    if typ is boolean:
        return st.booleans()
    if issubclass(typ, ByteVector):
        return st.binary(min_size=typ.LENGTH, max_size=typ.LENGTH)
    if issubclass(typ, _ByteList):
        return st.binary(max_size=min(typ.MAX, 40))
    if issubclass(typ, _List):
        elements = st.lists(strategy_for(typ.ELEM), max_size=min(typ.MAX, SMALL))
        if typ.SORTED:
            elements = elements.map(lambda xs: sorted({typ.ELEM.encode_value(x): x for x in xs}.items()))
            elements = elements.map(lambda pairs: [x for _, x in pairs])
        return elements
    if issubclass(typ, _Map):
        return st.dictionaries(strategy_for(typ.KEY), strategy_for(typ.VALUE), max_size=SMALL)
    if issubclass(typ, _Union):
        return st.one_of([strategy_for(option) for option in typ.OPTIONS])
    if issubclass(typ, Container):
        return st.builds(typ, **{name: st.deferred(lambda t=t: strategy_for(t)) for name, t in get_fields(typ)})
    raise TypeError(f"no strategy for {typ}")


@st.composite
def container_values(draw):
    cls = draw(st.sampled_from(CONTAINERS))
    return cls, draw(strategy_for(cls))


@given(container_values())
def test_round_trip(case):
    cls, value = case
    data = encode(value)
    assert decode(data, cls) == value
    assert encode(decode(data, cls)) == data


@given(container_values(), st.data())
def test_mutated_bytes_decode_canonically_or_raise_decode_error(case, data):
    cls, value = case
    encoded = bytearray(encode(value))
    operation = data.draw(st.sampled_from(["flip", "truncate", "extend", "insert"]))
    if operation == "flip" and encoded:
        index = data.draw(st.integers(0, len(encoded) - 1))
        encoded[index] ^= 1 << data.draw(st.integers(0, 7))
    elif operation == "truncate":
        del encoded[data.draw(st.integers(0, len(encoded))):]
    elif operation == "extend":
        encoded += data.draw(st.binary(min_size=1, max_size=8))
    else:
        index = data.draw(st.integers(0, len(encoded)))
        encoded[index:index] = data.draw(st.binary(min_size=1, max_size=4))
    try:
        decoded = decode(bytes(encoded), cls)
    except DecodeError as error:
        assert error.path is not None
        return
    assert encode(decoded) == bytes(encoded), "a second encoding of one value was accepted"


@given(st.sampled_from(CONTAINERS), st.binary(max_size=300))
def test_random_bytes_decode_canonically_or_raise_decode_error(cls, data):
    try:
        decoded = decode(data, cls)
    except DecodeError:
        return
    assert encode(decoded) == data
