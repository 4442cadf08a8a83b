"""The task lifecycle, group selection and the work a task's iteration does.

    SUBMITTED ──(next block: enough staked tickets)──▶ GROUP_SELECTED
    SUBMITTED ──(next block: too few staked tickets)──▶ EXPIRED (refunded)
    GROUP_SELECTED ──(training_start_delay blocks)──▶ TRAINING
    TRAINING ──(a majority of its members proved the final iteration, or evaluation_deadline - evaluation_period)──▶ EVALUATION
    EVALUATION ──(EvaluationResult by a selected evaluator)──▶ FINALIZED (payment split)
    SUBMITTED ──(CancelTask by the client)──▶ CANCELLED (refund)
    any non-terminal ──(height > evaluation_deadline)──▶ EXPIRED (proven training paid, the rest refunded)
    FINALIZED, CANCELLED, EXPIRED ──(stake_lock_period blocks: its evidence expires)──▶ removed from the state

Threats:
- *Sybil groups*: members, supervisors and evaluators are drawn at random
  in proportion to staked tickets (`compute_group`), so controlling a group
  needs a matching share of all stake; the draw uses the hash of the block
  that included the task, unknown to the client when it signed, and one
  address holds at most one seat per task; the client holds none.
- *Data withholding by the client*: the test set stays secret (committed by
  hash) until evaluation, so miners cannot train on it; if the client never
  reveals it, nobody can evaluate and the task expires, but the training the
  chain saw proven is paid for all the same (`compute_expiry_split`): a
  client cannot keep the models (fetchable by the roots the members signed)
  and its fee by withholding the test set. Withholding by a
  miner of its iteration inputs makes its block unreplayable, hence invalid.
- *Skipping to the end* (h6): a member may prove a late iteration on a
  state it never trained to (a block replays one step, not the steps before
  it). What the chain counts as the task's progress is what a majority of
  its unslashed members proved (`get_task_progress`): one skipper neither
  opens evaluation early nor makes an expiring task count as trained.
"""
import json
import math

from .constants import (
    DOMAIN_GROUP_SELECTION, DOMAIN_TASK_ID, EVALUATORS_PER_TASK, MAX_TASK_DEFINITION_DEPTH,
    MAX_TASK_DEFINITION_INTEGER_DIGITS, MAX_TASK_ITERATIONS, ROLE_EVALUATOR, ROLE_MINER,
    ROLE_SUPERVISOR, SUPERVISORS_PER_TASK, TASK_EVALUATION, TASK_GROUP_SELECTED, TASK_SUBMITTED, TASK_TRAINING,
    TERMINAL_TASK_STATUSES, WORK_PASSES_PER_ITERATION,
)
from .containers import ChainConfig, Member, State, Task
from .hashing import hash_bytes
from .models import ModelSpec, ModelSpecError
from .types import Address, ChainId, Hash32, TaskId


class TaskDefinitionError(ValueError):
    """A task definition the spec cannot read (not canonical JSON, or a field it needs is missing or wrong)."""


def compute_task_id(chain_id: ChainId, client: Address, nonce: int) -> TaskId:
    """Id of the task submitted by `client` in its transaction number `nonce` on chain `chain_id` (unique by
    replay protection; the chain id keeps a client's tasks on two networks apart, so a miner in both groups
    cannot be accused of equivocating with its messages of the other network)."""
    return TaskId(hash_bytes(DOMAIN_TASK_ID + chain_id.to_bytes(4, "little") + client
                             + nonce.to_bytes(8, "little")))


# ---------------------------------------------------------------------------
# Reading the task definition and counting its work
# ---------------------------------------------------------------------------
def compute_json_depth(text: str) -> int:
    """How deeply arrays and objects nest in a JSON text (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_json_integer(digits: str) -> int:
    """An integer of the task definition, at most MAX_TASK_DEFINITION_INTEGER_DIGITS digits long."""
    if len(digits.lstrip("-")) > MAX_TASK_DEFINITION_INTEGER_DIGITS:
        raise TaskDefinitionError(f"an integer of {len(digits.lstrip('-'))} digits "
                                  f"(at most {MAX_TASK_DEFINITION_INTEGER_DIGITS})")
    return int(digits)


def parse_task_definition(data: bytes) -> dict:
    """The task definition as a dict. It must be canonical JSON (UTF-8, keys
    sorted, separators "," and ":", no whitespace), so that one task has one
    byte form and one hash, nested at most MAX_TASK_DEFINITION_DEPTH deep
    with integers of at most MAX_TASK_DEFINITION_INTEGER_DIGITS digits (so no
    verdict depends on the interpreter's recursion or digit limits); the spec
    reads only `model` (the engine model description, spec/models.py) and
    `dataset.batch_size`."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as error:
        raise TaskDefinitionError(f"not UTF-8 JSON: {error}") from None
    if compute_json_depth(text) > MAX_TASK_DEFINITION_DEPTH:
        raise TaskDefinitionError(f"JSON nested deeper than {MAX_TASK_DEFINITION_DEPTH}")
    try:
        definition = json.loads(text, parse_int=parse_json_integer)
    except json.JSONDecodeError as error:
        raise TaskDefinitionError(f"not UTF-8 JSON: {error}") from None
    if not isinstance(definition, dict):
        raise TaskDefinitionError("the task definition must be a JSON object")
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if canonical != bytes(data):
        raise TaskDefinitionError("not canonical JSON (sorted keys, no whitespace, UTF-8)")
    if not isinstance(definition.get("model"), dict):
        raise TaskDefinitionError("missing object field 'model'")
    dataset = definition.get("dataset")
    if not isinstance(dataset, dict) or not _is_positive_int(dataset.get("batch_size")):
        raise TaskDefinitionError("missing positive integer field 'dataset.batch_size'")
    return definition


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def compute_model_macs(model) -> int:
    """Multiply-accumulates of one example's forward pass through the task's
    model (spec/models.py), counted where the canonical engine spends them:
    in contractions (dense, conv2d), each MAC taken `slices`² times (every
    operand is split into `slices` int8 digits and every pair of digits is
    multiplied). Pooling, activations and reshapes are element-wise work, a
    small fraction of a contraction's, and count nothing. A model the engine
    cannot run is a TaskDefinitionError."""
    try:
        spec = ModelSpec.from_dict(model)
    except ModelSpecError as error:
        raise TaskDefinitionError(f"model: {error}") from None
    macs = 0
    for layer in spec.layer_shapes():
        if layer.config["type"] == "dense":
            macs += layer.in_shape[0] * layer.out_shape[0]
        elif layer.config["type"] == "conv2d":
            kernel_h, kernel_w = layer.config["kernel_size"]
            macs += math.prod(layer.out_shape) * kernel_h * kernel_w * layer.in_shape[2]
    return macs * spec.slices ** 2


def compute_work_units(task_definition: bytes) -> int:
    """Work of one iteration: contraction MACs per example (compute_model_macs)
    × batch size × 3 (forward, backward to activations, backward to weights)."""
    definition = parse_task_definition(task_definition)
    return compute_model_macs(definition["model"]) * definition["dataset"]["batch_size"] * WORK_PASSES_PER_ITERATION


def compute_batch_index(task: Task, iteration: int, member_index: int) -> int:
    """The batch member `member_index` trains on at `iteration`: the task's
    batches in order, dealt round-robin to the members. It never wraps around
    (`is_dataset_large_enough`): each batch is trained on once, so one training
    step fits one (member, iteration) only."""
    return iteration * task.group_size + member_index


def is_dataset_large_enough(iterations: int, group_size: int, num_batches: int) -> bool:
    """Whether `iterations` of a group of `group_size` fit the dataset without
    training on a batch twice. Threat stopped: *one step, many iterations* —
    if the schedule wrapped, a step on batch b would be the same computation at
    every iteration dealt b, and where the optimizer does not depend on the
    step (SGD; Adam once its bias corrections reach 1) it would earn nonces at
    each of them for one replayed training step."""
    return 0 < iterations <= MAX_TASK_ITERATIONS and iterations * group_size <= num_batches


# ---------------------------------------------------------------------------
# Group selection
# ---------------------------------------------------------------------------
def get_ticket_price(config: ChainConfig, role: int) -> int:
    """Stake that buys one ticket of `role`."""
    return {ROLE_MINER: config.miner_ticket_price, ROLE_SUPERVISOR: config.supervisor_ticket_price,
            ROLE_EVALUATOR: config.evaluator_ticket_price}[role]


def get_tickets(state: State, role: int) -> list[tuple[Address, int]]:
    """(owner, tickets) of every active stake of `role` with at least one ticket, by owner."""
    price = get_ticket_price(state.config, role)
    tickets = [(key.owner, stake.amount // price) for key, stake in state.stakes.items()
               if key.role == role and stake.release_height == 0 and stake.amount >= price]
    return sorted(tickets)


def compute_draw(seed: Hash32, role: int, draw: int, total_tickets: int) -> int:
    """Ticket number drawn for seat `draw` of `role`: a uniform value below `total_tickets`."""
    digest = hash_bytes(DOMAIN_GROUP_SELECTION + seed + bytes([role]) + draw.to_bytes(4, "little"))
    return int.from_bytes(digest, "big") % total_tickets


def draw_seats(state: State, seed: Hash32, role: int, seats: int, excluded: set) -> list[Address] | None:
    """`seats` distinct owners of `role` tickets, not in `excluded`, drawn in
    proportion to tickets without replacement; None if there are too few."""
    candidates = [(owner, tickets) for owner, tickets in get_tickets(state, role) if owner not in excluded]
    chosen = []
    for draw in range(seats):
        total = sum(tickets for _, tickets in candidates)
        if total == 0:
            return None
        ticket = compute_draw(seed, role, draw, total)
        for position, (owner, tickets) in enumerate(candidates):
            if ticket < tickets:
                chosen.append(owner)
                del candidates[position]
                break
            ticket -= tickets
    return chosen


def compute_group(state: State, task_id: TaskId, task: Task, block_hash: Hash32):
    """The task's (members, supervisors, evaluators), drawn from staked tickets
    with seed hash(block_hash ‖ task_id); None while there are too few stakers."""
    seed = Hash32(hash_bytes(block_hash + task_id))
    excluded = {task.client}
    members = draw_seats(state, seed, ROLE_MINER, task.group_size, excluded)
    if members is None:
        return None
    supervisors = draw_seats(state, seed, ROLE_SUPERVISOR, SUPERVISORS_PER_TASK, excluded | set(members))
    if supervisors is None:
        return None
    evaluators = draw_seats(state, seed, ROLE_EVALUATOR, EVALUATORS_PER_TASK,
                            excluded | set(members) | set(supervisors))
    if evaluators is None:
        return None
    return ([Member(address=a, recorded_iterations=0, next_minable_iteration=0, slashed=False) for a in members],
            supervisors, evaluators)


def get_task_progress(task: Task) -> int:
    """The iterations a majority of the task's unslashed members proved: the
    highest p such that more than half of them have their next minable
    iteration at p or beyond (0 when every member was slashed)."""
    reached = sorted((member.next_minable_iteration for member in task.members if not member.slashed), reverse=True)
    return reached[len(reached) // 2] if reached else 0


def get_lifecycle_height(config: ChainConfig, task: Task) -> int:
    """The height at which `process_task_lifecycle` next has something to do
    for `task`, counted from the block that gave it its status (a task moves
    at most one step a block): the draw of its group the block after its
    submission, training `training_start_delay` blocks after the draw,
    evaluation `evaluation_period` blocks before the deadline, expiry the
    block after it, removal `stake_lock_period` blocks after it ended."""
    if task.status in TERMINAL_TASK_STATUSES:
        due = task.status_height + config.stake_lock_period
    else:
        due = {TASK_SUBMITTED: task.status_height + 1,
               TASK_GROUP_SELECTED: task.status_height + config.training_start_delay,
               TASK_TRAINING: task.evaluation_deadline - config.evaluation_period,
               TASK_EVALUATION: task.evaluation_deadline + 1}[task.status]
        due = min(due, task.evaluation_deadline + 1)
    return max(due, task.status_height + 1)


def get_member_index(task: Task, address: Address) -> int | None:
    """Position of `address` in the task's group, or None."""
    for index, member in enumerate(task.members):
        if member.address == address:
            return index
    return None
