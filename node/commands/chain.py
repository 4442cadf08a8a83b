"""`bws chain`: look at a chain, through a running node's API or a stopped node's store.

    bws chain head --api http://127.0.0.1:8645
    bws chain block 12 --data-dir ~/.bws/node1
    bws chain export --data-dir ~/.bws/node1 --out chain.bin
    bws chain genesis --out genesis.json --miner <address> --stake <address>:supervisor --fund <address>:1000
    bws chain genesis --check genesis.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path

from . import CommandError, parse_hex

DEFAULT_API = "http://127.0.0.1:8645"


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", help=f"a running node's API URL (default: the node.json of --data-dir, else {DEFAULT_API})")
    parser.add_argument("--data-dir", type=Path, help="a node's data dir: its running node's API, or its store if stopped")


def register(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    head = commands.add_parser("head", help="the head block: hash, height, work", description="Show the chain's head.")
    add_source_arguments(head)
    head.set_defaults(run=run_head)
    block = commands.add_parser("block", help="one block as JSON, by height or hash",
                                description="Print a block as JSON (bytes in hex).")
    block.add_argument("reference", help="height (decimal) or block hash (64 hex characters)")
    add_source_arguments(block)
    block.set_defaults(run=run_block)
    export = commands.add_parser("export", help="write the main chain to a file (node stopped)",
                                 description="Write every main-chain block, genesis first, as u32le length ‖ encoding.")
    export.add_argument("--data-dir", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True)
    export.set_defaults(run=run_export)
    genesis = commands.add_parser(
        "genesis", help="write a genesis file (a new chain), or --check one",
        description="Write a genesis file (JSON) for a new chain: its preset's parameters under a chain id of its own, "
                    "funded accounts, stakes, and a bootstrap task for every bootstrap miner (every block proves an "
                    "iteration of a task in training; a bootstrap task is one its miner trains alone). With --check, "
                    "say whether a genesis file can mine, and why not.",
        epilog="example: bws chain genesis --out genesis.json --miner ADDRESS_A --miner ADDRESS_B "
               "--stake ADDRESS_A:supervisor --stake ADDRESS_B:evaluator --fund ADDRESS_A:1000 "
               "--bootstrap-dataset digits")
    target = genesis.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, metavar="FILE", help="write the genesis here")
    target.add_argument("--check", type=Path, metavar="FILE",
                        help="check this genesis file instead: exit 0 if it can mine, else 1 with the reasons")
    genesis.add_argument("--preset", choices=("devnet", "mainnet"),
                         help="the chain's parameters: block time, difficulty, rewards, ticket prices (default devnet)")
    genesis.add_argument("--chain-id", type=int, metavar="N",
                         help="the chain id signed into every transaction (default: drawn at random, so that no two "
                              "chains share one)")
    genesis.add_argument("--timestamp", type=int, help="genesis time, Unix seconds (default: now)")
    genesis.add_argument("--fund", action="append", default=[], metavar="ADDRESS:COINS",
                         help="fund an address (40 hex characters) with COINS coins (repeatable)")
    genesis.add_argument("--stake", action="append", default=[], metavar="ADDRESS:ROLE[:COINS]",
                         help="stake COINS for ROLE (miner, supervisor or evaluator) in ADDRESS's name (default one "
                              "ticket of the preset); a client task's group is drawn from these (repeatable)")
    genesis.add_argument("--miner", action="append", default=[], metavar="ADDRESS",
                         help="a bootstrap miner: it gets a bootstrap task of its own and, unless --stake gives it "
                              "one, a miner stake of one ticket (repeatable; a chain needs one to mine)")
    bootstrap = genesis.add_argument_group("the bootstrap task (what every --miner trains)")
    bootstrap.add_argument("--bootstrap-dataset", metavar="NAME",
                           help="the dataset it trains on (default digits, shipped; others prepared locally)")
    bootstrap.add_argument("--bootstrap-template", choices=("dnn", "cnn"),
                           help="the job template it trains (default dnn)")
    # The defaults are node/genesis.py's, named in the help only: registering a command imports nothing heavy
    # (tests/node/test_genesis.py checks the help against them).
    bootstrap.add_argument("--bootstrap-iterations", type=int, metavar="N",
                           help="iterations of each bootstrap miner, one batch each: the dataset is repeated for "
                                "as many epochs as they need (default 4000)")
    bootstrap.add_argument("--bootstrap-batch-size", type=int, metavar="N",
                           help="examples per iteration (default 128: an iteration's nonces grow with its work, up "
                                "to the preset's cap)")
    bootstrap.add_argument("--bootstrap-task", type=Path, metavar="FILE",
                           help="train this task file (bws task new -o FILE; dnn or cnn) instead, each of its "
                                "batches once")
    bootstrap.add_argument("--dataset-dir", help="TFDS data directory of the bootstrap dataset (default: "
                                                 "$BWS_DATA_DIR or ~/.cache/bws/tensorflow_datasets)")
    genesis.set_defaults(run=run_genesis)


def running_node_info(data_dir: Path | None) -> dict | None:
    """The node.json of a node that is running in `data_dir` (None if there
    is none, or its process is gone: killed nodes leave the file behind)."""
    if data_dir is None or not (data_dir / "node.json").exists():
        return None
    try:
        info = json.loads((data_dir / "node.json").read_text())
        os.kill(int(info["pid"]), 0)
    except (ValueError, KeyError, TypeError, ProcessLookupError):
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    return info


def api_url(args) -> str:
    if args.api:
        return args.api
    info = running_node_info(args.data_dir)
    return info["api"] if info is not None else DEFAULT_API


def _from_store(args):
    from bws.node.store import ChainStore

    return ChainStore(args.data_dir, read_only=True)


def _use_store(args) -> bool:
    return args.api is None and args.data_dir is not None and running_node_info(args.data_dir) is None


def run_head(args) -> int:
    from bws.node.api import ApiClient, ApiError
    from bws.node.store import StoreError

    try:
        if _use_store(args):
            store = _from_store(args)
            head = store.head_record()
            store.close()
            print(json.dumps({"hash": head.hash.hex(), "height": head.height, "cumulative_work": str(head.cumulative_work)}, indent=1))
        else:
            print(json.dumps(ApiClient(api_url(args)).get("/status")["head"], indent=1))
    except (ApiError, StoreError) as error:
        raise CommandError(str(error)) from None
    return 0


def run_block(args) -> int:
    from bws.node.api import ApiClient, ApiError, to_json
    from bws.node.store import StoreError

    reference = args.reference
    block_hash = None if reference.isdigit() else parse_hex(reference, 32, "a block hash")
    try:
        if _use_store(args):
            store = _from_store(args)
            if block_hash is None:
                block_hash = store.main_chain_hash(int(reference))
            record = store.get_block_record(block_hash) if block_hash else None
            if record is None:
                store.close()
                raise CommandError(f"no block {reference} in {args.data_dir}")
            document = {"hash": record.hash.hex(), "height": record.height, "main_chain": store.is_on_main_chain(record.hash),
                        "block": to_json(record.block())}
            store.close()
        else:
            document = ApiClient(api_url(args)).get(f"/block/{reference if block_hash is None else block_hash.hex()}")
    except (ApiError, StoreError) as error:
        raise CommandError(str(error)) from None
    print(json.dumps(document, indent=1, sort_keys=True))
    return 0


def run_export(args) -> int:
    from tqdm import tqdm

    from bws.node.store import StoreError

    try:
        store = _from_store(args)
    except StoreError as error:
        raise CommandError(f"{error} (stop the node first: export reads its store)") from None
    head = store.head_record()
    with open(args.out, "wb") as handle:
        for height in tqdm(range(head.height + 1), desc="export", unit="block"):
            record = store.get_block_record(store.main_chain_hash(height))
            handle.write(len(record.encoded).to_bytes(4, "little") + record.encoded)
    store.close()
    print(f"wrote {head.height + 1} blocks to {args.out}")
    return 0


# The options that shape a genesis to write, by their argparse names; --check reads one and takes none of them.
GENESIS_OPTIONS = ("preset", "chain_id", "timestamp", "fund", "stake", "miner", "bootstrap_dataset",
                   "bootstrap_template", "bootstrap_iterations", "bootstrap_batch_size", "bootstrap_task", "dataset_dir")


def run_genesis(args) -> int:
    if args.check is not None:
        given = [name for name in GENESIS_OPTIONS if getattr(args, name) not in (None, [])]
        if given:
            raise CommandError(f"--check reads a genesis file as it is: drop --{given[0].replace('_', '-')}")
        return check_genesis(args.check)
    from bws.node.genesis import GenesisError, build_genesis, chain_config, mining_problems
    from bws.node.service import write_genesis
    from bws.spec import containers as C
    from bws.templates.errors import TemplateError

    try:
        preset = args.preset or "devnet"
        config = chain_config(preset, args.chain_id)
        accounts = [C.GenesisAccount(address=address, balance=units)
                    for address, units in (_parse_fund(item) for item in args.fund)]
        stakes = [_parse_stake(item, config) for item in args.stake]
        miners = [parse_hex(item, 20, "--miner: an address") for item in args.miner]
        bootstrap_flags = [flag for flag in ("dataset", "template", "task", "iterations", "batch_size")
                           if getattr(args, f"bootstrap_{flag}") is not None]
        if bootstrap_flags and not miners:
            raise GenesisError(f"--bootstrap-{bootstrap_flags[0].replace('_', '-')} sets what the bootstrap miners "
                               "train: give them with --miner ADDRESS")
        bootstrap = _bootstrap_task(args) if miners else None
        genesis = build_genesis(config, args.timestamp or int(time.time()), accounts, stakes, miners, bootstrap)
        write_genesis(args.out, genesis)
    except (GenesisError, TemplateError) as error:
        raise CommandError(str(error)) from None
    except OSError as error:
        raise CommandError(f"cannot write {args.out}: {error.strerror}") from None
    print(f"wrote {args.out}: chain id {config.chain_id} (preset {preset}), {len(genesis.accounts)} funded "
          f"accounts, {len(genesis.stakes)} stakes, {len(genesis.tasks)} bootstrap miners")
    if mining_problems(genesis):
        print(f"note: this genesis cannot mine yet (bws chain genesis --check {args.out} says why)")
    return 0


def check_genesis(path: Path) -> int:
    """Say whether the genesis file at `path` can mine: 0 and one line if it can, 1 and the reasons if not."""
    from bws.node.genesis import mining_problems
    from bws.node.service import NodeError, read_genesis

    try:
        genesis = read_genesis(path)
    except NodeError as error:
        print(f"{path}: this genesis cannot mine:\n  {error}")
        return 1
    if problems := mining_problems(genesis):
        print(f"{path}: this genesis cannot mine:")
        for problem in problems:
            print(f"  {problem}")
        return 1
    miners = sorted({bytes(member).hex() for task in genesis.tasks for member in task.members})
    print(f"{path}: this genesis can mine (chain id {genesis.config.chain_id}, {len(genesis.tasks)} bootstrap "
          f"tasks, miners {', '.join(miners)})")
    return 0


def _bootstrap_task(args):
    """The task every bootstrap miner trains: --bootstrap-task's file, else the template on the dataset."""
    from bws.node.genesis import (
        BOOTSTRAP_BATCH_SIZE, BOOTSTRAP_ITERATIONS, BootstrapTask, GenesisError, make_task_with_batches,
    )
    from bws.templates.task import load_task

    if args.bootstrap_task is not None:
        given = [flag for flag in ("dataset", "template", "iterations", "batch_size")
                 if getattr(args, f"bootstrap_{flag}") is not None]
        if given:
            raise GenesisError("--bootstrap-task FILE sets the template, dataset, iterations and batch size: "
                               f"drop --bootstrap-{given[0].replace('_', '-')}")
        return BootstrapTask.from_definition(load_task(str(args.bootstrap_task)))
    iterations = args.bootstrap_iterations or BOOTSTRAP_ITERATIONS
    batch_size = args.bootstrap_batch_size or BOOTSTRAP_BATCH_SIZE
    if iterations < 1 or batch_size < 1:
        raise GenesisError("--bootstrap-iterations and --bootstrap-batch-size must be positive")
    return BootstrapTask.from_definition(make_task_with_batches(
        args.bootstrap_template or "dnn", args.bootstrap_dataset or "digits", iterations, batch_size=batch_size,
        dataset_dir=args.dataset_dir))


def _parse_coins(text: str, flag: str, item: str) -> int:
    from bws.node.genesis import GenesisError
    from bws.spec.presets import COIN

    try:
        units = Decimal(text) * COIN
    except InvalidOperation:
        units = Decimal(0)
    if not units.is_finite() or units <= 0 or units != units.to_integral_value():
        raise GenesisError(f"{flag} {item!r}: {text!r} is not a positive amount of coins (8 decimals at most)")
    return int(units)


def _parse_fund(item: str) -> tuple[bytes, int]:
    """--fund ADDRESS:COINS as (address, units)."""
    address, _, coins = item.partition(":")
    return parse_hex(address, 20, "--fund: an address"), _parse_coins(coins, "--fund", item)


def _parse_stake(item: str, config):
    """--stake ADDRESS:ROLE[:COINS] as a GenesisStake (one ticket of the role when COINS is left out)."""
    from bws.node.genesis import ROLE_NAMES, GenesisError
    from bws.spec import containers as C
    from bws.spec.tasks import get_ticket_price

    address, _, rest = item.partition(":")
    role_text, _, coins = rest.partition(":")
    if role_text not in ROLE_NAMES:
        raise GenesisError(f"--stake {item!r}: the role is one of {', '.join(ROLE_NAMES)}, got {role_text!r}")
    role = ROLE_NAMES[role_text]
    amount = _parse_coins(coins, "--stake", item) if coins else get_ticket_price(config, role)
    return C.GenesisStake(owner=parse_hex(address, 20, "--stake: an address"), role=role, amount=amount)
