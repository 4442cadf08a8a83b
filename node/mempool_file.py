"""The mempool saved across a restart (`DATA_DIR/mempool.bin`).

The node writes its pending transactions here (atomically: write, fsync,
rename) every few seconds while the pool changes and when it stops, so a node
killed with SIGKILL keeps what was pending a few seconds before; it reads them
back at start, where each is checked again against the head state
like a newly submitted one (node/service.py): a transfer sent just before a
restart is neither lost nor trusted blindly.

    file = MAGIC ‖ (u32le length ‖ encoded SignedTransaction)*

A file that is not one (wrong magic, a record running past the end, over
MAX_FILE_BYTES) raises MempoolFileError naming it; the node logs that and
starts with an empty mempool rather than refusing to start.
"""
from __future__ import annotations

import struct
from pathlib import Path

from .mempool import DEFAULT_MAX_BYTES, DEFAULT_MAX_COUNT

MEMPOOL_FILE = "mempool.bin"
MAGIC = b"BWS mempool 1\n"
_LENGTH = struct.Struct("<I")
# A full mempool's bytes and record headers, with room to spare: a larger file is no mempool of ours.
MAX_FILE_BYTES = 2 * DEFAULT_MAX_BYTES + DEFAULT_MAX_COUNT * _LENGTH.size + len(MAGIC)


class MempoolFileError(Exception):
    """A mempool file cannot be read; the message names the file."""


def write_mempool_file(path: Path, transactions: list[bytes]) -> None:
    from .wallet import write_atomically

    body = b"".join(_LENGTH.pack(len(raw)) + raw for raw in transactions)
    write_atomically(Path(path), MAGIC + body, overwrite=True)


def read_mempool_file(path: Path) -> list[bytes]:
    """The encoded transactions in `path` ([] if there is no file)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise MempoolFileError(f"{path}: {path.stat().st_size} bytes, more than a mempool file holds "
                                   f"({MAX_FILE_BYTES})")
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise MempoolFileError(f"{path}: cannot read it ({error.strerror})") from None
    if not data.startswith(MAGIC):
        raise MempoolFileError(f"{path}: not a mempool file (it does not start with {MAGIC!r})")
    transactions, offset = [], len(MAGIC)
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise MempoolFileError(f"{path}: truncated record header at byte {offset}")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise MempoolFileError(f"{path}: a {length}-byte record at byte {offset} runs past the end")
        transactions.append(data[offset:offset + length])
        offset += length
    return transactions
