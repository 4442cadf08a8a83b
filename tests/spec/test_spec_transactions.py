"""Every transaction kind: what a valid one does to the state, and the rules an invalid one breaks."""
import dataclasses

import pytest

from bws.node.review import random_root
from bws.spec import containers as C
from bws.spec.constants import ROLE_EVALUATOR, ROLE_MINER, TASK_CANCELLED, TASK_SUBMITTED
from bws.spec.presets import COIN
from bws.spec.state_transition import InvalidTransaction, apply_transaction, get_balance, get_total_supply
from bws.spec.tasks import compute_task_id


def apply(chain, state, sender, body, **kwargs):
    return apply_transaction(state, chain.transaction(state, sender, body, **kwargs), chain.address["sam"], chain.oracles)


def rejects(chain, state, sender, body, reason, **kwargs):
    with pytest.raises(InvalidTransaction, match=reason):
        apply(chain, state, sender, body, **kwargs)


def test_transfer_moves_coins_takes_fee_and_nonce(chain, started):
    state, _ = started
    a = chain.address
    post = apply(chain, state, "alice", C.Transfer(recipient=a["mallory"], amount=5 * COIN), fee=7)
    assert get_balance(post, a["alice"]) == get_balance(state, a["alice"]) - 5 * COIN - 7
    assert get_balance(post, a["mallory"]) == get_balance(state, a["mallory"]) + 5 * COIN
    assert get_balance(post, a["sam"]) == get_balance(state, a["sam"]) + 7
    assert post.accounts[a["alice"]].nonce == state.accounts[a["alice"]].nonce + 1
    assert get_total_supply(post) == get_total_supply(state)
    assert state.accounts[a["alice"]].nonce == 0, "the pre-state is not modified"


def test_transfer_creates_the_recipient(chain, started):
    state, _ = started
    fresh = random_root("fresh")[:20]
    post = apply(chain, state, "alice", C.Transfer(recipient=fresh, amount=3))
    assert post.accounts[fresh] == C.Account(balance=3, nonce=0)


@pytest.mark.parametrize("body,reason,kwargs", [
    (C.Transfer(recipient=bytes(20), amount=0), "transfer of nothing", {}),
    (C.Transfer(recipient=bytes(20), amount=10**7 * COIN), "insufficient balance", {}),
    (C.Transfer(recipient=bytes(20), amount=1), "nonce 1 is not the expected 0", {"nonce": 1}),
    (C.Transfer(recipient=bytes(20), amount=1), "wrong chain id", {"chain_id": 1}),
    (C.Transfer(recipient=bytes(20), amount=1), "fee below the minimum", {"fee": 0}),
])
def test_invalid_transfers(chain, started, body, reason, kwargs):
    rejects(chain, started[0], "alice", body, reason, **kwargs)


def test_a_transaction_cannot_be_replayed(chain, started):
    state, _ = started
    signed = chain.transaction(state, "alice", C.Transfer(recipient=chain.address["bob"], amount=1))
    post = apply_transaction(state, signed, chain.address["sam"], chain.oracles)
    with pytest.raises(InvalidTransaction, match="nonce 0 is not the expected 1"):
        apply_transaction(post, signed, chain.address["sam"], chain.oracles)


def test_signature_must_be_the_senders(chain, started):
    state, _ = started
    signed = chain.transaction(state, "alice", C.Transfer(recipient=chain.address["bob"], amount=1))
    forged = dataclasses.replace(signed, transaction=dataclasses.replace(signed.transaction, fee=2))
    with pytest.raises(InvalidTransaction, match="bad signature"):
        apply_transaction(state, forged, chain.address["sam"], chain.oracles)
    stolen = dataclasses.replace(signed, transaction=dataclasses.replace(signed.transaction, sender=chain.address["bob"]))
    with pytest.raises(InvalidTransaction, match="public key is not the sender's"):
        apply_transaction(state, stolen, chain.address["sam"], chain.oracles)


def test_stake_and_unstake_then_release_after_lock(chain, started):
    state, block = started
    a = chain.address
    post = apply(chain, state, "mallory", C.Stake(role=ROLE_EVALUATOR, amount=30 * COIN))
    key = C.StakeKey(owner=a["mallory"], role=ROLE_EVALUATOR)
    assert post.stakes[key] == C.StakeBalance(amount=30 * COIN, release_height=0)
    assert get_total_supply(post) == get_total_supply(state)
    unstake = chain.transaction(state, "frank", C.Unstake(role=ROLE_MINER))
    frank = C.StakeKey(owner=a["frank"], role=ROLE_MINER)
    state, block = chain.extend(state, block, "bob", [unstake])
    release = state.height + state.config.stake_lock_period  # unstaked in this block
    assert state.stakes[frank].release_height == release
    before = get_balance(state, a["frank"])
    while state.height < release:
        state, block = chain.extend(state, block, ("alice", "bob", "carol")[state.height % 3])
        if state.height < release:
            assert frank in state.stakes
    assert frank not in state.stakes
    assert get_balance(state, a["frank"]) == before + 100 * COIN


@pytest.mark.parametrize("body,reason", [
    (C.Stake(role=3, amount=COIN), "unknown role"),
    (C.Stake(role=ROLE_MINER, amount=0), "stake of nothing"),
    (C.Stake(role=ROLE_MINER, amount=10**7 * COIN), "insufficient balance"),
    (C.Unstake(role=ROLE_MINER), "no stake for this role"),
])
def test_invalid_stakes(chain, started, body, reason):
    rejects(chain, started[0], "mallory", body, reason)


def test_submit_escrows_the_payment(chain, started):
    state, _ = started
    body = chain.submit_task_body(payment=77 * COIN)
    post = apply(chain, state, "client", body)
    task_id = compute_task_id(chain.config.chain_id, chain.address["client"], 0)
    task = post.tasks[task_id]
    assert task.status == TASK_SUBMITTED and task.payment == 77 * COIN and task.members == ()
    assert task.work_units == 64 * 4 * 2**2 * 4 * 3  # MACs (64 inputs x 4 units) x 2 slices squared x batch 4 x 3 passes
    assert get_balance(post, chain.address["client"]) == get_balance(state, chain.address["client"]) - 77 * COIN - 1
    assert get_total_supply(post) == get_total_supply(state)


@pytest.mark.parametrize("changes,reason", [
    ({"task_definition": b'{"model": {}}'}, "not canonical JSON"),
    ({"task_definition": b"[]"}, "must be a JSON object"),
    ({"task_definition": b"\xff"}, "not UTF-8 JSON"),
    ({"task_definition": b'{"dataset":{"batch_size":0},"model":{}}'}, "batch_size"),
    ({"num_batches": 0}, "dataset without batches"),
    ({"group_size": 0}, "group size"),
    ({"iterations": 0}, "task without iterations"),
    ({"evaluation_deadline": 3}, "deadline too early"),
    ({"payment": 0}, "task without payment"),
])
def test_invalid_submissions(chain, started, changes, reason):
    rejects(chain, started[0], "client", dataclasses.replace(chain.submit_task_body(), **changes), reason)


def test_cancel_refunds_before_training(chain, started):
    state, _ = started
    post = apply(chain, state, "client", chain.submit_task_body(payment=50 * COIN))
    task_id = compute_task_id(chain.config.chain_id, chain.address["client"], 0)
    rejects(chain, post, "mallory", C.CancelTask(task_id=task_id), "only the client may cancel")
    cancelled = apply(chain, post, "client", C.CancelTask(task_id=task_id))
    assert cancelled.tasks[task_id].status == TASK_CANCELLED
    assert get_balance(cancelled, chain.address["client"]) == get_balance(state, chain.address["client"]) - 2
    rejects(chain, cancelled, "client", C.CancelTask(task_id=task_id), "can no longer be cancelled")
    rejects(chain, cancelled, "client", C.CancelTask(task_id=random_root("x")), "unknown task")
