"""Remembered peers (node/peerbook.py): backoff, learning, the peers file; and a node that finds
a peer started after it by redialing."""
import json
import logging
import socket
import time

import pytest

from bws.node import peerbook
from bws.node.p2p import peer_id_from_seed, seed_from_text
from bws.node.peerbook import (
    MAX_LEARNED_PER_PEER, MAX_REMEMBERED, PEER_BOOK_FILE, REDIAL_BASE_SECONDS, REDIAL_MAX_SECONDS, TARGET_PEERS,
    PeerBook, PeerBookError, is_dialable, load_peer_book, read_peer_file, write_peer_file,
)
from bws.node.service import Node, NodeSettings
from tests.node.chain_factory import ChainFactory
from tests.node.test_node_network import wait_for

A = peer_id_from_seed(seed_from_text("book-a"))
B = peer_id_from_seed(seed_from_text("book-b"))


def addr(peer_id, port=4001, host="/ip4/127.0.0.1"):
    return f"{host}/tcp/{port}/p2p/{peer_id}"


def test_backoff_doubles_to_its_cap_and_resets_on_success_or_disconnection():
    book = PeerBook(configured=[addr(A)])
    assert book.due(0.0, set(), B) == [addr(A)]
    delays = [book.failed(addr(A), 0.0) for _ in range(12)]
    assert delays[:3] == [REDIAL_BASE_SECONDS, 2 * REDIAL_BASE_SECONDS, 4 * REDIAL_BASE_SECONDS]
    assert max(delays) == delays[-1] == REDIAL_MAX_SECONDS
    assert book.due(REDIAL_MAX_SECONDS - 1, set(), B) == []
    assert book.due(REDIAL_MAX_SECONDS, set(), B) == [addr(A)]
    book.disconnected(A, 100.0)   # a peer that left may be restarting: back to the shortest wait
    assert book.due(100.0, set(), B) == [] and book.due(100.0 + REDIAL_BASE_SECONDS, set(), B) == [addr(A)]
    book.failed(addr(A), 200.0)
    book.succeeded(addr(A))
    assert book.failures(addr(A)) == 0 and book.due(200.0, set(), B) == [addr(A)]


def test_due_skips_connected_and_own_and_learned_ones_above_target():
    book = PeerBook(configured=[addr(A)], remembered=[addr(B, 4002)])
    assert book.due(0.0, {A}, "me") == [addr(B, 4002)]
    assert book.due(0.0, set(), B) == [addr(A)]
    crowd = {f"peer{i}" for i in range(TARGET_PEERS)}
    assert book.due(0.0, crowd, "me") == [addr(A)]   # --peer addresses whatever the count
    assert book.due(0.0, set(), "me", configured_only=True) == [addr(A)]


def test_learning_takes_dialable_addresses_of_that_peer_within_bounds():
    book = PeerBook()
    offered = [addr(A, host="/ip4/0.0.0.0"), addr(B), "/ip4/10.0.0.1/tcp/1", addr(A, 1), addr(A, 2), addr(A, 3)]
    assert book.learn(A, offered) == MAX_LEARNED_PER_PEER
    assert book.addresses() == [addr(A, 1), addr(A, 2)] and book.changed
    for i in range(MAX_REMEMBERED):
        book.learn(f"{A}", [addr(A, 10_000 + i)])
    assert len(book.addresses()) == MAX_REMEMBERED
    configured = PeerBook(configured=[addr(B, port) for port in range(1, MAX_REMEMBERED + 1)])
    assert configured.learn(A, [addr(A)]) == 0   # never forgets a --peer to make room


def test_forgets_the_learned_address_that_failed_most():
    book = PeerBook(remembered=[addr(A, port) for port in range(1, MAX_REMEMBERED + 1)])
    for _ in range(3):
        book.failed(addr(A, 7), 0.0)
    assert book.learn(B, [addr(B)]) == 1
    assert addr(A, 7) not in book.addresses() and addr(B) in book.addresses()


@pytest.mark.parametrize("address, dialable", [
    (addr(A), True), (addr(A, host="/ip6/::1"), True), (addr(A, host="/dns4/node.example"), True),
    (addr(A, host="/ip4/0.0.0.0"), False), (addr(A, host="/ip6/::"), False), (addr(A, 0), False),
    ("/ip4/127.0.0.1/tcp/4001", False), ("junk", False), ("", False), (addr(A) + "/tcp/5", False),
])
def test_dialable_addresses(address, dialable):
    assert is_dialable(address) is dialable


def test_peers_file_round_trip_and_damage(tmp_path, caplog):
    path = tmp_path / PEER_BOOK_FILE
    assert read_peer_file(path) == []
    write_peer_file(path, [addr(A), addr(B)])
    assert read_peer_file(path) == [addr(A), addr(B)]
    assert load_peer_book(path, configured=[addr(A)]).addresses() == [addr(A), addr(B)]

    path.write_text(json.dumps({"version": 1, "peers": [addr(A), "junk", 5]}))
    with caplog.at_level(logging.WARNING, logger="bws.node.peers"):
        assert load_peer_book(path, configured=[]).addresses() == [addr(A)]
    assert f"{path}: ignored 1 entries" in caplog.text

    for damaged in (b"{not json", b"\xff\xfe", b"[]", b'{"version": 2, "peers": []}', b'{"version": 1}'):
        path.write_bytes(damaged)
        with pytest.raises(PeerBookError, match=str(path)):
            read_peer_file(path)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bws.node.peers"):
            assert load_peer_book(path, configured=[addr(B)]).addresses() == [addr(B)]
        assert str(path) in caplog.text and "--peer addresses only" in caplog.text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_a_node_finds_a_peer_that_starts_after_it_and_remembers_it(tmp_path, monkeypatch):
    """`a` is told of `b` (--peer) before `b` runs: `a` keeps redialing until `b` is up, remembers
    it in peers.json, and after `b` restarts finds it again without being told."""
    monkeypatch.setattr(peerbook, "REDIAL_MAX_SECONDS", 2.0)   # the test waits seconds, not minutes
    genesis = ChainFactory(miners=2, seed=3).genesis
    seed = seed_from_text("late-b")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "p2p.key").write_bytes(seed)
    port = free_port()
    b_address = f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id_from_seed(seed)}"

    def b_node():
        return Node(NodeSettings(data_dir=tmp_path / "b", genesis=genesis, listen=f"/ip4/127.0.0.1/tcp/{port}"))

    a = Node(NodeSettings(data_dir=tmp_path / "a", genesis=genesis, peers=[b_address])).start()
    b = None
    try:
        assert a.network.peers() == []
        time.sleep(3)   # a few failed dials: the backoff must not give up
        b = b_node().start()
        wait_for(lambda: a.network.peers() == [b.network.peer_id], what="a redials b")
        assert read_peer_file(tmp_path / "a" / PEER_BOOK_FILE) == [b_address]
        b.stop()
        wait_for(lambda: a.network.peers() == [], what="a sees b leave")
        b = b_node().start()
        wait_for(lambda: a.network.peers() == [b.network.peer_id], what="a finds the restarted b")
        # b learned where a listens (identify) and remembers it too, though it never dialed a
        b.stop()
        assert read_peer_file(tmp_path / "b" / PEER_BOOK_FILE) == [a.network.address]
        b = None
    finally:
        if b is not None:
            b.stop()
        a.stop()

