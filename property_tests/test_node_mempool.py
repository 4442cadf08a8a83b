"""Mempool invariants under random sequences of adds, blocks and reorgs."""
from hypothesis import given, strategies as st

from bws.node.mempool import Mempool, MempoolError, PoolTransaction

SENDERS = [bytes([i]) * 20 for i in range(4)]

tx_strategy = st.builds(
    lambda s, nonce, fee, size: PoolTransaction(
        tx_id=SENDERS[s] + nonce.to_bytes(2, "big") + fee.to_bytes(4, "big") + size.to_bytes(2, "big"),
        sender=SENDERS[s], nonce=nonce, fee=fee, size=size, raw=b""),
    st.integers(0, 3), st.integers(0, 8), st.integers(0, 1000), st.integers(1, 400),
)
event = st.one_of(
    st.tuples(st.just("add"), tx_strategy),
    st.tuples(st.just("block"), st.integers(1, 6)),
)


@given(st.lists(event, max_size=60), st.integers(1, 12), st.integers(200, 3000))
def test_pool_invariants(events, max_count, max_bytes):
    nonces: dict[bytes, int] = {}
    pool = Mempool(lambda s: nonces.get(s, 0), max_count=max_count, max_bytes=max_bytes, max_per_sender=5)
    for kind, value in events:
        if kind == "add":
            try:
                pool.add(value)
            except MempoolError:
                pass
        else:
            block = pool.select(value, max_bytes)
            for tx in block:
                nonces[tx.sender] = tx.nonce + 1
            pool.prune()
        txs = pool.transactions()
        # limits hold
        assert len(txs) <= max_count
        assert sum(tx.size for tx in txs) == pool.total_bytes <= max_bytes
        # no stale nonces, at most one per (sender, nonce)
        assert all(tx.nonce >= nonces.get(tx.sender, 0) for tx in txs)
        assert len({(tx.sender, tx.nonce) for tx in txs}) == len(txs)
        # a selection is executable in order: each sender's nonces contiguous from the account nonce
        expected = dict(nonces)
        for tx in pool.select(100, 10**9):
            assert tx.nonce == expected.get(tx.sender, 0)
            expected[tx.sender] = tx.nonce + 1
