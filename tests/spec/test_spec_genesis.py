"""Genesis: state, block, and invalid configurations."""
import dataclasses

import pytest

from bws.spec import containers as C
from bws.spec.constants import ROLE_MINER, TASK_TRAINING
from bws.spec.genesis import InvalidGenesis, compute_genesis_hash, create_genesis_state, get_genesis_block
from bws.spec.state_transition import compute_block_hash, compute_state_root, get_total_supply


def test_genesis_state_and_block(chain):
    state, block = chain.genesis_state, chain.genesis_block
    assert state.height == 0 and state.minted == 0
    assert get_total_supply(state) == state.genesis_supply
    assert block.header.state_root == compute_state_root(state)
    assert block.proofs == () and block.transactions == ()
    assert compute_genesis_hash(chain.genesis) == compute_block_hash(block)
    task = state.tasks[chain.genesis_task_id]
    assert task.status == TASK_TRAINING and len(task.members) == 3
    assert create_genesis_state(chain.genesis) == state


def test_different_configs_give_different_chains(chain):
    other = dataclasses.replace(chain.genesis, timestamp=chain.genesis.timestamp + 1)
    assert compute_genesis_hash(other) != compute_genesis_hash(chain.genesis)


@pytest.mark.parametrize("change,problem", [
    (lambda g: dataclasses.replace(g, accounts=list(g.accounts) + [g.accounts[0]]), "funded twice"),
    (lambda g: dataclasses.replace(g, stakes=list(g.stakes) + [g.stakes[0]]), "staked twice"),
    (lambda g: dataclasses.replace(g, stakes=[C.GenesisStake(owner=bytes(20), role=9, amount=1)]), "unknown stake role"),
    (lambda g: dataclasses.replace(g, config=dataclasses.replace(g.config, initial_target=0)), "must be positive"),
    (lambda g: dataclasses.replace(g, tasks=[dataclasses.replace(g.tasks[0], task_definition=b"{}")]),
     "genesis task 0"),
    (lambda g: dataclasses.replace(g, tasks=[dataclasses.replace(g.tasks[0], members=[])]), "needs members"),
    (lambda g: dataclasses.replace(g, tasks=[dataclasses.replace(
        g.tasks[0], evaluators=[g.tasks[0].members[0]])]), "distinct seats"),
    (lambda g: dataclasses.replace(g, accounts=[C.GenesisAccount(address=bytes(20), balance=2**63),
                                                C.GenesisAccount(address=b"\x01" * 20, balance=2**63)]),
     "does not fit"),
])
def test_invalid_genesis(chain, change, problem):
    with pytest.raises(InvalidGenesis, match=problem):
        create_genesis_state(change(chain.genesis))


def test_genesis_config_round_trips(chain):
    from bws.spec.encoding import decode, encode
    assert decode(encode(chain.genesis), C.GenesisConfig) == chain.genesis
    assert chain.genesis.stakes[0].role == ROLE_MINER


def test_genesis_task_ids_name_the_network(chain):
    from bws.spec.genesis import compute_genesis_task_id
    other = dataclasses.replace(chain.genesis, config=dataclasses.replace(chain.genesis.config, chain_id=7))
    assert compute_genesis_task_id(chain.genesis, 0) == chain.genesis_task_id
    assert compute_genesis_task_id(other, 0) != chain.genesis_task_id
    assert compute_genesis_task_id(chain.genesis, 1) != chain.genesis_task_id
