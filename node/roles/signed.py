"""Slashing protection: every iteration message this node signs, kept before it is sent.

Two different signed IT_RES of one miner for one (task, iteration) are an
`Equivocation` that burns its whole miner stake (spec `process_dispute`). A
miner that restarts resumes after the newest iteration whose state it saved
(`Miner._resume_point`), which may be before the last one it signed, and the
headers its new messages would commit to are not the ones it committed to
before: it must never sign a second version of an iteration it already signed. As
Ethereum validator clients keep a slashing-protection database, the node
appends each message it signs to a file in its data dir (flushed and fsynced)
before the message leaves the node, and reads the file back at start.
`SignedMessages.sign` gives the recorded message again for the same message,
and refuses (None) a different one, and one that a message it signed for the
iteration before or after is not chained to (spec `is_chained`: a
`BrokenLink` slashes as surely).

The file is a sequence of records, each a u32 little-endian length and the
canonical encoding of a `SignedIterationMessage`. A record cut short by a
crash was never sent (the fsync comes first) and is dropped on load.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

from bws.spec import containers as C
from bws.spec.encoding import DecodeError, decode, encode
from bws.spec.pouw import is_chained

SIGNED_MESSAGES_FILE = "signed_iterations.bin"
LENGTH_BYTES = 4


class SignedRecordError(Exception):
    """The slashing-protection file cannot be read: the node must not sign until it is fixed or moved away."""


class SignedMessages:
    """The iteration messages this node signed, by (task id, iteration), kept
    in `path` (None: in memory only, for a node that never restarts)."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._by_iteration: dict[tuple[bytes, int], C.SignedIterationMessage] = {}
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        data = path.read_bytes()
        offset = 0
        while offset + LENGTH_BYTES <= len(data):
            length = int.from_bytes(data[offset:offset + LENGTH_BYTES], "little")
            end = offset + LENGTH_BYTES + length
            if end > len(data):
                break  # cut short by a crash: never sent
            try:
                signed = decode(data[offset + LENGTH_BYTES:end], C.SignedIterationMessage)
            except DecodeError as error:
                raise SignedRecordError(f"{path}: record at byte {offset} is not a signed iteration message "
                                        f"({error})") from None
            self._by_iteration[_key(signed.message)] = signed
            offset = end
        if offset != len(data):
            with path.open("r+b") as file:  # drop the torn tail, so that the next record starts clean
                file.truncate(offset)

    def __len__(self) -> int:
        return len(self._by_iteration)

    def newest(self, task_id: bytes, count: int) -> list[C.SignedIterationMessage]:
        """The last `count` messages signed for `task_id`, the latest iteration first."""
        with self._lock:
            signed = [s for (task, _), s in self._by_iteration.items() if task == bytes(task_id)]
        return sorted(signed, key=lambda s: int(s.message.work.iteration), reverse=True)[:count]

    def sign(self, message: C.IterationMessage,
             signer: Callable[[C.IterationMessage], C.SignedIterationMessage]) -> C.SignedIterationMessage | None:
        """`message` signed and recorded, or as recorded before; None when
        another message was signed for its (task, iteration), or when one
        signed for the iteration before or after is not chained to it (a
        `BrokenLink` dispute would slash it: after a restart the miner may
        have redone an iteration with other peer updates than it signed)."""
        key = _key(message)
        task_id, iteration = key
        with self._lock:
            known = self._by_iteration.get(key)
            if known is not None:
                return known if known.message == message else None
            before, after = self._by_iteration.get((task_id, iteration - 1)), self._by_iteration.get((task_id, iteration + 1))
            if (before is not None and not is_chained(before.message.work, message.work)) \
                    or (after is not None and not is_chained(message.work, after.message.work)):
                return None
            signed = signer(message)
            if self._path is not None:
                record = encode(signed)
                with self._path.open("ab") as file:
                    file.write(len(record).to_bytes(LENGTH_BYTES, "little") + record)
                    file.flush()
                    os.fsync(file.fileno())
            self._by_iteration[key] = signed
            return signed


def _key(message: C.IterationMessage) -> tuple[bytes, int]:
    return bytes(message.work.task_id), int(message.work.iteration)
