"""The sync protocol's codec: round trips, and SyncError on anything else."""
from hypothesis import given, strategies as st

from bws.node import sync


@given(st.binary(max_size=80))
def test_request_decoder_on_random_bytes(data):
    try:
        kind, argument = sync.decode_request(data)
    except sync.SyncError:
        return
    assert sync.encode_request(kind, argument) == data


@given(st.one_of(
    st.just((sync.STATUS, None)),
    st.tuples(st.just(sync.BLOCKS_BY_HEIGHT), st.tuples(st.integers(0, 2**64 - 1), st.integers(1, sync.MAX_BLOCKS_PER_REQUEST))),
    st.tuples(st.just(sync.BLOCK_BY_HASH), st.binary(min_size=32, max_size=32)),
))
def test_request_round_trip(request):
    assert sync.decode_request(sync.encode_request(*request)) == request


@given(st.lists(st.binary(max_size=100), max_size=sync.MAX_BLOCKS_PER_REQUEST))
def test_block_list_round_trip(blocks):
    assert sync.decode_blocks(sync.encode_blocks(blocks)) == blocks


@given(st.binary(max_size=300))
def test_block_list_decoder_on_random_bytes(data):
    try:
        blocks = sync.decode_blocks(data)
    except sync.SyncError:
        return
    assert sync.encode_blocks(blocks) == data


@given(st.binary(max_size=120))
def test_status_decoder_on_random_bytes(data):
    try:
        status = sync.decode_status(data)
    except sync.SyncError:
        return
    assert sync.encode_status(status) == data
