"""The iteration message log's bounds (issue #14): a task the head no longer
holds is forgotten, a miner keeps its latest iterations per task, and the
whole log has a ceiling at which a task's junk never pushes out the messages
of a task in training."""
from __future__ import annotations

import threading
from types import SimpleNamespace

from bws.node.deferred_gossip import DeferredGossip
from bws.node.roles import context as roles_context
from bws.node.roles.context import (
    FORGET_AFTER_BLOCKS, ITERATIONS_KEPT_PER_MINER, VERSIONS_KEPT, MessageLog, RoleContext,
)
from bws.node.service import Node
from bws.node.wallet import Account
from bws.spec import containers as C
from bws.spec.constants import TASK_FINALIZED, TASK_TRAINING
from bws.spec.hashing import ZERO_HASH
from bws.spec.pouw import sign_iteration_message

MINER, OTHER = Account(bytes([7]) * 32), Account(bytes([9]) * 32)
TRAINING, ENDED = bytes([1]) * 32, bytes([2]) * 32


def message(task_id: bytes, iteration: int, account: Account = MINER, loss: int = 0) -> C.SignedIterationMessage:
    work = C.IterationWork(task_id=task_id, iteration=iteration, miner=account.address, state_before_root=ZERO_HASH,
                           batch_index=0, batch_root=ZERO_HASH, batch_proof=[], peer_update_roots=[],
                           update_root=ZERO_HASH, state_after_root=ZERO_HASH, loss=loss)
    return sign_iteration_message(account.secret_key, C.IterationMessage(work=work, header_commitment=ZERO_HASH))


def head_tasks(**statuses: int) -> dict:
    """A head's task map (only the status matters to the log): training=..., ended=..."""
    ids = {"training": TRAINING, "ended": ENDED}
    return {ids[name]: SimpleNamespace(status=status) for name, status in statuses.items()}


def test_a_task_the_head_no_longer_holds_is_forgotten_once_no_reorg_can_bring_it_back():
    log = MessageLog()
    for iteration in range(3):
        assert log.add(message(TRAINING, iteration), "peer")
        assert log.add(message(ENDED, iteration), "peer")
    assert log.follow_head(head_tasks(training=TASK_TRAINING, ended=TASK_FINALIZED), 10) == []
    assert len(log) == 6
    # A reorg near the tip: a head without the task, then one with it again. Nothing is lost
    # (a member's own messages, which nobody sends it again, included).
    assert log.follow_head(head_tasks(training=TASK_TRAINING), 11) == []
    assert log.follow_head(head_tasks(training=TASK_TRAINING, ended=TASK_FINALIZED), 12) == [] and len(log) == 6
    assert log.follow_head(head_tasks(training=TASK_TRAINING), 13) == []   # `ended` left the state
    assert log.follow_head(head_tasks(training=TASK_TRAINING), 12 + FORGET_AFTER_BLOCKS - 1) == []
    assert log.follow_head(head_tasks(training=TASK_TRAINING), 12 + FORGET_AFTER_BLOCKS) == [ENDED]
    assert len(log) == 3 and log.get(ENDED, 0, MINER.address) == [] and log.max_iteration(ENDED) == -1
    assert log.latest(TRAINING, MINER.address) == message(TRAINING, 2)


def test_a_new_head_forgets_the_roles_per_task_state():
    """The node calls its head listeners once per import that moved the head; the roles'
    listener forgets the messages and per-task gauges of the tasks the head dropped."""
    log = MessageLog()
    log.add(message(ENDED, 0), None)
    roles = SimpleNamespace(messages=log, gauges={("task_last_message", ENDED): 1.0, ("evaluation", TRAINING): [],
                                                  "last_loss": 0.5})
    log.follow_head(head_tasks(training=TASK_TRAINING, ended=TASK_FINALIZED), 1)
    state = SimpleNamespace(tasks=head_tasks(training=TASK_TRAINING), height=1 + FORGET_AFTER_BLOCKS)
    connected = SimpleNamespace(status="connected", connected=[], disconnected=[], block_hash=bytes(32), height=1)
    node = SimpleNamespace(chain=SimpleNamespace(import_with_orphans=lambda block, announced_height: [connected],
                                                 head_state=state),
                           mempool=SimpleNamespace(prune=lambda *senders: None), _head_changed_at=0.0,
                           _sync_wanted=threading.Event(),
                           head_listeners=[lambda head: RoleContext.follow_head(roles, head)],
                           deferred_messages=DeferredGossip(), _take_deferred_message=lambda signed: False)
    Node.import_block(node, "a block")
    assert len(log) == 0
    assert roles.gauges == {("evaluation", TRAINING): [], "last_loss": 0.5}


def test_a_miner_keeps_its_latest_iterations_of_a_task():
    log = MessageLog()
    extra = 5
    for iteration in range(ITERATIONS_KEPT_PER_MINER + extra):
        assert log.add(message(TRAINING, iteration), None)
    assert len(log) == ITERATIONS_KEPT_PER_MINER
    assert log.get(TRAINING, extra - 1, MINER.address) == [] and log.get(TRAINING, extra, MINER.address)
    assert not log.add(message(TRAINING, 0), None) and log.refused == 1   # older than all it keeps
    assert log.add(message(TRAINING, 0, OTHER), None)                   # another miner's are its own
    assert log.max_iteration(TRAINING) == ITERATIONS_KEPT_PER_MINER + extra - 1


def test_at_the_bound_junk_never_pushes_out_a_training_tasks_messages(monkeypatch):
    monkeypatch.setattr(roles_context, "MESSAGES_KEPT", 6)
    log = MessageLog()
    log.follow_head(head_tasks(training=TASK_TRAINING, ended=TASK_FINALIZED), 1)
    for iteration in range(4):
        assert log.add(message(ENDED, iteration), None)
    assert log.add(message(TRAINING, 0), None) and log.add(message(TRAINING, 1), None)
    assert len(log) == 6
    assert not log.add(message(ENDED, 4), None)   # the log is full: an ended task's message is refused
    assert log.add(message(TRAINING, 2), None)    # a training task's message forgets the ended task
    assert len(log) == 3 and log.get(ENDED, 0, MINER.address) == []
    for iteration in range(3, 6):
        assert log.add(message(TRAINING, iteration), None)
    assert not log.add(message(TRAINING, 6), None)   # full of messages in use: the newcomer waits, none is evicted
    assert [len(log.get(TRAINING, i, MINER.address)) for i in range(6)] == [1] * 6
    assert log.refused == 2


def test_two_versions_of_one_iteration_are_kept():
    log = MessageLog()
    assert [log.add(message(TRAINING, 5, loss=n), None) for n in range(3)] == [True, True, False]
    assert len(log.get(TRAINING, 5, MINER.address)) == VERSIONS_KEPT == len(log)
