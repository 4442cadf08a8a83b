"""The task definition: canonical bytes, strict validation, data commitments."""
import copy
import json

import pytest

from bws.spec.tasks import compute_work_units, parse_task_definition
from bws.templates import jobs
from bws.templates.errors import DatasetError, TaskDefinitionError
from bws.templates.task import canonical_bytes, load_task, parse_task, task_data, validate


@pytest.fixture(scope="module")
def dnn_task(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return jobs.make_task("dnn", "digits", epochs=2, batch_size=64, data_dir=data_dir), data_dir


def test_task_is_canonical_and_the_spec_reads_it(dnn_task):
    task, _ = dnn_task
    data = task.to_bytes()
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert parse_task_definition(data)["dataset"]["batch_size"] == 64
    assert compute_work_units(data) > 0
    assert task.dataset["num_batches"] == 2 * (1501 // 64) == task.hyperparameters["iterations"]
    # Reformatting the file does not change the task: it is hashed in canonical form.
    assert parse_task(json.dumps(task.document, indent=2).encode()).task_hash == task.task_hash


def test_task_hash_depends_on_every_choice(dnn_task, tmp_path):
    task, data_dir = dnn_task
    assert jobs.make_task("dnn", "digits", epochs=2, batch_size=64, data_dir=data_dir).task_hash == task.task_hash
    other_schedule = jobs.make_task("dnn", "digits", epochs=2, batch_size=64, schedule_seed=1, data_dir=data_dir)
    assert other_schedule.dataset["batches_root"] != task.dataset["batches_root"]
    assert other_schedule.dataset["test_root"] == task.dataset["test_root"]
    assert jobs.make_task("dnn", "digits", epochs=2, batch_size=64, init_seed=1, data_dir=data_dir).task_hash != task.task_hash


def test_load_task_from_file(dnn_task, tmp_path):
    task, _ = dnn_task
    path = tmp_path / "task.json"
    path.write_bytes(task.to_bytes() + b"\n")
    assert load_task(str(path)).task_hash == task.task_hash
    with pytest.raises(TaskDefinitionError, match="cannot read"):
        load_task(str(tmp_path / "missing.json"))


def _mutated(task, path, value):
    document = copy.deepcopy(task.document)
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


@pytest.mark.parametrize("path, value, match", [
    (("format",), "bws-task/0", "format"),
    (("template",), "rnn", "template"),
    (("slices",), 2, "slices"),
    (("dataset", "batch_size"), 0, "dataset.batch_size"),
    (("dataset", "batch_size"), True, "dataset.batch_size"),
    (("dataset", "num_batches"), 7, "dataset.num_batches"),
    (("dataset", "batches_root"), "ab", "dataset.batches_root"),
    (("dataset", "test_root"), KeyError, "dataset.test_root: missing"),
    (("dataset", "schedule", "rule"), "random", "dataset.schedule.rule"),
    (("dataset", "test_split"), "train", "dataset.test_split"),
    (("dataset", "input_range"), [1.0, 0.0], "dataset.input_range"),
    (("dataset", "target"), "none", "dataset.target"),
    (("dataset", "extra"), 1, "dataset.extra: unknown field"),
    (("hyperparameters", "iterations"), 1, "hyperparameters.iterations"),
    (("hyperparameters", "epochs"), -1, "hyperparameters.epochs"),
    (("model", "layers"), [], "model"),
    (("model", "optimizer"), {"type": "rmsprop"}, "model"),
    (("model", "loss"), {"type": "mse"}, "model"),
])
def test_bad_fields_are_named(dnn_task, path, value, match):
    task, _ = dnn_task
    with pytest.raises(TaskDefinitionError, match=match):
        validate(_mutated(task, path, value))


@pytest.mark.parametrize("data, match", [
    (b"\xff\xfe", "not UTF-8"),
    (b"{", "not JSON"),
    (b'{"a": 1, "a": 2}', "repeats the key"),
    (b'{"x": NaN}', "NaN"),
    (b"[]", "must be an object"),
    (b"{}", "missing"),
])
def test_unparseable_files_are_named(data, match):
    with pytest.raises(TaskDefinitionError, match=match):
        parse_task(data)


def test_task_data_checks_the_commitments(dnn_task):
    task, data_dir = dnn_task
    data = task_data(task, data_dir)
    assert data.train_x.dtype.name == "int32" and data.train_x.shape == (1501, 64)
    tampered = parse_task(canonical_bytes(_mutated(task, ("dataset", "batches_root"), "0" * 64)))
    with pytest.raises(DatasetError, match="batches_root"):
        task_data(tampered, data_dir)
    tampered = parse_task(canonical_bytes(_mutated(task, ("dataset", "test_root"), "0" * 64)))
    with pytest.raises(DatasetError, match="test_root"):
        task_data(tampered, data_dir)


def test_gan_task_carries_both_networks(dnn_task):
    _, data_dir = dnn_task
    task = jobs.make_task("gan", "digits", epochs=1, data_dir=data_dir)
    assert task.generator["input_shape"] == [16] and task.model["input_shape"] == [64]
    assert task.dataset["input_range"] == [-1.0, 1.0] and task.dataset["target"] == "none"
    with pytest.raises(TaskDefinitionError, match="generator.input_shape"):
        validate(_mutated(task, ("hyperparameters", "latent_dim"), 8))
