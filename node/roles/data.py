"""What the roles exchange besides gossip: named integer tensors (model
states, updates) as canonical bytes, a bounded cache of them by root, and the
request/response protocol that serves them (`/bws/data/1`; blocks are served
by `/bws/sync/1`, node/sync.py).

A tensor bundle (one state or one update) is the spec's (spec/tensors.py):

    u32le(count) ‖ for each tensor, by increasing name:
        u16le(len(name)) ‖ name (UTF-8) ‖ encode_tensor(array)

so the bundle's root is the spec's `compute_tensors_root` of what it decodes
to: a receiver checks the bytes it got against the root it asked for, and a
peer cannot answer with anything else. A node takes bundles of at most
MAX_BUNDLE_BYTES.

A request (its first byte is the kind):

    /bws/data/1   b"T" ‖ root(32)        -> b"\\x01" ‖ bundle, or b"\\x00" (unknown root)

"Unknown" is an answer, not an error, so asking for something a peer does
not have never scores the asker down.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from bws.engine.commit import tensors_root
from bws.spec.encoding import DecodeError
from bws.spec.tensors import decode_tensor_bundle, encode_tensor_bundle

ROOT_BYTES = 32
DEFAULT_MAX_DISK_BYTES = 1 << 30
BUNDLE_SUFFIX = ".bundle"
MAX_BUNDLE_BYTES = 64 << 20
DATA_TENSORS = b"T"
FOUND = b"\x01"
NOT_FOUND = b"\x00"


class DataError(ValueError):
    """Bytes that are not a valid tensor bundle or request, or data whose root is not the one asked for."""


def decode_tensors(data: bytes) -> dict[str, np.ndarray]:
    """The inverse of the spec's encode_tensor_bundle, for at most MAX_BUNDLE_BYTES; DataError names what is wrong."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise DataError(f"bundle of {len(data)} bytes exceeds {MAX_BUNDLE_BYTES}")
    try:
        return decode_tensor_bundle(data)
    except DecodeError as error:
        raise DataError(f"bundle: {error}") from None


def bundle_root(tensors: dict[str, np.ndarray]) -> bytes:
    """The spec's tensors root of a flat bundle (what iteration messages name)."""
    return tensors_root(tensors)


def decode_checked(data: bytes, root: bytes) -> dict[str, np.ndarray]:
    """Decode a bundle and check that it is the one with `root`."""
    tensors = decode_tensors(data)
    if bundle_root(tensors) != bytes(root):
        raise DataError(f"bundle does not have the requested root {bytes(root).hex()[:16]}…")
    return tensors


def tensors_request(root: bytes) -> bytes:
    if len(root) != ROOT_BYTES:
        raise DataError(f"a root is {ROOT_BYTES} bytes, got {len(root)}")
    return DATA_TENSORS + bytes(root)


def parse_request(request: bytes, kind: bytes, payload_bytes: int) -> bytes:
    """The payload of a request of `kind`; DataError for anything else."""
    if request[:1] != kind or len(request) != 1 + payload_bytes:
        raise DataError(f"not a {kind!r} request of {1 + payload_bytes} bytes")
    return bytes(request[1:])


class TensorCache:
    """Bundles by root, least recently used dropped beyond `max_entries`.
    Thread-safe. Holds a bundle as the bytes it came as, or as the tensors
    this node put (`put_tensors`), encoded the first time they are asked for:
    most states a miner commits to are never fetched, and its own roles read
    them back as tensors (`get_tensors`).

    With a `directory`, `save()` (a node calls it when it stops) writes what
    the cache holds there, one file per root, keeping at most `max_disk_bytes`
    (the least recently saved go first); `get` finds what an earlier run saved.
    So a restarted node still serves the states and updates its messages
    named: the final models a client downloads, the inputs a verifier or an
    auditor replays. A node killed outright keeps what it saved before."""

    def __init__(self, max_entries: int = 512, directory: Path | None = None,
                 max_disk_bytes: int = DEFAULT_MAX_DISK_BYTES) -> None:
        self.max_entries = max_entries
        self.directory = None if directory is None else Path(directory)
        self.max_disk_bytes = max_disk_bytes
        self._entries: OrderedDict[bytes, bytes | dict[str, np.ndarray]] = OrderedDict()
        self._pinned: set[bytes] = set()   # never dropped: a revealed test split must outlast a miner's states
        self._lock = threading.Lock()

    def put(self, root: bytes, bundle: bytes | dict[str, np.ndarray], pin: bool = False) -> None:
        with self._lock:
            self._entries[bytes(root)] = bundle
            self._entries.move_to_end(bytes(root))
            if pin:
                self._pinned.add(bytes(root))
            while len(self._entries) - len(self._pinned) > self.max_entries:
                del self._entries[next(r for r in self._entries if r not in self._pinned)]

    def put_tensors(self, tensors: dict[str, np.ndarray], root: bytes | None = None, pin: bool = False) -> bytes:
        """Cache a flat bundle given as tensors (kept read-only); returns its root, computed unless given.
        `pin`: never drop it (the LRU bound counts the others)."""
        frozen = {}
        for name, array in tensors.items():
            frozen[name] = np.asarray(array).view()
            frozen[name].flags.writeable = False
        root = tensors_root(frozen) if root is None else bytes(root)
        self.put(root, frozen, pin)
        return root

    def _latest(self, root: bytes) -> bytes | dict[str, np.ndarray] | None:
        """The entry with `root`, now the most recently used, or None."""
        with self._lock:
            entry = self._entries.get(bytes(root))
            if entry is not None:
                self._entries.move_to_end(bytes(root))
        return entry

    def get_tensors(self, root: bytes) -> dict[str, np.ndarray] | None:
        """The bundle with `root` as tensors (checked against the root unless this node put them), or None."""
        entry = self._latest(root)
        if isinstance(entry, dict):
            return entry
        encoded = self.get(root)
        return None if encoded is None else decode_checked(encoded, root)

    def get(self, root: bytes) -> bytes | None:
        """The bundle with `root` as bytes (what /bws/data/1 serves), or None."""
        entry = self._latest(root)
        if isinstance(entry, dict):
            encoded = encode_tensor_bundle(entry)
            with self._lock:
                if bytes(root) in self._entries:
                    self._entries[bytes(root)] = encoded
            return encoded
        if entry is not None:
            return entry
        if self.directory is None or len(root) != ROOT_BYTES:
            return None
        try:
            # Checked by whoever decodes it against the root it asked for (decode_checked), like any peer's answer.
            encoded = self._path(root).read_bytes()
        except OSError:
            return None
        self.put(root, encoded)
        return encoded

    def save(self) -> int:
        """Write the bundles not on disk yet, then keep the newest files within
        `max_disk_bytes`; how many were written."""
        if self.directory is None:
            return 0
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            entries = list(self._entries.items())
        written = sum(self._write(root, entry) for root, entry in entries)
        files = sorted(self.directory.glob(f"*{BUNDLE_SUFFIX}"), key=lambda f: f.stat().st_mtime, reverse=True)
        kept = 0
        for file in files:
            kept += file.stat().st_size
            if kept > self.max_disk_bytes:
                file.unlink(missing_ok=True)
        return written

    def save_bundle(self, root: bytes) -> bool:
        """Write the one bundle with `root` now (a miner's checkpoint: what a
        node killed outright resumes from); whether it is on disk."""
        entry = self._latest(root)
        if self.directory is None or entry is None:
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write(bytes(root), entry)
        return True

    def _write(self, root: bytes, entry: bytes | dict[str, np.ndarray]) -> bool:
        """Write one bundle unless it is on disk already; whether it was written."""
        path = self._path(root)
        if path.exists():
            return False
        partial = path.with_suffix(".partial")
        partial.write_bytes(entry if isinstance(entry, bytes) else encode_tensor_bundle(entry))
        os.replace(partial, path)  # atomic: a reader never sees half a bundle
        return True

    def _path(self, root: bytes) -> Path:
        return self.directory / (bytes(root).hex() + BUNDLE_SUFFIX)

    def __len__(self) -> int:
        return len(self._entries)
