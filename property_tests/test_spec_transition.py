"""Hypothesis: any transaction, honest or not, either applies (keeping every
coin accounted for and moving the sender's nonce by one) or is rejected with
InvalidTransaction; any mutation of a valid block is rejected with
DecodeError or InvalidBlock, or (if it only changes nothing the rules read)
gives the same post-state."""
from hypothesis import given, strategies as st

from bws.node.review import ToyChain
from bws.spec import containers as C
from bws.spec.encoding import DecodeError, decode, encode
from bws.spec.state_transition import (
    InvalidBlock, InvalidTransaction, apply_transaction, compute_state_root, get_total_supply, state_transition,
)

CHAIN = ToyChain()
STATE, BLOCK = CHAIN.extend(CHAIN.genesis_state, CHAIN.genesis_block, "alice")
NAMES = sorted(CHAIN.address)
VALID_BLOCK = CHAIN.mine(STATE, BLOCK, "bob", [CHAIN.transaction(STATE, "client", C.Transfer(
    recipient=CHAIN.address["dave"], amount=10))])
POST_ROOT = compute_state_root(state_transition(STATE, VALID_BLOCK, CHAIN.oracles))

amounts = st.one_of(st.integers(0, 3), st.integers(0, 2**64 - 1), st.sampled_from([10**8, 10**10, 10**11]))
bodies = st.one_of(
    st.builds(C.Transfer, recipient=st.sampled_from(NAMES).map(CHAIN.address.get), amount=amounts),
    st.builds(C.Stake, role=st.integers(0, 4), amount=amounts),
    st.builds(C.Unstake, role=st.integers(0, 4)),
    st.builds(lambda group, iterations, deadline, payment: CHAIN.submit_task_body(group, iterations, deadline, payment),
              st.integers(0, 70), st.integers(0, 30), st.integers(0, 40), amounts),
    st.builds(C.CancelTask, task_id=st.sampled_from([CHAIN.genesis_task_id, bytes(32)])),
    st.builds(lambda correct: C.EvaluationResult(task_id=CHAIN.genesis_task_id, models=[
        C.ScoredModel(final_message=BLOCK.proofs[0].message, correct=correct)]), st.integers(0, 2**64 - 1)),
)


@given(st.sampled_from(NAMES), bodies, st.integers(0, 2), st.integers(0, 3), st.booleans())
def test_any_transaction_applies_cleanly_or_is_rejected(sender, body, fee, nonce_offset, right_chain):
    account = STATE.accounts[CHAIN.address[sender]]
    signed = CHAIN.transaction(STATE, sender, body, fee=fee, nonce=account.nonce + nonce_offset,
                               chain_id=None if right_chain else 1)
    try:
        post = apply_transaction(STATE, signed, CHAIN.address["sam"], CHAIN.oracles)
    except InvalidTransaction as error:
        assert error.reason
        return
    assert get_total_supply(post) == post.genesis_supply + post.minted - post.burned == get_total_supply(STATE)
    assert post.accounts[CHAIN.address[sender]].nonce == account.nonce + 1


@given(st.data())
def test_mutated_blocks_are_rejected_or_harmless(data):
    encoded = bytearray(encode(VALID_BLOCK))
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(encoded) - 1))
        encoded[index] ^= 1 << data.draw(st.integers(0, 7))
    try:
        block = decode(bytes(encoded), C.Block)
        post = state_transition(STATE, block, CHAIN.oracles)
    except (DecodeError, InvalidBlock):
        return
    assert compute_state_root(post) == POST_ROOT
