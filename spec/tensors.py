"""The canonical byte form of integer tensors and of named tensor bundles.

One codec for every place a tensor is written down: the tensor commitment
(`hashing.compute_tensor_leaf` hashes `encode_tensor`), the tensor bundles
that nodes exchange (model states, updates, revealed test splits) and the
tensor section of an iteration vector file. All integers little-endian:

    tensor  u8(dtype code) ‖ u8(ndim) ‖ u32le(dim) for each dim ‖ data (C order)
    name    u16le(len(name)) ‖ name (UTF-8)
    bundle  u32le(count) ‖ for each tensor, by strictly increasing name: name ‖ tensor

Dtype codes are `TENSOR_DTYPE_CODES` (integers only: two honest machines
may disagree on a float's bits). A committed tensor may have up to 255
dimensions (what its u8 can say); what is decoded from untrusted bytes is
bounded: a tensor has at most `MAX_TENSOR_DIMS` dimensions, a bundle at most
`MAX_BUNDLE_TENSORS` tensors, and `encode_tensor_bundle` writes no bundle
that would not decode.

Decoding is strict: short input, trailing bytes, a count or dimension over
its maximum, an unknown dtype code, a name that is not UTF-8 or names out of
order each raise `DecodeError` naming the part. A bundle has one encoding,
so its bytes and the root of what it decodes to determine each other.
"""
import numpy as np

from .constants import MAX_BUNDLE_TENSORS, MAX_TENSOR_DIMS, TENSOR_DTYPE_CODES
from .encoding import DecodeError

_HEADER_MAX_DIMS = 255  # ndim is one byte
_NAME_MAX_BYTES = (1 << 16) - 1  # its length is a u16
_DTYPES_BY_CODE = {code: np.dtype(name).newbyteorder("<") for name, code in TENSOR_DTYPE_CODES.items()}


class CommitmentError(ValueError):
    """A tensor that has no canonical encoding, so cannot be committed (a float or unknown dtype, too many
    dimensions, too long a name) or sent in a bundle (too many tensors, more than MAX_TENSOR_DIMS dimensions)."""


def encode_tensor_header(array) -> bytes:
    """u8(dtype code) ‖ u8(ndim) ‖ u32le(dim) for each dim: what precedes a tensor's data."""
    array = np.asarray(array)
    code = TENSOR_DTYPE_CODES.get(array.dtype.name)
    if code is None:
        raise CommitmentError(f"dtype {array.dtype.name} cannot be committed (integers only)")
    if array.ndim > _HEADER_MAX_DIMS:
        raise CommitmentError(f"a committed tensor has at most {_HEADER_MAX_DIMS} dimensions")
    return bytes([code, array.ndim]) + b"".join(int(d).to_bytes(4, "little") for d in array.shape)


def encode_tensor(array) -> bytes:
    """encode_tensor_header ‖ the data, little-endian, C order."""
    array = np.asarray(array)
    return encode_tensor_header(array) + np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def encode_tensor_name(name: str) -> bytes:
    """u16le(len(name)) ‖ name (UTF-8): how a tensor's name precedes it in a bundle and in its leaf."""
    name_bytes = name.encode("utf-8")
    if len(name_bytes) > _NAME_MAX_BYTES:
        raise CommitmentError(f"tensor name of {len(name_bytes)} bytes is too long (at most {_NAME_MAX_BYTES})")
    return len(name_bytes).to_bytes(2, "little") + name_bytes


def encode_tensor_bundle(tensors: dict) -> bytes:
    """A flat {name: integer array} as a bundle (names sorted)."""
    if len(tensors) > MAX_BUNDLE_TENSORS:
        raise CommitmentError(f"a bundle holds at most {MAX_BUNDLE_TENSORS} tensors, got {len(tensors)}")
    parts = [len(tensors).to_bytes(4, "little")]
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if array.ndim > MAX_TENSOR_DIMS:
            raise CommitmentError(f"tensor {name!r} has {array.ndim} dimensions, a bundle's at most {MAX_TENSOR_DIMS}")
        parts += [encode_tensor_name(name), encode_tensor(array)]
    return b"".join(parts)


class ByteReader:
    """Reads a byte string front to back; `take` raises DecodeError naming what it was reading when the
    input ends first."""

    def __init__(self, data) -> None:
        self.view = memoryview(data).cast("B")
        self.offset = 0

    def take(self, size: int, what: str) -> memoryview:
        if size < 0 or self.offset + size > len(self.view):
            raise DecodeError(what, f"truncated: needs {size} bytes at offset {self.offset}, "
                                    f"{len(self.view) - self.offset} left")
        chunk = self.view[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def take_uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "little")

    def check_end(self, what: str) -> None:
        if self.offset != len(self.view):
            raise DecodeError(what, f"{len(self.view) - self.offset} trailing bytes")


def read_tensor(reader: ByteReader, what: str) -> np.ndarray:
    """One encoded tensor of at most MAX_TENSOR_DIMS dimensions from `reader` (native byte order, a fresh
    writable array)."""
    code = reader.take_uint(1, f"{what} dtype code")
    if code not in _DTYPES_BY_CODE:
        raise DecodeError(what, f"unknown dtype code {code}")
    ndim = reader.take_uint(1, f"{what} ndim")
    if ndim > MAX_TENSOR_DIMS:
        raise DecodeError(what, f"{ndim} dimensions exceed the maximum {MAX_TENSOR_DIMS}")
    shape = tuple(reader.take_uint(4, f"{what} shape") for _ in range(ndim))
    dtype = _DTYPES_BY_CODE[code]
    size = dtype.itemsize
    for dim in shape:
        size *= dim
    raw = reader.take(size, f"{what} data")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def decode_tensor(data) -> np.ndarray:
    """The inverse of encode_tensor (for at most MAX_TENSOR_DIMS dimensions); DecodeError names what is wrong."""
    reader = ByteReader(data)
    array = read_tensor(reader, "tensor")
    reader.check_end("after the tensor")
    return array


def read_tensor_bundle(reader: ByteReader) -> dict[str, np.ndarray]:
    """One bundle from `reader`; the names strictly increasing."""
    count = reader.take_uint(4, "tensor count")
    if count > MAX_BUNDLE_TENSORS:
        raise DecodeError("tensor count", f"{count} tensors exceed the maximum {MAX_BUNDLE_TENSORS}")
    tensors: dict[str, np.ndarray] = {}
    previous = None
    for index in range(count):
        name_length = reader.take_uint(2, f"tensor {index} name length")
        try:
            name = bytes(reader.take(name_length, f"tensor {index} name")).decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(f"tensor {index} name", "not UTF-8") from None
        if previous is not None and name <= previous:
            raise DecodeError(f"tensor {name!r}", f"names not strictly increasing (after {previous!r})")
        previous = name
        tensors[name] = read_tensor(reader, f"tensor {name!r}")
    return tensors


def decode_tensor_bundle(data) -> dict[str, np.ndarray]:
    """The inverse of encode_tensor_bundle; DecodeError names what is wrong."""
    reader = ByteReader(data)
    tensors = read_tensor_bundle(reader)
    reader.check_end("after the last tensor")
    return tensors
