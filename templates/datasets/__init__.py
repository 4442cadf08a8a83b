"""Datasets, named as tensorflow-datasets builders and read without TensorFlow.

BWS reads prepared TFDS datasets through random-access array_record data sources
(`builder.as_data_source(split)`), so no TensorFlow is needed and nothing is
downloaded at run time. The project ships one real dataset as a local builder,
`digits` (the UCI handwritten digits, see digits.py); `prepare("digits")` writes
it into the data directory. Any other TFDS dataset works once the user has
prepared it in array_record format into the same directory, e.g.

    tfds build mnist --file_format=array_record --data_dir ~/.cache/bws/tensorflow_datasets
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np

from ..errors import DatasetError

DATA_DIR_ENV = "BWS_DATA_DIR"
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "bws", "tensorflow_datasets")
# Builders BWS can prepare itself, from files it ships.
LOCAL_BUILDERS = ("digits",)


def default_data_dir() -> str:
    """$BWS_DATA_DIR, else ~/.cache/bws/tensorflow_datasets."""
    return os.path.expanduser(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


@dataclass(frozen=True)
class SplitArrays:
    """One split as arrays: raw inputs (e.g. uint8 images), integer labels, and
    what identifies them."""

    name: str
    version: str
    split: str
    inputs: np.ndarray
    labels: np.ndarray
    num_classes: int | None
    max_input: int  # the largest value the raw input dtype can hold (digits: 16)


def _tfds():
    # TFDS logs a warning for every variant folder it probes; BWS reports its own errors.
    logging.getLogger("absl").setLevel(logging.ERROR)
    confine_lazy_imports_to_their_thread()
    import tensorflow_datasets as tfds

    return tfds


def confine_lazy_imports_to_their_thread() -> None:
    """TFDS loads its modules inside etils' `epy.lazy_imports()`, which
    replaces `builtins.__import__` for the whole process while it is open,
    and that replacement refuses relative imports: any other thread that
    runs `from .x import y` meanwhile fails (py-libp2p does so in every task
    it spawns, so a node loading a dataset on one thread broke its peers'
    pubsub streams: "Relative import statements not supported (api)"). The
    window is made to apply to the thread that opened it only. Idempotent."""
    import builtins
    import threading

    from etils import epy

    if getattr(epy.lazy_imports, "confined_to_thread", False):
        return
    process_wide = epy.lazy_imports

    @contextlib.contextmanager
    def lazy_imports(**callbacks):
        opener, outside = threading.get_ident(), builtins.__import__
        with process_wide(**callbacks):
            lazy = builtins.__import__
            builtins.__import__ = lambda *args, **kwargs: (
                lazy if threading.get_ident() == opener else outside)(*args, **kwargs)
            try:
                yield
            finally:
                builtins.__import__ = lazy   # process_wide's exit puts `outside` back

    lazy_imports.confined_to_thread = True
    epy.lazy_imports = lazy_imports


def _digits_builder(data_dir: str):
    from .digits import Digits

    return Digits(data_dir=data_dir, file_format="array_record")


def prepare(name: str, data_dir: str | None = None) -> str:
    """Prepare a dataset BWS ships into `data_dir` (idempotent); returns the folder."""
    if name not in LOCAL_BUILDERS:
        raise DatasetError(
            f"BWS cannot prepare {name!r} itself (it only ships {', '.join(LOCAL_BUILDERS)}); prepare it with "
            f"`tfds build {name} --file_format=array_record --data_dir {data_dir or default_data_dir()}`"
        )
    tfds = _tfds()
    builder = _digits_builder(data_dir or default_data_dir())
    if not builder.is_prepared():
        # TFDS prints its progress to stdout; keep stdout for the command's output
        # (`bws task new > task.json`).
        with contextlib.redirect_stdout(sys.stderr):
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    return str(builder.data_dir)


def builder_for(name: str, version: str | None = None, data_dir: str | None = None):
    """The prepared TFDS builder of `name` (at `version`, when given); the local
    builders are prepared on first use, anything else must already be."""
    data_dir = data_dir or default_data_dir()
    if not isinstance(name, str) or not name or "/" in name or ":" in name:
        raise DatasetError(f"dataset name must be a TFDS name like 'digits' or 'mnist', got {name!r}")
    if name in LOCAL_BUILDERS:
        prepare(name, data_dir)
        builder = _digits_builder(data_dir)
        if version is not None and str(builder.version) != version:
            raise DatasetError(f"dataset {name!r} is at version {builder.version}, the task wants {version}")
        return builder
    tfds = _tfds()
    try:
        builder = tfds.builder(name if version is None else f"{name}:{version}", data_dir=data_dir)
    except Exception as exc:  # DatasetNotFoundError, bad version strings, ...
        raise DatasetError(f"dataset {name!r}{'' if version is None else ' version ' + version}: {str(exc).splitlines()[0]}") from None
    if not builder.is_prepared():
        raise DatasetError(
            f"dataset {name!r} is not prepared in {data_dir}; prepare it with "
            f"`tfds build {name} --file_format=array_record --data_dir {data_dir}` (BWS downloads nothing)"
        )
    return builder


def load_split(name: str, split: str, version: str | None = None, data_dir: str | None = None) -> SplitArrays:
    """Read a whole split of a supervised TFDS dataset as arrays, in the
    data source's record order (which the task's batch schedule indexes)."""
    builder = builder_for(name, version, data_dir)
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise DatasetError(f"dataset {name!r} has no (input, label) supervised keys; BWS trains supervised datasets")
    input_key, label_key = keys
    if split not in builder.info.splits:
        raise DatasetError(f"dataset {name!r} has no split {split!r}; it has {', '.join(sorted(builder.info.splits))}")
    try:
        source = builder.as_data_source(split=split)
    except (NotImplementedError, ValueError) as exc:
        raise DatasetError(
            f"dataset {name!r} cannot be read without TensorFlow ({str(exc).splitlines()[0]}); "
            f"rebuild it with `tfds build {name} --file_format=array_record`"
        ) from None
    records = source.__getitems__(list(range(len(source))))
    inputs = np.stack([np.asarray(record[input_key]) for record in records])
    labels = np.asarray([record[label_key] for record in records], dtype=np.int64)
    label_feature = builder.info.features[label_key]
    num_classes = getattr(label_feature, "num_classes", None)
    if name == "digits":
        from .digits import MAX_PIXEL

        max_input = MAX_PIXEL
    elif np.issubdtype(inputs.dtype, np.integer):
        max_input = int(np.iinfo(inputs.dtype).max)
    else:
        raise DatasetError(f"dataset {name!r}: input {input_key!r} is {inputs.dtype}; BWS needs integer (e.g. uint8) inputs")
    return SplitArrays(name=name, version=str(builder.version), split=split, inputs=inputs, labels=labels,
                       num_classes=num_classes, max_input=max_input)


MAX_TEST_FILE_BYTES = 1 << 30


def load_test_file(path: str, like: SplitArrays) -> SplitArrays:
    """A client's own test split, withheld from the network until evaluation:
    an .npz file holding `x` (raw inputs shaped like `like`'s examples, integers
    in 0..max_input, the dataset's units) and `y` (integer class labels).
    DatasetError names what is wrong with the file."""
    import zipfile

    try:
        if os.path.getsize(path) > MAX_TEST_FILE_BYTES:
            raise DatasetError(f"test file {path}: more than {MAX_TEST_FILE_BYTES} bytes")
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise DatasetError(f"test file {path}: no array {missing[0]!r} (it needs 'x' and 'y'; "
                                   f"it has {', '.join(archive.files) or 'none'})")
            inputs, labels = archive["x"], archive["y"]
    except OSError as exc:
        raise DatasetError(f"cannot read test file {path}: {exc.strerror or exc}") from None
    except (ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"test file {path} is not a NumPy .npz archive of plain arrays ({exc})") from None
    example_shape = tuple(like.inputs.shape[1:])
    if not np.issubdtype(inputs.dtype, np.integer):
        raise DatasetError(f"test file {path}: x is {inputs.dtype}; inputs are integers in the dataset's units "
                           f"(0..{like.max_input}), like {like.name}'s")
    if inputs.ndim < 1 or tuple(inputs.shape[1:]) != example_shape or inputs.shape[0] == 0:
        raise DatasetError(f"test file {path}: x has shape {inputs.shape}; expected (examples, "
                           f"{', '.join(map(str, example_shape))}) with at least one example")
    if inputs.min() < 0 or inputs.max() > like.max_input:
        raise DatasetError(f"test file {path}: x holds values in {inputs.min()}..{inputs.max()}; "
                           f"{like.name}'s inputs are in 0..{like.max_input}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (inputs.shape[0],):
        raise DatasetError(f"test file {path}: y must be {inputs.shape[0]} integer labels, got {labels.dtype} "
                           f"of shape {labels.shape}")
    classes = like.num_classes
    if labels.min() < 0 or (classes is not None and labels.max() >= classes):
        raise DatasetError(f"test file {path}: y holds labels in {labels.min()}..{labels.max()}; "
                           f"{like.name} has classes 0..{(classes or 1) - 1}")
    return SplitArrays(name=like.name, version=like.version, split="withheld", inputs=inputs.astype(like.inputs.dtype),
                       labels=labels.astype(np.int64), num_classes=classes, max_input=like.max_input)
