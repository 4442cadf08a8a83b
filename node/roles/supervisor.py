"""The supervisor: records every iteration message of the tasks it
supervises, signs the message history, and flags misbehaviour.

- Every IT_RES of a task whose supervisors include this node is kept in the
  chain store (`record_iteration_message`, one DB transaction each; the node
  core records them too when the node has the supervisor role).
- Equivocation: two different signed messages of one miner for one (task,
  iteration) become a Dispute(Equivocation) transaction, which slashes the
  miner's stake (spec `process_dispute`).
- Broken links: messages of one miner for iterations i and i + 1 of a task,
  the later not starting from the state the earlier ended at (spec
  `is_chained`), become a Dispute(BrokenLink): a member that mines on a state
  it never trained to is slashed once it signs the iteration before.
- Recording and the equivocation check run on one thread, replays on another
  (a replay can take seconds), so a backlog of replays never delays them.
- Non-replayable updates: each recorded message is replayed (the verifier's
  replay: inputs fetched and checked by root); a message whose replay does
  not give its roots, with the spec's reference agreeing with the engine
  (`is_proven_fraud`), becomes a Dispute(FraudProof) transaction. A message
  whose inputs cannot be fetched is counted (`supervisor_unreplayable`) but
  not disputed: the spec only slashes a proven mismatch.
- Disputes go through node/roles/disputes.py, as the verifier's do: once per
  miner, not when the chain or the mempool already has one against it.
- The history: `history(task_id)` is the Merkle root of the recorded
  messages' digests in (iteration, miner, digest) order, signed by this
  supervisor; the API reports it with the metrics.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict

from bws.spec import containers as C
from bws.spec.hashing import compute_merkle_root
from bws.spec.state_transition import ReplayUnavailable

from .context import RoleContext, message_digest
from .disputes import Disputes, broken_link
from .verifier import is_proven_fraud, replay_iteration

SEEN_DIGESTS_KEPT = 100_000  # messages whose recording is skipped when gossip brings them again

logger = logging.getLogger("bws.node.roles.supervisor")


class Supervisor:
    def __init__(self, context: RoleContext) -> None:
        self.context = context
        self._queue: queue.Queue = queue.Queue(maxsize=10_000)
        # Recording and the equivocation check keep up with gossip; replays (seconds each for a
        # large model on a busy machine) wait in their own queue so they never delay them.
        self._replays: queue.Queue = queue.Queue(maxsize=10_000)
        self._threads = [threading.Thread(target=self._run, args=(self._queue, self._record, self._replays),
                                          name="bws-supervisor", daemon=True),
                         threading.Thread(target=self._run, args=(self._replays, self._replay, None),
                                          name="bws-supervisor-replay", daemon=True)]
        self.disputes = Disputes(context)
        self._seen: OrderedDict[bytes, None] = OrderedDict()  # the latest SEEN_DIGESTS_KEPT message digests

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def on_message(self, signed: C.SignedIterationMessage) -> None:
        """Called for every valid IT_RES seen on gossip (cheap: the work is queued)."""
        task = self.context.chain.head_state.tasks.get(signed.message.work.task_id)
        if task is None or self.context.address not in [bytes(s) for s in task.supervisors]:
            return
        try:
            self._queue.put_nowait(signed)
        except queue.Full:
            self.context.metrics["supervisor_dropped"] += 1

    def _run(self, work: queue.Queue, handle, then: queue.Queue | None) -> None:
        """Handle the messages of `work`; those `handle` passes on go to `then`."""
        while not self.context.stop.is_set():
            try:
                signed = work.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                if handle(signed) and then is not None:
                    then.put_nowait(signed)
            except queue.Full:
                self.context.metrics["supervisor_dropped"] += 1
            except Exception:  # logged and counted; the node keeps running
                logger.exception("supervising a message failed")
                self.context.metrics["supervisor_errors"] += 1

    def _first_sight(self, digest: bytes) -> bool:
        """Whether `digest` is not among the latest SEEN_DIGESTS_KEPT seen (it is now). A message
        forgotten and seen again is recorded again (idempotent) and replayed again."""
        if digest in self._seen:
            return False
        self._seen[digest] = None
        if len(self._seen) > SEEN_DIGESTS_KEPT:
            self._seen.popitem(last=False)
        return True

    def _record(self, signed: C.SignedIterationMessage) -> bool:
        """Record a new message and dispute an equivocation; whether the message is to be replayed."""
        context = self.context
        work = signed.message.work
        digest = message_digest(signed)
        if not self._first_sight(digest):
            return False
        # The node core records every message when the node is a supervisor; recording is idempotent.
        context.chain.store.record_iteration_message(signed, digest, time.time())
        context.metrics["supervisor_recorded"] += 1
        store, task_id, iteration, miner = context.chain.store, bytes(work.task_id), int(work.iteration), bytes(work.miner)
        different = [other for other in store.iteration_messages(task_id, iteration, miner) if other != signed]
        if different:
            context.metrics["supervisor_equivocations"] += 1
            self.disputes.submit(C.Equivocation(first=different[0], second=signed))
            return False
        if (link := broken_link(signed, store.iteration_messages(task_id, iteration - 1, miner) if iteration else [],
                                store.iteration_messages(task_id, iteration + 1, miner))) is not None:
            context.metrics["supervisor_broken_links"] += 1
            self.disputes.submit(link)
            return False
        return True

    def _replay(self, signed: C.SignedIterationMessage) -> None:
        """Replay a recorded message's iteration and dispute a proven mismatch."""
        context = self.context
        work = signed.message.work
        task = context.chain.head_state.tasks.get(work.task_id)
        if task is None:
            return
        try:
            result = replay_iteration(context, task, signed.message)
        except ReplayUnavailable as error:
            context.metrics["supervisor_unreplayable"] += 1
            logger.info("cannot replay iteration %d of %s…: %s", work.iteration, bytes(work.miner).hex()[:12], error)
            return
        context.metrics["supervisor_replays"] += 1
        if is_proven_fraud(context, task, signed.message, result):
            context.metrics["supervisor_fraud"] += 1
            self.disputes.submit(C.FraudProof(message=signed))

    def history(self, task_id: bytes) -> dict:
        """The signed root of the recorded message history of a task."""
        messages = self.context.chain.store.iteration_messages(task_id)
        root = bytes(compute_merkle_root([message_digest(m) for m in messages]))
        return {"task": task_id.hex(), "messages": len(messages), "root": root.hex(),
                "signature": self.context.account.sign(root).hex(), "supervisor": self.context.address.hex()}
