"""Per-peer rate limits for request handlers: one token bucket per peer id
(the id the p2p layer hands every handler, `NetworkService.register_handler`).

A peer may ask `burst` times at once, then `per_second` times a second; a
request over that is refused with the seconds after which it would be
served. At most `peers_tracked` buckets are kept: a new peer beyond that
takes the bucket of the peer that asked least recently, which (asking
longest ago) is the one most likely to have refilled, so forgetting it
forgives at most a burst, and only after `peers_tracked` other peers have
asked since (each a connection of its own).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimit:
    burst: float
    per_second: float
    peers_tracked: int

    def describe(self) -> str:
        return f"at most {self.burst:g} at once, then {self.per_second:g} a second, per peer"


@dataclass
class Bucket:
    tokens: float
    updated_at: float


class PeerRateLimiter:
    """Token buckets by peer id (thread-safe: request handlers run on several threads)."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()   # least recently asking peer first
        self._lock = threading.Lock()

    def take(self, peer: str) -> float:
        """Spend one of `peer`'s tokens: 0.0 if it had one, else the seconds until it will have one (nothing spent)."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.pop(peer, None) or Bucket(self.limit.burst, now)
            self._buckets[peer] = bucket
            while len(self._buckets) > self.limit.peers_tracked:
                self._buckets.popitem(last=False)
            bucket.tokens = min(self.limit.burst, bucket.tokens + (now - bucket.updated_at) * self.limit.per_second)
            bucket.updated_at = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.limit.per_second

    def __len__(self) -> int:
        return len(self._buckets)

