"""The digits TFDS builder (array_record, no TensorFlow) and the batch schedule."""
import os
import subprocess
import sys

import numpy as np
import pytest

from bws.templates import datasets, schedule
from bws.templates.datasets import digits
from bws.templates.errors import DatasetError


def test_digits_splits_are_the_vendored_rows(data_dir):
    rows = digits.read_rows()
    train = datasets.load_split("digits", "train", data_dir=data_dir)
    test = datasets.load_split("digits", "test", data_dir=data_dir)
    assert train.inputs.shape == (1501, 8, 8, 1) and test.inputs.shape == (296, 8, 8, 1)
    assert train.inputs.dtype == np.uint8 and train.max_input == 16 and train.num_classes == 10
    # The same multiset of (pixels, label) rows as the file says, split by the stratified rule.
    mask = digits.test_mask(rows[:, 64])

    def as_set(split):
        return sorted(map(tuple, np.concatenate([split.inputs.reshape(-1, 64), split.labels[:, None]], axis=1).tolist()))

    assert as_set(test) == sorted(map(tuple, rows[mask].tolist()))
    assert as_set(train) == sorted(map(tuple, rows[~mask].tolist()))
    assert set(np.bincount(test.labels)) <= {29, 30}


def test_record_order_is_stable_across_preparations(data_dir, tmp_path):
    first = datasets.load_split("digits", "train", data_dir=data_dir)
    second = datasets.load_split("digits", "train", data_dir=str(tmp_path))
    assert np.array_equal(first.inputs, second.inputs) and np.array_equal(first.labels, second.labels)


def test_reading_does_not_import_tensorflow(data_dir):
    code = ("import sys; from bws.templates import datasets; "
            f"datasets.load_split('digits', 'test', data_dir={data_dir!r}); "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("name, split, match", [
    ("mnist", "train", "not prepared.*tfds build mnist --file_format=array_record"),
    ("no_such_dataset", "train", "not found"),
    ("digits", "validation", "no split 'validation'"),
    ("../etc", "train", "TFDS name"),
])
def test_unusable_datasets_are_clear_errors(data_dir, name, split, match):
    with pytest.raises(DatasetError, match=match):
        datasets.load_split(name, split, data_dir=data_dir)


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    assert datasets.default_data_dir() == str(tmp_path)
    monkeypatch.delenv(datasets.DATA_DIR_ENV)
    assert datasets.default_data_dir() == os.path.expanduser("~/.cache/bws/tensorflow_datasets")


def test_schedule_is_a_permutation_per_epoch_and_deterministic():
    first = list(schedule.schedule(100, 32, seed=7, epochs=2))
    assert len(first) == 6 and [epoch for epoch, _ in first] == [0, 0, 0, 1, 1, 1]
    epoch0 = np.concatenate([picks for epoch, picks in first if epoch == 0])
    assert len(set(epoch0.tolist())) == 96  # no repeats; the remainder of 4 is dropped
    assert not np.array_equal(first[0][1], first[3][1])  # epochs are reshuffled
    again = list(schedule.schedule(100, 32, seed=7, epochs=2))
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, again))
    assert np.array_equal(schedule.batch_indices(100, 32, 7, 4), first[4][1])
    assert not np.array_equal(schedule.epoch_order(100, 8, 0), schedule.epoch_order(100, 7, 0))


def test_schedule_rule_pinned():
    # The rule is part of the protocol: recomputed here from its definition, and pinned.
    import hashlib

    def key(index):
        return hashlib.sha256(b"BWS/schedule" + (0).to_bytes(8, "little") + (0).to_bytes(4, "little")
                              + index.to_bytes(4, "little")).digest()

    assert schedule.epoch_order(10, 0, 0).tolist() == sorted(range(10), key=key) == [5, 6, 1, 7, 3, 0, 8, 2, 4, 9]


def test_a_lazy_import_window_on_one_thread_leaves_imports_on_other_threads_alone():
    """TFDS opens etils' lazy-import window (a process-wide replacement of
    builtins.__import__ that refuses relative imports) while its modules load;
    py-libp2p imports `from .api import ...` in each task it spawns, on the
    network thread, and failed (docs/node-p2p.md, rule 11)."""
    import threading

    from etils import epy
    from libp2p.tools.anyio_service.utils import get_task_name

    datasets.confine_lazy_imports_to_their_thread()
    opened, release, seen = threading.Event(), threading.Event(), {}

    def load_on_a_role_thread():
        with epy.lazy_imports():
            import json as lazily_loaded  # noqa: F401  (a lazy module inside the window)
            seen["lazy"] = type(lazily_loaded).__name__
            opened.set()
            release.wait(10)

    thread = threading.Thread(target=load_on_a_role_thread)
    thread.start()
    assert opened.wait(10)
    try:
        assert get_task_name(len, None) == "len"   # runs `from .api import ServiceAPI` first
        import json
        assert type(json).__name__ == "module"
    finally:
        release.set()
        thread.join()
    assert seen["lazy"] == "LazyModule"   # the window still works on its own thread
