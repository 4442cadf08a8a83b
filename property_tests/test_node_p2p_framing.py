"""The request/response framing decoder (node/p2p_framing.py) on arbitrary input:
it never crashes (only FrameError), never hangs (work bounded by the input),
never buffers past its limit, and round-trips every valid encoding however the
bytes are split."""
import pytest
from hypothesis import given, strategies as st

from bws.node.p2p_framing import (
    FRAME_MAGIC,
    HEADER,
    HEADER_BYTES,
    KIND_END,
    KIND_ERROR,
    KIND_MORE,
    FrameError,
    MessageDecoder,
    encode_error,
    encode_message,
)

pytestmark = pytest.mark.timeout(120)
LIMIT = 4096
CHUNK = 256


def feed_all(pieces, limit=LIMIT, chunk=CHUNK):
    """Feed pieces then end the stream: the decoded message, or the FrameError raised."""
    decoder = MessageDecoder(limit, chunk)
    try:
        for piece in pieces:
            decoder.feed(piece)
            assert len(decoder._pending) <= HEADER_BYTES + chunk
            assert decoder._received <= limit
        decoder.finish()
    except FrameError as error:
        assert str(error)   # a reason, never an empty message
        return error
    return decoder


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@given(st.binary(max_size=LIMIT), st.lists(st.integers(min_value=0), max_size=20))
def test_round_trip_any_split(payload, cuts):
    wire = b"".join(encode_message(payload, LIMIT, CHUNK))
    decoder = feed_all(split(wire, cuts))
    assert isinstance(decoder, MessageDecoder) and decoder.payload == payload


@given(st.text(max_size=200))
def test_error_frames_round_trip(text):
    decoder = feed_all([encode_error(text)])
    assert decoder.error_text == text


@given(st.lists(st.binary(max_size=600), max_size=10))
def test_random_bytes_only_ever_raise_frame_error(pieces):
    feed_all(pieces)


frame_kinds = st.sampled_from([KIND_MORE, KIND_END, KIND_ERROR, 0, 4, 255])
frames = st.builds(
    lambda magic, kind, length, body: HEADER.pack(magic, kind, length) + body,
    st.sampled_from([FRAME_MAGIC, FRAME_MAGIC, FRAME_MAGIC, 0x00, 0xFF]),
    frame_kinds,
    st.one_of(st.integers(0, CHUNK + 2), st.integers(0, 2**32 - 1)),
    st.binary(max_size=CHUNK + 8),
)


@given(st.lists(frames, max_size=30), st.lists(st.integers(min_value=0), max_size=10))
def test_plausible_frame_sequences_decode_or_fail_cleanly(frame_list, cuts):
    result = feed_all(split(b"".join(frame_list), cuts))
    if isinstance(result, MessageDecoder):
        assert result.done and (result.payload is not None or result.error_text is not None)
        assert result.payload is None or len(result.payload) <= LIMIT


@given(st.binary(min_size=1, max_size=2000), st.data())
def test_mutated_valid_encodings_decode_or_fail_cleanly(payload, data):
    wire = bytearray(b"".join(encode_message(payload, LIMIT, CHUNK)))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        position = data.draw(st.integers(0, max(len(wire) - 1, 0)))
        if action == "flip" and wire:
            wire[position] ^= data.draw(st.integers(1, 255))
        elif action == "truncate":
            del wire[position:]
        elif action == "insert":
            wire[position:position] = data.draw(st.binary(min_size=1, max_size=16))
        elif action == "delete" and wire:
            del wire[position:position + data.draw(st.integers(1, 16))]
    result = feed_all([bytes(wire)])
    if isinstance(result, MessageDecoder) and result.payload is not None:
        assert len(result.payload) <= LIMIT


@given(st.integers(LIMIT + 1, 2**32 - 1))
def test_announced_oversize_is_refused_before_buffering(length):
    error = feed_all([HEADER.pack(FRAME_MAGIC, KIND_END, length)], limit=LIMIT, chunk=2**32)
    assert isinstance(error, FrameError) and "exceeds" in str(error)
