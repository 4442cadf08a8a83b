"""The evaluator: scores every member's final model of a task in EVALUATION
on the test set the task committed to, and submits the EvaluationResult
transaction that finalizes the task and splits its fee (spec
`process_evaluation_result`, `compute_fee_split`).

The test split is the one the task definition names; the evaluator rebuilds
it from its local copy of the dataset and uses it only if its root equals the
task's `test_set_hash` (the client's commitment). A withheld test split (the
client's own, `test_split` "withheld") is fetched by that root once the
client has revealed it (`bws task reveal`, POST /reveal on its node); until
then the evaluator waits, trying again at every step of the evaluation
window. A member's final model is the state named by `state_after_root` of
the latest IT_RES of that member the node has seen, fetched by root; its
score is the integer-exact accuracy in parts per million
(`engine.evaluate`). A member whose model cannot be fetched scores 0.
"""
from __future__ import annotations

import logging
import threading

from bws.engine.commit import batch_root
from bws.spec import containers as C
from bws.spec.constants import TASK_EVALUATION, TASK_GROUP_SELECTED, TASK_TRAINING
from bws.spec.state_transition import sign_transaction

from ..validation import ValidationError
from .context import RoleContext, RoleError
from .data import DataError
from .library import TaskUnavailable, tree

logger = logging.getLogger("bws.node.roles.evaluator")

SCORE_SCALE = 1_000_000
EVALUATION_FEE = 1000


class TestSetNotRevealed(RoleError):
    """The task's test split is withheld and no peer serves it yet."""


class Evaluator:
    def __init__(self, context: RoleContext) -> None:
        self.context = context
        self._submitted: set[bytes] = set()
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
            elif task.status == TASK_EVALUATION and bytes(task_id) not in self._submitted:
                self.evaluate(bytes(task_id), task)

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

    def test_set(self, task: C.Task, loaded) -> dict:
        """The committed test split: the local one, or the client's revealed one
        fetched by root (TestSetNotRevealed while nobody serves it)."""
        local = loaded.local_test_set()
        if local is not None:
            if batch_root(local) != bytes(task.test_set_hash):
                raise RoleError("the local test split does not match the task's test set commitment")
            return local
        try:
            revealed = self.context.fetch_tensors(bytes(task.test_set_hash))
        except RoleError as error:
            raise TestSetNotRevealed(f"the client has not revealed the withheld test split yet ({error})") from None
        # The root binds the bundle, not its form: a client may have committed to one the model cannot take.
        expected = loaded.test_set_shape()
        if sorted(revealed) != ["x", "y"] or any(revealed[k].shape != expected[k].shape
                                                 or revealed[k].dtype != expected[k].dtype for k in expected):
            raise RoleError("the revealed test split is not {x, y} int32 tensors of the task's test_examples "
                            "and input shape")
        return revealed

    def score_members(self, task_id: bytes, task: C.Task) -> list[dict]:
        """Each member's final model scored on the committed test set, in group order."""
        loaded = self.context.library.load(task)
        test_set = self.test_set(task, loaded)
        results = []
        for member in task.members:
            latest = self.context.messages.latest(task_id, bytes(member.address))
            entry = {"miner": bytes(member.address).hex(), "iteration": None, "correct": 0, "count": 0, "score": 0}
            if latest is not None:
                work = latest.message.work
                entry["iteration"] = int(work.iteration)
                try:
                    state = tree(self.context.fetch_tensors(bytes(work.state_after_root),
                                                            self.context.messages.peer_of(bytes(member.address))))
                    correct, count = loaded.accuracy(state["params"], test_set)
                    entry.update(correct=correct, count=count, score=correct * SCORE_SCALE // max(count, 1))
                except (RoleError, DataError, KeyError) as error:
                    logger.warning("final model of %s… unavailable: %s", entry["miner"][:12], error)
            results.append(entry)
        return results

    def evaluate(self, task_id: bytes, task: C.Task) -> None:
        context = self.context
        try:
            results = self.score_members(task_id, task)
        except TestSetNotRevealed as error:  # asked again at the next step, while the task is in evaluation
            if task_id not in self._waiting_for_reveal:
                self._waiting_for_reveal.add(task_id)
                context.metrics["evaluations_waiting_for_reveal"] += 1
                logger.info("task %s…: %s", task_id.hex()[:12], error)
            return
        except (TaskUnavailable, RoleError) as error:
            logger.warning("cannot evaluate task %s…: %s", task_id.hex()[:12], error)
            context.metrics["evaluations_impossible"] += 1
            self._submitted.add(task_id)
            return
        transaction = C.Transaction(
            chain_id=context.chain.config.chain_id, sender=context.address, nonce=context.next_nonce(),
            fee=max(EVALUATION_FEE, context.chain.config.min_transaction_fee),
            body=C.EvaluationResult(task_id=task_id, test_set_hash=task.test_set_hash,
                                    scores=[r["score"] for r in results]))
        try:
            context.submit_transaction(sign_transaction(context.account.secret_key, transaction))
        except ValidationError as error:
            logger.warning("evaluation result not submitted: %s", error.reason)
            return
        self._submitted.add(task_id)
        context.metrics["evaluations_submitted"] += 1
        context.gauges[("evaluation", task_id)] = results
        best = max(results, key=lambda r: r["score"])
        logger.info("evaluated task %s…: best %.2f%% by %s…", task_id.hex()[:12], best["score"] / SCORE_SCALE * 100,
                    best["miner"][:12])
