"""The mempool: valid transactions waiting for a block.

Rules (what a user sees when submitting):
- Ordering is by fee per byte (ties: first seen first). A block template takes
  the best-paying transaction whose sender's earlier nonces are already taken,
  so each sender's transactions go in nonce order.
- A transaction whose nonce is ahead of the sender's account nonce waits (a
  nonce gap) until the missing ones arrive, as long as it is at most
  MAX_NONCE_GAP ahead; one with a nonce already used is rejected.
- Same sender and nonce as a pending transaction: it replaces that one only if
  its fee is at least REPLACEMENT_FEE_BUMP_PERCENT higher (replace-by-fee).
- Limits on count, total bytes and per-sender count. When full, the pool
  evicts the cheapest transaction that is last in its sender's queue (never
  one in the middle, which would strand the later ones); a newcomer cheaper
  than everything evictable is rejected.
- When a block is connected, transactions whose nonce is now used are
  dropped; when a block is disconnected by a reorg its transactions come
  back (`reinsert`), and are dropped again if the new chain used them.
- A transaction that the full rules refuse while it is next in its sender's
  queue (a dispute against a miner someone else already had slashed, an
  evaluation result for a task already finalized) is dropped once block
  builders have reported it on INVALID_HEADS_BEFORE_DROP different heads
  (`report_invalid`): a balance may still arrive, but kept for ever it would
  hold back every later transaction of its sender, whose wallet then reuses
  its nonce.

The pool is independent of the transaction encoding: callers give it
`PoolTransaction` records (id, sender, nonce, fee, size, raw bytes).
"""
from __future__ import annotations

import heapq
import itertools
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

DEFAULT_MAX_COUNT = 5000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_PER_SENDER = 64
MAX_NONCE_GAP = 64
REPLACEMENT_FEE_BUMP_PERCENT = 10
INVALID_HEADS_BEFORE_DROP = 3


class MempoolError(Exception):
    """A transaction was not admitted; the message says why."""


@dataclass(frozen=True)
class PoolTransaction:
    tx_id: bytes
    sender: bytes
    nonce: int
    fee: int
    size: int
    raw: bytes = field(repr=False)
    # A transaction of the protocol itself (coinbase etc.) never enters the pool.

    def fee_rate_key(self) -> tuple[int, int]:
        """Comparable fee per byte without floats: (fee * 2**32 // size)."""
        return (self.fee << 32) // max(self.size, 1), self.fee


@dataclass(order=True)
class _Ranked:
    sort_key: tuple
    tx: PoolTransaction = field(compare=False)


class Mempool:
    def __init__(
        self,
        account_nonce: Callable[[bytes], int],
        max_count: int = DEFAULT_MAX_COUNT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_per_sender: int = DEFAULT_MAX_PER_SENDER,
    ) -> None:
        """`account_nonce(sender)` gives the next nonce the chain expects from
        `sender` (the head state's account nonce)."""
        self._account_nonce = account_nonce
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_per_sender = max_per_sender
        self._by_sender: dict[bytes, dict[int, PoolTransaction]] = {}
        self._by_id: dict[bytes, PoolTransaction] = {}
        self._arrival: dict[bytes, int] = {}
        self._refused_on: dict[bytes, set[bytes]] = {}   # tx id -> heads on which the full rules refused it
        self._counter = itertools.count()
        self._bytes = 0
        self._lock = threading.RLock()
        self.changes = 0   # counts every insertion and removal: whether the pool changed since a look

    # -- queries --------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, tx_id: bytes) -> bool:
        return tx_id in self._by_id

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def get(self, tx_id: bytes) -> PoolTransaction | None:
        return self._by_id.get(tx_id)

    def pending_nonce(self, sender: bytes) -> int:
        """The next nonce a wallet should use: past the sender's contiguous
        pending run."""
        with self._lock:
            nonce = self._account_nonce(sender)
            queue = self._by_sender.get(sender, {})
            while nonce in queue:
                nonce += 1
            return nonce

    def transactions(self) -> list[PoolTransaction]:
        with self._lock:
            return list(self._by_id.values())

    # -- admission ------------------------------------------------------
    def add(self, tx: PoolTransaction) -> PoolTransaction | None:
        """Admit `tx`. Returns the transaction it replaced (replace-by-fee) or
        None; raises MempoolError when it is not admitted."""
        with self._lock:
            if tx.tx_id in self._by_id:
                raise MempoolError("transaction already in the mempool")
            if tx.size > self.max_bytes:
                raise MempoolError(f"transaction is {tx.size} bytes, more than the whole mempool ({self.max_bytes})")
            expected = self._account_nonce(tx.sender)
            if tx.nonce < expected:
                raise MempoolError(f"nonce {tx.nonce} already used (account nonce is {expected})")
            if tx.nonce - expected > MAX_NONCE_GAP:
                raise MempoolError(f"nonce {tx.nonce} is more than {MAX_NONCE_GAP} ahead of the account nonce {expected}")
            queue = self._by_sender.get(tx.sender, {})
            replaced = queue.get(tx.nonce)
            if replaced is not None:
                if tx.fee * 100 < replaced.fee * (100 + REPLACEMENT_FEE_BUMP_PERCENT) or tx.fee <= replaced.fee:
                    raise MempoolError(
                        f"a transaction with nonce {tx.nonce} is pending with fee {replaced.fee}; "
                        f"a replacement must pay at least {REPLACEMENT_FEE_BUMP_PERCENT}% more"
                    )
            elif len(queue) >= self.max_per_sender:
                raise MempoolError(f"sender already has {len(queue)} pending transactions (limit {self.max_per_sender})")
            if replaced is not None:
                self._remove(replaced)
            self._make_room(tx, replaced)
            self._insert(tx)
            return replaced

    def _make_room(self, incoming: PoolTransaction, replaced: PoolTransaction | None) -> None:
        while len(self._by_id) + 1 > self.max_count or self._bytes + incoming.size > self.max_bytes:
            victim = self._cheapest_evictable(exclude_sender=incoming.sender)
            if victim is None or victim.fee_rate_key() >= incoming.fee_rate_key():
                if replaced is not None:
                    self._insert(replaced)
                raise MempoolError("mempool is full and this transaction pays less per byte than any it could evict")
            self._remove(victim)

    def _cheapest_evictable(self, exclude_sender: bytes) -> PoolTransaction | None:
        tails = (
            queue[max(queue)]
            for sender, queue in self._by_sender.items()
            if queue and sender != exclude_sender
        )
        return min(tails, key=lambda tx: (tx.fee_rate_key(), -self._arrival[tx.tx_id]), default=None)

    def _insert(self, tx: PoolTransaction) -> None:
        self._by_sender.setdefault(tx.sender, {})[tx.nonce] = tx
        self._by_id[tx.tx_id] = tx
        self._arrival.setdefault(tx.tx_id, next(self._counter))
        self._bytes += tx.size
        self.changes += 1

    def _remove(self, tx: PoolTransaction) -> None:
        queue = self._by_sender[tx.sender]
        del queue[tx.nonce]
        if not queue:
            del self._by_sender[tx.sender]
        del self._by_id[tx.tx_id]
        del self._arrival[tx.tx_id]
        self._refused_on.pop(tx.tx_id, None)
        self._bytes -= tx.size
        self.changes += 1

    # -- chain events ---------------------------------------------------
    def prune(self, senders: Iterable[bytes] | None = None) -> list[PoolTransaction]:
        """Drop transactions whose nonce the head state has used (after a
        block was connected); returns what was dropped."""
        with self._lock:
            dropped = []
            for sender in list(self._by_sender if senders is None else senders):
                queue = self._by_sender.get(sender)
                if not queue:
                    continue
                expected = self._account_nonce(sender)
                for nonce in sorted(n for n in queue if n < expected):
                    dropped.append(queue[nonce])
                    self._remove(queue[nonce])
            return dropped

    def reinsert(self, txs: Iterable[PoolTransaction]) -> int:
        """Put back the transactions of disconnected blocks (a reorg); those
        the new chain has already used, or that no longer fit, are skipped.
        Returns how many came back."""
        restored = 0
        for tx in txs:
            try:
                self.add(tx)
                restored += 1
            except MempoolError:
                continue
        return restored

    def report_invalid(self, tx_id: bytes, head_hash: bytes) -> bool:
        """A block builder found `tx_id` invalid by the full rules on the
        head `head_hash`; whether the transaction was dropped (module docstring)."""
        with self._lock:
            tx = self._by_id.get(tx_id)
            if tx is None or tx.nonce != self._account_nonce(tx.sender):
                return False  # gone, or waiting behind an earlier nonce: not its own fault
            heads = self._refused_on.setdefault(tx_id, set())
            heads.add(bytes(head_hash))
            if len(heads) < INVALID_HEADS_BEFORE_DROP:
                return False
            self._remove(tx)
            return True

    # -- block templates ------------------------------------------------
    def select(self, max_count: int, max_bytes: int) -> list[PoolTransaction]:
        """The transactions for the next block: highest fee per byte first,
        each sender's in nonce order starting at its account nonce, within the
        count and byte limits."""
        with self._lock:
            heap: list[_Ranked] = []
            for sender, queue in self._by_sender.items():
                first = queue.get(self._account_nonce(sender))
                if first is not None:
                    heapq.heappush(heap, self._ranked(first))
            chosen: list[PoolTransaction] = []
            used_bytes = 0
            while heap and len(chosen) < max_count:
                tx = heapq.heappop(heap).tx
                if used_bytes + tx.size > max_bytes:
                    continue  # this sender's later nonces cannot go without it
                chosen.append(tx)
                used_bytes += tx.size
                follower = self._by_sender[tx.sender].get(tx.nonce + 1)
                if follower is not None:
                    heapq.heappush(heap, self._ranked(follower))
            return chosen

    def _ranked(self, tx: PoolTransaction) -> _Ranked:
        rate, fee = tx.fee_rate_key()
        return _Ranked((-rate, -fee, self._arrival[tx.tx_id]), tx)
