"""What the role components share inside one node process: the chain, the
mempool, the network, this node's key, the tensor cache, the task library,
the iteration messages seen so far, and the role metrics the API reports.

The roles talk to the rest of the node only through `RoleContext`, so they
run the same in the node process and in in-process tests.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field

from bws.spec import containers as C
from bws.spec.encoding import encode
from bws.spec.pouw import compute_message_digest

from ..mempool import Mempool, MempoolError
from ..p2p import PROTOCOL_DATA, TOPIC_BLOCK, TOPIC_TASK, TOPIC_TX, NetworkError
from ..transition import claimed_result
from ..validation import Chain, TransactionRejected, ValidationError, transaction_pool_record
from ..wallet import Account
from .data import (
    DATA_TENSORS, FOUND, NOT_FOUND, ROOT_BYTES, DataError, TensorCache, decode_checked, parse_request, tensors_request,
)
from .library import TaskLibrary
from .signed import SignedMessages

logger = logging.getLogger("bws.node.roles")

DATA_REQUEST_TIMEOUT = 20.0
OWN_ITERATIONS_KEPT = 256   # about the iterations whose nonces may still be mined
REPLAYS_KEPT = 64


class RoleError(Exception):
    """A role could not do what it was asked (the message says what and why)."""


VERSIONS_KEPT = 2   # versions of one (task, iteration, miner) a MessageLog keeps: two are an equivocation


class MessageLog:
    """Every distinct signed iteration message seen, by task, iteration and
    miner (two entries under one key are an equivocation), with waiters."""

    def __init__(self) -> None:
        self._messages: dict[bytes, dict[tuple[int, bytes], list[C.SignedIterationMessage]]] = defaultdict(dict)
        self._peer_of_miner: dict[bytes, str] = {}
        self._condition = threading.Condition()

    def add(self, signed: C.SignedIterationMessage, origin: str | None) -> bool:
        """Record a message; False if it was already known, or if two versions
        of its (task, iteration, miner) are known already (two prove an
        equivocation: more only fill memory)."""
        work = signed.message.work
        key = (int(work.iteration), bytes(work.miner))
        with self._condition:
            entries = self._messages[bytes(work.task_id)].setdefault(key, [])
            if len(entries) >= VERSIONS_KEPT or any(existing == signed for existing in entries):
                return False
            entries.append(signed)
            if origin:
                self._peer_of_miner[bytes(work.miner)] = origin
            self._condition.notify_all()
            return True

    def get(self, task_id: bytes, iteration: int, miner: bytes) -> list[C.SignedIterationMessage]:
        with self._condition:
            return list(self._messages.get(bytes(task_id), {}).get((iteration, bytes(miner)), []))

    def latest(self, task_id: bytes, miner: bytes) -> C.SignedIterationMessage | None:
        """The miner's message of its highest iteration seen (the first one if it equivocated)."""
        with self._condition:
            keys = [k for k in self._messages.get(bytes(task_id), {}) if k[1] == bytes(miner)]
            return self._messages[bytes(task_id)][max(keys)][0] if keys else None

    def max_iteration(self, task_id: bytes) -> int:
        with self._condition:
            return max((k[0] for k in self._messages.get(bytes(task_id), {})), default=-1)

    def peer_of(self, miner: bytes) -> str | None:
        return self._peer_of_miner.get(bytes(miner))

    def wait_for(self, task_id: bytes, iteration: int, miners: list[bytes], deadline: float,
                 stop: threading.Event) -> dict[bytes, C.SignedIterationMessage]:
        """The first message of each of `miners` at `iteration`, waiting until
        all arrived, `deadline` (time.monotonic()) passed, or `stop` is set."""
        with self._condition:
            while True:
                found = {m: entries[0] for m in miners
                         if (entries := self._messages.get(bytes(task_id), {}).get((iteration, m)))}
                if len(found) == len(miners) or time.monotonic() >= deadline or stop.is_set():
                    return found
                self._condition.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))


@dataclass
class RoleContext:
    chain: Chain
    mempool: Mempool
    network: object            # NetworkService (or a test double with publish/request/peers)
    account: Account
    library: TaskLibrary
    import_block: object       # the node's import_block(block): validation, mempool upkeep
    cache: TensorCache = field(default_factory=TensorCache)
    messages: MessageLog = field(default_factory=MessageLog)
    signed: SignedMessages = field(default_factory=SignedMessages)   # slashing protection (roles/signed.py)
    metrics: Counter = field(default_factory=Counter)
    gauges: dict = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    # The roots this node computed for its own honest iterations: importing its
    # own block, the node need not re-execute what it just computed.
    own_iterations: LatestResults = field(default_factory=lambda: LatestResults(OWN_ITERATIONS_KEPT))
    # The latest replays' results: a pooled dispute's evidence is checked at every
    # block the miner prepares, and again when a block carries it.
    replays: LatestResults = field(default_factory=lambda: LatestResults(REPLAYS_KEPT))

    # Derived once: deriving a public key takes a curve multiplication, and
    # the miner needs the address for every task at every step.
    @functools.cached_property
    def public_key(self) -> bytes:
        return self.account.public_key

    @functools.cached_property
    def address(self) -> bytes:
        return self.account.address

    def remember_own_iteration(self, message: C.IterationMessage) -> None:
        """An iteration this node computed and signed (never a cheat): its claimed roots are the engine's."""
        self.own_iterations.put(message, claimed_result(message))

    def own_iteration(self, message: C.IterationMessage) -> C.ReplayResult | None:
        """The roots of `message` if this node computed it (remember_own_iteration), else None."""
        return self.own_iterations.get(message)

    # -- data -----------------------------------------------------------
    def fetch_tensors(self, root: bytes, preferred_peer: str | None = None) -> dict:
        """The bundle with `root`: from the cache, else from the preferred
        peer, else from any connected peer. RoleError if nobody has it."""
        cached = self.cache.get_tensors(root)
        if cached is not None:
            return cached
        peers = list(self.network.peers())
        if preferred_peer in peers:
            peers.remove(preferred_peer)
            peers.insert(0, preferred_peer)
        for peer in peers:
            try:
                answer = self.network.request(peer, PROTOCOL_DATA, tensors_request(root), timeout=DATA_REQUEST_TIMEOUT)
            except NetworkError as error:
                logger.info("data request to %s failed: %s", peer[:12], error)
                continue
            if answer[:1] != FOUND:
                continue
            try:
                tensors = decode_checked(answer[1:], root)
            except DataError as error:
                self.metrics["bad_data_answers"] += 1
                logger.warning("peer %s answered %s… with bad data: %s", peer[:12], bytes(root).hex()[:16], error)
                continue
            self.cache.put(root, bytes(answer[1:]))
            self.metrics["tensors_fetched"] += 1
            return tensors
        raise RoleError(f"no peer has the tensors with root {bytes(root).hex()[:16]}…")

    def serve_data(self, request: bytes) -> bytes:
        """The `/bws/data/1` handler: a cached bundle by root, or NOT_FOUND."""
        root = parse_request(request, DATA_TENSORS, ROOT_BYTES)
        self.metrics["data_requests_served"] += 1
        encoded = self.cache.get(root)
        return NOT_FOUND if encoded is None else FOUND + encoded

    # -- publishing ------------------------------------------------------
    def submit_transaction(self, signed: C.SignedTransaction) -> bytes:
        """Admit a transaction to the local mempool and gossip it; returns its id."""
        raw = encode(signed)
        self.chain.check_transaction(signed)
        record = transaction_pool_record(signed, raw)
        try:
            self.mempool.add(record)
        except MempoolError as error:
            raise TransactionRejected(str(error)) from None
        self._publish(TOPIC_TX, raw)
        return record.tx_id

    def next_nonce(self) -> int:
        return self.mempool.pending_nonce(self.address)

    def publish_iteration_message(self, signed: C.SignedIterationMessage) -> None:
        self.messages.add(signed, None)
        self._publish(TOPIC_TASK, encode(signed))

    def publish_block(self, block: C.Block) -> None:
        """Import a block this node built, then gossip it."""
        try:
            self.import_block(block)
        except ValidationError as error:
            raise RoleError(f"own block rejected: {error.reason}") from None
        self._publish(TOPIC_BLOCK, encode(block))

    def note_task_activity(self, task_id: bytes) -> None:
        self.gauges[("task_last_message", bytes(task_id))] = time.monotonic()

    def _publish(self, topic: str, data: bytes) -> None:
        try:
            self.network.publish(topic, data)
        except NetworkError as error:
            logger.warning("publish on %s failed: %s", topic, error)


class LatestResults:
    """The replay results of the latest `kept` iteration messages, by message digest (thread-safe)."""

    def __init__(self, kept: int) -> None:
        self._kept = kept
        self._results: OrderedDict[bytes, C.ReplayResult] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, message: C.IterationMessage) -> C.ReplayResult | None:
        with self._lock:
            return self._results.get(message_digest_of(message))

    def put(self, message: C.IterationMessage, result: C.ReplayResult) -> None:
        with self._lock:
            self._results[message_digest_of(message)] = result
            while len(self._results) > self._kept:
                self._results.popitem(last=False)


def message_digest(signed: C.SignedIterationMessage) -> bytes:
    return message_digest_of(signed.message)


def message_digest_of(message: C.IterationMessage) -> bytes:
    return bytes(compute_message_digest(message))
