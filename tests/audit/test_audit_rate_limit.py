"""`/bws/audit/1` trace requests are rate-limited per peer (issue #14): a
token bucket per peer id, a bounded number of peers, and a refusal that
names the limit and when to ask again, which an auditor honours."""
from __future__ import annotations

import struct
from types import SimpleNamespace

from bws.node.audit import (
    MESSAGE_REQUESTS_BURST, NOT_FOUND, REFUSED, REQUEST_OP, REQUEST_TRACE, TRACE_REQUESTS_BURST, AuditServer,
    decode_messages_answer, encode_signed_trace, messages_request, retry_after,
)
from bws.node.audit_sources import NetworkSource
from bws.node.rate_limit import PeerRateLimiter, RateLimit
from bws.node.roles.context import MessageLog
from bws.node.roles.data import FOUND
from bws.node.wallet import Account
from bws.spec import containers as C
from bws.spec.hashing import ZERO_HASH
from bws.spec.pouw import compute_message_digest, sign_iteration_message

MINER = Account(bytes([7]) * 32)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_token_bucket_per_peer_refills_at_its_rate():
    clock = Clock()
    limiter = PeerRateLimiter(RateLimit(burst=2, per_second=0.5, peers_tracked=8), clock)
    assert [limiter.take("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("a") == 2.0            # one token comes back in 2 s
    assert limiter.take("b") == 0.0            # another peer has its own bucket
    clock.now += 2.0
    assert limiter.take("a") == 0.0 and limiter.take("a") == 2.0


def test_the_peers_tracked_are_bounded():
    limiter = PeerRateLimiter(RateLimit(burst=1, per_second=0.001, peers_tracked=3), Clock())
    for peer in "abcde":
        limiter.take(peer)
    assert len(limiter) == 3
    assert limiter.take("e") > 0               # the most recent peers keep their spent buckets


def test_a_peer_asking_for_traces_too_fast_is_refused_while_another_is_served():
    server = AuditServer(SimpleNamespace(account=MINER, messages=MessageLog()))
    request = REQUEST_TRACE + bytes(32)
    assert [server.serve("greedy", request) for _ in range(TRACE_REQUESTS_BURST)] == [NOT_FOUND] * TRACE_REQUESTS_BURST
    refused = server.serve("greedy", REQUEST_OP + bytes(32) + struct.pack("<H", 0))
    assert refused[:1] == REFUSED and retry_after(refused) == 2.0
    assert refused[3:].decode() == ("refused: trace requests are limited to at most 8 at once, then 0.5 a second, "
                                    "per peer; ask again in 2 s")
    assert server.serve("auditor", request) == NOT_FOUND                                   # its own bucket
    assert server.serve("greedy", messages_request(bytes(32), 0, bytes(20)))[:1] == FOUND   # messages: own bucket


def test_a_peer_asking_for_messages_too_fast_is_refused_while_another_is_served():
    """Issue #14: message requests (`M`, a look-up each) were not limited at all."""
    server = AuditServer(SimpleNamespace(account=MINER, messages=MessageLog()))
    request = messages_request(bytes(32), 0, bytes(20))
    assert all(server.serve("greedy", request)[:1] == FOUND for _ in range(MESSAGE_REQUESTS_BURST))
    refused = server.serve("greedy", request)
    assert refused[:1] == REFUSED and decode_messages_answer(refused) == []
    assert refused[3:].decode().startswith("refused: message requests are limited to at most 64 at once")
    assert server.serve("member", request)[:1] == FOUND


class RefusedOnce:
    """A miner that refuses the first trace request (asked too fast), then answers with its signed trace."""

    def __init__(self, answer: bytes) -> None:
        self.answer, self.requests = answer, 0

    def request(self, peer, protocol, data, timeout=None) -> bytes:
        self.requests += 1
        if self.requests == 1:
            return REFUSED + struct.pack("<H", 1) + b"refused: asked too fast"
        return FOUND + self.answer


def test_an_auditor_asks_again_after_the_time_a_refusal_names(monkeypatch):
    work = C.IterationWork(task_id=bytes(32), iteration=3, miner=MINER.address, state_before_root=ZERO_HASH,
                           batch_index=0, batch_root=ZERO_HASH, batch_proof=[], peer_update_roots=[],
                           update_root=ZERO_HASH, state_after_root=ZERO_HASH, loss=0)
    signed = sign_iteration_message(MINER.secret_key, C.IterationMessage(work=work, header_commitment=ZERO_HASH))
    trace = encode_signed_trace(bytes(compute_message_digest(signed.message)), [("merge", bytes(32))], MINER.sign)
    slept = []
    monkeypatch.setattr("bws.node.audit_sources.time.sleep", slept.append)
    network = RefusedOnce(trace)
    assert NetworkSource(network, ["miner"]).fetch_trace(signed) == trace
    assert network.requests == 2 and slept == [1.0]
