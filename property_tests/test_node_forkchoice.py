"""The node against the spec on generated block trees: the same head (most
work, lowest hash on ties) and the same state root, whatever order the
blocks arrive in, and again after reopening the store."""
import tempfile

from hypothesis import given, settings, strategies as st

from bws.node.store import ChainStore
from bws.node.validation import Chain
from bws.spec import fork_choice as F
from bws.spec.state_transition import compute_state_root
from tests.node.chain_factory import HASH_ORACLES, ChainFactory, hash_replay

FACTORY = ChainFactory(miners=2, seed=21)


@settings(max_examples=6)
@given(st.lists(st.tuples(st.integers(0, 10), st.integers(0, 1)), min_size=2, max_size=9), st.randoms(use_true_random=False))
def test_same_head_and_state_root_as_spec(plan, rng):
    # Build a tree: each step extends the tip of some earlier block (parent chosen by index).
    nodes = [(FACTORY.genesis_block, FACTORY.genesis_state)]
    for parent_index, miner in plan:
        parent_block, parent_state = nodes[parent_index % len(nodes)]
        timestamp = parent_state.latest_block_header.timestamp + 1 + len(nodes)
        nodes.append(FACTORY.next_block(parent_state, miner=miner, timestamp=timestamp))
    blocks = [block for block, _ in nodes[1:]]
    order = list(blocks)
    rng.shuffle(order)
    with tempfile.TemporaryDirectory() as directory:
        chain = Chain(ChainStore(directory), FACTORY.genesis_state, FACTORY.genesis_block, HASH_ORACLES)
        spec_store = F.get_forkchoice_store(FACTORY.genesis_state, FACTORY.genesis_block)
        for block in order:  # any order: the node holds orphans until their parents come
            chain.import_with_orphans(block)
        for block in blocks:  # the spec's store takes parents first
            F.on_block(spec_store, block, HASH_ORACLES)
        spec_head = F.get_head(spec_store)
        assert chain.head.hash == spec_head
        assert compute_state_root(chain.head_state) == compute_state_root(spec_store.states[spec_head])
        chain.store.close()
        reopened = ChainStore(directory)
        assert compute_state_root(reopened.load_head_state()) == compute_state_root(spec_store.states[spec_head])
        reopened.close()
