"""The task lifecycle end to end, disputes, and coin conservation along the way."""
import copy
import dataclasses

import pytest

from bws.node.review import random_root
from bws.spec import containers as C
from bws.spec.constants import (
    BASIS_POINTS, BEST_MODEL_SHARE_BP, EVALUATOR_SHARE_BP, FALSE_DISPUTE_PENALTY, ROLE_MINER, SLASH_REWARD_SHARE_BP, SUPERVISOR_SHARE_BP,
    TASK_EVALUATION, TASK_EXPIRED, TASK_FINALIZED, TASK_GROUP_SELECTED, TASK_SUBMITTED, TASK_TRAINING,
)
from bws.spec.presets import COIN
from bws.spec.state_transition import (
    InvalidBlock, InvalidTransaction, apply_transaction, compute_expiry_split, get_balance, get_block_reward,
    get_total_supply, state_transition,
)
from bws.spec.tasks import compute_task_id, get_task_progress

MINERS = ("alice", "bob", "carol")


def conserved(state):
    return get_total_supply(state) == state.genesis_supply + state.minted - state.burned


def name_of(chain, address):
    return next(n for n, a in chain.address.items() if a == address)


def run_to_evaluation(chain, payment=100 * COIN):
    """Submit at height 2, then mine until the client task is in evaluation; returns the trail."""
    state, block = chain.extend(chain.genesis_state, chain.genesis_block, "alice")
    submit = chain.transaction(state, "client", chain.submit_task_body(group_size=2, iterations=4, deadline=30,
                                                                      payment=payment))
    state, block = chain.extend(state, block, "bob", [submit])
    task_id = compute_task_id(chain.config.chain_id, chain.address["client"], 0)
    statuses = [state.tasks[task_id].status]
    while state.tasks[task_id].status != TASK_EVALUATION:
        task = state.tasks[task_id]
        if task.status == TASK_TRAINING:
            member = min(task.members, key=lambda m: m.next_minable_iteration)
            state, block = chain.extend(state, block, name_of(chain, member.address), task_id=task_id)
        else:
            state, block = chain.extend(state, block, MINERS[state.height % 3])
        statuses.append(state.tasks[task_id].status)
        assert conserved(state)
    return state, block, task_id, statuses


def test_submit_select_train_evaluate_finalize(chain):
    state, block, task_id, statuses = run_to_evaluation(chain)
    assert statuses[:3] == [TASK_SUBMITTED, TASK_GROUP_SELECTED, TASK_TRAINING]
    task = state.tasks[task_id]
    assert task.status_height < task.evaluation_deadline - state.config.evaluation_period, \
        "evaluation opened because the final iteration was proven, not by the deadline"
    assert chain.address["client"] not in [m.address for m in task.members]
    assert len({m.address for m in task.members} | set(task.supervisors) | set(task.evaluators)) == 4
    recorded = [m.recorded_iterations for m in task.members]
    assert sum(recorded) >= 1
    evaluator = name_of(chain, task.evaluators[0])
    result = chain.evaluation_result(state, task_id)
    scores = [model.correct for model in result.models]
    best_index = max(range(2), key=lambda i: (scores[i], -i))   # the first on a tie
    before = {n: get_balance(state, a) for n, a in chain.address.items()}
    post, last = chain.extend(state, block, "alice", [chain.transaction(state, evaluator, result)])
    assert post.tasks[task_id].status == TASK_FINALIZED
    payment = task.payment
    gained = {n: get_balance(post, a) - before[n] for n, a in chain.address.items()}
    reward = post.config.initial_block_reward
    best, other = task.members[best_index], task.members[1 - best_index]
    pool = payment - payment * (BEST_MODEL_SHARE_BP + SUPERVISOR_SHARE_BP + EVALUATOR_SHARE_BP) // BASIS_POINTS
    expected_other = pool * other.recorded_iterations // sum(recorded)
    alice_bonus = reward + 1 if name_of(chain, other.address) == "alice" else 0  # block reward and fee
    assert gained[name_of(chain, other.address)] == expected_other + alice_bonus
    supervisor = name_of(chain, task.supervisors[0])
    assert gained[supervisor] == payment * SUPERVISOR_SHARE_BP // BASIS_POINTS
    assert gained[evaluator] == payment * EVALUATOR_SHARE_BP // BASIS_POINTS - 1
    total_paid = sum(gained.values()) - reward
    assert total_paid == payment, "the whole escrow is paid out, no more"
    assert conserved(post)
    again = chain.mine(post, last, "bob", [chain.transaction(post, evaluator, result)], seal=False)
    with pytest.raises(InvalidBlock, match="task is not in evaluation"):
        state_transition(post, again, chain.oracles)


def run_past_deadline(chain, state, block, task_id):
    """Mine (on the genesis task) until the task's evaluation deadline has passed; the balances gained meanwhile
    beyond block rewards, by name."""
    deadline = state.tasks[task_id].evaluation_deadline
    before = {name: get_balance(state, address) for name, address in chain.address.items()}
    rewards = {}
    while state.height <= deadline:
        miner = MINERS[state.height % 3]
        state, block = chain.extend(state, block, miner)
        rewards[miner] = rewards.get(miner, 0) + get_block_reward(state.config, state.height)
    assert state.tasks[task_id].status == TASK_EXPIRED
    assert conserved(state)
    gained = {name: get_balance(state, address) - before[name] - rewards.get(name, 0)
              for name, address in chain.address.items()}
    return state, {name: amount for name, amount in gained.items() if amount}


def test_a_trained_task_that_expires_pays_its_members_for_the_proven_training(chain):
    """Nobody evaluated (the client kept its test split, or no evaluator reported): the iterations the chain saw
    proven are paid for all the same, in proportion to each member's recorded iterations."""
    state, block, task_id, _ = run_to_evaluation(chain)
    task = state.tasks[task_id]
    assert max(m.next_minable_iteration for m in task.members) == task.iterations, "the final iteration was proven"
    _, gained = run_past_deadline(chain, state, block, task_id)
    recorded = sum(m.recorded_iterations for m in task.members)
    expected = {name_of(chain, m.address): task.payment * m.recorded_iterations // recorded for m in task.members}
    expected["client"] = task.payment - sum(expected.values())
    assert gained == {name: amount for name, amount in expected.items() if amount}
    assert compute_expiry_split(task) == {chain.address[name]: amount for name, amount in expected.items()}


def test_an_expiring_task_pays_only_its_proven_progress_and_refunds_the_rest(chain):
    state, block, task_id, _ = run_to_evaluation(chain)
    task = state.tasks[task_id]
    first, second = task.members
    halfway = dataclasses.replace(task, members=[dataclasses.replace(first, next_minable_iteration=2, recorded_iterations=1),
                                                 dataclasses.replace(second, next_minable_iteration=1, recorded_iterations=3)])
    earned = task.payment * 1 // task.iterations   # both members proved iteration 0; only one proved iteration 1
    assert compute_expiry_split(halfway) == {first.address: earned // 4, second.address: earned * 3 // 4,
                                             task.client: task.payment - earned // 4 - earned * 3 // 4}
    slashed = dataclasses.replace(halfway, members=[dataclasses.replace(halfway.members[0], slashed=True),
                                                    halfway.members[1]])
    assert compute_expiry_split(slashed) == {second.address: earned, task.client: task.payment - earned}
    untrained = dataclasses.replace(task, members=[dataclasses.replace(m, next_minable_iteration=0, recorded_iterations=0)
                                                   for m in task.members])
    assert compute_expiry_split(untrained) == {task.client: task.payment}


def start_training(chain, iterations=4):
    """A client task of two members in training; (state, block, task id)."""
    state, block = chain.extend(chain.genesis_state, chain.genesis_block, "alice")
    submit = chain.transaction(state, "client", chain.submit_task_body(group_size=2, iterations=iterations,
                                                                      deadline=30))
    state, block = chain.extend(state, block, "bob", [submit])
    task_id = compute_task_id(chain.config.chain_id, chain.address["client"], 0)
    while state.tasks[task_id].status != TASK_TRAINING:
        state, block = chain.extend(state, block, MINERS[state.height % 3])
    return state, block, task_id


def test_h6_a_member_that_skips_to_the_last_iteration_neither_ends_training_nor_is_paid_for_it(chain):
    """The review's attack: a member proves the task's last iteration as its
    first block. It used to move the task to evaluation, and at expiry the
    task counted as fully trained: the skipper took the whole payment, the
    honest member nothing. Progress is now what a majority of the members
    proved: the task stays in training and, expiring, refunds the client."""
    state, block, task_id = start_training(chain)
    task = state.tasks[task_id]
    skipper = name_of(chain, task.members[0].address)
    state, block = chain.extend(state, block, skipper, task_id=task_id, iteration=task.iterations - 1)
    task = state.tasks[task_id]
    assert task.members[0].next_minable_iteration == task.iterations and task.members[0].recorded_iterations == 1
    assert task.status == TASK_TRAINING and get_task_progress(task) == 0
    _, gained = run_past_deadline(chain, state, block, task_id)
    assert gained == {"client": task.payment}


def test_h6_the_task_moves_to_evaluation_once_a_majority_proved_the_last_iteration(chain):
    state, block, task_id = start_training(chain)
    task = state.tasks[task_id]
    first, second = (name_of(chain, member.address) for member in task.members)
    state, block = chain.extend(state, block, first, task_id=task_id, iteration=task.iterations - 1)
    assert state.tasks[task_id].status == TASK_TRAINING
    state, block = chain.extend(state, block, second, task_id=task_id, iteration=task.iterations - 1)
    assert state.tasks[task_id].status == TASK_EVALUATION


def test_task_progress_is_what_a_majority_of_unslashed_members_proved():
    def task_of(*reached, slashed=()):
        members = [C.Member(address=bytes([n]) * 20, recorded_iterations=1, next_minable_iteration=r,
                            slashed=n in slashed) for n, r in enumerate(reached)]
        return C.Task(client=bytes(20), task_definition=b"", work_units=1, dataset_root=bytes(32), num_batches=99,
                      test_set_hash=bytes(32), group_size=len(members), iterations=9, evaluation_deadline=9,
                      payment=1, status=TASK_TRAINING, status_height=0, members=members, supervisors=[],
                      evaluators=[])
    assert get_task_progress(task_of(7)) == 7
    assert get_task_progress(task_of(9, 0)) == 0
    assert get_task_progress(task_of(9, 4, 0)) == 4
    assert get_task_progress(task_of(9, 9, 4, 0)) == 4    # two of four is not a majority
    assert get_task_progress(task_of(9, 9, 9, 0)) == 9
    assert get_task_progress(task_of(9, 0, slashed=(1,))) == 9
    assert get_task_progress(task_of(9, 0, slashed=(0, 1))) == 0


def test_a_task_that_expires_unselected_refunds_the_client(chain):
    state, block = chain.extend(chain.genesis_state, chain.genesis_block, "alice")
    too_big = chain.transaction(state, "client", chain.submit_task_body(group_size=6, deadline=12))
    state, block = chain.extend(state, block, "bob", [too_big])
    task_id = compute_task_id(chain.config.chain_id, chain.address["client"], 0)
    _, gained = run_past_deadline(chain, state, block, task_id)
    assert gained == {"client": state.tasks[task_id].payment}


def test_group_selection_is_deterministic_from_block_hash(chain):
    state, block = chain.extend(chain.genesis_state, chain.genesis_block, "alice")
    submit = chain.transaction(state, "client", chain.submit_task_body(group_size=3, deadline=30))
    state, block = chain.extend(state, block, "bob", [submit])
    task_id = compute_task_id(chain.config.chain_id, chain.address["client"], 0)
    groups = set()
    for miner in ("alice", "carol"):
        post, _ = chain.extend(state, block, miner)
        again, _ = chain.extend(state, block, miner)
        assert post.tasks[task_id].members == again.tasks[task_id].members
        groups.add(tuple(m.address for m in post.tasks[task_id].members))
    assert all(len(set(g)) == 3 for g in groups)


def equivocation(chain, state):
    task = state.tasks[chain.genesis_task_id]
    first, second = (chain.honest_message("alice", chain.genesis_task_id, task, 3, random_root(h)) for h in "AB")
    return first, second, first.message.work


def test_equivocation_slashes_and_rewards_the_disputer(chain, started):
    state, _ = started
    first, second, _ = equivocation(chain, state)
    dispute = chain.transaction(state, "mallory", C.Dispute(evidence=C.Equivocation(first=first, second=second)))
    post = apply_transaction(state, dispute, chain.address["sam"], chain.oracles)
    stake = state.stakes[C.StakeKey(owner=chain.address["alice"], role=ROLE_MINER)].amount
    assert C.StakeKey(owner=chain.address["alice"], role=ROLE_MINER) not in post.stakes
    reward = stake * SLASH_REWARD_SHARE_BP // BASIS_POINTS
    assert get_balance(post, chain.address["mallory"]) == get_balance(state, chain.address["mallory"]) - 1 + reward
    assert post.burned == stake - reward
    assert post.tasks[chain.genesis_task_id].members[0].recorded_iterations == 0
    assert conserved(post)


def test_fraud_proof_slashes_and_false_accusation_costs_the_disputer(chain, started):
    state, _ = started
    _, _, work = equivocation(chain, state)
    honest = chain.signed_message("alice", work, random_root("A"))
    accused = C.StakeKey(owner=chain.address["alice"], role=ROLE_MINER)
    false = apply_transaction(state, chain.transaction(state, "mallory", C.Dispute(evidence=C.FraudProof(message=honest))),
                              chain.address["sam"], chain.oracles)
    assert false.stakes[accused] == state.stakes[accused]
    assert not false.tasks[chain.genesis_task_id].members[0].slashed
    assert get_balance(false, chain.address["mallory"]) == get_balance(state, chain.address["mallory"]) - 1 \
        - FALSE_DISPUTE_PENALTY
    assert false.burned == state.burned + FALSE_DISPUTE_PENALTY and conserved(false)
    cheat = chain.signed_message("alice", dataclasses.replace(work, state_after_root=random_root("s")), random_root("A"))
    post = apply_transaction(state, chain.transaction(state, "mallory", C.Dispute(evidence=C.FraudProof(message=cheat))),
                             chain.address["sam"], chain.oracles)
    assert post.burned > 0 and conserved(post)


def test_false_accuser_who_cannot_pay_the_penalty_makes_the_block_invalid(chain, started):
    state, block = started
    _, _, work = equivocation(chain, state)
    honest = chain.signed_message("alice", work, random_root("A"))
    balance = get_balance(state, chain.address["mallory"])
    # mallory first gives away all but less than the penalty, then accuses
    spend = chain.transaction(state, "mallory", C.Transfer(recipient=chain.address["dave"],
                                                           amount=balance - FALSE_DISPUTE_PENALTY))
    accusation = chain.transaction(state, "mallory", C.Dispute(evidence=C.FraudProof(message=honest)),
                                   nonce=state.accounts[chain.address["mallory"]].nonce + 1)
    with pytest.raises(InvalidBlock, match="transaction 1: evidence: replay matches.*cannot pay"):
        state_transition(state, chain.mine(state, block, "bob", [spend, accusation], seal=False), chain.oracles)


def test_coin_conservation_over_a_long_chain(chain):
    state, block = chain.genesis_state, chain.genesis_block
    for height in range(12):
        txs = [chain.transaction(state, "client", C.Transfer(recipient=chain.address["dave"], amount=COIN))]
        state, block = chain.extend(state, block, MINERS[height % 3], txs)
        assert conserved(state)
    assert state.minted == 12 * state.config.initial_block_reward


def test_fee_split_skips_slashed_members_and_returns_to_client_if_all_are():
    from bws.spec.state_transition import compute_fee_split
    members = [C.Member(address=bytes([n]) * 20, recorded_iterations=n, next_minable_iteration=0, slashed=False)
               for n in (1, 2, 3)]
    task = C.Task(client=b"\xcc" * 20, task_definition=b"", work_units=1, dataset_root=bytes(32), num_batches=1,
                  test_set_hash=bytes(32), group_size=3, iterations=2, evaluation_deadline=9, payment=10_000,
                  status=TASK_EVALUATION, status_height=0, members=members, supervisors=[b"\x55" * 20],
                  evaluators=[b"\xee" * 20])
    split = compute_fee_split(task, {0: 9, 1: 1, 2: 5}, b"\xee" * 20)
    assert sum(split.values()) == 10_000
    pool = 10_000 - 500 - 500 - 2000
    assert split[b"\x01" * 20] == 2000 + pool // 6 + (pool - pool // 6 - pool * 2 // 6 - pool * 3 // 6)
    assert split[b"\x55" * 20] == 500 and split[b"\xee" * 20] == 500
    cheat = dataclasses.replace(task, members=[dataclasses.replace(members[0], slashed=True), *members[1:]])
    split = compute_fee_split(cheat, {0: 9, 1: 1, 2: 5}, b"\xee" * 20)
    assert b"\x01" * 20 not in split and sum(split.values()) == 10_000
    assert split[b"\x03" * 20] > split[b"\x02" * 20], "best model and most iterations"
    everyone = dataclasses.replace(task, members=[dataclasses.replace(m, slashed=True) for m in members])
    split = compute_fee_split(everyone, {0: 9, 1: 1, 2: 5}, b"\xee" * 20)
    assert split == {b"\xee" * 20: 500, b"\x55" * 20: 500, b"\xcc" * 20: 9000}
    unscored = compute_fee_split(task, {}, b"\xee" * 20)   # no final model scored: no best-model share
    pool = 10_000 - 500 - 500
    assert unscored[b"\x03" * 20] == pool * 3 // 6 and sum(unscored.values()) == 10_000
    only_the_second = compute_fee_split(task, {1: 1}, b"\xee" * 20)   # the others left out: the scored one is best
    assert only_the_second[b"\x02" * 20] == 2000 + (10_000 - 3000) * 2 // 6 + 1


def test_dispute_needs_a_stake_to_slash(chain, started):
    state, _ = started
    first, second, _ = equivocation(chain, state)
    unstaked = dataclasses.replace(state)
    unstaked.stakes = {k: v for k, v in state.stakes.items() if k.owner != chain.address["alice"]}
    dispute = chain.transaction(state, "mallory", C.Dispute(evidence=C.Equivocation(first=first, second=second)))
    with pytest.raises(InvalidTransaction, match="no stake to slash"):
        apply_transaction(unstaked, dispute, chain.address["sam"], chain.oracles)


def test_m2_a_group_that_cannot_be_filled_is_refunded_at_its_one_draw(chain):
    """m2: a task whose group cannot be filled rescanned every stake each block
    until its deadline; now it draws once and expires, refunded in full."""
    state, block = chain.extend(chain.genesis_state, chain.genesis_block, "alice")
    submit = chain.transaction(state, "client", chain.submit_task_body(group_size=len(chain.MINERS) + 1,
                                                                      payment=7 * COIN))
    state, block = chain.extend(state, block, "bob", [submit])
    task_id = compute_task_id(chain.config.chain_id, chain.address["client"], 0)
    before = get_balance(state, chain.address["client"])
    state, block = chain.extend(state, block, "carol")
    assert state.tasks[task_id].status == TASK_EXPIRED and state.tasks[task_id].members == ()
    assert get_balance(state, chain.address["client"]) == before + 7 * COIN
    assert conserved(state)


def test_m2_every_task_is_scheduled_once_at_its_next_lifecycle_step(chain):
    """The schedule holds each task exactly once, at the height its next step is due."""
    from bws.spec.tasks import get_lifecycle_height
    state, block, task_id, statuses = run_to_evaluation(chain)
    for _ in range(3):
        scheduled = sorted((bytes(t), int(h)) for h, tasks in state.task_schedule.items() for t in tasks)
        assert scheduled == sorted((bytes(t), get_lifecycle_height(state.config, task)) for t, task in state.tasks.items())
        assert all(int(h) > state.height for h in state.task_schedule)
        state, block = chain.extend(state, block, MINERS[state.height % 3])


def test_m2_a_block_visits_only_the_tasks_due_at_its_height(chain):
    """m2: every block visited and sorted every task (4,000 pending tasks cost
    51 ms a block on every node). A block now reads only the tasks its height
    is due for: here, with a task in training and none due, none at all."""
    from bws.spec.state_transition import process_task_lifecycle

    class Untouchable(dict):
        def _refuse(self, *args):
            raise AssertionError("the lifecycle read a task that is not due")
        __getitem__ = __iter__ = get = items = keys = values = _refuse

    state, block = chain.extend(chain.genesis_state, chain.genesis_block, "alice")
    assert state.height + 1 not in state.task_schedule and state.tasks
    probe = copy.deepcopy(state)
    probe.height += 1
    probe.tasks = Untouchable(state.tasks)
    process_task_lifecycle(probe, block)


def test_m2_an_ended_task_is_removed_once_its_evidence_expires(chain):
    """m2: ended tasks were kept (and visited by every block) forever. A task
    is removed stake_lock_period blocks after it ends; a dispute on it then
    names an unknown task."""
    state, block, task_id, _ = run_to_evaluation(chain)
    evaluator = name_of(chain, state.tasks[task_id].evaluators[0])
    result = chain.evaluation_result(state, task_id)
    state, block = chain.extend(state, block, "alice", [chain.transaction(state, evaluator, result)])
    ended = state.height
    member = state.tasks[task_id].members[0]
    while state.height < ended + state.config.stake_lock_period - 1:
        state, block = chain.extend(state, block, MINERS[state.height % 3])
        assert task_id in state.tasks
    state, block = chain.extend(state, block, MINERS[state.height % 3])
    assert task_id not in state.tasks and conserved(state)
    work = C.IterationWork(task_id=task_id, iteration=0, miner=member.address, state_before_root=random_root("s"),
                           batch_index=0, batch_root=random_root("b"), batch_proof=[], peer_update_roots=[],
                           update_root=random_root("u"), state_after_root=random_root("a"), loss=0)
    message = chain.signed_message(name_of(chain, member.address), work, random_root("h"))
    with pytest.raises(InvalidTransaction, match="unknown task"):
        apply_transaction(state, chain.transaction(state, "mallory", C.Dispute(evidence=C.FraudProof(message=message))),
                          chain.address["sam"], chain.oracles)


def test_m2_the_state_holds_at_most_max_tasks(chain, monkeypatch):
    from bws.spec import state_transition
    state, _ = chain.extend(chain.genesis_state, chain.genesis_block, "alice")
    monkeypatch.setattr(state_transition, "MAX_TASKS", len(state.tasks))
    with pytest.raises(InvalidTransaction, match="wait for one to end"):
        apply_transaction(state, chain.transaction(state, "client", chain.submit_task_body()), chain.address["sam"],
                          chain.oracles)
