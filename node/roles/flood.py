"""A peer that floods the task topic (`bws devnet --byzantine N:flood-messages`,
docs/audit.md). Never for production use.

Every `FLOOD_INTERVAL_SECONDS` it gossips, for every task its head holds,
`FLOOD_MESSAGES_PER_TASK` iteration messages validly signed with its own key
that no group may keep (`flood_targets`): for a task whose group is drawn
and does not hold it, iterations from 0 on; for a task whose group it is in,
iterations at and past the task's last. Never for a task whose group is not
drawn yet: other nodes keep such a message until the draw (node/deferred_gossip.py),
and had the flooder been drawn, its junk would be a second version of its own
iterations (slashed). Honest nodes IGNORE them (`Node._validate_iteration_message`)
and keep none (`MessageLog.add`), so the flood costs them a signature check
each and changes nothing else (issue #14's m4).

It publishes through the network directly, not `RoleContext.publish_iteration_message`:
its own message log is the node's honest one and stays so. The node process
learns that it floods from `BWS_ATTACKS` (set by the devnet for the chosen node).
"""
from __future__ import annotations

import logging
import os
import threading

from bws.spec import containers as C
from bws.spec.encoding import encode
from bws.spec.hashing import hash_bytes
from bws.spec.pouw import compute_iteration_message_signing_root
from bws.spec.tasks import get_member_index

from ..p2p import TOPIC_TASK, NetworkError
from ..wallet import Account
from .context import RoleContext

logger = logging.getLogger("bws.node.roles.flood")

ENVIRONMENT_VARIABLE = "BWS_ATTACKS"      # comma-separated attacks the node process runs itself
FLOOD = "flood-messages"
FLOOD_INTERVAL_SECONDS = 2.0
FLOOD_MESSAGES_PER_TASK = 2


def attacks_from_environment() -> set[str]:
    return {kind for kind in os.environ.get(ENVIRONMENT_VARIABLE, "").split(",") if kind}


def flood_targets(tasks: dict[bytes, C.Task], miner: bytes,
                  per_task: int = FLOOD_MESSAGES_PER_TASK) -> list[tuple[bytes, int]]:
    """(task id, iteration) of the messages `miner` floods: none of them is a
    message its group may send, so an honest node keeps none."""
    targets = []
    for task_id in sorted(tasks):
        task = tasks[task_id]
        if not task.members:
            continue  # its group is not drawn: the flooder may yet be a member, and its junk a second version
        first = int(task.iterations) if get_member_index(task, miner) is not None else 0
        targets += [(bytes(task_id), first + k) for k in range(per_task)]
    return targets


def junk_iteration_message(account: Account, task_id: bytes, iteration: int, salt: int) -> C.SignedIterationMessage:
    """A message validly signed by `account` for (task, iteration) whose roots name no data."""
    junk = hash_bytes(b"BWS/junk-iteration" + bytes(task_id) + iteration.to_bytes(8, "little")
                      + salt.to_bytes(8, "little"))
    work = C.IterationWork(task_id=task_id, iteration=iteration, miner=account.address, state_before_root=junk,
                           batch_index=0, batch_root=junk, batch_proof=[], peer_update_roots=[], update_root=junk,
                           state_after_root=junk, loss=0)
    message = C.IterationMessage(work=work, header_commitment=junk)
    return C.SignedIterationMessage(message=message, public_key=account.public_key,
                                    signature=account.sign(compute_iteration_message_signing_root(message)))


class MessageFlooder:
    def __init__(self, context: RoleContext) -> None:
        self.context = context
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        round_number = 0
        while not self.context.stop.wait(FLOOD_INTERVAL_SECONDS):
            self.flood_once(round_number)
            round_number += 1

    def flood_once(self, round_number: int) -> int:
        """One round of the flood; how many messages were gossiped."""
        sent = 0
        for task_id, iteration in flood_targets(self.context.chain.head_state.tasks, self.context.address):
            try:
                signed = junk_iteration_message(self.context.account, task_id, iteration, round_number)
                self.context.network.publish(TOPIC_TASK, encode(signed))
            except NetworkError as error:   # its publish queue is full: the flood paces itself
                logger.debug("flood message not gossiped: %s", error)
                continue
            sent += 1
        self.context.metrics["flood_messages_sent"] += sent
        return sent
