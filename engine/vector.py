"""Iteration vectors: one iteration's inputs and expected output digests, in one
self-contained file, replayable by the engine or by the NumPy reference.

File format (all integers little-endian):

    magic        8 bytes   b"BWSITV1\\n"
    header_len   u32       length of the header
    header       UTF-8 JSON (sorted keys): {"format": 1, "model": canonical model dict,
                 "expected": {"state_root": hex, "update_root": hex, "metrics": {name: int}},
                 "inputs": {"state_root": hex, "batch_root": hex, "peer_update_root": hex}}
    tensors      the spec's tensor bundle (spec/tensors.py): u32 count, then for
                 each tensor by increasing name u16 name length, name (UTF-8;
                 "batch/x", "batch/y", "peer/...", "state/..."), u8 dtype code,
                 u8 ndim (at most 8), u32 dims, data in C order
    (nothing after the last tensor)
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from bws.spec.encoding import DecodeError
from bws.spec.tensors import ByteReader, encode_tensor_bundle, read_tensor_bundle

from .commit import batch_root, flatten, state_root, unflatten, update_root
from .model import EngineError, ModelSpec, ModelSpecError

MAGIC = b"BWSITV1\n"
FORMAT_VERSION = 1
MAX_HEADER = 1 << 20


class VectorError(EngineError):
    """An iteration vector file is malformed."""


@dataclass
class IterationVector:
    model: dict
    state: dict
    batch: dict
    peer_update_sum: dict
    expected: dict

    def to_bytes(self) -> bytes:
        tensors = {**{f"state/{k}": v for k, v in flatten(self.state).items()},
                   **{f"batch/{k}": v for k, v in flatten(self.batch).items()},
                   **{f"peer/{k}": v for k, v in flatten(self.peer_update_sum).items()}}
        header = {"format": FORMAT_VERSION, "model": self.model, "expected": self.expected,
                  "inputs": {"state_root": state_root(self.state).hex(), "batch_root": batch_root(self.batch).hex(),
                             "peer_update_root": update_root(self.peer_update_sum).hex()}}
        header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        return MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + encode_tensor_bundle(tensors)


def read_vector(data: bytes) -> IterationVector:
    """Parse and validate a vector file; raises VectorError naming what is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise VectorError("vector: expected bytes")
    data = bytes(data)
    try:
        header, tensors = _read_parts(data)
    except DecodeError as error:
        raise VectorError(f"vector: {error}") from None
    try:
        model = ModelSpec.from_dict(header.get("model")).to_dict()
    except ModelSpecError as error:
        raise VectorError(f"vector: bad model: {error}") from None
    expected = header.get("expected")
    if (not isinstance(expected, dict) or not all(isinstance(expected.get(k), str) for k in ("state_root", "update_root"))
            or not isinstance(expected.get("metrics"), dict)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in expected["metrics"].values())):
        raise VectorError("vector: header.expected must hold state_root, update_root (hex) and integer metrics")
    groups: dict[str, dict] = {"state": {}, "batch": {}, "peer": {}}
    for name, array in tensors.items():
        group, _, rest = name.partition("/")
        if group not in groups or not rest or any(not part for part in rest.split("/")):
            raise VectorError(f"vector: tensor name {name!r} must be state/..., batch/... or peer/...")
        groups[group][rest] = array
    state, batch, peer = (unflatten(groups[g]) for g in ("state", "batch", "peer"))
    _check_layout(model, state, batch, peer)
    vector = IterationVector(model, state, batch, peer, expected)
    _check_canonical(vector, header, data)
    return vector


def _read_parts(data: bytes) -> tuple[dict, dict]:
    """The header (a dict of the supported format) and the tensors by name; DecodeError names what is wrong."""
    reader = ByteReader(data)
    if reader.take(len(MAGIC), "the magic") != MAGIC:
        raise DecodeError("the magic", "not an iteration vector")
    header_len = reader.take_uint(4, "the header length")
    if header_len > MAX_HEADER:
        raise DecodeError("the header", f"{header_len} bytes exceed {MAX_HEADER}")
    try:
        header = json.loads(bytes(reader.take(header_len, "the header")).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DecodeError("the header", f"not UTF-8 JSON ({error})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        raise DecodeError("the header", f"unsupported format (expected format {FORMAT_VERSION})")
    tensors = read_tensor_bundle(reader)
    reader.check_end("after the last tensor")
    return header, tensors


def _check_canonical(vector: IterationVector, header: dict, data: bytes) -> None:
    """The header's input roots must be those of the tensors, and the file
    exactly what `to_bytes` writes (so one iteration has one file)."""
    inputs = header.get("inputs")
    roots = {"state_root": state_root(vector.state), "batch_root": batch_root(vector.batch),
             "peer_update_root": update_root(vector.peer_update_sum)}
    for name, root in roots.items():
        if not isinstance(inputs, dict) or inputs.get(name) != root.hex():
            raise VectorError(f"vector: header.inputs.{name} does not match the tensors")
    if vector.to_bytes() != data:
        raise VectorError("vector: not in canonical form (header JSON with sorted keys and no spaces, "
                          "the model with every default filled in, tensors sorted by name)")


def _check_layout(model: dict, state: dict, batch: dict, peer: dict) -> None:
    """The tensors must be exactly those the model's iteration takes."""
    from .iteration import check_batch, init_state

    spec = ModelSpec.from_dict(model)
    template = flatten(init_state(spec, 0))
    given = flatten(state)
    if set(given) != set(template):
        missing, extra = sorted(set(template) - set(given)), sorted(set(given) - set(template))
        raise VectorError(f"vector: state tensors do not fit the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, array in template.items():
        if given[name].shape != array.shape or given[name].dtype != array.dtype:
            raise VectorError(f"vector: state/{name} is {given[name].dtype}{list(given[name].shape)}, "
                              f"expected {array.dtype}{list(array.shape)}")
    params = flatten(state.get("params", {}))
    peer_flat = flatten(peer)
    if set(peer_flat) != set(params) or any(peer_flat[k].shape != params[k].shape or peer_flat[k].dtype != np.int32
                                            for k in params):
        raise VectorError("vector: peer update sum must be int32 tensors shaped like the parameters")
    try:
        check_batch(spec, batch)
    except EngineError as error:
        raise VectorError(f"vector: {error}") from None


def run_engine(vector: IterationVector):
    import jax

    from .iteration import make_iteration
    new_state, update, metrics = make_iteration(vector.model)(vector.state, vector.batch, vector.peer_update_sum)
    return (jax.tree.map(np.asarray, new_state), jax.tree.map(np.asarray, update),
            {k: int(v) for k, v in metrics.items()})


def run_reference(vector: IterationVector):
    from bws.spec.reference import training
    return training.iteration(vector.model, vector.state, vector.batch, vector.peer_update_sum)


def digests(new_state: dict, update: dict, metrics: dict) -> dict:
    return {"state_root": state_root(new_state).hex(), "update_root": update_root(update).hex(),
            "metrics": {k: int(v) for k, v in sorted(metrics.items())}}


def ran_on(impl: str) -> dict:
    """Where a replay ran, for reports compared across machines: the backend,
    its device and the library versions (and the engine's pinned XLA flags)."""
    if impl == "reference":
        return {"numpy": np.__version__}
    import jax

    from .settings import PINNED_XLA_FLAGS
    return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "jax": jax.__version__,
            "pinned_xla_flags": [f"{name}={value}" for name, value in PINNED_XLA_FLAGS.items()]}


def replay(vector: IterationVector, impl: str = "engine") -> dict:
    """Re-execute the iteration; returns the recomputed digests, the expected
    ones, whether they match, and where it ran (`ran_on`)."""
    runner = {"engine": run_engine, "reference": run_reference}.get(impl)
    if runner is None:
        raise EngineError(f"impl: must be engine or reference, got {impl!r}")
    got = digests(*runner(vector))
    return {"impl": impl, "got": got, "expected": vector.expected, "match": got == vector.expected,
            "ran_on": ran_on(impl)}


def make_vector(model: dict, batch_size: int, seed: int, *, warmup: int = 1, peers: int = 2,
                progress=None) -> IterationVector:
    """A vector for `model` on synthetic data (numpy's PCG64 from `seed`):
    the state after `warmup` iterations from init_state(seed), a batch of
    uniform inputs in [0, 1) and random labels/targets, and the sum of `peers`
    random peer updates of magnitude below 2**-14. The expected digests come
    from the engine."""
    import jax

    from .iteration import init_state, make_iteration, quantize_inputs, sum_updates

    spec = ModelSpec.from_dict(model)
    model = spec.to_dict()
    if not 1 <= batch_size <= 1 << 16:
        raise EngineError(f"batch: must be in 1..65536, got {batch_size}")
    rng = np.random.default_rng(seed)

    def synthetic_batch():
        x = quantize_inputs(rng.random((batch_size,) + tuple(spec.input_shape)))
        if spec.loss["type"] == "softmax_cross_entropy":
            y = rng.integers(0, spec.output_shape[0], batch_size).astype(np.int32)
        elif spec.loss["type"] == "categorical_cross_entropy":
            y = quantize_inputs(np.eye(spec.output_shape[0])[rng.integers(0, spec.output_shape[0], batch_size)])
        elif spec.loss["type"] == "sigmoid_binary_cross_entropy":
            y = quantize_inputs(rng.integers(0, 2, (batch_size,) + spec.output_shape).astype(np.float64))
        else:
            y = quantize_inputs(rng.random((batch_size,) + spec.output_shape))
        return {"x": x, "y": y}

    fn = make_iteration(spec)
    state = init_state(spec, seed)
    zero = sum_updates([], spec)
    for _ in range(warmup):
        state, _, _ = fn(state, synthetic_batch(), zero)
        if progress:
            progress()
    params = jax.tree.map(np.asarray, state["params"])
    peer_updates = [jax.tree.map(lambda a: rng.integers(-(1 << 10), 1 << 10, a.shape).astype(np.int32), params)
                    for _ in range(peers)]
    peer_sum = jax.tree.map(np.asarray, sum_updates(peer_updates, spec))
    state = jax.tree.map(np.asarray, state)
    vector = IterationVector(model, state, synthetic_batch(), peer_sum, {})
    vector.expected = digests(*run_engine(vector))
    if progress:
        progress()
    return vector
