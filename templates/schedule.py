"""The deterministic batch schedule of a task (rule `bws-permutation/1`).

Epoch e visits the split's examples (in the data source's record order) sorted
by SHA-256(b"BWS/schedule" ‖ u64le(seed) ‖ u32le(e) ‖ u32le(index)), and cuts
that order into consecutive batches of `batch_size`, dropping the remainder so
every iteration has the same shape. Batch k of the task is batch k mod
batches_per_epoch of epoch k div batches_per_epoch. Only SHA-256 and integer
sorting are involved, so any implementation in any language gets the same batches.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

SCHEDULE_RULE = "bws-permutation/1"
_DOMAIN = b"BWS/schedule"


@lru_cache(maxsize=4)  # a miner asks for every batch of an epoch in turn (one SHA-256 per example each time)
def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The example indices of `epoch`, in visiting order (read-only: it is shared)."""
    prefix = _DOMAIN + seed.to_bytes(8, "little") + epoch.to_bytes(4, "little")
    keys = [hashlib.sha256(prefix + index.to_bytes(4, "little")).digest() for index in range(num_examples)]
    order = np.array(sorted(range(num_examples), key=keys.__getitem__), dtype=np.int64)
    order.flags.writeable = False
    return order


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
    return num_examples // batch_size


def batch_indices(num_examples: int, batch_size: int, seed: int, batch: int) -> np.ndarray:
    """Example indices of batch number `batch` (counting across epochs)."""
    per_epoch = batches_per_epoch(num_examples, batch_size)
    epoch, slot = divmod(batch, per_epoch)
    return epoch_order(num_examples, seed, epoch)[slot * batch_size:(slot + 1) * batch_size]


def schedule(num_examples: int, batch_size: int, seed: int, epochs: int):
    """Yield (epoch, indices) for every batch of `epochs` epochs, in order."""
    per_epoch = batches_per_epoch(num_examples, batch_size)
    for epoch in range(epochs):
        order = epoch_order(num_examples, seed, epoch)
        for slot in range(per_epoch):
            yield epoch, order[slot * batch_size:(slot + 1) * batch_size]
