"""Proof of useful work: nonces derived from training iterations.

An iteration message (IT_RES, spec/containers.py) of miner M at iteration i
of task T commits to the work it did. From it M derives a bounded number of
nonces; a block is valid when one of them makes the block's work hash ≤ the
target. The rules and the attacks they stop:

- *Grinding the nonce*: the nonce seed is the hash of the message's work
  fields only (`compute_nonce_seed`), and an iteration gives at most
  `get_nonce_allowance` nonces (≤ max_nonces_per_iteration), in proportion to
  the work it did. More nonces need more (replayable) iterations.
- *Grinding the header* (parent, timestamp, transactions): IT_RES(i) names
  the one header its nonces may mine (`compute_header_commitment`), and that
  commitment keys the iteration itself: the batch is trained with a mask of
  dropped input values drawn from it (`compute_input_mask`), so the update
  and the new state, hence the nonce seed, depend on the header. Trying
  another header, another parent or another timestamp takes another training
  step, which every verifier replays. Two versions of one IT_RES are an
  equivocation (spec/state_transition.py `process_dispute`): an iteration
  mines one header, on one fork.
- *Fake iterations*: a block carries the signed IT_RES(i) and every verifier
  replays it (`replay`, spec/state_transition.py): a single differing bit of
  the update or the new state rejects the block.
- *Choosing the data*: the batch an iteration trains on is fixed by the task's
  schedule (`compute_batch_index`) and proven against the dataset root the
  client committed.
"""
import hashlib

import numpy as np

from .constants import (
    DOMAIN_HEADER_COMMITMENT, DOMAIN_INPUT_MASK, DOMAIN_ITERATION_MESSAGE, DOMAIN_NONCE, DOMAIN_NONCE_SEED,
    DOMAIN_POW, INPUT_DROP_THRESHOLD,
)
from .containers import (
    BlockHeader, ChainConfig, CommittedHeader, IterationMessage, IterationWork, SignedIterationMessage, Task,
)
from .crypto import compute_address, get_public_key, sign
from .encoding import encode
from .hashing import hash_bytes, hash_object
from .primitives import get_primitives
from .types import Hash32, TaskId, Work


def compute_message_digest(message: IterationMessage) -> Hash32:
    """Digest of an iteration message (what a block header names)."""
    return Hash32(hash_object(message))


def compute_iteration_message_signing_root(message: IterationMessage) -> Hash32:
    """What a miner signs: hash(DOMAIN_ITERATION_MESSAGE ‖ encode(message))."""
    return Hash32(hash_bytes(DOMAIN_ITERATION_MESSAGE + encode(message)))


def sign_iteration_message(secret_key: bytes, message: IterationMessage) -> SignedIterationMessage:
    """The miner's signed IT_RES."""
    return SignedIterationMessage(
        message=message,
        public_key=get_public_key(secret_key),
        signature=sign(secret_key, compute_iteration_message_signing_root(message)),
    )


def is_valid_signed_iteration_message(signed: SignedIterationMessage) -> bool:
    """Whether the message is signed by the key of the miner it names."""
    return (compute_address(signed.public_key) == signed.message.work.miner
            and get_primitives().is_valid_signature(
                signed.public_key, compute_iteration_message_signing_root(signed.message), signed.signature))


def is_chained(earlier: IterationWork, later: IterationWork) -> bool:
    """Whether `later`, the next iteration of `earlier`'s miner in its task,
    starts from the model state `earlier` ended at: a member's states are one
    chain, each iteration trained from the last (a `BrokenLink` otherwise)."""
    return later.state_before_root == earlier.state_after_root


def compute_nonce_seed(work: IterationWork) -> Hash32:
    """Seed of an iteration's nonces: hash of the work fields only (not the
    header commitment, not the signature), so the seed changes only with the work."""
    return Hash32(hash_bytes(DOMAIN_NONCE_SEED + encode(work)))


def compute_nonce(seed: Hash32, nonce_index: int) -> Hash32:
    """Nonce number `nonce_index` of a seed: hash(DOMAIN_NONCE ‖ seed ‖ u64le(index))."""
    return Hash32(hash_bytes(DOMAIN_NONCE + seed + nonce_index.to_bytes(8, "little")))


def get_nonce_allowance(config: ChainConfig, task: Task) -> int:
    """Nonces one iteration of `task` earns: its work units / work_units_per_nonce,
    at most max_nonces_per_iteration. A task whose iteration earns none is
    refused (`is_nonce_earning`): a trivial model buys no lottery ticket."""
    return min(config.max_nonces_per_iteration, task.work_units // config.work_units_per_nonce)


def is_nonce_earning(config: ChainConfig, work_units: int) -> bool:
    """Whether an iteration of `work_units` earns at least one nonce."""
    return work_units >= config.work_units_per_nonce


def get_committed_header(header: BlockHeader) -> CommittedHeader:
    """The part of a header an iteration commits to: all but the state root and the PoUW fields."""
    return CommittedHeader(
        parent_hash=header.parent_hash, height=header.height, timestamp=header.timestamp,
        transactions_root=header.transactions_root,
        miner=header.miner, target=header.target,
    )


def compute_header_commitment(header: BlockHeader) -> Hash32:
    """The value IT_RES(i).header_commitment must hold for a block mined with IT_RES(i)'s nonces."""
    return Hash32(hash_bytes(DOMAIN_HEADER_COMMITMENT + encode(get_committed_header(header))))


def compute_input_mask_seed(task_id: TaskId, iteration: int, header_commitment: Hash32) -> Hash32:
    """Seed of the input mask of iteration `iteration` of `task_id` trained
    for the header whose commitment is `header_commitment`."""
    return Hash32(hash_bytes(DOMAIN_INPUT_MASK + task_id + iteration.to_bytes(8, "little") + header_commitment))


def get_input_mask_seed(message: IterationMessage) -> Hash32:
    """The input mask seed of the iteration `message` claims."""
    return compute_input_mask_seed(message.work.task_id, message.work.iteration, message.header_commitment)


def compute_input_mask(seed: Hash32, count: int) -> bytes:
    """One byte per input value of the batch (its `x`, in row-major order):
    SHAKE-256 of the seed, `count` bytes long. The replayed iteration trains
    on the batch with every value whose byte is below INPUT_DROP_THRESHOLD
    set to 0 (input dropout at rate 1/16): a different header changes the
    inputs of every example, so its training step is a new one."""
    return hashlib.shake_256(seed).digest(count)


def get_masked_batch(batch: dict, seed: Hash32) -> dict:
    """The batch an iteration trains on: the inputs `x` with every value whose
    byte of the mask of `seed` is below INPUT_DROP_THRESHOLD set to 0; the
    labels unchanged."""
    x = np.asarray(batch["x"])
    mask = np.frombuffer(compute_input_mask(seed, x.size), np.uint8).reshape(x.shape)
    return {**batch, "x": np.where(mask < INPUT_DROP_THRESHOLD, 0, x).astype(x.dtype)}


def compute_pow_hash(header: BlockHeader) -> Hash32:
    """The block's work hash: hash(DOMAIN_POW ‖ encode(committed header) ‖ nonce)."""
    return Hash32(hash_bytes(DOMAIN_POW + encode(get_committed_header(header)) + header.nonce))


def is_valid_pow(header: BlockHeader) -> bool:
    """Whether the work hash, as a big-endian integer, is ≤ the header's target."""
    return int.from_bytes(compute_pow_hash(header), "big") <= header.target


def compute_block_work(target: int) -> Work:
    """Expected hashes to find a block at `target`; fork choice sums these."""
    return Work(2**256 // (target + 1))
