"""The node reaches the spec's verdicts and state roots on the spec's vectors."""
import json
from pathlib import Path

import pytest

from bws.node.store import ChainStore
from bws.node.validation import BlockNotValidated, BlockRejected, Chain, TransactionRejected
from bws.spec import containers as C
from bws.spec.encoding import decode
from bws.spec.genesis import get_genesis_block
from bws.node.review import table_oracles
from bws.spec.state_transition import Oracles, compute_state_root

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors"


def load(group: str) -> list[dict]:
    return [json.loads(line) for line in (VECTORS / f"{group}.jsonl").read_text().splitlines() if line.strip()]


def vector_oracles(vector: dict) -> Oracles:
    """The replays and evaluations a vector recorded, as the oracles of a node's chain."""
    return table_oracles(vector.get("replays", {}), vector.get("evaluations", {}))


def chain_on(pre_state: C.State, vector: dict, path: Path) -> Chain:
    """A node whose head state is the vector's pre-state (its 'genesis')."""
    return Chain(ChainStore(path), pre_state, get_genesis_block(pre_state), vector_oracles(vector))


BLOCK_VECTORS = load("block") + [v for v in load("attacks") if v["kind"] == "block"]


@pytest.mark.parametrize("vector", BLOCK_VECTORS, ids=[v["name"] for v in BLOCK_VECTORS])
def test_block_vector(vector, tmp_path):
    pre_state = decode(bytes.fromhex(vector["pre_state"]), C.State)
    assert compute_state_root(pre_state).hex() == vector["pre_state_root"]
    block = decode(bytes.fromhex(vector["block"]), C.Block)
    chain = chain_on(pre_state, vector, tmp_path)
    if "invalid" in vector["expected"]:
        # Rejected, not validated (inputs unavailable), or (a parent this node has never seen)
        # held as an orphan: never connected.
        try:
            assert chain.import_block(block).status == "orphan"
        except (BlockRejected, BlockNotValidated):
            pass
        assert chain.head.height == pre_state.height
        assert compute_state_root(chain.store.load_head_state()).hex() == vector["pre_state_root"]
    else:
        result = chain.import_block(block)
        assert result.status == "connected"
        assert compute_state_root(chain.head_state).hex() == vector["expected"]["post_state_root"]
        chain.store.close()
        reopened = ChainStore(tmp_path)
        assert compute_state_root(reopened.load_head_state()).hex() == vector["expected"]["post_state_root"]


ENVELOPE_VECTORS = load("envelope")
OTHER_TRANSACTION_VECTORS = [v for group in ("transfer", "stake", "unstake", "submit-task", "cancel-task",
                                             "evaluation", "dispute", "attacks") for v in load(group)
                             if v["kind"] == "transaction"]


@pytest.mark.parametrize("vector", ENVELOPE_VECTORS, ids=[v["name"] for v in ENVELOPE_VECTORS])
def test_envelope_vector_same_verdict_at_admission(vector, tmp_path):
    """Envelope rules are the mempool's admission rules: same verdict, except a
    future nonce, which the mempool holds (a nonce gap) instead of rejecting."""
    pre_state = decode(bytes.fromhex(vector["pre_state"]), C.State)
    signed = decode(bytes.fromhex(vector["transaction"]), C.SignedTransaction)
    chain = chain_on(pre_state, vector, tmp_path)
    future_nonce = signed.transaction.sender in pre_state.accounts and \
        signed.transaction.nonce > pre_state.accounts[signed.transaction.sender].nonce
    if "invalid" in vector["expected"] and not future_nonce:
        with pytest.raises(TransactionRejected):
            chain.check_transaction(signed)
    else:
        chain.check_transaction(signed)


@pytest.mark.parametrize("vector", OTHER_TRANSACTION_VECTORS, ids=[v["name"] for v in OTHER_TRANSACTION_VECTORS])
def test_admission_never_refuses_a_valid_transaction(vector, tmp_path):
    """Body rules run when a block is built or checked; admission must never
    refuse what the spec accepts."""
    pre_state = decode(bytes.fromhex(vector["pre_state"]), C.State)
    signed = decode(bytes.fromhex(vector["transaction"]), C.SignedTransaction)
    chain = chain_on(pre_state, vector, tmp_path)
    if "invalid" not in vector["expected"]:
        chain.check_transaction(signed)
