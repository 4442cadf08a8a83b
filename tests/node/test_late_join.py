"""Joining a running chain late (issue #15): a verifier without a key replays
and refuses mismatches without signing anything (its sync thread died on the
missing key), and assumevalid takes a block deep under a syncing peer's head
whose replay inputs nobody serves any more on the chain's work, where it used
to wait as "not validated" for ever."""
from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

import pytest

from bws.node.mempool import Mempool
from bws.node.p2p import PROTOCOL_SYNC
from bws.node.roles.context import RoleContext
from bws.node.roles.library import TaskLibrary
from bws.node.roles.verifier import NetworkReplay
from bws.node.service import Node, NodeSettings
from bws.node.store import ChainStore
from bws.node.validation import BlockNotValidated, BlockRejected, Chain
from bws.spec import containers as C
from bws.spec.hashing import hash_bytes
from bws.spec.state_transition import Oracles, ReplayUnavailable, compute_block_hash, compute_state_root

from tests.node.chain_factory import ChainFactory, hash_evaluate, hash_replay

DEPTH = 3


@pytest.fixture(scope="module")
def factory():
    return ChainFactory(miners=2, seed=15)


@pytest.fixture(scope="module")
def blocks(factory):
    """Six blocks, alternating miners."""
    return [block for block, _ in factory.chain(6, miner_of=lambda height: height % 2)]


def gone(task: C.Task, message: C.IterationMessage) -> C.ReplayResult:
    raise ReplayUnavailable("no peer serves these inputs any more")


def wrong(task: C.Task, message: C.IterationMessage) -> C.ReplayResult:
    return dataclasses.replace(hash_replay(task, message), update_root=hash_bytes(b"another update"))


def open_chain(factory, path, replay, prefetch=None, depth=DEPTH) -> Chain:
    return Chain(ChainStore(path), factory.genesis_state, factory.genesis_block,
                 Oracles(replay=replay, evaluate=hash_evaluate), prefetch, depth)


# -- a verifier without a key ----------------------------------------------------
def keyless_verifier(factory, path) -> tuple[RoleContext, NetworkReplay]:
    holder = {}
    replay = NetworkReplay(lambda: holder["context"])
    chain = open_chain(factory, path, replay, replay.prefetch)
    network = SimpleNamespace(peers=lambda: [], publish=lambda topic, data: None)
    holder["context"] = RoleContext(chain=chain, mempool=Mempool(chain.account_nonce), network=network, account=None,
                                    library=TaskLibrary(), import_block=chain.import_block)
    return holder["context"], replay


def test_a_verifier_without_a_key_takes_a_good_block_and_refuses_a_mismatch(factory, blocks, tmp_path):
    """Issue #15: without a keystore, the first block that replayed fine raised
    AttributeError on the node's address and killed the sync thread."""
    context, replay = keyless_verifier(factory, tmp_path)
    task = factory.genesis_state.tasks[factory.task_id]
    first, second = (block.proofs[0].message.message for block in blocks[:2])
    # The engine's results, as if replayed: the tests' iterations are hashes, which the engine cannot run.
    context.replays.put(first, hash_replay(task, first))
    context.replays.put(second, wrong(task, second))
    assert context.chain.import_block(blocks[0]).status == "connected"
    assert context.metrics["peer_blocks_verified"] == 1
    with pytest.raises(BlockRejected, match="does not reproduce the iteration"):
        context.chain.import_block(blocks[1])
    assert context.metrics["replay_mismatches"] == 1 and context.metrics["mismatches_not_disputed"] == 1
    assert replay._disputes is None, "a node without a key started disputing"
    assert context.chain.head.height == 1


# -- assumevalid in the chain ------------------------------------------------------
def test_a_deep_block_whose_inputs_are_gone_is_assumed_valid_and_counted(factory, blocks, tmp_path):
    chain = open_chain(factory, tmp_path, gone)
    block = blocks[0]
    result = chain.import_block(block, announced_height=1 + DEPTH)
    assert result.status == "connected"
    assert compute_state_root(chain.head_state) == block.header.state_root
    assert chain.metrics["assumed_valid"] == 1 and chain.metrics["blocks_not_validated"] == 0


def test_a_failed_prefetch_of_a_deep_block_is_not_fetched_again_under_the_lock(factory, blocks, tmp_path):
    replays = []
    chain = open_chain(factory, tmp_path, lambda task, message: replays.append(message) or gone(task, message), gone)
    assert chain.import_block(blocks[0], announced_height=1 + DEPTH).status == "connected"
    assert replays == [] and chain.metrics["assumed_valid"] == 1


def test_a_shallow_block_whose_inputs_are_gone_is_not_validated_as_before(factory, blocks, tmp_path):
    chain = open_chain(factory, tmp_path, gone)
    with pytest.raises(BlockNotValidated, match="inputs unavailable"):
        chain.import_block(blocks[0], announced_height=DEPTH)   # 1 + DEPTH - 1: one block short
    chain._unavailable.clear()
    with pytest.raises(BlockNotValidated, match="inputs unavailable"):
        chain.import_block(blocks[0])   # gossip: no peer's head, nothing assumed
    assert chain.head.height == 0 and chain.metrics["assumed_valid"] == 0


def test_depth_zero_never_assumes(factory, blocks, tmp_path):
    chain = open_chain(factory, tmp_path, gone, depth=0)
    with pytest.raises(BlockNotValidated):
        chain.import_block(blocks[0], announced_height=10**9)
    assert chain.metrics["assumed_valid"] == 0


def test_a_deep_block_is_still_checked_against_every_other_rule(factory, blocks, tmp_path):
    """Assumevalid skips the unavailable replay only: a replay that runs and
    mismatches rejects the block, and so does a state root the claims do not give."""
    with pytest.raises(BlockRejected, match="does not reproduce the iteration"):
        open_chain(factory, tmp_path / "mismatch", wrong).import_block(blocks[0], announced_height=1 + DEPTH)
    block = blocks[0]
    broken = dataclasses.replace(block, header=dataclasses.replace(block.header, state_root=hash_bytes(b"other")))
    chain = open_chain(factory, tmp_path / "root", gone)
    with pytest.raises(BlockRejected, match="state root mismatch"):
        chain.import_block(broken, announced_height=1 + DEPTH)
    assert chain.metrics["assumed_valid"] == 0


# -- assumevalid through sync ------------------------------------------------------
class PeerServing:
    """The part of NetworkService sync uses: one peer that serves `source`'s chain."""

    address = "/ip4/127.0.0.1/tcp/1/p2p/late"   # this node's own, as /status shows it

    def __init__(self, source: Chain) -> None:
        self.source = source

    def peers(self) -> list[str]:
        return ["peer-with-the-chain"]

    def request(self, peer: str, protocol: str, data: bytes, timeout=None) -> bytes:
        assert protocol == PROTOCOL_SYNC
        return Node._serve_sync(SimpleNamespace(chain=self.source, store=self.source.store), peer, data)


def test_sync_assumes_the_blocks_deep_under_the_peers_head_and_says_so(factory, blocks, tmp_path, caplog):
    source = open_chain(factory, tmp_path / "source", hash_replay)
    for block in blocks:
        source.import_block(block)
    # The inputs of the first four iterations are gone; the last two are still served.
    served = {bytes(compute_block_hash(block)) for block in blocks[4:]}
    by_message = {block.proofs[0].message.message: bytes(compute_block_hash(block)) for block in blocks}

    def replay(task, message):
        return hash_replay(task, message) if by_message.get(message) in served else gone(task, message)

    node = Node(NodeSettings(data_dir=tmp_path / "late", genesis=factory.genesis, roles={"verifier"},
                             oracles=Oracles(replay=replay, evaluate=hash_evaluate), assume_valid_depth=DEPTH))
    node.network = PeerServing(source)
    try:
        with caplog.at_level(logging.INFO, logger="bws.node"):
            node.sync_with("peer-with-the-chain")
        # 6 - DEPTH: blocks 1 to 3 assumed; block 4, shallower, waits not validated (its inputs are gone too)
        assert node.chain.head.height == 6 - DEPTH
        assert node.status()["assumed_valid"] == 6 - DEPTH
        assert node.chain.metrics["blocks_not_validated"] == 1
        said = [r.getMessage() for r in caplog.records if "assumed valid" in r.getMessage()]
        assert len(said) == 1 and said[0].startswith(f"assumed valid {6 - DEPTH} block(s)")
    finally:
        node.store.close()
