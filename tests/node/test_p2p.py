"""NetworkService in one process: framing, scoring, request/response errors, lifecycle.

Multi-process behaviour (gossip across processes, garbage peers, restarts) is in
test_p2p_processes.py.
"""
import hashlib
import threading
import time

import pytest

from bws.node.p2p import (
    PROTOCOL_DATA,
    PROTOCOL_SYNC,
    TOPIC_TX,
    MessageTooLarge,
    NetworkConfig,
    NetworkError,
    NetworkService,
    NotRunning,
    PeerScores,
    RemoteError,
    RequestFailed,
    RequestTimeout,
    Verdict,
    peer_id_from_seed,
    seed_from_text,
)
from bws.node.p2p_framing import (
    CHUNK_BYTES,
    FRAME_MAGIC,
    HEADER,
    KIND_END,
    KIND_MORE,
    FrameError,
    MessageDecoder,
    encode_error,
    encode_message,
)

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------ framing

@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 3 * CHUNK_BYTES + 7])
def test_framing_round_trip_in_odd_pieces(size):
    payload = bytes(i % 251 for i in range(size))
    wire = b"".join(encode_message(payload, max_message_bytes=size))
    decoder = MessageDecoder(max_message_bytes=size)
    done = False
    for start in range(0, len(wire), 7919):
        done = decoder.feed(wire[start:start + 7919])
    assert done and decoder.payload == payload and decoder.error_text is None


def test_framing_error_frame_carries_the_text():
    decoder = MessageDecoder(max_message_bytes=10)
    assert decoder.feed(encode_error("no such block"))
    assert decoder.error_text == "no such block" and decoder.payload is None


def test_framing_encoder_refuses_oversize():
    with pytest.raises(MessageTooLarge, match="exceeds the limit of 10 bytes"):
        encode_message(b"x" * 11, max_message_bytes=10)


@pytest.mark.parametrize("wire, message", [
    (bytes([0x00, KIND_END, 0, 0, 0, 0]), "bad frame magic"),
    (HEADER.pack(FRAME_MAGIC, 9, 0), "unknown frame kind 9"),
    (HEADER.pack(FRAME_MAGIC, KIND_MORE, 0), "empty MORE frame"),
    (HEADER.pack(FRAME_MAGIC, KIND_END, CHUNK_BYTES + 1), "exceeds the chunk limit"),
    (HEADER.pack(FRAME_MAGIC, KIND_END, 101), "message exceeds the limit of 100 bytes"),
    (HEADER.pack(FRAME_MAGIC, KIND_END, 0) + b"x", "unexpected bytes after the end"),
])
def test_framing_rejects_malformed_frames(wire, message):
    with pytest.raises(FrameError, match=message):
        MessageDecoder(max_message_bytes=100).feed(wire)


@pytest.mark.parametrize("wire, message", [
    (b"", "before any frame"),
    (bytes([FRAME_MAGIC, KIND_END]), "inside a frame header"),
    (HEADER.pack(FRAME_MAGIC, KIND_END, 10) + b"abc", "inside a frame \\(3 of 10"),
    (HEADER.pack(FRAME_MAGIC, KIND_MORE, 1) + b"a", "without an END frame"),
])
def test_framing_truncation_is_reported_at_end_of_stream(wire, message):
    decoder = MessageDecoder(max_message_bytes=100)
    decoder.feed(wire)
    with pytest.raises(FrameError, match=message):
        decoder.finish()


# ------------------------------------------------------------------ scoring

def test_scores_ban_at_threshold_recover_and_expire():
    now = [0.0]
    config = NetworkConfig(ban_threshold=-100, score_recovery_per_second=1.0, ban_seconds=30)
    scores = PeerScores(config, clock=lambda: now[0])
    assert not scores.penalize("p", 60)
    now[0] = 10.0
    assert scores.score("p") == -50.0          # recovered 10
    assert scores.penalize("p", 50)            # -100: banned now
    assert scores.is_banned("p") and scores.banned() == ["p"]
    assert not scores.penalize("p", 50)        # already banned: no second ban event
    now[0] = 39.0
    assert scores.ban_seconds_left() == {"p": 1.0}
    assert scores.expire_bans() == []
    now[0] = 40.0
    assert scores.expire_bans() == ["p"]
    assert not scores.is_banned("p") and scores.score("p") == 0.0


# ------------------------------------------------------------------ service

@pytest.fixture
def pair():
    services = [NetworkService(NetworkConfig(request_timeout=10)) for _ in range(2)]
    a_addr = services[0].start(key_seed=seed_from_text("test-a"))
    services[1].start(key_seed=seed_from_text("test-b"))
    services[1].connect(a_addr)
    yield services
    for service in services:
        service.stop()


def test_peer_id_is_deterministic_from_the_seed(pair):
    a, b = pair
    assert a.peer_id == peer_id_from_seed(seed_from_text("test-a"))
    assert b.peer_id == peer_id_from_seed(seed_from_text("test-b")) != a.peer_id
    deadline = time.monotonic() + 5   # the listener registers the connection a moment later
    while a.peers() != [b.peer_id] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert a.peers() == [b.peer_id] and b.peers() == [a.peer_id]


def test_start_refuses_a_bad_seed_address_or_taken_port(pair):
    with pytest.raises(ValueError, match="32 bytes"):
        NetworkService().start(key_seed=b"short")
    with pytest.raises(NetworkError, match="must look like /ip4/127.0.0.1/tcp/PORT"):
        NetworkService().start("/ip4/1.2.3/tcp/x")
    taken = pair[0].address.split("/p2p/")[0]
    with pytest.raises(NetworkError, match="cannot listen on .*in use"):
        NetworkService().start(taken)


def test_ipv6_listen_and_dial():
    """py-libp2p 0.8.1 listens on and dials /ip6 addresses (docs/node.md)."""
    a, b = NetworkService(NetworkConfig(request_timeout=10)), NetworkService(NetworkConfig(request_timeout=10))
    try:
        a_addr = a.start("/ip6/::1/tcp/0")
        assert a_addr.startswith("/ip6/::1/tcp/")
        a.register_handler(PROTOCOL_SYNC, lambda peer, request: request[::-1])
        b.start("/ip6/::1/tcp/0")
        assert b.connect(a_addr) == a.peer_id
        assert b.request(a.peer_id, PROTOCOL_SYNC, b"abc") == b"cba"
        with pytest.raises(NetworkError, match="cannot listen on .*in use"):
            NetworkService().start(a_addr.split("/p2p/")[0])
    finally:
        b.stop()
        a.stop()


def test_announce_address_is_what_the_node_and_its_peers_give_out():
    a, b = NetworkService(), NetworkService()
    try:
        a_addr = a.start(announce_addr="/ip4/203.0.113.7/tcp/30645")
        assert a_addr == f"/ip4/203.0.113.7/tcp/30645/p2p/{a.peer_id}"
        listen = a._host.get_transport_addrs()[0]   # where it really listens: the test dials that
        b.start()
        b.connect(f"{listen}/p2p/{a.peer_id}")
        deadline = time.monotonic() + 10   # identify runs just after the connection opens
        while a_addr not in b.peer_addresses(a.peer_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a_addr in b.peer_addresses(a.peer_id)
    finally:
        b.stop()
        a.stop()
    for bad in ("/ip4/203.0.113.7", "/ip4/203.0.113.7/tcp/0", "/ip4/1.2.3.4/udp/5", "nonsense"):
        with pytest.raises(NetworkError, match="announce address must"):
            NetworkService().start(announce_addr=bad)


def test_request_response_round_trip_and_handler_sees_the_peer(pair):
    a, b = pair
    seen = []
    a.register_handler(PROTOCOL_SYNC, lambda peer, request: seen.append(peer) or request[::-1])
    assert b.request(a.peer_id, PROTOCOL_SYNC, b"abc") == b"cba"
    assert seen == [b.peer_id]


def test_handler_exception_becomes_a_remote_error_and_a_penalty(pair):
    a, b = pair

    def handler(peer, request):
        raise ValueError("unknown block hash")

    a.register_handler(PROTOCOL_DATA, handler)
    with pytest.raises(RemoteError, match="ValueError: unknown block hash"):
        b.request(a.peer_id, PROTOCOL_DATA, b"?")
    assert a.peer_score(b.peer_id) < 0
    a.register_handler(PROTOCOL_DATA, lambda peer, request: b"fine")
    assert b.request(a.peer_id, PROTOCOL_DATA, b"?") == b"fine"   # the host survived


def test_peer_table_shows_addresses_directions_scores_and_bans(pair):
    a, b = pair
    deadline = time.monotonic() + 5   # the listener registers the connection a moment later
    while not a.peer_table().connected and time.monotonic() < deadline:
        time.sleep(0.02)
    (seen_by_a,), (seen_by_b,) = a.peer_table().connected, b.peer_table().connected
    assert (seen_by_a.peer_id, seen_by_a.direction, seen_by_a.score) == (b.peer_id, "inbound", 0.0)
    assert seen_by_a.address.startswith("/ip4/127.0.0.1/tcp/")   # b's outgoing port: b listens elsewhere
    assert (seen_by_b.peer_id, seen_by_b.direction) == (a.peer_id, "outbound")
    assert seen_by_b.address == a.address.split("/p2p/")[0]
    assert a.peer_table().banned == () and a.peer_table().ban_threshold == -100.0

    def handler(peer, request):
        raise ValueError("no")

    a.register_handler(PROTOCOL_DATA, handler)
    for _ in range(20):   # refused requests cost 10 each; the score recovers 1 a second; the ban is at -100
        if a.peer_table().banned:
            break
        try:
            b.request(a.peer_id, PROTOCOL_DATA, b"?")
        except NetworkError:
            pass
    deadline = time.monotonic() + 5
    while a.peer_table().connected and time.monotonic() < deadline:
        time.sleep(0.02)
    table = a.peer_table()
    assert table.connected == ()
    (banned,) = table.banned
    assert banned.peer_id == b.peer_id and 290 < banned.seconds_left <= 300


def test_unsupported_protocol_and_oversize_are_clear_errors(pair):
    a, b = pair
    with pytest.raises(RequestFailed, match="/bws/nothing/1"):
        b.request(a.peer_id, "/bws/nothing/1", b"")
    with pytest.raises(MessageTooLarge, match="request of"):
        b.request(a.peer_id, PROTOCOL_SYNC, b"x" * ((1 << 20) + 1))
    a.register_handler(PROTOCOL_SYNC, lambda peer, request: b"y" * 5000)
    with pytest.raises(RequestFailed, match="exceeds the limit of 1000 bytes"):
        b.request(a.peer_id, PROTOCOL_SYNC, b"", max_response_bytes=1000)
    with pytest.raises(MessageTooLarge, match="gossip message"):
        b.publish(TOPIC_TX, b"z" * 1_000_001)
    with pytest.raises(NetworkError, match="not a peer id"):
        b.request("not-a-peer", PROTOCOL_SYNC, b"")


def test_slow_handler_times_out_without_hanging_the_caller(pair):
    a, b = pair
    release = threading.Event()
    a.register_handler(PROTOCOL_SYNC, lambda peer, request: release.wait(5) and b"late")
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        b.request(a.peer_id, PROTOCOL_SYNC, b"", timeout=0.5)
    assert time.monotonic() - started < 3
    release.set()


def test_gossip_verdicts_and_failing_validators_or_callbacks(pair):
    a, b = pair
    received = []

    def validator(data):
        if data == b"boom":
            raise RuntimeError("validator bug")   # counts as reject, never reaches the host
        return {b"good": Verdict.ACCEPT, b"later": Verdict.IGNORE}.get(data[:5].rstrip(b"-"), Verdict.REJECT)

    def on_message(message):
        received.append(message)
        if message.data == b"good-1":
            raise RuntimeError("callback bug")    # logged; later deliveries still happen

    b.subscribe(TOPIC_TX, validator, on_message)
    a.subscribe(TOPIC_TX, lambda data: True, lambda message: None)
    deadline = time.monotonic() + 10
    while a.peer_id not in b.mesh_peers(TOPIC_TX) or b.peer_id not in a.mesh_peers(TOPIC_TX):
        assert time.monotonic() < deadline, "subscriptions never propagated"
        time.sleep(0.05)
    for data in (b"good-1", b"later", b"bad!!", b"boom", b"good-2"):
        a.publish(TOPIC_TX, data)
    deadline = time.monotonic() + 10
    while len(received) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)   # a rejected or ignored message would arrive by now
    assert sorted(m.data for m in received) == [b"good-1", b"good-2"]
    assert received[0].origin == a.peer_id and received[0].topic == TOPIC_TX
    assert b.stats["ignored"] == 1 and b.stats["rejected"] == 2
    # First-seen times (the gossip latency's inputs): a published all five, b received the two it accepted, later.
    sent, got = a.gossip_times(TOPIC_TX), b.gossip_times(TOPIC_TX)
    assert len(sent) == 5 and all(published for _, published in sent.values())
    assert {hashlib.sha256(m.data).digest() for m in received} == set(got)
    assert all(not published and sent[digest][0] <= at for digest, (at, published) in got.items())
    assert -60 < b.peer_score(a.peer_id) < -40   # two rejections of 25, minus a little recovery


def test_stop_is_prompt_and_calls_after_stop_fail_clearly():
    service = NetworkService()
    service.start()
    started = time.monotonic()
    service.stop()
    assert time.monotonic() - started < 5
    with pytest.raises(NotRunning):
        service.peers()
    service.stop()   # idempotent


def test_on_peer_reports_connections_and_disconnections(pair):
    a, _ = pair
    events = []
    a.on_peer(lambda peer, connected: events.append((peer, connected)))
    newcomer = NetworkService()
    newcomer.start()
    newcomer.connect(a.address)
    deadline = time.monotonic() + 10
    while (newcomer.peer_id, True) not in events and time.monotonic() < deadline:
        time.sleep(0.02)
    newcomer.stop()
    while (newcomer.peer_id, False) not in events and time.monotonic() < deadline:
        time.sleep(0.02)
    assert events.index((newcomer.peer_id, True)) < events.index((newcomer.peer_id, False))
