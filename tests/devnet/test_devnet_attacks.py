"""The pieces of `bws devnet --byzantine N:KIND` for the network attackers
(node/devnet_attacks.py, node/roles/flood.py): the attack transactions fail
the rules as issue #14 expects (by the spec, on a chain of the test factory),
the flood is IGNOREd by the gossip validator, the miner passes over a task it
cannot load, the expectation checker and the parsing of --byzantine."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from bws.node.deferred_gossip import DeferredGossip
from bws.node.audit_devnet import ByzantineSpecError, node_environment, parse_byzantine
from bws.node.devnet_attacks import (
    FLOOD, JUNK_BURST_SIZE, JUNK_FRAUD_PROOFS, POISON_TASK, RESTART, STALL_TASK, AttackOutcome, attack_failures,
    charged_by_rules, junk_burst, poison_definitions, poison_task_transaction, resumed_trainings, stalled_definition,
)
from bws.node.p2p import Verdict
from bws.node.roles.flood import flood_targets, junk_iteration_message
from bws.node.roles.miner import Miner
from bws.node.service import Node
from bws.node.wallet import Account
from bws.spec import state_transition as T
from bws.spec.constants import FALSE_DISPUTE_PENALTY, TASK_TRAINING
from bws.spec.encoding import encode
from bws.spec.hashing import hash_bytes
from bws.spec.presets import DEVNET
from tests.node.chain_factory import ChainFactory


@pytest.fixture(scope="module")
def chain():
    factory = ChainFactory()
    block, state = factory.next_block(factory.genesis_state)
    return factory, block, state, Account(factory.users[0].secret)


def test_poison_tasks_are_invalid_transactions_not_exceptions(chain):
    factory, _, state, attacker = chain
    for definition in poison_definitions():
        signed = poison_task_transaction(attacker, DEVNET.chain_id, 0, definition, int(state.height) + 12)
        with pytest.raises(T.InvalidTransaction, match="task definition"):
            T.apply_transaction(state, signed, factory.miners[0].address, factory.oracles)


def test_a_junk_burst_lands_only_its_false_accusation_which_costs_the_penalty(chain):
    factory, block, state, attacker = chain
    honest = block.proofs[0].message
    burst = junk_burst(attacker, DEVNET.chain_id, 0, 100_000, honest, burst=0)
    assert len(burst) == JUNK_BURST_SIZE and [int(t.transaction.nonce) for t in burst] == list(range(JUNK_BURST_SIZE))
    before = state.accounts[attacker.address].balance
    post = T.apply_transaction(state, burst[0], factory.miners[1].address, factory.oracles)
    paid = before - post.accounts[attacker.address].balance
    assert paid == charged_by_rules(burst[0]) == 100_000 + FALSE_DISPUTE_PENALTY
    assert all(not m.slashed for m in post.tasks[factory.task_id].members)
    for junk in burst[1:]:
        with pytest.raises(T.InvalidTransaction, match="not a member"):
            T.apply_transaction(post, junk, factory.miners[1].address, factory.oracles)
        post = T.apply_transaction(post, factory.transfer(factory.users[0], factory.users[1].address, 1,
                                                          int(post.accounts[attacker.address].nonce)),
                                   factory.miners[1].address, factory.oracles)  # the next nonce, as a block would
    # Bursts differ (each replaces the last one's pending proofs), so their junk evidence does too.
    assert junk_burst(attacker, DEVNET.chain_id, 0, 100_000, honest, burst=1)[1] != burst[1]


def test_the_stalled_task_is_a_valid_definition_on_data_nobody_has(tmp_path):
    from bws.node.devnet import DevnetOptions, build_task
    from bws.node.roles.library import TaskLibrary, TaskUnavailable
    from bws.templates.task import parse_task

    honest = build_task(DevnetOptions(nodes=3, iterations=2))
    stalled = stalled_definition(honest)
    assert parse_task(stalled.to_bytes()) == stalled
    assert stalled.dataset["batches_root"] != honest.dataset["batches_root"]
    assert stalled.dataset["test_root"] != honest.dataset["test_root"]
    task = SimpleNamespace(task_definition=stalled.to_bytes(), num_batches=stalled.dataset["num_batches"])
    library = TaskLibrary(str(tmp_path))
    with pytest.raises(TaskUnavailable):
        library.load(task)
    assert library.is_unavailable(task)


def test_the_miner_passes_over_a_client_task_it_cannot_load(chain):
    """A stalled task sorted before the honest one held back the honest task's training (its members tried to
    load the stalled one at every step)."""
    factory, _, state, _ = chain
    bootstrap = state.tasks[factory.task_id]
    client = dataclasses.replace(bootstrap, status=TASK_TRAINING)
    tasks = {bytes(32): dataclasses.replace(client, task_definition=b"stalled"), b"\xff" * 32: client}
    unavailable = {b"stalled"}
    miner = SimpleNamespace(context=SimpleNamespace(
        address=factory.miners[0].address,
        library=SimpleNamespace(is_unavailable=lambda task: bytes(task.task_definition) in unavailable)),
        _trainings={})
    miner._my_tasks = lambda s, statuses: Miner._my_tasks(miner, s, statuses)
    picked = Miner._client_task(miner, dataclasses.replace(state, tasks=tasks))
    assert picked[0] == b"\xff" * 32
    unavailable.clear()
    assert Miner._client_task(miner, dataclasses.replace(state, tasks=tasks))[0] == bytes(32)


def test_every_flood_message_is_ignored_by_the_gossip_validator(chain):
    factory, _, state, attacker = chain
    node = SimpleNamespace(chain=SimpleNamespace(head_state=state), deferred_messages=DeferredGossip())
    for who in (attacker, Account(factory.miners[0].secret)):   # outside the group, and a member
        targets = flood_targets(state.tasks, who.address)
        assert targets and all(isinstance(i, int) for _, i in targets)
        for task_id, iteration in targets:
            signed = junk_iteration_message(who, task_id, iteration, salt=0)
            assert Node._validate_iteration_message(node, encode(signed)) is Verdict.IGNORE
    member_targets = flood_targets(state.tasks, factory.miners[0].address)
    assert min(i for _, i in member_targets) == int(state.tasks[factory.task_id].iterations)
    # A task whose group is not drawn yet: the flooder may be drawn into it, and then other nodes, which keep
    # IGNOREd messages until the draw, would take its junk as a second version of its own iterations.
    undrawn = dataclasses.replace(state.tasks[factory.task_id], members=[])
    assert flood_targets({bytes(32): undrawn}, attacker.address) == []


def outcomes(**changes) -> list[AttackOutcome]:
    passing = {POISON_TASK: AttackOutcome("node4", POISON_TASK, sent=3, dropped=2),
               JUNK_FRAUD_PROOFS: AttackOutcome("node4", JUNK_FRAUD_PROOFS, sent=10, landed=2, spent=42, charged=42),
               STALL_TASK: AttackOutcome("node4", STALL_TASK, sent=1, landed=1, spent=7, charged=7,
                                         task_status="expired"),
               FLOOD: AttackOutcome("node3", FLOOD, sent=100),
               RESTART: AttackOutcome("node1", RESTART, sent=2, resumed=2)}
    for kind, fields in changes.items():
        passing[kind.replace("_", "-")] = dataclasses.replace(passing[kind.replace("_", "-")], **fields)
    return list(passing.values())


def test_attacks_that_failed_as_expected_pass():
    assert attack_failures(outcomes(), []) == []
    assert "on chain" in outcomes()[0].describe() and "cost 0.00000000 BWS" in outcomes()[0].describe()


@pytest.mark.parametrize("changes, failure", [
    ({"poison_task": {"landed": 1, "spent": 5, "charged": 5}}, "poison task(s) landed"),
    ({"poison_task": {"dropped": 0}}, "no pool dropped or refused"),
    ({"poison_task": {"sent": 0, "dropped": 0, "refused": 0}}, "never got to attack"),
    ({"junk_fraud_proofs": {"spent": 42 - FALSE_DISPUTE_PENALTY}}, "the rules charge 42"),
    ({"stall_task": {"task_status": "training"}}, "status training"),
    ({"stall_task": {"spent": 7 + 10**9}}, "spent"),
    ({"flood_messages": {"kept": 3}}, "kept 3"),
    ({"restart_every": {"resumed": 0}}, "never resumed"),
])
def test_an_attack_that_got_anywhere_fails_the_run(changes, failure):
    failures = attack_failures(outcomes(**changes), [])
    assert any(failure in found for found in failures), failures


def test_an_honest_node_that_lost_its_stake_fails_the_run():
    assert attack_failures(outcomes(), ["node2"]) == ["honest node node2 lost its miner stake"]


def test_byzantine_parsing_takes_cheats_and_several_attacks_per_node():
    cheats, attacks = parse_byzantine(["1:flip-bit", "4:poison-task", "4:stall-task", "1:flood-messages"], 5)
    assert cheats == {1: "flip-bit"} and attacks == {4: ("poison-task", "stall-task"), 1: ("flood-messages",)}
    assert node_environment(1, cheats, attacks) == {"BWS_BYZANTINE": "flip-bit", "BWS_ATTACKS": "flood-messages"}
    assert node_environment(0, cheats, attacks) == {}


@pytest.mark.parametrize("values, message", [
    (["1:side-blocks"], "KIND a cheating miner (flip-bit, random-update, wrong-peers, equivocate) or a network "
                        "attacker (poison-task, junk-fraud-proofs, stall-task, flood-messages)"),
    (["x:poison-task"], "expected N:KIND"),
    (["5:poison-task"], "node 5 does not exist"),
    (["4:poison-task", "4:poison-task"], "already a poison-task attacker"),
    (["1:flip-bit", "1:equivocate"], "already cheats (flip-bit)"),
])
def test_byzantine_parsing_names_the_bad_value(values, message):
    with pytest.raises(ByzantineSpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_byzantine(values, 5)


def test_resumed_trainings_are_read_from_the_log(tmp_path):
    task_id = hash_bytes(b"task")
    log = tmp_path / "node.log"
    log.write_text(f"x bws.node.roles.miner INFO resuming task {task_id.hex()[:12]}… at iteration 7\n"
                   f"x bws.node.roles.miner INFO resuming task {'0' * 12}… at iteration 3\n"
                   f"x bws.node.roles.miner INFO resuming task {task_id.hex()[:12]}… at iteration 12\n")
    assert resumed_trainings(log, task_id) == 2
    assert resumed_trainings(tmp_path / "absent.log", task_id) == 0
