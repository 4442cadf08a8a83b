"""The node's block transition (node/transition.py) gives the spec's verdicts, reasons, post-states and roots."""
import copy
import dataclasses
import json

import pytest

from bws.node import transition as N
from bws.node.merkle import MerkleTree
from bws.node.review import TOY_CONFIG, ToyChain
from bws.node.validation import BlockRejected, precheck_block
from bws.spec import containers as C
from bws.spec import state_transition as T
from bws.spec.constants import ROLE_MINER
from bws.spec.encoding import ByteList, decode, encode
from bws.spec.hashing import compute_merkle_root, hash_bytes
from bws.spec.presets import COIN
from tests.node.chain_factory import HASH_ORACLES, ChainFactory, hash_replay
from tests.node.test_spec_vectors import VECTORS, vector_oracles

ALL_VECTORS = [json.loads(line) for path in sorted(VECTORS.glob("*.jsonl"))
               for line in path.read_text().splitlines() if line.strip()]


def run_vector(vector: dict) -> dict:
    """The node's outcome of a vector, in the vector's `expected` form."""
    pre_state = decode(bytes.fromhex(vector["pre_state"]), C.State)
    oracles = vector_oracles(vector)
    try:
        if vector["kind"] == "block":
            post = N.state_transition(pre_state, decode(bytes.fromhex(vector["block"]), C.Block), oracles)
        else:
            post = N.apply_transaction(pre_state, decode(bytes.fromhex(vector["transaction"]), C.SignedTransaction),
                                       bytes.fromhex(vector["fee_recipient"]), oracles)
    except (T.InvalidBlock, T.InvalidTransaction) as error:
        return {"invalid": error.reason}
    assert N.compute_state_root(post) == T.compute_state_root(post)
    return {"post_state_root": N.compute_state_root(post).hex()}


@pytest.mark.parametrize("vector", ALL_VECTORS, ids=[v["name"] for v in ALL_VECTORS])
def test_vector_same_outcome_and_reason(vector):
    """Every transaction kind and every block rule of the spec's vectors: the
    same post-state root, or the spec's reason word for word."""
    assert run_vector(vector) == vector["expected"]


def passes_precheck(vector: dict) -> bool:
    pre_state = decode(bytes.fromhex(vector["pre_state"]), C.State)
    try:
        precheck_block(decode(bytes.fromhex(vector["block"]), C.Block), pre_state.config)
    except BlockRejected:
        return False
    return True


PRECHECKED_VECTORS = [v for v in ALL_VECTORS if v["kind"] == "block" and passes_precheck(v)]


@pytest.mark.parametrize("vector", PRECHECKED_VECTORS, ids=[v["name"] for v in PRECHECKED_VECTORS])
def test_prechecked_block_vector_same_outcome(vector, monkeypatch):
    """A block that passed precheck_block gets the same outcome, its signatures
    found among the verdicts precheck_block left, not verified again."""
    passes_precheck(vector)
    monkeypatch.setattr(N.keys, "is_valid_signature", lambda *args: pytest.fail("a signature verified twice"))
    assert run_vector(vector) == vector["expected"]


@pytest.mark.parametrize("vector", ALL_VECTORS[::7], ids=[v["name"] for v in ALL_VECTORS[::7]])
def test_pre_state_is_not_modified(vector):
    pre_state = decode(bytes.fromhex(vector["pre_state"]), C.State)
    before = encode(pre_state)
    oracles = vector_oracles(vector)
    try:
        if vector["kind"] == "block":
            N.state_transition(pre_state, decode(bytes.fromhex(vector["block"]), C.Block), oracles)
        else:
            N.apply_transaction(pre_state, decode(bytes.fromhex(vector["transaction"]), C.SignedTransaction),
                                bytes.fromhex(vector["fee_recipient"]), oracles)
    except (T.InvalidBlock, T.InvalidTransaction):
        pass
    assert encode(pre_state) == before


def test_chained_blocks_with_transactions_and_a_stake_release():
    """Blocks applied on the node's own previous results (as Chain does):
    transfers, an unstake paid back stake_lock_period blocks later; each
    post-state equal to the spec's, the incremental root to the spec's root."""
    toy = ToyChain(dataclasses.replace(TOY_CONFIG, stake_lock_period=3))
    spec_state, parent = toy.genesis_state, toy.genesis_block
    node_state = copy.deepcopy(spec_state)
    for height in range(1, 7):
        transactions = [toy.transaction(spec_state, sender, C.Transfer(recipient=toy.address["eve"], amount=COIN))
                        for sender in ("client", "mallory")]
        if height == 1:
            transactions.append(toy.transaction(spec_state, "dave", C.Unstake(role=ROLE_MINER)))
        block = toy.mine(spec_state, parent, ("alice", "bob", "carol")[height % 3], transactions)
        spec_state, parent = T.state_transition(spec_state, block, toy.oracles), block
        node_state = N.state_transition(node_state, block, toy.oracles)
        assert node_state == spec_state
        assert N.compute_state_root(node_state) == T.compute_state_root(spec_state) == block.header.state_root
    assert C.StakeKey(owner=toy.address["dave"], role=ROLE_MINER) not in node_state.stakes


def test_invalid_blocks_give_the_spec_reason():
    factory = ChainFactory(seed=8)
    state = factory.genesis_state
    block, _ = factory.next_block(state)
    cases = {
        "height 2 does not follow 0": dict(height=2),
        "state root mismatch": dict(state_root=bytes(32)),
        "transactions root mismatch": dict(transactions_root=bytes(32)),
    }
    for reason, changes in cases.items():
        broken = dataclasses.replace(block, header=dataclasses.replace(block.header, **changes))
        with pytest.raises(T.InvalidBlock) as node_error:
            N.state_transition(state, broken, HASH_ORACLES)
        with pytest.raises(T.InvalidBlock) as spec_error:
            T.state_transition(state, broken, HASH_ORACLES)
        assert node_error.value.reason == spec_error.value.reason == reason


def test_post_state_shares_no_map_with_the_parent():
    factory = ChainFactory(seed=9)
    block, _ = factory.next_block(factory.genesis_state)
    parent = copy.deepcopy(factory.genesis_state)
    post = N.state_transition(parent, block, HASH_ORACLES)
    for name in ("accounts", "stakes", "tasks"):
        assert getattr(post, name) is not getattr(parent, name)
        assert type(getattr(post, name)) is type(getattr(parent, name))
    post.accounts.clear()
    assert parent == factory.genesis_state


def test_state_root_follows_states_changed_in_place():
    """The leaf cache trusts only the identical object: an entry replaced,
    added or removed, or a scalar changed, in place, after the root was
    cached, still gives the spec's root."""
    factory = ChainFactory(seed=10)
    state = copy.deepcopy(factory.genesis_state)
    assert N.compute_state_root(state) == T.compute_state_root(state)
    address = factory.users[0].address
    state.accounts[address] = dataclasses.replace(state.accounts[address], balance=1)
    assert N.compute_state_root(state) == T.compute_state_root(state)
    state.accounts[bytes(range(20))] = C.Account(balance=5, nonce=0)
    del state.stakes[next(iter(state.stakes))]
    state.height = 77
    assert N.compute_state_root(state) == T.compute_state_root(state)
    state.accounts.clear()
    assert N.compute_state_root(state) == T.compute_state_root(state)


def test_variable_width_keys_are_refused():
    """The cache orders leaves by key; that is the spec's order only for fixed-width keys."""
    assert N._is_fixed_width(C.StakeKey) and N._is_fixed_width(C.Address)
    assert not N._is_fixed_width(ByteList(8))


def test_apply_transaction_matches_the_spec_and_leaves_the_state():
    factory = ChainFactory(seed=11)
    state = factory.genesis_state
    before = encode(state)
    sender, recipient = factory.users
    signed = factory.transfer(sender, recipient.address, COIN, nonce=0)
    fee_recipient = factory.miners[0].address
    assert N.apply_transaction(state, signed, fee_recipient, HASH_ORACLES) == \
        T.apply_transaction(state, signed, fee_recipient, HASH_ORACLES)
    with pytest.raises(T.InvalidTransaction, match="^nonce 0 is not the expected 1$"):
        N.apply_transaction(N.apply_transaction(state, signed, fee_recipient, HASH_ORACLES), signed, fee_recipient,
                            HASH_ORACLES)
    forged = dataclasses.replace(signed, signature=signed.signature[:40] + bytes([signed.signature[40] ^ 1])
                                 + signed.signature[41:])
    with pytest.raises(T.InvalidTransaction, match="^bad signature$"):
        N.apply_transaction(state, forged, fee_recipient, HASH_ORACLES)
    assert encode(state) == before


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 5, 8, 9, 17])
def test_merkle_tree_updates_give_the_spec_root(count):
    leaves = [hash_bytes(b"leaf %d" % i) for i in range(count)]
    tree = MerkleTree(leaves)
    assert tree.root == compute_merkle_root(leaves)
    for position in range(0, count, 3):
        leaves[position] = hash_bytes(b"changed %d" % position)
        tree.update({position: leaves[position]})
        assert tree.root == compute_merkle_root(leaves)
    tree.update({position: hash_bytes(b"again %d" % position) for position in range(count)})
    assert tree.root == compute_merkle_root([hash_bytes(b"again %d" % position) for position in range(count)])


def test_a_node_that_does_not_replay_takes_the_fraud_proof_outcome_the_state_root_commits_to():
    """A block carrying a proven fraud proof (alice slashed) and one carrying a
    false accusation (mallory pays): a node without the verifier role reaches
    the verifier's post-state for both. Taking the claimed roots for the
    evidence too would refuse the first block, which verifiers accept."""
    from bws.node.review import random_root
    toy = ToyChain()
    state, parent = toy.extend(toy.genesis_state, toy.genesis_block, "bob")
    task_id = toy.genesis_task_id
    honest = toy.iteration_work(task_id, state.tasks[task_id], 5, 0, random_root("header A"))
    fraud = toy.signed_message("alice", dataclasses.replace(honest, update_root=random_root("update")),
                               random_root("header A"))
    accusation = toy.signed_message("alice", honest, random_root("header A"))
    for evidence, slashed in ((fraud, True), (accusation, False)):
        dispute = toy.transaction(state, "mallory", C.Dispute(evidence=C.FraudProof(message=evidence)))
        block = toy.mine(state, parent, "carol", [dispute])
        verified = N.state_transition(state, block, toy.oracles)
        assert N.trusting_transition(state, block) == verified
        assert verified.tasks[task_id].members[0].slashed == slashed
        claims_only = dataclasses.replace(toy.oracles, replay=lambda task, message: N.claimed_result(message))
        if slashed:
            with pytest.raises(T.InvalidBlock, match="state root mismatch"):
                N.state_transition(state, block, claims_only)
    broken = dataclasses.replace(block, header=dataclasses.replace(block.header, state_root=random_root("x")))
    with pytest.raises(T.InvalidBlock, match="state root mismatch"):
        N.trusting_transition(state, broken)


def test_a_block_with_more_fraud_proofs_than_the_rule_allows_is_refused_with_or_without_replay():
    from bws.node.review import random_root
    from bws.spec.constants import MAX_FRAUD_PROOFS_PER_BLOCK
    toy = ToyChain()
    state, parent = toy.extend(toy.genesis_state, toy.genesis_block, "bob")
    task_id = toy.genesis_task_id
    honest = toy.iteration_work(task_id, state.tasks[task_id], 5, 0, random_root("header A"))
    disputes = [toy.transaction(state, "mallory", C.Dispute(evidence=C.FraudProof(message=toy.signed_message(
        "alice", dataclasses.replace(honest, update_root=random_root(f"update {n}")), random_root("header A")))),
        nonce=state.accounts[toy.address["mallory"]].nonce + n)
        for n in range(MAX_FRAUD_PROOFS_PER_BLOCK + 1)]
    block = toy.mine(state, parent, "carol", disputes, seal=False)
    for transition in (lambda: N.trusting_transition(state, block), lambda: N.state_transition(state, block, toy.oracles),
                       lambda: T.state_transition(state, block, toy.oracles)):
        with pytest.raises(T.InvalidBlock, match=f"more than {MAX_FRAUD_PROOFS_PER_BLOCK} fraud proofs"):
            transition()
    accusations = [toy.transaction(state, "mallory", C.Dispute(evidence=C.FraudProof(message=toy.honest_message(
        "alice", task_id, state.tasks[task_id], 5, random_root(f"header {n}")))),
        nonce=state.accounts[toy.address["mallory"]].nonce + n)
        for n in range(MAX_FRAUD_PROOFS_PER_BLOCK)]
    sealed = toy.mine(state, parent, "carol", accusations)  # four (false accusations, here) are fine
    assert N.trusting_transition(state, sealed) == N.state_transition(state, sealed, toy.oracles)
