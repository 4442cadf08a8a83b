"""A scriptable p2p peer in its own process, for loopback experiments (tests, bench/p2p.py).

`python -m bws.node.p2p_peer --seed HEX` starts a `NetworkService`, prints one
JSON line `{"addr": ...}` and then answers one JSON line for each JSON command
line on stdin:

    {"op": "connect", "addr": MULTIADDR}
    {"op": "subscribe", "topic": T, "reject_prefix": HEX, "validator_seconds": S}
                                    # validator rejects data with that prefix, takes S seconds
    {"op": "serve", "protocol": P, "response_bytes": N}     # answers N deterministic bytes (0: echo)
    {"op": "publish", "topic": T, "count": K, "size": N, "interval": S, "prefix": HEX}
    {"op": "request", "peer": ID, "protocol": P, "size": N, "timeout": S}
    {"op": "received", "topic": T}                          # count and delivery latencies so far
    {"op": "status"}                                        # peers, banned peers, stats, outbound queues
    {"op": "garbage", "peer": ID, "port": N, "protocols": [...], "rounds": R}
    {"op": "stop"}

Published messages carry their sequence number and send time, so receivers
report latency with the shared loopback clock. `PeerProcess` drives one such
process from Python.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import random
import socket
import struct
import subprocess
import sys
import threading
import time

STAMP = struct.Struct(">Qd")   # sequence number, time.time() at publish


def deterministic_bytes(size: int) -> bytes:
    """`size` bytes that both ends can recompute (to check a transfer without sending a hash)."""
    block = hashlib.sha256(b"BWS/p2p-peer").digest() * 2048   # 64 KiB
    return (block * (size // len(block) + 1))[:size]


class _Peer:
    def __init__(self, service):
        self.service = service
        self.received: dict[str, list[tuple[int, float]]] = {}
        self.lock = threading.Lock()

    def handle(self, command: dict) -> dict:
        op = command["op"]
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            return {"error": f"unknown op {op!r}"}
        try:
            return {"ok": True, **(handler(**{k: v for k, v in command.items() if k != "op"}) or {})}
        except Exception as error:
            return {"error": f"{type(error).__name__}: {error}"}

    def op_connect(self, addr):
        return {"peer": self.service.connect(addr)}

    def op_subscribe(self, topic, reject_prefix="", validator_seconds=0.0):
        prefix = bytes.fromhex(reject_prefix)
        self.received.setdefault(topic, [])

        def validate(data: bytes) -> bool:
            time.sleep(validator_seconds)
            if len(data) < STAMP.size:
                return False
            return not (prefix and data.startswith(prefix))

        def on_message(message) -> None:
            sequence, sent = STAMP.unpack_from(message.data[-STAMP.size:])
            with self.lock:
                self.received[topic].append((sequence, message.received_at - sent))

        self.service.subscribe(topic, validate, on_message)

    def op_serve(self, protocol, response_bytes=0):
        blob = deterministic_bytes(response_bytes) if response_bytes else None
        self.service.register_handler(protocol, lambda peer, request: blob if blob is not None else request)

    def op_publish(self, topic, count=1, size=64, interval=0.0, prefix=""):
        head = bytes.fromhex(prefix)
        padding = b"\0" * max(0, size - len(head) - STAMP.size)
        for sequence in range(count):
            self.service.publish(topic, head + padding + STAMP.pack(sequence, time.time()))
            if interval:
                time.sleep(interval)

    def op_request(self, peer, protocol, size=0, timeout=30.0):
        started = time.perf_counter()
        response = self.service.request(peer, protocol, deterministic_bytes(size), timeout=timeout)
        return {"bytes": len(response), "seconds": time.perf_counter() - started,
                "sha256": hashlib.sha256(response).hexdigest()}

    def op_received(self, topic):
        with self.lock:
            entries = list(self.received.get(topic, []))
        return {"count": len(entries), "sequences": sorted(s for s, _ in entries),
                "latencies": [latency for _, latency in entries]}

    def op_status(self):
        peers = self.service.peers()
        return {"peer_id": self.service.peer_id, "peers": peers,
                "scores": {peer: self.service.peer_score(peer) for peer in peers},
                "banned": self.service.banned_peers(), "stats": dict(self.service.stats),
                "outbound_queues": self.service.outbound_queues()}

    def op_garbage(self, peer, port, protocols, rounds=3, seed=0):
        """Misbehave towards `peer` on every protocol: random bytes, truncated frames,
        oversize frames, raw TCP noise. Returns, per protocol, how many garbage
        streams were opened and written (a banned peer's attempts fail)."""
        from .p2p_framing import FRAME_MAGIC, HEADER, KIND_END, KIND_MORE
        rng = random.Random(seed)
        payloads = [
            lambda: rng.randbytes(rng.randrange(1, 4096)),
            lambda: HEADER.pack(FRAME_MAGIC, KIND_END, 1000) + b"truncated",
            lambda: HEADER.pack(FRAME_MAGIC, KIND_MORE, 0xFFFFFFFF) + rng.randbytes(100),
            lambda: b"\xff" * 10 + rng.randbytes(64),
        ]
        written = dict.fromkeys(protocols, 0)
        for _ in range(rounds):
            for make in payloads:
                for protocol in protocols:
                    written[protocol] += self.service._call(
                        _write_raw, self.service._host, peer, protocol, make(), timeout=5.0)
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                raw.sendall(rng.randbytes(2048))
        return {"written": written}

    def op_stop(self):
        self.service.stop()


async def _write_raw(host, peer: str, protocol: str, data: bytes) -> int:
    """Open a stream on `protocol`, write `data`, half-close, wait for the answer or a reset."""
    import trio
    from libp2p.peer.id import ID
    try:
        with trio.fail_after(3.0):
            stream = await host.new_stream(ID.from_base58(peer), [protocol])
            await stream.write(data)
            await stream.close()
            try:
                await stream.read(4096)
            except Exception:
                pass
        return 1
    except Exception:
        return 0


def main(argv: list[str] | None = None) -> int:
    from .p2p import NetworkService

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", required=True, help="32-byte key seed, hex")
    parser.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    args = parser.parse_args(argv)
    service = NetworkService()
    address = service.start(args.listen, bytes.fromhex(args.seed))
    peer = _Peer(service)
    print(json.dumps({"addr": address}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        print(json.dumps(peer.handle(command)), flush=True)
        if command["op"] == "stop":
            return 0
    service.stop()
    return 0


class PeerProcess:
    """Runs `python -m bws.node.p2p_peer` and sends it commands."""

    def __init__(self, seed: bytes, listen: str = "/ip4/127.0.0.1/tcp/0", start_timeout: float = 30.0,
                 wait: bool = True):
        """Launch the process; with wait=False call `wait_started()` later (start several at once)."""
        self._start_timeout = start_timeout
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bws.node.p2p_peer", "--seed", seed.hex(), "--listen", listen],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_lines, daemon=True).start()
        if wait:
            self.wait_started()

    def wait_started(self) -> "PeerProcess":
        self.addr = self._next(self._start_timeout)["addr"]
        self.peer_id = self.addr.rsplit("/p2p/", 1)[1]
        self.port = int(self.addr.split("/tcp/")[1].split("/")[0])
        return self

    def _read_lines(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"peer process gave no answer within {timeout} s") from None
        if line is None:
            raise RuntimeError(f"peer process exited with code {self.process.wait()}")
        return json.loads(line)

    def call(self, op: str, timeout: float = 60.0, **arguments) -> dict:
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        answer = self._next(timeout)
        if "error" in answer:
            raise RuntimeError(f"{op} failed in the peer process: {answer['error']}")
        return answer

    def stop(self, timeout: float = 15.0) -> float:
        """Stop the peer; returns the seconds its stop() took (kills it if it hangs)."""
        started = time.perf_counter()
        try:
            self.call("stop", timeout=timeout)
            self.process.wait(timeout)
        except Exception:
            self.process.kill()
            self.process.wait()
            raise
        return time.perf_counter() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    sys.exit(main())
