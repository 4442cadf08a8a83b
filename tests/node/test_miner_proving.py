"""The miner's split between the training thread and the proving thread:
pipelined, it publishes the same iteration work as when it proves every
iteration on the training thread, in iteration order, with signatures that
are the spec's bytes, and its blocks are valid on another node. Also the
caches it relies on (batch Merkle proofs, epoch order, container fields)
give what the uncached spec functions give."""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from bws.node.devnet import DevnetOptions, build_task, derive_account, make_genesis
from bws.node.p2p import TOPIC_BLOCK, TOPIC_TASK
from bws.node.merkle import MerkleTree
from bws.node.roles.library import TaskLibrary
from bws.node.roles.miner import Miner, find_nonce, sign_iteration_message
from bws.node.roles.verifier import replay_iteration
from bws.node.transition import claimed_result
from bws.spec import containers as C
from bws.spec import pouw
from bws.spec.encoding import decode, get_fields
from bws.spec.hashing import compute_merkle_proof, compute_merkle_root, hash_bytes
from bws.templates import schedule
from tests.node.test_roles_verifier import make_node

MIN_ITERATIONS = 12
MAX_ITERATIONS = 120   # a block's proof of work depends on its timestamp: iterate until one is found


@pytest.fixture(scope="module")
def one_miner():
    """A genesis whose only bootstrap miner is node0 (always its turn)."""
    definition = build_task(DevnetOptions(nodes=3, iterations=MAX_ITERATIONS))
    account = derive_account(7, "node0")
    genesis = make_genesis([SimpleNamespace(account=account)], derive_account(7, "client"), definition,
                           timestamp=1_700_000_000)
    return genesis, [account], TaskLibrary()


def mine(one_miner, directory, pipelined: bool, nodes: dict, iterations: int | None = None):
    """Run `iterations`, or at least MIN_ITERATIONS and until a block is mined."""
    context = make_node(one_miner, directory, "node0", one_miner[1][0], nodes)
    miner = Miner(context)
    if pipelined:
        miner.start_proving()
    done = 0
    while done < (iterations or MIN_ITERATIONS) or (iterations is None and not context.metrics["blocks_mined"]):
        assert done < MAX_ITERATIONS, f"no block in {MAX_ITERATIONS} iterations"
        miner._last_bootstrap = float("-inf")  # no pacing in a test
        assert miner.step()
        done += 1
        if iterations is None and done >= MIN_ITERATIONS:
            miner.wait_proven()  # whether a block came
    miner.wait_proven()
    context.stop.set()
    miner.join(10)
    published = context.network.published
    messages = [decode(data, C.SignedIterationMessage) for topic, data in published if topic == TOPIC_TASK]
    blocks = [decode(data, C.Block) for topic, data in published if topic == TOPIC_BLOCK]
    return context, messages, blocks


def test_pipelined_miner_publishes_replayable_work_in_order_and_valid_blocks(one_miner, tmp_path):
    """The proving thread signs what the training thread computed: every
    message replays exactly (on a verifier's engine, serially), in order,
    each trained for the header it commits to, and the blocks import."""
    nodes: dict = {}
    context, pipelined, blocks = mine(one_miner, tmp_path / "pipelined", pipelined=True, nodes=nodes)
    iterations = len(pipelined)
    assert context.metrics["miner_errors"] == 0 and context.metrics["iterations"] == iterations >= MIN_ITERATIONS
    assert [m.message.work.iteration for m in pipelined] == list(range(iterations))
    for before, after in zip(pipelined, pipelined[1:]):
        assert after.message.work.state_before_root == before.message.work.state_after_root
    secret = one_miner[1][0].secret_key
    for signed in pipelined:
        assert signed == pouw.sign_iteration_message(secret, signed.message)   # the spec's bytes
    assert blocks and context.metrics["blocks_mined"] == len(blocks)
    verifier = make_node(one_miner, tmp_path, "verifier", derive_account(7, "node1"), nodes)
    task = verifier.chain.head_state.tasks[pipelined[0].message.work.task_id]
    for signed in pipelined:
        assert replay_iteration(verifier, task, signed.message) == claimed_result(signed.message)
    for block in blocks:
        assert verifier.chain.import_block(block).status == "connected"
    assert verifier.metrics["replay_mismatches"] == 0


def test_node_signature_is_the_spec_signature():
    account = derive_account(3, "signer")
    work = C.IterationWork(task_id=hash_bytes(b"t"), iteration=5, miner=account.address, state_before_root=bytes(32),
                           batch_index=2, batch_root=hash_bytes(b"b"), batch_proof=[], peer_update_roots=[],
                           update_root=hash_bytes(b"u"), state_after_root=hash_bytes(b"s"), loss=7)
    for header_commitment in (bytes(32), hash_bytes(b"h")):
        message = C.IterationMessage(work=work, header_commitment=header_commitment)
        signed = sign_iteration_message(account.secret_key, account.public_key, message)
        assert signed == pouw.sign_iteration_message(account.secret_key, message)
        assert pouw.is_valid_signed_iteration_message(signed)


def test_find_nonce_finds_the_first_nonce_the_spec_accepts():
    found_some = False
    for trial in range(40):
        header = C.BlockHeader(parent_hash=hash_bytes(bytes([trial])), height=trial + 1, timestamp=1_700_000_000 + trial,
                               state_root=bytes(32), transactions_root=bytes(32), miner=bytes(20), target=2**251,
                               task_id=hash_bytes(b"task"), iteration=trial, message_digest=hash_bytes(b"m"),
                               nonce_index=0, nonce=bytes(32))
        seed = hash_bytes(b"seed" + bytes([trial]))
        accepted = [index for index in range(6) if pouw.is_valid_pow(dataclasses.replace(
            header, nonce_index=index, nonce=pouw.compute_nonce(seed, index)))]
        expected = (accepted[0], bytes(pouw.compute_nonce(seed, accepted[0]))) if accepted else None
        assert find_nonce(header, seed, 6) == expected
        found_some |= expected is not None
    assert found_some


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 9])
def test_batch_proofs_from_cached_layers_are_the_spec_proofs(count):
    leaves = [hash_bytes(bytes([i])) for i in range(count)]
    tree = MerkleTree(leaves)
    assert tree.root == compute_merkle_root(leaves)
    for index in range(count):
        assert tree.proof(index) == compute_merkle_proof(leaves, index)


def test_cached_epoch_order_is_shared_read_only_and_the_rule():
    order = schedule.epoch_order(50, 3, 1)
    assert schedule.epoch_order(50, 3, 1) is order
    with pytest.raises(ValueError):
        order[0] = 1
    key = lambda i: hash_bytes(b"BWS/schedule" + (3).to_bytes(8, "little") + (1).to_bytes(4, "little")
                               + i.to_bytes(4, "little"))
    assert order.tolist() == sorted(range(50), key=key)
    assert np.array_equal(schedule.batch_indices(50, 10, 3, 6), schedule.epoch_order(50, 3, 1)[10:20])


def test_cached_fields_are_the_dataclass_fields():
    assert [name for name, _ in get_fields(C.IterationWork)] == [f.name for f in dataclasses.fields(C.IterationWork)]
    assert get_fields(C.IterationWork) is get_fields(C.IterationWork)


def mine_until_the_pool_drops_it(context) -> None:
    """Mine with the one pooled transaction the full rules refuse: the miner
    keeps mining without it, and the pool drops it after three heads."""
    assert len(context.mempool) == 1
    miner = Miner(context)
    for _ in range(MAX_ITERATIONS):
        miner._last_bootstrap = float("-inf")
        assert miner.step()
        if not len(context.mempool):
            break
    assert not len(context.mempool), "the refused transaction is still pooled"
    assert context.metrics["transactions_dropped_invalid"] == 1 and context.metrics["blocks_mined"] >= 2


def test_a_pooled_transaction_the_rules_refuse_is_dropped_after_three_heads(one_miner, tmp_path):
    """Admitted to the pool (envelope, fee, nonce and balance are fine) but
    invalid by the full rules: the miner leaves it out of every block and the
    pool drops it once refused on three heads, so it cannot hold back node0's
    later transactions."""
    from bws.spec.state_transition import sign_transaction
    context = make_node(one_miner, tmp_path, "node0", one_miner[1][0], {})
    config = context.chain.config
    orphan_result = C.Transaction(chain_id=config.chain_id, sender=context.address, nonce=0,
                                  fee=config.min_transaction_fee,
                                  body=C.EvaluationResult(task_id=hash_bytes(b"no such task"), models=[]))
    context.submit_transaction(sign_transaction(one_miner[1][0].secret_key, orphan_result))
    mine_until_the_pool_drops_it(context)
    assert context.chain.account_nonce(context.address) == 0   # never included


@pytest.mark.parametrize("poison", ["nested", "huge-work"])
def test_a_poison_task_does_not_stop_the_miner(one_miner, tmp_path, poison):
    """Issue #14's c3: task definitions that made the rules raise something
    other than a failed assert (JSON nested 30,000 deep: RecursionError; work
    units above 2**64: ValueError building the Task) failed every block
    template. The first is now refused by the spec's depth bound, and any
    exception is an invalid transaction: the miner mines without it and the
    pool drops it."""
    from bws.spec.state_transition import sign_transaction
    context = make_node(one_miner, tmp_path, "node0", one_miner[1][0], {})
    config = context.chain.config
    definition = {"nested": b'{"dataset":{"batch_size":1},"model":' + b"[" * 30_000 + b"]" * 30_000 + b"}",
                  "huge-work": json.dumps({"dataset": {"batch_size": 2**60}, "model": {
                      "input_shape": [1024], "layers": [{"type": "dense", "units": 1024}], "loss": {"type": "mse"},
                      "optimizer": {"type": "sgd"}}}, sort_keys=True, separators=(",", ":")).encode()}[poison]
    submit = C.SubmitTask(task_definition=definition, dataset_root=hash_bytes(b"data"), num_batches=100,
                          test_set_hash=hash_bytes(b"test"), group_size=1, iterations=10,
                          evaluation_deadline=10**6, payment=1)
    context.submit_transaction(sign_transaction(one_miner[1][0].secret_key, C.Transaction(
        chain_id=config.chain_id, sender=context.address, nonce=0, fee=config.min_transaction_fee, body=submit)))
    mine_until_the_pool_drops_it(context)


def test_junk_fraud_proofs_do_not_use_up_the_blocks_seats(one_miner, tmp_path):
    """Issue #14's h3: five fraud proofs against a key that is in no group, at
    the best fee rate, were counted toward MAX_FRAUD_PROOFS_PER_BLOCK before
    being checked, so the template stopped there and the block carried nothing.
    Now they fail the rules and leave; the client's transfer is taken."""
    from bws.spec.constants import MAX_FRAUD_PROOFS_PER_BLOCK
    from bws.spec.state_transition import sign_transaction
    context = make_node(one_miner, tmp_path, "node0", one_miner[1][0], {})
    config, outsider = context.chain.config, derive_account(7, "outsider")
    work = C.IterationWork(task_id=hash_bytes(b"task"), iteration=3, miner=outsider.address,
                           state_before_root=bytes(32), batch_index=0, batch_root=bytes(32), batch_proof=[],
                           peer_update_roots=[], update_root=bytes(32), state_after_root=bytes(32), loss=0)
    for nonce in range(MAX_FRAUD_PROOFS_PER_BLOCK + 1):
        evidence = sign_iteration_message(outsider.secret_key, outsider.public_key, C.IterationMessage(
            work=dataclasses.replace(work, loss=nonce), header_commitment=bytes(32)))
        context.submit_transaction(sign_transaction(one_miner[1][0].secret_key, C.Transaction(
            chain_id=config.chain_id, sender=context.address, nonce=nonce, fee=1000 * config.min_transaction_fee,
            body=C.Dispute(evidence=C.FraudProof(message=evidence)))))
    client = derive_account(7, "client")
    transfer = sign_transaction(client.secret_key, C.Transaction(
        chain_id=config.chain_id, sender=client.address, nonce=0, fee=config.min_transaction_fee,
        body=C.Transfer(recipient=outsider.address, amount=5)))
    context.submit_transaction(transfer)
    chosen = Miner(context)._select_transactions(context.chain.head_state)
    assert chosen == [transfer]


def test_a_block_takes_at_most_the_allowed_fraud_proofs_and_the_rest_wait(one_miner, tmp_path, monkeypatch):
    """Six pooled FraudProofs: the miner's block takes the first four (the spec's
    MAX_FRAUD_PROOFS_PER_BLOCK) and stops there, so the sender's later nonces wait
    instead of failing. The transition is the real one elsewhere (tests/node/test_transition.py);
    here apply_transaction is stubbed, as the evidence has no real iteration behind it."""
    from bws.node.roles import miner as module
    from bws.spec.constants import MAX_FRAUD_PROOFS_PER_BLOCK
    from bws.spec.state_transition import sign_transaction

    context = make_node(one_miner, tmp_path, "node0", one_miner[1][0], {})
    secret = one_miner[1][0].secret_key
    config = context.chain.config
    work = C.IterationWork(task_id=hash_bytes(b"task"), iteration=3, miner=context.address, state_before_root=bytes(32),
                           batch_index=0, batch_root=bytes(32), batch_proof=[], peer_update_roots=[],
                           update_root=bytes(32), state_after_root=bytes(32), loss=0)
    for nonce in range(MAX_FRAUD_PROOFS_PER_BLOCK + 2):
        evidence = sign_iteration_message(secret, context.public_key, C.IterationMessage(
            work=dataclasses.replace(work, loss=nonce), header_commitment=bytes(32)))
        context.submit_transaction(sign_transaction(secret, C.Transaction(
            chain_id=config.chain_id, sender=context.address, nonce=nonce, fee=config.min_transaction_fee,
            body=C.Dispute(evidence=C.FraudProof(message=evidence)))))
    monkeypatch.setattr(module, "apply_transaction", lambda state, signed, recipient, replay: state)
    chosen = Miner(context)._select_transactions(context.chain.head_state)
    assert [int(s.transaction.nonce) for s in chosen] == list(range(MAX_FRAUD_PROOFS_PER_BLOCK))
    assert len(context.mempool) == MAX_FRAUD_PROOFS_PER_BLOCK + 2 and not context.metrics["transactions_dropped_invalid"]


def test_a_client_task_nobody_trains_does_not_pause_the_bootstrap_miners(one_miner, tmp_path):
    """Issue #14's h4: bootstrap miners paused while any client task in training
    had never been heard from, so one cheap task naming a dataset nobody has
    stopped the chain before the deadline that would end it; and any key's
    self-signed message counted as the task's activity. Now only a member's
    recent message pauses them."""
    from types import SimpleNamespace
    from bws.node.roles.host import RoleSet
    from bws.spec.constants import TASK_TRAINING
    context = make_node(one_miner, tmp_path, "node0", one_miner[1][0], {})
    miner = Miner(context)
    state = context.chain.head_state
    (bootstrap_id, bootstrap), = state.tasks.items()
    task_id = hash_bytes(b"a task nobody trains")
    stalled = dataclasses.replace(bootstrap, client=hash_bytes(b"client")[:20], status=TASK_TRAINING)
    with_task = dataclasses.replace(state, tasks={**state.tasks, task_id: stalled})
    assert not miner._client_training_in_progress(with_task)
    context.note_task_activity(task_id)
    assert miner._client_training_in_progress(with_task)

    outsider, member = derive_account(7, "outsider"), one_miner[1][0]
    host = SimpleNamespace(context=context, supervisor=None)
    for account, counts in ((outsider, False), (member, True)):
        work = C.IterationWork(task_id=bootstrap_id, iteration=5, miner=account.address, state_before_root=bytes(32),
                               batch_index=5, batch_root=bytes(32), batch_proof=[], peer_update_roots=[],
                               update_root=bytes(32), state_after_root=bytes(32), loss=0)
        signed = sign_iteration_message(account.secret_key, account.public_key,
                                        C.IterationMessage(work=work, header_commitment=bytes(32)))
        RoleSet._on_iteration_message(host, signed, "peer")
        assert (("task_last_message", bytes(bootstrap_id)) in context.gauges) is counts


def test_only_a_groups_iteration_messages_are_relayed_and_kept(one_miner, tmp_path):
    """Issue #14's m4: any key's validly signed IT_RES was relayed to all and
    kept without bound. Gossip now relays a message only for a task the head
    holds, by a member of its group, for an iteration of the task; the log
    keeps at most two versions of one (task, iteration, miner)."""
    from types import SimpleNamespace
    from bws.node.p2p import Verdict
    from bws.node.deferred_gossip import DeferredGossip
    from bws.node.roles.context import MessageLog
    from bws.node.service import Node
    from bws.spec.encoding import encode
    context = make_node(one_miner, tmp_path, "node0", one_miner[1][0], {})
    (task_id, task), = context.chain.head_state.tasks.items()
    node = SimpleNamespace(chain=context.chain, deferred_messages=DeferredGossip())
    member, outsider = one_miner[1][0], derive_account(7, "outsider")

    def message(account, loss=0, **fields):
        work = C.IterationWork(**{**dict(task_id=task_id, iteration=5, miner=account.address,
                                         state_before_root=bytes(32), batch_index=5, batch_root=bytes(32),
                                         batch_proof=[], peer_update_roots=[], update_root=bytes(32),
                                         state_after_root=bytes(32), loss=loss), **fields})
        return sign_iteration_message(account.secret_key, account.public_key,
                                      C.IterationMessage(work=work, header_commitment=bytes(32)))

    def verdict(signed):
        return Node._validate_iteration_message(node, encode(signed))

    assert verdict(message(member)) == Verdict.ACCEPT
    assert verdict(message(outsider)) == Verdict.IGNORE
    assert verdict(message(member, iteration=int(task.iterations))) == Verdict.IGNORE
    assert verdict(message(member, task_id=hash_bytes(b"no such task"))) == Verdict.IGNORE
    forged = dataclasses.replace(message(member), signature=message(outsider).signature)
    assert verdict(forged) == Verdict.REJECT
    assert Node._validate_iteration_message(node, b"\x01garbage") == Verdict.REJECT
    log = MessageLog()
    assert [log.add(message(member, loss=n), None) for n in range(3)] == [True, True, False]
    assert len(log.get(task_id, 5, member.address)) == 2


def test_a_member_that_missed_a_peers_message_on_gossip_asks_for_it_and_uses_it(one_miner, tmp_path, monkeypatch):
    """Issue #14: a gossiped iteration message is IGNOREd while the receiver's head does not yet hold the task's
    group, and was then lost: the member waiting for it trained on without the peer's update. Now, once its
    wait times out, it asks its peers (`/bws/audit/1`) for the missing message, checks it, keeps it and applies
    the update it names."""
    from bws.node.audit import PROTOCOL_AUDIT
    from bws.node.roles import miner as module
    monkeypatch.setattr(module, "FIRST_PEER_WAIT_SECONDS", 0.5)
    nodes = {}
    peer, (sent,), _ = mine(one_miner, tmp_path, pipelined=False, nodes=nodes, iterations=1)
    work = sent.message.work
    member = make_node(one_miner, tmp_path, "member", derive_account(7, "member"), nodes)
    assert member.messages.get(work.task_id, 0, work.miner) == []   # missed on gossip

    updates, roots = Miner(member)._peer_updates(bytes(work.task_id), 1, [bytes(work.miner)])
    assert roots == [bytes(work.update_root)] and len(updates) == 1
    assert member.messages.get(work.task_id, 0, work.miner) == [sent]
    assert member.metrics["peer_messages_recovered"] == 1 and member.metrics["peer_updates_missed"] == 0
    asked = [request for request in member.network.requests if request[1] == PROTOCOL_AUDIT]
    assert [request[0] for request in asked] == ["node0"]


def test_asking_for_a_missed_message_is_bounded_and_takes_only_that_members_signed_message(one_miner, tmp_path,
                                                                                           monkeypatch):
    """A member asks at most MESSAGE_ASKS_PER_MEMBER peers once per iteration, and takes from their answers
    only a message of the key it asked, signed by that member: not another iteration's, not a forged one."""
    from bws.node.audit import PROTOCOL_AUDIT
    from bws.node.roles import miner as module
    from bws.node.roles.context import MessageLog
    monkeypatch.setattr(module, "FIRST_PEER_WAIT_SECONDS", 0.2)
    nodes = {}
    peer, (sent,), _ = mine(one_miner, tmp_path, pipelined=False, nodes=nodes, iterations=1)
    work = sent.message.work
    member = make_node(one_miner, tmp_path, "member", derive_account(7, "member"), nodes)
    outsider = derive_account(7, "outsider")
    other_iteration = dataclasses.replace(sent.message, work=dataclasses.replace(work, iteration=1))
    forged = dataclasses.replace(sent, message=dataclasses.replace(sent.message, header_commitment=bytes(32)),
                                 signature=sign_iteration_message(outsider.secret_key, outsider.public_key,
                                                                  sent.message).signature)
    # Two peers that answer the key asked with a wrong message, then peers that have none.
    for name, message in (("liar-iteration", sign_iteration_message(peer.account.secret_key, peer.public_key,
                                                                   other_iteration)),
                          ("liar-forged", forged)):
        nodes[name] = SimpleNamespace(messages=SimpleNamespace(get=lambda *key, m=message: [m]))
    for index in range(6):
        nodes[f"empty{index}"] = SimpleNamespace(messages=MessageLog())
    del nodes["node0"]   # the one node that holds the real message is not connected

    assert Miner(member)._peer_updates(bytes(work.task_id), 1, [bytes(work.miner)]) == ([], [])
    asked = [request for request in member.network.requests if request[1] == PROTOCOL_AUDIT]
    assert len(asked) == module.MESSAGE_ASKS_PER_MEMBER
    assert len(member.messages) == 0   # neither wrong answer was kept
    assert member.metrics["peer_messages_asked"] == 1 and member.metrics["peer_updates_missed"] == 1
