"""Every protocol object as a container: chain configuration, state entries,
transactions, iteration messages, block headers and blocks.

Each is a frozen dataclass whose canonical encoding is its fields in order
(spec/encoding.py); its hash is SHA-256 of that encoding (`hash_object`).
`State` alone is mutable: the state transition works on a copy of it.
"""
from dataclasses import dataclass

from .constants import (
    EVALUATORS_PER_TASK, MAX_GENESIS_ENTRIES, MAX_GROUP_SIZE, MAX_MAP_ENTRIES, MAX_MERKLE_DEPTH, MAX_TASKS,
    MAX_TASK_DEFINITION_BYTES, MAX_TRANSACTIONS_PER_BLOCK, SUPERVISORS_PER_TASK,
)
from .encoding import ByteList, Container, List, Map, SortedSet, Union, boolean, int64, uint64
from .types import (
    Address, ChainId, Coin, Count, Hash32, Height, Iteration, Nonce, PublicKey, Role, Root,
    Signature, Target, TaskId, TaskStatus, Timestamp,
)


# ---------------------------------------------------------------------------
# Chain configuration (the values of a preset, fixed at genesis)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ChainConfig(Container):
    """The network's parameters; part of the state, so every rule reads them from there."""
    chain_id: ChainId                  # signed into every transaction
    target_block_time: uint64          # seconds the retarget aims for between blocks
    retarget_interval: uint64          # blocks between difficulty retargets
    initial_target: Target             # target of block 1
    max_nonces_per_iteration: uint64   # cap on the nonce allowance of one iteration
    work_units_per_nonce: uint64       # MACs of useful work that earn one nonce
    initial_block_reward: Coin         # reward of blocks 1 .. halving_interval - 1
    halving_interval: uint64           # the reward halves every this many blocks
    stake_lock_period: uint64          # blocks between Unstake and the stake's release
    miner_ticket_price: Coin           # stake per miner ticket
    supervisor_ticket_price: Coin      # stake per supervisor ticket
    evaluator_ticket_price: Coin       # stake per evaluator ticket
    training_start_delay: uint64       # blocks from group selection to training
    evaluation_period: uint64          # blocks before the evaluation deadline when evaluation opens
    min_transaction_fee: Coin          # smallest fee a transaction may pay


# ---------------------------------------------------------------------------
# Iteration messages (IT_RES)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class IterationWork(Container):
    """The work fields of an iteration message: what miner `miner` computed at
    iteration `iteration` of task `task_id`. Its hash seeds the iteration's
    nonces, so the only way to get other nonces is to do other work."""
    task_id: TaskId
    iteration: Iteration
    miner: Address
    state_before_root: Root                          # model state the iteration started from
    batch_index: Count                               # compute_batch_index(task, iteration, member index)
    batch_root: Root                                 # tensors root of that batch
    batch_proof: List(Root, MAX_MERKLE_DEPTH)         # Merkle proof of batch_root in the task's dataset root
    peer_update_roots: SortedSet(Root, MAX_GROUP_SIZE)  # the other members' iteration - 1 updates it applied
    update_root: Root                                # tensors root of this iteration's update
    state_after_root: Root                           # model state after the iteration
    loss: int64                                      # training loss, engine fixed point (informational)


@dataclass(frozen=True)
class IterationMessage(Container):
    """IT_RES: the work, plus the hash of the header this miner may mine with
    the iteration's nonces (compute_header_commitment). The commitment keys
    the iteration's input mask (pouw.compute_input_mask), so the work depends
    on it: another header needs another training step."""
    work: IterationWork
    header_commitment: Hash32


@dataclass(frozen=True)
class SignedIterationMessage(Container):
    """An iteration message signed by its miner over its signing root."""
    message: IterationMessage
    public_key: PublicKey
    signature: Signature


@dataclass(frozen=True)
class ReplayResult(Container):
    """What a replay of an iteration recomputes; must equal the message's fields."""
    update_root: Root
    state_after_root: Root


# ---------------------------------------------------------------------------
# Transactions
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Transfer(Container):
    """Move `amount` from the sender to `recipient`."""
    recipient: Address
    amount: Coin


@dataclass(frozen=True)
class Stake(Container):
    """Lock `amount` more of the sender's balance as stake for `role`."""
    role: Role
    amount: Coin


@dataclass(frozen=True)
class Unstake(Container):
    """Start releasing the sender's whole stake for `role` (paid back after the lock period)."""
    role: Role


@dataclass(frozen=True)
class SubmitTask(Container):
    """A client's training task; `payment` is escrowed until the task ends."""
    task_definition: ByteList(MAX_TASK_DEFINITION_BYTES)  # canonical JSON from bws.templates
    dataset_root: Root             # Merkle root of the batch roots, in batch order
    num_batches: Count             # number of batches under dataset_root
    test_set_hash: Hash32          # commitment to the withheld test set
    group_size: uint64             # miners in the group
    iterations: Count              # training iterations
    evaluation_deadline: Height    # the task expires if not finalized by this height (compute_expiry_split)
    payment: Coin                  # the fee for the work, escrowed


@dataclass(frozen=True)
class CancelTask(Container):
    """The client withdraws its task before training starts; the payment is refunded."""
    task_id: TaskId


@dataclass(frozen=True)
class ScoredModel(Container):
    """A member's final model and its score: the member's signed IT_RES of the
    evaluated iteration (the model is its `state_after_root`) and how many
    examples of the task's committed test set that model gets right."""
    final_message: SignedIterationMessage
    correct: Count


@dataclass(frozen=True)
class EvaluationResult(Container):
    """A selected evaluator's scores of the members' final models, in group
    order, on the test set whose root the task committed (a member left out
    scores nothing); every replaying node re-scores each model before it
    accepts the result, which finalizes the task."""
    task_id: TaskId
    models: List(ScoredModel, MAX_GROUP_SIZE)


@dataclass(frozen=True)
class Equivocation(Container):
    """Two different signed iteration messages of one miner for one (task, iteration)."""
    first: SignedIterationMessage
    second: SignedIterationMessage


@dataclass(frozen=True)
class FraudProof(Container):
    """A signed iteration message whose replay does not give its claimed roots."""
    message: SignedIterationMessage


@dataclass(frozen=True)
class BrokenLink(Container):
    """Two signed iteration messages of one miner for consecutive iterations of
    one task, the later not starting from the model state the earlier ended at."""
    earlier: SignedIterationMessage
    later: SignedIterationMessage


@dataclass(frozen=True)
class Dispute(Container):
    """Evidence of misbehaviour by a group member; slashes its miner stake."""
    evidence: Union(Equivocation, FraudProof, BrokenLink)


TransactionBody = Union(Transfer, Stake, Unstake, SubmitTask, CancelTask, EvaluationResult, Dispute)


@dataclass(frozen=True)
class Transaction(Container):
    """The signed part of a transaction: who, which nonce, on which chain, what fee, what."""
    chain_id: ChainId
    sender: Address
    nonce: Nonce
    fee: Coin
    body: TransactionBody


@dataclass(frozen=True)
class SignedTransaction(Container):
    """A transaction with the sender's public key and signature over its signing root."""
    transaction: Transaction
    public_key: PublicKey
    signature: Signature


# ---------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CommittedHeader(Container):
    """The header fields a miner commits to before it trains the iteration
    whose nonces mine the block: all but the state root (a function of the parent state and the block's contents, so not
    grindable; leaving it out keeps the state free to record the header) and
    the PoUW fields."""
    parent_hash: Hash32
    height: Height
    timestamp: Timestamp
    transactions_root: Root
    miner: Address
    target: Target


@dataclass(frozen=True)
class BlockHeader(Container):
    """A block header: the committed fields, then the proof-of-useful-work fields."""
    parent_hash: Hash32
    height: Height
    timestamp: Timestamp
    state_root: Root               # state root after this block
    transactions_root: Root        # Merkle root of the transactions' hashes
    miner: Address                 # receives reward and fees; the miner of the iteration
    target: Target
    task_id: TaskId                # PoUW: the task trained
    iteration: Iteration           # PoUW: the iteration whose nonces mined this block
    message_digest: Hash32         # PoUW: hash of that iteration's IterationMessage
    nonce_index: uint64            # PoUW: j < the iteration's nonce allowance
    nonce: Hash32                  # PoUW: compute_nonce(seed, j)


@dataclass(frozen=True)
class PouwProof(Container):
    """The signed IT_RES whose nonces mined the block; its header_commitment
    commits to the block's header."""
    message: SignedIterationMessage


@dataclass(frozen=True)
class Block(Container):
    """Header, transactions, and the PoUW proof (exactly one, none in genesis)."""
    header: BlockHeader
    transactions: List(SignedTransaction, MAX_TRANSACTIONS_PER_BLOCK)
    proofs: List(PouwProof, 1)


# ---------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Account(Container):
    """An account: spendable balance and the nonce its next transaction must carry."""
    balance: Coin
    nonce: Nonce


@dataclass(frozen=True)
class StakeKey(Container):
    """Which stake: the owner and the role."""
    owner: Address
    role: Role


@dataclass(frozen=True)
class StakeBalance(Container):
    """A stake; while `release_height` is 0 it is active and counts as tickets,
    otherwise it is being released and is paid back at that height."""
    amount: Coin
    release_height: Height


@dataclass(frozen=True)
class Member(Container):
    """A miner of a task group and what the chain recorded of its work."""
    address: Address
    recorded_iterations: Count      # iterations proven by blocks (the fee split's weight)
    next_minable_iteration: Iteration  # a block may use only a later iteration of this member
    slashed: boolean                # proven to cheat in this task: no more blocks, no fee, no second slash


@dataclass(frozen=True)
class Task(Container):
    """A task in the state, from submission to its terminal status."""
    client: Address
    task_definition: ByteList(MAX_TASK_DEFINITION_BYTES)
    work_units: uint64             # compute_work_units of the definition, fixed at submission
    dataset_root: Root
    num_batches: Count
    test_set_hash: Hash32
    group_size: uint64
    iterations: Count
    evaluation_deadline: Height
    payment: Coin                  # escrowed until finalized, cancelled or expired
    status: TaskStatus
    status_height: Height          # height at which the task entered `status`
    members: List(Member, MAX_GROUP_SIZE)
    supervisors: List(Address, SUPERVISORS_PER_TASK)
    evaluators: List(Address, EVALUATORS_PER_TASK)


@dataclass
class State(Container):
    """The whole chain state after a block. Mutable: state_transition works on a copy."""
    config: ChainConfig
    height: Height
    latest_block_header: BlockHeader   # with state_root zeroed (filled in by the next block)
    target: Target                     # target the next block must carry
    retarget_timestamp: Timestamp      # timestamp of the block that opened the retarget window
    genesis_supply: Coin               # coins allocated at genesis
    minted: Coin                       # block rewards minted since genesis
    burned: Coin                       # slashed stake burned since genesis
    accounts: Map(Address, Account, MAX_MAP_ENTRIES)
    stakes: Map(StakeKey, StakeBalance, MAX_MAP_ENTRIES)
    tasks: Map(TaskId, Task, MAX_MAP_ENTRIES)
    task_schedule: Map(Height, SortedSet(TaskId, MAX_TASKS), MAX_TASKS)  # the tasks the lifecycle visits at a height


# ---------------------------------------------------------------------------
# Genesis
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GenesisAccount(Container):
    """A funded account at genesis."""
    address: Address
    balance: Coin


@dataclass(frozen=True)
class GenesisStake(Container):
    """A stake at genesis (so the first task can find a group)."""
    owner: Address
    role: Role
    amount: Coin


@dataclass(frozen=True)
class GenesisTask(Container):
    """A task in TRAINING from genesis, with its group given: blocks need a
    task in training, so the first blocks are mined on these."""
    client: Address
    task_definition: ByteList(MAX_TASK_DEFINITION_BYTES)
    dataset_root: Root
    num_batches: Count
    test_set_hash: Hash32
    iterations: Count
    evaluation_deadline: Height
    payment: Coin
    members: List(Address, MAX_GROUP_SIZE)
    supervisors: List(Address, SUPERVISORS_PER_TASK)
    evaluators: List(Address, EVALUATORS_PER_TASK)


@dataclass(frozen=True)
class GenesisConfig(Container):
    """Everything genesis is built from: the preset, the initial allocation, the first tasks."""
    config: ChainConfig
    timestamp: Timestamp
    accounts: List(GenesisAccount, MAX_GENESIS_ENTRIES)
    stakes: List(GenesisStake, MAX_GENESIS_ENTRIES)
    tasks: List(GenesisTask, MAX_GENESIS_ENTRIES)
