"""The node's `evaluate` oracle against the real engine: every replaying node
scores each final model an EvaluationResult names (spec `Evaluate`), as the
spec's NumPy reference scores it, refuses a result whose count differs, and
cannot accept one whose withheld test split was revealed to nobody it can
ask (issue #13's m3)."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from bws.engine.commit import batch_root, flatten, unflatten
from bws.node.devnet import DevnetOptions, build_task, derive_account, write_client_test_file
from bws.node.mempool import Mempool
from bws.node.roles.client import withheld_test_set
from bws.node.roles.context import RoleContext
from bws.node.roles.evaluator import Evaluator, NetworkEvaluate
from bws.node.roles.library import TaskLibrary
from bws.node.roles.verifier import NetworkReplay
from bws.node.store import ChainStore
from bws.node.transition import apply_transaction
from bws.node.validation import Chain
from bws.spec import containers as C
from bws.spec.constants import ROLE_EVALUATOR, ROLE_MINER, TASK_EVALUATION
from bws.spec.genesis import create_genesis_state, get_genesis_block
from bws.spec.pouw import sign_iteration_message
from bws.spec.presets import DEVNET
from bws.spec.reference import training
from bws.spec.state_transition import InvalidTransaction, Oracles, ReplayUnavailable, sign_transaction
from bws.spec.tasks import compute_work_units
from bws.templates.task import task_data

pytestmark = pytest.mark.slow

ITERATIONS = 4
MEMBERS = [derive_account(5, f"member{i}") for i in range(2)]
EVALUATOR = derive_account(5, "evaluator")


class NoPeers:
    """A network with nobody to ask: what a node holds is all it can fetch."""

    def peers(self) -> list[str]:
        return []

    def publish(self, topic: str, data: bytes) -> None:
        pass


def task_in_evaluation(definition) -> C.Task:
    """The definition's task, trained to its end by both members and in evaluation."""
    data = definition.to_bytes()
    return C.Task(
        client=derive_account(5, "client").address, task_definition=data, work_units=compute_work_units(data),
        dataset_root=bytes.fromhex(definition.dataset["batches_root"]), num_batches=definition.dataset["num_batches"],
        test_set_hash=bytes.fromhex(definition.dataset["test_root"]), group_size=2, iterations=ITERATIONS,
        evaluation_deadline=10**6, payment=10**6, status=TASK_EVALUATION, status_height=1,
        members=[C.Member(address=m.address, recorded_iterations=2, next_minable_iteration=ITERATIONS, slashed=False)
                 for m in MEMBERS],
        supervisors=[], evaluators=[EVALUATOR.address])


def node_for(task: C.Task, directory) -> RoleContext:
    """A replaying node whose head state holds `task` (and a funded evaluator), with no peers."""
    config = dataclasses.replace(DEVNET, chain_id=4242)
    genesis = create_genesis_state(C.GenesisConfig(
        config=config, timestamp=1_700_000_000,
        accounts=[C.GenesisAccount(address=EVALUATOR.address, balance=10**9)],
        stakes=[C.GenesisStake(owner=m.address, role=ROLE_MINER, amount=config.miner_ticket_price) for m in MEMBERS]
        + [C.GenesisStake(owner=EVALUATOR.address, role=ROLE_EVALUATOR, amount=config.evaluator_ticket_price)],
        tasks=[]))
    genesis.tasks = {bytes(32): task}
    holder = {}
    chain = Chain(ChainStore(directory), genesis, get_genesis_block(genesis),
                  Oracles(replay=NetworkReplay(lambda: holder["c"]), evaluate=NetworkEvaluate(lambda: holder["c"])))
    holder["c"] = RoleContext(chain=chain, mempool=Mempool(chain.account_nonce), network=NoPeers(),
                              account=EVALUATOR, library=TaskLibrary(), import_block=chain.import_block)
    return holder["c"]


def final_message(context: RoleContext, task: C.Task, member, params_shift: int) -> C.SignedIterationMessage:
    """`member`'s signed IT_RES of the final iteration, its model (the initial one, shifted) held by the node."""
    state = flatten(context.library.load(task).initial_state())
    model = {name: (value + params_shift if name.startswith("params") else value) for name, value in state.items()}
    root = context.cache.put_tensors({name: np.asarray(value) for name, value in model.items()})
    work = C.IterationWork(task_id=bytes(32), iteration=ITERATIONS - 1, miner=member.address,
                           state_before_root=bytes(32), batch_index=0, batch_root=bytes(32), batch_proof=[],
                           peer_update_roots=[], update_root=bytes(32), state_after_root=root, loss=0)
    return sign_iteration_message(member.secret_key, C.IterationMessage(work=work, header_commitment=bytes(32)))


def result_transaction(context: RoleContext, models: list[C.ScoredModel]) -> C.SignedTransaction:
    return sign_transaction(EVALUATOR.secret_key, C.Transaction(
        chain_id=context.chain.config.chain_id, sender=EVALUATOR.address, nonce=0, fee=1000,
        body=C.EvaluationResult(task_id=bytes(32), models=models)))


@pytest.fixture(scope="module")
def public_task():
    return task_in_evaluation(build_task(DevnetOptions(nodes=3, iterations=ITERATIONS)))


def test_a_final_model_is_scored_by_the_engine_as_the_reference_scores_it(public_task, tmp_path):
    context = node_for(public_task, tmp_path)
    loaded = context.library.load(public_task)
    finals = [final_message(context, public_task, member, shift) for member, shift in zip(MEMBERS, (0, 3))]
    counts = [NetworkEvaluate(lambda: context)(public_task, C.ScoredModel(final, 0)) for final in finals]
    test = loaded.local_test_set()
    for final, count in zip(finals, counts):
        params = unflatten(context.cache.get_tensors(bytes(final.message.work.state_after_root)))["params"]
        assert count == training.count_correct(loaded.spec.to_dict(), params, test["x"], test["y"])
    assert 0 < counts[0] < len(test["y"]) and context.metrics["models_scored"] == 2

    right = [C.ScoredModel(final_message=final, correct=count) for final, count in zip(finals, counts)]
    post = apply_transaction(context.chain.head_state, result_transaction(context, right), MEMBERS[0].address,
                             context.chain.oracles)
    assert post.tasks[bytes(32)].status != TASK_EVALUATION
    assert context.metrics["models_scored"] == 2, "each model was scored once, then taken from context.scores"
    inflated = [right[0], dataclasses.replace(right[1], correct=right[1].correct + 1)]
    with pytest.raises(InvalidTransaction, match=f"score {counts[1] + 1} is not the {counts[1]} it gets"):
        apply_transaction(context.chain.head_state, result_transaction(context, inflated), MEMBERS[0].address,
                          context.chain.oracles)


def evaluator_node(task: C.Task, directory) -> tuple[RoleContext, list]:
    """The task's evaluator, having heard both members' final messages, and the transactions it submits."""
    context = node_for(task, directory)
    for index, member in enumerate(MEMBERS):
        context.messages.add(final_message(context, task, member, index), None)
    submitted = []
    context.submit_transaction, context.next_nonce = submitted.append, lambda: 0
    return context, submitted


def test_the_evaluator_role_reports_the_final_models_every_node_agrees_with(public_task, tmp_path):
    """The evaluator takes each member's final message from the messages it heard, scores its model and
    submits a result that the spec, with the node's oracles, accepts."""
    context, submitted = evaluator_node(public_task, tmp_path)
    Evaluator(context).evaluate(bytes(32), public_task)
    [signed] = submitted
    assert [bytes(m.final_message.message.work.miner) for m in signed.transaction.body.models] == \
        [m.address for m in MEMBERS]
    apply_transaction(context.chain.head_state, signed, MEMBERS[0].address, context.chain.oracles)


def test_a_test_split_revealed_to_nobody_the_node_can_ask_makes_the_result_unavailable(tmp_path):
    options = DevnetOptions(nodes=3, iterations=ITERATIONS)
    test_file = write_client_test_file(options, tmp_path / "client_test.npz")
    task = task_in_evaluation(build_task(options, test_file=test_file))
    context = node_for(task, tmp_path / "node")
    scored = C.ScoredModel(final_message(context, task, MEMBERS[0], 0), 0)
    with pytest.raises(ReplayUnavailable, match="has not revealed the withheld test split"):
        NetworkEvaluate(lambda: context)(task, scored)
    with pytest.raises(InvalidTransaction, match="test set or model unavailable"):
        apply_transaction(context.chain.head_state, result_transaction(context, [scored]), MEMBERS[0].address,
                          context.chain.oracles)
    definition = build_task(options, test_file=test_file)
    revealed = withheld_test_set(task_data(definition, None, test_file=test_file))   # what `bws task reveal` sends
    assert context.cache.put_tensors(revealed) == bytes(task.test_set_hash) == batch_root(revealed)
    assert NetworkEvaluate(lambda: context)(task, scored) >= 0   # once a peer (here: its own cache) serves it


def test_the_evaluator_submits_again_once_its_result_left_the_pool(public_task, tmp_path):
    """Miners score a result before they include it; one they could not score yet (the test split not fetched)
    leaves their pools after a few heads. The evaluator submits it again after RESUBMIT_AFTER_BLOCKS heads
    without it pooled, and not while it is pooled."""
    from bws.node.roles.evaluator import RESUBMIT_AFTER_BLOCKS
    from bws.node.validation import transaction_pool_record
    from bws.spec.encoding import encode

    context, submitted = evaluator_node(public_task, tmp_path)
    evaluator, head = Evaluator(context), context.chain.head_state

    def step_at(height: int) -> None:
        context.chain = SimpleNamespace(head_state=dataclasses.replace(head, height=height), config=head.config)
        evaluator.step()
    step_at(0)
    step_at(RESUBMIT_AFTER_BLOCKS - 1)
    assert len(submitted) == 1
    context.mempool.add(transaction_pool_record(submitted[0], encode(submitted[0])))
    step_at(RESUBMIT_AFTER_BLOCKS)
    assert len(submitted) == 1, "its result is still pooled"
    pooled = transaction_pool_record(submitted[0], encode(submitted[0])).tx_id
    assert any(context.mempool.report_invalid(pooled, bytes([head_number]) * 32) for head_number in range(5)), \
        "the miners' checks refused it on enough heads: dropped"
    step_at(RESUBMIT_AFTER_BLOCKS + 1)
    assert len(submitted) == 2 and submitted[1].transaction.body == submitted[0].transaction.body
    assert context.metrics["evaluations_resubmitted"] == 1
