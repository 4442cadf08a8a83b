"""The DuckDB chain store: connect, disconnect (undo), reopen, side blocks, records."""

import pytest

from bws.node.store import ChainStore, StoreError
from bws.spec import containers as C
from bws.spec.hashing import hash_object
from bws.spec.presets import DEVNET


def header(height: int, parent: bytes, salt: int = 0) -> C.BlockHeader:
    return C.BlockHeader(
        parent_hash=parent, height=height, timestamp=1000 + height + salt, state_root=bytes(32),
        transactions_root=bytes(32), miner=bytes(20), target=DEVNET.initial_target, task_id=bytes(32),
        iteration=0, message_digest=bytes(32), nonce_index=0, nonce=bytes(32),
    )


def block(height: int, parent: bytes, salt: int = 0) -> C.Block:
    return C.Block(header=header(height, parent, salt), transactions=[], proofs=[])


def state_with(accounts: dict, height: int = 0, tasks: dict | None = None) -> C.State:
    return C.State(
        config=DEVNET, height=height, latest_block_header=header(height, bytes(32)), target=DEVNET.initial_target,
        retarget_timestamp=1000, genesis_supply=10**6, minted=height, burned=0,
        accounts={addr: C.Account(balance=b, nonce=n) for addr, (b, n) in accounts.items()},
        stakes={}, tasks=tasks or {}, task_schedule={},
    )


A, B, D = b"\xaa" * 20, b"\xbb" * 20, b"\xdd" * 20


def connect(store, blk, before, after, work):
    h = hash_object(blk.header)
    store.connect_block(blk, h, work, before, after)
    return h


def test_connect_disconnect_and_reopen(tmp_path):
    store = ChainStore(tmp_path)
    assert not store.is_initialized()
    genesis = block(0, bytes(32))
    s0 = state_with({A: (100, 0), B: (50, 0)})
    g = connect(store, genesis, None, s0, 1)
    s1 = state_with({A: (90, 1), B: (60, 0), D: (0, 0)}, height=1)
    b1 = connect(store, block(1, g), s0, s1, 2)
    s2 = state_with({A: (90, 1), D: (5, 0)}, height=2)  # B deleted
    b2 = connect(store, block(2, b1), s1, s2, 3)
    assert store.head_hash() == b2 and store.load_head_state() == s2
    assert store.main_chain_hashes(0, 10) == [g, b1, b2]
    store.close()

    store = ChainStore(tmp_path)
    assert store.load_head_state() == s2
    assert store.get_account(B) is None and store.get_account(D) == C.Account(balance=5, nonce=0)
    record = store.disconnect_head()
    assert record.hash == b2 and record.cumulative_work == 3
    assert store.load_head_state() == s1
    assert store.main_chain_hash(2) is None and store.has_block(b2)
    store.disconnect_head()
    assert store.load_head_state() == s0
    with pytest.raises(StoreError, match="genesis"):
        store.disconnect_head()
    store.close()


def test_failed_transaction_leaves_nothing(tmp_path):
    store = ChainStore(tmp_path)
    s0 = state_with({A: (100, 0)})
    g = connect(store, block(0, bytes(32)), None, s0, 1)
    s1 = state_with({A: (1, 1)}, height=1)
    with pytest.raises(RuntimeError):
        with store.transaction():
            connect(store, block(1, g), s0, s1, 2)
            raise RuntimeError("crash in the middle of an import")
    assert store.head_hash() == g and store.load_head_state() == s0
    assert store.block_count() == 1


def test_connect_refuses_a_block_not_on_the_head(tmp_path):
    store = ChainStore(tmp_path)
    s0 = state_with({A: (100, 0)})
    connect(store, block(0, bytes(32)), None, s0, 1)
    with pytest.raises(StoreError, match="parent is not the head"):
        connect(store, block(1, b"\x01" * 32), s0, s0, 2)


def test_side_blocks_and_cumulative_work(tmp_path):
    store = ChainStore(tmp_path)
    s0 = state_with({A: (100, 0)})
    g = connect(store, block(0, bytes(32)), None, s0, 1)
    side = block(1, g, salt=7)
    side_hash = hash_object(side.header)
    big_work = 2**200 + 12345
    store.store_block(side, side_hash, big_work)
    record = store.get_block_record(side_hash)
    assert record.cumulative_work == big_work and record.block() == side
    assert not store.is_on_main_chain(side_hash) and store.is_on_main_chain(g)


def test_transactions_and_iteration_records(tmp_path):
    from bws.spec.pouw import compute_message_digest, sign_iteration_message
    from bws.spec.crypto import get_public_key, compute_address, sign
    secret = b"\x07" * 32
    sender = compute_address(get_public_key(secret))
    tx = C.Transaction(chain_id=DEVNET.chain_id, sender=sender, nonce=0, fee=1,
                       body=C.Transfer(recipient=B, amount=5))
    signed = C.SignedTransaction(transaction=tx, public_key=get_public_key(secret), signature=sign(secret, bytes(32)))
    store = ChainStore(tmp_path)
    s0 = state_with({sender: (100, 0)})
    g = connect(store, block(0, bytes(32)), None, s0, 1)
    b1 = C.Block(header=header(1, g), transactions=[signed], proofs=[])
    h1 = connect(store, b1, s0, state_with({sender: (94, 1), B: (5, 0)}, height=1), 2)
    assert [(blk, nonce) for blk, nonce, _ in store.transactions_of(sender)] == [(h1, 0)]
    store.disconnect_head()
    assert store.transactions_of(sender) == []  # not on the main chain any more

    work = C.IterationWork(task_id=b"\x01" * 32, iteration=3, miner=sender, state_before_root=bytes(32),
                           batch_index=0, batch_root=bytes(32), batch_proof=[], peer_update_roots=[],
                           update_root=bytes(32), state_after_root=bytes(32), loss=-5)
    message = sign_iteration_message(secret, C.IterationMessage(work=work, header_commitment=bytes(32)))
    digest = compute_message_digest(message.message)
    assert store.record_iteration_message(message, digest, 1.0)
    assert not store.record_iteration_message(message, digest, 2.0)
    assert store.iteration_messages(b"\x01" * 32, 3, sender) == [message]
    assert store.iteration_messages(b"\x01" * 32, 4) == []


def test_not_a_store(tmp_path):
    (tmp_path / "chain.duckdb").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        ChainStore(tmp_path)
    with pytest.raises(StoreError, match="no chain store"):
        ChainStore(tmp_path / "absent", read_only=True)
    empty = ChainStore(tmp_path / "new")
    with pytest.raises(StoreError, match="no genesis"):
        empty.head_hash()


def test_second_process_is_told_a_node_holds_the_store(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from bws.node.store import ChainStore; "
                               f"store = ChainStore({str(tmp_path)!r}); print('open', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="is a node already running on this data dir"):
            ChainStore(tmp_path)
    finally:
        holder.kill()
        holder.wait()


def test_a_task_the_chain_removed_is_still_found_as_it_ended(tmp_path):
    """Ended tasks leave the state once their evidence expires (spec m2); the
    node still answers for them (GET /task/<id>) from the block that removed it."""
    from bws.node.review import ToyChain
    from bws.node.validation import Chain
    from bws.spec.constants import TASK_EXPIRED
    from bws.spec.tasks import compute_task_id

    toy = ToyChain()
    chain = Chain(ChainStore(tmp_path / "chain"), toy.genesis_state, toy.genesis_block, toy.oracles)
    state, parent = toy.genesis_state, toy.genesis_block
    unfillable = toy.transaction(state, "client", toy.submit_task_body(group_size=len(toy.MINERS) + 1))
    task_id = compute_task_id(toy.config.chain_id, toy.address["client"], 0)
    transactions = [unfillable]
    while state.height < 2 + state.config.stake_lock_period + 1:
        state, parent = toy.extend(state, parent, ("alice", "bob", "carol")[state.height % 3], transactions)
        assert chain.import_block(parent).status == "connected"
        transactions = []
        if task_id in state.tasks:
            assert chain.store.removed_task(task_id) is None
    assert task_id not in chain.head_state.tasks
    removed = chain.store.removed_task(task_id)
    assert removed.status == TASK_EXPIRED and removed.client == toy.address["client"]
    assert chain.store.removed_task(bytes(32)) is None
    chain.store.close()
