"""Mempool rules: fee ordering, nonce gaps, replace-by-fee, limits, reorgs."""
import pytest

from bws.node.mempool import MAX_NONCE_GAP, Mempool, MempoolError, PoolTransaction


def make_tx(sender: bytes, nonce: int, fee: int, size: int = 100) -> PoolTransaction:
    tx_id = sender + nonce.to_bytes(4, "big") + fee.to_bytes(8, "big")
    return PoolTransaction(tx_id=tx_id, sender=sender, nonce=nonce, fee=fee, size=size, raw=b"x" * size)


class Chain:
    """Account nonces as the head state would give them."""

    def __init__(self):
        self.nonces: dict[bytes, int] = {}

    def __call__(self, sender: bytes) -> int:
        return self.nonces.get(sender, 0)


A, B, C = b"A" * 20, b"B" * 20, b"C" * 20


def test_fee_ordering_respects_each_senders_nonce_order():
    chain = Chain()
    pool = Mempool(chain)
    pool.add(make_tx(A, 0, 10))
    pool.add(make_tx(A, 1, 1000))
    pool.add(make_tx(B, 0, 50))
    chosen = pool.select(10, 10**6)
    assert [(tx.sender, tx.nonce) for tx in chosen] == [(B, 0), (A, 0), (A, 1)]


def test_future_nonce_waits_until_gap_is_filled():
    chain = Chain()
    pool = Mempool(chain)
    pool.add(make_tx(A, 2, 100))
    assert pool.select(10, 10**6) == []
    pool.add(make_tx(A, 0, 1))
    assert [tx.nonce for tx in pool.select(10, 10**6)] == [0]
    pool.add(make_tx(A, 1, 1))
    assert [tx.nonce for tx in pool.select(10, 10**6)] == [0, 1, 2]
    assert pool.pending_nonce(A) == 3


def test_stale_and_far_future_nonces_are_rejected():
    chain = Chain()
    chain.nonces[A] = 5
    pool = Mempool(chain)
    with pytest.raises(MempoolError, match="already used"):
        pool.add(make_tx(A, 4, 10))
    with pytest.raises(MempoolError, match="ahead"):
        pool.add(make_tx(A, 5 + MAX_NONCE_GAP + 1, 10))


def test_replace_by_fee_needs_a_bump():
    pool = Mempool(Chain())
    original = make_tx(A, 0, 100)
    pool.add(original)
    with pytest.raises(MempoolError, match="more"):
        pool.add(make_tx(A, 0, 109))
    assert pool.add(make_tx(A, 0, 110)) == original
    assert len(pool) == 1 and pool.transactions()[0].fee == 110


def test_duplicate_is_rejected():
    pool = Mempool(Chain())
    pool.add(make_tx(A, 0, 100))
    with pytest.raises(MempoolError, match="already in"):
        pool.add(make_tx(A, 0, 100))


def test_full_pool_evicts_cheapest_tail_or_rejects():
    pool = Mempool(Chain(), max_count=3)
    pool.add(make_tx(A, 0, 100))
    pool.add(make_tx(A, 1, 5))      # A's tail, cheapest
    pool.add(make_tx(B, 0, 50))
    pool.add(make_tx(C, 0, 60))     # evicts (A, 1)
    assert {(tx.sender, tx.nonce) for tx in pool.transactions()} == {(A, 0), (B, 0), (C, 0)}
    with pytest.raises(MempoolError, match="full"):
        pool.add(make_tx(C, 1, 1))
    assert len(pool) == 3


def test_byte_limit():
    pool = Mempool(Chain(), max_bytes=250)
    pool.add(make_tx(A, 0, 100, size=100))
    pool.add(make_tx(B, 0, 100, size=100))
    pool.add(make_tx(C, 0, 1000, size=100))  # evicts one of the cheaper ones
    assert pool.total_bytes == 200
    with pytest.raises(MempoolError, match="more than the whole"):
        pool.add(make_tx(C, 1, 10**9, size=251))


def test_per_sender_limit():
    pool = Mempool(Chain(), max_per_sender=2)
    pool.add(make_tx(A, 0, 1))
    pool.add(make_tx(A, 1, 1))
    with pytest.raises(MempoolError, match="pending transactions"):
        pool.add(make_tx(A, 2, 1))


def test_block_inclusion_prunes_and_reorg_reinserts():
    chain = Chain()
    pool = Mempool(chain)
    txs = [make_tx(A, 0, 10), make_tx(A, 1, 10), make_tx(B, 0, 10)]
    for tx in txs:
        pool.add(tx)
    included = pool.select(2, 10**6)
    for tx in included:
        chain.nonces[tx.sender] = tx.nonce + 1
    assert [(tx.sender, tx.nonce) for tx in included] == [(A, 0), (A, 1)]
    assert pool.prune() == included
    assert [(tx.sender, tx.nonce) for tx in pool.transactions()] == [(B, 0)]
    # Reorg: the block is disconnected, its state undone, its txs come back.
    chain.nonces.clear()
    assert pool.reinsert(included) == 2
    assert len(pool) == 3
    # The new chain used A's nonce 0: it is dropped again.
    chain.nonces[A] = 1
    assert [tx.nonce for tx in pool.prune([A])] == [0]


def test_select_respects_byte_limit_and_skips_blocked_sender():
    pool = Mempool(Chain())
    pool.add(make_tx(A, 0, 10_000, size=300))
    pool.add(make_tx(A, 1, 10_000, size=10))
    pool.add(make_tx(B, 0, 1, size=100))
    chosen = pool.select(10, 200)
    assert [(tx.sender, tx.nonce) for tx in chosen] == [(B, 0)]


def test_a_transaction_refused_on_three_heads_is_dropped_and_its_nonce_reused():
    chain = Chain()
    pool = Mempool(chain)
    stuck, follower = make_tx(b"a", 0, 50), make_tx(b"a", 1, 50)
    pool.add(stuck)
    pool.add(follower)
    assert not pool.report_invalid(follower.tx_id, b"head1")  # behind nonce 0: not its own fault
    assert not pool.report_invalid(stuck.tx_id, b"head1")
    assert not pool.report_invalid(stuck.tx_id, b"head1")  # the same head again counts once
    assert not pool.report_invalid(stuck.tx_id, b"head2")
    assert stuck.tx_id in pool
    assert pool.report_invalid(stuck.tx_id, b"head3")
    assert stuck.tx_id not in pool and follower.tx_id in pool
    assert pool.pending_nonce(b"a") == 0  # the wallet fills the gap, then the follower can go
    refill = make_tx(b"a", 0, 60)
    pool.add(refill)
    assert [tx.tx_id for tx in pool.select(10, 10_000)] == [refill.tx_id, follower.tx_id]
    assert not pool.report_invalid(b"unknown", b"head4")
