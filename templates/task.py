"""The task definition: what a SubmitTask transaction carries.

Canonical JSON (UTF-8, keys sorted, separators "," and ":", no NaN), so one task
has one byte form and one hash (`task_hash`). Fields (all required):

    format           "bws-task/1"
    template         "dnn" | "dnn_regressor" | "cnn" | "gan"
    model            the engine model description (for "gan": the discriminator's)
    generator        (gan only) the generator's engine model description
    dataset          name, version, split, test_split, num_examples, test_examples,
                     input_range [low, high], max_input, target, batch_size,
                     schedule {rule, seed}, num_batches, batches_root, test_root
    hyperparameters  epochs, iterations, init_seed (gan: latent_dim)
    slices           int8 slices per fixed-point number (= model.slices)

`batches_root` is the Merkle root (spec `compute_merkle_root`) of the engine's
`batch_root` of every scheduled batch's quantized tensors {"x", "y"};
`test_root` is the `batch_root` of the whole test split, quantized.

The test split is either a split of the dataset every node has (evaluators
rebuild it locally), or, with `test_split` "withheld", the client's own file
(`bws task new --test-file`): the network sees only its root until the task is
in evaluation, when the client reveals the tensors (`bws task reveal`) and
evaluators fetch them by `test_root`. Until then no miner can fit the test set.
`load_task` validates strictly and names the bad field; `TaskData` rebuilds the
batches from the local dataset and checks them against those roots.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from bws import engine
from bws.engine.commit import batch_root
from bws.engine.model import ModelSpec, ModelSpecError
from bws.spec.hashing import compute_merkle_root, hash_bytes

from . import datasets, schedule
from .errors import DatasetError, TaskDefinitionError

TASK_FORMAT = "bws-task/1"
TEMPLATES = ("dnn", "dnn_regressor", "cnn", "gan")
# The templates a chain task may use: one model trained by the engine's iteration (what nodes replay),
# scored by classification accuracy (what evaluators submit). The others train locally (`bws train`).
CHAIN_TEMPLATES = ("dnn", "cnn")
# The test_split of a task whose test set is the client's, revealed only at evaluation.
WITHHELD_TEST_SPLIT = "withheld"


def require_chain_template(task: TaskDefinition) -> None:
    """TaskDefinitionError unless `task` can be trained, replayed and scored on the chain."""
    if task.template not in CHAIN_TEMPLATES:
        raise TaskDefinitionError(
            f"template {task.template!r} trains locally only (bws train): chain tasks use {', '.join(CHAIN_TEMPLATES)} "
            "(nodes replay one model's iteration and evaluators score classification accuracy)")
# What "y" holds: the class label (int32), the label as a number scaled to
# [0, 1] and quantized (regression), or nothing (a GAN learns the inputs alone).
TARGETS = ("label", "label_scaled", "none")
MAX_TASK_BYTES = 1 << 20
_HEX32 = re.compile(r"^[0-9a-f]{64}$")

_TOP_FIELDS = {"format", "template", "model", "dataset", "hyperparameters", "slices"}
_DATASET_FIELDS = {"name", "version", "split", "test_split", "num_examples", "test_examples", "input_range",
                   "max_input", "target", "batch_size", "schedule", "num_batches", "batches_root", "test_root"}
_HYPER_FIELDS = {"epochs", "iterations", "init_seed"}


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """The one byte form of a task definition (what the spec's
    parse_task_definition accepts)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


@dataclass(frozen=True)
class TaskDefinition:
    document: dict[str, Any]

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.document)

    @property
    def task_hash(self) -> str:
        """SHA-256 of the canonical bytes, hex (the task's content hash)."""
        return hash_bytes(self.to_bytes()).hex()

    @property
    def template(self) -> str:
        return self.document["template"]

    @property
    def model(self) -> dict[str, Any]:
        return self.document["model"]

    @property
    def generator(self) -> dict[str, Any] | None:
        return self.document.get("generator")

    @property
    def dataset(self) -> dict[str, Any]:
        return self.document["dataset"]

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return self.document["hyperparameters"]


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------
def _reject_constant(name: str):
    raise TaskDefinitionError(f"task file holds {name}; numbers must be finite")


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise TaskDefinitionError(f"task file repeats the key {key!r}")
        seen[key] = value
    return seen


def parse_task(data: bytes) -> TaskDefinition:
    """A TaskDefinition from JSON bytes (any whitespace; it is canonicalized),
    validated field by field; errors name the field."""
    if not isinstance(data, (bytes, bytearray)):
        raise TaskDefinitionError("a task definition is bytes")
    if len(data) > MAX_TASK_BYTES:
        raise TaskDefinitionError(f"task file is {len(data)} bytes, more than {MAX_TASK_BYTES}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskDefinitionError(f"task file is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise TaskDefinitionError(f"task file is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise TaskDefinitionError("task file nests too deeply") from None
    return validate(document)


def load_task(path: str) -> TaskDefinition:
    """Read and validate a task file."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TASK_BYTES + 1)
    except OSError as exc:
        raise TaskDefinitionError(f"cannot read task file {path}: {exc.strerror}") from None
    return parse_task(data)


def _fields(value: Any, where: str, required: set[str], optional: set[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TaskDefinitionError(f"{where}: must be an object, got {type(value).__name__}")
    missing = sorted(required - set(value))
    if missing:
        raise TaskDefinitionError(f"{where}.{missing[0]}: missing")
    unknown = sorted(set(value) - required - set(optional))
    if unknown:
        raise TaskDefinitionError(f"{where}.{unknown[0]}: unknown field")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TaskDefinitionError(f"{where}: must be an integer in {low}..{high}, got {value!r}")
    return value


def _text(value: Any, where: str, pattern: str = r"^[A-Za-z0-9_.\-\[\]%:]{1,64}$") -> str:
    if not isinstance(value, str) or not re.match(pattern, value):
        raise TaskDefinitionError(f"{where}: must be a short name, got {value!r}")
    return value


def _hex32(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HEX32.match(value):
        raise TaskDefinitionError(f"{where}: must be 64 lowercase hex digits, got {value!r}")
    return value


def _engine_model(value: Any, where: str) -> dict[str, Any]:
    try:
        canonical = ModelSpec.from_dict(value).to_dict()
    except ModelSpecError as exc:
        raise TaskDefinitionError(f"{where}: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError) as exc:  # malformed shapes deep inside
        raise TaskDefinitionError(f"{where}: malformed model description ({exc})") from None
    if canonical != value:
        raise TaskDefinitionError(f"{where}: not the engine's canonical form (defaults must be explicit)")
    return canonical


def validate(document: Any) -> TaskDefinition:
    """Check every field of a task definition document; return it wrapped."""
    template = document.get("template") if isinstance(document, dict) else None
    optional = {"generator"} if template == "gan" else set()
    _fields(document, "task", _TOP_FIELDS | optional, set())
    if document["format"] != TASK_FORMAT:
        raise TaskDefinitionError(f"format: must be {TASK_FORMAT!r}, got {document['format']!r}")
    if template not in TEMPLATES:
        raise TaskDefinitionError(f"template: must be one of {', '.join(TEMPLATES)}, got {template!r}")
    model = _engine_model(document["model"], "model")
    if template == "gan":
        generator = _engine_model(document["generator"], "generator")
        if generator["slices"] != model["slices"]:
            raise TaskDefinitionError("generator.slices: must equal model.slices")
    slices = document["slices"]
    if isinstance(slices, bool) or slices != model["slices"]:
        raise TaskDefinitionError(f"slices: must equal model.slices ({model['slices']}), got {slices!r}")

    dataset = _fields(document["dataset"], "dataset", _DATASET_FIELDS)
    _text(dataset["name"], "dataset.name", r"^[a-z0-9_]{1,64}$")
    _text(dataset["version"], "dataset.version", r"^[0-9]{1,6}\.[0-9]{1,6}\.[0-9]{1,6}$")
    _text(dataset["split"], "dataset.split")
    _text(dataset["test_split"], "dataset.test_split")
    if dataset["split"] == dataset["test_split"]:
        raise TaskDefinitionError("dataset.test_split: must differ from dataset.split")
    num_examples = _int(dataset["num_examples"], "dataset.num_examples", 1, 1 << 31)
    _int(dataset["test_examples"], "dataset.test_examples", 1, 1 << 31)
    _int(dataset["max_input"], "dataset.max_input", 1, 1 << 31)
    input_range = dataset["input_range"]
    if (not isinstance(input_range, list) or len(input_range) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in input_range)
            or not -1e6 <= input_range[0] < input_range[1] <= 1e6):
        raise TaskDefinitionError(f"dataset.input_range: must be [low, high] with low < high, got {input_range!r}")
    if dataset["target"] not in TARGETS:
        raise TaskDefinitionError(f"dataset.target: must be one of {', '.join(TARGETS)}, got {dataset['target']!r}")
    expected_target = {"dnn": "label", "cnn": "label", "dnn_regressor": "label_scaled", "gan": "none"}[template]
    if dataset["target"] != expected_target:
        raise TaskDefinitionError(f"dataset.target: template {template} trains on {expected_target!r}, got {dataset['target']!r}")
    batch_size = _int(dataset["batch_size"], "dataset.batch_size", 1, 1 << 16)
    if batch_size > num_examples:
        raise TaskDefinitionError(f"dataset.batch_size: {batch_size} is more than the {num_examples} examples")
    rule = _fields(dataset["schedule"], "dataset.schedule", {"rule", "seed"})
    if rule["rule"] != schedule.SCHEDULE_RULE:
        raise TaskDefinitionError(f"dataset.schedule.rule: must be {schedule.SCHEDULE_RULE!r}, got {rule['rule']!r}")
    _int(rule["seed"], "dataset.schedule.seed", 0, (1 << 64) - 1)
    num_batches = _int(dataset["num_batches"], "dataset.num_batches", 1, 1 << 24)
    _hex32(dataset["batches_root"], "dataset.batches_root")
    _hex32(dataset["test_root"], "dataset.test_root")

    hyper_fields = _HYPER_FIELDS | ({"latent_dim"} if template == "gan" else set())
    hyper = _fields(document["hyperparameters"], "hyperparameters", hyper_fields)
    epochs = _int(hyper["epochs"], "hyperparameters.epochs", 1, 1 << 16)
    _int(hyper["iterations"], "hyperparameters.iterations", 1, 1 << 24)
    _int(hyper["init_seed"], "hyperparameters.init_seed", 0, (1 << 32) - 1)
    per_epoch = schedule.batches_per_epoch(num_examples, batch_size)
    if num_batches != per_epoch * epochs:
        raise TaskDefinitionError(
            f"dataset.num_batches: {num_examples} examples in batches of {batch_size} for {epochs} epochs "
            f"make {per_epoch * epochs} batches, got {num_batches}"
        )
    if hyper["iterations"] != num_batches:
        raise TaskDefinitionError(f"hyperparameters.iterations: must equal dataset.num_batches ({num_batches})")
    if template == "gan":
        latent = _int(hyper["latent_dim"], "hyperparameters.latent_dim", 1, 4096)
        if list(document["generator"]["input_shape"]) != [latent]:
            raise TaskDefinitionError(f"generator.input_shape: must be [latent_dim] = [{latent}]")
        if list(document["model"]["input_shape"]) != list(_output_shape(document["generator"])):
            raise TaskDefinitionError("model.input_shape: the discriminator must take the generator's output shape")
    try:
        canonical_bytes(document)
    except ValueError as exc:
        raise TaskDefinitionError(f"task holds a value JSON cannot carry canonically: {exc}") from None
    return TaskDefinition(document)


def _output_shape(description: dict[str, Any]) -> tuple[int, ...]:
    return tuple(ModelSpec.from_dict(description).output_shape)


# ---------------------------------------------------------------------------
# The task's data, quantized, and its commitments
# ---------------------------------------------------------------------------
class TaskData:
    """A task's training and test tensors rebuilt from the local dataset, in
    the engine's fixed point: `batch(k)` is scheduled batch k."""

    def __init__(self, name: str, version: str | None, split: str, test_split: str, input_shape: list[int],
                 input_range: tuple[float, float], target: str, data_dir: str | None = None,
                 test_file: str | None = None):
        train = datasets.load_split(name, split, version, data_dir)
        if test_split == WITHHELD_TEST_SPLIT:
            # Only the client holds it: None on every other node until it is revealed.
            test = datasets.load_test_file(test_file, train) if test_file else None
        elif test_file:
            raise DatasetError(f"a test file is for a task whose test split is {WITHHELD_TEST_SPLIT!r}; "
                               f"this one tests on {name}:{test_split}")
        else:
            test = datasets.load_split(name, test_split, version, data_dir)
        self.name, self.version, self.split, self.test_split = name, train.version, split, test_split
        self.max_input = train.max_input
        self.num_classes = train.num_classes
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.target = target
        self.input_shape = tuple(input_shape)
        self.train_x = self._quantize(train.inputs)
        self.train_y = self._targets(train.labels)
        self.train_float = self.to_float(train.inputs)
        self.test_x = None if test is None else self._quantize(test.inputs)
        self.test_y = None if test is None else self._targets(test.labels)
        self.test_float = None if test is None else self.to_float(test.inputs)

    @property
    def has_test(self) -> bool:
        """False on a node without the withheld test split (everyone but its client)."""
        return self.test_x is not None

    def to_float(self, raw: np.ndarray) -> np.ndarray:
        """Raw dataset values -> the float32 inputs a float model would see."""
        size = math.prod(raw.shape[1:])
        if size != math.prod(self.input_shape):
            raise DatasetError(
                f"dataset {self.name!r} examples have shape {raw.shape[1:]} ({size} values); the model takes "
                f"{list(self.input_shape)}"
            )
        low, high = self.input_range
        scaled = low + (high - low) * raw.astype(np.float64) / self.max_input
        return scaled.reshape((raw.shape[0], *self.input_shape)).astype(np.float32)

    def _quantize(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(engine.quantize_inputs(self.to_float(raw)))

    def _targets(self, labels: np.ndarray) -> np.ndarray:
        if self.target == "label":
            return labels.astype(np.int32)
        if self.target == "label_scaled":
            top = (self.num_classes or int(labels.max()) + 1) - 1
            return np.asarray(engine.quantize_inputs((labels.astype(np.float64) / top).astype(np.float32)[:, None]))
        return np.zeros((labels.shape[0],), dtype=np.int32)

    @property
    def num_examples(self) -> int:
        return int(self.train_x.shape[0])

    def batch(self, batch_size: int, seed: int, index: int) -> dict[str, np.ndarray]:
        picks = schedule.batch_indices(self.num_examples, batch_size, seed, index)
        return {"x": self.train_x[picks], "y": self.train_y[picks]}

    def batches(self, batch_size: int, seed: int, epochs: int):
        """Every scheduled batch in order, as (epoch, {"x", "y"})."""
        for epoch, picks in schedule.schedule(self.num_examples, batch_size, seed, epochs):
            yield epoch, {"x": self.train_x[picks], "y": self.train_y[picks]}

    def batches_root(self, batch_size: int, seed: int, epochs: int) -> str:
        roots = [batch_root(batch) for _, batch in self.batches(batch_size, seed, epochs)]
        return compute_merkle_root(roots).hex()

    def test_root(self) -> str:
        if not self.has_test:
            raise DatasetError(f"the test split of this {self.name} task is withheld by its client")
        return batch_root({"x": self.test_x, "y": self.test_y}).hex()


def task_data(task: TaskDefinition, data_dir: str | None = None, test_file: str | None = None) -> TaskData:
    """The task's data from the local dataset, checked against the task's
    commitments (a different dataset or a changed file is a DatasetError).
    A withheld test split is read from `test_file` when given (the client's
    copy), else left out (`has_test` is False)."""
    dataset = task.dataset
    data = TaskData(dataset["name"], dataset["version"], dataset["split"], dataset["test_split"],
                    task.model["input_shape"], tuple(dataset["input_range"]), dataset["target"], data_dir, test_file)
    if data.num_examples != dataset["num_examples"]:
        raise DatasetError(f"local {dataset['name']}:{dataset['split']} has {data.num_examples} examples, the task says {dataset['num_examples']}")
    if data.max_input != dataset["max_input"]:
        raise DatasetError(f"local {dataset['name']} has max_input {data.max_input}, the task says {dataset['max_input']}")
    rule = dataset["schedule"]
    if data.batches_root(dataset["batch_size"], rule["seed"], task.hyperparameters["epochs"]) != dataset["batches_root"]:
        raise DatasetError(f"the local {dataset['name']} batches do not match the task's batches_root")
    if data.has_test and data.test_root() != dataset["test_root"]:
        source = test_file or f"the local {dataset['name']}:{dataset['test_split']}"
        raise DatasetError(f"{source} does not match the task's test_root")
    return data


def build_task(template: str, model: dict[str, Any], dataset: str, *, batch_size: int, epochs: int,
               schedule_seed: int = 0, init_seed: int = 0, input_range: tuple[float, float] = (0.0, 1.0),
               split: str = "train", test_split: str = "test", version: str | None = None,
               generator: dict[str, Any] | None = None, latent_dim: int | None = None,
               data_dir: str | None = None, test_file: str | None = None) -> TaskDefinition:
    """A validated task definition for `model` (engine description) trained on
    `dataset`, committing to its batches and its test split: the dataset's
    `test_split`, or the client's `test_file`, withheld until evaluation."""
    if template not in TEMPLATES:
        raise TaskDefinitionError(f"template: must be one of {', '.join(TEMPLATES)}, got {template!r}")
    target = {"dnn": "label", "cnn": "label", "dnn_regressor": "label_scaled", "gan": "none"}[template]
    if test_file:
        test_split = WITHHELD_TEST_SPLIT
    data = TaskData(dataset, version, split, test_split, model["input_shape"], input_range, target, data_dir,
                    test_file)
    if batch_size > data.num_examples:
        raise TaskDefinitionError(f"dataset.batch_size: {batch_size} is more than the {data.num_examples} examples")
    num_batches = schedule.batches_per_epoch(data.num_examples, batch_size) * epochs
    document: dict[str, Any] = {
        "format": TASK_FORMAT,
        "template": template,
        "model": model,
        "dataset": {
            "name": dataset, "version": data.version, "split": split, "test_split": test_split,
            "num_examples": data.num_examples, "test_examples": int(data.test_x.shape[0]),
            "input_range": [float(input_range[0]), float(input_range[1])], "max_input": data.max_input,
            "target": target, "batch_size": batch_size,
            "schedule": {"rule": schedule.SCHEDULE_RULE, "seed": schedule_seed},
            "num_batches": num_batches,
            "batches_root": data.batches_root(batch_size, schedule_seed, epochs),
            "test_root": data.test_root(),
        },
        "hyperparameters": {"epochs": epochs, "iterations": num_batches, "init_seed": init_seed},
        "slices": model.get("slices"),
    }
    if template == "gan":
        document["generator"] = generator
        document["hyperparameters"]["latent_dim"] = latent_dim
    # A round trip through bytes gives the exact document a verifier parses.
    return parse_task(canonical_bytes(document))
