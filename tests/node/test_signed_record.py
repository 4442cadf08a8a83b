"""Slashing protection (node/roles/signed.py): a node never signs two versions of one iteration, restarts included."""
import time

import pytest

from bws.node.p2p import TOPIC_TASK
from bws.node.roles import miner as miner_module
from bws.node.roles.data import TensorCache
from bws.node.roles.miner import Miner, sign_iteration_message
from bws.node.roles.signed import SignedMessages, SignedRecordError
from bws.node.devnet import derive_account
from bws.spec import containers as C
from bws.spec.encoding import decode
from bws.spec.hashing import hash_bytes
from tests.node.test_miner_proving import one_miner  # noqa: F401 (fixture)
from tests.node.test_roles_verifier import make_node

ACCOUNT = derive_account(1, "signed-record test key")


def message(iteration: int, commitment: bytes = bytes(32)) -> C.IterationMessage:
    work = C.IterationWork(task_id=hash_bytes(b"task"), iteration=iteration, miner=ACCOUNT.address,
                           state_before_root=bytes(32), batch_index=0, batch_root=bytes(32), batch_proof=[],
                           peer_update_roots=[], update_root=bytes(32), state_after_root=bytes(32), loss=0)
    return C.IterationMessage(work=work, header_commitment=commitment)


def signer(m: C.IterationMessage) -> C.SignedIterationMessage:
    return sign_iteration_message(ACCOUNT.secret_key, ACCOUNT.public_key, m)


def test_a_second_version_is_refused_across_a_restart(tmp_path):
    path = tmp_path / "signed.bin"
    record = SignedMessages(path)
    first = record.sign(message(0), signer)
    assert record.sign(message(0), signer) is first
    assert record.sign(message(0, hash_bytes(b"another header")), signer) is None
    record.sign(message(1), signer)
    restarted = SignedMessages(path)
    assert len(restarted) == 2
    assert restarted.sign(message(0), signer) == first
    assert restarted.sign(message(1, hash_bytes(b"another header")), signer) is None


def test_a_message_not_chained_to_a_signed_neighbour_is_refused_across_a_restart(tmp_path):
    """A BrokenLink (spec `is_chained`) slashes as an equivocation does: after a restart that redid an
    iteration with another mask or other peer updates, the node signs neither side of a broken link."""
    import dataclasses
    path = tmp_path / "signed.bin"
    SignedMessages(path).sign(message(4), signer)
    restarted = SignedMessages(path)

    def starting_from(iteration, root):
        m = message(iteration)
        return dataclasses.replace(m, work=dataclasses.replace(m.work, state_before_root=root))

    def ending_at(iteration, root):
        m = message(iteration)
        return dataclasses.replace(m, work=dataclasses.replace(m.work, state_after_root=root))
    assert restarted.sign(starting_from(5, hash_bytes(b"a state never signed")), signer) is None
    assert restarted.sign(ending_at(3, hash_bytes(b"not where iteration 4 starts")), signer) is None
    assert restarted.sign(message(5), signer) is not None and restarted.sign(message(3), signer) is not None


def test_a_record_cut_short_by_a_crash_is_dropped_and_a_corrupt_one_is_an_error(tmp_path):
    path = tmp_path / "signed.bin"
    SignedMessages(path).sign(message(0), signer)
    whole = path.read_bytes()
    path.write_bytes(whole + whole[:10])      # a second record torn mid-write
    record = SignedMessages(path)
    assert len(record) == 1 and path.read_bytes() == whole
    record.sign(message(1), signer)
    assert len(SignedMessages(path)) == 2
    path.write_bytes(b"\x05\x00\x00\x00junk!")
    with pytest.raises(SignedRecordError, match="record at byte 0"):
        SignedMessages(path)


def test_a_restarted_miner_never_signs_a_second_version(one_miner, tmp_path):  # noqa: F811
    """Issue #14's h5: after a restart the miner trained again from iteration 0
    and signed new messages (new header commitments) for iterations it had
    signed: an Equivocation that burns its stake. Now it refuses them."""
    path = tmp_path / "signed.bin"

    def run(name: str) -> tuple[list, object]:
        context = make_node(one_miner, tmp_path, name, one_miner[1][0], {})
        context.signed = SignedMessages(path)
        miner = Miner(context)
        for _ in range(3):
            miner._last_bootstrap = float("-inf")
            assert miner.step()
        return [decode(data, C.SignedIterationMessage) for topic, data in context.network.published
                if topic == TOPIC_TASK], context

    before, _ = run("before")
    assert [s.message.work.iteration for s in before] == [0, 1, 2]
    time.sleep(1.1)   # a later clock: the headers the restarted miner would commit to differ
    after, context = run("after")
    signed_before = {s.message.work.iteration: s for s in before}
    assert all(s == signed_before[s.message.work.iteration] for s in after), "a second version was sent"
    assert context.metrics["signatures_refused"] >= 1


@pytest.mark.parametrize("every_iteration", [True, False])
def test_a_killed_miner_resumes_after_its_last_saved_iteration(one_miner, tmp_path, monkeypatch,  # noqa: F811
                                                              every_iteration):
    """Issue #15: a restarted miner trained again from iteration 0. Killed
    outright (no clean stop writes its cache), it now resumes after the
    newest iteration whose state it checkpointed: with a checkpoint every
    iteration, right after the last one it signed, from the state that
    message named; with the default interval, after the first iteration,
    redoing the others silently (never a second version, never a broken link)."""
    if every_iteration:
        monkeypatch.setattr(miner_module, "CHECKPOINT_INTERVAL_SECONDS", 0.0)
    path, tensors = tmp_path / "signed.bin", tmp_path / "tensors"

    def run(name: str, steps: int) -> tuple[list, object]:
        context = make_node(one_miner, tmp_path, name, one_miner[1][0], {})
        context.signed, context.cache = SignedMessages(path), TensorCache(directory=tensors)
        miner = Miner(context)
        for _ in range(steps):
            miner._last_bootstrap = float("-inf")
            assert miner.step()
        return [decode(data, C.SignedIterationMessage) for topic, data in context.network.published
                if topic == TOPIC_TASK], context

    before, _ = run("before", 3)
    time.sleep(1.1)   # a later clock: the headers the restarted miner commits to differ
    after, context = run("after", 4)
    assert context.metrics["trainings_resumed"] == 1
    if every_iteration:
        assert [s.message.work.iteration for s in after] == [3, 4, 5, 6]
        assert after[0].message.work.state_before_root == before[-1].message.work.state_after_root
        assert context.metrics["signatures_refused"] == 0
    else:
        # 1 and 2 trained again, not signed again; nor 3: the 2 it trained to (another header's input mask) is not
        # the 2 it signed, and signing 3 would be a BrokenLink with it
        assert [s.message.work.iteration for s in after] == [4]
        assert context.metrics["signatures_refused"] == 3
