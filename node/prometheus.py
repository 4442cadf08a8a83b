"""The node's /metrics document in the Prometheus text exposition format (version 0.0.4), for GET /metrics/prometheus.

Rendered from the very document GET /metrics answers as JSON, so both show the same numbers. The node's own
fields are named, typed and explained in NODE_METRICS (the gauges an operator watches first: bws_head_height,
bws_peers, bws_mempool_transactions, bws_chain_last_import_seconds). Every other number becomes a metric named
`bws_<section>_<field>`: the roles layer's section follows its convention, fields under "counters" are counters,
under "gauges" gauges; any other number is `untyped`. Strings (addresses, role names) and booleans are states,
not measurements, and are left out; so is a field without a value yet (null), and a mean the counters give.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "bws_"


@dataclass(frozen=True)
class Family:
    name: str    # without the _total a counter's name ends with
    kind: str    # counter, gauge or untyped
    help: str


def _counter(name: str, help_text: str) -> Family:
    return Family(name, "counter", help_text)


def _gauge(name: str, help_text: str) -> Family:
    return Family(name, "gauge", help_text)


# A /metrics field (its path in the JSON document) -> its metric; None: derived from others, left out.
NODE_METRICS: dict[tuple[str, ...], Family | None] = {
    ("uptime_seconds",): _gauge("bws_uptime_seconds", "Seconds since the node started."),
    ("height",): _gauge("bws_head_height", "Height of the main chain's head."),
    ("seconds_since_head_change",): _gauge(
        "bws_head_unchanged_seconds", "Seconds since the head last moved (since the start if it has not)."),
    ("chain", "blocks_connected"): _counter("bws_chain_blocks_connected", "Blocks connected to the main chain."),
    ("chain", "blocks_rejected"): _counter("bws_chain_blocks_rejected", "Blocks found invalid."),
    ("chain", "reorgs"): _counter("bws_chain_reorgs", "Reorganizations onto a branch with more work."),
    ("chain", "side_blocks"): _counter("bws_chain_side_blocks", "Valid-looking blocks stored off the main chain."),
    ("chain", "side_blocks_refused"): _counter(
        "bws_chain_side_blocks_refused", "Side blocks refused by the cheap checks against the head."),
    ("chain", "side_blocks_pruned"): _counter(
        "bws_chain_side_blocks_pruned", "Side blocks deleted once deeper than the kept depth below the head."),
    ("chain", "orphans"): _counter("bws_chain_orphans", "Blocks that arrived before their parent."),
    ("chain", "blocks_not_validated"): _counter(
        "bws_chain_blocks_not_validated", "Blocks put off because their iteration's inputs could not be fetched."),
    ("chain", "assumed_valid"): _counter(
        "bws_chain_assumed_valid", "Blocks deep under a peer's head taken without their unavailable replay."),
    ("chain", "transitions"): _counter("bws_chain_transitions", "State transitions run (blocks validated)."),
    ("chain", "transition_seconds"): _counter("bws_chain_transition_seconds", "Seconds spent in state transitions."),
    ("chain", "mean_transition_ms"): None,   # rate(transition_seconds) / rate(transitions), over any window
    ("chain", "imports"): _counter("bws_chain_imports", "Blocks stored after validation (connected, side, reorg)."),
    ("chain", "import_seconds"): _counter(
        "bws_chain_import_seconds", "Seconds spent validating and storing blocks (replay inputs' fetch excluded)."),
    ("chain", "last_import_seconds"): _gauge(
        "bws_chain_last_import_seconds", "Seconds the latest block import took (validation and store commit)."),
    ("node", "gossip_blocks"): _counter("bws_node_gossip_blocks", "Blocks received by gossip."),
    ("node", "gossip_transactions"): _counter("bws_node_gossip_transactions", "Transactions received by gossip."),
    ("node", "iteration_messages"): _counter("bws_node_iteration_messages", "Iteration messages received by gossip."),
    ("node", "synced_blocks"): _counter("bws_node_synced_blocks", "Blocks imported by request/response sync."),
    ("node", "sync_failures"): _counter("bws_node_sync_failures", "Syncs with a peer that failed."),
    ("node", "rebroadcast_transactions"): _counter("bws_node_rebroadcast_transactions",
                                                   "Pending transactions gossiped again, once a minute."),
    ("mempool", "transactions"): _gauge("bws_mempool_transactions", "Transactions waiting in the mempool."),
    ("mempool", "bytes"): _gauge("bws_mempool_bytes", "Encoded bytes of the mempool's transactions."),
    ("network", "peers"): _gauge("bws_peers", "Peers connected now."),
    ("network", "published"): _counter("bws_network_published", "Gossip messages this node published."),
    ("network", "delivered"): _counter("bws_network_delivered", "Gossip messages accepted from peers."),
    ("network", "delivery_dropped"): _counter(
        "bws_network_delivery_dropped", "Gossip deliveries dropped because the node was not keeping up."),
    ("network", "rejected"): _counter("bws_network_rejected", "Gossip messages rejected (the sender scored down)."),
    ("network", "ignored"): _counter("bws_network_ignored", "Gossip messages ignored without a penalty."),
    ("network", "requests_served"): _counter("bws_network_requests_served", "Requests from peers answered."),
    ("network", "requests_refused"): _counter("bws_network_requests_refused", "Requests from peers refused."),
    ("network", "bans"): _counter("bws_network_bans", "Peers banned for a score below the threshold."),
}


def render(document: dict) -> str:
    """The exposition of a /metrics document: # HELP, # TYPE and one sample per metric, in the document's order."""
    lines = []
    seen: set[str] = set()
    for path, value in _numbers(document, ()):
        family = _family(path)
        if family is None or family.name in seen:   # a roles field that sanitizes to a name already given
            continue
        seen.add(family.name)
        # In this format a counter's HELP and TYPE lines name its sample, _total included (OpenMetrics would not).
        sample = family.name + "_total" if family.kind == "counter" else family.name
        lines += [f"# HELP {sample} {_escape_help(family.help)}", f"# TYPE {sample} {family.kind}",
                  f"{sample} {_format_value(value)}"]
    return "\n".join(lines) + "\n"


def _numbers(document: dict, path: tuple[str, ...]):
    for key, value in document.items():
        if isinstance(value, dict):
            yield from _numbers(value, path + (str(key),))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield path + (str(key),), value


def _family(path: tuple[str, ...]) -> Family | None:
    if path in NODE_METRICS:
        return NODE_METRICS[path]
    where = ".".join(path)
    words = [word for word in path if word not in ("counters", "gauges")]
    name = PREFIX + _metric_name("_".join(words))
    if "counters" in path[:-1]:
        # its sample is <name>_total; a field named like "served_total" must not give "..._total_total"
        return _counter(name.removesuffix("_total"), f"/metrics field {where}.")
    if "gauges" in path[:-1]:
        return _gauge(name, f"/metrics field {where}.")
    return Family(name, "untyped", f"/metrics field {where}.")


def _metric_name(text: str) -> str:
    """Prometheus names are [a-zA-Z_:][a-zA-Z0-9_:]*; the prefix makes the first character a letter."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
