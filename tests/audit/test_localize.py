"""Localization on real engine iterations (the digits task of the devnet)
with planted faults: every byzantine behaviour, and a fault planted at each
op of the iteration in turn. No network: the accused miner's audit server
answers in-process (its protocol encoding is exercised all the same)."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from bws.engine.trace import trace_iteration
from bws.engine import sum_updates
from bws.node import audit
from bws.node.audit import (
    NOT_READY, TRACE_RETRY_SECONDS, AuditError, AuditServer, RecordedIteration, REQUEST_OP, REQUEST_TRACE,
    audit_iteration, decode_messages_answer, decode_signed_trace, diff_tensors, messages_request, retry_after,
)
from bws.node.audit_sources import NetworkSource
from bws.node.devnet import DevnetOptions, build_task, derive_account, make_genesis
from bws.node.roles.byzantine import Byzantine, ByzantineError
from bws.node.roles.context import MessageLog
from bws.node.roles.data import FOUND, bundle_root, decode_checked
from bws.node.roles.library import TaskLibrary, flat, tree
from bws.spec import containers as C
from bws.spec.genesis import create_genesis_state
from bws.spec.hashing import ZERO_HASH
from bws.spec.pouw import (
    compute_input_mask_seed, compute_message_digest, is_valid_signed_iteration_message, sign_iteration_message,
)


class ServerSource:
    """An AuditSource over a dict of bundles and one node's AuditServer (what
    NetworkSource gets over libp2p, minus the transport)."""

    def __init__(self, tensors: dict, server: AuditServer) -> None:
        self.tensors, self.server = tensors, server

    def fetch_tensors(self, root):
        if bytes(root) not in self.tensors:
            raise AuditError(f"no tensors with root {bytes(root).hex()[:16]}…")
        return self.tensors[bytes(root)]

    def ask(self, request: bytes) -> bytes:
        """The server's answer, asking again while it answers NOT_READY (as NetworkSource does)."""
        while (answer := self.server.serve("peer", request))[:1] == NOT_READY:
            time.sleep(retry_after(answer))
        return answer

    def fetch_trace(self, signed):
        answer = self.ask(REQUEST_TRACE + bytes(compute_message_digest(signed.message)))
        return answer[1:] if answer[:1] == FOUND else None

    def fetch_op(self, signed, index, root):
        answer = self.ask(REQUEST_OP + bytes(compute_message_digest(signed.message)) + index.to_bytes(2, "little"))
        return decode_checked(answer[1:], root) if answer[:1] == FOUND else None


@pytest.fixture(scope="module")
def setup():
    definition = build_task(DevnetOptions(nodes=3, iterations=4))
    miner, peer = derive_account(3, "node0"), derive_account(3, "node1")
    genesis = make_genesis([SimpleNamespace(account=a) for a in (miner, peer)], derive_account(3, "client"),
                           definition, timestamp=1_700_000_000)
    state = create_genesis_state(genesis)
    task_id, task = next(iter(sorted(state.tasks.items())))
    loaded = TaskLibrary().load(task)
    state0 = flat(loaded.initial_state())
    _, peer_update, _ = loaded.iterate(tree(state0), loaded.batch(1), [])
    return SimpleNamespace(task_id=bytes(task_id), loaded=loaded, miner=miner, state0=state0,
                           peer_update=flat(peer_update),
                           batch=loaded.masked_batch(0, compute_input_mask_seed(task_id, 0, ZERO_HASH)))


def claim(setup, state_after: dict, update: dict, applied: list, transform=None, cheated=False, account=None):
    """The miner's signed message for iteration 0 (batch 0, one peer update)
    claiming `update` and `state_after`, its audit server, and the source."""
    loaded = setup.loaded
    tensors = {bundle_root(t): t for t in (setup.state0, setup.peer_update, update, state_after)}
    work = C.IterationWork(
        task_id=setup.task_id, iteration=0, miner=setup.miner.address, state_before_root=bundle_root(setup.state0),
        batch_index=0, batch_root=loaded.batch_roots[0], batch_proof=loaded.batch_proof(0),
        peer_update_roots=[bundle_root(setup.peer_update)], update_root=bundle_root(update),
        state_after_root=bundle_root(state_after), loss=0)
    signed = sign_iteration_message(setup.miner.secret_key, C.IterationMessage(work=work, header_commitment=ZERO_HASH))
    context = SimpleNamespace(account=account or setup.miner, messages=MessageLog())
    context.messages.add(signed, None)
    server = AuditServer(context, transform)
    server.record(RecordedIteration(signed, loaded, setup.state0, applied, setup.batch, cheated=cheated))
    return signed, ServerSource(tensors, server)


def honest_claim(setup, **kwargs):
    new_state, update, _ = setup.loaded.iterate(tree(setup.state0), setup.batch, [tree(setup.peer_update)])
    return claim(setup, flat(new_state), flat(update), [setup.peer_update], **kwargs)


def byzantine_claim(setup, kind: str):
    byzantine = Byzantine(kind)
    state_after, update, _, applied = byzantine.iterate(setup.loaded, tree(setup.state0), setup.batch,
                                                        [tree(setup.peer_update)], flat, tree)
    return claim(setup, state_after, update, [flat(u) for u in applied], byzantine.claimed_trace, cheated=True)


def test_honest_iteration_matches_engine_and_reference(setup):
    signed, source = honest_claim(setup)
    report = audit_iteration(source, setup.loaded, signed)
    assert report.verdict == "MATCH" and report.engine_matches_reference
    assert report.tensor_diffs == [] and report.divergent_op is None
    assert "verdict: MATCH" in report.render()


def test_flip_bit_is_localized_to_the_update_op_and_the_flipped_element(setup):
    signed, source = byzantine_claim(setup, "flip-bit")
    report = audit_iteration(source, setup.loaded, signed)
    assert report.verdict == "MISMATCH" and report.engine_matches_reference
    assert report.first_tensor == "update:0/bias"
    assert report.divergent_op == "update"
    (diff,) = report.op_diffs
    assert diff.name == "0/bias" and diff.differing == 1
    (_, claimed, replayed), = diff.first
    assert claimed ^ replayed == 1
    text = report.render()
    assert "first divergent op" in text and "update" in text and "1 of" in text


def test_wrong_peers_is_localized_to_the_merge_op(setup):
    signed, source = byzantine_claim(setup, "wrong-peers")
    report = audit_iteration(source, setup.loaded, signed)
    assert report.verdict == "MISMATCH"
    assert report.divergent_op == "merge" and report.divergent_op_index == 0
    assert report.op_diffs and all(d.name.startswith("params/") for d in report.op_diffs)
    assert report.first_tensor.startswith("update:")


def test_random_update_names_the_tensor_and_says_no_intermediates_exist(setup):
    signed, source = byzantine_claim(setup, "random-update")
    report = audit_iteration(source, setup.loaded, signed)
    assert report.verdict == "MISMATCH"
    assert report.first_tensor == "update:0/bias" and report.tensor_diffs[0].differing > 0
    assert report.divergent_op is None
    assert any("no intermediate commitments" in note for note in report.notes)


def test_equivocation_gives_two_valid_different_messages(setup):
    signed, _ = honest_claim(setup)
    second = Byzantine("equivocate").second_message(setup.miner.secret_key, signed)
    assert second.message != signed.message and second.message.work == signed.message.work
    assert is_valid_signed_iteration_message(second)


def corrupting(op_index: int):
    """A trace transform that plants a one-bit fault in op `op_index`'s first tensor
    (and, as a wrong value would, changes everything after it)."""
    def transform(recorded, trace):
        out = []
        for index, (name, outputs) in enumerate(trace):
            if index >= op_index:
                first = sorted(outputs)[0]
                changed = np.array(outputs[first])
                changed.reshape(-1)[0] ^= 1
                outputs = dict(outputs, **{first: changed})
            out.append((name, outputs))
        return out
    return transform


def test_bisection_finds_a_fault_planted_at_each_op(setup):
    spec = setup.loaded.spec
    honest = trace_iteration(spec, tree(setup.state0), setup.batch, sum_updates([tree(setup.peer_update)], spec=spec))
    names = [name for name, _ in honest]
    assert names[0] == "merge" and names[-2:] == ["update", "state_after"]
    assert any(n.startswith("forward/") for n in names) and "loss" in names and "optimizer" in names
    for op_index, op_name in enumerate(names):
        transform = corrupting(op_index)
        planted = dict(transform(None, honest))
        signed, source = claim(setup, planted["state_after"], planted["update"], [setup.peer_update], transform,
                               cheated=True)
        report = audit_iteration(source, setup.loaded, signed)
        assert report.verdict == "MISMATCH", op_name
        assert report.divergent_op == op_name and report.divergent_op_index == op_index
        (diff,) = report.op_diffs
        assert diff.differing == 1 and diff.name == sorted(dict(honest)[op_name])[0]


def test_a_trace_signed_by_someone_else_is_not_used(setup):
    transform = corrupting(3)
    signed, source = claim(setup, *[dict(transform(None, trace_iteration(
        setup.loaded.spec, tree(setup.state0), setup.batch,
        sum_updates([tree(setup.peer_update)], spec=setup.loaded.spec))))[k] for k in ("state_after", "update")],
        [setup.peer_update], transform, cheated=True, account=derive_account(3, "intruder"))
    report = audit_iteration(source, setup.loaded, signed)
    assert report.verdict == "MISMATCH" and report.divergent_op is None
    assert any("not signed by the message's miner" in note for note in report.notes)


def test_missing_inputs_are_an_audit_error(setup):
    signed, source = honest_claim(setup)
    source.tensors.pop(bundle_root(setup.state0))
    with pytest.raises(AuditError, match="no tensors with root"):
        audit_iteration(source, setup.loaded, signed)


def test_served_messages_round_trip(setup):
    signed, source = honest_claim(setup)
    answer = source.server.serve("peer", messages_request(setup.task_id, 0, setup.miner.address))
    assert decode_messages_answer(answer) == [signed]
    assert source.server.serve("peer", b"?junk") == b"\x00"


def test_diff_names_shape_changes_and_missing_tensors():
    diffs = diff_tensors({"a": np.zeros(3, np.int32), "b": np.zeros(2, np.int32)},
                         {"a": np.zeros(4, np.int32), "c": np.ones(2, np.int32)})
    assert [(d.name, d.note.split(",")[0]) for d in diffs] == [
        ("a", "claimed int32[3]"), ("b", "not in the replay"), ("c", "missing from the claim")]


def test_unknown_byzantine_kind_is_refused():
    with pytest.raises(ByzantineError, match="must be one of"):
        Byzantine("lazy")


def test_the_first_trace_is_computed_before_anyone_asks_and_a_request_meanwhile_is_told_when_to_retry(
        setup, monkeypatch):
    computing, compiled = threading.Event(), threading.Event()
    trace_iteration_of_engine = audit.trace_iteration

    def compiling(*args):  # the first traced iteration of a model compiles: here it lasts until `compiled`
        computing.set()
        assert compiled.wait(60)
        return trace_iteration_of_engine(*args)
    monkeypatch.setattr(audit, "trace_iteration", compiling)
    monkeypatch.setattr(audit, "ANSWER_WITHIN_SECONDS", 0.2)
    signed, source = honest_claim(setup)
    assert computing.wait(30), "recording the iteration did not start its trace"
    request = REQUEST_TRACE + bytes(compute_message_digest(signed.message))
    answer = source.server.serve("auditor", request)
    assert answer[:1] == NOT_READY and retry_after(answer) == TRACE_RETRY_SECONDS
    compiled.set()
    (names, _) = zip(*decode_signed_trace(source.ask(request)[1:], signed))
    assert names[0] == "merge" and names[-1] == "state_after"


class NotReadyTwice:
    """A network whose miner answers NOT_READY (retry after 1 s) twice, then as its audit server does."""

    def __init__(self, server: AuditServer) -> None:
        self.server, self.requests = server, 0

    def request(self, peer, protocol, data, timeout=None) -> bytes:
        self.requests += 1
        return NOT_READY + (1).to_bytes(2, "little") if self.requests <= 2 else self.server.serve(peer, data)


def test_the_auditor_asks_again_after_the_time_a_not_ready_answer_names(setup):
    signed, source = honest_claim(setup)
    network = NotReadyTwice(source.server)
    started = time.monotonic()
    raw = NetworkSource(network, ["miner"]).fetch_trace(signed)
    assert raw is not None and decode_signed_trace(raw, signed)
    assert network.requests == 3 and time.monotonic() - started >= 2.0
