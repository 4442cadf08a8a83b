"""Presets: the values of ChainConfig for each network.

| parameter | devnet | mainnet | why |
| --- | --- | --- | --- |
| chain_id | 0xB5D0 | 0xB5 | transactions of one network are invalid on the other |
| target_block_time | 2 s | 60 s | devnet: a demo sees blocks at once |
| retarget_interval | 10 | 1440 | mainnet: once a day |
| initial_target | 2**252 (1 hash in 16) | 2**232 | devnet: any miner finds blocks at once |
| header_commitment_lag (k) | 1 | 4 | how far ahead a header is committed |
| max_nonces_per_iteration | 16 | 64 | caps the lottery tickets of one iteration |
| work_units_per_nonce | 10**6 MAC | 10**11 MAC | useful work that buys one nonce |
| initial_block_reward | 50 coin | 50 coin | 1 coin = 10**8 units |
| halving_interval | 100000 | 2100000 | ~ 4 years of mainnet blocks |
| stake_lock_period | 20 | 20160 | ≥ the time evidence is kept for disputes (2 weeks) |
| ticket prices | 10 coin | 1000 coin | the cost of a sybil ticket |
| training_start_delay | 1 | 10 | blocks to fetch the dataset |
| evaluation_period | 5 | 720 | blocks before the deadline when evaluation opens |
| min_transaction_fee | 1 unit | 1000 units | spam floor |
"""
from .containers import ChainConfig

COIN = 10**8  # smallest units per coin

DEVNET = ChainConfig(
    chain_id=0xB5D0,
    target_block_time=2,
    retarget_interval=10,
    initial_target=2**252,
    header_commitment_lag=1,
    max_nonces_per_iteration=16,
    work_units_per_nonce=10**6,
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
    header_commitment_lag=4,
    max_nonces_per_iteration=64,
    work_units_per_nonce=10**11,
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
