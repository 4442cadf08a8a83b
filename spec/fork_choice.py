"""Fork choice: the head is the valid chain with most cumulative work.

The store keeps every valid block and the state after it, so a reorg
recomputes nothing: switching heads undoes the blocks of the old branch back
to the common ancestor and applies the new branch's blocks, and the new head's
post-state is already known. Threat stopped: *double spends* by a competing
chain need more cumulative work than the honest chain, i.e. more useful work
(and luck) than honest miners.
"""
from dataclasses import dataclass, field

from .constants import MAX_FUTURE_BLOCK_SECONDS
from .containers import Block, BlockHeader, State
from .pouw import compute_block_work
from .state_transition import InvalidBlock, Oracles, compute_block_hash, state_transition
from .types import Hash32


@dataclass
class Store:
    """Every valid block known, by hash, with the state after it."""
    genesis_hash: Hash32
    blocks: dict = field(default_factory=dict)   # Hash32 -> Block
    states: dict = field(default_factory=dict)   # Hash32 -> State after the block


@dataclass(frozen=True)
class Reorg:
    """What switching heads does: `undone` newest first, `applied` oldest first."""
    common_ancestor: Hash32
    undone: tuple
    applied: tuple


def get_forkchoice_store(genesis_state: State, genesis_block: Block) -> Store:
    """A store holding only genesis."""
    genesis_hash = compute_block_hash(genesis_block)
    return Store(genesis_hash=genesis_hash, blocks={genesis_hash: genesis_block},
                 states={genesis_hash: genesis_state})


def is_timestamp_acceptable(header: BlockHeader, now: int) -> bool:
    """Whether a block's timestamp is not too far in the future of the local clock.
    A node holds back (does not reject) a block from the future until this holds."""
    return header.timestamp <= now + MAX_FUTURE_BLOCK_SECONDS


def on_block(store: Store, block: Block, oracles: Oracles) -> Hash32:
    """Validate `block` on its parent's post-state and add it; returns its hash.
    InvalidBlock if the parent is unknown or the transition fails."""
    parent_hash = block.header.parent_hash
    if parent_hash not in store.states:
        raise InvalidBlock("unknown parent")
    block_hash = compute_block_hash(block)
    if block_hash not in store.blocks:
        store.states[block_hash] = state_transition(store.states[parent_hash], block, oracles)
        store.blocks[block_hash] = block
    return block_hash


def get_ancestors(store: Store, block_hash: Hash32) -> list[Hash32]:
    """The chain from genesis to `block_hash`, both included."""
    chain = [block_hash]
    while chain[-1] != store.genesis_hash:
        chain.append(store.blocks[chain[-1]].header.parent_hash)
    return chain[::-1]


def get_cumulative_work(store: Store, block_hash: Hash32) -> int:
    """Sum of compute_block_work(target) over the blocks after genesis up to `block_hash`."""
    return sum(compute_block_work(store.blocks[h].header.target) for h in get_ancestors(store, block_hash)[1:])


def get_head(store: Store) -> Hash32:
    """The block with most cumulative work; on a tie, the lowest hash."""
    return min(store.blocks, key=lambda h: (-get_cumulative_work(store, h), h))


def compute_reorg(store: Store, old_head: Hash32, new_head: Hash32) -> Reorg:
    """The blocks undone (old branch, newest first) and applied (new branch,
    oldest first) when the head moves from `old_head` to `new_head`: every
    transaction of an undone block that is not in an applied one goes back to
    the mempool, and the state becomes store.states[new_head]."""
    old_chain, new_chain = get_ancestors(store, old_head), get_ancestors(store, new_head)
    common = 0
    while common < min(len(old_chain), len(new_chain)) and old_chain[common] == new_chain[common]:
        common += 1
    return Reorg(common_ancestor=old_chain[common - 1], undone=tuple(old_chain[common:][::-1]),
                 applied=tuple(new_chain[common:]))
