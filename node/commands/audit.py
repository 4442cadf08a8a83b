"""`bws audit`: replay a disputed iteration, localize the first divergent op,
and turn a proven mismatch into a dispute transaction (docs/audit.md)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import CommandError, parse_hex

EXIT_MISMATCH = 3


def _add_sources(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--api", help="HTTP API of a node (running) to read blocks and tasks from, e.g. http://127.0.0.1:8645")
    where.add_argument("--data-dir", help="data dir of a stopped node: read its DuckDB store")
    parser.add_argument("--peer", action="append", default=[], metavar="MULTIADDR",
                        help="node to fetch tensors, traces and messages from over libp2p (repeatable; "
                             "the accused miner's node answers for its intermediate commitments)")
    parser.add_argument("--dataset-dir", help="TFDS data directory (default: $BWS_DATA_DIR or ~/.cache/bws/tensorflow_datasets)")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    replay = sub.add_parser(
        "replay", help="replay one iteration with the engine and the spec's reference; localize a mismatch",
        description="Fetch an iteration's inputs, replay it with the engine and with the spec's NumPy reference, "
                    "compare with the miner's claimed roots; on a mismatch name the first differing tensor and bisect "
                    f"the miner's intermediate commitments down to the first divergent op. Exit 0 on a match, "
                    f"{EXIT_MISMATCH} on a mismatch, 1 on an error.")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("--block", help="hash (or height) of the block whose iteration to audit")
    target.add_argument("--task", help="task id (hex); with --iteration and --miner")
    replay.add_argument("--iteration", type=int, help="iteration number (with --task)")
    replay.add_argument("--miner", help="miner address (hex, with --task)")
    _add_sources(replay)
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.add_argument("--dispute", action="store_true",
                        help="submit a Dispute transaction with the evidence through --api when the audit proves "
                             "fraud or equivocation (a false dispute costs its fee)")
    replay.add_argument("--keystore", help="disputer's keystore (with --dispute)")
    replay.add_argument("--password-file", help="file holding the keystore's password (with --dispute)")
    replay.add_argument("--fee", type=int, default=1000, help="dispute transaction fee (default 1000)")
    replay.set_defaults(run=run_replay)
    disputes = sub.add_parser("disputes", help="list the chain's dispute transactions (and audit each with --replay)",
                              description="List every Dispute transaction on the main chain: height, kind, disputer, "
                                          "accused miner, task and iteration.")
    _add_sources(disputes)
    disputes.add_argument("--replay", action="store_true", help="audit each disputed fraud message (needs --peer)")
    disputes.set_defaults(run=run_disputes)


def _use_compilation_cache() -> None:
    """Share the nodes' persistent XLA cache (as `bws devnet` sets it): the
    traced iteration then compiles once per machine, not once per audit."""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "bws" / "jax"))


def _chain(args):
    from bws.node.audit_sources import ChainViaApi, ChainViaStore
    return ChainViaApi(args.api) if args.api else ChainViaStore(args.data_dir)


def _targets(args, chain, source):
    """(task, [signed messages]) the command audits."""
    from bws.node.audit import AuditError
    if args.block:
        block = chain.block(args.block)
        if not block.proofs:
            raise AuditError(f"block {args.block} carries no iteration (genesis)")
        return chain.task(bytes(block.header.task_id)), [block.proofs[0].message]
    if args.iteration is None or args.miner is None:
        raise AuditError("--task needs --iteration and --miner")
    task_id, miner = parse_hex(args.task, 32, "--task: a task id"), parse_hex(args.miner, 20, "--miner: an address")
    found = {bytes(m.signature): m for m in chain.recorded_messages(task_id, args.iteration, miner)}
    if source is not None:
        found.update({bytes(m.signature): m for m in source.messages(task_id, args.iteration, miner)})
    if not found:
        raise AuditError(f"no iteration message of miner {args.miner} at iteration {args.iteration} of task "
                         f"{args.task} in the store or at the peers")
    return chain.task(task_id), list(found.values())


def _audit(source, library, task, signed, progress):
    from bws.node.audit import audit_iteration
    from bws.node.roles.library import TaskUnavailable
    from bws.node.audit import AuditError
    try:
        loaded = library.load(task)
    except TaskUnavailable as error:
        raise AuditError(str(error)) from None
    progress.set_description(f"replaying iteration {int(signed.message.work.iteration)}")
    report = audit_iteration(source, loaded, signed)
    progress.update(1)
    return report


def _submit_dispute(args, chain, evidence) -> str:
    from bws.node.audit import AuditError
    from bws.node.roles.host import RoleSetupError, load_role_account
    from bws.spec import containers as C
    from bws.spec.encoding import encode
    from bws.spec.state_transition import sign_transaction
    if not args.api:
        raise AuditError("--dispute submits through a node's API: give --api")
    try:
        account = load_role_account(args.keystore, args.password_file)
    except RoleSetupError as error:
        raise AuditError(str(error)) from None
    if account is None:
        raise AuditError("--dispute needs --keystore and --password-file (the disputer's key)")
    transaction = C.Transaction(chain_id=chain.chain_id(), sender=account.address,
                                nonce=chain.pending_nonce(account.address), fee=args.fee,
                                body=C.Dispute(evidence=evidence))
    answer = chain.api.post("/tx", {"transaction": encode(sign_transaction(account.secret_key, transaction)).hex()})
    return str(answer.get("tx_id", answer))


def run_replay(args: argparse.Namespace) -> int:
    _use_compilation_cache()
    from tqdm import tqdm

    from bws.node.api import ApiError
    from bws.node.audit import AuditError
    from bws.node.audit_sources import NetworkSource
    from bws.node.roles.library import TaskLibrary
    from bws.spec import containers as C

    source = None
    try:
        chain = _chain(args)
        source = NetworkSource.dial(args.peer)
        task, messages = _targets(args, chain, source)
        library = TaskLibrary(args.dataset_dir)
        with tqdm(total=len(messages), file=sys.stderr, leave=False) as progress:
            reports = [_audit(source, library, task, signed, progress) for signed in messages]
        for report in reports:
            print(json.dumps(report.to_dict(), indent=1) if args.json else report.render())
        if len(messages) > 1:
            print(f"EQUIVOCATION: {len(messages)} different signed messages for this task, iteration and miner")
        evidence = (C.Equivocation(first=messages[0], second=messages[1]) if len(messages) > 1
                    else C.FraudProof(message=messages[0]) if not reports[0].matches
                    and reports[0].engine_matches_reference else None)
        if args.dispute:
            if evidence is None:
                print("no dispute: the replay matches the miner's claim")
            else:
                print(f"dispute submitted: transaction {_submit_dispute(args, chain, evidence)}")
        return 0 if evidence is None else EXIT_MISMATCH
    except (AuditError, ApiError) as error:
        raise CommandError(str(getattr(error, "message", error))) from None
    finally:
        if source is not None:
            source.close()


def run_disputes(args: argparse.Namespace) -> int:
    _use_compilation_cache()
    from bws.node.api import ApiError
    from bws.node.audit import AuditError, audit_iteration
    from bws.node.audit_sources import NetworkSource, chain_disputes
    from bws.node.roles.library import TaskLibrary, TaskUnavailable

    source = None
    try:
        chain = _chain(args)
        disputes = chain_disputes(chain)
        print(f"{len(disputes)} dispute(s) on the main chain")
        if args.replay:
            source = NetworkSource.dial(args.peer)
        library = TaskLibrary(args.dataset_dir)
        for record in disputes:
            work = record.messages[0].message.work
            print(f"  height {record.height} {record.kind:12s} disputer {record.sender.hex()[:16]}… accused "
                  f"{bytes(work.miner).hex()} task {bytes(work.task_id).hex()[:16]}… iteration {int(work.iteration)}")
            if source is not None and record.kind == "fraud":
                try:
                    loaded = library.load(chain.task(bytes(work.task_id)))
                except TaskUnavailable as error:
                    raise AuditError(str(error)) from None
                print(audit_iteration(source, loaded, record.messages[0]).render())
        return 0
    except (AuditError, ApiError) as error:
        raise CommandError(str(getattr(error, "message", error))) from None
    finally:
        if source is not None:
            source.close()
