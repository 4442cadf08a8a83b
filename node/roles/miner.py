"""The miner: trains the tasks whose group it belongs to, publishes an
iteration message (IT_RES) after every iteration, and mines blocks with the
nonces its iterations earn.

One iteration i of task T by member j (spec/pouw.py, spec/tasks.py):
1. wait (bounded) for the other members' IT_RES(i - 1), ask peers over
   `/bws/audit/1` for those not heard (a message gossiped before this node's
   head held the group was IGNOREd here), and fetch the updates they name over
   `/bws/data/1`; apply those that arrived (a set: the sum of integer updates
   does not depend on their order);
2. choose the header of the block the iteration's nonces may mine: parent =
   the current head, next height, a timestamp, the mempool's transactions,
   the target; train on batch compute_batch_index(T, i, j) of the task's
   schedule with the input mask that header keys (get_masked_batch), with
   the batch's Merkle proof in the task's dataset root;
3. commit, in IT_RES(i), to that header;
4. sign and gossip IT_RES(i); keep its state and update in the tensor cache
   so verifiers can fetch them;
5. derive IT_RES(i)'s nonces (get_nonce_allowance of them) and try them
   against that header; on a hit, and if the header still extends the head,
   fill in the state root and publish the block. A header that no longer
   extends the head is stale: its nonces are worth nothing (a new header
   needs a new training step).

Two threads share the work. The training thread runs steps 1 and 2 and
hands the iteration's result (device arrays) to the proving thread, which
runs steps 3 to 5 for iteration i while the engine computes i + 1: the next
iteration needs only the new state, not its root. It proves them in order
(IT_RES(i) is published before IT_RES(i + 1)), and publishes IT_RES(i)
before it tries nonces or builds a block, so a group's members, who wait for
each other's IT_RES(i) before iteration i + 1, wait only for the roots and
the signature. The hand-over holds one iteration, so the proving thread is at
most two behind (one proving, one waiting; a block's import takes several
iterations of a small model). `step()` without `start()` proves each
iteration at once, on the caller's thread (in-process tests).

Tasks: a client task in training this node is a member of comes first (one
whose group was drawn is loaded meanwhile, and trained from TRAINING on, when
every node holds the group). Otherwise the node trains its bootstrap task (a genesis task whose
only member it is, spec/genesis.py: the chain needs a task in training to
advance); bootstrap miners take turns by height so their blocks do not
race, and pause while a client task is being trained by its group (its
messages are seen on gossip) so the group's iterations mine the blocks.
When the head does not move for a turn timeout (the miner whose turn it is
is down, or slow), the next bootstrap miner in turn order may mine too,
after two timeouts the one after it, and so on: not all of them at once,
whose racing blocks would each cost every node a replay. The timeout is at
least BOOTSTRAP_TURN_TIMEOUT_SECONDS and grows with the intervals this node
observes between blocks mined in turn (production, gossip and replay on a
loaded machine), so slow turns are not mistaken for missing ones.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass

import jax

from bws.spec import containers as C
from bws.spec.constants import (
    DOMAIN_POW, MAX_FRAUD_PROOFS_PER_BLOCK, MAX_TRANSACTIONS_PER_BLOCK, ROLE_MINER, TASK_EVALUATION,
    TASK_GROUP_SELECTED, TASK_TRAINING,
)
from bws.spec.hashing import ZERO_HASH, hash_bytes
from bws.spec.pouw import (
    compute_header_commitment, compute_input_mask_seed, compute_iteration_message_signing_root,
    compute_message_digest, compute_nonce, compute_nonce_seed, get_committed_header, get_nonce_allowance,
)
from bws.spec.state_transition import (
    InvalidBlock, InvalidTransaction, Oracles, compute_transactions_root, is_fraud_proof,
)
from bws.spec.tasks import compute_batch_index, get_member_index
from bws.spec.encoding import decode, encode, DecodeError
from bws.spec.containers import SignedTransaction

from ..audit import AuditServer, RecordedIteration
from .. import keys
from ..transition import apply_transaction, claimed_result, compute_state_root, process_block
from .byzantine import Byzantine
from .context import RoleContext, RoleError
from .library import LoadedTask, TaskUnavailable, flat, tree
from .evaluator import NetworkEvaluate
from .verifier import replay_iteration

logger = logging.getLogger("bws.node.roles.miner")

FIRST_PEER_WAIT_SECONDS = 20.0   # members notice their selection at slightly different times
PEER_WAIT_SECONDS = 4.0          # then a late member's update is left out of this iteration
BOOTSTRAP_INTERVAL_SECONDS = 0.25   # the bootstrap miner whose turn it is iterates this often
BOOTSTRAP_TURN_TIMEOUT_SECONDS = 4.0  # then the next bootstrap miner in turn order may mine too, and so on
BOOTSTRAP_TURN_TIMEOUT_FACTOR = 2.0   # the timeout is at least this many in-turn block intervals (median) ...
BOOTSTRAP_TURN_TIMEOUT_MAX_SECONDS = 60.0   # ... and at most this long
BOOTSTRAP_TURN_SAMPLES = 16           # the in-turn block intervals the median is taken over
# While a task is in evaluation, slower: its window is only evaluation_period
# blocks, and the evaluator's result must reach a block inside it.
EVALUATION_BOOTSTRAP_INTERVAL_SECONDS = 1.5
# A peer's message not heard by then is asked for (/bws/audit/1): from this many peers per member at most, each
# request this long at most, all of one iteration's within MESSAGE_ASK_SECONDS.
MESSAGE_ASKS_PER_MEMBER = 4
MESSAGE_REQUEST_SECONDS = 5.0
MESSAGE_ASK_SECONDS = 10.0
CLIENT_TASK_QUIET_SECONDS = 6.0  # a client task with no message this long is no longer being trained
MAX_BLOCK_TRANSACTION_BYTES = 1 << 20
PROVER_POLL_SECONDS = 0.1        # how often an idle proving thread looks at the stop flag
# A killed miner resumes after the newest iteration whose state it saved: at most this much training is redone.
CHECKPOINT_INTERVAL_SECONDS = 5.0
RESUME_CANDIDATES = 64           # signed iterations, newest first, whose saved state a restart looks for


@dataclass
class CommittedBlock:
    """The header fields an IT_RES committed to, with the transactions behind its root."""
    parent_hash: bytes
    height: int
    timestamp: int
    miner: bytes
    target: int
    transactions: list


@dataclass
class Training:
    """One member's training of one task. The training thread owns `state`
    and `next_iteration`; the proving thread owns the rest."""
    task_id: bytes
    loaded: LoadedTask
    member_index: int
    state: dict                      # device pytree, the model state before the next iteration
    proven_state: dict               # flat numpy, the state before the next iteration to prove
    proven_state_root: bytes
    next_iteration: int = 0
    checkpointed_at: float = 0.0     # monotonic time of the proving thread's last checkpoint


@dataclass
class ComputedIteration:
    """One iteration as the engine left it, for the proving thread."""
    training: Training
    task: C.Task
    iteration: int
    batch_index: int
    batch: dict                      # as trained: masked for `committed`
    committed: CommittedBlock        # the header the iteration's nonces may mine
    state_after: dict                # device pytree (flat numpy for a cheating iteration)
    update: dict                     # likewise
    metrics: dict
    applied_updates: list[dict]      # the peer updates applied
    peer_update_roots: list[bytes]
    cheated: bool


def sign_iteration_message(secret_key: bytes, public_key: bytes, message: C.IterationMessage) -> C.SignedIterationMessage:
    """The spec's sign_iteration_message through libsecp256k1 (node/keys.py):
    the same RFC 6979 low-S signature bytes, about 30 times faster."""
    return C.SignedIterationMessage(message=message, public_key=public_key,
                                    signature=keys.sign(secret_key, compute_iteration_message_signing_root(message)))


def find_nonce(header: C.BlockHeader, seed: bytes, allowance: int) -> tuple[int, bytes] | None:
    """(index, nonce) of the first of an iteration's `allowance` nonces with which
    `header` meets its target (the spec's is_valid_pow), or None. The committed
    header, the prefix of every work hash (compute_pow_hash), is encoded once."""
    prefix = DOMAIN_POW + encode(get_committed_header(header))
    for index in range(allowance):
        nonce = compute_nonce(seed, index)
        if int.from_bytes(hash_bytes(prefix + nonce), "big") <= header.target:
            return index, bytes(nonce)
    return None


class Miner:
    def __init__(self, context: RoleContext) -> None:
        self.context = context
        self._trainings: dict[bytes, Training] = {}
        self._last_bootstrap = 0.0
        self.byzantine = Byzantine.from_environment()
        self._evaluate = NetworkEvaluate(lambda: context)   # an evaluation result it includes is scored first
        # Serves the iteration messages seen and this miner's intermediate commitments (/bws/audit/1;
        # registered by the role host).
        self.audit = AuditServer(context, self.byzantine.claimed_trace if self.byzantine else None)
        self._head_hash, self._head_since = b"", time.monotonic()
        # Seconds from one head to the next, for heads mined by the bootstrap miner whose turn it was.
        self._turn_intervals: deque[float] = deque(maxlen=BOOTSTRAP_TURN_SAMPLES)
        self._thread = threading.Thread(target=self._run, name="bws-miner", daemon=True)
        # The hand-over to the proving thread: one computed iteration at most.
        self._computed: queue.Queue[ComputedIteration] = queue.Queue(maxsize=1)
        self._proving_thread = threading.Thread(target=self._prove_forever, name="bws-prover", daemon=True)

    def start(self) -> None:
        self.start_proving()
        self._thread.start()

    def start_proving(self) -> None:
        """Prove iterations on the proving thread from now on (`start` does it)."""
        self._proving_thread.start()

    def join(self, timeout: float | None = None) -> None:
        for thread in (self._thread, self._proving_thread):
            if thread.ident is not None:  # started
                thread.join(timeout)

    def wait_proven(self) -> None:
        """Return once every iteration handed over so far is proven."""
        self._computed.join()

    # -- the loop ---------------------------------------------------------
    def _run(self) -> None:
        context = self.context
        while not context.stop.is_set():
            try:
                worked = self.step()
            except Exception:  # a role must never take the node down; the error is logged and counted
                logger.exception("miner step failed")
                context.metrics["miner_errors"] += 1
                worked = False
            if not worked:
                context.stop.wait(0.1)

    def _prove_forever(self) -> None:
        context = self.context
        while not context.stop.is_set():
            try:
                computed = self._computed.get(timeout=PROVER_POLL_SECONDS)
            except queue.Empty:
                continue
            try:
                self._prove(computed)
            except Exception:  # as in _run: logged and counted, the thread goes on
                logger.exception("proving an iteration failed")
                context.metrics["miner_errors"] += 1
            finally:
                self._computed.task_done()

    def step(self) -> bool:
        """Run at most one iteration; whether one ran."""
        started = time.perf_counter()
        state = self.context.chain.head_state
        self._note_head(state)
        client = self._client_task(state)
        if client is not None:
            return self._iterate(started, *client)
        self._prepare_selected_tasks(state)
        if self._client_training_in_progress(state):
            return False
        bootstrap = self._bootstrap_task(state)
        interval = EVALUATION_BOOTSTRAP_INTERVAL_SECONDS if any(
            t.status == TASK_EVALUATION for t in state.tasks.values()) else BOOTSTRAP_INTERVAL_SECONDS
        if bootstrap is None or not self._bootstrap_turn(state, bootstrap[0]) \
                or time.monotonic() - self._last_bootstrap < interval:
            return False
        self._last_bootstrap = time.monotonic()
        return self._iterate(started, *bootstrap)

    def _my_tasks(self, state: C.State, statuses):
        for task_id in sorted(state.tasks):
            task = state.tasks[task_id]
            index = get_member_index(task, self.context.address)
            if task.status in statuses and index is not None:
                yield bytes(task_id), task, index

    def _client_task(self, state: C.State):
        """(task id, task, member index) of a client task (one with a client) in training that this node still
        trains. A task it cannot load (a dataset nobody has) is passed over: it must not hold back another task's
        training. Not before TRAINING: a message sent while other nodes have not yet imported the block that drew
        the group is IGNOREd by them (not a member in their head) and lost, and the group then waits
        FIRST_PEER_WAIT_SECONDS for it while the sender trains on alone."""
        for task_id, task, index in self._my_tasks(state, (TASK_TRAINING,)):
            if bytes(task.client) == bytes(20) or self.context.library.is_unavailable(task):
                continue
            training = self._trainings.get(task_id)
            if training is None or training.next_iteration < task.iterations:
                return task_id, task, index
        return None

    def _prepare_selected_tasks(self, state: C.State) -> None:
        """Load the client tasks whose group this node was drawn into (dataset, model, initial state) while
        they wait for TRAINING, so that iteration 0 starts at once."""
        for task_id, task, index in self._my_tasks(state, (TASK_GROUP_SELECTED,)):
            if bytes(task.client) != bytes(20) and not self.context.library.is_unavailable(task):
                self._training(task_id, task, index)

    def _bootstrap_task(self, state: C.State):
        if C.StakeKey(owner=self.context.address, role=ROLE_MINER) not in state.stakes:
            return None  # slashed (or unstaked): its blocks would be invalid, so the work would be wasted
        for task_id, task, index in self._my_tasks(state, (TASK_TRAINING,)):
            if bytes(task.client) == bytes(20) and task.group_size == 1:
                return task_id, task, index
        return None

    def _client_training_in_progress(self, state: C.State) -> bool:
        """Whether some group is training a client task now: one of its members
        sent a message in the last CLIENT_TASK_QUIET_SECONDS. A task nobody
        trains (a dataset nobody has, a group that never starts) does not pause
        the bootstrap miners, whose blocks bring its deadline (issue #14's h4)."""
        now = time.monotonic()
        for task_id, task in state.tasks.items():
            if bytes(task.client) == bytes(20) or task.status not in (TASK_GROUP_SELECTED, TASK_TRAINING):
                continue
            last_seen = self.context.gauges.get(("task_last_message", bytes(task_id)))
            done = self.context.messages.max_iteration(bytes(task_id)) >= task.iterations - 1
            if not done and last_seen is not None and now - last_seen < CLIENT_TASK_QUIET_SECONDS:
                return True
        return False

    @staticmethod
    def _turns(state: C.State) -> list[bytes]:
        """The bootstrap tasks in turn order; a slashed miner (no stake left) cannot mine its
        bootstrap task: it takes no turn."""
        return sorted(bytes(i) for i, t in state.tasks.items()
                      if bytes(t.client) == bytes(20) and t.group_size == 1 and t.status == TASK_TRAINING
                      and C.StakeKey(owner=t.members[0].address, role=ROLE_MINER) in state.stakes)

    def _note_head(self, state: C.State) -> None:
        """Follow the head: when it moved, and, for a head that extends the previous one
        and was mined by the bootstrap miner whose turn it was, how long that took."""
        head = bytes(self.context.chain.head.hash)
        if head == self._head_hash:
            return
        now = time.monotonic()
        header = state.latest_block_header
        if bytes(header.parent_hash) == self._head_hash and int(header.height) == int(state.height):
            turns = self._turns(state)
            if turns and turns[(int(header.height) - 1) % len(turns)] == bytes(header.task_id):
                self._turn_intervals.append(now - self._head_since)
        self._head_hash, self._head_since = head, now

    def turn_timeout(self) -> float:
        """Seconds without a new head before the next bootstrap miner in turn order may mine too."""
        if not self._turn_intervals:
            return BOOTSTRAP_TURN_TIMEOUT_SECONDS
        observed = BOOTSTRAP_TURN_TIMEOUT_FACTOR * statistics.median(self._turn_intervals)
        return min(BOOTSTRAP_TURN_TIMEOUT_MAX_SECONDS, max(BOOTSTRAP_TURN_TIMEOUT_SECONDS, observed))

    def _bootstrap_turn(self, state: C.State, task_id: bytes) -> bool:
        """Bootstrap miners take turns by height, so their blocks do not race
        (a lost race wastes every node's replay). While the head does not move,
        one more miner, the next in turn order, may mine after each turn timeout
        (the miner whose turn it is is down, or slow): not all at once, which
        on a loaded machine made forks faster than they propagated."""
        turns = self._turns(state)
        if task_id not in turns:
            return False
        position = (turns.index(task_id) - int(state.height)) % len(turns)
        if position == 0:
            return True
        return time.monotonic() - self._head_since >= position * self.turn_timeout()

    # -- one iteration ----------------------------------------------------
    def _training(self, task_id: bytes, task: C.Task, member_index: int) -> Training | None:
        training = self._trainings.get(task_id)
        if training is None:
            try:
                loaded = self.context.library.load(task)
            except TaskUnavailable as error:
                logger.warning("cannot train task %s…: %s", task_id.hex()[:12], error)
                self.context.metrics["tasks_unavailable"] += 1
                return None
            next_iteration, state, root = self._resume_point(task_id, loaded)
            training = Training(task_id, loaded, member_index, tree(state), state, root, next_iteration)
            self._trainings[task_id] = training
        return training

    def _resume_point(self, task_id: bytes, loaded: LoadedTask) -> tuple[int, dict, bytes]:
        """(next iteration, the state before it, its root): after the newest
        iteration this node signed for the task whose state-after it still
        has (written by a clean stop or a checkpoint), else iteration 0 from
        the task's initial state. A restart so neither trains from 0 again
        nor signs a second version of an iteration (issue #15)."""
        context = self.context
        for signed in context.signed.newest(task_id, RESUME_CANDIDATES):
            root = bytes(signed.message.work.state_after_root)
            saved = context.cache.get_tensors(root)
            if saved is not None:
                resumed = int(signed.message.work.iteration) + 1
                logger.info("resuming task %s… at iteration %d", task_id.hex()[:12], resumed)
                context.metrics["trainings_resumed"] += 1
                return resumed, dict(saved), root
        initial = flat(loaded.initial_state())
        return 0, initial, context.cache.put_tensors(initial)

    def _iterate(self, step_started: float, task_id: bytes, task: C.Task, member_index: int) -> bool:
        """Steps 1 and 2 (the peers' updates, the engine's iteration), then the hand-over to the proving thread."""
        context = self.context
        training = self._training(task_id, task, member_index)
        if training is None:
            return False
        i = training.next_iteration
        if i >= task.iterations:
            return False
        others = [bytes(m.address) for m in task.members if bytes(m.address) != context.address]
        waited = time.perf_counter()
        peer_updates, peer_roots = self._peer_updates(task_id, i, others)
        peer_wait = time.perf_counter() - waited
        started = time.perf_counter()
        committed = self._commit_header(context.chain.head_state)
        mask_seed = compute_input_mask_seed(task_id, i, compute_header_commitment(self._header(committed)))
        batch_index = compute_batch_index(task, i, member_index)
        batch = training.loaded.masked_batch(batch_index, mask_seed)
        cheating = self.byzantine is not None and self.byzantine.cheats(task, i)
        if cheating:  # bws devnet --byzantine: this node cheats (node/roles/byzantine.py)
            state_after, update, metrics, applied = self.byzantine.iterate(
                training.loaded, training.state, batch, peer_updates, flat, tree)
            next_state = tree(state_after)
        else:
            state_after, update, metrics = jax.block_until_ready(training.loaded.iterate(training.state, batch, peer_updates))
            next_state, applied = state_after, peer_updates
        context.metrics["training_us"] += int((time.perf_counter() - started) * 1e6)
        computed = ComputedIteration(training, task, i, batch_index, batch, committed, state_after, update, metrics,
                                     applied, peer_roots, cheating)
        if not self._hand_over(computed):
            return False
        training.state, training.next_iteration = next_state, i + 1
        # The iteration's wall time but the wait for peers: the engine's iteration (training_us) plus what proof
        # of useful work keeps on this thread (the hand-over, or all of steps 3-5 without a proving thread).
        context.metrics["iteration_step_us"] += int((time.perf_counter() - step_started - peer_wait) * 1e6)
        return True

    def _hand_over(self, computed: ComputedIteration) -> bool:
        """Give the iteration to the proving thread (waiting while it is full), or
        prove it here if there is none; False if the node stopped meanwhile."""
        if not self._proving_thread.is_alive():
            self._prove(computed)
            return True
        while not self.context.stop.is_set():
            try:
                self._computed.put(computed, timeout=PROVER_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _prove(self, computed: ComputedIteration) -> None:
        """Steps 3 to 5 for one computed iteration: roots, commitment, signature, gossip, nonces, block."""
        context, training, i = self.context, computed.training, computed.iteration
        started = time.perf_counter()
        state_flat, update_flat = flat(computed.state_after), flat(computed.update)
        update_root = context.cache.put_tensors(update_flat)
        state_after_root = context.cache.put_tensors(state_flat)
        metrics = jax.device_get(computed.metrics)
        loss = int(metrics["loss_sum"]) // max(int(metrics["count"]), 1)
        loaded, batch_index = training.loaded, computed.batch_index
        work = C.IterationWork(
            task_id=training.task_id, iteration=i, miner=context.address, state_before_root=training.proven_state_root,
            batch_index=batch_index, batch_root=loaded.batch_roots[batch_index],
            batch_proof=loaded.batch_proof(batch_index), peer_update_roots=sorted(computed.peer_update_roots),
            update_root=update_root, state_after_root=state_after_root, loss=loss,
        )
        message = C.IterationMessage(work=work,
                                     header_commitment=compute_header_commitment(self._header(computed.committed)))
        signed = context.signed.sign(
            message, lambda m: sign_iteration_message(context.account.secret_key, context.public_key, m))
        if signed is None:  # signed otherwise before a restart, or not chained to what was: either would be slashed
            context.metrics["signatures_refused"] += 1
            training.proven_state, training.proven_state_root = state_flat, state_after_root
            return
        if not computed.cheated:
            context.remember_own_iteration(message)
        context.publish_iteration_message(signed)
        self.audit.record(RecordedIteration(signed, loaded, training.proven_state,
                                            [flat(u) for u in computed.applied_updates], computed.batch,
                                            cheated=computed.cheated))
        if computed.cheated and (second := self.byzantine.second_message(context.account.secret_key, signed)) is not None:
            context.publish_iteration_message(second)
        context.note_task_activity(training.task_id)
        training.proven_state, training.proven_state_root = state_flat, state_after_root
        if time.monotonic() - training.checkpointed_at >= CHECKPOINT_INTERVAL_SECONDS:
            context.cache.save_bundle(state_after_root)
            training.checkpointed_at = time.monotonic()
        context.metrics["iterations"] += 1
        context.gauges["last_loss"] = loss / (1 << 16)
        context.gauges["last_iteration"] = {"task": training.task_id.hex(), "iteration": i,
                                            "peers_applied": len(computed.peer_update_roots)}
        self._mine(computed.task, training, i, computed.committed, signed)
        context.metrics["proving_us"] += int((time.perf_counter() - started) * 1e6)

    def _peer_updates(self, task_id: bytes, iteration: int, others: list[bytes]):
        """The other members' updates of `iteration - 1` that arrive in time, and their roots."""
        if iteration == 0 or not others:
            return [], []
        wait = FIRST_PEER_WAIT_SECONDS if iteration == 1 else PEER_WAIT_SECONDS
        found = self.context.messages.wait_for(task_id, iteration - 1, others, time.monotonic() + wait, self.context.stop)
        if len(found) < len(others) and not self.context.stop.is_set():
            found.update(self._ask_for_missed_messages(task_id, iteration - 1, [m for m in others if m not in found]))
        updates, roots = [], []
        for miner, signed in sorted(found.items()):
            root = bytes(signed.message.work.update_root)
            try:
                updates.append(tree(self.context.fetch_tensors(root, self.context.messages.peer_of(miner))))
            except RoleError as error:
                logger.info("peer update left out: %s", error)
                continue
            roots.append(root)
        if len(roots) < len(others):
            self.context.metrics["peer_updates_missed"] += len(others) - len(roots)
        return updates, roots

    def _ask_for_missed_messages(self, task_id: bytes, iteration: int,
                                 missing: list[bytes]) -> dict[bytes, C.SignedIterationMessage]:
        """The missing members' messages of `iteration` that peers recorded though this node did not (a gossiped
        message is IGNOREd and lost while the receiver's head does not yet hold the task's group): asked once per
        iteration, each member's from at most MESSAGE_ASKS_PER_MEMBER peers (the one it was last heard from
        first), within MESSAGE_ASK_SECONDS in all, and added to the message log as if gossiped."""
        context = self.context
        deadline = time.monotonic() + MESSAGE_ASK_SECONDS
        peers = list(context.network.peers())
        recovered = {}
        for miner in missing:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or context.stop.is_set():
                break
            preferred = context.messages.peer_of(miner)
            ordered = ([preferred] if preferred in peers else []) + [p for p in peers if p != preferred]
            context.metrics["peer_messages_asked"] += 1
            found = context.fetch_iteration_message(task_id, iteration, miner, ordered[:MESSAGE_ASKS_PER_MEMBER],
                                                    timeout=min(MESSAGE_REQUEST_SECONDS, remaining))
            if found is None:
                continue
            signed, peer = found
            if context.messages.add(signed, peer):
                context.metrics["peer_messages_recovered"] += 1
                context.note_task_activity(task_id)
            kept = context.messages.get(task_id, iteration, miner)
            if kept:   # the first version, as the wait takes it (the bounds may refuse one)
                recovered[miner] = kept[0]
        return recovered

    # -- headers and blocks -----------------------------------------------
    def _commit_header(self, head_state: C.State) -> CommittedBlock:
        """The header the next iteration's nonces will mine: on the current head."""
        head = self.context.chain.head
        parent_timestamp = int(head_state.latest_block_header.timestamp)
        return CommittedBlock(
            parent_hash=bytes(head.hash), height=int(head_state.height) + 1,
            timestamp=max(int(time.time()), parent_timestamp + 1), miner=self.context.address,
            target=int(head_state.target), transactions=self._select_transactions(head_state))

    def _select_transactions(self, head_state: C.State) -> list[SignedTransaction]:
        """Mempool transactions that apply, in order, on the head state."""
        chosen, state, fraud_proofs = [], head_state, 0
        mempool, head_hash = self.context.mempool, bytes(self.context.chain.head.hash)
        for record in mempool.select(MAX_TRANSACTIONS_PER_BLOCK, MAX_BLOCK_TRANSACTION_BYTES):
            try:
                signed = decode(record.raw, SignedTransaction)
                fraud_proof = is_fraud_proof(signed.transaction)
                if fraud_proof and fraud_proofs == MAX_FRAUD_PROOFS_PER_BLOCK:
                    break  # the rest of the pool waits: skipped, its sender's later nonces would fail here
                state = apply_transaction(state, signed, self.context.address, Oracles(
                    replay=lambda task, message: replay_iteration(self.context, task, message), evaluate=self._evaluate))
            except (DecodeError, InvalidTransaction):
                if mempool.report_invalid(record.tx_id, head_hash):
                    self.context.metrics["transactions_dropped_invalid"] += 1
                continue
            if fraud_proof:  # counted once it applies: junk ones must not use up the block's seats (issue #14's h3)
                fraud_proofs += 1
            chosen.append(signed)
        return chosen

    @staticmethod
    def _header(committed: CommittedBlock, **pouw) -> C.BlockHeader:
        fields = dict(parent_hash=committed.parent_hash, height=committed.height, timestamp=committed.timestamp,
                      state_root=ZERO_HASH, transactions_root=compute_transactions_root(committed.transactions),
                      miner=committed.miner, target=committed.target, task_id=ZERO_HASH, iteration=0,
                      message_digest=ZERO_HASH, nonce_index=0, nonce=ZERO_HASH)
        fields.update(pouw)
        return C.BlockHeader(**fields)

    def _mine(self, task: C.Task, training: Training, iteration: int, committed: CommittedBlock,
              signed: C.SignedIterationMessage) -> None:
        context = self.context
        head_state = context.chain.head_state
        if committed.parent_hash != bytes(context.chain.head.hash) or committed.height != int(head_state.height) + 1:
            context.metrics["stale_commitments"] += 1
            return
        allowance = get_nonce_allowance(head_state.config, task)
        context.metrics["nonces_tried"] += allowance
        header = self._header(committed, task_id=training.task_id, iteration=iteration,
                              message_digest=compute_message_digest(signed.message))
        found = find_nonce(header, compute_nonce_seed(signed.message.work), allowance)
        if found is not None:
            index, nonce = found
            header = dataclasses.replace(header, nonce_index=index, nonce=nonce)
            self._publish_block(head_state, header, committed, signed)

    def _publish_block(self, head_state: C.State, header: C.BlockHeader, committed: CommittedBlock,
                       signed: C.SignedIterationMessage) -> None:
        block = C.Block(header=header, transactions=committed.transactions, proofs=[C.PouwProof(message=signed)])
        def replay(task: C.Task, message: C.IterationMessage) -> C.ReplayResult:
            # its own iteration: the roots it claims are its engine's; another (a dispute's evidence) is replayed
            if compute_message_digest(message) == header.message_digest:
                return claimed_result(message)
            return replay_iteration(self.context, task, message)
        try:
            post = process_block(head_state, block, Oracles(replay=replay, evaluate=self._evaluate))
        except InvalidBlock as error:
            logger.info("found a nonce but the block would be invalid: %s", error)
            self.context.metrics["blocks_not_built"] += 1
            return
        block = dataclasses.replace(block, header=dataclasses.replace(header, state_root=compute_state_root(post)))
        try:
            self.context.publish_block(block)
        except RoleError as error:
            logger.warning("%s", error)
            self.context.metrics["blocks_not_built"] += 1
            return
        self.context.metrics["blocks_mined"] += 1
        logger.info("mined block %d (task %s… iteration %d)", header.height, bytes(header.task_id).hex()[:12],
                    header.iteration)
