"""The tasks a node works on, loaded once each: the task definition parsed
by the templates, the engine model, the local dataset checked against the
task's commitments, the batch roots and their Merkle proofs, and the
compiled iteration. Shared by the miner, verifier, supervisor and evaluator.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from bws import engine
from bws.engine import commit
from bws.spec import containers as C
from bws.spec.constants import MAX_TASK_ITERATIONS
from bws.spec.hashing import hash_bytes
from bws.spec.pouw import get_masked_batch
from bws.templates.errors import TemplateError
from bws.templates.task import TaskData, TaskDefinition, batch_root, parse_task, require_chain_template, task_data

from ..merkle import MerkleTree


class TaskUnavailable(Exception):
    """This node cannot work on a task (unreadable definition, dataset missing or not matching)."""


@dataclass
class LoadedTask:
    definition: TaskDefinition
    spec: engine.ModelSpec
    data: TaskData
    batch_roots: list[bytes]
    _batch_tree: MerkleTree = field(init=False, repr=False)
    _no_peer_update: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Built once: a miner proves a batch every iteration, and the spec's
        # compute_merkle_proof rehashes every batch root each time.
        self._batch_tree = MerkleTree(self.batch_roots)
        self._no_peer_update = engine.sum_updates([], spec=self.spec)

    @property
    def batch_size(self) -> int:
        return self.definition.dataset["batch_size"]

    def batch(self, index: int) -> dict[str, np.ndarray]:
        return self.data.batch(self.batch_size, self.definition.dataset["schedule"]["seed"], index)

    def masked_batch(self, index: int, mask_seed: bytes) -> dict[str, np.ndarray]:
        """Batch `index` as an iteration trains on it: inputs dropped by the
        input mask of `mask_seed` (the spec's get_masked_batch)."""
        return get_masked_batch(self.batch(index), mask_seed)

    def batch_proof(self, index: int) -> list[bytes]:
        """The spec's compute_merkle_proof(batch_roots, index), from the tree built at load."""
        if not 0 <= index < len(self.batch_roots):
            raise IndexError(f"batch {index} of a task with {len(self.batch_roots)} batches")
        return self._batch_tree.proof(index)

    def initial_state(self) -> dict:
        return engine.init_state(self.spec, self.definition.hyperparameters["init_seed"])

    def iterate(self, state: dict, batch: dict, peer_updates: list[dict]):
        """One canonical iteration: (new state, update, metrics) as device arrays,
        dispatched and not waited for (`flat` brings them to the host)."""
        peer_sum = engine.sum_updates(peer_updates, spec=self.spec) if peer_updates else self._no_peer_update
        return engine.make_iteration(self.spec)(state, {"x": jnp.asarray(batch["x"]), "y": jnp.asarray(batch["y"])},
                                                peer_sum)

    def local_test_set(self) -> dict[str, np.ndarray] | None:
        """The test split rebuilt from the local dataset, or None when the
        client withholds it (it is fetched by root once revealed)."""
        return {"x": self.data.test_x, "y": self.data.test_y} if self.data.has_test else None

    def test_set_shape(self) -> dict[str, np.ndarray]:
        """Zeros shaped like the test split (to compile the evaluation before it is revealed)."""
        count = self.definition.dataset["test_examples"]
        return {"x": np.zeros((count, *self.spec.input_shape), np.int32), "y": np.zeros((count,), np.int32)}

    def accuracy(self, params: dict, test_set: dict[str, np.ndarray]) -> tuple[int, int]:
        """(correct, count) of `params` on `test_set` ({"x", "y"}), integer-exact."""
        result = engine.evaluate(self.spec, params, test_set["x"], test_set["y"])
        return result["correct"], result["count"]


def flat(tree: dict) -> dict[str, np.ndarray]:
    """A pytree (state or update) as the flat {name: array} its root commits to."""
    return commit.flatten(jax.device_get(tree))


def at_iteration(state: dict[str, np.ndarray], iteration: int) -> dict[str, np.ndarray]:
    """A fetched flat state as the spec's replay runs iteration `iteration` on
    it: its step counter set to the iteration (spec/state_transition.py
    `Replay`), so one training step replays as one iteration number only."""
    if not 0 <= iteration <= MAX_TASK_ITERATIONS:
        raise ValueError(f"iteration {iteration} is not a step the engine counts (at most {MAX_TASK_ITERATIONS})")
    return {**state, "step": np.asarray(iteration, np.int32)}


def tree(flat_tensors: dict[str, np.ndarray]) -> dict:
    """The inverse of `flat`, as device arrays the engine takes."""
    return jax.tree.map(jnp.asarray, commit.unflatten(flat_tensors))


class TaskLibrary:
    """Loaded tasks by the hash of their definition bytes (many task ids may share one)."""

    def __init__(self, data_dir: str | None = None) -> None:
        self.data_dir = data_dir
        self._loaded: dict[bytes, LoadedTask] = {}
        self._failed: dict[bytes, str] = {}
        self._lock = threading.Lock()

    def is_unavailable(self, task: C.Task) -> bool:
        """Whether loading this task failed (it stays failed: the definition or the data is what it is)."""
        with self._lock:
            return bytes(hash_bytes(bytes(task.task_definition))) in self._failed

    def load(self, task: C.Task) -> LoadedTask:
        """The loaded task for a task in the state; TaskUnavailable if this node cannot load it."""
        definition_bytes = bytes(task.task_definition)
        key = bytes(hash_bytes(definition_bytes))
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            if key in self._failed:
                raise TaskUnavailable(self._failed[key])
            try:
                definition = parse_task(definition_bytes)
                require_chain_template(definition)
                data = task_data(definition, self.data_dir)
                seed, epochs = definition.dataset["schedule"]["seed"], definition.hyperparameters["epochs"]
                roots = [batch_root(b) for _, b in data.batches(definition.dataset["batch_size"], seed, epochs)]
                loaded = LoadedTask(definition, engine.ModelSpec.from_dict(definition.model), data, roots)
            except (TemplateError, engine.EngineError, ValueError, OSError) as error:
                self._failed[key] = f"task definition {key.hex()[:16]}…: {error}"
                raise TaskUnavailable(self._failed[key]) from None
            if len(roots) != task.num_batches:
                self._failed[key] = f"the task commits to {task.num_batches} batches, the definition makes {len(roots)}"
                raise TaskUnavailable(self._failed[key])
            self._loaded[key] = loaded
            return loaded
