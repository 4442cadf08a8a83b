"""What the role components share inside one node process: the chain, the
mempool, the network, this node's key, the tensor cache, the task library,
the iteration messages seen so far, and the role metrics the API reports.

The roles reach the running node (its chain, mempool, network, key, cache)
only through `RoleContext`, so they run the same in the node process and in
in-process tests. From the rest of the node they import only modules that
hold no node state: the rules the node runs (transition, validation, keys,
merkle), protocol names, errors and wire codecs (p2p, audit), the account
type (wallet) and the API client (api); this module also names the mempool
it wraps. tests/test_layers.py enforces it.
"""
from __future__ import annotations

import functools
import heapq
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bws.spec import containers as C
from bws.spec.constants import TASK_EVALUATION, TASK_TRAINING
from bws.spec.encoding import DecodeError, decode, encode
from bws.spec.pouw import compute_message_digest

from ..audit import PROTOCOL_AUDIT, AuditError, decode_messages_answer, messages_request
from ..mempool import Mempool, MempoolError
from ..p2p import PROTOCOL_DATA, TOPIC_BLOCK, TOPIC_TASK, TOPIC_TX, NetworkError
from ..transition import claimed_result, is_signed_iteration_message_valid
from ..validation import Chain, TransactionRejected, ValidationError, transaction_pool_record
from ..wallet import Account
from .data import (
    DATA_TENSORS, FOUND, NOT_FOUND, ROOT_BYTES, DataError, TensorCache, decode_checked, parse_request, tensors_request,
)
from .library import TaskLibrary
from .signed import SignedMessages

logger = logging.getLogger("bws.node.roles")

DATA_REQUEST_TIMEOUT = 20.0
# An answer to a message request holds VERSIONS_KEPT messages of a few KiB each (a batch proof, the roots).
MESSAGES_ANSWER_BYTES = 1 << 20
OWN_ITERATIONS_KEPT = 256   # about the iterations whose nonces may still be mined
REPLAYS_KEPT = 64
SCORES_KEPT = 256          # final models scored: a group's models, for the tasks in evaluation


class RoleError(Exception):
    """A role could not do what it was asked (the message says what and why)."""


VERSIONS_KEPT = 2   # versions of one (task, iteration, miner) a MessageLog keeps: two are an equivocation
# A member's latest iterations kept per task: those its blocks may still use (as OWN_ITERATIONS_KEPT), and far
# more than the previous one its peers wait for.
ITERATIONS_KEPT_PER_MINER = OWN_ITERATIONS_KEPT
MESSAGES_KEPT = 65_536   # all tasks together: about 200 MiB at the ~3 KiB one message takes in memory
# A task's messages outlive its leaving the head by this many blocks: a reorg near the tip brings a young task
# back (its submission was in the blocks undone), and its members' messages, their own included, must be there.
FORGET_AFTER_BLOCKS = 32
PEERS_OF_MINERS_KEPT = 4096   # the peer each of the latest miners was heard from: only a hint for fetching tensors
# Tasks whose messages are in use: members train on their peers' messages, evaluators score their latest ones.
TASK_STATUSES_IN_USE = frozenset({TASK_TRAINING, TASK_EVALUATION})


@dataclass
class TaskMessages:
    """One task's part of a MessageLog."""
    versions: dict[tuple[int, bytes], list[C.SignedIterationMessage]] = field(default_factory=dict)
    iterations: dict[bytes, list[int]] = field(default_factory=dict)   # per miner, a min-heap of its iterations kept
    count: int = 0


class MessageLog:
    """Every distinct signed iteration message seen, by task, iteration and
    miner (two entries under one key are an equivocation), with waiters.

    Bounded, whatever arrives: at most VERSIONS_KEPT versions of one (task,
    iteration, miner); a miner's latest ITERATIONS_KEPT_PER_MINER iterations
    of a task (a newer one pushes out its oldest, an older one is refused), so
    a member that signs iterations it never trained displaces only its own
    messages; the messages of a task no head has held for FORGET_AFTER_BLOCKS
    blocks are forgotten (`follow_head`, at every new head: a task is removed
    `stake_lock_period` blocks after it ends); and MESSAGES_KEPT in all. At that bound a message of
    a task in training or evaluation (whose messages are in use) makes room by
    forgetting every message of a task that is in neither (ended and kept only
    for disputes, which the supervisors' store records, or not training yet),
    and any other message is refused: a task's junk never pushes out a
    training task's messages. When only tasks in use fill the log, the
    newcomer is refused rather than any kept message evicted: that takes
    MESSAGES_KEPT / (VERSIONS_KEPT × ITERATIONS_KEPT_PER_MINER) = 128 seats in
    training groups, which are drawn by stake. Before the first head every
    task counts as in use."""

    def __init__(self) -> None:
        self._tasks: dict[bytes, TaskMessages] = {}
        self._count = 0
        self._head_tasks: Mapping[bytes, C.Task] | None = None   # the tasks of the latest head (follow_head)
        self._held_at: dict[bytes, int] = {}   # task id -> height of the latest head that held it (follow_head)
        self._peer_of_miner: OrderedDict[bytes, str] = OrderedDict()
        self.refused = 0   # messages turned away by the bounds (not counting those already known)
        self._condition = threading.Condition()

    def __len__(self) -> int:
        return self._count

    def add(self, signed: C.SignedIterationMessage, origin: str | None) -> bool:
        """Record a message; False if it was already known, if two versions of
        its (task, iteration, miner) are known already (two prove an
        equivocation: more only fill memory), or if the bounds refuse it."""
        work = signed.message.work
        task_id, key = bytes(work.task_id), (int(work.iteration), bytes(work.miner))
        with self._condition:
            task = self._tasks.get(task_id)
            entries = task.versions.get(key, []) if task is not None else []
            if len(entries) >= VERSIONS_KEPT or any(existing == signed for existing in entries):
                return False
            iterations = task.iterations.get(key[1], []) if task is not None else []
            pushes_one_out = not entries and len(iterations) >= ITERATIONS_KEPT_PER_MINER
            if pushes_one_out and key[0] < iterations[0]:
                self.refused += 1   # older than every iteration of the miner kept
                return False
            if not pushes_one_out and not self._make_room(task_id):
                self.refused += 1
                return False
            task = self._tasks.setdefault(task_id, TaskMessages())
            if not entries:
                iterations = task.iterations.setdefault(key[1], [])
                heapq.heappush(iterations, key[0])
                if len(iterations) > ITERATIONS_KEPT_PER_MINER:
                    dropped = task.versions.pop((heapq.heappop(iterations), key[1]))
                    task.count -= len(dropped)
                    self._count -= len(dropped)
            task.versions.setdefault(key, []).append(signed)
            task.count += 1
            self._count += 1
            if origin:
                self._peer_of_miner[key[1]] = origin
                self._peer_of_miner.move_to_end(key[1])
                while len(self._peer_of_miner) > PEERS_OF_MINERS_KEPT:
                    self._peer_of_miner.popitem(last=False)
            self._condition.notify_all()
            return True

    def follow_head(self, tasks: Mapping[bytes, C.Task], height: int) -> list[bytes]:
        """A new head at `height` holding `tasks`: forget the messages of every
        task no head has held for FORGET_AFTER_BLOCKS blocks (not at once: a
        reorg may bring it back); the ids forgotten. Costs one look-up per task
        in the log, plus the messages forgotten."""
        with self._condition:
            self._head_tasks = tasks
            for task_id in self._tasks:
                if task_id in tasks or task_id not in self._held_at:
                    self._held_at[task_id] = height
            removed = [task_id for task_id in self._tasks if height - self._held_at[task_id] >= FORGET_AFTER_BLOCKS]
            for task_id in removed:
                self._forget(task_id)
            return removed

    def _in_use(self, task_id: bytes) -> bool:
        task = self._head_tasks.get(task_id) if self._head_tasks is not None else None
        return self._head_tasks is None or (task is not None and int(task.status) in TASK_STATUSES_IN_USE)

    def _make_room(self, task_id: bytes) -> bool:
        """Whether one more message fits, forgetting a task not in use for one that is (class docstring)."""
        if self._count < MESSAGES_KEPT:
            return True
        if not self._in_use(task_id):
            return False
        unused = next((other for other in self._tasks if not self._in_use(other)), None)
        if unused is None:
            return False
        self._forget(unused)
        return True

    def _forget(self, task_id: bytes) -> None:
        self._count -= self._tasks.pop(task_id).count
        self._held_at.pop(task_id, None)

    def get(self, task_id: bytes, iteration: int, miner: bytes) -> list[C.SignedIterationMessage]:
        with self._condition:
            return list(self._versions(task_id).get((iteration, bytes(miner)), []))

    def latest(self, task_id: bytes, miner: bytes) -> C.SignedIterationMessage | None:
        """The miner's message of its highest iteration seen (the first one if it equivocated)."""
        with self._condition:
            versions = self._versions(task_id)
            keys = [k for k in versions if k[1] == bytes(miner)]
            return versions[max(keys)][0] if keys else None

    def max_iteration(self, task_id: bytes) -> int:
        with self._condition:
            return max((k[0] for k in self._versions(task_id)), default=-1)

    def peer_of(self, miner: bytes) -> str | None:
        with self._condition:
            return self._peer_of_miner.get(bytes(miner))

    def wait_for(self, task_id: bytes, iteration: int, miners: list[bytes], deadline: float,
                 stop: threading.Event) -> dict[bytes, C.SignedIterationMessage]:
        """The first message of each of `miners` at `iteration`, waiting until
        all arrived, `deadline` (time.monotonic()) passed, or `stop` is set."""
        with self._condition:
            while True:
                found = {m: entries[0] for m in miners
                         if (entries := self._versions(task_id).get((iteration, m)))}
                if len(found) == len(miners) or time.monotonic() >= deadline or stop.is_set():
                    return found
                self._condition.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))

    def _versions(self, task_id: bytes) -> dict[tuple[int, bytes], list[C.SignedIterationMessage]]:
        task = self._tasks.get(bytes(task_id))
        return task.versions if task is not None else {}


@dataclass
class RoleContext:
    chain: Chain
    mempool: Mempool
    network: object            # NetworkService (or a test double with publish/request/peers)
    account: Account | None    # None: a node without a key (a verifier only), which replays but signs nothing
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
    # Final models scored, by (task definition, test set, model): the evaluator's and every replaying
    # node's check of an evaluation result (in the mempool's miner and again in the block) score each once.
    scores: LatestResults = field(default_factory=lambda: LatestResults(SCORES_KEPT, key_of=tuple))

    # Derived once: deriving a public key takes a curve multiplication, and
    # the miner needs the address for every task at every step. Only the
    # roles that sign read them, and those refuse to start without a key.
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

    def pooled_bodies(self, sender: bytes | None = None):
        """The bodies of the mempool's transactions (of `sender` only, if given)."""
        for record in self.mempool.transactions():
            if sender is not None and record.sender != sender:
                continue
            try:
                yield decode(record.raw, C.SignedTransaction).transaction.body
            except DecodeError:
                continue

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

    def fetch_iteration_message(self, task_id: bytes, iteration: int, miner: bytes, peers: list[str],
                                wanted: Callable[[C.SignedIterationMessage], bool] = lambda signed: True,
                                timeout: float = DATA_REQUEST_TIMEOUT) -> tuple[C.SignedIterationMessage, str] | None:
        """A signed message of (task, iteration, miner) that one of `peers` recorded, with that peer: each is
        asked once, in order, over `/bws/audit/1`; what it answers counts only if it is that key's, validly
        signed by the miner, and `wanted`. None if no peer has one."""
        request = messages_request(task_id, iteration, miner)
        for peer in peers:
            try:
                answer = self.network.request(peer, PROTOCOL_AUDIT, request, timeout=timeout,
                                              max_response_bytes=MESSAGES_ANSWER_BYTES)
                recorded = decode_messages_answer(answer)
            except (NetworkError, AuditError) as error:
                logger.info("message request to %s failed: %s", peer[:12], error)
                continue
            for signed in recorded:
                work = signed.message.work
                if (bytes(work.task_id), int(work.iteration), bytes(work.miner)) == (bytes(task_id), iteration,
                                                                                       bytes(miner)) \
                        and wanted(signed) and is_signed_iteration_message_valid(signed):
                    return signed, peer
        return None

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

    def follow_head(self, state: C.State) -> None:
        """A new head: forget what is kept per task (messages, per-task gauges) for the tasks the log forgets."""
        forgotten = set(self.messages.follow_head(state.tasks, int(state.height)))
        for key in list(self.gauges):   # a copy: other threads add gauges meanwhile
            if isinstance(key, tuple) and key[1] in forgotten:
                self.gauges.pop(key, None)

    def _publish(self, topic: str, data: bytes) -> None:
        try:
            self.network.publish(topic, data)
        except NetworkError as error:
            logger.warning("publish on %s failed: %s", topic, error)


class LatestResults:
    """The results of the latest `kept` computations, by the key `key_of` makes
    of their input (an iteration message's digest by default; thread-safe)."""

    def __init__(self, kept: int, key_of=None) -> None:
        self._kept = kept
        self._key_of = key_of or message_digest_of
        self._results: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, item):
        with self._lock:
            return self._results.get(self._key_of(item))

    def put(self, item, result) -> None:
        with self._lock:
            self._results[self._key_of(item)] = result
            while len(self._results) > self._kept:
                self._results.popitem(last=False)


def message_digest(signed: C.SignedIterationMessage) -> bytes:
    return message_digest_of(signed.message)


def message_digest_of(message: C.IterationMessage) -> bytes:
    return bytes(compute_message_digest(message))
