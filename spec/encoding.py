"""The canonical binary encoding of every protocol object.

A small SSZ-like codec, chosen so that every value has exactly one encoding:

| kind | encoding |
| --- | --- |
| `uintN` | N/8 bytes, little-endian |
| `boolean` | one byte, 0 or 1 |
| `ByteVector` (fixed length) | the bytes |
| `ByteList(max)` | u32le length, then the bytes |
| `List(elem, max)` | u32le count, then each element's encoding |
| `SortedSet(elem, max)` | as `List`; elements strictly increasing by encoding |
| `Map(key, value, max)` | u32le count, then key ‖ value, keys strictly increasing by encoding |
| `Union(A, B, ...)` | u8 selector (index of the option), then the option's encoding |
| `Container` | its fields' encodings concatenated in declaration order |

Decoding is strict: short input, trailing bytes, a length over its maximum, an
unknown union selector, an integer out of range, or a set/map out of order
(a second encoding of the same value) each raise `DecodeError` naming the
field. Threat stopped: *malleability* of anything hashed or signed — since
decode(encode(x)) == x and encode is injective, two byte strings never decode
to the same object, so an attacker cannot change a transaction's or block's
id without changing its meaning.
"""
import dataclasses
import functools
import typing

LENGTH_PREFIX_BYTES = 4  # u32le in front of every variable-length value


class DecodeError(ValueError):
    """Bytes that are not the canonical encoding of the expected type; the
    message names the field (a dotted path) and what was wrong."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path or '<root>'}: {problem}")
        self.path = path
        self.problem = problem


def _read(data: bytes, offset: int, size: int, path: str) -> bytes:
    if offset + size > len(data):
        raise DecodeError(path, f"input too short: need {size} bytes at offset {offset}, have {len(data) - offset}")
    return data[offset:offset + size]


def _read_length(data: bytes, offset: int, path: str, maximum: int) -> int:
    length = int.from_bytes(_read(data, offset, LENGTH_PREFIX_BYTES, path), "little")
    if length > maximum:
        raise DecodeError(path, f"length {length} exceeds the maximum {maximum}")
    return length


# ---------------------------------------------------------------------------
# Unsigned integers
# ---------------------------------------------------------------------------
class FixedWidthInt(int):
    """Integer of `BITS` bits, little-endian on the wire; two's complement when `SIGNED`."""
    BITS = 0
    SIGNED = False

    def __new__(cls, value: int = 0):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{cls.__name__} needs an int, got {type(value).__name__}")
        low, high = (-(1 << (cls.BITS - 1)), 1 << (cls.BITS - 1)) if cls.SIGNED else (0, 1 << cls.BITS)
        if not low <= value < high:
            raise ValueError(f"{value} is out of range for {cls.__name__}")
        return super().__new__(cls, value)

    @classmethod
    def coerce(cls, value):
        return cls(value)

    @classmethod
    def encode_value(cls, value) -> bytes:
        return int(cls(value)).to_bytes(cls.BITS // 8, "little", signed=cls.SIGNED)

    @classmethod
    def decode_from(cls, data: bytes, offset: int, path: str):
        size = cls.BITS // 8
        return cls(int.from_bytes(_read(data, offset, size, path), "little", signed=cls.SIGNED)), offset + size


class uint(FixedWidthInt):
    """Unsigned integer of `BITS` bits, little-endian on the wire."""


class uint8(uint):
    BITS = 8


class uint16(uint):
    BITS = 16


class uint32(uint):
    BITS = 32


class uint64(uint):
    BITS = 64


class uint256(uint):
    BITS = 256


class boolean(int):
    """True or False as one byte, 1 or 0; any other byte is not an encoding."""

    def __new__(cls, value=False):
        if value not in (0, 1) or not isinstance(value, int):
            raise ValueError(f"a boolean is 0 or 1, got {value!r}")
        return super().__new__(cls, int(value))

    def __repr__(self):
        return repr(bool(self))

    @classmethod
    def coerce(cls, value):
        return cls(value)

    @classmethod
    def encode_value(cls, value) -> bytes:
        return bytes([cls(value)])

    @classmethod
    def decode_from(cls, data: bytes, offset: int, path: str):
        return cls(_read(data, offset, 1, path)[0]), offset + 1


class int64(FixedWidthInt):
    """Signed 64-bit integer, two's complement little-endian (fixed-point metrics)."""
    BITS = 64
    SIGNED = True


# ---------------------------------------------------------------------------
# Bytes
# ---------------------------------------------------------------------------
class ByteVector(bytes):
    """Exactly `LENGTH` bytes."""
    LENGTH = 0

    def __new__(cls, value: bytes = None):
        value = bytes(cls.LENGTH) if value is None else value
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"{cls.__name__} needs bytes, got {type(value).__name__}")
        if len(value) != cls.LENGTH:
            raise ValueError(f"{cls.__name__} needs exactly {cls.LENGTH} bytes, got {len(value)}")
        return super().__new__(cls, value)

    @classmethod
    def coerce(cls, value):
        return cls(value)

    @classmethod
    def encode_value(cls, value) -> bytes:
        return bytes(cls(value))

    @classmethod
    def decode_from(cls, data: bytes, offset: int, path: str):
        return cls(_read(data, offset, cls.LENGTH, path)), offset + cls.LENGTH


class _ByteList(bytes):
    MAX = 0

    def __new__(cls, value: bytes = b""):
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"{cls.__name__} needs bytes, got {type(value).__name__}")
        if len(value) > cls.MAX:
            raise ValueError(f"{len(value)} bytes exceed the maximum {cls.MAX}")
        return super().__new__(cls, value)

    @classmethod
    def coerce(cls, value):
        return cls(value)

    @classmethod
    def encode_value(cls, value) -> bytes:
        value = cls(value)
        return len(value).to_bytes(LENGTH_PREFIX_BYTES, "little") + bytes(value)

    @classmethod
    def decode_from(cls, data: bytes, offset: int, path: str):
        length = _read_length(data, offset, path, cls.MAX)
        offset += LENGTH_PREFIX_BYTES
        return cls(_read(data, offset, length, path)), offset + length


def ByteList(maximum: int) -> type:
    """Variable-length bytes of at most `maximum` bytes."""
    return type(f"ByteList[{maximum}]", (_ByteList,), {"MAX": maximum})


# ---------------------------------------------------------------------------
# Lists, sets, maps, unions
# ---------------------------------------------------------------------------
class _List(tuple):
    ELEM: type = None
    MAX = 0
    SORTED = False

    def __new__(cls, values=()):
        items = tuple(cls.ELEM.coerce(v) for v in values)
        if len(items) > cls.MAX:
            raise ValueError(f"{len(items)} elements exceed the maximum {cls.MAX}")
        if cls.SORTED:
            keys = [cls.ELEM.encode_value(v) for v in items]
            if any(a >= b for a, b in zip(keys, keys[1:])):
                raise ValueError("set elements must be strictly increasing (sorted, unique)")
        return super().__new__(cls, items)

    @classmethod
    def coerce(cls, value):
        return cls(value)

    @classmethod
    def encode_value(cls, value) -> bytes:
        value = cls(value)
        return len(value).to_bytes(LENGTH_PREFIX_BYTES, "little") + b"".join(cls.ELEM.encode_value(v) for v in value)

    @classmethod
    def decode_from(cls, data: bytes, offset: int, path: str):
        count = _read_length(data, offset, path, cls.MAX)
        offset += LENGTH_PREFIX_BYTES
        items, previous = [], None
        for index in range(count):
            start = offset
            item, offset = decode_from(cls.ELEM, data, offset, f"{path}[{index}]")
            if cls.SORTED and previous is not None and data[start:offset] <= previous:
                raise DecodeError(f"{path}[{index}]", "set elements must be strictly increasing (sorted, unique)")
            previous = data[start:offset]
            items.append(item)
        return cls(items), offset


def List(elem: type, maximum: int) -> type:
    """A sequence of at most `maximum` values of type `elem`."""
    return type(f"List[{elem.__name__}, {maximum}]", (_List,), {"ELEM": elem, "MAX": maximum})


def SortedSet(elem: type, maximum: int) -> type:
    """A set of at most `maximum` values, held and encoded in increasing order of encoding."""
    return type(f"SortedSet[{elem.__name__}, {maximum}]", (_List,), {"ELEM": elem, "MAX": maximum, "SORTED": True})


class _Map(dict):
    KEY: type = None
    VALUE: type = None
    MAX = 0

    def __init__(self, entries=()):
        super().__init__()
        for key, value in dict(entries).items():
            self[self.KEY.coerce(key)] = self.VALUE.coerce(value)
        if len(self) > self.MAX:
            raise ValueError(f"{len(self)} entries exceed the maximum {self.MAX}")

    @classmethod
    def coerce(cls, value):
        return cls(value)

    @classmethod
    def encode_value(cls, value) -> bytes:
        value = cls(value)
        entries = sorted((cls.KEY.encode_value(k), cls.VALUE.encode_value(v)) for k, v in value.items())
        return len(entries).to_bytes(LENGTH_PREFIX_BYTES, "little") + b"".join(k + v for k, v in entries)

    @classmethod
    def decode_from(cls, data: bytes, offset: int, path: str):
        count = _read_length(data, offset, path, cls.MAX)
        offset += LENGTH_PREFIX_BYTES
        result, previous = {}, None
        for index in range(count):
            start = offset
            key, offset = decode_from(cls.KEY, data, offset, f"{path}[{index}].key")
            if previous is not None and data[start:offset] <= previous:
                raise DecodeError(f"{path}[{index}].key", "map keys must be strictly increasing (sorted, unique)")
            previous = data[start:offset]
            result[key], offset = decode_from(cls.VALUE, data, offset, f"{path}[{index}].value")
        return cls(result), offset


def Map(key: type, value: type, maximum: int) -> type:
    """At most `maximum` entries, encoded in increasing order of the key's encoding."""
    return type(f"Map[{key.__name__}, {value.__name__}, {maximum}]", (_Map,), {"KEY": key, "VALUE": value, "MAX": maximum})


def is_map_type(typ: type) -> bool:
    """Whether `typ` is a `Map(...)` type."""
    return isinstance(typ, type) and issubclass(typ, _Map)


class _Union:
    OPTIONS: tuple = ()

    @classmethod
    def coerce(cls, value):
        if type(value) not in cls.OPTIONS:
            raise TypeError(f"{type(value).__name__} is not one of {', '.join(o.__name__ for o in cls.OPTIONS)}")
        return value

    @classmethod
    def encode_value(cls, value) -> bytes:
        return bytes([cls.OPTIONS.index(type(cls.coerce(value)))]) + encode(value)

    @classmethod
    def decode_from(cls, data: bytes, offset: int, path: str):
        selector = _read(data, offset, 1, path)[0]
        if selector >= len(cls.OPTIONS):
            raise DecodeError(path, f"unknown selector {selector} (expected < {len(cls.OPTIONS)})")
        option = cls.OPTIONS[selector]
        return decode_from(option, data, offset + 1, f"{path}<{option.__name__}>")


def Union(*options: type) -> type:
    """Exactly one of `options`, tagged by its index."""
    return type(f"Union[{', '.join(o.__name__ for o in options)}]", (_Union,), {"OPTIONS": options})


# ---------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------
class Container:
    """Base of every protocol object: subclasses are `@dataclass(frozen=True)`
    whose annotations are codec types; the encoding is the fields' encodings
    concatenated in declaration order. Values are checked (and lists turned
    into tuples) on construction, so an invalid object cannot exist."""

    def __post_init__(self):
        for name, typ in get_fields(type(self)):
            try:
                object.__setattr__(self, name, typ.coerce(getattr(self, name)))
            except (TypeError, ValueError) as error:
                raise type(error)(f"{type(self).__name__}.{name}: {error}") from None

    @classmethod
    def coerce(cls, value):
        if not isinstance(value, cls):
            raise TypeError(f"expected {cls.__name__}, got {type(value).__name__}")
        return value

    @classmethod
    def encode_value(cls, value) -> bytes:
        return b"".join(typ.encode_value(getattr(value, name)) for name, typ in get_fields(cls))

    @classmethod
    def decode_from(cls, data: bytes, offset: int, path: str):
        values = {}
        for name, typ in get_fields(cls):
            values[name], offset = decode_from(typ, data, offset, f"{path}.{name}" if path else name)
        return cls(**values), offset


@functools.cache  # a class's fields never change, and resolving its type hints is slow
def get_fields(container: type) -> tuple[tuple[str, type], ...]:
    """(name, codec type) of each field of `container`, in declaration order."""
    hints = typing.get_type_hints(container)
    return tuple((field.name, hints[field.name]) for field in dataclasses.fields(container))


def decode_from(typ: type, data: bytes, offset: int, path: str):
    """Decode one value of `typ` at `offset`; returns (value, offset after it)."""
    try:
        return typ.decode_from(data, offset, path)
    except DecodeError:
        raise
    except (TypeError, ValueError) as error:
        raise DecodeError(path, str(error)) from None


def encode(value, typ: type = None) -> bytes:
    """The canonical encoding of `value` (a container, or a value of codec type `typ`)."""
    return (typ or type(value)).encode_value(value)


def decode(data: bytes, typ: type):
    """The value of type `typ` whose canonical encoding is exactly `data`."""
    if not isinstance(data, (bytes, bytearray)):
        raise DecodeError("", f"expected bytes, got {type(data).__name__}")
    value, offset = decode_from(typ, bytes(data), 0, "")
    if offset != len(data):
        raise DecodeError("", f"{len(data) - offset} trailing bytes after the {typ.__name__}")
    return value
