"""`bws chain`: look at a chain, through a running node's API or a stopped node's store.

    bws chain head --api http://127.0.0.1:8645
    bws chain block 12 --data-dir ~/.bws/node1
    bws chain export --data-dir ~/.bws/node1 --out chain.bin
    bws chain genesis --out genesis.json --preset devnet --fund <address>:1000
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path

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
    genesis = commands.add_parser("genesis", help="write a genesis file", description="Write a genesis file (JSON).")
    genesis.add_argument("--out", type=Path, required=True)
    genesis.add_argument("--preset", default="devnet", choices=("devnet", "mainnet"))
    genesis.add_argument("--fund", action="append", default=[], metavar="ADDRESS:COINS",
                         help="fund an address (40 hex characters) with COINS coins (repeatable)")
    genesis.add_argument("--timestamp", type=int, help="genesis time, Unix seconds (default: now)")
    genesis.set_defaults(run=run_genesis)


def _fail(message: str) -> int:
    print(f"bws chain: error: {message}", file=sys.stderr)
    return 1


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
        return _fail(str(error))
    return 0


def run_block(args) -> int:
    from bws.node.api import ApiClient, ApiError, to_json
    from bws.node.store import StoreError

    reference = args.reference
    if not (reference.isdigit() or (len(reference) == 64 and all(c in "0123456789abcdefABCDEF" for c in reference))):
        return _fail("a block reference is a height (decimal) or a 64-hex-character hash")
    try:
        if _use_store(args):
            store = _from_store(args)
            block_hash = store.main_chain_hash(int(reference)) if reference.isdigit() else bytes.fromhex(reference)
            record = store.get_block_record(block_hash) if block_hash else None
            if record is None:
                store.close()
                return _fail(f"no block {reference} in {args.data_dir}")
            document = {"hash": record.hash.hex(), "height": record.height, "main_chain": store.is_on_main_chain(record.hash),
                        "block": to_json(record.block())}
            store.close()
        else:
            document = ApiClient(api_url(args)).get(f"/block/{reference}")
    except (ApiError, StoreError) as error:
        return _fail(str(error))
    print(json.dumps(document, indent=1, sort_keys=True))
    return 0


def run_export(args) -> int:
    from tqdm import tqdm

    from bws.node.store import StoreError

    try:
        store = _from_store(args)
    except StoreError as error:
        return _fail(f"{error} (stop the node first: export reads its store)")
    head = store.head_record()
    with open(args.out, "wb") as handle:
        for height in tqdm(range(head.height + 1), desc="export", unit="block"):
            record = store.get_block_record(store.main_chain_hash(height))
            handle.write(len(record.encoded).to_bytes(4, "little") + record.encoded)
    store.close()
    print(f"wrote {head.height + 1} blocks to {args.out}")
    return 0


def run_genesis(args) -> int:
    from bws.node.service import write_genesis
    from bws.spec import containers as C
    from bws.spec.genesis import InvalidGenesis, create_genesis_state
    from bws.spec.presets import COIN, PRESETS

    accounts = []
    for item in args.fund:
        address, _, coins = item.partition(":")
        try:
            address_bytes = bytes.fromhex(address)
            units = Decimal(coins) * COIN
        except (ValueError, InvalidOperation):
            return _fail(f"--fund {item!r}: expected ADDRESS:COINS, e.g. 1f…ab:1000")
        if len(address_bytes) != 20 or units <= 0 or units != units.to_integral_value():
            return _fail(f"--fund {item!r}: an address is 40 hex characters and COINS a positive amount (8 decimals at most)")
        accounts.append(C.GenesisAccount(address=address_bytes, balance=int(units)))
    genesis = C.GenesisConfig(config=PRESETS[args.preset], timestamp=args.timestamp or int(time.time()),
                              accounts=accounts, stakes=[], tasks=[])
    try:
        create_genesis_state(genesis)
    except InvalidGenesis as error:
        return _fail(str(error))
    write_genesis(args.out, genesis)
    print(f"wrote {args.out} ({len(accounts)} funded accounts, preset {args.preset})")
    return 0
