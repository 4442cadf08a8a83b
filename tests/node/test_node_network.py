"""Nodes on loopback: gossip, sync by request/response, the API, bad input."""
import hashlib
import json
import logging
import random
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bws.node import service, sync
from bws.node.api import ApiClient, ApiError
from bws.node.p2p import PROTOCOL_SYNC, TOPIC_BLOCK, TOPIC_TASK, TOPIC_TX, NetworkError, NetworkService, RemoteError
from bws.node.service import VALIDATION_MODES, Node, NodeSettings
from bws.spec.encoding import encode
from bws.node.store import transaction_id
from bws.spec.state_transition import compute_block_hash, compute_state_root
from tests.node.chain_factory import ChainFactory


def prometheus_values(url):
    """GET /metrics/prometheus read by Prometheus's own parser: sample name -> value."""
    with urllib.request.urlopen(url + "/metrics/prometheus", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def factory():
    return ChainFactory(miners=2, seed=7)


@pytest.fixture
def nodes(tmp_path, factory):
    started = []

    def start(name, peers=(), roles=("peer",), oracles=None):
        node = Node(NodeSettings(data_dir=tmp_path / name, genesis=factory.genesis, roles=set(roles), peers=list(peers),
                                 oracles=oracles))
        started.append(node.start())
        return node

    yield start
    for node in reversed(started):
        node.stop()


@pytest.mark.slow
def test_gossip_sync_api_and_garbage(nodes, factory):
    a = nodes("a")
    b = nodes("b", peers=[a.network.address], roles=("peer", "supervisor"))
    chain = factory.chain(6, miner_of=lambda h: h % 2)
    client = ApiClient(a.api.url)
    for block, _ in chain[:4]:
        answer = client.post("/block", {"block": encode(block).hex()})
        assert answer["status"] == "connected"
    wait_for(lambda: b.chain.head.height == 4, what="gossip of 4 blocks to b")
    assert b.chain.head.hash == compute_block_hash(chain[3][0])

    # An invalid block is refused with a reason and goes nowhere.
    forged = chain[4][0].__class__(header=chain[4][0].header.__class__(**{**vars(chain[4][0].header), "nonce": bytes(32)}),
                                  transactions=chain[4][0].transactions, proofs=chain[4][0].proofs)
    with pytest.raises(ApiError, match="nonce is not derived"):
        client.post("/block", {"block": encode(forged).hex()})

    # A transaction reaches the other node's mempool by gossip.
    tx = factory.transfer(factory.users[0], factory.users[1].address, 10**8, nonce=0)
    answer = client.post("/tx", {"transaction": encode(tx).hex()})
    wait_for(lambda: answer["id"] and bytes.fromhex(answer["id"]) in b.mempool, what="transaction gossip")
    assert client.get(f"/account/{factory.users[0].address.hex()}")["pending_nonce"] == 1

    # A late node catches up by request/response sync.
    client.post("/block", {"block": encode(chain[4][0]).hex()})
    c = nodes("c", peers=[b.network.address])
    wait_for(lambda: c.chain.head.height == 5, what="sync of c")
    assert c.chain.head.hash == a.chain.head.hash == compute_block_hash(chain[4][0])

    # A peer that sends garbage on every topic and on the sync protocol gets
    # rejects and errors; the nodes keep serving each other.
    rng = random.Random(3)
    junk = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))) for _ in range(10)]
    with NetworkService() as rogue:
        rogue.start()
        rogue_id = rogue.peer_id
        peer = rogue.connect(a.network.address)
        for topic in (TOPIC_BLOCK, TOPIC_TX, TOPIC_TASK):
            rogue.subscribe(topic, lambda data: True, lambda message: None)
        wait_for(lambda: peer in rogue.mesh_peers(TOPIC_BLOCK), what="rogue joining the mesh")
        for data in junk[:3]:
            for topic in (TOPIC_BLOCK, TOPIC_TX, TOPIC_TASK):
                rogue.publish(topic, data)
        rogue.publish(TOPIC_BLOCK, encode(forged))  # well-formed, but its nonce is not the iteration's
        wait_for(lambda: a.network.stats["rejected"] >= 4, what="a rejecting junk gossip and the forged block")
        assert not any(node.store.has_block(compute_block_hash(forged)) for node in (a, b, c))
        for data in junk:
            try:
                sync.decode_status(rogue.request(peer, PROTOCOL_SYNC, data, timeout=10))
            except (RemoteError, sync.SyncError):
                pass  # an error answer (or, for b"S", a status)
            except NetworkError:
                break  # scored down to a ban and disconnected: also fine; a hang is not
    status = sync.decode_status(b.network.request(a.network.peer_id, PROTOCOL_SYNC, sync.encode_request(sync.STATUS)))
    assert status.height == 5
    ApiClient(b.api.url).post("/block", {"block": encode(chain[5][0]).hex()})
    wait_for(lambda: a.chain.head.height == 6 and c.chain.head.height == 6, what="the next block reaching a and c")
    assert client.get("/status")["head"]["height"] == 6
    task = client.get(f"/task/{factory.task_id.hex()}")
    assert [entry["height"] for entry in task["blocks"]] == [1, 2, 3, 4, 5, 6]
    assert task["blocks"][0]["message_digest"] == chain[0][0].header.message_digest.hex()
    metrics = client.get("/metrics")
    assert metrics["chain"]["blocks_rejected"] >= 1

    # What an operator watches: a's peers (b dialed it; the rogue banned if it was scored down far enough),
    # its health, and the Prometheus text with the numbers the node itself holds.
    peers = client.get("/peers")
    assert {peer["peer_id"] for peer in peers["connected"]} == set(a.network.peers()) >= {b.network.peer_id}
    assert all(peer["address"].startswith("/ip4/127.0.0.1/tcp/") and peer["direction"] in ("inbound", "outbound")
               and peers["ban_threshold"] < peer["score"] <= 0 for peer in peers["connected"])
    banned = {peer["peer_id"]: peer["seconds_left"] for peer in peers["banned"]}
    assert (rogue_id in banned) == (a.network.stats["bans"] >= 1) and all(0 < left <= 300 for left in banned.values())
    health = client.get("/health")
    assert health["ok"] is True and health["height"] == 6 and 0 <= health["seconds_since_head_change"] < 60
    assert health["peers"] == len(a.network.peers())
    values = prometheus_values(a.api.url)
    assert values["bws_head_height"] == 6 and values["bws_peers"] == len(a.network.peers())
    assert values["bws_mempool_transactions"] == len(a.mempool)
    assert values["bws_chain_imports_total"] == a.chain.metrics["imports"] >= 6
    assert values["bws_chain_last_import_seconds"] == a.chain.metrics["last_import_seconds"] > 0
    assert values["bws_chain_blocks_rejected_total"] == a.chain.metrics["blocks_rejected"] >= 1


@pytest.mark.parametrize("middle_replays", [False, True], ids=["trusting", "replaying"])
def test_a_trusting_node_imports_gossiped_blocks_and_relays_none(nodes, factory, middle_replays, monkeypatch):
    """Issue #14: in a line a - middle - c, a block a publishes reaches c by gossip through a replaying middle
    node; a middle node without replay imports it itself, once, and relays nothing it could not check: c
    fetches it by sync and replays it. /status says which kind each node is."""
    monkeypatch.setattr(service, "SYNC_INTERVAL", 3600.0)   # no periodic sync: the block moves by gossip or not at all
    a = nodes("a")
    middle = nodes("middle", peers=[a.network.address],
                   **({"roles": ("peer", "verifier"), "oracles": factory.oracles} if middle_replays else {}))
    c = nodes("c", peers=[middle.network.address], roles=("peer", "verifier"), oracles=factory.oracles)
    wait_for(lambda: middle.network.peer_id in a.network.mesh_peers(TOPIC_BLOCK)
             and c.network.peer_id in middle.network.mesh_peers(TOPIC_BLOCK), what="the subscriptions")
    time.sleep(2.5)   # two heartbeats: the meshes form, so a relay reaches c
    assert ApiClient(middle.api.url).get("/status")["validation"] == ("replay" if middle_replays else "trusting")
    assert ApiClient(c.api.url).get("/status")["validation"] == "replay"
    assert a.status()["validation_detail"] == VALIDATION_MODES["trusting"]

    block, _ = factory.chain(1)[0]
    assert a.submit_block(encode(block))["status"] == "connected"
    digest = hashlib.sha256(encode(block)).digest()
    if middle_replays:
        wait_for(lambda: c.chain.head.height == 1 == middle.chain.head.height, what="the block relayed to c")
        assert digest in c.network.gossip_times(TOPIC_BLOCK)
        assert middle.network.stats["ignored"] == 0
    else:
        wait_for(lambda: middle.network.stats["ignored"] == 1, what="the middle node's verdict")
        assert middle.chain.head.hash == compute_block_hash(block)   # imported before the verdict
        time.sleep(1.0)   # what a relay would take, many times over
        assert c.chain.head.height == 0 and digest not in c.network.gossip_times(TOPIC_BLOCK)
        assert c.sync_with(middle.network.peer_id) == 1 and c.chain.head.hash == compute_block_hash(block)
        assert digest not in middle.network.gossip_times(TOPIC_BLOCK)   # never delivered to on_message
    assert middle.counters["gossip_blocks"] == 1 and middle.chain.metrics["imports"] == 1
    assert middle.network.stats["rejected"] == 0


def test_api_errors_name_the_problem(nodes, factory):
    node = nodes("solo")

    def call(method, path, body=None, headers=None):
        request = urllib.request.Request(node.api.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    assert call("GET", "/status")[0] == 200
    status, health = call("GET", "/health")
    assert status == 200 and health.pop("seconds_since_head_change") < 60
    assert health == {"ok": True, "height": 0, "peers": 0}
    assert call("GET", "/peers") == (200, {"connected": [], "banned": [], "ban_threshold": -100.0})
    values = prometheus_values(node.api.url)
    assert values["bws_head_height"] == 0 and values["bws_peers"] == 0 and values["bws_mempool_transactions"] == 0
    assert "bws_chain_last_import_seconds" not in values   # no block imported yet
    assert call("GET", "/metrics?format=prometheus") == (400, {
        "error": "/metrics takes no query parameters, got 'format'; the Prometheus text is at /metrics/prometheus"})
    assert call("POST", "/health", b"{}") == (405, {"error": "POST is not allowed on /health"})
    assert call("GET", "/block/0")[1]["height"] == 0
    assert call("GET", "/nowhere") == (404, {"error": "no such path /nowhere"})
    assert call("POST", "/status")[0] == 405
    assert call("GET", "/block/zz")[1]["error"] == "block hash must be 64 hex characters, got 2"
    assert call("GET", "/block/" + "00" * 32)[0] == 404
    assert call("GET", "/account/abc")[0] == 400
    assert call("GET", f"/task/{next(iter(factory.genesis_state.tasks)).hex()}")[1]["status"] == "training"
    status, answer = call("POST", "/tx", b"not json")
    assert status == 400 and "not JSON" in answer["error"]
    status, answer = call("POST", "/tx", json.dumps({"transaction": "00ff"}).encode())
    assert status == 400 and answer["error"].startswith("transaction rejected: not a signed transaction")
    status, answer = call("POST", "/tx", b"x", headers={"Content-Length": str(10**9)})
    assert status == 413
    tx = factory.transfer(factory.users[0], factory.users[1].address, 5, nonce=0)
    assert call("POST", "/tx", json.dumps({"transaction": encode(tx).hex()}).encode())[0] == 200
    status, answer = call("POST", "/tx", json.dumps({"transaction": encode(tx).hex()}).encode())
    assert status == 400 and "already in the mempool" in answer["error"]


@pytest.mark.slow
def test_partitioned_nodes_reorg_to_the_heavier_branch(nodes, factory):
    """Two nodes mine apart, then meet: both end on the branch with more work,
    with the spec's state root, and the transaction of the losing branch is
    back in the loser's mempool."""
    a = nodes("a2")
    b = nodes("b2")
    tx = factory.transfer(factory.users[0], factory.users[1].address, 3 * 10**8, nonce=0)
    short = factory.chain(1, miner_of=lambda h: 0)
    first, _ = factory.next_block(short[-1][1], miner=0, transactions=[tx])
    branch_a = [blk for blk, _ in short] + [first]
    branch_b = [blk for blk, _ in factory.chain(4, miner_of=lambda h: 1)]
    for block in branch_a:
        assert a.submit_block(encode(block))["status"] == "connected"
    assert len(a.mempool) == 0
    for block in branch_b:
        assert b.submit_block(encode(block))["status"] == "connected"
    a.network.connect(b.network.address)
    wait_for(lambda: a.chain.head.hash == compute_block_hash(branch_b[-1]), what="a to reorg onto b's branch")
    assert compute_state_root(a.chain.head_state) == branch_b[-1].header.state_root
    assert b.chain.head.hash == compute_block_hash(branch_b[-1])
    assert a.chain.metrics["reorgs"] == 1
    assert [record.tx_id for record in a.mempool.transactions()] == [transaction_id(tx)]


@pytest.mark.parametrize("host, url_host", [("::1", "[::1]"), ("0.0.0.0", "127.0.0.1")])
def test_api_host_is_where_the_api_listens_and_the_log_says_so(tmp_path, factory, caplog, host, url_host):
    with caplog.at_level(logging.INFO, logger="bws.node"):
        node = Node(NodeSettings(data_dir=tmp_path / "n", genesis=factory.genesis, api_host=host)).start()
    try:
        assert node.api.url == f"http://{url_host}:{node.api.port}"
        assert ApiClient(node.api.url).get("/health")["ok"] is True
        assert f"HTTP API listening on {host} port {node.api.port}" in caplog.text
        assert ("no authentication" in caplog.text) is (host == "0.0.0.0")
    finally:
        node.stop()


def test_gossip_relays_no_side_block_the_cheap_checks_refuse(tmp_path, factory):
    """Issue #14's h2: a side block passing the stateless checks was relayed by every node. One its miner
    could not have made at the head (no stake) is now IGNOREd, neither relayed nor stored, its peer not blamed;
    an honest competing block is relayed."""
    from bws.node.p2p import Verdict

    node = Node(NodeSettings(data_dir=tmp_path, genesis=factory.genesis, roles={"peer", "verifier"},
                             oracles=factory.oracles))
    try:
        for block, _ in factory.chain(2, miner_of=lambda h: 0):
            assert node.submit_block(encode(block))["status"] == "connected"
        honest, _ = factory.next_block(factory.genesis_state, miner=1)
        forged = factory.forge(honest, ChainFactory(miners=1, seed=99).miners[0])
        assert node._validate_gossip_block(encode(forged)) == Verdict.IGNORE
        assert node._validate_gossip_block(encode(honest)) == Verdict.ACCEPT
        assert not node.store.has_block(compute_block_hash(forged))
    finally:
        node.store.close()
