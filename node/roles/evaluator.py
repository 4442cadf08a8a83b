"""The evaluator, and the chain's evaluation of its results.

The evaluator scores every member's final model of a task in EVALUATION on
the test set the task committed to, and submits the EvaluationResult
transaction that finalizes the task and splits its fee (spec
`process_evaluation_result`, `compute_fee_split`). Every model of a result
is of one iteration, `evaluated_iteration`: the latest a majority of the
members reached. A member's final model is the state named by
`state_after_root` of its signed IT_RES of that iteration (from the messages
this node heard, else from its peers' records over `/bws/audit/1`), fetched
by root; the result carries that message and the model's score, the count of test examples it gets right
(`engine.evaluate`, integer-exact). A member without a final message or
whose model cannot be fetched is left out (it scores nothing).

`NetworkEvaluate` is the chain's `evaluate` oracle (spec `Evaluate`): every
replaying node scores each model of an evaluation result the same way before
it accepts the result, so a wrong score is an invalid transaction and a test
split nobody can fetch makes the result unavailable, never accepted.

The test split is the one the task definition names; a node rebuilds it from
its local copy of the dataset and uses it only if its root equals the task's
`test_set_hash` (the client's commitment). A withheld test split (the
client's own, `test_split` "withheld") is fetched by that root once the
client has revealed it (`bws task reveal`, POST /reveal on its node); until
then the evaluator waits, trying again at every step of the evaluation
window.
"""
from __future__ import annotations

import logging
import threading
import time

from bws.engine.commit import batch_root
from bws.spec import containers as C
from bws.spec.constants import TASK_EVALUATION, TASK_GROUP_SELECTED, TASK_TRAINING
from bws.spec.hashing import hash_bytes
from bws.spec.state_transition import ReplayUnavailable, sign_transaction
from bws.spec.tasks import get_task_progress

from ..validation import ValidationError
from .context import RoleContext, RoleError
from .data import DataError
from .library import LoadedTask, TaskUnavailable, tree
from .verifier import find_signed_message

logger = logging.getLogger("bws.node.roles.evaluator")

EVALUATION_FEE = 1000
# A result whose block-building miners could not score it yet (the test split or a model not fetched) leaves their
# pools after a few heads; the evaluator submits it again once this many heads passed without it pooled.
RESUBMIT_AFTER_BLOCKS = 4


class TestSetNotRevealed(RoleError):
    """The task's test split is withheld and no peer serves it yet."""


def committed_test_set(context: RoleContext, task: C.Task, loaded: LoadedTask) -> dict:
    """The committed test split: the local one, or the client's revealed one
    fetched by root (TestSetNotRevealed while nobody serves it)."""
    local = loaded.local_test_set()
    if local is not None:
        if batch_root(local) != bytes(task.test_set_hash):
            raise RoleError("the local test split does not match the task's test set commitment")
        return local
    try:
        revealed = context.fetch_tensors(bytes(task.test_set_hash))
    except RoleError as error:
        raise TestSetNotRevealed(f"the client has not revealed the withheld test split yet ({error})") from None
    # The root binds the bundle, not its form: a client may have committed to one the model cannot take.
    expected = loaded.test_set_shape()
    if sorted(revealed) != ["x", "y"] or any(revealed[k].shape != expected[k].shape
                                             or revealed[k].dtype != expected[k].dtype for k in expected):
        raise RoleError("the revealed test split is not {x, y} int32 tensors of the task's test_examples "
                        "and input shape")
    return revealed


def score_model(context: RoleContext, task: C.Task, model_root: bytes, miner: bytes) -> tuple[int, int]:
    """(correct, count) of the model whose state root is `model_root` on the
    task's committed test set; ReplayUnavailable if the task, the test set or
    the model cannot be had or do not fit. Kept (context.scores): the inputs
    are content-addressed and the evaluation exact."""
    key = (hash_bytes(bytes(task.task_definition)), bytes(task.test_set_hash), bytes(model_root))
    if (known := context.scores.get(key)) is not None:
        return known
    try:
        loaded = context.library.load(task)
        test_set = committed_test_set(context, task, loaded)
        state = tree(context.fetch_tensors(bytes(model_root), context.messages.peer_of(bytes(miner))))
        result = loaded.accuracy(state["params"], test_set)
    except (TaskUnavailable, RoleError, DataError, KeyError, ValueError, TypeError) as error:
        raise ReplayUnavailable(f"cannot score the model {bytes(model_root).hex()[:16]}…: {error}") from None
    context.scores.put(key, result)
    context.metrics["models_scored"] += 1
    return result


def evaluated_iteration(context: RoleContext, task_id: bytes, task: C.Task) -> int:
    """The iteration an honest evaluator scores: the latest one a majority of
    the unslashed members reached in the messages this node heard, within
    the task's iterations and not older than its progress (spec
    `get_evaluated_scores`); -1 when there is none."""
    reached = sorted((int(latest.message.work.iteration)
                      if (latest := context.messages.latest(task_id, bytes(member.address))) is not None else -1
                      for member in task.members if not member.slashed), reverse=True)
    majority = reached[len(reached) // 2] if reached else -1
    return min(max(majority, get_task_progress(task) - 1), int(task.iterations) - 1)


class NetworkEvaluate:
    """The chain's `evaluate` (spec `Evaluate`): `score_model`'s count of the
    final model an evaluation result names, counted in the role metrics
    (`evaluation_checks`; `models_scored` counts the engine's runs)."""

    def __init__(self, context_ref) -> None:
        # The chain needs its oracles before the context (which needs the chain) exists.
        self._context_ref = context_ref

    def __call__(self, task: C.Task, scored: C.ScoredModel) -> int:
        context: RoleContext = self._context_ref()
        work = scored.final_message.message.work
        started = time.perf_counter()
        try:
            correct, _ = score_model(context, task, bytes(work.state_after_root), bytes(work.miner))
        except ReplayUnavailable:
            context.metrics["evaluations_unavailable"] += 1
            raise
        finally:
            context.metrics["evaluation_seconds_total_ms"] += int((time.perf_counter() - started) * 1000)
        context.metrics["evaluation_checks"] += 1
        return correct


class Evaluator:
    def __init__(self, context: RoleContext) -> None:
        self.context = context
        self._submitted: dict[bytes, int] = {}   # task id -> head height when its result was last submitted
        self._impossible: set[bytes] = set()
        self._prepared: set[bytes] = set()
        self._waiting_for_reveal: set[bytes] = set()
        self._thread = threading.Thread(target=self._run, name="bws-evaluator", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self.context.stop.wait(0.5):
            try:
                self.step()
            except Exception:  # logged and counted; the node keeps running
                logger.exception("evaluator step failed")
                self.context.metrics["evaluator_errors"] += 1

    def step(self) -> None:
        state = self.context.chain.head_state
        for task_id in sorted(state.tasks):
            task = state.tasks[task_id]
            if self.context.address not in [bytes(e) for e in task.evaluators]:
                continue
            if task.status in (TASK_GROUP_SELECTED, TASK_TRAINING) and bytes(task_id) not in self._prepared:
                self.prepare(bytes(task_id), task)
            elif task.status == TASK_EVALUATION and self._due(bytes(task_id), int(state.height)):
                self.evaluate(bytes(task_id), task)

    def _due(self, task_id: bytes, height: int) -> bool:
        """Whether to submit the task's result: never submitted, or submitted
        RESUBMIT_AFTER_BLOCKS heads ago and no longer in this node's pool."""
        if task_id in self._impossible:
            return False
        submitted = self._submitted.get(task_id)
        return submitted is None or (height >= submitted + RESUBMIT_AFTER_BLOCKS and not self._pooled(task_id))

    def _pooled(self, task_id: bytes) -> bool:
        """Whether this node's pool holds an evaluation result of this node for the task."""
        return any(isinstance(body, C.EvaluationResult) and bytes(body.task_id) == task_id
                   for body in self.context.pooled_bodies(sender=self.context.address))

    def prepare(self, task_id: bytes, task: C.Task) -> None:
        """While the group trains: load the task and compile the evaluation
        (scoring the initial model), so the result is ready within the
        evaluation window, which is only evaluation_period blocks long."""
        self._prepared.add(task_id)
        try:
            loaded = self.context.library.load(task)
        except TaskUnavailable as error:
            logger.warning("cannot prepare the evaluation of %s…: %s", task_id.hex()[:12], error)
            return
        loaded.accuracy(loaded.initial_state()["params"], loaded.local_test_set() or loaded.test_set_shape())

    def score_members(self, task_id: bytes, task: C.Task) -> tuple[list[C.ScoredModel], list[dict]]:
        """The members' final models with their scores, in group order, and a
        report of each member (TestSetNotRevealed while the split is withheld)."""
        committed_test_set(self.context, task, self.context.library.load(task))
        final = evaluated_iteration(self.context, task_id, task)
        models, report = [], []
        for member in task.members:
            miner = bytes(member.address)
            entry = {"miner": miner.hex(), "iteration": None, "correct": 0, "count": 0}
            signed = find_signed_message(self.context, task_id, final, miner) if final >= 0 else None
            if signed is None:
                logger.warning("no final message of %s… for task %s…: it is left out", miner.hex()[:12],
                               task_id.hex()[:12])
            else:
                try:
                    correct, count = score_model(self.context, task, bytes(signed.message.work.state_after_root),
                                                 miner)
                    models.append(C.ScoredModel(final_message=signed, correct=correct))
                    entry.update(iteration=final, correct=correct, count=count)
                except ReplayUnavailable as error:
                    logger.warning("final model of %s… unavailable, it is left out: %s", miner.hex()[:12], error)
            report.append(entry)
        return models, report

    def evaluate(self, task_id: bytes, task: C.Task) -> None:
        context = self.context
        try:
            models, results = self.score_members(task_id, task)
        except TestSetNotRevealed as error:  # asked again at the next step, while the task is in evaluation
            if task_id not in self._waiting_for_reveal:
                self._waiting_for_reveal.add(task_id)
                context.metrics["evaluations_waiting_for_reveal"] += 1
                logger.info("task %s…: %s", task_id.hex()[:12], error)
            return
        except (TaskUnavailable, RoleError) as error:
            logger.warning("cannot evaluate task %s…: %s", task_id.hex()[:12], error)
            context.metrics["evaluations_impossible"] += 1
            self._impossible.add(task_id)
            return
        transaction = C.Transaction(
            chain_id=context.chain.config.chain_id, sender=context.address, nonce=context.next_nonce(),
            fee=max(EVALUATION_FEE, context.chain.config.min_transaction_fee),
            body=C.EvaluationResult(task_id=task_id, models=models))
        try:
            context.submit_transaction(sign_transaction(context.account.secret_key, transaction))
        except ValidationError as error:
            logger.warning("evaluation result not submitted: %s", error.reason)
            return
        if task_id in self._submitted:
            context.metrics["evaluations_resubmitted"] += 1
        self._submitted[task_id] = int(context.chain.head_state.height)
        context.metrics["evaluations_submitted"] += 1
        context.gauges[("evaluation", task_id)] = results
        best = max(results, key=lambda r: r["correct"])
        logger.info("evaluated task %s…: best %d of %d by %s…", task_id.hex()[:12], best["correct"], best["count"],
                    best["miner"][:12])
