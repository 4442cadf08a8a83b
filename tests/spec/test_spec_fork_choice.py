"""Fork choice by cumulative work, lowest-hash tie-break, and reorgs."""
import pytest

from bws.spec.fork_choice import (
    compute_reorg, get_ancestors, get_cumulative_work, get_forkchoice_store, get_head, is_timestamp_acceptable,
    on_block,
)
from bws.spec.pouw import compute_block_work
from bws.spec.state_transition import InvalidBlock, compute_block_hash


def grow(chain, store, parent_hash, miners, timestamp_step=2):
    hashes = [parent_hash]
    for miner in miners:
        parent = store.blocks[hashes[-1]]
        block = chain.mine(store.states[hashes[-1]], parent, miner,
                           timestamp=parent.header.timestamp + timestamp_step)
        hashes.append(on_block(store, block, chain.oracles))
    return hashes[1:]


def test_longest_work_wins_and_reorg_lists_both_branches(chain):
    store = get_forkchoice_store(chain.genesis_state, chain.genesis_block)
    common = grow(chain, store, store.genesis_hash, ["alice"])
    branch_a = grow(chain, store, common[-1], ["bob", "carol"])
    branch_b = grow(chain, store, common[-1], ["carol", "bob", "alice"], timestamp_step=3)
    assert get_head(store) == branch_b[-1]
    reorg = compute_reorg(store, branch_a[-1], branch_b[-1])
    assert reorg.common_ancestor == common[-1]
    assert reorg.undone == tuple(reversed(branch_a))
    assert reorg.applied == tuple(branch_b)
    assert get_ancestors(store, branch_b[-1]) == [store.genesis_hash] + common + branch_b
    work = compute_block_work(chain.genesis_state.target)
    assert get_cumulative_work(store, branch_b[-1]) == 4 * work


def test_equal_work_tie_breaks_by_lowest_hash(chain):
    store = get_forkchoice_store(chain.genesis_state, chain.genesis_block)
    one = grow(chain, store, store.genesis_hash, ["alice"])[0]
    two = grow(chain, store, store.genesis_hash, ["bob"])[0]
    assert get_head(store) == min(one, two)


def test_invalid_or_orphan_blocks_are_not_added(chain):
    store = get_forkchoice_store(chain.genesis_state, chain.genesis_block)
    block = chain.mine(chain.genesis_state, chain.genesis_block, "alice")
    orphan = chain.mine(chain.genesis_state, chain.genesis_block, "bob")
    from dataclasses import replace
    orphan = replace(orphan, header=replace(orphan.header, parent_hash=b"\x01" * 32))
    with pytest.raises(InvalidBlock, match="unknown parent"):
        on_block(store, orphan, chain.oracles)
    broken = replace(block, proofs=[])
    with pytest.raises(InvalidBlock, match="exactly one PoUW proof"):
        on_block(store, broken, chain.oracles)
    assert list(store.blocks) == [store.genesis_hash]
    assert on_block(store, block, chain.oracles) == compute_block_hash(block)
    assert on_block(store, block, chain.oracles) == compute_block_hash(block), "adding twice is harmless"


def test_future_blocks_are_held_back(chain):
    header = chain.genesis_block.header
    assert is_timestamp_acceptable(header, header.timestamp - 120)
    assert not is_timestamp_acceptable(header, header.timestamp - 121)
