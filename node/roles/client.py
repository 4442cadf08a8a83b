"""The client: submits a task (a task.json made by `bws task new`) with its
fee, watches it through a node's HTTP API, reveals a withheld test split when
the task is in evaluation, and reads its result.

The SubmitTask transaction commits to what the task definition names: the
dataset root is the definition's `batches_root` (Merkle root of the batch
roots, in batch order), the test set hash its `test_root` (root of the test
split). A withheld test split (the client's own file) stays with the client
until its task is in evaluation: a node refuses it earlier (`revealable_task`),
since miners could fit a test set they had seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from bws.spec import containers as C
from bws.spec.constants import TASK_EVALUATION, TERMINAL_TASK_STATUSES
from bws.spec.encoding import encode
from bws.spec.state_transition import sign_transaction
from bws.spec.tasks import compute_task_id
from bws.spec.tensors import encode_tensor_bundle
from bws.templates.task import TaskData, TaskDefinition, require_chain_template

from ..api import ApiClient, ApiError
from ..wallet import Account
from .data import DataError, bundle_root, decode_tensors

@dataclass(frozen=True)
class TaskOrder:
    """What the client asks for besides the definition."""
    group_size: int
    iterations: int
    evaluation_deadline: int
    payment: int
    fee: int


def submit_task_transaction(account: Account, chain_id: int, nonce: int, definition: TaskDefinition,
                            order: TaskOrder) -> C.SignedTransaction:
    """The signed SubmitTask transaction for `definition`; TaskDefinitionError
    for a template the chain cannot train (`require_chain_template`)."""
    require_chain_template(definition)
    dataset = definition.dataset
    body = C.SubmitTask(task_definition=definition.to_bytes(), dataset_root=bytes.fromhex(dataset["batches_root"]),
                        num_batches=dataset["num_batches"], test_set_hash=bytes.fromhex(dataset["test_root"]),
                        group_size=order.group_size, iterations=order.iterations,
                        evaluation_deadline=order.evaluation_deadline, payment=order.payment)
    transaction = C.Transaction(chain_id=chain_id, sender=account.address, nonce=nonce, fee=order.fee, body=body)
    return sign_transaction(account.secret_key, transaction)


def revealable_task(state: C.State, root: bytes) -> bytes:
    """The id of a task in evaluation that commits to the test set `root`;
    ApiError (404, 409) saying why a reveal is refused otherwise."""
    committing = [(task_id, task) for task_id, task in sorted(state.tasks.items())
                  if bytes(task.test_set_hash) == bytes(root)]
    if not committing:
        raise ApiError(HTTPStatus.NOT_FOUND, f"no task on chain commits to the test set {bytes(root).hex()}")
    for task_id, task in committing:
        if task.status == TASK_EVALUATION:
            return bytes(task_id)
    task_id, task = committing[0]
    if all(task.status in TERMINAL_TASK_STATUSES for _, task in committing):
        raise ApiError(HTTPStatus.CONFLICT, f"task {bytes(task_id).hex()} has ended: its evaluation is over")
    raise ApiError(HTTPStatus.CONFLICT, f"task {bytes(task_id).hex()} is not in evaluation yet: a withheld test split "
                                        "is revealed only then (miners could fit a test set they had seen)")


def accept_reveal(state: C.State, raw: bytes) -> tuple[bytes, bytes, dict]:
    """A node's check of a revealed test split (POST /reveal): (task id, root,
    tensors), or ApiError saying why it is refused."""
    try:
        tensors = decode_tensors(raw)
    except DataError as error:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"not a tensor bundle: {error}") from None
    root = bundle_root(tensors)
    return revealable_task(state, root), root, tensors


def withheld_test_set(data: TaskData) -> dict:
    """The client's test split as the tensors the task's test_root commits to."""
    if not data.has_test:
        raise ValueError("no test split loaded: give the task's test file")
    return {"x": data.test_x, "y": data.test_y}


def reveal_test_set(api: ApiClient, test_set: dict) -> dict:
    """Reveal a withheld test split through a node (POST /reveal); it answers the task id and root."""
    return api.post("/reveal", {"tensors": encode_tensor_bundle(test_set).hex()})


class Client:
    """A client account talking to one node's API."""

    def __init__(self, account: Account, api: ApiClient, chain_id: int) -> None:
        self.account = account
        self.api = api
        self.chain_id = chain_id

    def submit(self, definition: TaskDefinition, order: TaskOrder) -> bytes:
        """Submit the task; returns its task id."""
        nonce = int(self.api.get(f"/account/{self.account.address.hex()}")["pending_nonce"])
        signed = submit_task_transaction(self.account, self.chain_id, nonce, definition, order)
        self.api.post("/tx", {"transaction": encode(signed).hex()})
        return bytes(compute_task_id(self.chain_id, self.account.address, nonce))

    def status(self, task_id: bytes) -> dict:
        """The node's view of the task (GET /task/<id>): status name, task state, blocks, role fields."""
        return self.api.get(f"/task/{task_id.hex()}")
