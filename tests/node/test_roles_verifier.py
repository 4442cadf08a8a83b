"""The verifier role against real engine iterations: a miner's honest block
is replayed and accepted by every other node (inputs fetched from the miner
by root), and a forged nonce, a tampered iteration message, a wrong batch, a
replay mismatch and withheld inputs are each rejected by every node.

Nodes here are in-process role contexts over their own DuckDB stores; their
`/bws/data/1` and `/bws/audit/1` requests go straight to the other contexts' handlers (the
libp2p transport itself is tested in test_p2p*.py, the whole path in
tests/devnet)."""
from __future__ import annotations

import dataclasses
import itertools
import time
from types import SimpleNamespace

import pytest

from bws.spec import containers as C
from bws.spec.encoding import decode
from bws.spec.genesis import create_genesis_state, get_genesis_block
from bws.spec.hashing import hash_bytes
from bws.spec.pouw import compute_message_digest, compute_nonce, compute_nonce_seed, get_nonce_allowance, is_valid_pow, \
    sign_iteration_message
from bws.node.audit import PROTOCOL_AUDIT, AuditServer
from bws.node.devnet import DevnetOptions, build_task, derive_account, make_genesis
from bws.node.mempool import Mempool
from bws.node.p2p import PROTOCOL_DATA, TOPIC_BLOCK
from bws.node.roles.context import RoleContext
from bws.node.roles.library import TaskLibrary
from bws.node.roles.miner import Miner
from bws.node.roles.evaluator import NetworkEvaluate
from bws.node.roles.verifier import NetworkReplay
from bws.spec.state_transition import Oracles
from bws.node.store import ChainStore
from bws.node.validation import BlockRejected, Chain

pytestmark = pytest.mark.slow


class LoopbackNetwork:
    """The part of NetworkService the roles use, between in-process nodes."""

    def __init__(self, name: str, nodes: dict) -> None:
        self.name, self.nodes, self.published, self.requests = name, nodes, [], []

    def peers(self) -> list[str]:
        return [name for name in self.nodes if name != self.name]

    def request(self, peer: str, protocol: str, data: bytes, timeout=None, max_response_bytes=None) -> bytes:
        self.requests.append((peer, protocol, data))
        if protocol == PROTOCOL_AUDIT:   # the iteration messages the peer saw, as its audit server answers
            return AuditServer(self.nodes[peer]).serve(self.name, data)
        assert protocol == PROTOCOL_DATA
        return self.nodes[peer].serve_data(data)

    def publish(self, topic: str, data: bytes) -> None:
        self.published.append((topic, data))


@pytest.fixture(scope="module")
def network_setup():
    definition = build_task(DevnetOptions(nodes=3, iterations=4))
    accounts = [derive_account(7, f"node{i}") for i in range(3)]
    genesis = make_genesis([SimpleNamespace(account=a) for a in accounts], derive_account(7, "client"), definition,
                           timestamp=1_700_000_000)
    # node1 supervises node0's bootstrap task (for the supervisor's tests).
    tasks = [dataclasses.replace(genesis.tasks[0], supervisors=[accounts[1].address])] + list(genesis.tasks[1:])
    return dataclasses.replace(genesis, tasks=tasks), accounts, TaskLibrary()


def make_node(setup, directory, name: str, account, nodes: dict) -> RoleContext:
    genesis, _, library = setup
    state = create_genesis_state(genesis)
    holder = {}
    chain = Chain(ChainStore(directory / name), state, get_genesis_block(state),
                  Oracles(replay=NetworkReplay(lambda: holder["c"]), evaluate=NetworkEvaluate(lambda: holder["c"])))
    context = RoleContext(chain=chain, mempool=Mempool(chain.account_nonce), network=LoopbackNetwork(name, nodes),
                          account=account, library=library, import_block=chain.import_block)
    holder["c"] = context
    nodes[name] = context
    return context


@pytest.fixture(scope="module")
def mined(network_setup, tmp_path_factory):
    """A block mined by node0 from its real iterations, and node0's context (which serves its tensors)."""
    nodes: dict = {}
    miner_context = make_node(network_setup, tmp_path_factory.mktemp("miner"), "node0", network_setup[1][0], nodes)
    miner = Miner(miner_context)
    deadline = time.monotonic() + 120
    while not miner_context.metrics["blocks_mined"] and time.monotonic() < deadline:
        miner._last_bootstrap = float("-inf")  # no pacing in a test
        if not miner.step():
            time.sleep(0.1)  # not node0's turn yet (the other bootstrap miners are absent: it comes)
    blocks = [decode(data, C.Block) for topic, data in miner_context.network.published if topic == TOPIC_BLOCK]
    assert blocks, "node0 mined no block in 120 s"
    return blocks[0], nodes, miner_context


def verifiers(network_setup, mined, tmp_path, count=2):
    _, nodes, _ = mined
    accounts = network_setup[1]
    return [make_node(network_setup, tmp_path, f"node{i}-{tmp_path.name}", accounts[i], nodes)
            for i in range(1, count + 1)]


def test_honest_block_is_replayed_and_accepted_by_every_other_node(network_setup, mined, tmp_path):
    block, _, _ = mined
    for node in verifiers(network_setup, mined, tmp_path):
        assert node.chain.import_block(block).status == "connected"
        assert node.metrics["replays"] == 1 and node.metrics["peer_blocks_verified"] == 1
        assert node.metrics["tensors_fetched"] >= 1  # the state before the iteration came from node0


def test_a_replayed_message_is_not_executed_again(network_setup, mined, tmp_path, monkeypatch):
    from bws.node.roles import verifier as module

    block, _, _ = mined
    node = verifiers(network_setup, mined, tmp_path, count=1)[0]
    message = block.proofs[0].message.message
    task = node.chain.head_state.tasks[block.header.task_id]
    first = module.replay_iteration(node, task, message)
    assert first == C.ReplayResult(update_root=message.work.update_root, state_after_root=message.work.state_after_root)
    monkeypatch.setattr(module, "replay_inputs", lambda *args: pytest.fail("the kept result was not used"))
    assert module.replay_iteration(node, task, message) == first
    other = dataclasses.replace(message, work=dataclasses.replace(message.work, loss=message.work.loss + 1))
    with pytest.raises(pytest.fail.Exception):  # another message (digest) is executed
        module.replay_iteration(node, task, other)


def reforge(block: C.Block, secret_key: bytes, config, task, **work_changes) -> C.Block:
    """The block with its iteration message's work changed, re-signed, and a
    nonce that meets the target found by varying the (informational) loss."""
    proof = block.proofs[0]
    for salt in itertools.count():
        work = dataclasses.replace(proof.message.message.work, loss=1_000_000 + salt, **work_changes)
        message = dataclasses.replace(proof.message.message, work=work)
        seed = compute_nonce_seed(work)
        for index in range(get_nonce_allowance(config, task)):
            header = dataclasses.replace(block.header, message_digest=compute_message_digest(message),
                                         nonce_index=index, nonce=compute_nonce(seed, index))
            if is_valid_pow(header):
                signed = sign_iteration_message(secret_key, message)
                return dataclasses.replace(block, header=header,
                                           proofs=[C.PouwProof(message=signed)])


def assert_rejected_everywhere(nodes, block, reason: str) -> None:
    for node in nodes:
        with pytest.raises(BlockRejected, match=reason):
            node.chain.import_block(block)
        assert node.chain.head.height == 0


def task_of(node, block):
    return node.chain.head_state.tasks[block.header.task_id]


def test_forged_nonce_is_rejected_by_every_node(network_setup, mined, tmp_path):
    block, _, _ = mined
    nodes = verifiers(network_setup, mined, tmp_path)
    forged = dataclasses.replace(block, header=dataclasses.replace(block.header, nonce=hash_bytes(b"forged")))
    assert_rejected_everywhere(nodes, forged, "nonce is not derived")


def test_tampered_iteration_message_is_rejected_by_every_node(network_setup, mined, tmp_path):
    block, _, _ = mined
    nodes = verifiers(network_setup, mined, tmp_path)
    signed = block.proofs[0].message
    work = dataclasses.replace(signed.message.work, update_root=hash_bytes(b"another update"))
    tampered_message = dataclasses.replace(signed, message=dataclasses.replace(signed.message, work=work))
    tampered = dataclasses.replace(block, proofs=[dataclasses.replace(block.proofs[0], message=tampered_message)])
    # The header still names the original digest: the prechecks catch that before the signature.
    assert_rejected_everywhere(nodes, tampered, "message digest mismatch|bad signature")
    # With the header fixed up to the tampered message, the signature no longer matches.
    header = dataclasses.replace(block.header, message_digest=compute_message_digest(tampered_message.message))
    assert_rejected_everywhere(nodes, dataclasses.replace(tampered, header=header), "nonce|bad signature")


def test_wrong_batch_is_rejected_by_every_node(network_setup, mined, tmp_path):
    block, _, miner_context = mined
    nodes = verifiers(network_setup, mined, tmp_path)
    task = task_of(nodes[0], block)
    loaded = miner_context.library.load(task)
    work = block.proofs[0].message.message.work
    other = (int(work.batch_index) + 1) % task.num_batches
    wrong = reforge(block, miner_context.account.secret_key, nodes[0].chain.config, task, batch_index=other,
                    batch_root=loaded.batch_roots[other], batch_proof=loaded.batch_proof(other))
    assert_rejected_everywhere(nodes, wrong, "batch index is not the schedule's")


def test_replay_mismatch_is_rejected_by_every_node(network_setup, mined, tmp_path):
    block, _, miner_context = mined
    nodes = verifiers(network_setup, mined, tmp_path)
    task = task_of(nodes[0], block)
    lying = reforge(block, miner_context.account.secret_key, nodes[0].chain.config, task,
                    state_after_root=hash_bytes(b"a state nobody computed"))
    assert_rejected_everywhere(nodes, lying, "replay does not reproduce the iteration")
    assert all(node.metrics["replay_mismatches"] == 1 for node in nodes)


def test_withheld_inputs_leave_the_block_not_validated(network_setup, mined, tmp_path):
    """A node that cannot fetch the iteration's inputs does not connect the
    block, and does not take it for invalid either (validation.BlockNotValidated)."""
    from bws.node.validation import BlockNotValidated
    block, _, _ = mined
    genesis_setup = network_setup
    isolated: dict = {}
    node = make_node(genesis_setup, tmp_path, "isolated", network_setup[1][1], isolated)
    with pytest.raises(BlockNotValidated, match="iteration inputs unavailable"):
        node.chain.import_block(block)
    assert node.chain.head.height == 0
    assert node.metrics["replays_unavailable"] == 1 and node.chain.metrics["blocks_rejected"] == 0


# ---------------------------------------------------------------------------
# The supervisor, on the same real iteration messages
# ---------------------------------------------------------------------------
def supervisor_node(network_setup, mined, tmp_path):
    """node1, the supervisor of node0's bootstrap task."""
    _, nodes, _ = mined
    return make_node(network_setup, tmp_path, f"supervisor-{tmp_path.name}", network_setup[1][1], nodes)


def supervise(supervisor, signed):
    """What the supervisor's two threads do with one message, on this thread: record it, then replay it
    unless it was an equivocation."""
    if supervisor._record(signed):
        supervisor._replay(signed)


def pending_disputes(context):
    return [decode(tx.raw, C.SignedTransaction).transaction.body for tx in context.mempool.transactions()]


def test_supervisor_records_and_replays_honest_messages(network_setup, mined, tmp_path):
    from bws.node.roles.supervisor import Supervisor

    block, _, _ = mined
    node = supervisor_node(network_setup, mined, tmp_path)
    supervisor = Supervisor(node)
    honest = block.proofs[0].message
    supervise(supervisor, honest)
    work = honest.message.work
    assert node.chain.store.iteration_messages(bytes(work.task_id), int(work.iteration)) == [honest]
    assert node.metrics["supervisor_replays"] == 1 and not pending_disputes(node)
    history = supervisor.history(bytes(work.task_id))
    assert history["messages"] == 1 and len(bytes.fromhex(history["signature"])) == 64


def test_supervisor_skips_a_message_seen_again_and_forgets_the_oldest(network_setup, mined, tmp_path, monkeypatch):
    from bws.node.roles import supervisor as module

    block, _, _ = mined
    node = supervisor_node(network_setup, mined, tmp_path)
    supervisor = module.Supervisor(node)
    honest = block.proofs[0].message
    supervise(supervisor, honest)
    supervise(supervisor, honest)
    assert node.metrics["supervisor_recorded"] == 1 and node.metrics["supervisor_replays"] == 1
    monkeypatch.setattr(module, "SEEN_DIGESTS_KEPT", 2)
    assert supervisor._first_sight(b"a" * 32) and supervisor._first_sight(b"b" * 32)  # the honest digest goes
    assert len(supervisor._seen) == 2 and not supervisor._first_sight(b"b" * 32)
    supervise(supervisor, honest)  # recorded again (idempotent) and replayed again
    assert node.metrics["supervisor_recorded"] == 2 and node.metrics["supervisor_replays"] == 2
    work = honest.message.work
    assert node.chain.store.iteration_messages(bytes(work.task_id), int(work.iteration)) == [honest]


def test_supervisor_disputes_equivocation(network_setup, mined, tmp_path):
    from bws.node.roles.supervisor import Supervisor

    block, _, miner_context = mined
    node = supervisor_node(network_setup, mined, tmp_path)
    supervisor = Supervisor(node)
    honest = block.proofs[0].message
    other = sign_iteration_message(miner_context.account.secret_key, dataclasses.replace(
        honest.message, work=dataclasses.replace(honest.message.work, loss=honest.message.work.loss + 1)))
    supervise(supervisor, honest)
    supervise(supervisor, other)
    disputes = pending_disputes(node)
    assert len(disputes) == 1 and isinstance(disputes[0].evidence, C.Equivocation)
    assert {disputes[0].evidence.first, disputes[0].evidence.second} == {honest, other}


def test_supervisor_disputes_a_broken_link(network_setup, mined, tmp_path):
    """Issue #13's h6: a member's next iteration that does not start from the state its last one ended at
    (a state it never trained to) is a BrokenLink; the one that does is recorded without a dispute."""
    from bws.node.roles.supervisor import Supervisor

    block, _, miner_context = mined
    node = supervisor_node(network_setup, mined, tmp_path)
    supervisor = Supervisor(node)
    honest = block.proofs[0].message
    work = honest.message.work

    def next_iteration(state_before_root):
        return sign_iteration_message(miner_context.account.secret_key, dataclasses.replace(honest.message, work=(
            dataclasses.replace(work, iteration=work.iteration + 1, state_before_root=state_before_root))))
    chained = next_iteration(work.state_after_root)   # its other roots are made up: only the link is looked at
    assert supervisor._record(honest) and supervisor._record(chained)
    assert node.metrics["supervisor_broken_links"] == 0
    other = Supervisor(make_node(network_setup, tmp_path / "other", "other", network_setup[1][1], mined[1]))
    jumped = next_iteration(hash_bytes(b"a state it never trained to"))
    supervise(other, honest)
    supervise(other, jumped)
    disputes = pending_disputes(other.context)
    assert len(disputes) == 1 and disputes[0].evidence == C.BrokenLink(earlier=honest, later=jumped)


def test_supervisor_disputes_a_non_replayable_update(network_setup, mined, tmp_path):
    from bws.node.roles.supervisor import Supervisor

    block, _, miner_context = mined
    node = supervisor_node(network_setup, mined, tmp_path)
    honest = block.proofs[0].message
    lying = sign_iteration_message(miner_context.account.secret_key, dataclasses.replace(
        honest.message, work=dataclasses.replace(honest.message.work, update_root=hash_bytes(b"made up"))))
    supervise(Supervisor(node), lying)
    disputes = pending_disputes(node)
    assert len(disputes) == 1 and isinstance(disputes[0].evidence, C.FraudProof)
    assert node.metrics["supervisor_fraud"] == 1


def test_supervisor_flags_an_equivocation_while_its_replays_lag(network_setup, mined, tmp_path):
    """Recording and the equivocation check do not wait behind replays."""
    import threading
    from bws.node.roles.supervisor import Supervisor

    block, _, miner_context = mined
    node = supervisor_node(network_setup, mined, tmp_path)
    replaying, release = threading.Event(), threading.Event()

    class LaggingSupervisor(Supervisor):
        def _replay(self, signed):  # a replay that takes as long as the test wants
            replaying.set()
            release.wait(60)

    supervisor = LaggingSupervisor(node)
    supervisor.start()
    try:
        honest = block.proofs[0].message
        other = sign_iteration_message(miner_context.account.secret_key, dataclasses.replace(
            honest.message, work=dataclasses.replace(honest.message.work, loss=honest.message.work.loss + 1)))
        supervisor.on_message(honest)
        assert replaying.wait(30)
        supervisor.on_message(other)
        deadline = time.monotonic() + 30
        while not pending_disputes(node) and time.monotonic() < deadline:
            time.sleep(0.05)
        disputes = pending_disputes(node)
        assert len(disputes) == 1 and isinstance(disputes[0].evidence, C.Equivocation)
        assert not release.is_set()   # the first message's replay was still running
    finally:
        release.set()
        node.stop.set()
        supervisor.join(10)


def test_a_node_with_roles_but_no_miner_answers_the_auditors_message_request(network_setup, mined, tmp_path):
    """The role host registers /bws/audit/1 on every node with roles (a supervisor records every message),
    not only on miners."""
    from types import SimpleNamespace

    from bws.node.audit import PROTOCOL_AUDIT, decode_messages_answer, messages_request
    from bws.node.roles.host import RoleSet

    block, _, miner_context = mined
    handlers = {}
    chain_node = make_node(network_setup, tmp_path, "verifier-only", derive_account(7, "node1"), {})
    node = SimpleNamespace(chain=chain_node.chain, mempool=chain_node.mempool, import_block=chain_node.import_block,
                           network=SimpleNamespace(register_handler=handlers.__setitem__, peers=lambda: []),
                           data_dir=tmp_path / "verifier-only", iteration_message_listeners=[], head_listeners=[],
                           metrics_extensions=[], task_extensions=[], settings=SimpleNamespace(peers=[]))
    roles = RoleSet({"verifier"}, None)
    roles.attach(node)
    try:
        signed = block.proofs[0].message
        for listener in node.iteration_message_listeners:
            listener(signed, "somebody")
        work = signed.message.work
        answer = handlers[PROTOCOL_AUDIT]("auditor", messages_request(work.task_id, work.iteration, work.miner))
        assert decode_messages_answer(answer) == [signed]
    finally:
        roles.context.stop.set()
