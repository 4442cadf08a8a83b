"""`bws devnet`: run a local network that trains a model while mining blocks from its iterations (docs/devnet.md)."""
from __future__ import annotations

import argparse
import signal
import sys

from . import CommandError


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start N nodes as separate processes on 127.0.0.1 from a genesis with funded and staked accounts, "
        "submit a training task from a client account, show live progress (height, iterations, loss, blocks, "
        "verifications), then print a summary (blocks, best model accuracy, payouts, blocks verified and "
        "rejected). Exits 0 when the task is finalized and paid out; non-zero with a message otherwise. "
        "Every node is stopped on exit, also on failure and Ctrl-C.")
    parser.add_argument("--nodes", type=int, default=4,
                        help="node processes (default 4; at least 3: the task's group needs miners, a supervisor "
                             "and an evaluator on different nodes, so N nodes give N-2 miners)")
    parser.add_argument("--template", default="dnn", choices=("dnn", "cnn"),
                        help="job template of the task (default dnn)")
    parser.add_argument("--dataset", default="digits", help="TFDS dataset, prepared locally (default digits, shipped)")
    parser.add_argument("--data-dir", help="directory for the nodes' stores, keys, logs and genesis "
                                           "(default: a new temporary directory; must not hold a devnet already)")
    parser.add_argument("--blocks", type=int, default=10, help="run at least until this height (default 10)")
    parser.add_argument("--iterations", type=int, default=50,
                        help="training iterations of each group member (default 50)")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per iteration (default 128)")
    parser.add_argument("--learning-rate", type=float, default=0.003, help="Adam learning rate (default 0.003)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the keys and of the model initialization (default 0)")
    parser.add_argument("--chain-id", type=int, metavar="N",
                        help="the genesis' chain id (default: drawn at random, as for any new chain)")
    parser.add_argument("--min-accuracy", type=float,
                        help="fail unless the best final model reaches this test accuracy (default 0.95 for dnn, "
                             "0.93 for cnn; 0 to skip)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds (default 900)")
    parser.add_argument("--dataset-dir", help="TFDS data directory (default: $BWS_DATA_DIR or ~/.cache/bws/tensorflow_datasets)")
    parser.add_argument("--observers", type=int, default=0, metavar="N",
                        help="also start N nodes with the peer role only (no key, no replay: they trust claimed roots "
                             "and take fraud-proof outcomes from state roots); the run fails unless they hold the "
                             "same chain (default 0)")
    parser.add_argument("--public-test", action="store_true",
                        help="test on the dataset's public test split, which every node rebuilds (default: the "
                             "client withholds the test split and reveals it when the task is in evaluation)")
    parser.add_argument("--byzantine", action="append", default=[], metavar="N:KIND",
                        help="make node N cheat as a miner (repeatable, one cheat a node): flip-bit, random-update, "
                             "wrong-peers or equivocate, and the run checks every cheat is disputed, localized and "
                             "slashed; or attack the network (several a node): poison-task, junk-fraud-proofs, "
                             "stall-task or flood-messages, and the run checks every attack fails (docs/audit.md)")
    parser.add_argument("--restart-every", type=float, default=0.0, metavar="S",
                        help="while the task trains, kill an honest member of its group with SIGKILL every S seconds "
                             "and start it again; the run checks it resumes its training and is never slashed")
    parser.set_defaults(run=run)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from bws.node.audit import AuditError
    from bws.node.audit_devnet import ByzantineSpecError, parse_byzantine
    from bws.node.devnet import Devnet, DevnetError, DevnetOptions
    from bws.node.genesis import GenesisError
    from bws.templates.errors import TemplateError

    options = DevnetOptions(nodes=args.nodes, template=args.template, dataset=args.dataset, data_dir=args.data_dir,
                            blocks=args.blocks, seed=args.seed, iterations=args.iterations, batch_size=args.batch_size,
                            learning_rate=args.learning_rate, min_accuracy=args.min_accuracy, timeout=args.timeout,
                            dataset_dir=args.dataset_dir, observers=args.observers, withhold_test=not args.public_test,
                            chain_id=args.chain_id, restart_every=args.restart_every)
    try:
        options.byzantine, options.attacks = parse_byzantine(args.byzantine, args.nodes)
    except ByzantineSpecError as error:
        raise CommandError(str(error), status=2) from None  # a usage error, as argparse's are
    if args.restart_every < 0:
        raise CommandError(f"--restart-every must be 0 (never) or more, got {args.restart_every}", status=2)
    # SIGTERM ends the run like Ctrl-C, so the nodes are stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        Devnet(options).run()
    except (DevnetError, GenesisError, TemplateError, OSError, AuditError) as error:
        raise CommandError(str(error)) from None
    except KeyboardInterrupt:
        print("bws devnet: interrupted; nodes stopped", file=sys.stderr)
        return 130
    return 0
