"""The `bws` command line.

Each command group lives in its own module under bws.node.commands and exposes
`register(subparsers)`; modules are imported only when their group is used, so
`bws --help` stays fast. A command fails by raising CommandError, which is
printed here, once, as one line.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from bws.node.commands import CommandError

# group name -> (module, one-line help)
COMMAND_GROUPS: dict[str, tuple[str, str]] = {
    "engine": ("bws.node.commands.engine", "iteration vectors and checks of the canonical engine"),
    "replay": ("bws.node.commands.replay", "replay an iteration vector bit for bit and compare its digests"),
    "task": ("bws.node.commands.task", "write and inspect task definitions (Keras models, job templates, datasets)"),
    "train": ("bws.node.commands.train", "train a task locally, canonically, and export the model"),
    "spec": ("bws.node.commands.spec", "Render and diff the protocol spec"),
    "devnet": ("bws.node.commands.devnet", "run a local multi-process network that trains a model while mining blocks"),
    "node": ("bws.node.commands.node", "run a full node (chain store, p2p, sync, HTTP API)"),
    "wallet": ("bws.node.commands.wallet", "keys in encrypted keystores, balances, transfers"),
    "chain": ("bws.node.commands.chain", "inspect and export the chain; write genesis files"),
    "audit": ("bws.node.commands.audit", "replay a disputed iteration, localize the first divergent op, dispute the cheat"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bws",
        description="BWS: a proof-of-useful-work blockchain whose nonces come from deterministic ML training.",
    )
    subparsers = parser.add_subparsers(dest="group", metavar="COMMAND")
    for name, (module_name, help_text) in COMMAND_GROUPS.items():
        if only is not None and name != only:
            subparsers.add_parser(name, help=help_text, add_help=False)
            continue
        module = importlib.import_module(module_name)
        module.register(subparsers.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    group = argv[0] if argv and argv[0] in COMMAND_GROUPS else None
    parser = build_parser(only=group if group else "")
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0 if args.group is None else 2
    try:
        return int(args.run(args) or 0)
    except CommandError as error:
        print(f"bws {args.group}: error: {error}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
