"""Genesis: the first state and block, from a GenesisConfig.

Rule: every block after genesis carries exactly one proof of useful work, on
a task in TRAINING; the genesis block alone carries none. So the chain needs a
task in training to advance: a genesis configuration names one or more tasks
that are in TRAINING from height 0 with their group given (the devnet's is a
long-running task), and client tasks submitted meanwhile get their groups by
the normal draw. Liveness condition: if every task ended and none were in
training, no block could be mined; a network keeps a long-running task in
its genesis (docs/spec.md).
"""
import dataclasses

from .constants import DOMAIN_TASK_ID, MAX_TASK_ITERATIONS, MAX_TASKS, ROLES, TASK_TRAINING
from .containers import Account, Block, BlockHeader, GenesisConfig, Member, StakeBalance, StakeKey, State, Task
from .hashing import ZERO_HASH, hash_bytes, hash_object
from .pouw import is_nonce_earning
from .state_transition import compute_block_hash, compute_state_root, compute_transactions_root, schedule_task
from .tasks import TaskDefinitionError, compute_work_units, is_dataset_large_enough
from .types import Address, Hash32, TaskId


class InvalidGenesis(ValueError):
    """A genesis configuration that cannot start a chain."""


def get_genesis_header(genesis: GenesisConfig) -> BlockHeader:
    """The genesis header with a zero state root (as kept in the state)."""
    return BlockHeader(
        parent_hash=ZERO_HASH, height=0, timestamp=genesis.timestamp, state_root=ZERO_HASH,
        transactions_root=compute_transactions_root([]), miner=Address(), target=genesis.config.initial_target,
        task_id=ZERO_HASH, iteration=0, message_digest=ZERO_HASH, nonce_index=0, nonce=ZERO_HASH,
    )


def compute_genesis_task_id(genesis: GenesisConfig, task_index: int) -> TaskId:
    """Id of genesis task number `task_index`: hash(DOMAIN_TASK_ID ‖
    hash(genesis config) ‖ u64le(index)). It names the network, so a miner in
    the genesis tasks of two networks never signs two messages for one
    (task, iteration) — which would be slashable equivocation — and its
    preimage is longer than a submitted task's, so the two never collide."""
    return TaskId(hash_bytes(DOMAIN_TASK_ID + hash_object(genesis) + task_index.to_bytes(8, "little")))


def get_genesis_task(genesis: GenesisConfig, task_index: int) -> tuple:
    """(task id, Task) of genesis task number `task_index`, in TRAINING from height 0."""
    genesis_task = genesis.tasks[task_index]
    try:
        work_units = compute_work_units(genesis_task.task_definition)
    except TaskDefinitionError as error:
        raise InvalidGenesis(f"genesis task {task_index}: {error}") from None
    seats = list(genesis_task.members) + list(genesis_task.supervisors) + list(genesis_task.evaluators)
    if not genesis_task.members or len(set(seats)) != len(seats):
        raise InvalidGenesis(f"genesis task {task_index}: needs members, and distinct seats")
    if genesis_task.num_batches == 0 or genesis_task.iterations == 0:
        raise InvalidGenesis(f"genesis task {task_index}: needs batches and iterations")
    if not is_nonce_earning(genesis.config, work_units):
        raise InvalidGenesis(f"genesis task {task_index}: {work_units} work units earn no nonce "
                             f"({genesis.config.work_units_per_nonce} a nonce)")
    if not is_dataset_large_enough(genesis_task.iterations, len(genesis_task.members), genesis_task.num_batches):
        raise InvalidGenesis(f"genesis task {task_index}: {genesis_task.iterations} iterations of "
                             f"{len(genesis_task.members)} members do not fit {genesis_task.num_batches} batches "
                             f"(each batch is trained once, at most {MAX_TASK_ITERATIONS} iterations)")
    task = Task(
        client=genesis_task.client, task_definition=genesis_task.task_definition, work_units=work_units,
        dataset_root=genesis_task.dataset_root, num_batches=genesis_task.num_batches,
        test_set_hash=genesis_task.test_set_hash, group_size=len(genesis_task.members),
        iterations=genesis_task.iterations, evaluation_deadline=genesis_task.evaluation_deadline,
        payment=genesis_task.payment, status=TASK_TRAINING, status_height=0,
        members=[Member(address=a, recorded_iterations=0, next_minable_iteration=0, slashed=False)
                 for a in genesis_task.members],
        supervisors=genesis_task.supervisors, evaluators=genesis_task.evaluators,
    )
    return compute_genesis_task_id(genesis, task_index), task


def create_genesis_state(genesis: GenesisConfig) -> State:
    """State at height 0: the funded accounts (nonce 0), the initial stakes
    (active) and the genesis tasks (escrow included); the supply is their sum.
    Each address is funded at most once, each (owner, role) staked at most once."""
    addresses = [a.address for a in genesis.accounts]
    if len(set(addresses)) != len(addresses):
        raise InvalidGenesis("an address is funded twice")
    keys = [StakeKey(owner=s.owner, role=s.role) for s in genesis.stakes]
    if len(set(keys)) != len(keys):
        raise InvalidGenesis("an (owner, role) is staked twice")
    if any(s.role not in ROLES for s in genesis.stakes):
        raise InvalidGenesis("unknown stake role")
    if genesis.config.initial_target == 0 or genesis.config.retarget_interval == 0 \
            or genesis.config.halving_interval == 0 or genesis.config.work_units_per_nonce == 0:
        raise InvalidGenesis("initial target, retarget interval, halving interval and work units per nonce must be positive")
    if len(genesis.tasks) > MAX_TASKS:
        raise InvalidGenesis(f"{len(genesis.tasks)} genesis tasks: the state holds at most {MAX_TASKS}")
    tasks = dict(get_genesis_task(genesis, index) for index in range(len(genesis.tasks)))
    supply = (sum(a.balance for a in genesis.accounts) + sum(s.amount for s in genesis.stakes)
              + sum(t.payment for t in genesis.tasks))
    if supply >= 2**64:
        raise InvalidGenesis("genesis supply does not fit a Coin")
    state = State(
        config=genesis.config, height=0, latest_block_header=get_genesis_header(genesis),
        target=genesis.config.initial_target, retarget_timestamp=genesis.timestamp,
        genesis_supply=supply, minted=0, burned=0,
        accounts={a.address: Account(balance=a.balance, nonce=0) for a in genesis.accounts},
        stakes={key: StakeBalance(amount=s.amount, release_height=0) for key, s in zip(keys, genesis.stakes)},
        tasks=tasks, task_schedule={},
    )
    for task_id, task in sorted(tasks.items()):
        schedule_task(state, task_id, task)
    return state


def get_genesis_block(state: State) -> Block:
    """The genesis block of a genesis state: its header with the state root filled in, no transactions, no proof."""
    header = dataclasses.replace(state.latest_block_header, state_root=compute_state_root(state))
    return Block(header=header, transactions=[], proofs=[])


def compute_genesis_hash(genesis: GenesisConfig) -> Hash32:
    """Hash of the genesis block of `genesis`: the chain's identity."""
    return compute_block_hash(get_genesis_block(create_genesis_state(genesis)))
