"""Gossip judged too early: a message the node IGNOREd only because its head
was behind (a group member's iteration message arriving before the block
that drew the group), kept and judged again at the next heads.

Gossip offers a message once (py-libp2p remembers its verdict), so without
this such a message is lost to the node: its supervisors never record it,
and a member waiting for it trains on without the update (the member then
asks its peers for it: node/roles/miner.py). Bounded whatever arrives: at
most KEPT_MESSAGES messages and KEPT_BYTES bytes (the oldest make room), each
offered again at RETRIED_HEADS heads at most, then dropped; a message kept
already is not kept twice.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

KEPT_MESSAGES = 512
KEPT_BYTES = 8 << 20
RETRIED_HEADS = 3


@dataclass
class _Deferred:
    item: object
    size: int
    heads_left: int


class DeferredGossip:
    """Messages kept for a later head (module docstring); thread-safe."""

    def __init__(self, kept_messages: int = KEPT_MESSAGES, kept_bytes: int = KEPT_BYTES,
                 retried_heads: int = RETRIED_HEADS) -> None:
        self._kept_messages, self._kept_bytes, self._retried_heads = kept_messages, kept_bytes, retried_heads
        self._deferred: OrderedDict[bytes, _Deferred] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.dropped = 0   # pushed out by the bounds, or offered RETRIED_HEADS times and never taken

    def __len__(self) -> int:
        with self._lock:
            return len(self._deferred)

    def defer(self, data: bytes, item: object) -> None:
        """Keep `item` (decoded from gossip `data`) for the next heads."""
        with self._lock:
            self._keep(hashlib.sha256(data).digest(), _Deferred(item, len(data), self._retried_heads))

    def retry(self, take: Callable[[object], bool]) -> int:
        """A new head: offer each kept item once to `take` (outside the lock); keep those it does not take
        for the next head, RETRIED_HEADS heads in all; how many it took."""
        with self._lock:
            offered, self._deferred, self._bytes = self._deferred, OrderedDict(), 0
        taken, survivors = 0, []
        for key, deferred in offered.items():
            if take(deferred.item):
                taken += 1
            elif deferred.heads_left > 1:
                deferred.heads_left -= 1
                survivors.append((key, deferred))
            else:
                self.dropped += 1
        with self._lock:   # back in front of what arrived meanwhile, within the bounds
            arrived, self._deferred, self._bytes = self._deferred, OrderedDict(), 0
            for key, deferred in survivors + list(arrived.items()):
                self._keep(key, deferred)
        return taken

    def _keep(self, key: bytes, deferred: _Deferred) -> None:
        """Add one (lock held), pushing out the oldest beyond the bounds."""
        if key in self._deferred:
            return
        if deferred.size > self._kept_bytes:
            self.dropped += 1
            return
        while self._deferred and (len(self._deferred) >= self._kept_messages
                                  or self._bytes + deferred.size > self._kept_bytes):
            self._bytes -= self._deferred.popitem(last=False)[1].size
            self.dropped += 1
        self._deferred[key] = deferred
        self._bytes += deferred.size
