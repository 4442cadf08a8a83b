"""Presets: the values of ChainConfig for each network (`bws spec render`
prints them side by side). Why they differ:

- chain_id: a transaction signed for one network is invalid on the other.
- target_block_time, retarget_interval: the devnet shows blocks within
  seconds and retargets often; mainnet aims at a minute and retargets daily.
- initial_target: the devnet's is easy (1 hash in 16 meets it), so a demo
  mines at once; mainnet's needs sustained work.
- max_nonces_per_iteration, work_units_per_nonce: the lottery tickets an
  iteration's work buys, and their cap (work units count each contraction
  MAC slices² times: a 2-slice model's MAC is 4 units).
- initial_block_reward, halving_interval: 50 coin, halving every ~4 years
  of mainnet blocks (1 coin = COIN units).
- stake_lock_period: at least as long as evidence is kept for disputes
  (mainnet two weeks), so a cheat cannot withdraw before being slashed.
- ticket prices: the cost of a sybil seat.
- training_start_delay, evaluation_period: blocks to fetch a dataset, and
  the window before the deadline in which evaluators report.
- min_transaction_fee: a spam floor.
"""
from .containers import ChainConfig

COIN = 10**8  # smallest units per coin

DEVNET = ChainConfig(
    chain_id=0xB5D0,
    target_block_time=2,
    retarget_interval=10,
    initial_target=2**252,
    max_nonces_per_iteration=16,
    work_units_per_nonce=4 * 10**6,
    initial_block_reward=50 * COIN,
    halving_interval=100_000,
    stake_lock_period=20,
    miner_ticket_price=10 * COIN,
    supervisor_ticket_price=10 * COIN,
    evaluator_ticket_price=10 * COIN,
    training_start_delay=1,
    evaluation_period=5,
    min_transaction_fee=1,
)

MAINNET = ChainConfig(
    chain_id=0xB5,
    target_block_time=60,
    retarget_interval=1440,
    initial_target=2**232,
    max_nonces_per_iteration=64,
    work_units_per_nonce=4 * 10**11,
    initial_block_reward=50 * COIN,
    halving_interval=2_100_000,
    stake_lock_period=20_160,
    miner_ticket_price=1000 * COIN,
    supervisor_ticket_price=1000 * COIN,
    evaluator_ticket_price=1000 * COIN,
    training_start_delay=10,
    evaluation_period=720,
    min_transaction_fee=1000,
)

PRESETS = {"devnet": DEVNET, "mainnet": MAINNET}
