"""Gossip judged too early (node/deferred_gossip.py): an iteration message a
node IGNOREd only because its head did not hold the sender's group yet is
taken, as if just gossiped, once a new head does; the buffer that keeps such
messages stays within its bounds whatever arrives."""
from __future__ import annotations

import dataclasses

from bws.node.deferred_gossip import DeferredGossip
from bws.node.p2p import Verdict
from bws.node.review import ToyChain
from bws.node.service import Node, NodeSettings
from bws.spec.constants import TASK_GROUP_SELECTED
from bws.spec.encoding import encode
from bws.spec.tasks import compute_task_id, get_member_index


def test_a_message_ignored_while_the_head_lacked_its_group_is_taken_at_the_head_that_holds_it(tmp_path):
    """Issue #14: a member's first message, gossiped before a node imported the block that drew the group, was
    IGNOREd and lost there (a supervisor never recorded it; a member waited for it in vain)."""
    toy = ToyChain()
    state, parent = toy.genesis_state, toy.genesis_block
    submit = toy.transaction(state, "client", toy.submit_task_body(group_size=2))
    task_id = compute_task_id(toy.config.chain_id, toy.address["client"], 0)
    blocks, transactions = [], [submit]
    while task_id not in state.tasks or state.tasks[task_id].status != TASK_GROUP_SELECTED:
        assert state.height < 20, "the group was never drawn"
        state, parent = toy.extend(state, parent, ("alice", "bob", "carol")[state.height % 3], transactions)
        blocks.append(parent)
        transactions = []
    task = state.tasks[task_id]
    name_of = {address: name for name, address in toy.address.items()}
    member = name_of[bytes(task.members[0].address)]
    outsider = next(name for name in toy.MINERS if get_member_index(task, toy.address[name]) is None)
    message = toy.signed_message(member, toy.iteration_work(task_id, task, 0, 0), bytes(32))
    junk = toy.signed_message(outsider, dataclasses.replace(toy.iteration_work(task_id, task, 0, 0),
                                                            miner=toy.address[outsider]), bytes(32))

    node = Node(NodeSettings(data_dir=tmp_path / "node", genesis=toy.genesis, roles={"supervisor"}))
    taken = []
    node.iteration_message_listeners.append(lambda signed, origin: taken.append(signed))
    try:
        for block in blocks[:-1]:
            node.import_block(block)
        for signed in (message, junk):   # the head lacks the group: no judgement yet
            assert node._validate_iteration_message(encode(signed)) == Verdict.IGNORE
        assert len(node.deferred_messages) == 2 and taken == []

        node.import_block(blocks[-1])   # the block that drew the group
        assert taken == [message]
        assert node.counters["iteration_messages_deferred_taken"] == 1
        assert node.store.iteration_messages(task_id, 0, toy.address[member]) == [message]   # the supervisors' record
        assert node._validate_iteration_message(encode(junk)) == Verdict.IGNORE   # an outsider's: kept, never taken
        for _ in range(3):
            state, parent = toy.extend(state, parent, "alice")
            node.import_block(parent)
        assert taken == [message] and len(node.deferred_messages) == 0   # dropped after RETRIED_HEADS heads
    finally:
        node.store.close()


def test_the_deferred_messages_stay_within_their_bounds():
    deferred = DeferredGossip(kept_messages=3, kept_bytes=100, retried_heads=2)
    for n in range(5):
        deferred.defer(bytes([n]) * 10, n)
    deferred.defer(bytes([4]) * 10, 4)   # kept already
    assert len(deferred) == 3 and deferred.dropped == 2
    offered = []
    assert deferred.retry(lambda item: offered.append(item) or item == 3) == 1
    assert offered == [2, 3, 4]
    deferred.defer(b"x" * 95, "large")   # pushes out the oldest until it fits the bytes
    assert len(deferred) == 1
    deferred.defer(b"y" * 101, "too large")
    assert len(deferred) == 1
    assert deferred.retry(lambda item: False) == 0 and len(deferred) == 1
    assert deferred.retry(lambda item: False) == 0 and len(deferred) == 0   # offered at two heads: dropped
