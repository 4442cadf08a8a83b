"""The API's operator paths (/health, /peers, /metrics/prometheus) against a fake backend: routing, refusals,
the Prometheus text as a Prometheus parser reads it, the `bws node peers` table. tests/node/test_node_network.py
asks a real node the same."""
import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bws.node import prometheus
from bws.node.api import ApiError, ApiServer, TextAnswer, route
from bws.node.commands.node import format_peers

METRICS = {
    "uptime_seconds": 12.5, "height": 7, "seconds_since_head_change": 3.2,
    "chain": {"blocks_connected": 7, "blocks_rejected": 1, "reorgs": 0, "side_blocks": 0, "orphans": 2,
              "transition_seconds": 0.05, "transitions": 8, "blocks_not_validated": 0, "imports": 7,
              "import_seconds": 0.0875, "last_import_seconds": 0.0125, "mean_transition_ms": 6.25},
    "node": {"gossip_blocks": 4, "gossip_transactions": 0, "iteration_messages": 0, "synced_blocks": 3,
             "sync_failures": 0},
    "mempool": {"transactions": 2, "bytes": 410},
    "network": {"published": 9, "delivered": 4, "delivery_dropped": 0, "rejected": 1, "ignored": 0,
                "requests_served": 5, "requests_refused": 0, "bans": 1, "peers": 3},
    "roles": {"enabled": ["miner", "peer"], "address": "ab" * 20,
              "counters": {"blocks_mined": 5, "replays_total": 2, "replay.odd-name": 1},
              "gauges": {"last_loss": 0.5, "last_iteration": {"task": "cd" * 32, "iteration": 11}, "flag": True}},
}
PEERS = {"connected": [{"peer_id": "12D3KooWAAA", "address": "/ip4/127.0.0.1/tcp/4001", "direction": "outbound",
                        "score": -25.0},
                       {"peer_id": "12D3KooWBBBBBB", "address": None, "direction": "inbound", "score": 0.0}],
         "banned": [{"peer_id": "12D3KooWCCC", "seconds_left": 287.4}], "ban_threshold": -100.0}


class FakeNode:
    def health(self):
        return {"ok": True, "height": 7, "seconds_since_head_change": 3.2, "peers": 3}

    def peers(self):
        return PEERS

    def metrics(self):
        return METRICS


def test_operator_paths_reach_their_backend_calls():
    node = FakeNode()
    assert route("GET", "/health", b"")(node)["ok"] is True
    assert route("GET", "/peers/", b"")(node) is PEERS
    assert route("GET", "/metrics", b"")(node) is METRICS
    answer = route("GET", "/metrics/prometheus", b"")(node)
    assert isinstance(answer, TextAnswer) and answer.content_type == prometheus.CONTENT_TYPE
    assert route("GET", "/status?", b"")   # an empty query is no parameter


@pytest.mark.parametrize("method, path, status, message", [
    ("GET", "/metrics?format=prometheus", 400,
     "/metrics takes no query parameters, got 'format'; the Prometheus text is at /metrics/prometheus"),
    ("GET", "/metrics/prometheus?format=json&x=", 400,
     "/metrics/prometheus takes no query parameters, got 'format', 'x'"),
    ("GET", "/peers?banned", 400, "/peers takes no query parameters, got 'banned'"),
    ("GET", "/health?&", 400, "/health takes no query parameters, got '&'"),
    ("POST", "/health", 405, "POST is not allowed on /health"),
    ("DELETE", "/peers", 405, "DELETE is not allowed on /peers"),
    ("POST", "/metrics/prometheus", 405, "POST is not allowed on /metrics/prometheus"),
    ("GET", "/metrics/openmetrics", 404, "/metrics takes 0 path argument(s), got 1"),
    ("GET", "/peers/12D3KooWAAA", 404, "/peers takes 0 path argument(s), got 1"),
])
def test_bad_requests_say_what_was_wrong(method, path, status, message):
    with pytest.raises(ApiError) as caught:
        route(method, path, b"")
    assert (caught.value.status, caught.value.message) == (status, message)


def test_prometheus_text_has_every_number_of_the_json_once_with_help_and_type():
    text = prometheus.render(METRICS)
    families = {family.name: family for family in text_string_to_metric_families(text)}

    def value(name):
        (sample,) = families[name].samples
        return sample.value

    assert (families["bws_head_height"].type, value("bws_head_height")) == ("gauge", 7)
    assert (families["bws_peers"].type, value("bws_peers")) == ("gauge", 3)
    assert (families["bws_mempool_transactions"].type, value("bws_mempool_transactions")) == ("gauge", 2)
    assert (families["bws_chain_last_import_seconds"].type, value("bws_chain_last_import_seconds")) == ("gauge", 0.0125)
    assert families["bws_chain_imports"].type == "counter"
    assert families["bws_chain_imports"].samples[0].name == "bws_chain_imports_total"
    assert value("bws_chain_imports") == 7 and value("bws_chain_import_seconds") == 0.0875
    assert value("bws_head_unchanged_seconds") == 3.2 and value("bws_network_bans") == 1
    # the roles layer's section: its counters and gauges by its own convention, strings and booleans left out
    assert families["bws_roles_blocks_mined"].type == "counter" and value("bws_roles_blocks_mined") == 5
    assert families["bws_roles_replays"].samples[0].name == "bws_roles_replays_total"
    assert value("bws_roles_replay_odd_name") == 1
    assert families["bws_roles_last_loss"].type == "gauge" and value("bws_roles_last_iteration_iteration") == 11
    assert "bws_roles_flag" not in families and not any("enabled" in name or "address" in name for name in families)
    # the mean is derived from two counters; a scraper divides their rates over its own window
    assert "bws_chain_mean_transition_ms" not in families
    assert len(families) == len(list(numbers_in(METRICS))) - 1   # every number but the mean
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("#"):
            assert lines[index - 2].startswith("# HELP ") and lines[index - 1].startswith("# TYPE ")


def numbers_in(document):
    for value in document.values():
        if isinstance(value, dict):
            yield from numbers_in(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield value


def test_prometheus_leaves_out_a_timing_not_measured_yet():
    families = {family.name for family in text_string_to_metric_families(
        prometheus.render({"height": 0, "chain": {"last_import_seconds": None, "imports": 0}}))}
    assert families == {"bws_head_height", "bws_chain_imports"}


def test_the_server_answers_prometheus_as_text_and_errors_as_json():
    server = ApiServer(FakeNode(), 0).start()
    try:
        with urllib.request.urlopen(server.url + "/metrics/prometheus", timeout=10) as response:
            assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert "bws_head_height 7\n" in response.read().decode()
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(server.url + "/peers?all=1", timeout=10)
        assert caught.value.code == 400 and caught.value.headers["Content-Type"] == "application/json"
        assert json.loads(caught.value.read()) == {"error": "/peers takes no query parameters, got 'all'"}
    finally:
        server.stop()


def test_peers_table():
    assert format_peers(PEERS).splitlines() == [
        "connected peers: 2 (banned at score -100)",
        "PEER ID         DIRECTION  ADDRESS                  SCORE",
        "12D3KooWAAA     outbound   /ip4/127.0.0.1/tcp/4001  -25.0",
        "12D3KooWBBBBBB  inbound    ?                        0.0",
        "banned peers: 1",
        "PEER ID      BANNED FOR",
        "12D3KooWCCC  287 s",
    ]
    assert format_peers({"connected": [], "banned": [], "ban_threshold": -100.0}) == \
        "connected peers: 0 (banned at score -100)\nbanned peers: 0"
