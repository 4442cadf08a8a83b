"""The chain-sync request/response protocol (`/bws/sync/1`): its byte codec.

Requests (first byte = kind):
| kind | bytes after it | answer |
| --- | --- | --- |
| `S` status | nothing | genesis hash (32) ‖ head hash (32) ‖ u64le height ‖ cumulative work (32, big-endian) |
| `H` blocks by height | u64le start ‖ u32le count (≤ MAX_BLOCKS_PER_REQUEST) | block list |
| `B` block by hash | hash (32) | block list of 0 or 1 |

A block list is u32le count ‖ (u32le length ‖ canonical Block encoding)*,
with at most MAX_BLOCKS_PER_REQUEST entries of at most MAX_BLOCK_BYTES (the
largest block a node accepts, node/validation.py). Every decoder is strict (exact
lengths, no trailing bytes, limits) and raises SyncError naming the problem;
a peer whose request does not decode gets an error answer and is scored down
by the network layer.
"""
from __future__ import annotations

from dataclasses import dataclass

from .validation import MAX_BLOCK_BYTES

STATUS = b"S"
BLOCKS_BY_HEIGHT = b"H"
BLOCK_BY_HASH = b"B"
MAX_BLOCKS_PER_REQUEST = 64
REORG_OVERLAP = 8     # re-request this many blocks below our head, to find a fork point cheaply
MAX_BACKFILL = 1024   # ancestors fetched one by one for a deeper fork


class SyncError(Exception):
    """A sync message that does not decode, or a peer that served something wrong."""


@dataclass(frozen=True)
class Status:
    genesis_hash: bytes
    head_hash: bytes
    height: int
    cumulative_work: int


def encode_request(kind: bytes, argument=None) -> bytes:
    if kind == STATUS:
        return STATUS
    if kind == BLOCKS_BY_HEIGHT:
        start, count = argument
        return BLOCKS_BY_HEIGHT + start.to_bytes(8, "little") + count.to_bytes(4, "little")
    if kind == BLOCK_BY_HASH:
        return BLOCK_BY_HASH + bytes(argument)
    raise SyncError(f"unknown request kind {kind!r}")


def decode_request(data: bytes) -> tuple[bytes, object]:
    """(kind, argument): None for status, (start, count) for blocks by height, a hash for block by hash."""
    if not data:
        raise SyncError("empty request")
    kind, body = data[:1], data[1:]
    if kind == STATUS:
        if body:
            raise SyncError("status request takes no argument")
        return STATUS, None
    if kind == BLOCKS_BY_HEIGHT:
        if len(body) != 12:
            raise SyncError(f"blocks-by-height request is 12 bytes after the kind, got {len(body)}")
        start, count = int.from_bytes(body[:8], "little"), int.from_bytes(body[8:], "little")
        if not 1 <= count <= MAX_BLOCKS_PER_REQUEST:
            raise SyncError(f"count {count} not in [1, {MAX_BLOCKS_PER_REQUEST}]")
        return BLOCKS_BY_HEIGHT, (start, count)
    if kind == BLOCK_BY_HASH:
        if len(body) != 32:
            raise SyncError(f"block-by-hash request is a 32-byte hash, got {len(body)} bytes")
        return BLOCK_BY_HASH, bytes(body)
    raise SyncError(f"unknown request kind {kind!r}")


def encode_status(status: Status) -> bytes:
    return (status.genesis_hash + status.head_hash + status.height.to_bytes(8, "little")
            + status.cumulative_work.to_bytes(32, "big"))


def decode_status(data: bytes) -> Status:
    if len(data) != 104:
        raise SyncError(f"a status answer is 104 bytes, got {len(data)}")
    return Status(bytes(data[:32]), bytes(data[32:64]), int.from_bytes(data[64:72], "little"),
                  int.from_bytes(data[72:], "big"))


def encode_blocks(blocks: list[bytes]) -> bytes:
    return len(blocks).to_bytes(4, "little") + b"".join(len(b).to_bytes(4, "little") + b for b in blocks)


def decode_blocks(data: bytes) -> list[bytes]:
    if len(data) < 4:
        raise SyncError("block list shorter than its count")
    count = int.from_bytes(data[:4], "little")
    if count > MAX_BLOCKS_PER_REQUEST:
        raise SyncError(f"block list of {count} blocks exceeds {MAX_BLOCKS_PER_REQUEST}")
    blocks, offset = [], 4
    for index in range(count):
        if offset + 4 > len(data):
            raise SyncError(f"block {index}: length missing")
        size = int.from_bytes(data[offset:offset + 4], "little")
        offset += 4
        if size > MAX_BLOCK_BYTES or offset + size > len(data):
            raise SyncError(f"block {index}: length {size} runs past the answer or the limit")
        blocks.append(bytes(data[offset:offset + size]))
        offset += size
    if offset != len(data):
        raise SyncError(f"{len(data) - offset} trailing bytes after the block list")
    return blocks
