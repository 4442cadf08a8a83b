"""One module per `bws` command group; each exposes `register(parser)`.

What every group shares: `CommandError`, which a command raises to fail and
`bws` (bws.node.cli) prints as one line, and `parse_hex` for the hashes,
ids and addresses given on the command line.
"""
from __future__ import annotations

import string


class CommandError(Exception):
    """A command failed on its input or its surroundings; the message says why.
    `bws` prints it once, as `bws GROUP: error: MESSAGE`, and exits with `status`."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def parse_hex(text: str, size: int, what: str) -> bytes:
    """`size` bytes written as 2 * size hex digits, after an optional 0x. `what`
    names the value in the error, e.g. "--to: an address" or "a task id"."""
    digits = text.removeprefix("0x")
    if not set(digits) <= set(string.hexdigits):
        raise CommandError(f"{what} {text!r} is not hex")
    if len(digits) != 2 * size:
        raise CommandError(f"{what} is {2 * size} hex characters, got {len(digits)}")
    return bytes.fromhex(digits)
