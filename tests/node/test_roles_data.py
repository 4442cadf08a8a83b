"""Tensor bundles (node/roles/data.py): exact round trip, each kind of bad
input named, the cache's bound and recency."""
import os
import time

import numpy as np
import pytest

from bws.node.roles.data import (
    DataError, TensorCache, bundle_root, decode_checked, decode_tensors, tensors_request,
)
from bws.spec.tensors import encode_tensor_bundle

STATE = {"params/0/kernel": np.arange(-6, 6, dtype=np.int32).reshape(3, 4), "step": np.array(7, np.int32),
         "opt/nu": np.array([2**40, -1], np.int64), "seed": np.array([1, 2], np.uint32)}


def test_round_trip_is_exact():
    decoded = decode_tensors(encode_tensor_bundle(STATE))
    assert sorted(decoded) == sorted(STATE)
    for name in STATE:
        assert decoded[name].dtype == STATE[name].dtype and np.array_equal(decoded[name], STATE[name])


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\x00", "trailing"),
    (lambda b: (5000).to_bytes(4, "little") + b[4:], "exceed"),
    (lambda b: b[:4] + b"\x01\x00\xff" + b[7:], "not UTF-8|strictly increasing|unknown dtype|truncated"),
])
def test_bad_bundles_are_named(mutate, message):
    with pytest.raises(DataError, match=message):
        decode_tensors(mutate(encode_tensor_bundle(STATE)))


def test_unknown_dtype_code_is_named():
    encoded = bytearray(encode_tensor_bundle({"a": np.zeros(2, np.int8)}))
    encoded[4 + 2 + 1] = 99  # after count, name length and name: the dtype code
    with pytest.raises(DataError, match="unknown dtype code 99"):
        decode_tensors(bytes(encoded))


def test_wrong_root_is_refused():
    other = dict(STATE, step=np.array(8, np.int32))
    with pytest.raises(DataError, match="requested root"):
        decode_checked(encode_tensor_bundle(other), bundle_root(STATE))


def test_request_needs_a_32_byte_root():
    with pytest.raises(DataError):
        tensors_request(b"short")


def test_cache_drops_least_recently_used():
    cache = TensorCache(max_entries=2)
    roots = [cache.put_tensors({"x": np.array([i], np.int32)}) for i in range(2)]
    assert cache.get(roots[0]) is not None            # roots[0] is now the most recent
    third = cache.put_tensors({"x": np.array([9], np.int32)})
    assert cache.get(roots[1]) is None and cache.get(roots[0]) is not None and cache.get(third) is not None
    assert len(cache) == 2


def test_put_tensors_gives_the_spec_root_and_serves_the_bundle_it_names():
    from bws.spec.hashing import compute_tensors_root
    tensors = {"params/b": np.arange(3, dtype=np.int32), "params/a": np.arange(-6, 6, dtype=np.int64).reshape(3, 4),
               "step": np.array(7, np.int32)}
    cache = TensorCache()
    root = cache.put_tensors(tensors)
    assert root == bytes(compute_tensors_root(tensors))
    # This node's own tensors come back as they were put, read-only; a peer gets the encoded bundle.
    own = cache.get_tensors(root)
    assert all(own[n] is not tensors[n] and np.array_equal(own[n], tensors[n]) for n in tensors)
    with pytest.raises(ValueError, match="read-only"):
        own["step"][...] = 8
    assert cache.get(root) == encode_tensor_bundle(tensors)
    served = decode_checked(cache.get(root), root)
    assert sorted(served) == sorted(tensors) and all(np.array_equal(served[n], tensors[n]) for n in tensors)
    assert all(np.array_equal(cache.get_tensors(root)[n], tensors[n]) for n in tensors)   # decoded and checked now
    assert cache.get_tensors(bytes(32)) is None


def test_a_saved_cache_serves_after_a_restart_within_its_disk_budget(tmp_path):
    directory = tmp_path / "tensors"
    cache = TensorCache(directory=directory)
    roots = [cache.put_tensors({"x": np.full(100, i, np.int32)}) for i in range(3)]
    assert cache.save() == 3 and cache.save() == 0   # already on disk
    restarted = TensorCache(directory=directory)
    for i, root in enumerate(roots):
        assert decode_checked(restarted.get(root), root)["x"][0] == i
    assert restarted.get(bytes(32)) is None and TensorCache().get(roots[0]) is None
    assert not list(directory.glob("*.partial"))

    size = len(cache.get(roots[0]))
    small = TensorCache(directory=tmp_path / "small", max_disk_bytes=2 * size)
    for age, root in zip((200, 100, 0), roots):
        small.put(root, cache.get(root))
        small.save()
        os.utime(small.directory / (root.hex() + ".bundle"), (time.time() - age,) * 2)
    kept = sorted(path.name for path in (tmp_path / "small").iterdir())
    assert kept == sorted(root.hex() + ".bundle" for root in roots[1:])   # the oldest went


def test_a_pinned_bundle_outlasts_the_least_recently_used_bound():
    cache = TensorCache(max_entries=2)
    pinned = cache.put_tensors({"x": np.array([-1], np.int32)}, pin=True)
    roots = [cache.put_tensors({"x": np.array([i], np.int32)}) for i in range(4)]
    assert cache.get(pinned) is not None and len(cache) == 3
    assert [cache.get(root) is not None for root in roots] == [False, False, True, True]
