"""Block and transaction validation, fork choice and reorgs, on the DuckDB store.

How a block is checked (cheapest first, so junk costs little):

1. `precheck_block`: the node's own stateless checks, with signatures through
   libsecp256k1 (node/keys.py): size and shape, one PoUW proof, both iteration
   messages signed by the header's miner, message digest, a nonce index below
   the chain's cap on any allowance and the nonce derived from the work, work
   hash ≤ target, transactions root, every transaction's
   chain id, key and signature, timestamp not too far in the future. Gossip
   runs this before relaying; a block that fails it never costs a replay.
2. The parent must be known (else the block waits as an orphan and the node
   asks peers for the parent).
3. A block that does not extend the head (a side block) is admitted with
   cheap checks against the head (`Chain._admit_side_block`): no deeper than
   SIDE_BRANCH_DEPTH below it, its miner staked and a member of the task it
   claims, its target no easier than the retarget rule allows since the fork
   point. Side blocks deeper than SIDE_BRANCH_DEPTH are pruned as the head
   moves, with their descendants.
4. Fork choice by most cumulative work (sum of `compute_block_work(target)`
   over the blocks after genesis), on equal work the lowest hash: the spec's
   `get_head`. Side blocks get the checks above when they arrive and the
   full transition when their branch would become the head.
5. The state transition: the node's own (node/transition.py), run on the
   parent's state. It gives exactly the spec's `state_transition` verdict,
   reason, post-state and root, but copies only the state's maps (entries are
   frozen and shared), verifies signatures through libsecp256k1 and not at all
   when precheck_block already did, and computes the state root from leaf
   hashes cached per entry, re-hashing only what the block replaced. Property
   tests hold it to the spec (property_tests/test_node_transition_vs_spec.py),
   and the spec's vectors to the spec's reasons. A reorg first runs the whole
   new branch in memory, on the fork point's state (the head state with the
   main chain's undo records applied: `ChainStore.main_chain_state`); only a
   branch found valid throughout is then written, disconnect to the fork
   point and connect, as ONE store transaction. An invalid branch leaves the
   store untouched but for its own side blocks, deleted.

Assumevalid, as Bitcoin Core's: a node that joins late finds the inputs of old
iterations gone (peers keep recent tensors only), so their replay is
unavailable for good. A block at least `assume_valid_depth` blocks below the
best head a peer announced (sync passes that height to `import_block`) whose
replay is unavailable takes `trusting_transition` instead of waiting as "not
validated" forever: its iterations' claimed roots, the fraud-proof outcomes its
state root commits to, and every other rule (signatures, proofs, the state
root). A replay that runs and mismatches still rejects it; gossip passes no
height, so a block near the tip is never assumed.

Transactions for the mempool are checked against the head state without
running the transition: envelope (chain id, key, low-S signature), fee ≥ the
minimum, nonce not already used, balance covering the fee and what the body
spends. The full rules run when a block including them is built or checked.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable, TypeVar
from bws.spec import containers as C
from bws.spec.constants import MAX_FUTURE_BLOCK_SECONDS, MAX_TARGET, RETARGET_CLAMP, ROLE_MINER
from bws.spec.encoding import DecodeError, decode, encode
from bws.spec.hashing import hash_bytes
from bws.spec.fork_choice import is_timestamp_acceptable
from bws.spec.pouw import (
    compute_block_work, compute_header_commitment, compute_message_digest, compute_nonce, compute_nonce_seed, is_valid_pow,
)
from bws.spec.state_transition import (
    InvalidBlock, Oracles, ReplayUnavailable, compute_block_hash, compute_transaction_signing_root,
    compute_transactions_root,
)
from bws.spec.tasks import get_member_index

from . import keys
from .transition import is_signed_iteration_message_valid, state_transition, trusting_transition
from .mempool import PoolTransaction
from .store import BlockRecord, ChainStore, StoreError, transaction_id

Prefetch = Callable[[C.Task, C.IterationMessage], None]
"""Fetches the inputs of an iteration's replay into the node's cache; ReplayUnavailable if it cannot."""
Received = TypeVar("Received", C.Block, C.SignedTransaction)

MAX_BLOCK_BYTES = 8 * 1024 * 1024
MAX_TRANSACTION_BYTES = 128 * 1024
MAX_ORPHANS = 256
MAX_ORPHAN_BYTES = 64 * 1024 * 1024
MAX_REMEMBERED_INVALID = 10_000
UNAVAILABLE_RETRY_SECONDS = 5.0       # a block whose replay inputs were unavailable is tried again after this,
UNAVAILABLE_RETRY_MAX_SECONDS = 300.0  # doubling at each failure up to this
ASSUME_VALID_DEPTH = 1000   # default depth below a peer's announced head for assumevalid (module docstring); 0: never
SIDE_BRANCH_DEPTH = 100  # honest forks end within a few blocks; deeper side data only costs disk (and is not taken)


def _content_hash(block: C.Block) -> bytes:
    return bytes(hash_bytes(encode(block)))


class ValidationError(Exception):
    """A block or transaction was rejected; `reason` says which rule it broke."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class BlockRejected(ValidationError):
    """The block is invalid (a peer that sends it is misbehaving)."""


class BlockFromFuture(ValidationError):
    """The block's timestamp is too far ahead of this node's clock: held back,
    not invalid (the spec's `is_timestamp_acceptable`); it may be offered again later."""


class BlockNotValidated(ValidationError):
    """The inputs of the block's iteration could not be fetched for its replay:
    not validated yet, and not invalid. Validity is a property of the block,
    not of the network weather: a miner that serves its inputs to half the
    nodes must not split them from the other half for good. Offered again
    after its backoff (UNAVAILABLE_RETRY_SECONDS, doubling), it is tried again."""


class TransactionRejected(ValidationError):
    """The transaction is invalid against the head state."""


@dataclass
class ImportResult:
    """What importing a block did.

    status: "connected" (new head on top of the old one), "reorg" (new head on
    another branch), "side" (stored, less work than the head), "known"
    (already stored), "orphan" (parent unknown: `missing_parent` says which).
    """

    status: str
    block_hash: bytes
    height: int
    connected: list[C.Block] = field(default_factory=list)
    disconnected: list[C.Block] = field(default_factory=list)
    missing_parent: bytes | None = None


@dataclass(frozen=True)
class AssumeValid:
    """What one import may assume valid (assumevalid, module docstring): a block
    at most `to_height` high whose replay is unavailable. `unavailable`: the
    content hash of the block whose prefetch already found its inputs gone, so
    that its transition trusts it without asking the peers again under the lock."""

    to_height: int = 0
    unavailable: bytes | None = None

    def covers(self, block: C.Block) -> bool:
        return int(block.header.height) <= self.to_height


# What a node decodes from its peers and API clients: the largest encoding it reads, the rejection, the name.
_RECEIVED = {
    C.Block: (MAX_BLOCK_BYTES, BlockRejected, "block"),
    C.SignedTransaction: (MAX_TRANSACTION_BYTES, TransactionRejected, "signed transaction"),
}


def decode_received(raw: bytes, container: type[Received]) -> Received:
    """A C.Block or C.SignedTransaction from the network, within its size limit;
    BlockRejected or TransactionRejected saying what was wrong."""
    limit, rejected, name = _RECEIVED[container]
    if len(raw) > limit:
        raise rejected(f"{name} of {len(raw)} bytes exceeds {limit}")
    try:
        return decode(raw, container)
    except DecodeError as error:
        raise rejected(f"not a {name}: {error}") from None


def check_transaction_envelope(signed: C.SignedTransaction, chain_id: int) -> None:
    transaction = signed.transaction
    if transaction.chain_id != chain_id:
        raise TransactionRejected(f"wrong chain id {transaction.chain_id} (this chain is {chain_id})")
    if keys.compute_address(signed.public_key) != transaction.sender:
        raise TransactionRejected("public key is not the sender's")
    if not keys.is_valid_signature(signed.public_key, compute_transaction_signing_root(transaction), signed.signature):
        raise TransactionRejected("bad signature")


def precheck_block(block: C.Block, config: C.ChainConfig) -> None:
    """Stateless checks of a block (see the module docstring) under the chain's
    config; BlockRejected on failure."""
    header = block.header
    if header.height == 0:
        raise BlockRejected("a genesis block cannot be imported")
    if len(block.proofs) != 1:
        raise BlockRejected("a block carries exactly one PoUW proof")
    proof = block.proofs[0]
    work = proof.message.message.work
    if work.miner != header.miner:
        raise BlockRejected("message is not by the block's miner")
    if work.task_id != header.task_id or work.iteration != header.iteration:
        raise BlockRejected("iteration message is not for the header's task and iteration")
    if header.message_digest != compute_message_digest(proof.message.message):
        raise BlockRejected("message digest mismatch")
    if header.nonce_index >= config.max_nonces_per_iteration:
        # no task's allowance reaches it: a forged side block could not ask for more hashing than an iteration buys
        raise BlockRejected(f"nonce index {header.nonce_index} beyond any allowance "
                            f"({config.max_nonces_per_iteration} nonces an iteration)")
    if header.nonce != compute_nonce(compute_nonce_seed(work), header.nonce_index):
        raise BlockRejected("nonce is not derived from the iteration")
    if not is_valid_pow(header):
        raise BlockRejected("work hash above target")
    if not is_signed_iteration_message_valid(proof.message):
        raise BlockRejected("iteration message: bad signature")
    if proof.message.message.header_commitment != compute_header_commitment(header):
        raise BlockRejected("header is not the one the iteration commits to")
    if header.transactions_root != compute_transactions_root(block.transactions):
        raise BlockRejected("transactions root mismatch")
    for index, signed in enumerate(block.transactions):
        try:
            check_transaction_envelope(signed, config.chain_id)
        except TransactionRejected as error:
            raise BlockRejected(f"transaction {index}: {error.reason}") from None


def easiest_side_target(config: C.ChainConfig, head_target: int, head_height: int, fork_height: int,
                        height: int) -> int:
    """The easiest target a block at `height` can carry on a branch from the main-chain block at `fork_height`,
    when the head, at `head_height`, asks `head_target` of its next block: from the heights alone, not by
    replaying. The spec's retarget (`compute_next_target`) moves the target at each multiple of
    retarget_interval, at most RETARGET_CLAMP-fold: back from the head to the fork point at most that far down
    (so the fork point's target is at most the inverse of the floored division), then forward to the block's
    parent at most that far up."""
    interval = config.retarget_interval
    expected = interval * config.target_block_time
    shortest = expected // RETARGET_CLAMP
    if shortest == 0:
        return MAX_TARGET   # a window clamped to 0 s makes any target reachable
    target = head_target
    for _ in range(head_height // interval - fork_height // interval):
        if target >= MAX_TARGET:
            break
        target = ((target + 1) * expected - 1) // shortest   # the largest t with t * shortest // expected <= target
    for _ in range((height - 1) // interval - fork_height // interval):
        if target >= MAX_TARGET:
            break
        target *= RETARGET_CLAMP
    return min(target, MAX_TARGET)


def spent_by(body) -> int:
    """Coins a transaction body takes from the sender's balance besides the fee."""
    if isinstance(body, C.Transfer):
        return body.amount
    if isinstance(body, C.Stake):
        return body.amount
    if isinstance(body, C.SubmitTask):
        return body.payment
    return 0


class Chain:
    """The node's view of the chain: store, head state, fork choice, orphans.

    Thread-safe: imports are serialized by one lock; reads of the head state
    return the immutable-by-convention object the chain holds."""

    def __init__(self, store: ChainStore, genesis_state: C.State, genesis_block: C.Block,
                 oracles: Oracles | None, prefetch: Prefetch | None = None,
                 assume_valid_depth: int = ASSUME_VALID_DEPTH) -> None:
        """`oracles`: the verifier's replay and evaluation (the engine's); None for a node that
        does not replay iterations and trusts their claimed roots and scores (node/transition.py
        `trusting_transition`).
        `prefetch`: fetches what replaying an iteration needs, outside the chain lock.
        `assume_valid_depth`: how deep below a peer's announced head a block whose replay is
        unavailable is assumed valid (module docstring); 0 never assumes."""
        if assume_valid_depth < 0:
            raise ValueError(f"assume_valid_depth {assume_valid_depth} is negative")
        self.store = store
        self.oracles = oracles
        self.prefetch = prefetch
        self.assume_valid_depth = assume_valid_depth
        self._lock = threading.RLock()
        self._orphans: OrderedDict[bytes, tuple[C.Block, int]] = OrderedDict()
        self._orphan_bytes = 0
        self._invalid: set[bytes] = set()
        self._unavailable: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # content hash -> (retry at, delay)
        # imports: blocks stored (connected, side or by a reorg) once their parent was known; import_seconds:
        # their validation and store commit, without the replay inputs' fetch (the peers' speed, not ours).
        self.metrics = {"blocks_connected": 0, "blocks_rejected": 0, "reorgs": 0, "side_blocks": 0,
                        "side_blocks_refused": 0, "side_blocks_pruned": 0, "orphans": 0,
                        "transition_seconds": 0.0, "transitions": 0, "blocks_not_validated": 0,
                        "imports": 0, "import_seconds": 0.0, "last_import_seconds": None, "assumed_valid": 0}
        genesis_hash = bytes(compute_block_hash(genesis_block))
        if not store.is_initialized():
            store.connect_block(genesis_block, genesis_hash, 0, None, genesis_state)
        elif store.genesis_hash() != genesis_hash:
            raise StoreError(f"the store in {store.data_dir} holds another chain "
                             f"(genesis {store.genesis_hash().hex()[:16]}…, expected {genesis_hash.hex()[:16]}…)")
        self.genesis_hash = genesis_hash
        self.config = genesis_state.config
        self._head_state = store.load_head_state()
        self._head = store.head_record()
        self._pruned_below = 0   # side blocks below this height are pruned (none since this start, so far)
        self._prune_side_blocks()

    # -- reads ------------------------------------------------------------
    @property
    def head(self) -> BlockRecord:
        return self._head

    @property
    def head_state(self) -> C.State:
        return self._head_state

    def account_nonce(self, address: bytes) -> int:
        account = self._head_state.accounts.get(address)
        return int(account.nonce) if account is not None else 0

    # -- transactions -------------------------------------------------------
    def check_transaction(self, signed: C.SignedTransaction) -> None:
        """Admission check against the head state (module docstring)."""
        check_transaction_envelope(signed, self.config.chain_id)
        transaction = signed.transaction
        if transaction.fee < self.config.min_transaction_fee:
            raise TransactionRejected(f"fee {transaction.fee} below the minimum {self.config.min_transaction_fee}")
        account = self._head_state.accounts.get(transaction.sender)
        if account is None:
            raise TransactionRejected("unknown sender (an account must receive coins first)")
        if transaction.nonce < account.nonce:
            raise TransactionRejected(f"nonce {transaction.nonce} already used (account nonce is {account.nonce})")
        cost = transaction.fee + spent_by(transaction.body)
        if cost > account.balance:
            raise TransactionRejected(f"balance {account.balance} does not cover fee and amount {cost}")

    # -- blocks -------------------------------------------------------------
    def assume_valid(self, announced_height: int | None) -> AssumeValid:
        """What may be assumed valid under the best head a peer announced at `announced_height`: the
        blocks at least `assume_valid_depth` below it; nothing (up to height 0, genesis, which is never
        imported) without a peer's head, as for a gossiped block, or with a depth of 0."""
        if announced_height is None or self.assume_valid_depth == 0:
            return AssumeValid()
        return AssumeValid(to_height=max(0, announced_height - self.assume_valid_depth))

    def import_block(self, block: C.Block, announced_height: int | None = None) -> ImportResult:
        """Validate and store `block`, moving the head if it brings the most
        work. Raises BlockRejected for an invalid block, BlockNotValidated
        when its iteration's inputs cannot be fetched, unless it lies at least
        `assume_valid_depth` below `announced_height` (the best head a syncing
        peer announced): then it is assumed valid (module docstring). The inputs
        are fetched (`prefetch`) before the chain lock is taken: a slow or
        withholding peer stalls this block only, not every import."""
        block_hash, content_hash = bytes(compute_block_hash(block)), _content_hash(block)
        assume = self.assume_valid(announced_height)
        with self._lock:
            known = self._admit(block, block_hash, content_hash, precheck=True)
            if known is not None:
                return known
            self.check_side_block(block)   # before its inputs are fetched: a refused one costs no fetch
            task = self._head_state.tasks.get(block.header.task_id)
        if self.prefetch is not None and task is not None:
            try:
                self.prefetch(task, block.proofs[0].message.message)
            except ReplayUnavailable as error:
                if not assume.covers(block):
                    with self._lock:
                        raise self._not_validated(content_hash, str(error)) from None
                assume = replace(assume, unavailable=content_hash)
        with self._lock:
            # another thread may have imported it meanwhile
            known = self._admit(block, block_hash, content_hash, precheck=False)
            if known is not None:
                return known
            parent_hash = bytes(block.header.parent_hash)
            parent = self.store.get_block_record(parent_hash)
            if parent is None:
                self._add_orphan(block_hash, block)
                return ImportResult("orphan", block_hash, int(block.header.height), missing_parent=parent_hash)
            started = time.perf_counter()
            result = self._import_with_parent(block, block_hash, parent, assume)
            seconds = time.perf_counter() - started
            self.metrics["imports"] += 1
            self.metrics["import_seconds"] += seconds
            self.metrics["last_import_seconds"] = seconds
            return result

    def _admit(self, block: C.Block, block_hash: bytes, content_hash: bytes, precheck: bool) -> ImportResult | None:
        """The checks before a block's parent is looked at: remembered invalid,
        waiting for its inputs, known (returned), from the future, and the
        stateless prechecks."""
        if content_hash in self._invalid:
            raise BlockRejected("block was already found invalid")
        waiting = self._unavailable.get(content_hash)
        if waiting is not None and time.monotonic() < waiting[0]:
            raise BlockNotValidated(f"its iteration's inputs were unavailable; tried again in "
                                    f"{waiting[0] - time.monotonic():.0f} s")
        if self.store.has_block(block_hash):
            return ImportResult("known", block_hash, int(block.header.height))
        if not is_timestamp_acceptable(block.header, int(time.time())):
            raise BlockFromFuture(f"timestamp {block.header.timestamp} is more than "
                                  f"{MAX_FUTURE_BLOCK_SECONDS} s ahead of this node's clock")
        if precheck:
            try:
                precheck_block(block, self.config)
            except BlockRejected:
                self._reject(block)
                raise
        return None

    def check_side_block(self, block: C.Block) -> None:
        """BlockRejected if `block`, whose parent is stored and is not the head, fails the cheap checks against
        the head (`_admit_side_block`); nothing for any other block. Gossip asks it before relaying."""
        with self._lock:
            parent_hash = bytes(block.header.parent_hash)
            if parent_hash != self._head.hash and self.store.has_block(parent_hash):
                self._admit_side_block(block)

    def _admit_side_block(self, block: C.Block) -> None:
        """Cheap checks of a block whose known parent is not the head, against the head (issue #14's h2: such
        a block passed the stateless checks only, and forged ones filled the disk or claimed more work than the
        chain). Refused (BlockRejected, not remembered invalid, nothing stored changes): a block more than
        SIDE_BRANCH_DEPTH below the head; one whose miner holds no miner stake at the head, or claims a task
        the head does not hold with that miner as a member; one whose target is easier than
        `easiest_side_target` since the fork point.

        Stake and membership are read at the head, not on the block's own branch: an approximation that holds
        for the short forks honest miners make (the same stakes and groups on both sides), and refuses a
        branch on which a task or a stake was made that the main chain does not have. The branch is still
        fully validated before it becomes the head; this only bounds what is stored unvalidated."""
        header, head, state = block.header, self._head, self._head_state
        height = int(header.height)
        try:
            if head.height - height > SIDE_BRANCH_DEPTH:
                raise BlockRejected(f"side block at height {height} is more than {SIDE_BRANCH_DEPTH} blocks "
                                    f"below the head ({head.height}): too deep a fork")
            if C.StakeKey(owner=header.miner, role=ROLE_MINER) not in state.stakes:
                raise BlockRejected("side block: its miner holds no miner stake at the head")
            task = state.tasks.get(header.task_id)
            if task is None or get_member_index(task, header.miner) is None:
                raise BlockRejected("side block: the head holds no task with its miner as a member")
            fork_height = self.store.fork_height(bytes(header.parent_hash))
            easiest = easiest_side_target(self.config, int(state.target), head.height, fork_height, height)
            if header.target > easiest:
                raise BlockRejected(f"side block: target {int(header.target):#x} is easier than the retarget rule "
                                    f"allows since the fork point at height {fork_height} ({easiest:#x})")
        except BlockRejected:
            self.metrics["side_blocks_refused"] += 1
            raise

    def _prune_side_blocks(self) -> None:
        """Forget the side blocks now more than SIDE_BRANCH_DEPTH below the head, with their descendants.
        Heights below `_pruned_below` were pruned already, and no side block is admitted there since; after a
        reorg to a lower head, the heights it opens again are pruned again later."""
        cutoff = max(self._head.height - SIDE_BRANCH_DEPTH, 0)
        if cutoff > self._pruned_below:
            self.metrics["side_blocks_pruned"] += self.store.prune_side_blocks(self._pruned_below, cutoff)
        self._pruned_below = cutoff

    def import_with_orphans(self, block: C.Block, announced_height: int | None = None) -> list[ImportResult]:
        """Import `block`, then every waiting orphan that descends from it (both
        under `announced_height`, import_block's). Invalid orphans are dropped;
        the first result is `block`'s own."""
        results = [self.import_block(block, announced_height)]
        pending = [results[0].block_hash] if results[0].status != "orphan" else []
        while pending:
            parent = pending.pop()
            with self._lock:
                children = [(h, b) for h, (b, _) in self._orphans.items() if bytes(b.header.parent_hash) == parent]
                for child_hash, _ in children:
                    self._orphan_bytes -= self._orphans.pop(child_hash)[1]
            for child_hash, child in children:
                try:
                    result = self.import_block(child, announced_height)
                except (BlockRejected, BlockNotValidated):
                    continue
                results.append(result)
                pending.append(child_hash)
        return results

    def _add_orphan(self, block_hash: bytes, block: C.Block) -> None:
        """Keep a block whose parent is unknown; the oldest go first when the
        pool exceeds MAX_ORPHANS blocks or MAX_ORPHAN_BYTES."""
        if block_hash in self._orphans:
            return
        size = len(encode(block))
        self._orphans[block_hash] = (block, size)
        self._orphan_bytes += size
        self.metrics["orphans"] += 1
        while len(self._orphans) > MAX_ORPHANS or self._orphan_bytes > MAX_ORPHAN_BYTES:
            _, (_, dropped) = self._orphans.popitem(last=False)
            self._orphan_bytes -= dropped

    def _reject(self, block: C.Block) -> None:
        # Remembered by the hash of the whole block, not the header's: the
        # proofs are not all under the header hash, and a peer that garbles
        # them must not get the honest block with the same header refused.
        if len(self._invalid) >= MAX_REMEMBERED_INVALID:
            self._invalid.clear()
        self._invalid.add(_content_hash(block))
        self.metrics["blocks_rejected"] += 1

    def _transition(self, state: C.State, block: C.Block, assume: AssumeValid) -> C.State:
        """The block's post-state; InvalidBlock, or BlockNotValidated when its
        replay could not fetch the iteration's inputs, unless `assume` covers
        it: then the trusting transition's (assumevalid)."""
        if self.oracles is not None and assume.unavailable is not None and assume.covers(block) \
                and assume.unavailable == _content_hash(block):
            return self._assumed_valid(state, block)
        started = time.perf_counter()
        unavailable = []

        def noting_unavailable(oracle):
            def call(*arguments):
                try:
                    return oracle(*arguments)
                except ReplayUnavailable as error:
                    unavailable.append(str(error))
                    raise
            return call
        try:
            # Every block reaching here passed precheck_block (import_block runs it
            # first; a reorg's side blocks ran it when they arrived).
            if self.oracles is None:
                return trusting_transition(state, block)
            return state_transition(state, block, Oracles(replay=noting_unavailable(self.oracles.replay),
                                                          evaluate=noting_unavailable(self.oracles.evaluate)))
        except InvalidBlock:
            if not unavailable:
                raise
            if not assume.covers(block):
                raise self._not_validated(_content_hash(block), unavailable[0]) from None
        finally:
            self.metrics["transition_seconds"] += time.perf_counter() - started
            self.metrics["transitions"] += 1
        return self._assumed_valid(state, block)

    def _assumed_valid(self, state: C.State, block: C.Block) -> C.State:
        """The post-state of a block assumed valid: the trusting transition's, which still checks every rule
        but the unavailable replay (InvalidBlock if even the claimed roots break one)."""
        after = trusting_transition(state, block)
        self.metrics["assumed_valid"] += 1
        return after

    def _not_validated(self, content_hash: bytes, why: str) -> BlockNotValidated:
        """Note a block (by content hash) whose replay inputs were unavailable:
        tried again after UNAVAILABLE_RETRY_SECONDS, then twice as long at each
        failure, up to UNAVAILABLE_RETRY_MAX_SECONDS."""
        _, last_delay = self._unavailable.pop(content_hash, (0.0, 0.0))
        delay = min(last_delay * 2, UNAVAILABLE_RETRY_MAX_SECONDS) if last_delay else UNAVAILABLE_RETRY_SECONDS
        self._unavailable[content_hash] = (time.monotonic() + delay, delay)
        if len(self._unavailable) > MAX_REMEMBERED_INVALID:
            self._unavailable.popitem(last=False)
        self.metrics["blocks_not_validated"] += 1
        return BlockNotValidated(f"iteration inputs unavailable ({why}); not validated yet, "
                                 f"tried again in {delay:.0f} s")

    def _import_with_parent(self, block: C.Block, block_hash: bytes, parent: BlockRecord,
                            assume: AssumeValid) -> ImportResult:
        work = parent.cumulative_work + compute_block_work(block.header.target)
        height = int(block.header.height)
        if parent.hash == self._head.hash:
            try:
                after = self._transition(self._head_state, block, assume)
            except InvalidBlock as error:
                self._reject(block)
                raise BlockRejected(error.reason) from None
            self.store.connect_block(block, block_hash, work, self._head_state, after)
            self._head_state = after
            self._head = BlockRecord(block_hash, height, parent.hash, work, encode(block))
            self.metrics["blocks_connected"] += 1
            self._prune_side_blocks()
            return ImportResult("connected", block_hash, height, connected=[block])
        self._admit_side_block(block)   # again: the head may have moved while its inputs were fetched
        if not self._beats_head(work, block_hash):
            self.store.store_block(block, block_hash, work)
            self.metrics["side_blocks"] += 1
            return ImportResult("side", block_hash, height)
        return self._reorg(block, block_hash, work, assume)

    def _beats_head(self, work: int, block_hash: bytes) -> bool:
        """Fork choice: more work wins; equal work, the lower hash (spec's get_head)."""
        return (work, self._head.hash) > (self._head.cumulative_work, block_hash)

    def _branch_to_main_chain(self, block: C.Block) -> list[C.Block]:
        """The stored ancestors of `block` that are off the main chain, oldest
        first (the fork point, on the main chain, is excluded)."""
        branch = []
        parent_hash = bytes(block.header.parent_hash)
        while not self.store.is_on_main_chain(parent_hash):
            record = self.store.get_block_record(parent_hash)
            if record is None:
                raise StoreError(f"side branch is missing block {parent_hash.hex()}")
            branch.append(record.block())
            parent_hash = record.parent_hash
        branch.reverse()
        return branch

    def _reorg(self, tip: C.Block, tip_hash: bytes, tip_work: int, assume: AssumeValid) -> ImportResult:
        """Move the head to the branch of `tip`, which claims more work. The whole branch is validated in
        memory, on the fork point's state, before the store changes: an invalid branch (a forged claim of
        more work) costs its transitions, never a disconnect of the main chain."""
        branch = self._branch_to_main_chain(tip) + [tip]
        fork_hash = bytes(branch[0].header.parent_hash)
        steps: list[_Connect] = []
        state = self.store.main_chain_state(fork_hash, self._head_state)
        for block in branch:
            block_hash = bytes(compute_block_hash(block))
            record = self.store.get_block_record(block_hash)
            try:
                after = self._transition(state, block, assume)
            except InvalidBlock as error:
                self._reject(block)
                if block_hash != tip_hash:
                    self._reject(tip)
                self.store.delete_side_branch(block_hash)
                raise BlockRejected(f"reorg aborted, block {block_hash.hex()[:16]}… is invalid: "
                                    f"{error.reason}") from None
            steps.append(_Connect(block, block_hash, record.cumulative_work if record is not None else tip_work,
                                  state, after))
            state = after
        disconnected: list[C.Block] = []
        with self.store.transaction():
            while self.store.head_hash() != fork_hash:
                disconnected.append(self.store.disconnect_head().block())
            for step in steps:
                self.store.connect_block(step.block, step.block_hash, step.cumulative_work, step.before, step.after)
        self._head_state, self._head = state, self.store.head_record()
        self.metrics["reorgs"] += 1
        self.metrics["blocks_connected"] += len(branch)
        self._prune_side_blocks()
        return ImportResult("reorg", tip_hash, int(tip.header.height), connected=branch, disconnected=disconnected)


@dataclass(frozen=True)
class _Connect:
    """A block of a reorg's branch, validated, and the states it is connected between."""
    block: C.Block
    block_hash: bytes
    cumulative_work: int
    before: C.State
    after: C.State


def transaction_pool_record(signed: C.SignedTransaction, raw: bytes) -> PoolTransaction:
    """The mempool's view of a signed transaction."""
    transaction = signed.transaction
    return PoolTransaction(tx_id=transaction_id(signed), sender=bytes(transaction.sender), nonce=int(transaction.nonce),
                           fee=int(transaction.fee), size=len(raw), raw=raw)
