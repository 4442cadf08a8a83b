"""Gossip latency and request/response throughput of the BWS networking layer.

N nodes, each in its own process on loopback (as in the devnet), every node
connected to every other. Node 0 publishes paced ~10 KB "blocks" on
`bws/block/1`; every other node records when each arrives (publisher and
receivers share the loopback clock). Then node 1 fetches a 4 MB payload from
node 0 over `/bws/data/1` a few times.

    .venv/bin/python bench/p2p.py                 # 4 nodes, prints and updates bench/RESULTS.md
    .venv/bin/python bench/p2p.py --nodes 6 --no-write
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import sys
import time

from bws.node.p2p import PROTOCOL_DATA, TOPIC_BLOCK, seed_from_text
from bws.node.p2p_peer import PeerProcess

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
BEGIN, END = "<!-- p2p:begin -->", "<!-- p2p:end -->"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(args: argparse.Namespace) -> dict:
    nodes: list[PeerProcess] = []
    try:
        nodes.extend(PeerProcess(seed_from_text(f"bench-{index}"), wait=False) for index in range(args.nodes))
        for node in nodes:
            node.wait_started()
        for node in nodes:
            node.call("subscribe", topic=TOPIC_BLOCK)
        for index, node in enumerate(nodes):
            for earlier in nodes[:index]:
                node.call("connect", addr=earlier.addr)
        nodes[0].call("serve", protocol=PROTOCOL_DATA, response_bytes=args.payload_bytes)
        time.sleep(2.5)   # two GossipSub heartbeats: the meshes form

        nodes[0].call("publish", topic=TOPIC_BLOCK, count=args.messages, size=args.size,
                      interval=args.interval, timeout=args.messages * args.interval + 60)
        expected = args.messages * (args.nodes - 1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reports = [node.call("received", topic=TOPIC_BLOCK) for node in nodes[1:]]
            if sum(report["count"] for report in reports) >= expected:
                break
            time.sleep(0.2)
        latencies = [latency for report in reports for latency in report["latencies"]]
        delivered = sum(len(set(report["sequences"])) for report in reports)
        duplicates = sum(report["count"] for report in reports) - delivered

        seconds = [nodes[1].call("request", peer=nodes[0].peer_id, protocol=PROTOCOL_DATA, size=64)["seconds"]
                   for _ in range(args.requests)]
        stop_seconds = [node.stop() for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    return {
        "p50_ms": 1000 * percentile(latencies, 0.50) if latencies else float("nan"),
        "p99_ms": 1000 * percentile(latencies, 0.99) if latencies else float("nan"),
        "delivered": delivered, "expected": expected, "duplicates": duplicates,
        "throughput_mb_s": args.payload_bytes / statistics.median(seconds) / 1e6,
        "request_ms": 1000 * statistics.median(seconds),
        "stop_max_s": max(stop_seconds),
    }


def report(args: argparse.Namespace, figures: dict) -> str:
    command = "python bench/p2p.py " + " ".join(sys.argv[1:])
    return "\n".join([
        BEGIN,
        "## p2p (node/p2p.py, py-libp2p)",
        "",
        f"`{command.strip()}` — {datetime.date.today()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end (the machine is shared), "
        f"Python {platform.python_version()}; {args.nodes} nodes, one process each, full mesh on loopback.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| gossip latency p50, {args.size // 1000} KB blocks every {args.interval * 1000:g} ms "
        f"| {figures['p50_ms']:.1f} ms |",
        f"| gossip latency p99 | {figures['p99_ms']:.1f} ms |",
        f"| blocks delivered (receiver × block) | {figures['delivered']} of {figures['expected']}, "
        f"{figures['duplicates']} duplicates |",
        f"| request/response, {args.payload_bytes / 1e6:g} MB response (median of {args.requests}) "
        f"| {figures['request_ms']:.0f} ms, {figures['throughput_mb_s']:.1f} MB/s |",
        f"| slowest stop() | {figures['stop_max_s']:.2f} s |",
        END,
    ])


def write_section(section: str) -> None:
    text = open(RESULTS).read() if os.path.exists(RESULTS) else "# Benchmark results\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(RESULTS, "w") as out:
        out.write(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4, help="node processes (default 4)")
    parser.add_argument("--messages", type=int, default=200, help="blocks published (default 200)")
    parser.add_argument("--size", type=int, default=10_000, help="block size in bytes (default 10000)")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between blocks (default 0.02)")
    parser.add_argument("--payload-bytes", type=int, default=4_000_000, help="request/response payload")
    parser.add_argument("--requests", type=int, default=5, help="request/response repetitions")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    figures = run(args)
    section = report(args, figures)
    print(section.split("\n", 1)[1].rsplit("\n", 1)[0])
    if not args.no_write:
        write_section(section)
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
