"""The client: submits a task (a task.json made by `bws task new`) with its
fee, watches it through a node's HTTP API, and reads its result.

The SubmitTask transaction commits to what the task definition names: the
dataset root is the definition's `batches_root` (Merkle root of the batch
roots, in batch order), the test set hash its `test_root` (root of the
withheld test split).
"""
from __future__ import annotations

from dataclasses import dataclass

from bws.spec import containers as C
from bws.spec.encoding import encode
from bws.spec.state_transition import sign_transaction
from bws.spec.tasks import compute_task_id
from bws.templates.task import TaskDefinition, require_chain_template

from ..api import ApiClient
from ..wallet import Account

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
