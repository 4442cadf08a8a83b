"""A verifier that replays an iteration and finds a proven mismatch disputes
the miner (node/roles/verifier.py), through the helper the supervisor uses
(node/roles/disputes.py): once per miner, never an honest miner, and not
when another node's dispute of the same fraud is already pending or decided.

Real engine iterations of the devnet's digits task; the verifiers are
in-process role contexts over their own DuckDB stores, fetching the miner's
tensors from its cache."""
from __future__ import annotations

import dataclasses
import time
from types import SimpleNamespace

import pytest

from bws.node.devnet import DevnetOptions, build_task, derive_account, make_genesis
from bws.node.mempool import Mempool
from bws.node.roles import verifier
from bws.node.roles.byzantine import Byzantine
from bws.node.audit import PROTOCOL_AUDIT, AuditServer
from bws.node.roles.context import MessageLog, RoleContext
from bws.node.roles.data import FOUND, NOT_FOUND, TensorCache, parse_request, DATA_TENSORS, ROOT_BYTES
from bws.node.roles.disputes import is_disputable
from bws.node.roles.library import TaskLibrary, flat, tree
from bws.node.roles.evaluator import NetworkEvaluate
from bws.node.roles.verifier import NetworkReplay, replay_iteration
from bws.node.store import ChainStore
from bws.node.validation import Chain, transaction_pool_record
from bws.spec import containers as C
from bws.spec.constants import ROLE_MINER
from bws.spec.encoding import decode, encode
from bws.spec.genesis import create_genesis_state, get_genesis_block
from bws.spec.hashing import ZERO_HASH
from bws.spec.pouw import compute_input_mask_seed, sign_iteration_message
from bws.spec.state_transition import InvalidTransaction, Oracles, ReplayUnavailable, apply_transaction, sign_transaction
from bws.spec.tasks import compute_batch_index, get_member_index


class MinerPeer:
    """The network as a verifier sees it: one peer, the miner, serving its
    tensor cache (`/bws/data/1`) and the messages it recorded (`/bws/audit/1`)."""

    def __init__(self, cache: TensorCache | None, messages: MessageLog) -> None:
        self.cache, self.audit = cache, AuditServer(SimpleNamespace(messages=messages))

    def peers(self) -> list[str]:
        return ["miner"] if self.cache is not None else []

    def request(self, peer, protocol, data, timeout=None, max_response_bytes=None) -> bytes:
        if protocol == PROTOCOL_AUDIT:
            return self.audit.serve(peer, data)
        encoded = self.cache.get(parse_request(data, DATA_TENSORS, ROOT_BYTES))
        return NOT_FOUND if encoded is None else FOUND + encoded

    def publish(self, topic, data) -> None:
        pass


@pytest.fixture(scope="module")
def setup():
    accounts = [derive_account(5, f"node{i}") for i in range(3)]
    genesis = make_genesis([SimpleNamespace(account=a) for a in accounts], derive_account(5, "client"),
                           build_task(DevnetOptions(nodes=3, iterations=4)), timestamp=1_700_000_000)
    state = create_genesis_state(genesis)
    miner = accounts[0]
    task_id, task = next((bytes(i), t) for i, t in sorted(state.tasks.items())
                         if get_member_index(t, miner.address) is not None)
    library = TaskLibrary()
    loaded = library.load(task)
    cache = TensorCache()
    state0 = flat(loaded.initial_state())
    batch_index = compute_batch_index(task, 0, 0)
    batch = loaded.masked_batch(batch_index, compute_input_mask_seed(task_id, 0, ZERO_HASH))

    def signed_claim(state_after: dict, update: dict) -> C.SignedIterationMessage:
        work = C.IterationWork(
            task_id=task_id, iteration=0, miner=miner.address, state_before_root=cache.put_tensors(state0),
            batch_index=batch_index, batch_root=loaded.batch_roots[batch_index],
            batch_proof=loaded.batch_proof(batch_index), peer_update_roots=[],
            update_root=cache.put_tensors(update), state_after_root=cache.put_tensors(state_after), loss=0)
        return sign_iteration_message(miner.secret_key, C.IterationMessage(work=work, header_commitment=ZERO_HASH))

    new_state, update, _ = loaded.iterate(tree(state0), batch, [])
    honest = signed_claim(flat(new_state), flat(update))
    random_state, random_update, _, _ = Byzantine("random-update").iterate(loaded, tree(state0), batch, [], flat, tree)
    fraud = signed_claim(random_state, random_update)
    return SimpleNamespace(genesis_state=state, accounts=accounts, library=library, cache=cache, task=task,
                           honest=honest, fraud=fraud)


def message_log(*signed: C.SignedIterationMessage) -> MessageLog:
    log = MessageLog()
    for message in signed:
        log.add(message, "miner")
    return log


def verifier_node(setup, directory, account, reachable: bool = True, heard_gossip: bool = True,
                  miner_recorded: bool = True) -> tuple[RoleContext, NetworkReplay]:
    """A verifier (with `account`'s key) that has heard the miner's messages on
    gossip (or not), with the miner as its peer (if `reachable`) keeping a record
    of its messages (or not)."""
    holder = {}
    replay = NetworkReplay(lambda: holder["context"])
    state = setup.genesis_state
    chain = Chain(ChainStore(directory), state, get_genesis_block(state),
                  Oracles(replay=replay, evaluate=NetworkEvaluate(lambda: holder["context"])))
    context = RoleContext(chain=chain, mempool=Mempool(chain.account_nonce),
                          network=MinerPeer(setup.cache if reachable else None,
                                            message_log(setup.honest, setup.fraud) if miner_recorded else MessageLog()),
                          account=account, library=setup.library, import_block=chain.import_block,
                          messages=message_log(setup.honest, setup.fraud) if heard_gossip else MessageLog())
    holder["context"] = context
    return context, replay


@pytest.fixture(autouse=True)
def no_dispute_delay(monkeypatch):
    monkeypatch.setattr(verifier, "DISPUTE_DELAY_SECONDS", 0.0)
    monkeypatch.setattr(verifier, "DISPUTE_DELAY_SPREAD_SECONDS", 0.0)


def pending_disputes(context: RoleContext, wait: float = 0.0) -> list[C.SignedTransaction]:
    """The Dispute transactions in the node's mempool (waiting up to `wait` s for the first)."""
    deadline = time.monotonic() + wait
    while True:
        found = [decode(r.raw, C.SignedTransaction) for r in context.mempool.transactions()]
        found = [s for s in found if isinstance(s.transaction.body, C.Dispute)]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def test_a_proven_fraud_is_disputed_once_by_the_verifier_that_replayed_it(setup, tmp_path):
    context, replay = verifier_node(setup, tmp_path / "v1", setup.accounts[1])
    result = replay(setup.task, setup.fraud.message)
    assert result.update_root != setup.fraud.message.work.update_root
    (dispute,) = pending_disputes(context, wait=60)
    assert dispute.transaction.sender == setup.accounts[1].address
    assert dispute.transaction.body.evidence == C.FraudProof(message=setup.fraud)
    replay(setup.task, setup.fraud.message)   # the same fraud again (another block, a reorg): no second dispute
    time.sleep(1.0)
    assert len(pending_disputes(context)) == 1
    assert context.metrics["verifier_fraud"] >= 1 and context.metrics["disputes_submitted"] == 1

    # Every node checks it by replay: it slashes the miner and rewards the disputer.
    check = Oracles(replay=lambda task, message: replay_iteration(context, task, message),
                    evaluate=NetworkEvaluate(lambda: context))
    state = setup.genesis_state
    slashed = apply_transaction(state, dispute, setup.accounts[2].address, check)
    miner = setup.accounts[0].address
    assert C.StakeKey(owner=miner, role=ROLE_MINER) not in slashed.stakes
    assert not is_disputable(slashed, bytes(setup.fraud.message.work.task_id), miner)
    # A second node disputing the same fraud: the spec rejects it (the member is slashed),
    # so it is never included and its sender pays no false-dispute penalty.
    other = setup.accounts[2]
    second = sign_transaction(other.secret_key, C.Transaction(
        chain_id=dispute.transaction.chain_id, sender=other.address, nonce=0, fee=dispute.transaction.fee,
        body=dispute.transaction.body))
    with pytest.raises(InvalidTransaction, match="already slashed"):
        apply_transaction(slashed, second, setup.accounts[1].address, check)


def test_a_node_does_not_dispute_a_fraud_another_node_has_disputed(setup, tmp_path):
    first, first_replay = verifier_node(setup, tmp_path / "v1", setup.accounts[1])
    first_replay(setup.task, setup.fraud.message)
    (dispute,) = pending_disputes(first, wait=60)
    second, second_replay = verifier_node(setup, tmp_path / "v2", setup.accounts[2])
    second.mempool.add(transaction_pool_record(dispute, encode(dispute)))   # heard on gossip
    result = second_replay(setup.task, setup.fraud.message)
    assert not second_replay.disputes(second).dispute_if_proven(setup.task, setup.fraud.message, result)
    assert second.metrics["disputes_not_needed"] >= 1 and second.metrics["disputes_submitted"] == 0
    assert [d.transaction.sender for d in pending_disputes(second)] == [setup.accounts[1].address]


def test_a_junk_dispute_against_another_iteration_does_not_stop_a_real_one(setup, tmp_path):
    """Issue #14's junk-fraud-proofs: anyone can pool a dispute against an
    honest iteration of a miner; a node that took any pending dispute against
    the miner as settled would never dispute its real fraud."""
    context, replay = verifier_node(setup, tmp_path / "v1", setup.accounts[1])
    miner, griefer = setup.accounts[0], derive_account(5, "griefer")
    another_iteration = sign_iteration_message(miner.secret_key, C.IterationMessage(
        work=dataclasses.replace(setup.honest.message.work, iteration=1), header_commitment=ZERO_HASH))
    junk = sign_transaction(griefer.secret_key, C.Transaction(
        chain_id=context.chain.config.chain_id, sender=griefer.address, nonce=0, fee=10**6,
        body=C.Dispute(evidence=C.FraudProof(message=another_iteration))))
    context.mempool.add(transaction_pool_record(junk, encode(junk)))
    replay(setup.task, setup.fraud.message)
    deadline = time.monotonic() + 60
    while context.metrics["disputes_submitted"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(bytes(d.transaction.sender) for d in pending_disputes(context)) == \
        sorted([bytes(griefer.address), bytes(setup.accounts[1].address)])


def test_an_honest_miner_is_never_disputed(setup, tmp_path):
    context, replay = verifier_node(setup, tmp_path / "v1", setup.accounts[1])
    replay(setup.task, setup.honest.message)
    assert context.metrics["peer_blocks_verified"] == 1 and context.metrics["replay_mismatches"] == 0
    # An engine fault at the verifier (its replay disagrees with the honest claim): the spec's
    # reference sides with the miner, so nobody is accused.
    wrong = C.ReplayResult(update_root=setup.fraud.message.work.update_root,
                           state_after_root=setup.fraud.message.work.state_after_root)
    assert not replay.disputes(context).dispute_if_proven(setup.task, setup.honest.message, wrong)
    assert context.metrics["engine_faults"] == 1 and pending_disputes(context) == []


def test_an_unavailable_replay_is_not_a_mismatch(setup, tmp_path):
    context, replay = verifier_node(setup, tmp_path / "v1", setup.accounts[1], reachable=False)
    with pytest.raises(ReplayUnavailable):
        replay(setup.task, setup.fraud.message)
    assert context.metrics["replays_unavailable"] == 1 and context.metrics["replay_mismatches"] == 0
    assert pending_disputes(context) == []


def test_a_verifier_that_did_not_hear_the_message_gets_it_from_its_peers(setup, tmp_path):
    """A block that came by sync: the signed message is taken from a peer's record, signature checked."""
    context, replay = verifier_node(setup, tmp_path / "v1", setup.accounts[1], heard_gossip=False)
    replay(setup.task, setup.fraud.message)
    (dispute,) = pending_disputes(context, wait=60)
    assert dispute.transaction.body.evidence == C.FraudProof(message=setup.fraud)


def test_without_the_signed_message_nobody_is_disputed(setup, tmp_path):
    context, replay = verifier_node(setup, tmp_path / "v1", setup.accounts[1], heard_gossip=False,
                                    miner_recorded=False)
    result = replay(setup.task, setup.fraud.message)
    assert not replay.disputes(context).dispute_if_proven(setup.task, setup.fraud.message, result)
    assert context.metrics["verifier_fraud_unsigned"] >= 1 and pending_disputes(context) == []
