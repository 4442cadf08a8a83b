"""The state transition: `state_transition(state, block, oracles) -> state`.

A block is applied as a visible chain of steps, each a small function:

    process_block_header    height, parent hash, timestamp, target, transactions root
    process_stake_releases  stakes whose lock period ended go back to their owners
    process_task_lifecycle  expiry, group selection, training start, evaluation start
    process_pouw            the proof of useful work, including the replay
    process_transactions    each transaction in order (fees to the block's miner)
    process_rewards         the block reward to the block's miner
    process_difficulty      retarget every retarget_interval blocks
    state root              must equal the header's (in state_transition)

Any failed `assert` makes the block invalid, and so does any other exception
raised while processing it (consensus-specs' rule: no input crashes a node);
`state_transition` turns it into `InvalidBlock(reason)` and leaves the
caller's state untouched. Signatures, the state root and the copy of the
state are primitives (spec/primitives.py) that a node may run faster.

Threats stopped here:
- *Double spends*: a transaction spends from a balance that must cover it,
  and carries the sender's next nonce; once included, the nonce moves on and
  the same transaction is invalid forever. Between competing chains, fork
  choice (spec/fork_choice.py) keeps the one with most work.
- *Replay of transactions*: the nonce (replay on the same chain), and the
  chain id signed into the transaction (replay on another network).
- *Signature malleability*: low-S signatures only (spec/crypto.py) and a
  canonical encoding (spec/encoding.py).
- *Equivocation*: two different signed IT_RES of one miner for one
  (task, iteration) are a Dispute that slashes the miner's stake; a block
  may use only a later iteration of its miner than the last block did
  (`next_minable_iteration`), so one iteration mines at most one block.
- *Fake iterations*: replay in `process_pouw`, and FraudProof disputes.
- *Mining on a state never trained to*: a member's consecutive messages must
  chain (`is_chained`); two that do not are a BrokenLink dispute.
- *Invented scores*: every replaying node re-scores an EvaluationResult's
  final models (`oracles.evaluate`, `get_evaluated_scores`).
- *Per-block work*: a block visits only the tasks due at its height
  (`task_schedule`, `get_lifecycle_height`).
"""
import dataclasses
from dataclasses import dataclass
from typing import Callable

from .constants import (
    BASIS_POINTS, BEST_MODEL_SHARE_BP, DOMAIN_TRANSACTION, EVALUATOR_SHARE_BP, MAX_GROUP_SIZE, MAX_HALVINGS,
    MAX_TASK_BLOCKS, MAX_TASKS,
    FALSE_DISPUTE_PENALTY, MAX_FRAUD_PROOFS_PER_BLOCK, MAX_TARGET, RETARGET_CLAMP, ROLE_MINER, ROLES,
    SLASH_REWARD_SHARE_BP, SUPERVISOR_SHARE_BP,
    TASK_CANCELLED, TASK_EVALUATION, TASK_EXPIRED, TASK_FINALIZED, TASK_GROUP_SELECTED, TASK_SUBMITTED,
    TASK_TRAINING, TERMINAL_TASK_STATUSES,
)
from .containers import (
    Account, Block, BlockHeader, BrokenLink, CancelTask, ChainConfig, Dispute, Equivocation, EvaluationResult, FraudProof,
    IterationMessage, ReplayResult, ScoredModel, SignedTransaction, Stake, StakeBalance, StakeKey, State, SubmitTask, Task,
    Transaction, Transfer, Unstake,
)
from .crypto import compute_address, get_public_key, sign
from .encoding import encode
from .hashing import ZERO_HASH, compute_merkle_root, hash_bytes, hash_object, is_valid_merkle_proof
from .primitives import compute_state_root, get_primitives
from .pouw import (
    compute_header_commitment, compute_message_digest, compute_nonce, compute_nonce_seed, get_nonce_allowance,
    is_chained, is_nonce_earning, is_valid_pow, is_valid_signed_iteration_message,
)
from .tasks import (
    TaskDefinitionError, compute_batch_index, compute_group, compute_task_id, compute_work_units,
    get_lifecycle_height, get_member_index, get_task_progress, is_dataset_large_enough,
)
from .types import Address, Hash32, Root

if not __debug__:
    # Every rule is an `assert`; `python -O` would strip them and accept anything.
    raise RuntimeError("the spec's state transition needs assertions: do not run it under python -O")


class InvalidBlock(Exception):
    """The block breaks a rule; `reason` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class InvalidTransaction(Exception):
    """The transaction breaks a rule; `reason` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ReplayUnavailable(Exception):
    """Raised by an oracle (`Oracles`) that cannot obtain the data it computes
    on: an iteration's inputs (model state, batch, peer updates), a test set
    or a final model. A block whose iteration cannot be replayed is invalid,
    and so is an evaluation result whose test set or models cannot be
    fetched: that is the rule against *data withholding* by miners and
    clients."""


Replay = Callable[[Task, IterationMessage], ReplayResult]
"""Re-executes the iteration a message claims and returns its recomputed roots.

Given the task (its definition names the model, optimizer and dataset) and
the message, a replay takes as inputs exactly what the message commits to:
the model state whose root is `work.state_before_root`, the batch whose root
is `work.batch_root`, and the updates whose roots are `work.peer_update_roots`
(summed, in any order); it runs training iteration number `work.iteration`
of the task's model on them (the state's step counter is set to
`work.iteration` whatever the fetched state holds: the iteration number is an
input of the computation, so a step replays as one iteration number only),
with the batch's input values dropped where the message's mask says
(`get_masked_batch(batch, get_input_mask_seed(message))`: the
header the message commits to is an input too, so a step replays for one
header only), and returns the root of the update it computes and of the new
model state. The spec compares both with `work.update_root` and
`work.state_after_root`; a single differing bit makes the block invalid. The
loss is informational and not compared. The engine (bws.engine) and the
NumPy reference (spec/reference) each provide a replay."""


Evaluate = Callable[[Task, ScoredModel], int]
"""Scores a member's final model: how many examples of the task's test set
(the tensors whose root is `task.test_set_hash`: inputs `x`, labels `y`) the
model whose state root is `scored.final_message.message.work.state_after_root`
gets right. The model's forward pass on each input runs in the canonical
arithmetic, as training does; its prediction is the argmax of the outputs (of
one sigmoid output: whether it is at least one half) and is right when it
equals the label. Raises `ReplayUnavailable` when the test set or the model
state cannot be fetched or does not fit the task's model. The claimed count
(`scored.correct`) is not an input of the computation; it is passed so that
a node that does not evaluate can take it, as it takes a replay's claimed
roots. The engine (`bws.engine.evaluate`) and the NumPy reference provide one."""


@dataclass(frozen=True)
class Oracles:
    """What the rules compute from data that a block or transaction names by
    root only. Each raises `ReplayUnavailable` when that data cannot be had,
    and the block or transaction is then invalid (the rule against data
    withholding)."""
    replay: Replay
    evaluate: Evaluate


# ---------------------------------------------------------------------------
# Roots
# ---------------------------------------------------------------------------
def compute_transactions_root(transactions) -> Root:
    """Merkle root of the hashes of a block's transactions, in block order."""
    return Root(compute_merkle_root([hash_object(tx) for tx in transactions]))


def compute_block_hash(block: Block) -> Hash32:
    """A block's hash: the hash of its header."""
    return Hash32(hash_object(block.header))


# ---------------------------------------------------------------------------
# Accounts
# ---------------------------------------------------------------------------
def get_balance(state: State, address: Address) -> int:
    """Spendable balance of `address` (0 for an unknown address)."""
    account = state.accounts.get(address)
    return account.balance if account else 0


def increase_balance(state: State, address: Address, amount: int) -> None:
    """Credit `amount` to `address`, creating the account if needed."""
    account = state.accounts.get(address, Account(balance=0, nonce=0))
    state.accounts[address] = dataclasses.replace(account, balance=account.balance + amount)


def decrease_balance(state: State, address: Address, amount: int) -> None:
    """Debit `amount` from `address`; its balance must cover it."""
    balance = get_balance(state, address)
    assert balance >= amount, f"insufficient balance: {balance} < {amount}"
    state.accounts[address] = dataclasses.replace(state.accounts[address], balance=balance - amount)


def get_total_supply(state: State) -> int:
    """All coins in the state: balances + stakes + escrowed payments of open tasks."""
    return (sum(a.balance for a in state.accounts.values()) + sum(s.amount for s in state.stakes.values())
            + sum(t.payment for t in state.tasks.values() if t.status not in TERMINAL_TASK_STATUSES))


def schedule_task(state: State, task_id, task: Task) -> None:
    """Enter the task in the schedule at its next lifecycle height."""
    height = get_lifecycle_height(state.config, task)
    state.task_schedule[height] = tuple(sorted(set(state.task_schedule.get(height, ())) | {task_id}))


def unschedule_task(state: State, task_id, task: Task) -> None:
    """Take the task out of the schedule (its lifecycle height follows from the task as it was scheduled)."""
    height = get_lifecycle_height(state.config, task)
    remaining = tuple(t for t in state.task_schedule.get(height, ()) if t != task_id)
    if remaining:
        state.task_schedule[height] = remaining
    else:
        state.task_schedule.pop(height, None)


def set_task(state: State, task_id, task: Task, **changes) -> Task:
    """Replace a task with a copy carrying `changes`; returns the new task. A
    new status moves the task in the schedule."""
    state.tasks[task_id] = dataclasses.replace(task, **changes)
    if "status" in changes:
        unschedule_task(state, task_id, task)
        schedule_task(state, task_id, state.tasks[task_id])
    return state.tasks[task_id]


# ---------------------------------------------------------------------------
# Block header, difficulty, rewards
# ---------------------------------------------------------------------------
def process_block_header(state: State, block: Block) -> None:
    """The header extends the state's latest block: next height, the parent's
    hash (the latest header with this state's root filled in), a later
    timestamp, the expected target, and the transactions' root."""
    header = block.header
    assert header.height == state.height + 1, f"height {header.height} does not follow {state.height}"
    parent = dataclasses.replace(state.latest_block_header, state_root=get_primitives().compute_state_root(state))
    assert header.parent_hash == hash_object(parent), "parent hash is not the hash of the latest block"
    assert header.timestamp > parent.timestamp, "timestamp not after the parent's"
    assert header.target == state.target, f"target is not the expected {state.target:#x}"
    assert header.transactions_root == compute_transactions_root(block.transactions), "transactions root mismatch"
    state.height = header.height
    state.latest_block_header = dataclasses.replace(header, state_root=Root(ZERO_HASH))


def get_block_reward(config: ChainConfig, height: int) -> int:
    """Reward of the block at `height`: initial_block_reward halved every halving_interval blocks."""
    halvings = height // config.halving_interval
    return config.initial_block_reward >> halvings if halvings < MAX_HALVINGS else 0


def process_rewards(state: State, block: Block) -> None:
    """Mint the block reward to the block's miner (fees were paid per transaction)."""
    reward = get_block_reward(state.config, block.header.height)
    increase_balance(state, block.header.miner, reward)
    state.minted += reward


def compute_next_target(config: ChainConfig, target: int, timespan: int) -> int:
    """Target after a window that took `timespan` seconds: scaled by
    timespan / (retarget_interval × target_block_time), the timespan clamped
    to [expected / 4, expected × 4], the result within [1, MAX_TARGET]."""
    expected = config.retarget_interval * config.target_block_time
    timespan = min(max(timespan, expected // RETARGET_CLAMP), expected * RETARGET_CLAMP)
    return min(max(target * timespan // expected, 1), MAX_TARGET)


def process_difficulty(state: State, block: Block) -> None:
    """Every retarget_interval blocks, retarget toward target_block_time."""
    header = block.header
    if header.height % state.config.retarget_interval == 0:
        state.target = compute_next_target(state.config, state.target, header.timestamp - state.retarget_timestamp)
        state.retarget_timestamp = header.timestamp


# ---------------------------------------------------------------------------
# Stakes and the task lifecycle
# ---------------------------------------------------------------------------
def process_stake_releases(state: State) -> None:
    """Stakes whose release height is reached are paid back to their owners."""
    released = [key for key, stake in state.stakes.items()
                if stake.release_height != 0 and stake.release_height <= state.height]
    for key in released:
        increase_balance(state, key.owner, state.stakes.pop(key).amount)


def expire_task(state: State, task_id, task: Task) -> None:
    """End a task unfinalized: the proven training is paid, the rest refunded (compute_expiry_split)."""
    for address, amount in compute_expiry_split(task).items():
        increase_balance(state, address, amount)
    set_task(state, task_id, task, status=TASK_EXPIRED, status_height=state.height)


def is_evidence_expired(config: ChainConfig, task: Task, height: int) -> bool:
    """Whether an ended task is past the time its evidence is kept for
    disputes: stake_lock_period blocks, as long as a member that unstakes when
    its task ends stays slashable."""
    return task.status in TERMINAL_TASK_STATUSES and height >= task.status_height + config.stake_lock_period


def process_task_lifecycle(state: State, block: Block) -> None:
    """Advance each task due at this height (`task_schedule`, in order of id)
    by one step: an ended task whose evidence expired is removed; expiry
    past the evaluation deadline (compute_expiry_split); the group drawn for
    a task submitted in an earlier block (seed: the parent block's hash), one
    draw only: a task whose group cannot be filled expires at once, refunded;
    training after training_start_delay; evaluation from evaluation_deadline -
    evaluation_period. Every status change enters the task in the schedule at
    the height of its next step (`get_lifecycle_height`), so a block visits
    only the tasks due at its height: its lifecycle work follows what
    changes, not how many tasks the state holds (m2)."""
    config = state.config
    for task_id in state.task_schedule.pop(state.height, ()):
        task = state.tasks[task_id]
        if is_evidence_expired(config, task, state.height):
            del state.tasks[task_id]
        elif task.status in TERMINAL_TASK_STATUSES:
            continue
        elif state.height > task.evaluation_deadline:
            expire_task(state, task_id, task)
        elif task.status == TASK_SUBMITTED and task.status_height < state.height:
            group = compute_group(state, task_id, task, block.header.parent_hash)
            if group is None:
                expire_task(state, task_id, task)
            else:
                members, supervisors, evaluators = group
                set_task(state, task_id, task, status=TASK_GROUP_SELECTED, status_height=state.height,
                         members=members, supervisors=supervisors, evaluators=evaluators)
        elif task.status == TASK_GROUP_SELECTED and state.height >= task.status_height + config.training_start_delay:
            set_task(state, task_id, task, status=TASK_TRAINING, status_height=state.height)
        elif task.status == TASK_TRAINING and state.height + config.evaluation_period >= task.evaluation_deadline:
            set_task(state, task_id, task, status=TASK_EVALUATION, status_height=state.height)


# ---------------------------------------------------------------------------
# Proof of useful work
# ---------------------------------------------------------------------------
def check_replay(task: Task, message: IterationMessage, replay: Replay) -> bool:
    """Whether replaying the iteration gives the message's update and state-after roots."""
    expected = ReplayResult(update_root=message.work.update_root, state_after_root=message.work.state_after_root)
    return replay(task, message) == expected


def process_pouw(state: State, block: Block, oracles: Oracles) -> None:
    """Check the block's proof of useful work and record the iteration.

    The block carries its miner's signed IT_RES(i). In order (cheap checks
    before the replay):
    1. the message is signed by the header's miner, for the header's task
       and iteration i;
    2. the task is in TRAINING, the miner is a member not slashed in it and
       still holds a miner stake (active or being released: something to
       slash), i < iterations, and i is at least the member's next minable
       iteration (one block per iteration);
    3. IT_RES(i).header_commitment = compute_header_commitment(header): the
       iteration was trained for this header (its input mask is keyed by it);
    4. the batch index is the schedule's, the batch root is proven in the
       dataset root, and at most group_size - 1 peer updates are applied;
    5. the header names IT_RES(i)'s digest, a nonce index below the task's
       allowance, the nonce of that index, and its work hash is ≤ target;
    6. oracles.replay(task, IT_RES(i)) returns exactly (update_root, state_after_root).
    Then the member's recorded iterations grow by one; once a majority of the
    unslashed members proved the final iteration (`get_task_progress`), the
    task moves to EVALUATION."""
    assert len(block.proofs) == 1, "a block carries exactly one PoUW proof"
    header, proof = block.header, block.proofs[0]
    message = proof.message.message
    work = message.work
    # 1. signature and naming
    assert is_valid_signed_iteration_message(proof.message), "iteration message: bad signature"
    assert work.miner == header.miner, "message is not by the block's miner"
    assert work.task_id == header.task_id, "message is not for the block's task"
    assert work.iteration == header.iteration, "iteration message is not for the header's iteration"
    # 2. task and membership
    task = state.tasks.get(header.task_id)
    assert task is not None, "unknown task"
    assert task.status == TASK_TRAINING, "task is not in training"
    member_index = get_member_index(task, header.miner)
    assert member_index is not None, "miner is not a member of the task's group"
    member = task.members[member_index]
    assert not member.slashed, "miner was slashed in this task"
    assert StakeKey(owner=header.miner, role=ROLE_MINER) in state.stakes, "miner has no stake left to answer for its work"
    assert work.iteration < task.iterations, "iteration beyond the task's iterations"
    assert work.iteration >= member.next_minable_iteration, "iteration already used or older than the miner's last block"
    # 3. the header the iteration was trained for
    assert message.header_commitment == compute_header_commitment(header), "header is not the one the iteration commits to"
    # 4. data
    assert work.batch_index == compute_batch_index(task, work.iteration, member_index), "batch index is not the schedule's"
    assert is_valid_merkle_proof(work.batch_root, work.batch_index, task.num_batches, list(work.batch_proof),
                                 task.dataset_root), "batch root not proven in the dataset root"
    assert len(work.peer_update_roots) < task.group_size, "more peer updates than other members"
    # 5. nonce and target
    assert header.message_digest == compute_message_digest(message), "message digest mismatch"
    assert header.nonce_index < get_nonce_allowance(state.config, task), "nonce index beyond the allowance"
    assert header.nonce == compute_nonce(compute_nonce_seed(work), header.nonce_index), "nonce is not derived from the iteration"
    assert is_valid_pow(header), "work hash above target"
    # 6. replay
    try:
        replayed = check_replay(task, message, oracles.replay)
    except ReplayUnavailable as error:
        raise AssertionError("iteration inputs unavailable for replay") from error
    assert replayed, "replay does not reproduce the iteration"
    members = list(task.members)
    members[member_index] = dataclasses.replace(
        member, recorded_iterations=member.recorded_iterations + 1, next_minable_iteration=work.iteration + 1)
    task = set_task(state, header.task_id, task, members=members)
    if get_task_progress(task) == task.iterations:
        set_task(state, header.task_id, task, status=TASK_EVALUATION, status_height=state.height)


# ---------------------------------------------------------------------------
# Transactions
# ---------------------------------------------------------------------------
def compute_transaction_signing_root(transaction: Transaction) -> Hash32:
    """What a sender signs: hash(DOMAIN_TRANSACTION ‖ encode(transaction))."""
    return Hash32(hash_bytes(DOMAIN_TRANSACTION + encode(transaction)))


def sign_transaction(secret_key: bytes, transaction: Transaction) -> SignedTransaction:
    """A transaction signed by `secret_key` (which must be the sender's key)."""
    return SignedTransaction(transaction=transaction, public_key=get_public_key(secret_key),
                             signature=sign(secret_key, compute_transaction_signing_root(transaction)))


def is_fraud_proof(transaction: Transaction) -> bool:
    """Whether `transaction` is a dispute with FraudProof evidence (judged by a replay)."""
    return isinstance(transaction.body, Dispute) and isinstance(transaction.body.evidence, FraudProof)


def get_fraud_proof_count(block: Block) -> int:
    """How many of the block's transactions are fraud proofs."""
    return sum(is_fraud_proof(signed.transaction) for signed in block.transactions)


def process_transactions(state: State, block: Block, oracles: Oracles) -> None:
    """Each transaction in block order; the fees go to the block's miner."""
    assert get_fraud_proof_count(block) <= MAX_FRAUD_PROOFS_PER_BLOCK, \
        f"more than {MAX_FRAUD_PROOFS_PER_BLOCK} fraud proofs in the block"
    for index, signed in enumerate(block.transactions):
        try:
            process_transaction(state, signed, block.header.miner, oracles)
        except AssertionError as error:
            raise AssertionError(f"transaction {index}: {error}") from None


def process_transaction(state: State, signed: SignedTransaction, fee_recipient: Address, oracles: Oracles) -> None:
    """Check the envelope (chain id, key, signature, nonce, fee), take the fee
    and the nonce, then apply the body."""
    transaction = signed.transaction
    assert transaction.chain_id == state.config.chain_id, "wrong chain id"
    assert compute_address(signed.public_key) == transaction.sender, "public key is not the sender's"
    assert get_primitives().is_valid_signature(
        signed.public_key, compute_transaction_signing_root(transaction), signed.signature), "bad signature"
    account = state.accounts.get(transaction.sender)
    assert account is not None, "unknown sender"
    assert transaction.nonce == account.nonce, f"nonce {transaction.nonce} is not the expected {account.nonce}"
    assert transaction.fee >= state.config.min_transaction_fee, "fee below the minimum"
    decrease_balance(state, transaction.sender, transaction.fee)
    state.accounts[transaction.sender] = dataclasses.replace(
        state.accounts[transaction.sender], nonce=account.nonce + 1)
    increase_balance(state, fee_recipient, transaction.fee)
    body = transaction.body
    if isinstance(body, Transfer):
        process_transfer(state, transaction, body)
    elif isinstance(body, Stake):
        process_stake(state, transaction, body)
    elif isinstance(body, Unstake):
        process_unstake(state, transaction, body)
    elif isinstance(body, SubmitTask):
        process_submit_task(state, transaction, body)
    elif isinstance(body, CancelTask):
        process_cancel_task(state, transaction, body)
    elif isinstance(body, EvaluationResult):
        process_evaluation_result(state, transaction, body, oracles.evaluate)
    else:
        process_dispute(state, transaction, body, oracles.replay)


def process_transfer(state: State, transaction: Transaction, transfer: Transfer) -> None:
    """Move a positive amount from the sender to the recipient."""
    assert transfer.amount > 0, "transfer of nothing"
    decrease_balance(state, transaction.sender, transfer.amount)
    increase_balance(state, transfer.recipient, transfer.amount)


def process_stake(state: State, transaction: Transaction, stake: Stake) -> None:
    """Add to the sender's active stake for a role (not while it is being released)."""
    assert stake.role in ROLES, f"unknown role {stake.role}"
    assert stake.amount > 0, "stake of nothing"
    key = StakeKey(owner=transaction.sender, role=stake.role)
    current = state.stakes.get(key, StakeBalance(amount=0, release_height=0))
    assert current.release_height == 0, "stake is being released"
    decrease_balance(state, transaction.sender, stake.amount)
    state.stakes[key] = StakeBalance(amount=current.amount + stake.amount, release_height=0)


def is_member_of_open_task(state: State, address: Address) -> bool:
    """Whether `address` holds a seat in the group of a task that has not ended."""
    return any(task.status not in TERMINAL_TASK_STATUSES and get_member_index(task, address) is not None
               for task in state.tasks.values())


def process_unstake(state: State, transaction: Transaction, unstake: Unstake) -> None:
    """Start releasing the sender's stake for a role; it stops counting as
    tickets now, and can still be slashed until paid back after stake_lock_period.
    A group member's miner stake stays locked until its task ends: else it could
    unstake, wait out the lock, re-stake dust and keep mining with nothing to slash."""
    key = StakeKey(owner=transaction.sender, role=unstake.role)
    stake = state.stakes.get(key)
    assert stake is not None, "no stake for this role"
    assert stake.release_height == 0, "stake already being released"
    assert unstake.role != ROLE_MINER or not is_member_of_open_task(state, transaction.sender), \
        "miner stake is locked while its owner is a member of an open task"
    state.stakes[key] = dataclasses.replace(stake, release_height=state.height + state.config.stake_lock_period)


def process_submit_task(state: State, transaction: Transaction, submit: SubmitTask) -> None:
    """Open a task: the definition must be readable, the numbers sane, the
    deadline far enough for selection, training start and evaluation; the
    payment is escrowed."""
    config = state.config
    try:
        work_units = compute_work_units(submit.task_definition)
    except TaskDefinitionError as error:
        raise AssertionError(f"task definition: {error}") from None
    assert is_nonce_earning(config, work_units), \
        f"task does too little work to earn a nonce ({work_units} work units, {config.work_units_per_nonce} a nonce)"
    assert submit.num_batches > 0, "dataset without batches"
    assert 1 <= submit.group_size <= MAX_GROUP_SIZE, f"group size not in [1, {MAX_GROUP_SIZE}]"
    assert submit.iterations > 0, "task without iterations"
    assert is_dataset_large_enough(submit.iterations, submit.group_size, submit.num_batches), \
        "iterations x group size exceed the dataset's batches (each batch is trained once)"
    assert submit.evaluation_deadline > state.height + 1 + config.training_start_delay + config.evaluation_period, \
        "evaluation deadline too early"
    assert submit.evaluation_deadline <= state.height + MAX_TASK_BLOCKS, \
        f"evaluation deadline more than {MAX_TASK_BLOCKS} blocks ahead"
    assert len(state.tasks) < MAX_TASKS, f"the chain holds {MAX_TASKS} tasks: wait for one to end"
    assert submit.payment > 0, "task without payment"
    decrease_balance(state, transaction.sender, submit.payment)
    task_id = compute_task_id(transaction.chain_id, transaction.sender, transaction.nonce)
    assert task_id not in state.tasks, "task id already used"
    state.tasks[task_id] = Task(
        client=transaction.sender, task_definition=submit.task_definition, work_units=work_units,
        dataset_root=submit.dataset_root, num_batches=submit.num_batches, test_set_hash=submit.test_set_hash,
        group_size=submit.group_size, iterations=submit.iterations,
        evaluation_deadline=submit.evaluation_deadline, payment=submit.payment, status=TASK_SUBMITTED,
        status_height=state.height, members=[], supervisors=[], evaluators=[],
    )
    schedule_task(state, task_id, state.tasks[task_id])


def process_cancel_task(state: State, transaction: Transaction, cancel: CancelTask) -> None:
    """The client takes its task back before its group is drawn; the payment is
    refunded. Not after the draw: a client could cancel and resubmit until it
    drew a group it likes (m3)."""
    task = state.tasks.get(cancel.task_id)
    assert task is not None, "unknown task"
    assert task.client == transaction.sender, "only the client may cancel"
    assert task.status == TASK_SUBMITTED, "task can no longer be cancelled (its group is drawn)"
    increase_balance(state, task.client, task.payment)
    set_task(state, cancel.task_id, task, status=TASK_CANCELLED, status_height=state.height)


def compute_fee_split(task: Task, scores: dict, evaluator: Address) -> dict:
    """Who gets what of the escrowed payment: EVALUATOR_SHARE_BP to the
    evaluator, SUPERVISOR_SHARE_BP split equally among the supervisors,
    BEST_MODEL_SHARE_BP to the unslashed member whose final model scored
    highest (`scores`: by group index, the scored members only; the first on
    a tie), the rest to the unslashed members in proportion to their recorded
    iterations (equally if none were recorded). Rounding dust goes to the best
    model's miner; with no scored model, the best model's share joins the
    members' part and the dust goes to the first unslashed member. If every
    member was slashed, the miners' part goes back to the client."""
    payment = task.payment
    shares: dict = {}

    def pay(address, amount):
        shares[address] = shares.get(address, 0) + amount

    pay(evaluator, payment * EVALUATOR_SHARE_BP // BASIS_POINTS)
    supervisor_pool = payment * SUPERVISOR_SHARE_BP // BASIS_POINTS
    for supervisor in task.supervisors:
        pay(supervisor, supervisor_pool // len(task.supervisors))
    eligible = [i for i, member in enumerate(task.members) if not member.slashed]
    if not eligible:
        pay(task.client, payment - sum(shares.values()))
        return shares
    scored = [i for i in eligible if i in scores]
    best = max(scored, key=lambda i: (scores[i], -i)) if scored else eligible[0]
    if scored:
        pay(task.members[best].address, payment * BEST_MODEL_SHARE_BP // BASIS_POINTS)
    miner_pool = payment - sum(shares.values())
    weights = {i: task.members[i].recorded_iterations for i in eligible}
    if sum(weights.values()) == 0:
        weights = {i: 1 for i in eligible}
    for i, weight in weights.items():
        pay(task.members[i].address, miner_pool * weight // sum(weights.values()))
    pay(task.members[best].address, payment - sum(shares.values()))
    return shares


def compute_expiry_split(task: Task) -> dict:
    """Who gets the payment of a task that expires unfinalized: the training the
    chain saw is paid for, the rest goes back to the client. The chain saw
    training up to the iteration a majority of the unslashed members proved
    (`get_task_progress`: one member that skips ahead counts for nothing):
    that fraction of the payment goes to the unslashed members in proportion to their recorded
    iterations (rounding dust to the client). A client that withholds its
    test split so that nobody can evaluate, or evaluators that never report,
    cannot undo the pay of work done; a task expiring before any iteration
    was proven refunds the client in full."""
    progress = get_task_progress(task)
    eligible = [member for member in task.members if not member.slashed and member.recorded_iterations > 0]
    shares: dict = {}
    recorded = sum(member.recorded_iterations for member in eligible)
    if recorded > 0:
        earned = task.payment * progress // task.iterations
        for member in eligible:
            shares[member.address] = earned * member.recorded_iterations // recorded
    shares[task.client] = task.payment - sum(shares.values())   # the client holds no seat in its own task
    return shares


def get_evaluated_scores(task: Task, result: EvaluationResult, evaluate: Evaluate) -> dict:
    """Each scored member's score, by group index: the count its final model
    gets right, re-scored here (`evaluate`) and required to equal the
    result's. A final model is the member's signed IT_RES of the evaluated
    iteration, one per member, in group order; every model is of that one
    iteration (members are compared at one point of training), which is
    below the task's iterations and not older than the last iteration the
    task's progress reached (`get_task_progress`)."""
    assert len({scored.final_message.message.work.iteration for scored in result.models}) <= 1, \
        "final models must be of one iteration"
    scores: dict = {}
    for scored in result.models:
        signed = scored.final_message
        work = signed.message.work
        assert is_valid_signed_iteration_message(signed), "final model: bad signature"
        assert work.task_id == result.task_id, "final model: message is not for the task"
        member_index = get_member_index(task, work.miner)
        assert member_index is not None, "final model: miner is not a member of the task's group"
        assert all(member_index > index for index in scores), "final models must be in group order, one per member"
        assert work.iteration < task.iterations, "final model: iteration beyond the task's iterations"
        assert work.iteration + 1 >= get_task_progress(task), "final model: older than the task's progress"
        try:
            correct = evaluate(task, scored)
        except ReplayUnavailable as error:
            raise AssertionError("final model: test set or model unavailable for evaluation") from error
        assert scored.correct == correct, \
            f"final model of member {member_index}: score {scored.correct} is not the {correct} it gets"
        scores[member_index] = correct
    return scores


def process_evaluation_result(state: State, transaction: Transaction, result: EvaluationResult,
                              evaluate: Evaluate) -> None:
    """A selected evaluator reports the members' final models and their
    scores on the committed test set; each score is re-scored
    (`get_evaluated_scores`), so a wrong one makes the transaction invalid,
    and so does a test set that the client withheld from the network (the
    evaluation is unavailable). The payment is split (compute_fee_split) and
    the task is finalized."""
    task = state.tasks.get(result.task_id)
    assert task is not None, "unknown task"
    assert task.status == TASK_EVALUATION, "task is not in evaluation"
    assert transaction.sender in task.evaluators, "sender is not an evaluator of the task"
    scores = get_evaluated_scores(task, result, evaluate)
    for address, amount in sorted(compute_fee_split(task, scores, transaction.sender).items()):
        increase_balance(state, address, amount)
    set_task(state, result.task_id, task, status=TASK_FINALIZED, status_height=state.height)


def process_dispute(state: State, transaction: Transaction, dispute: Dispute, replay: Replay) -> None:
    """Slash a member's whole miner stake on proof of misbehaviour:
    equivocation (two different signed messages for one task and iteration),
    a broken link (signed messages for iterations i and i + 1 of one task,
    the later not starting from the state the earlier ended at: a member's
    states are one chain, each iteration trained from the last) or fraud (a
    signed message whose replay does not match). A FraudProof whose
    replay matches is a false accusation: it slashes nobody and burns
    FALSE_DISPUTE_PENALTY of the disputer's balance (its fee is paid too).
    The disputer gets SLASH_REWARD_SHARE_BP of the stake,
    the rest is burned; the member's recorded iterations are erased and it is
    marked slashed in the task (the same misbehaviour is punished once)."""
    evidence = dispute.evidence
    if isinstance(evidence, Equivocation):
        first, second = evidence.first, evidence.second
        assert is_valid_signed_iteration_message(first) and is_valid_signed_iteration_message(second), \
            "evidence: bad signature"
        a, b = first.message.work, second.message.work
        assert (a.task_id, a.iteration, a.miner) == (b.task_id, b.iteration, b.miner), \
            "evidence: messages are not for the same task, iteration and miner"
        assert first.message != second.message, "evidence: the messages are identical"
        task_id, miner = a.task_id, a.miner
    elif isinstance(evidence, BrokenLink):
        earlier, later = evidence.earlier, evidence.later
        assert is_valid_signed_iteration_message(earlier) and is_valid_signed_iteration_message(later), \
            "evidence: bad signature"
        a, b = earlier.message.work, later.message.work
        assert (a.task_id, a.miner) == (b.task_id, b.miner), "evidence: messages are not for the same task and miner"
        assert b.iteration == a.iteration + 1, "evidence: the messages are not of consecutive iterations"
        assert not is_chained(a, b), "evidence: the later message starts from the state the earlier ended at"
        task_id, miner = a.task_id, a.miner
    else:
        assert isinstance(evidence, FraudProof)
        assert is_valid_signed_iteration_message(evidence.message), "evidence: bad signature"
        task_id, miner = evidence.message.message.work.task_id, evidence.message.message.work.miner
    task = state.tasks.get(task_id)
    assert task is not None, "evidence: unknown task"
    member_index = get_member_index(task, miner)
    assert member_index is not None, "evidence: miner is not a member of the task's group"
    assert not task.members[member_index].slashed, "evidence: miner already slashed in this task"
    if isinstance(evidence, FraudProof):
        try:
            replayed = check_replay(task, evidence.message.message, replay)
        except ReplayUnavailable as error:
            raise AssertionError("evidence: iteration inputs unavailable for replay") from error
        if replayed:  # a false accusation: it stands, and costs the disputer
            assert get_balance(state, transaction.sender) >= FALSE_DISPUTE_PENALTY, \
                "evidence: replay matches the message, and the disputer cannot pay the false-accusation penalty"
            decrease_balance(state, transaction.sender, FALSE_DISPUTE_PENALTY)
            state.burned += FALSE_DISPUTE_PENALTY
            return
    key = StakeKey(owner=miner, role=ROLE_MINER)
    stake = state.stakes.get(key)
    assert stake is not None and stake.amount > 0, "miner has no stake to slash"
    del state.stakes[key]
    reward = stake.amount * SLASH_REWARD_SHARE_BP // BASIS_POINTS
    increase_balance(state, transaction.sender, reward)
    state.burned += stake.amount - reward
    members = list(task.members)
    members[member_index] = dataclasses.replace(members[member_index], recorded_iterations=0, slashed=True)
    set_task(state, task_id, task, members=members)


# ---------------------------------------------------------------------------
# The transition
# ---------------------------------------------------------------------------
def get_failure_reason(error: Exception) -> str:
    """Why processing failed: a failed assert's message, else the exception's kind and message."""
    if isinstance(error, AssertionError):
        return str(error) or "assertion failed"
    return f"{type(error).__name__}: {error}"


def process_block(state: State, block: Block, oracles: Oracles) -> None:
    """Apply `block` to `state` in place (asserts on any broken rule), up to the state root check."""
    process_block_header(state, block)
    process_stake_releases(state)
    process_task_lifecycle(state, block)
    process_pouw(state, block, oracles)
    process_transactions(state, block, oracles)
    process_rewards(state, block)
    process_difficulty(state, block)


def state_transition(state: State, block: Block, oracles: Oracles) -> State:
    """The state after `block`, or InvalidBlock(reason). `state` must be the
    post-state of the block's parent (the parent hash is checked against it)
    and is not modified. The header's state root must be the root of the
    result; nothing in the result depends on the header's state root, so a
    miner computes it by `process_block` on a copy before filling it in.
    Any exception while processing the block makes it invalid (the reason
    names it), a failed `assert` being the usual one: no input crashes a node."""
    post = get_primitives().copy_state(state)
    try:
        process_block(post, block, oracles)
        assert block.header.state_root == get_primitives().compute_state_root(post), "state root mismatch"
    except Exception as error:
        raise InvalidBlock(get_failure_reason(error)) from None
    return post


def apply_transaction(state: State, signed: SignedTransaction, fee_recipient: Address, oracles: Oracles) -> State:
    """The state after one transaction outside a block (mempool checks and test
    vectors), or InvalidTransaction(reason), for any exception as in
    `state_transition`. `state` is not modified."""
    post = get_primitives().copy_state(state)
    try:
        process_transaction(post, signed, fee_recipient, oracles)
    except Exception as error:
        raise InvalidTransaction(get_failure_reason(error)) from None
    return post
