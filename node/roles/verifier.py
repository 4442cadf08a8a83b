"""The verifier: before a block is accepted, replay the iteration behind it.

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
"""
from __future__ import annotations

import logging
import time

from bws.spec import containers as C
from bws.spec.state_transition import ReplayUnavailable

from .context import RoleContext, RoleError
from .data import DataError, bundle_root
from .library import TaskUnavailable, flat, tree

logger = logging.getLogger("bws.node.roles.verifier")


def replay_iteration(context: RoleContext, task: C.Task, message: C.IterationMessage) -> C.ReplayResult:
    """Re-execute the iteration `message` claims; ReplayUnavailable if its inputs cannot be had."""
    work = message.work
    peer = context.messages.peer_of(bytes(work.miner))
    try:
        loaded = context.library.load(task)
        state = context.fetch_tensors(bytes(work.state_before_root), peer)
        updates = [context.fetch_tensors(bytes(root), peer) for root in work.peer_update_roots]
    except (TaskUnavailable, RoleError, DataError) as error:
        raise ReplayUnavailable(str(error)) from None
    if int(work.batch_index) >= len(loaded.batch_roots):
        raise ReplayUnavailable(f"batch index {work.batch_index} beyond the task's {len(loaded.batch_roots)} batches")
    if loaded.batch_roots[int(work.batch_index)] != bytes(work.batch_root):
        raise ReplayUnavailable("the local batch does not have the message's batch root")
    batch = loaded.batch(int(work.batch_index))
    try:
        new_state, update, _ = loaded.iterate(tree(state), batch, [tree(u) for u in updates])
    except (ValueError, TypeError, KeyError) as error:
        raise ReplayUnavailable(f"the iteration's inputs do not fit the model: {error}") from None
    return C.ReplayResult(update_root=bundle_root(flat(update)), state_after_root=bundle_root(flat(new_state)))


class NetworkReplay:
    """The chain's `replay`, counting what it did in the role metrics
    (replays, matches, mismatches, unavailable inputs, blocks of other miners)."""

    def __init__(self, context_ref) -> None:
        # The chain needs its replay before the context (which needs the chain) exists.
        self._context_ref = context_ref

    def __call__(self, task: C.Task, message: C.IterationMessage) -> C.ReplayResult:
        context: RoleContext = self._context_ref()
        started = time.perf_counter()
        try:
            result = replay_iteration(context, task, message)
        except ReplayUnavailable:
            context.metrics["replays_unavailable"] += 1
            raise
        finally:
            context.metrics["replay_seconds_total_ms"] += int((time.perf_counter() - started) * 1000)
        context.metrics["replays"] += 1
        matches = (result.update_root == message.work.update_root
                   and result.state_after_root == message.work.state_after_root)
        if not matches:
            context.metrics["replay_mismatches"] += 1
            logger.warning("replay mismatch: task %s… iteration %d of miner %s…", bytes(message.work.task_id).hex()[:12],
                           message.work.iteration, bytes(message.work.miner).hex()[:12])
        elif bytes(message.work.miner) != context.address:
            context.metrics["peer_blocks_verified"] += 1
        return result
