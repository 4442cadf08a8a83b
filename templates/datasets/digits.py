"""The UCI handwritten digits as a local tensorflow-datasets builder.

1,797 images of 8x8 pixels with values 0..16 (each pixel counts the set bits of a
4x4 block of a 32x32 bitmap) and their labels 0..9, as scikit-learn's wheel ships
them (`digits.csv.gz` next to this file, see LICENSE-digits.txt). Nothing is
downloaded: the builder reads the vendored file.

Splits, stratified and fixed by the row order of the vendored file: of each
class's rows, in file order, every sixth (the 6th, 12th, ...) is `test` (296
rows, 29 or 30 per class), the other 1,501 are `train`. Interleaving keeps every
group of writers in both splits; a contiguous block (e.g. the last 297 rows)
would test on writers never seen in training, which float models too score only
~92% on. The image feature is a uint8 Tensor of
shape (8, 8, 1) rather than tfds.features.Image, because Image encodes PNG with
TensorFlow and BWS prepares data without TensorFlow (array_record files).
"""
from __future__ import annotations

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

CSV_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits", "digits.csv.gz")
NUM_ROWS = 1797
TEST_EVERY = 6  # of each class's rows, in file order, every sixth is a test row
MAX_PIXEL = 16  # pixel values are counts of set bits in a 4x4 block


def read_rows() -> np.ndarray:
    """The vendored file as an (1797, 65) int array: 64 pixels then the label."""
    with gzip.open(CSV_PATH, "rt", encoding="ascii") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if rows.shape != (NUM_ROWS, 65) or rows[:, :64].min() < 0 or rows[:, :64].max() > MAX_PIXEL \
            or not set(np.unique(rows[:, 64])) <= set(range(10)):
        raise ValueError(f"{CSV_PATH} is not the UCI digits file (shape {rows.shape})")
    return rows


class Digits(tfds.core.GeneratorBasedBuilder):
    """UCI ML handwritten digits, 8x8 grey levels 0..16, 10 classes."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS locates a builder's files through its top-level package, which fails
    # for the `bws` namespace package; name them directly.
    pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(__file__)))

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(os.path.abspath(__file__))

    RELEASE_NOTES = {"1.0.0": "The 1,797 images scikit-learn ships; every sixth row of each class is the test split."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
            license="CC BY 4.0",
            citation="E. Alpaydin, C. Kaynak. Optical Recognition of Handwritten Digits. "
                     "UCI Machine Learning Repository, 1998. https://doi.org/10.24432/C50P49",
        )

    def _split_generators(self, dl_manager):
        rows = read_rows()
        is_test = test_mask(rows[:, 64])
        return {"train": self._generate_examples(rows, np.flatnonzero(~is_test)),
                "test": self._generate_examples(rows, np.flatnonzero(is_test))}

    def _generate_examples(self, rows: np.ndarray, indices: np.ndarray):
        for index in indices:
            yield int(index), {"image": rows[index, :64].astype(np.uint8).reshape(8, 8, 1), "label": int(rows[index, 64])}


def test_mask(labels: np.ndarray) -> np.ndarray:
    """True for the rows of the test split: every TEST_EVERY-th row of each class."""
    mask = np.zeros(labels.shape[0], dtype=bool)
    for label in np.unique(labels):
        mask[np.flatnonzero(labels == label)[TEST_EVERY - 1::TEST_EVERY]] = True
    return mask
