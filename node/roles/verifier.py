"""The verifier: before a block is accepted, replay the iteration behind it;
a proven mismatch becomes a dispute.

`NetworkReplay` is the `replay` the node's chain passes to the spec's
`state_transition`: for the block's IT_RES it fetches the iteration's inputs
(the model state named by `state_before_root` and the peer updates named by
`peer_update_roots`, from the miner or any peer over `/bws/data/1`, each
checked against its root), rebuilds the batch from the local copy of the
task's dataset (checked against `batch_root`), runs the engine's iteration
and returns the recomputed update and state roots. The spec accepts the
block only on a bit-exact match. Inputs that cannot be obtained raise the
spec's `ReplayUnavailable`: a block whose iteration cannot be replayed is
invalid.

A mismatch rejects the block, and, so that fraud is slashed even in a task
without a live supervisor, the verifier also disputes the miner
(`VerifierDisputes`, off the chain's thread): after a delay that lets the
task's supervisors go first and spreads out the verifiers that saw the same
block, it checks that the mismatch is proven (`is_proven_fraud`: the spec's
NumPy reference agrees with the engine, so the fault is not this node's
engine), finds the miner's signed message (among those it heard on gossip,
else from the peers' message records over `/bws/audit/1`: a block that came
by sync was never gossiped to this node), and submits
Dispute(FraudProof) through the helper the supervisor uses (node/roles/disputes.py:
once per miner, not when the chain or the mempool already has a dispute).
A replay that is unavailable is no mismatch and accuses nobody. A node without
a key (`--roles verifier` and no keystore) replays and refuses mismatches all
the same, but cannot sign a dispute: it counts them (`mismatches_not_disputed`).
"""
from __future__ import annotations

import logging
import queue
import threading
import time

from bws.spec import containers as C
from bws.spec.hashing import hash_bytes
from bws.spec.pouw import get_input_mask_seed
from bws.spec.state_transition import ReplayUnavailable

from ..audit import reference_replay
from ..transition import claimed_result
from .context import RoleContext, RoleError
from .data import DataError, bundle_root
from .disputes import Disputes
from .library import LoadedTask, TaskUnavailable, at_iteration, flat, tree

logger = logging.getLogger("bws.node.roles.verifier")

DISPUTE_DELAY_SECONDS = 10.0         # the task's supervisors dispute at once: a verifier is the fallback
DISPUTE_DELAY_SPREAD_SECONDS = 20.0  # verifiers of one block wait different times, so one of them goes first


def replay_inputs(context: RoleContext, task: C.Task,
                  message: C.IterationMessage) -> tuple[LoadedTask, dict, list, dict]:
    """(loaded task, state before, peer updates, masked batch) of an iteration,
    each checked against the root its work names; ReplayUnavailable if one
    cannot be had."""
    work = message.work
    peer = context.messages.peer_of(bytes(work.miner))
    try:
        loaded = context.library.load(task)
        state = at_iteration(context.fetch_tensors(bytes(work.state_before_root), peer), int(work.iteration))
        updates = [context.fetch_tensors(bytes(root), peer) for root in work.peer_update_roots]
    except (TaskUnavailable, RoleError, DataError, ValueError) as error:
        raise ReplayUnavailable(str(error)) from None
    if int(work.batch_index) >= len(loaded.batch_roots):
        raise ReplayUnavailable(f"batch index {work.batch_index} beyond the task's {len(loaded.batch_roots)} batches")
    if loaded.batch_roots[int(work.batch_index)] != bytes(work.batch_root):
        raise ReplayUnavailable("the local batch does not have the message's batch root")
    return loaded, state, updates, loaded.masked_batch(int(work.batch_index), get_input_mask_seed(message))


def replay_iteration(context: RoleContext, task: C.Task, message: C.IterationMessage) -> C.ReplayResult:
    """Re-execute the iteration `message` claims; ReplayUnavailable if its inputs cannot be had.
    A result is kept (context.replays): the inputs are content-addressed and the engine exact,
    so a message replays to the same roots every time."""
    if (known := context.replays.get(message)) is not None:
        return known
    loaded, state, updates, batch = replay_inputs(context, task, message)
    try:
        new_state, update, _ = loaded.iterate(tree(state), batch, [tree(u) for u in updates])
    except (ValueError, TypeError, KeyError) as error:
        raise ReplayUnavailable(f"the iteration's inputs do not fit the model: {error}") from None
    result = C.ReplayResult(update_root=bundle_root(flat(update)), state_after_root=bundle_root(flat(new_state)))
    context.replays.put(message, result)
    return result


def is_proven_fraud(context: RoleContext, task: C.Task, message: C.IterationMessage,
                    engine_result: C.ReplayResult) -> bool:
    """Whether the engine's replay `engine_result` of `message` proves it false:
    it differs from the claim and the spec's NumPy reference, run on the same
    inputs, agrees with the engine. An engine that disagrees with the reference
    accuses nobody (counted as `engine_faults`); unavailable inputs prove nothing."""
    if engine_result == claimed_result(message):
        return False
    try:
        loaded, state, updates, batch = replay_inputs(context, task, message)
        reference = reference_replay(loaded, state, updates, batch)
    except (ReplayUnavailable, ValueError, TypeError, KeyError) as error:
        logger.info("no reference replay of iteration %d of %s…: %s", message.work.iteration,
                    bytes(message.work.miner).hex()[:12], error)
        return False
    if reference != engine_result:
        context.metrics["engine_faults"] += 1
        logger.error("the engine's replay of iteration %d of %s… disagrees with the spec's reference: "
                     "nobody is accused", message.work.iteration, bytes(message.work.miner).hex()[:12])
        return False
    return True


def find_signed_message(context: RoleContext, task_id: bytes, iteration: int, miner: bytes,
                        accept=lambda signed: True) -> C.SignedIterationMessage | None:
    """A signed message of (task, iteration, miner) that `accept`s: from the
    gossip this node heard, else from the messages its peers recorded
    (`/bws/audit/1`, signature checked); None if nobody has one."""
    key = (bytes(task_id), int(iteration), bytes(miner))
    heard = [s for s in context.messages.get(*key) if accept(s)]
    if heard:
        return heard[0]
    found = context.fetch_iteration_message(*key, list(context.network.peers()), accept)
    return found[0] if found is not None else None


def signed_message(context: RoleContext, message: C.IterationMessage) -> C.SignedIterationMessage | None:
    """The miner's signed `message` (find_signed_message); None if nobody has it."""
    work = message.work
    return find_signed_message(context, bytes(work.task_id), int(work.iteration), bytes(work.miner),
                               accept=lambda signed: signed.message == message)


class VerifierDisputes:
    """Disputes the verifier's replay mismatches (module docstring), in a thread of its own."""

    def __init__(self, context: RoleContext) -> None:
        self.context = context
        self.disputes = Disputes(context)
        self._queue: queue.Queue = queue.Queue(maxsize=1000)
        threading.Thread(target=self._run, name="bws-verifier-disputes", daemon=True).start()

    def delay(self, miner: bytes) -> float:
        """Seconds this node waits before disputing `miner`: the same for one
        (node, miner), different between nodes."""
        spread = int.from_bytes(hash_bytes(self.context.address + bytes(miner))[:4], "little") % 1000
        return DISPUTE_DELAY_SECONDS + DISPUTE_DELAY_SPREAD_SECONDS * spread / 1000

    def suspect(self, task: C.Task, message: C.IterationMessage, engine_result: C.ReplayResult) -> None:
        due = time.monotonic() + self.delay(bytes(message.work.miner))
        try:
            self._queue.put_nowait((due, task, message, engine_result))
        except queue.Full:
            self.context.metrics["verifier_disputes_dropped"] += 1

    def _run(self) -> None:
        stop = self.context.stop
        while not stop.is_set():
            try:
                due, task, message, engine_result = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if stop.wait(max(0.0, due - time.monotonic())):
                return
            try:
                self.dispute_if_proven(task, message, engine_result)
            except Exception:  # logged and counted; the node keeps running
                logger.exception("disputing a replay mismatch failed")
                self.context.metrics["verifier_dispute_errors"] += 1

    def dispute_if_proven(self, task: C.Task, message: C.IterationMessage, engine_result: C.ReplayResult) -> bool:
        """Submit Dispute(FraudProof) for a mismatching `message` if it is proven
        and not already disputed; whether one was submitted."""
        context = self.context
        work = message.work
        miner = bytes(work.miner)
        if miner == context.address:
            return False  # a node does not accuse itself (a byzantine miner's own block)
        if not self.disputes.needed(bytes(work.task_id), miner, int(work.iteration)):
            return False  # before the reference replay: every later block of a slashed cheat comes here too
        if not is_proven_fraud(context, task, message, engine_result):
            return False
        signed = signed_message(context, message)
        if signed is None:
            context.metrics["verifier_fraud_unsigned"] += 1
            logger.info("replay mismatch of iteration %d of %s…, but nobody has its signed message: no dispute",
                        work.iteration, miner.hex()[:12])
            return False
        context.metrics["verifier_fraud"] += 1
        return self.disputes.submit(C.FraudProof(message=signed))


class NetworkReplay:
    """The chain's `replay`, counting what it did in the role metrics
    (replays, matches, mismatches, unavailable inputs, blocks of other miners),
    and handing mismatches to `VerifierDisputes` when the node has a key.
    Nothing here reads the node's address without one: this runs on the sync
    thread, which a missing key must not stop."""

    def __init__(self, context_ref) -> None:
        # The chain needs its replay before the context (which needs the chain) exists.
        self._context_ref = context_ref
        self._disputes: VerifierDisputes | None = None
        self._lock = threading.Lock()

    def disputes(self, context: RoleContext) -> VerifierDisputes:
        with self._lock:
            if self._disputes is None:
                self._disputes = VerifierDisputes(context)
            return self._disputes

    def prefetch(self, task: C.Task, message: C.IterationMessage) -> None:
        """Fetch what replaying `message` needs into the node's cache (the chain
        calls this before it takes its lock); ReplayUnavailable if it cannot."""
        context: RoleContext | None = self._context_ref()
        if context is None or context.own_iteration(message) is not None or context.replays.get(message) is not None:
            return  # roles not started yet, or nothing to fetch: the replay itself decides
        try:
            replay_inputs(context, task, message)
        except ReplayUnavailable:
            context.metrics["replays_unavailable"] += 1
            raise

    def __call__(self, task: C.Task, message: C.IterationMessage) -> C.ReplayResult:
        context: RoleContext = self._context_ref()
        if (own := context.own_iteration(message)) is not None:  # this node's block of its own iteration
            context.metrics["own_iterations_not_replayed"] += 1
            return own
        started = time.perf_counter()
        try:
            result = replay_iteration(context, task, message)
        except ReplayUnavailable:
            context.metrics["replays_unavailable"] += 1
            raise
        finally:
            context.metrics["replay_seconds_total_ms"] += int((time.perf_counter() - started) * 1000)
        context.metrics["replays"] += 1
        if result != claimed_result(message):
            context.metrics["replay_mismatches"] += 1
            logger.warning("replay mismatch: task %s… iteration %d of miner %s…", bytes(message.work.task_id).hex()[:12],
                           message.work.iteration, bytes(message.work.miner).hex()[:12])
            if context.account is None:
                context.metrics["mismatches_not_disputed"] += 1
            else:
                self.disputes(context).suspect(task, message, result)
        elif context.account is None or bytes(message.work.miner) != context.address:
            context.metrics["peer_blocks_verified"] += 1
        return result
