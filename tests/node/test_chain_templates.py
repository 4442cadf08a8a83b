"""Only templates the chain can train, replay and score become chain tasks:
a GAN or a regressor task file is refused by `bws task submit` (before any
password or node is needed), by the client's transaction builder, and by a
node's task library (so a miner never trains, and is never paid for, a task
whose iterations nobody can replay or whose models nobody can score)."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from bws.node.roles.client import TaskOrder, submit_task_transaction
from bws.node.roles.library import TaskLibrary, TaskUnavailable
from bws.node.wallet import Account
from bws.templates.errors import TaskDefinitionError
from bws.templates.task import parse_task

REFUSED = "trains locally only"


@pytest.fixture(scope="module", params=["gan", "dnn_regressor"])
def task_file(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "task.json"
    made = subprocess.run([sys.executable, "-m", "bws.node.cli", "task", "new", "--template", request.param,
                           "--dataset", "digits"], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    path.write_text(made.stdout)
    return path


def test_the_cli_refuses_to_submit_it(task_file):
    result = subprocess.run([sys.executable, "-m", "bws.node.cli", "task", "submit", str(task_file), "--keystore",
                             "/nonexistent.json", "--api", "http://127.0.0.1:9"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and REFUSED in result.stderr and "Traceback" not in result.stderr


def test_the_client_and_the_node_refuse_it(task_file):
    definition = parse_task(task_file.read_bytes().strip())
    order = TaskOrder(group_size=2, iterations=10, evaluation_deadline=50, payment=1, fee=1)
    with pytest.raises(TaskDefinitionError, match=REFUSED):
        submit_task_transaction(Account(bytes(31) + b"\x01"), 1, 0, definition, order)
    task = SimpleNamespace(task_definition=definition.to_bytes(), num_batches=definition.dataset["num_batches"])
    with pytest.raises(TaskUnavailable, match=REFUSED):
        TaskLibrary().load(task)
