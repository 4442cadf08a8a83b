"""The node's validation and fork choice against the spec, on generated chains."""
import dataclasses

import pytest

from bws.node.store import ChainStore
from bws.node.validation import BlockRejected, Chain, TransactionRejected, precheck_block
from bws.spec import containers as C
from bws.spec import fork_choice as F
from bws.spec import state_transition as T
from bws.spec.hashing import hash_bytes
from bws.spec.pouw import compute_nonce, compute_nonce_seed, sign_iteration_message
from bws.spec.state_transition import compute_block_hash, compute_state_root

from tests.node.chain_factory import HASH_ORACLES, ChainFactory, hash_evaluate, hash_replay
from bws.spec.state_transition import Oracles


@pytest.fixture(scope="module")
def factory():
    return ChainFactory(miners=2, seed=1)


def open_chain(factory, path):
    return Chain(ChainStore(path), factory.genesis_state, factory.genesis_block, HASH_ORACLES)


def test_linear_chain_matches_spec_state_roots(factory, tmp_path):
    chain = open_chain(factory, tmp_path)
    state = factory.genesis_state
    tx = factory.transfer(factory.users[0], factory.users[1].address, 7 * 10**8, nonce=0)
    for height in range(1, 6):
        block, state = factory.next_block(state, transactions=[tx] if height == 3 else [], miner=height % 2)
        result = chain.import_block(block)
        assert result.status == "connected"
        assert compute_state_root(chain.head_state) == compute_state_root(state) == block.header.state_root
    assert chain.head.height == 5
    assert chain.import_block(block).status == "known"
    # Reopening the store gives the same head and state.
    chain.store.close()
    reopened = open_chain(factory, tmp_path)
    assert reopened.head.hash == compute_block_hash(block)
    assert compute_state_root(reopened.head_state) == block.header.state_root


def test_a_chain_without_replay_trusts_claimed_roots_and_still_checks_the_rest(factory, tmp_path):
    chain = Chain(ChainStore(tmp_path), factory.genesis_state, factory.genesis_block, None)
    state = factory.genesis_state
    for height in range(1, 4):
        block, state = factory.next_block(state, miner=height % 2)
        assert chain.import_block(block).status == "connected"
        assert compute_state_root(chain.head_state) == block.header.state_root
    block, _ = factory.next_block(state)
    broken = dataclasses.replace(block, header=dataclasses.replace(block.header, state_root=hash_bytes(b"other")))
    with pytest.raises(BlockRejected, match="state root mismatch"):
        chain.import_block(broken)


def test_reorg_to_heavier_branch_and_back_matches_spec_fork_choice(factory, tmp_path):
    chain = open_chain(factory, tmp_path)
    spec_store = F.get_forkchoice_store(factory.genesis_state, factory.genesis_block)
    main = factory.chain(3, miner_of=lambda h: 0)
    fork_base = main[0][1]
    tx = factory.transfer(factory.users[0], factory.users[1].address, 10**8, nonce=0)
    side = []
    state = fork_base
    for i in range(3):  # branch from height 1, longer than main: 1 + 3 = 4 blocks
        block, state = factory.next_block(state, miner=1, transactions=[tx] if i == 0 else [], timestamp=state.latest_block_header.timestamp + 3)
        side.append((block, state))
    for block, _ in main:
        chain.import_block(block)
        F.on_block(spec_store, block, HASH_ORACLES)
    statuses = []
    for block, _ in side:
        statuses.append(chain.import_block(block).status)
        F.on_block(spec_store, block, HASH_ORACLES)
        assert chain.head.hash == F.get_head(spec_store)
        assert compute_state_root(chain.head_state) == compute_state_root(spec_store.states[F.get_head(spec_store)])
    # The branch overtakes at height 3 (equal work, lower hash) or 4 (more work).
    assert statuses[0] == "side" and statuses.count("reorg") == 1
    assert chain.head.hash == compute_block_hash(side[-1][0])
    assert chain.account_nonce(factory.users[0].address) == 1
    # The store's state after the reorg is the branch tip's, also after reopening.
    chain.store.close()
    reopened = open_chain(factory, tmp_path)
    assert compute_state_root(reopened.head_state) == side[-1][0].header.state_root


def test_orphans_wait_for_their_parent(factory, tmp_path):
    chain = open_chain(factory, tmp_path)
    blocks = [b for b, _ in factory.chain(3)]
    assert chain.import_block(blocks[2]).status == "orphan"
    result = chain.import_block(blocks[1])
    assert result.status == "orphan" and result.missing_parent == compute_block_hash(blocks[0])
    results = chain.import_with_orphans(blocks[0])
    assert [r.status for r in results] == ["connected", "connected", "connected"]
    assert chain.head.height == 3


def tampered(factory, state, **kwargs):
    return factory.next_block(state, **kwargs)[0]


def expect_rejected(chain, block, reason):
    with pytest.raises(BlockRejected, match=reason):
        chain.import_block(block)
    assert chain.head.height == 0


def test_forged_nonce_is_rejected(factory, tmp_path):
    chain = open_chain(factory, tmp_path)
    block, _ = factory.next_block(factory.genesis_state)
    forged = dataclasses.replace(block, header=dataclasses.replace(block.header, nonce=hash_bytes(b"lucky")))
    expect_rejected(chain, forged, "nonce is not derived")
    beyond = dataclasses.replace(block, header=dataclasses.replace(block.header, nonce_index=99))
    expect_rejected(chain, beyond, "nonce is not derived|beyond the allowance|beyond any allowance")


def test_tampered_iteration_message_is_rejected(factory, tmp_path):
    chain = open_chain(factory, tmp_path)
    block, _ = factory.next_block(factory.genesis_state)
    proof = block.proofs[0]
    work = dataclasses.replace(proof.message.message.work, loss=999)
    # Same signature on a changed message.
    changed = dataclasses.replace(proof.message, message=dataclasses.replace(proof.message.message, work=work))
    bad = dataclasses.replace(block, proofs=[dataclasses.replace(proof, message=changed)])
    expect_rejected(chain, bad, "message digest mismatch|bad signature")
    # Re-signed by another key than the block's miner.
    other = sign_iteration_message(factory.miners[1].secret, proof.message.message)
    bad = dataclasses.replace(block, proofs=[dataclasses.replace(proof, message=other)])
    expect_rejected(chain, bad, "not by the block's miner|bad signature")


def test_wrong_batch_is_rejected(factory, tmp_path):
    chain = open_chain(factory, tmp_path)
    wrong = tampered(factory, factory.genesis_state,
                     tamper_work=lambda w: dataclasses.replace(w, batch_index=(w.batch_index + 1) % 8))
    expect_rejected(chain, wrong, "batch index")
    wrong = tampered(factory, factory.genesis_state,
                     tamper_work=lambda w: dataclasses.replace(w, batch_root=hash_bytes(b"other batch")))
    expect_rejected(chain, wrong, "batch root not proven")


def test_replay_mismatch_is_rejected(factory, tmp_path):
    chain = open_chain(factory, tmp_path)
    lying = tampered(factory, factory.genesis_state,
                     tamper_work=lambda w: dataclasses.replace(w, state_after_root=hash_bytes(b"better model")))
    expect_rejected(chain, lying, "replay does not reproduce")


def test_invalid_block_on_side_branch_aborts_the_reorg(factory, tmp_path):
    chain = open_chain(factory, tmp_path)
    main = factory.chain(2, miner_of=lambda h: 0)
    for block, _ in main:
        chain.import_block(block)
    head_before = chain.head.hash
    # A cheat's branch: its first block claims an update the replay does not give;
    # the cheat builds on it as if it were valid (a replay that believes the claim).
    bad = tampered(factory, factory.genesis_state, miner=1,
                   tamper_work=lambda w: dataclasses.replace(w, update_root=hash_bytes(b"x")))
    work = bad.proofs[0].message.message.work
    believed = C.ReplayResult(update_root=work.update_root, state_after_root=work.state_after_root)
    state = T.state_transition(factory.genesis_state, bad,
                               dataclasses.replace(HASH_ORACLES, replay=lambda task, message: believed))
    branch = [bad]
    for _ in range(2):
        block, state = factory.next_block(state, miner=1)
        branch.append(block)
    assert chain.import_block(branch[0]).status == "side"  # less work: stateless checks only
    with pytest.raises(BlockRejected, match="reorg aborted.*replay does not reproduce"):
        for block in branch[1:]:
            chain.import_block(block)
    assert chain.head.hash == head_before
    assert not chain.store.has_block(compute_block_hash(bad))  # forgotten with its descendants
    assert compute_state_root(chain.head_state) == main[-1][0].header.state_root
    assert compute_state_root(chain.store.load_head_state()) == main[-1][0].header.state_root
    with pytest.raises(BlockRejected, match="already found invalid"):
        chain.import_block(branch[0])


def test_transaction_admission(factory, tmp_path):
    chain = open_chain(factory, tmp_path)
    user = factory.users[0]
    chain.check_transaction(factory.transfer(user, factory.users[1].address, 5, nonce=0))
    with pytest.raises(TransactionRejected, match="does not cover"):
        chain.check_transaction(factory.transfer(user, factory.users[1].address, 10**18, nonce=0))
    with pytest.raises(TransactionRejected, match="bad signature"):
        signed = factory.transfer(user, factory.users[1].address, 5, nonce=0)
        chain.check_transaction(dataclasses.replace(signed, signature=bytes(63) + b"\x01"))
    stranger = ChainFactory(miners=1, seed=99).users[0]
    with pytest.raises(TransactionRejected, match="unknown sender"):
        chain.check_transaction(factory.transfer(stranger, user.address, 5, nonce=0))
    with pytest.raises(TransactionRejected, match="below the minimum"):
        chain.check_transaction(factory.transfer(user, factory.users[1].address, 5, nonce=0, fee=0))


def test_precheck_rejects_genesis_and_missing_proof(factory):
    with pytest.raises(BlockRejected, match="genesis"):
        precheck_block(factory.genesis_block, factory.genesis_state.config)
    block, _ = factory.next_block(factory.genesis_state)
    with pytest.raises(BlockRejected, match="exactly one"):
        precheck_block(dataclasses.replace(block, proofs=[]), factory.genesis_state.config)


def test_precheck_bounds_the_nonce_index(factory):
    """Issue #14's h2: nothing bounded a side block's nonce index before the
    full transition, so a forged block could hash any number of nonces of one
    iteration against an easy target and still pass the stateless checks."""
    config = factory.genesis_state.config
    block, _ = factory.next_block(factory.genesis_state)
    work = block.proofs[0].message.message.work
    index = config.max_nonces_per_iteration
    forged = dataclasses.replace(block, header=dataclasses.replace(
        block.header, nonce_index=index, nonce=compute_nonce(compute_nonce_seed(work), index)))
    with pytest.raises(BlockRejected, match="beyond any allowance"):
        precheck_block(forged, config)


def test_orphan_pool_is_bounded(factory, tmp_path, monkeypatch):
    from bws.node import validation

    monkeypatch.setattr(validation, "MAX_ORPHANS", 2)
    chain = open_chain(factory, tmp_path)
    blocks = [b for b, _ in factory.chain(4)]
    for block in blocks[1:]:
        assert chain.import_block(block).status == "orphan"
    assert len(chain._orphans) == 2 and compute_block_hash(blocks[1]) not in chain._orphans
    results = chain.import_with_orphans(blocks[0])
    assert [r.status for r in results] == ["connected"]  # block 2 was dropped: 3 and 4 stay orphans
    assert chain._orphan_bytes == sum(size for _, size in chain._orphans.values())


def test_a_block_whose_inputs_are_unavailable_is_not_validated_yet_and_tried_again(factory, tmp_path, monkeypatch):
    """Issue #14's h1: a failed fetch of a block's replay inputs made it
    invalid, remembered by content hash: a miner that served its inputs to half
    the network split it for good. Now the block is not validated yet, refused
    without a replay until its backoff ends, then tried again."""
    from bws.node import validation
    from bws.node.validation import BlockNotValidated
    from bws.spec.state_transition import ReplayUnavailable
    served = {"inputs": False}

    def flaky_replay(task, message):
        if not served["inputs"]:
            raise ReplayUnavailable("the miner served its inputs to other nodes only")
        return hash_replay(task, message)

    chain = Chain(ChainStore(tmp_path), factory.genesis_state, factory.genesis_block,
                  Oracles(replay=flaky_replay, evaluate=hash_evaluate))
    block, _ = factory.next_block(factory.genesis_state, miner=0)
    with pytest.raises(BlockNotValidated, match="inputs unavailable.*tried again in 5 s"):
        chain.import_block(block)
    served["inputs"] = True
    with pytest.raises(BlockNotValidated, match="tried again in"):   # within its backoff: no replay yet
        chain.import_block(block)
    clock = validation.time.monotonic()
    monkeypatch.setattr(validation.time, "monotonic", lambda: clock + validation.UNAVAILABLE_RETRY_SECONDS + 1)
    assert chain.import_block(block).status == "connected"
    assert chain.metrics["blocks_not_validated"] == 1 and chain.metrics["blocks_rejected"] == 0


def test_the_inputs_are_fetched_outside_the_chain_lock(factory, tmp_path):
    """Issue #14's h1: fetches of a block's replay inputs ran peer after peer
    (20 s each) while the chain lock was held, so a withholding miner stalled
    every import. The chain now prefetches them first, without its lock; a
    failed prefetch leaves the block not validated yet, without a replay."""
    import threading
    from bws.node.validation import BlockNotValidated
    from bws.spec.state_transition import ReplayUnavailable
    seen = []

    def lock_is_free() -> bool:
        """Whether another thread can take the chain's lock now."""
        taken = []

        def take():
            taken.append(chain._lock.acquire(timeout=5))
            if taken[0]:
                chain._lock.release()
        other = threading.Thread(target=take)
        other.start()
        other.join()
        return taken[0]

    def prefetch(task, message):
        seen.append((int(message.work.iteration), lock_is_free()))
        if len(seen) == 1:
            raise ReplayUnavailable("no peer has it yet")

    replays = []
    chain = Chain(ChainStore(tmp_path), factory.genesis_state, factory.genesis_block,
                  Oracles(replay=lambda task, message: replays.append(message) or hash_replay(task, message),
                          evaluate=hash_evaluate), prefetch)
    block, _ = factory.next_block(factory.genesis_state, miner=0)
    with pytest.raises(BlockNotValidated, match="no peer has it yet"):
        chain.import_block(block)
    assert replays == [] and seen == [(int(block.header.iteration), True)]
    chain._unavailable.clear()   # its backoff over
    assert chain.import_block(block).status == "connected" and len(replays) == 1
    assert seen[1][1], "the lock was held during the prefetch"


# -- issue #14's h2: side blocks are admitted cheaply against the head, pruned past a depth ---------------------
def chain_with_main(factory, path, length):
    chain = open_chain(factory, path)
    main = factory.chain(length, miner_of=lambda h: 0)
    for block, _ in main:
        assert chain.import_block(block).status == "connected"
    return chain, main


def expect_refused(chain, block, reason):
    head, count = chain.head.hash, chain.store.block_count()
    with pytest.raises(BlockRejected, match=reason):
        chain.import_block(block)
    assert chain.head.hash == head and chain.store.block_count() == count   # nothing stored changed


def test_a_side_block_whose_miner_holds_no_stake_or_membership_is_refused(factory, tmp_path):
    """Issue #14's h2: a forged side block passed the stateless checks only and was stored for good."""
    chain, _ = chain_with_main(factory, tmp_path, 2)
    honest, _ = factory.next_block(factory.genesis_state, miner=1)   # a side block at height 1
    stranger = ChainFactory(miners=1, seed=99).miners[0]
    expect_refused(chain, factory.forge(honest, stranger), "holds no miner stake at the head")
    expect_refused(chain, factory.forge(honest, factory.miners[1], task_id=hash_bytes(b"no such task")),
                   "no task with its miner as a member")
    assert chain.metrics["side_blocks_refused"] == 2 and chain.metrics["blocks_rejected"] == 0
    assert chain.import_block(honest).status == "side"   # refusals are not remembered: the honest one is taken


def test_a_side_block_with_an_easier_target_than_the_retarget_rule_allows_is_refused(factory, tmp_path):
    """Issue #14's h2: a side block hashed against an easy target claimed more work than the chain, and the
    node disconnected its main chain before the reorg failed."""
    chain, _ = chain_with_main(factory, tmp_path, 2)
    honest, _ = factory.next_block(factory.genesis_state, miner=1)
    easy = factory.forge(honest, factory.miners[1], target=int(honest.header.target) * 2)
    expect_refused(chain, easy, "easier than the retarget rule allows since the fork point at height 0")


def test_the_easiest_side_target_bounds_every_retarget_path():
    """The bound from the heights holds the most the spec's retarget can move a target: down as far as it can
    from the fork point to the head, up as far as it can from the fork point to the block's parent."""
    from bws.node.validation import easiest_side_target
    from bws.spec.constants import RETARGET_CLAMP
    from bws.spec.presets import DEVNET
    from bws.spec.state_transition import compute_next_target

    expected = DEVNET.retarget_interval * DEVNET.target_block_time
    for fork_target in (2**200, 2**200 + 12345, 3**150, 7):
        head_target = fork_target
        for _ in range(2):   # retargets at heights 10 and 20 between a fork at 5 and a head at 25
            head_target = compute_next_target(DEVNET, head_target, expected // RETARGET_CLAMP - 7)
        side_target = fork_target
        for _ in range(2):   # and at 10 and 20 below a side block at 30
            side_target = compute_next_target(DEVNET, side_target, expected * RETARGET_CLAMP + 7)
        easiest = easiest_side_target(DEVNET, head_target, 25, 5, 30)
        assert side_target <= easiest
        assert fork_target < 2**32 or easiest < side_target * 1.001   # and tight, but for the floors of small targets
    assert easiest_side_target(DEVNET, 2**200, 25, 24, 25) == 2**200   # no retarget since the fork point


def test_an_honest_competing_block_is_stored_and_its_branch_can_win(factory, tmp_path):
    """The cheap checks keep what honest miners make: a block at the head's height by another member."""
    main = factory.chain(1, miner_of=lambda h: 0)
    competitor, state = factory.next_block(factory.genesis_state, miner=1)
    # Equal work: the lower hash is the head, so the other arrives second to be a side block.
    first, second = sorted([main[0][0], competitor], key=compute_block_hash)
    chain = open_chain(factory, tmp_path)
    assert chain.import_block(first).status == "connected"
    assert chain.import_block(second).status == "side"
    parent_state = state if second is competitor else main[0][1]
    child, _ = factory.next_block(parent_state, miner=1 if second is competitor else 0)
    assert chain.import_block(child).status == "reorg"
    assert chain.head.hash == compute_block_hash(child) and chain.metrics["side_blocks_refused"] == 0


def test_side_blocks_deep_below_the_head_are_pruned_with_their_descendants(factory, tmp_path, monkeypatch):
    """Issue #14's h2: side blocks were kept forever. Now those more than SIDE_BRANCH_DEPTH below the head
    are deleted as it moves, their descendants and transactions with them, and none is admitted there."""
    from bws.node import validation

    monkeypatch.setattr(validation, "SIDE_BRANCH_DEPTH", 2)
    chain, main = chain_with_main(factory, tmp_path, 3)
    tx = factory.transfer(factory.users[0], factory.users[1].address, 10**8, nonce=0)
    first = factory.next_block(factory.genesis_state, transactions=[tx], miner=1)
    side = [first, factory.next_block(first[1], miner=1)]   # heights 1 and 2: less work than the head's 3
    for block, _ in side:
        assert chain.import_block(block).status == "side"
    side_hashes = [compute_block_hash(block) for block, _ in side]
    more = factory.chain(1, state=main[-1][1], miner_of=lambda h: 0)[0][0]
    assert chain.import_block(more).status == "connected"   # head 4: height 1 is now 3 below it
    assert not any(chain.store.has_block(h) for h in side_hashes)
    assert chain.store._one("SELECT count(*) FROM transactions WHERE block_hash IN (?, ?)", side_hashes)[0] == 0
    assert chain.metrics["side_blocks_pruned"] == 2
    assert all(chain.store.is_on_main_chain(compute_block_hash(b)) for b, _ in main)
    expect_refused(chain, side[0][0], "more than 2 blocks below the head")


def test_a_reorg_validates_the_branch_before_it_disconnects_the_main_chain(factory, tmp_path, monkeypatch):
    """Issue #14's h2: a branch claiming more work made the node disconnect its main chain before the branch
    was found invalid. The branch now runs on the fork point's state, rebuilt in memory."""
    chain = open_chain(factory, tmp_path)
    tx = factory.transfer(factory.users[0], factory.users[1].address, 10**8, nonce=0)
    state, main = factory.genesis_state, []
    for height in range(1, 4):
        block, state = factory.next_block(state, transactions=[tx] if height == 2 else [], miner=0)
        main.append((block, state))
        chain.import_block(block)
    for block, _ in main:   # each main-chain block's state, undone in memory from the head's
        rebuilt = chain.store.main_chain_state(compute_block_hash(block), chain.head_state)
        assert compute_state_root(rebuilt) == block.header.state_root
    disconnects = []
    real_disconnect = chain.store.disconnect_head
    monkeypatch.setattr(chain.store, "disconnect_head", lambda: disconnects.append(1) or real_disconnect())
    bad = tampered(factory, main[0][1], miner=1,
                   tamper_work=lambda w: dataclasses.replace(w, update_root=hash_bytes(b"x")))
    work = bad.proofs[0].message.message.work
    believed = C.ReplayResult(update_root=work.update_root, state_after_root=work.state_after_root)
    branch_state = T.state_transition(main[0][1], bad,
                                      dataclasses.replace(HASH_ORACLES, replay=lambda task, message: believed))
    branch = [bad]
    for _ in range(3):
        block, branch_state = factory.next_block(branch_state, miner=1)
        branch.append(block)
    with pytest.raises(BlockRejected, match="reorg aborted.*replay does not reproduce"):
        for block in branch:
            chain.import_block(block)
    assert disconnects == [] and chain.head.hash == compute_block_hash(main[-1][0])
    assert compute_state_root(chain.store.load_head_state()) == main[-1][0].header.state_root
