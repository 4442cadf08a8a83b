"""The task lifecycle under generated histories keeps the spec's economic invariants.

A hypothesis state machine drives the spec's `state_transition` on the toy
chain (real keys, commitments and a real toy training step): clients submit
tasks, participants stake and unstake, groups get selected, members mine the
tasks' iterations (each block carries the signed iteration messages),
evaluators report scores, clients cancel, cheats equivocate or publish forged
iterations and are disputed, and honest members are falsely accused. After
every block:

- coin is conserved: balances + stakes + open escrows = genesis supply +
  minted - burned, and minted is exactly the sum of the block rewards;
- escrow is never overspent: an open task's payment never changes, a
  finalized task pays out exactly its payment, a refund returns exactly it;
- no honest participant is slashed: an honest stake only ever grows, or goes
  back to its owner after its lock period; only proven cheats lose theirs;
  a false accusation slashes nobody and costs the accuser the penalty; what
  is burned is exactly the cheats' stakes minus the disputers' rewards plus
  the false accusers' penalties.

At the end the chain runs past every deadline: every task ends finalized,
cancelled (refunded) or expired (proven training paid, the rest refunded).
"""
from __future__ import annotations

import dataclasses
import os
import re

from hypothesis import event, note, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bws.node.review import ReviewError, ToyChain
from bws.spec import containers as C
from bws.spec.constants import (
    BASIS_POINTS, FALSE_DISPUTE_PENALTY, ROLE_EVALUATOR, ROLE_MINER, ROLE_SUPERVISOR, SLASH_REWARD_SHARE_BP, TASK_CANCELLED, TASK_EVALUATION,
    TASK_EXPIRED, TASK_FINALIZED, TASK_TRAINING, TERMINAL_TASK_STATUSES,
)
from bws.spec.pouw import sign_iteration_message
from bws.spec.presets import COIN
from bws.spec.state_transition import (
    InvalidTransaction, apply_transaction, compute_expiry_split, compute_fee_split, get_block_reward, get_total_supply,
    is_evidence_expired, state_transition,
)
from property_tests.strategies import flip_bit

TOY = ToyChain()
NAME = {address: name for name, address in TOY.address.items()}
PEOPLE = TOY.MINERS + TOY.OTHERS
CLIENTS = ("client", "mallory", "dave")
ROLES = (ROLE_MINER, ROLE_SUPERVISOR, ROLE_EVALUATOR)
REFUNDED = (TASK_CANCELLED, TASK_EXPIRED)


class TaskLifecycle(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.toy = ToyChain()   # per run: its iteration cache is keyed by task ids, which repeat across runs
        self.state, self.block = self.toy.genesis_state, self.toy.genesis_block
        self.pending: list[tuple[str, object, str]] = []   # (sender, body, kind) for the next block
        self.cheats: set[bytes] = set()               # members made to misbehave
        self.rewards = 0                              # block rewards minted so far
        self.slashable: dict[bytes, int] = {}         # cheat -> disputer reward share expected when slashed
        self.submitted: dict[bytes, int] = {}         # task id -> payment at submission
        self.removed: dict[bytes, int] = {}           # task id -> its status when it left the state

    # -- building transactions ------------------------------------------------
    def _signed(self, state: C.State, sender: str, body, extra_nonce: int = 0) -> C.SignedTransaction:
        account = state.accounts.get(self.toy.address[sender])
        return self.toy.transaction(state, sender, body, nonce=(account.nonce if account else 0) + extra_nonce)

    def _tasks(self, *statuses) -> list[bytes]:
        return [tid for tid in sorted(self.state.tasks) if tid != self.toy.genesis_task_id
                and self.state.tasks[tid].status in statuses]

    @initialize(client=st.sampled_from(CLIENTS), group_size=st.integers(1, 3), iterations=st.integers(2, 4),
                deadline=st.integers(8, 20), payment=st.integers(1, 200 * COIN))
    def submit_first_task(self, client, group_size, iterations, deadline, payment):
        """Every run has at least one task to carry through its lifecycle."""
        self.submit_task(client, group_size, iterations, deadline, payment)

    @rule(client=st.sampled_from(CLIENTS), group_size=st.integers(1, 3), iterations=st.integers(2, 4),
          deadline=st.integers(8, 20), payment=st.integers(1, 200 * COIN))
    def submit_task(self, client, group_size, iterations, deadline, payment):
        body = self.toy.submit_task_body(group_size=group_size, iterations=iterations,
                                    deadline=self.state.height + deadline, payment=payment)
        self.pending.append((client, body, "submit"))
        self._mine_progress()

    @rule(sender=st.sampled_from(PEOPLE), role=st.sampled_from(ROLES), amount=st.integers(1, 30 * COIN))
    def stake(self, sender, role, amount):
        self.pending.append((sender, C.Stake(role=role, amount=amount), "stake"))
        self._mine_progress()

    @rule(sender=st.sampled_from(PEOPLE), role=st.sampled_from(ROLES))
    def unstake(self, sender, role):
        if sender == "alice" and role == ROLE_MINER:
            return   # alice keeps mining the genesis task whenever no one else can (found by the nightly profile)
        self.pending.append((sender, C.Unstake(role=role), "unstake"))
        self._mine_progress()

    @rule(index=st.integers(0, 99), by_client=st.booleans())
    def cancel(self, index, by_client):
        tasks = sorted(self.state.tasks)
        task_id = tasks[index % len(tasks)]
        client = NAME[self.state.tasks[task_id].client]
        self.pending.append((client if by_client else "sam", C.CancelTask(task_id=task_id), "cancel"))
        self._mine_progress()

    @precondition(lambda self: self._tasks(TASK_EVALUATION))
    @rule(index=st.integers(0, 99), score_offsets=st.lists(st.integers(-2, 2), min_size=3, max_size=3))
    def report_evaluation(self, index, score_offsets):
        tasks = self._tasks(TASK_EVALUATION)
        task = self.state.tasks[tasks[index % len(tasks)]]
        evaluator = NAME[task.evaluators[0]] if task.evaluators else "eve"
        honest = self.toy.evaluation_result(self.state, tasks[index % len(tasks)])
        models = [dataclasses.replace(model, correct=max(0, int(model.correct) + offset))   # wrong ones are refused
                  for model, offset in zip(honest.models, score_offsets)]
        self.pending.append((evaluator, dataclasses.replace(honest, models=models), "evaluation"))
        self._mine_progress()

    # -- misbehaviour -----------------------------------------------------------
    def _member_work(self, task_id: bytes, member_index: int) -> C.IterationWork:
        task = self.state.tasks[task_id]
        iteration = max(int(task.members[member_index].next_minable_iteration), 1)
        # trained for the header whose commitment is zero: the commitment its honest messages below name
        return self.toy.iteration_work(task_id, task, min(iteration, task.iterations - 1), member_index, bytes(32))

    # alice (member 0) stays honest, so the genesis task can always be mined.
    @rule(member=st.integers(1, 2), disputer=st.sampled_from(("sam", "eve", "mallory")), fraud=st.booleans())
    def cheat_and_get_disputed(self, member, disputer, fraud):
        """A genesis-task member equivocates (two signed messages for one
        iteration) or signs a forged iteration; someone disputes it."""
        task_id = self.toy.genesis_task_id
        address = self.state.tasks[task_id].members[member].address
        honest = self._member_work(task_id, member)
        key = self.toy.keys[NAME[address]]
        if fraud:
            forged = dataclasses.replace(honest, update_root=flip_bit(honest.update_root))
            evidence = C.FraudProof(message=sign_iteration_message(key, C.IterationMessage(work=forged, header_commitment=bytes(32))))
        else:
            first = sign_iteration_message(key, C.IterationMessage(work=honest, header_commitment=bytes(32)))
            second = sign_iteration_message(key, C.IterationMessage(work=honest, header_commitment=b"\x01" * 32))
            evidence = C.Equivocation(first=first, second=second)
        self.cheats.add(address)
        self.pending.append((disputer, C.Dispute(evidence=evidence), "dispute"))
        self._mine_progress()

    @rule(member=st.integers(0, 2), accuser=st.sampled_from(("sam", "mallory")))
    def falsely_accuse_an_honest_member(self, member, accuser):
        """A fraud proof against an honest message (its replay matches)."""
        task = self.state.tasks[self.toy.genesis_task_id]
        if task.members[member].address in self.cheats:
            return
        honest = self._member_work(self.toy.genesis_task_id, member)
        signed = sign_iteration_message(self.toy.keys[NAME[task.members[member].address]],
                                        C.IterationMessage(work=honest, header_commitment=bytes(32)))
        self.pending.append((accuser, C.Dispute(evidence=C.FraudProof(message=signed)), "false accusation"))
        self._mine_progress()

    # -- blocks -----------------------------------------------------------------
    @rule(task_choice=st.integers(0, 99), member_choice=st.integers(0, 2))
    def mine_block(self, task_choice, member_choice):
        training = [tid for tid in sorted(self.state.tasks) if self.state.tasks[tid].status == TASK_TRAINING]
        task_id = training[task_choice % len(training)]
        members = [m for m in self.state.tasks[task_id].members if not m.slashed]
        if not members:
            return
        miner = NAME[members[member_choice % len(members)].address]
        self._mine(miner, task_id)

    def _mine_progress(self) -> None:
        """The next block, by a member of a submitted task in training (so
        tasks reach evaluation), else by alice on the genesis task."""
        for task_id in self._tasks(TASK_TRAINING):
            task = self.state.tasks[task_id]
            members = [m for m in task.members if not m.slashed and m.next_minable_iteration < task.iterations]
            if members:
                return self._mine(NAME[members[0].address], task_id)
        return self._mine("alice", self.toy.genesis_task_id)

    def _mine(self, miner: str, task_id: bytes) -> None:
        before = self.state
        included, post = [], before      # (signed, kind) that apply in order: an honest template
        counts: dict[str, int] = {}
        for sender, body, kind in self.pending:
            signed = self._signed(before, sender, body, counts.get(sender, 0))
            try:
                post = apply_transaction(post, signed, self.toy.address[miner], self.toy.oracles)
            except InvalidTransaction as error:
                note(f"left out {kind} of {sender}: {error.reason}")
                continue
            counts[sender] = counts.get(sender, 0) + 1
            included.append((signed, kind))
        self.pending = []
        block = self._mine_with(before, miner, task_id, included)
        after = state_transition(before, block, self.toy.oracles)
        self.rewards += get_block_reward(before.config, block.header.height)
        penalties = sum(FALSE_DISPUTE_PENALTY for _, kind in included if kind == "false accusation")
        for _, kind in included:
            event(f"included: {kind}")
        self._check_block(before, after, penalties)
        self.state, self.block = after, block

    def _mine_with(self, before: C.State, miner: str, task_id: bytes, included: list) -> C.Block:
        """A block by `miner` on `task_id` (by alice on the genesis task if the
        block's own lifecycle step ends the task's training, or no nonce meets
        the target), leaving out a transaction the block's earlier steps made
        invalid (a deadline now too close, a task no longer cancellable)."""
        while True:
            transactions = [signed for signed, _ in included]
            try:
                return self.toy.mine(before, self.block, miner, transactions, task_id=task_id)
            except ReviewError:
                miner, task_id = "alice", self.toy.genesis_task_id
            except AssertionError as error:
                failed = re.match(r"transaction (\d+):", str(error))
                if failed:
                    del included[int(failed.group(1))]
                elif task_id != self.toy.genesis_task_id:
                    miner, task_id = "alice", self.toy.genesis_task_id
                else:
                    raise

    # -- invariants -------------------------------------------------------------------
    def _check_block(self, before: C.State, after: C.State, penalties: int) -> None:
        slashed_burn = penalties
        for key, stake in before.stakes.items():
            now = after.stakes.get(key)
            released = stake.release_height != 0 and stake.release_height <= after.height
            if now is not None and now.amount >= stake.amount:
                continue
            if now is None and released:
                continue
            assert key.owner in self.cheats and key.role == ROLE_MINER, \
                f"the honest {NAME.get(key.owner, key.owner.hex())} lost its role-{key.role} stake"
            slashed_burn += stake.amount - stake.amount * SLASH_REWARD_SHARE_BP // BASIS_POINTS
        assert after.burned - before.burned == slashed_burn, \
            "burned coin is not exactly the cheats' slashed stakes and the false accusers' penalties"
        for task_id, task in before.tasks.items():
            now = after.tasks.get(task_id)
            if now is None:
                assert is_evidence_expired(before.config, task, after.height), "a task left the state too early"
                self.removed[task_id] = task.status
                continue
            if task.status in TERMINAL_TASK_STATUSES:
                assert now == task, "a task changed after it ended"
                continue
            assert now.payment == task.payment, "an open task's escrow changed"
            if now.status == TASK_FINALIZED:
                shares = compute_fee_split(task, [0] * len(task.members), task.evaluators[0])
                assert sum(shares.values()) == task.payment and min(shares.values()) >= 0, "the payout is not the escrow"
            if now.status == TASK_EXPIRED:
                shares = compute_expiry_split(task)
                assert sum(shares.values()) == task.payment and min(shares.values()) >= 0, \
                    "the expiry split is not the escrow"
                members = {m.address for m in task.members if not m.slashed}
                assert set(shares) <= members | {task.client}, "an expired task paid someone not in its group"
        for task_id, task in after.tasks.items():
            if task_id not in before.tasks:
                self.submitted[task_id] = task.payment

    @invariant()
    def coin_is_conserved(self):
        state = self.state
        assert state.minted == self.rewards, f"minted {state.minted} != block rewards {self.rewards}"
        assert get_total_supply(state) == state.genesis_supply + state.minted - state.burned, \
            "balances + stakes + escrows != genesis supply + minted - burned"

    def teardown(self):
        """Run the chain past every deadline: every task must end finalized or refunded."""
        open_tasks = self._tasks(*[s for s in range(7) if s not in TERMINAL_TASK_STATUSES])
        if open_tasks:
            last_deadline = max(self.state.tasks[tid].evaluation_deadline for tid in open_tasks)
            while self.state.height <= last_deadline:
                for task_id in self._tasks(TASK_EVALUATION):   # honest evaluators report
                    task = self.state.tasks[task_id]
                    if task.evaluators and not any(kind == "evaluation" for _, _, kind in self.pending):
                        self.pending.append((NAME[task.evaluators[0]], self.toy.evaluation_result(self.state, task_id),
                                             "evaluation"))
                self._mine_progress()
                self.coin_is_conserved()
        for task_id in self.submitted:
            status = self.state.tasks[task_id].status if task_id in self.state.tasks else self.removed[task_id]
            assert status == TASK_FINALIZED or status in REFUNDED, f"task {task_id.hex()[:12]} ended in status {status}"
            event(f"task ended: {'finalized' if status == TASK_FINALIZED else 'refunded'}")


_NIGHTLY = os.environ.get("HYPOTHESIS_PROFILE") == "nightly"
TaskLifecycle.TestCase.settings = settings(stateful_step_count=40 if _NIGHTLY else 15,
                                           max_examples=500 if _NIGHTLY else 20)
test_task_lifecycle_keeps_the_invariants = TaskLifecycle.TestCase
