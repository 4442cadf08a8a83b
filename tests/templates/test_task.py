"""The task definition: canonical bytes, strict validation, data commitments."""
import copy
import json

import numpy as np
import pytest

from bws.spec.tasks import compute_work_units, parse_task_definition
from bws.templates import jobs
from bws.templates.errors import DatasetError, TaskDefinitionError
from bws.templates.task import WITHHELD_TEST_SPLIT, canonical_bytes, load_task, parse_task, task_data, validate


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


def _client_test_file(path, data_dir, count=100):
    from bws.templates import datasets

    test = datasets.load_split("digits", "test", data_dir=data_dir)
    np.savez(path, x=test.inputs[:count], y=test.labels[:count])
    return str(path)


def test_withheld_test_split_is_committed_and_only_the_client_holds_it(dnn_task, tmp_path):
    _, data_dir = dnn_task
    test_file = _client_test_file(tmp_path / "mine.npz", data_dir)
    task = jobs.make_task("dnn", "digits", epochs=2, batch_size=64, data_dir=data_dir, test_file=test_file)
    assert task.dataset["test_split"] == WITHHELD_TEST_SPLIT and task.dataset["test_examples"] == 100
    # Every other node: the training data, no test split.
    node_view = task_data(task, data_dir)
    assert not node_view.has_test and node_view.test_x is None
    with pytest.raises(DatasetError, match="withheld by its client"):
        node_view.test_root()
    # The client: its file, checked against the commitment.
    client_view = task_data(task, data_dir, test_file=test_file)
    assert client_view.test_root() == task.dataset["test_root"]
    assert client_view.test_x.shape == (100, 64) and client_view.test_x.dtype == np.int32
    other = _client_test_file(tmp_path / "other.npz", data_dir, count=99)
    with pytest.raises(DatasetError, match="does not match the task's test_root"):
        task_data(task, data_dir, test_file=other)
    public = jobs.make_task("dnn", "digits", epochs=2, batch_size=64, data_dir=data_dir)
    with pytest.raises(DatasetError, match="a test file is for a task whose test split is 'withheld'"):
        task_data(public, data_dir, test_file=test_file)
    # Same training commitments as the public task: only the test split differs.
    assert task.dataset["batches_root"] == public.dataset["batches_root"]
    assert task.dataset["test_root"] != public.dataset["test_root"]


@pytest.mark.parametrize("arrays, match", [
    ({"y": np.zeros(3, np.int64)}, "no array 'x'"),
    ({"x": np.zeros((3, 8, 8, 1), np.uint8)}, "no array 'y'"),
    ({"x": np.zeros((3, 8, 8, 1), np.float32), "y": np.zeros(3, np.int64)}, "x is float32"),
    ({"x": np.zeros((3, 64), np.uint8), "y": np.zeros(3, np.int64)}, r"x has shape \(3, 64\)"),
    ({"x": np.zeros((0, 8, 8, 1), np.uint8), "y": np.zeros(0, np.int64)}, "at least one example"),
    ({"x": np.full((3, 8, 8, 1), 17, np.uint8), "y": np.zeros(3, np.int64)}, "values in 17..17"),
    ({"x": np.zeros((3, 8, 8, 1), np.uint8), "y": np.zeros(4, np.int64)}, "y must be 3 integer labels"),
    ({"x": np.zeros((3, 8, 8, 1), np.uint8), "y": np.array([0, 1, 10])}, "labels in 0..10"),
])
def test_a_bad_test_file_is_refused_with_its_fault(dnn_task, tmp_path, arrays, match):
    _, data_dir = dnn_task
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=match):
        jobs.make_task("dnn", "digits", epochs=1, batch_size=64, data_dir=data_dir, test_file=str(path))


def test_a_test_file_that_is_not_an_npz_is_refused(dnn_task, tmp_path):
    _, data_dir = dnn_task
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(DatasetError, match="not a NumPy .npz archive"):
        jobs.make_task("dnn", "digits", epochs=1, batch_size=64, data_dir=data_dir, test_file=str(path))
    with pytest.raises(DatasetError, match="cannot read test file"):
        jobs.make_task("dnn", "digits", epochs=1, batch_size=64, data_dir=data_dir, test_file=str(tmp_path / "no.npz"))
