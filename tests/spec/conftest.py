"""Shared fixtures: a toy chain (real keys, blocks, commitments; toy training step)."""
import pytest

from bws.node.review import ToyChain


@pytest.fixture(scope="module")
def chain():
    return ToyChain()


@pytest.fixture(scope="module")
def started(chain):
    """(state, block) after one block on the genesis task."""
    return chain.extend(chain.genesis_state, chain.genesis_block, "alice")
