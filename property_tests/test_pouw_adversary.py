"""Issue #13's acceptance test: an adversary with a budget of T training steps
and unlimited hashing and signing tries to get blocks accepted.

The adversary is alice, a member of the toy chain's genesis task. Her only
way to train is `Trainer.train`: one toy step (`toy_iteration` on her batch of
the schedule, masked for a header) on a state she names, counted against the
budget. Everything else is free: she forges messages from any work she holds
(claimed for another header, relabelled as another iteration, with roots
taken from another step), signs them, tries every nonce of the allowance
against every header she can build (any parent in her block tree, any
timestamp), fills in the state root, and hands the blocks to the spec's
`state_transition`, which replays them with the toy replay.

The property: every accepted block is backed by one of her steps trained for
that very block (same iteration, state before and header commitment), and no
step backs two blocks of one chain. So T steps put at most T blocks, and
T × allowance nonce trials, behind any chain she builds.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
from hypothesis import event, given, note, strategies as st

from bws.node.review import TOY_CONFIG, ToyChain, random_root, toy_iteration
from bws.spec import containers as C
from bws.spec.pouw import compute_header_commitment, compute_input_mask_seed, get_masked_batch
from bws.spec.state_transition import (
    InvalidBlock, compute_block_hash, compute_state_root, process_block, state_transition,
)
from bws.spec.tasks import compute_batch_index, get_member_index

TOY = ToyChain(TOY_CONFIG)
ADVERSARY = "alice"
MAX_ACTIONS = 14


class Trainer:
    """The adversary's training steps: each call is one step, counted."""

    def __init__(self, budget: int):
        self.budget = budget
        self.steps: dict[tuple, C.IterationWork] = {}   # (iteration, state before, header commitment) -> work

    def train(self, iteration: int, state_before_root: bytes, header_commitment: bytes) -> C.IterationWork | None:
        if self.budget == 0:
            return None
        self.budget -= 1
        task = TOY.genesis_state.tasks[TOY.genesis_task_id]
        member = get_member_index(task, TOY.address[ADVERSARY])
        batch_index = compute_batch_index(task, iteration, member)
        batch = get_masked_batch(TOY.data.get(TOY.batch_roots[batch_index]),
                                 compute_input_mask_seed(TOY.genesis_task_id, iteration, header_commitment))
        before = {**TOY.data.get(state_before_root), "step": np.asarray(iteration, np.int32)}
        new_state, update = toy_iteration(before, batch, [])
        work = C.IterationWork(
            task_id=TOY.genesis_task_id, iteration=iteration, miner=TOY.address[ADVERSARY],
            state_before_root=state_before_root, batch_index=batch_index, batch_root=TOY.batch_roots[batch_index],
            batch_proof=TOY.iteration_work(TOY.genesis_task_id, task, iteration, member).batch_proof,
            peer_update_roots=[], update_root=TOY.data.put(update), state_after_root=TOY.data.put(new_state), loss=0)
        self.steps[(iteration, state_before_root, header_commitment)] = work
        return work


def header_on(tree, parent_index: int, late: int):
    """(parent's post-state, parent, the steps behind its chain, a header on it)."""
    state, parent, steps = tree[parent_index % len(tree)]
    return state, parent, steps, TOY.header_template(state, parent, ADVERSARY,
                                                     timestamp=parent.header.timestamp + 1 + late)


def forged_work(data, held: list[C.IterationWork], work: C.IterationWork) -> C.IterationWork:
    """`work`, maybe relabelled or with roots from another step she holds."""
    change = data.draw(st.sampled_from(("none", "none", "iteration", "roots", "random update")), label="forgery")
    if change == "iteration":
        iteration = data.draw(st.integers(0, 7), label="claimed iteration")
        task = TOY.genesis_state.tasks[TOY.genesis_task_id]
        member = get_member_index(task, TOY.address[ADVERSARY])
        batch_index = compute_batch_index(task, iteration, member)
        return dataclasses.replace(work, iteration=iteration, batch_index=batch_index,
                                   batch_root=TOY.batch_roots[batch_index],
                                   batch_proof=TOY.iteration_work(TOY.genesis_task_id, task, iteration,
                                                                  member).batch_proof)
    if change == "roots":
        other = data.draw(st.sampled_from(held), label="roots from")
        return dataclasses.replace(work, update_root=other.update_root, state_after_root=other.state_after_root)
    if change == "random update":
        return dataclasses.replace(work, update_root=random_root(f"update {work.iteration}"))
    return work


@given(budget=st.integers(1, 5), data=st.data())
def test_no_block_without_its_own_training_step(budget, data):
    trainer = Trainer(budget)
    tree = [(TOY.genesis_state, TOY.genesis_block, frozenset())]   # (post-state, block, steps behind its chain)
    accepted: set[bytes] = set()
    initial = TOY.initial_state_root
    for _ in range(data.draw(st.integers(1, MAX_ACTIONS), label="actions")):
        if data.draw(st.booleans(), label="train?") and trainer.budget:
            _, _, _, header = header_on(tree, data.draw(st.integers(0, 99), label="parent"),
                                     data.draw(st.integers(0, 3), label="late"))
            held = [w.state_after_root for w in trainer.steps.values()]
            state_before = data.draw(st.sampled_from([initial] + held), label="state before")
            trainer.train(data.draw(st.integers(0, 5), label="iteration"), state_before,
                          compute_header_commitment(header))
            continue
        if not trainer.steps:
            continue
        trained_key = data.draw(st.sampled_from(sorted(trainer.steps)), label="step")
        work = forged_work(data, list(trainer.steps.values()), trainer.steps[trained_key])
        state, parent, behind, header = header_on(tree, data.draw(st.integers(0, 99), label="parent"),
                                          data.draw(st.integers(0, 3), label="late"))
        named = data.draw(st.sampled_from(("header's", "trained for")), label="commitment named")
        block = TOY.forge(state, header, ADVERSARY, work,
                          header_commitment=trained_key[2] if named == "trained for" else None)
        if block is None:
            continue  # none of the allowance meets the target
        believed = copy.deepcopy(state)
        try:
            process_block(believed, block, dataclasses.replace(TOY.oracles, replay=lambda task, message: C.ReplayResult(
                update_root=message.work.update_root, state_after_root=message.work.state_after_root)))
        except AssertionError:
            continue  # not even her own claim passes the rules
        block = dataclasses.replace(block, header=dataclasses.replace(block.header,
                                                                      state_root=compute_state_root(believed)))
        if compute_block_hash(block) in accepted:
            continue  # she has built this very block before
        try:
            post = state_transition(state, block, TOY.oracles)
        except InvalidBlock as error:
            event(f"refused: {error.reason.split(':')[0]}")
            continue
        message = block.proofs[0].message.message
        key = (message.work.iteration, message.work.state_before_root, message.header_commitment)
        note(f"accepted block {block.header.height} with iteration {message.work.iteration}")
        assert key in trainer.steps, "a block accepted without a step trained for its header"
        assert trainer.steps[key] == message.work, "a block accepted with roots its step did not give"
        assert message.header_commitment == compute_header_commitment(block.header)
        assert key not in behind, "one step backs two blocks of one chain"
        assert len(behind) < budget
        accepted.add(compute_block_hash(block))
        tree.append((post, block, behind | {key}))
        event("accepted")
