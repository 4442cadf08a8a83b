"""Block rules: header, PoUW, rewards, difficulty; the pieces of PoUW on their own."""
import copy
import dataclasses
import json

import numpy as np
import pytest

from bws.node.review import random_root
from bws.spec import containers as C
from bws.spec.constants import MAX_TARGET
from bws.spec.containers import ReplayResult
from bws.spec.pouw import (
    compute_block_work, compute_header_commitment, compute_input_mask_seed, compute_nonce, compute_nonce_seed,
    get_masked_batch, get_nonce_allowance,
)
from bws.spec.presets import DEVNET
from bws.spec.state_transition import (
    InvalidBlock, InvalidTransaction, ReplayUnavailable, apply_transaction, compute_next_target, get_block_reward,
    state_transition,
)
from bws.spec.tasks import (
    TaskDefinitionError, compute_batch_index, compute_model_macs, compute_work_units, get_tickets,
)


def test_valid_block_records_the_iteration_and_pays_the_miner(chain, started):
    state, block = started
    post, mined = chain.extend(state, block, "bob")
    bob = post.tasks[chain.genesis_task_id].members[1]
    assert bob.recorded_iterations == 1 and bob.next_minable_iteration == mined.header.iteration + 1
    assert post.accounts[chain.address["bob"]].balance == \
        state.accounts[chain.address["bob"]].balance + get_block_reward(state.config, 2)
    assert post.latest_block_header.state_root == bytes(32)


def test_transition_leaves_the_pre_state_alone(chain, started):
    state, block = started
    before = dataclasses.replace(state)
    bad = dataclasses.replace(chain.mine(state, block, "bob"), proofs=[])
    with pytest.raises(InvalidBlock):
        state_transition(state, bad, chain.oracles)
    assert state == before


def test_any_exception_makes_a_block_invalid(chain, started):
    """consensus-specs' rule: an input that makes the rules raise anything,
    not only a failed assert, is invalid; the reason names the exception and
    the caller's state is left as it was."""
    state, block = started
    valid = chain.mine(state, block, "bob")

    def broken(task, message):
        raise ZeroDivisionError("a replay that divides by zero")

    before = copy.deepcopy(state)
    with pytest.raises(InvalidBlock, match="ZeroDivisionError: a replay that divides by zero"):
        state_transition(state, valid, dataclasses.replace(chain.oracles, replay=broken))
    assert state == before
    nested = b'{"dataset":{"batch_size":1},"model":' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    body = dataclasses.replace(chain.submit_task_body(), task_definition=nested)
    with pytest.raises(InvalidTransaction, match="nested deeper than 32"):  # the spec's bound, not the interpreter's
        apply_transaction(state, chain.transaction(state, "client", body), chain.address["sam"], chain.oracles)


def test_replay_must_match_bit_for_bit(chain, started):
    state, block = started
    valid = chain.mine(state, block, "bob")

    def off_by_one_bit(task, message):
        honest = chain.replay(task, message)
        flipped = bytes([honest.update_root[0] ^ 1]) + honest.update_root[1:]
        return dataclasses.replace(honest, update_root=flipped)

    def withheld(task, message):
        raise ReplayUnavailable("peer did not serve the batch")

    with pytest.raises(InvalidBlock, match="replay does not reproduce"):
        state_transition(state, valid, dataclasses.replace(chain.oracles, replay=off_by_one_bit))
    with pytest.raises(InvalidBlock, match="inputs unavailable"):
        state_transition(state, valid, dataclasses.replace(chain.oracles, replay=withheld))
    assert state_transition(state, valid, chain.oracles).height == state.height + 1


def test_one_block_per_iteration(chain, started):
    state, block = started
    post, mined = chain.extend(state, block, "bob")
    task = post.tasks[chain.genesis_task_id]
    header = chain.header_template(post, mined, "bob")
    again = chain.forge(post, header, "bob", chain.iteration_work(
        chain.genesis_task_id, task, mined.header.iteration, 1, compute_header_commitment(header)), require_pow=False)
    with pytest.raises(InvalidBlock, match="already used or older"):
        state_transition(post, again, chain.oracles)


def test_nonce_seed_is_the_work_and_the_work_depends_on_the_header(chain, started):
    """c2: the header an iteration commits to keys its input mask, so a step
    trained for one header has other roots, hence other nonces, than the
    step for another, and its roots do not replay as the other's."""
    state, _ = started
    task = state.tasks[chain.genesis_task_id]
    for_a, for_b = (chain.iteration_work(chain.genesis_task_id, task, 4, 0, random_root(h)) for h in "AB")
    assert (for_a.update_root, for_a.state_after_root) != (for_b.update_root, for_b.state_after_root)
    assert compute_nonce_seed(for_a) != compute_nonce_seed(for_b)
    claimed_for_b = chain.signed_message("alice", for_a, random_root("B")).message
    assert chain.replay(task, claimed_for_b) != ReplayResult(update_root=for_a.update_root,
                                                             state_after_root=for_a.state_after_root)
    assert compute_nonce(compute_nonce_seed(for_a), 0) != compute_nonce(compute_nonce_seed(for_a), 1)


def test_input_mask_drops_one_value_in_sixteen_keyed_by_task_iteration_and_header():
    seed = compute_input_mask_seed(random_root("task"), 7, random_root("header"))
    assert seed != compute_input_mask_seed(random_root("task"), 8, random_root("header"))
    assert seed != compute_input_mask_seed(random_root("other task"), 7, random_root("header"))
    assert seed != compute_input_mask_seed(random_root("task"), 7, random_root("other header"))
    x = np.arange(1, 64 * 1024 + 1, dtype=np.int32).reshape(64, 1024)
    masked = get_masked_batch({"x": x, "y": np.zeros(64, np.int32)}, seed)
    dropped = masked["x"] == 0
    assert 0.05 < dropped.mean() < 0.075 and dropped.any(axis=1).all()
    assert np.array_equal(masked["x"][~dropped], x[~dropped]) and masked["x"].dtype == np.int32
    assert np.array_equal(get_masked_batch({"x": x}, seed)["x"], masked["x"])


def test_header_commitment_covers_everything_but_state_root_and_pouw(chain, started):
    state, block = started
    header = chain.mine(state, block, "bob").header
    same = dataclasses.replace(header, state_root=random_root("s"), nonce=random_root("n"), nonce_index=9,
                               iteration=99, message_digest=random_root("d"), task_id=random_root("t"))
    assert compute_header_commitment(same) == compute_header_commitment(header)
    for field, value in [("timestamp", header.timestamp + 1), ("parent_hash", random_root("p")),
                         ("transactions_root", random_root("x")), ("miner", bytes(20)), ("target", 5),
                         ("height", 9)]:
        assert compute_header_commitment(dataclasses.replace(header, **{field: value})) != \
            compute_header_commitment(header)


def test_nonce_allowance_is_proportional_and_capped(chain, started):
    task = started[0].tasks[chain.genesis_task_id]
    config = started[0].config
    assert get_nonce_allowance(config, task) == task.work_units // config.work_units_per_nonce == 3
    assert get_nonce_allowance(dataclasses.replace(config, work_units_per_nonce=10**9), task) == 0  # refused at submit
    assert get_nonce_allowance(dataclasses.replace(config, work_units_per_nonce=1), task) == \
        config.max_nonces_per_iteration


def test_block_reward_halves():
    config = dataclasses.replace(DEVNET, halving_interval=10)
    assert [get_block_reward(config, h) for h in (1, 9, 10, 19, 20, 640, 10**6)] == [
        DEVNET.initial_block_reward] * 2 + [DEVNET.initial_block_reward // 2] * 2 + \
        [DEVNET.initial_block_reward // 4, 0, 0]


def test_retarget_follows_block_time_within_the_clamp():
    expected = DEVNET.retarget_interval * DEVNET.target_block_time
    target = 2**240
    assert compute_next_target(DEVNET, target, expected) == target
    assert compute_next_target(DEVNET, target, expected // 2) == target // 2
    assert compute_next_target(DEVNET, target, expected * 100) == target * 4
    assert compute_next_target(DEVNET, target, 0) == target // 4
    assert compute_next_target(DEVNET, MAX_TARGET, expected * 4) == MAX_TARGET
    assert compute_next_target(DEVNET, 1, 0) == 1


def test_retarget_happens_in_the_chain(chain):
    state, block = chain.genesis_state, chain.genesis_block
    while state.height < state.config.retarget_interval:
        state, block = chain.extend(state, block, ("alice", "bob", "carol")[state.height % 3],
                                    timestamp=block.header.timestamp + 1)
    assert state.target == chain.genesis_state.target // 2
    assert state.retarget_timestamp == block.header.timestamp


def test_block_work():
    assert compute_block_work(MAX_TARGET) == 1
    assert compute_block_work(2**255 - 1) == 2
    assert compute_block_work(2**240) > compute_block_work(2**241)


LOSS_AND_OPTIMIZER = {"loss": {"type": "softmax_cross_entropy"}, "optimizer": {"type": "adam"}}


def test_work_units_count_contraction_macs_slices_squared():
    """l1 (mispriced work): a contraction MAC costs slices² int8 products; pooling and
    element-wise layers count nothing."""
    model = {"input_shape": [8, 8, 1], "layers": [
        {"type": "conv2d", "filters": 4, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same"},
        {"type": "max_pool2d", "pool_size": [2, 2], "strides": [2, 2], "padding": "valid"},
        {"type": "flatten"}, {"type": "dropout", "rate": 0.1}, {"type": "dense", "units": 10, "activation": "softmax"}],
        **LOSS_AND_OPTIMIZER}
    contraction_macs = 8 * 8 * 9 * 1 * 4 + 64 * 10
    assert compute_model_macs(model) == contraction_macs * 2**2  # 2 slices, the default
    assert compute_model_macs(dict(model, slices=3)) == contraction_macs * 3**2
    assert compute_model_macs(dict(model, slices=1)) == contraction_macs
    definition = json.dumps({"dataset": {"batch_size": 32}, "model": model}, sort_keys=True,
                            separators=(",", ":")).encode()
    assert compute_work_units(definition) == compute_model_macs(model) * 32 * 3


@pytest.mark.parametrize("layers,input_shape,problem", [
    ([], [4], "layers: must be a non-empty list"),
    ([{"type": "dense", "units": -1}], [4], "units"),
    ([{"type": "conv2d", "filters": 1, "kernel_size": [3, 3]}], [4], "HWC input"),
    ([{"type": "conv2d", "filters": 1, "kernel_size": [3, 3]}], [2, 2, 1], "larger than the input"),
    ([{"type": "reshape", "target_shape": [3]}], [4], "does not hold"),
    ("dense", [4], "layers: must be a non-empty list"),
    ([{"type": "avg_pool2d", "pool_size": [2, 2, 2]}], [4, 4, 1], "a list of two"),
    ([{"type": "max_pool2d", "pool_size": [2, 2], "padding": "full"}], [4, 4, 1], "padding: must be one of"),
    ([{"type": "max_pool2d", "pool_size": [2, 2], "padding": "same"}], [4, 4, 1], "pooling supports only 'valid'"),
    ([{"type": "lstm"}], [4], "type: must be one of"),
])
def test_models_the_engine_cannot_run_are_refused_and_named(layers, input_shape, problem):
    """The spec reads a task's model with the engine's own rules (spec/models.py):
    what the engine cannot run, no task may escrow a fee for."""
    with pytest.raises(TaskDefinitionError, match=problem):
        compute_model_macs({"input_shape": input_shape, "layers": layers, **LOSS_AND_OPTIMIZER})


def test_batch_schedule_deals_batches_round_robin(chain, started):
    task = started[0].tasks[chain.genesis_task_id]
    seen = [compute_batch_index(task, i, m) for i in range(3) for m in range(3)]
    assert seen == [0, 1, 2, 3, 4, 5, 6, 7, 8]  # no wrap-around: every batch is trained once
    last = task.iterations - 1
    assert compute_batch_index(task, last, task.group_size - 1) == task.num_batches - 1


def test_tickets_count_only_active_stakes(chain, started):
    state = dataclasses.replace(started[0])
    tickets = dict(get_tickets(state, 0))
    assert set(tickets) == {chain.address[n] for n in chain.MINERS}
    assert all(t == 10 for t in tickets.values())
    key = C.StakeKey(owner=chain.address["alice"], role=0)
    state.stakes = dict(state.stakes)
    state.stakes[key] = C.StakeBalance(amount=state.stakes[key].amount, release_height=50)
    assert chain.address["alice"] not in dict(get_tickets(state, 0))


def test_m1_a_member_cannot_unstake_while_its_task_is_open():
    """M1 (dust stake): unstake, wait out the lock, re-stake 1 unit and keep
    mining with nothing worth slashing. The unstake is refused while the
    member's task is open; other stakes are released as before."""
    from bws.node.review import TOY_CONFIG, ToyChain
    chain = ToyChain(config=dataclasses.replace(TOY_CONFIG, stake_lock_period=2))
    unstake = chain.transaction(chain.genesis_state, "carol", C.Unstake(role=0))
    with pytest.raises(InvalidTransaction, match="miner stake is locked while its owner is a member of an open task"):
        apply_transaction(chain.genesis_state, unstake, chain.address["sam"], chain.oracles)
    supervisor_unstake = chain.transaction(chain.genesis_state, "sam", C.Unstake(role=1))
    apply_transaction(chain.genesis_state, supervisor_unstake, chain.address["sam"], chain.oracles)
    dave_unstake = chain.transaction(chain.genesis_state, "dave", C.Unstake(role=0))  # not in the group
    state, _ = chain.extend(chain.genesis_state, chain.genesis_block, "alice", [dave_unstake])
    assert state.stakes[C.StakeKey(owner=chain.address["dave"], role=0)].release_height == state.height + 2
