"""The mempool across a restart (node/mempool_file.py): saved while it changes and at stop, re-checked at
start, rebroadcast so that a peer that missed the gossip still gets the transaction."""
import json
import logging
import signal
import subprocess
import sys
import time

import pytest

from bws.node.mempool_file import MAGIC, MEMPOOL_FILE, MempoolFileError, read_mempool_file, write_mempool_file
from bws.node.service import Node, NodeSettings
from bws.node.store import transaction_id
from bws.spec.encoding import encode
from tests.node.chain_factory import ChainFactory
from tests.node.test_node_network import wait_for

# GossipSub (1 s heartbeat) offers a message in IHAVE gossip for 3 heartbeats after it was sent.
GOSSIP_WINDOW_SECONDS = 5


def test_file_round_trip_and_damage(tmp_path):
    path = tmp_path / MEMPOOL_FILE
    assert read_mempool_file(path) == []
    write_mempool_file(path, [b"one", b"", b"three"])
    assert read_mempool_file(path) == [b"one", b"", b"three"]
    whole = path.read_bytes()
    for damaged, why in ((b"", "not a mempool file"), (b"BWS mempool 2\n", "not a mempool file"),
                         (whole[:-1], "runs past the end"), (MAGIC + b"\x01\x00", "truncated record header")):
        path.write_bytes(damaged)
        with pytest.raises(MempoolFileError, match=why) as raised:
            read_mempool_file(path)
        assert str(path) in str(raised.value)


@pytest.fixture(scope="module")
def factory():
    return ChainFactory(miners=2, seed=5)


def test_a_restarted_node_keeps_its_valid_transactions(tmp_path, factory, caplog):
    alice, bob = factory.users[0], factory.users[1]
    good = [factory.transfer(alice, bob.address, 10**8, nonce=n) for n in range(2)]
    settings = NodeSettings(data_dir=tmp_path / "n", genesis=factory.genesis)
    node = Node(settings).start()
    try:
        for tx in reversed(good):   # the nonce gap fills: both pending
            node.submit_transaction(encode(tx))
        assert len(node.mempool) == 2
    finally:
        node.stop()
    saved = read_mempool_file(tmp_path / "n" / MEMPOOL_FILE)
    wrong_chain = factory.transfer(alice, bob.address, 1, nonce=5)
    wrong_chain = wrong_chain.__class__(**{**vars(wrong_chain), "signature": bytes(64)})
    write_mempool_file(tmp_path / "n" / MEMPOOL_FILE, saved + [encode(wrong_chain), b"\x00garbage"])

    with caplog.at_level(logging.INFO, logger="bws.node"):
        node = Node(settings).start()
    try:
        assert sorted(tx.tx_id for tx in node.mempool.transactions()) == sorted(transaction_id(tx) for tx in good)
        assert "2 saved transaction(s) restored" in caplog.text and "2 dropped" in caplog.text
    finally:
        node.stop()


def test_a_damaged_mempool_file_is_logged_and_ignored(tmp_path, factory, caplog):
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / MEMPOOL_FILE).write_bytes(b"\x89PNG not a mempool")
    with caplog.at_level(logging.WARNING, logger="bws.node"):
        node = Node(NodeSettings(data_dir=tmp_path / "n", genesis=factory.genesis)).start()
    try:
        assert len(node.mempool) == 0
        assert str(tmp_path / "n" / MEMPOOL_FILE) in caplog.text and "empty mempool" in caplog.text
    finally:
        node.stop()


@pytest.mark.slow
def test_rebroadcast_reaches_a_peer_that_missed_the_gossip(tmp_path, factory):
    a = Node(NodeSettings(data_dir=tmp_path / "a", genesis=factory.genesis)).start()
    b = None
    try:
        tx = factory.transfer(factory.users[0], factory.users[1].address, 10**8, nonce=0)
        a.submit_transaction(encode(tx))   # gossiped to no one: a has no peers yet
        time.sleep(GOSSIP_WINDOW_SECONDS)  # and GossipSub's own IHAVE gossip of it has ended
        b = Node(NodeSettings(data_dir=tmp_path / "b", genesis=factory.genesis, peers=[a.network.address])).start()
        wait_for(lambda: a.network.mesh_peers("bws/tx/1") == [b.network.peer_id], what="b joins a's tx topic")
        time.sleep(2)
        assert transaction_id(tx) not in b.mempool   # without a rebroadcast b would never hear of it
        assert a.rebroadcast() == 1
        wait_for(lambda: transaction_id(tx) in b.mempool, what="the rebroadcast reaches b")
        assert a.counters["rebroadcast_transactions"] >= 1
    finally:
        if b is not None:
            b.stop()
        a.stop()


def test_a_node_killed_with_sigkill_keeps_its_pending_transactions(tmp_path, factory):
    """The mempool was written only at a clean stop: a node killed with kill -9 lost it. Now it is saved (write,
    fsync, rename) every MEMPOOL_SAVE_SECONDS while it changes."""
    from bws.node.api import ApiClient
    from bws.node.service import write_genesis

    alice, bob = factory.users[0], factory.users[1]
    pending = [factory.transfer(alice, bob.address, 10**8, nonce=n) for n in range(2)]
    genesis = tmp_path / "genesis.json"
    write_genesis(genesis, factory.genesis)
    data_dir = tmp_path / "n"
    process = subprocess.Popen([sys.executable, "-m", "bws.node.cli", "node", "run", "--data-dir", str(data_dir),
                                "--genesis", str(genesis), "--api-port", "0", "--port", "0", "--log-level", "warning"],
                               stdout=subprocess.DEVNULL)
    try:
        info = data_dir / "node.json"
        wait_for(lambda: info.exists() and json.loads(info.read_text() or "{}").get("pid") == process.pid,
                 timeout=90, what="the node started")
        client = ApiClient(json.loads(info.read_text())["api"], timeout=10)
        for tx in pending:
            client.post("/tx", {"transaction": encode(tx).hex()})
        wait_for(lambda: len(read_mempool_file(data_dir / MEMPOOL_FILE)) == 2, timeout=60,
                 what="the pending transactions saved while the node runs")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    node = Node(NodeSettings(data_dir=data_dir, genesis=factory.genesis)).start()
    try:
        assert sorted(tx.tx_id for tx in node.mempool.transactions()) == sorted(transaction_id(tx) for tx in pending)
    finally:
        node.stop()
