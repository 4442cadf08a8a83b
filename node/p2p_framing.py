"""Framing of request/response messages on BWS streams (`/bws/sync/1`, `/bws/data/1`).

A libp2p stream carries one request (dialer → listener) and one response
(listener → dialer). Each message is sent as a sequence of frames, so a
payload of several MB (a model state) never has to pass through one read of
the muxer (py-libp2p gives up on a single length-prefixed read after 100
partial reads, docs/node-p2p.md rule 6):

    frame = magic (1 byte, 0xB5) ‖ kind (1 byte) ‖ length (u32, big-endian) ‖ payload

    kind 1  MORE   a chunk of the message, more frames follow (1..max_chunk bytes)
    kind 2  END    the last chunk of the message (0..max_chunk bytes)
    kind 3  ERROR  the whole message is an error text (UTF-8, ≤ MAX_ERROR_BYTES):
                   the listener could not answer the request

The decoder is incremental (bytes arrive in arbitrary pieces) and strict:
anything that is not exactly one well-formed message raises `FrameError`
naming what was wrong. Every bound is checked before bytes are buffered, so a
hostile peer can make it hold at most `max_message_bytes` + one header.
"""
from __future__ import annotations

import struct

FRAME_MAGIC = 0xB5
KIND_MORE = 1
KIND_END = 2
KIND_ERROR = 3
HEADER = struct.Struct(">BBI")
HEADER_BYTES = HEADER.size

# Chunks well under the Yamux window (256 KiB) keep every read short.
CHUNK_BYTES = 128 * 1024
MAX_ERROR_BYTES = 4096


class NetworkError(Exception):
    """Base class of every error raised by the BWS networking layer."""


class FrameError(NetworkError):
    """Bytes on a BWS stream that are not one well-formed framed message."""


class MessageTooLarge(FrameError):
    """A message (or a chunk of it) is larger than the limit for its protocol."""


def encode_message(payload: bytes, max_message_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> list[bytes]:
    """The frames that carry `payload`; raises MessageTooLarge above `max_message_bytes`."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) > max_message_bytes:
        raise MessageTooLarge(f"message of {len(payload)} bytes exceeds the limit of {max_message_bytes} bytes")
    frames = []
    for start in range(0, max(len(payload), 1), chunk_bytes):
        chunk = payload[start:start + chunk_bytes]
        kind = KIND_END if start + chunk_bytes >= len(payload) else KIND_MORE
        frames.append(HEADER.pack(FRAME_MAGIC, kind, len(chunk)) + chunk)
    return frames


def encode_error(text: str) -> bytes:
    """One ERROR frame carrying `text` (truncated to MAX_ERROR_BYTES of UTF-8)."""
    data = text.encode("utf-8", errors="replace")[:MAX_ERROR_BYTES]
    return HEADER.pack(FRAME_MAGIC, KIND_ERROR, len(data)) + data


class MessageDecoder:
    """Reassembles one framed message from bytes fed in arbitrary pieces.

    After `feed` returns True the message is complete: `payload` holds it, or
    `error_text` holds the remote's error when it answered with an ERROR
    frame. Call `finish()` when the stream ends to detect truncation.
    """

    def __init__(self, max_message_bytes: int, max_chunk_bytes: int = CHUNK_BYTES):
        self.max_message_bytes = max_message_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self._pending = bytearray()   # bytes of the frame being read
        self._chunks: list[bytes] = []
        self._received = 0            # payload bytes of the message so far
        self.done = False
        self.payload: bytes | None = None
        self.error_text: str | None = None

    def feed(self, data: bytes) -> bool:
        """Consume `data`; True once the message is complete. Raises FrameError."""
        view = memoryview(data)
        while view:
            if self.done:
                raise FrameError(f"{len(view)} unexpected bytes after the end of the message")
            if len(self._pending) < HEADER_BYTES:
                take = HEADER_BYTES - len(self._pending)
                self._pending += view[:take]
                view = view[take:]
                if len(self._pending) == HEADER_BYTES:
                    self._check_header()
                    if self._frame_length() == 0:
                        self._complete_frame()
                continue
            missing = HEADER_BYTES + self._frame_length() - len(self._pending)
            self._pending += view[:missing]
            view = view[missing:]
            if len(self._pending) == HEADER_BYTES + self._frame_length():
                self._complete_frame()
        return self.done

    def finish(self) -> None:
        """The stream ended: raise FrameError unless a whole message was read."""
        if self.done:
            return
        if not self._pending and not self._chunks:
            raise FrameError("stream ended before any frame")
        if len(self._pending) < HEADER_BYTES and self._pending:
            raise FrameError(f"stream ended inside a frame header ({len(self._pending)} of {HEADER_BYTES} bytes)")
        if self._pending:
            raise FrameError(
                f"stream ended inside a frame ({len(self._pending) - HEADER_BYTES} of "
                f"{self._frame_length()} payload bytes)"
            )
        raise FrameError(f"stream ended after {len(self._chunks)} chunks without an END frame")

    def _frame_length(self) -> int:
        return HEADER.unpack_from(self._pending)[2]

    def _check_header(self) -> None:
        magic, kind, length = HEADER.unpack_from(self._pending)
        if magic != FRAME_MAGIC:
            raise FrameError(f"bad frame magic 0x{magic:02x} (expected 0x{FRAME_MAGIC:02x})")
        if kind == KIND_ERROR:
            if self._chunks:
                raise FrameError("ERROR frame in the middle of a message")
            if length > MAX_ERROR_BYTES:
                raise MessageTooLarge(f"error frame of {length} bytes exceeds {MAX_ERROR_BYTES}")
            return
        if kind not in (KIND_MORE, KIND_END):
            raise FrameError(f"unknown frame kind {kind}")
        if kind == KIND_MORE and length == 0:
            raise FrameError("empty MORE frame")
        if length > self.max_chunk_bytes:
            raise MessageTooLarge(f"frame of {length} bytes exceeds the chunk limit of {self.max_chunk_bytes}")
        if self._received + length > self.max_message_bytes:
            raise MessageTooLarge(
                f"message exceeds the limit of {self.max_message_bytes} bytes "
                f"({self._received} received, next frame {length})"
            )

    def _complete_frame(self) -> None:
        _, kind, _ = HEADER.unpack_from(self._pending)
        body = bytes(self._pending[HEADER_BYTES:])
        self._pending.clear()
        if kind == KIND_ERROR:
            self.error_text = body.decode("utf-8", errors="replace")
            self.done = True
            return
        self._chunks.append(body)
        self._received += len(body)
        if kind == KIND_END:
            self.payload = b"".join(self._chunks)
            self._chunks.clear()
            self.done = True
