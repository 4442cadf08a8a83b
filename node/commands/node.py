"""`bws node run`: run a full node; `bws node peers`: the peers of a running one.

    bws node run --data-dir ~/.bws/node1 --genesis genesis.json --api-port 8645
    bws node run --data-dir ~/.bws/node2 --genesis genesis.json --api-port 8646 \\
        --peer /ip4/127.0.0.1/tcp/40123/p2p/16Uiu2...
    bws node run --config node.toml                 # the same options in a TOML file (node/config.py)
    bws node peers --api http://127.0.0.1:8646

The node opens (or creates) its chain store in the data dir, joins the
network, syncs from its peers, relays transactions and, with the verifier
role (it replays them), blocks, and serves the HTTP API (127.0.0.1 unless
--api-host). Stop it with Ctrl-C or SIGTERM: it closes the store cleanly
(and a SIGKILL loses nothing it had acknowledged). It logs in one format
(node/logs.py), to stderr or --log-file.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from . import CommandError

DEFAULT_API_PORT = 8645
# A fixed p2p port, so a node's address survives its restarts and the peers that remember it find it
# again; 30645 is outside Linux's ephemeral range (32768-60999), so no outgoing connection holds it.
DEFAULT_P2P_PORT = 30645


# The defaults of `bws node run`'s options, applied after the config file's values (flags > file > these).
RUN_DEFAULTS = {"roles": ["peer"], "peer": [], "api_port": DEFAULT_API_PORT, "api_host": "127.0.0.1",
                "log_level": "info"}

# Options that give one setting two ways: a flag for either one overrides the file's key for both.
ONE_OPTION = {"port": {"listen"}, "listen": {"port"}}


def register(parser: argparse.ArgumentParser) -> None:
    from bws.node.config import comma_separated, config_keys
    from bws.node.logs import LOG_LEVELS

    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="run a full node (store, network, sync, API) until interrupted",
                              description="Run a full node until Ctrl-C or SIGTERM. Every option but --config can "
                                          "be given in the config file instead (docs/node.md).")
    run.add_argument("--config", type=Path, metavar="FILE",
                     help="a TOML file of options, keys named as the long flags (data_dir = \"n1\", roles = "
                          "[\"peer\", \"miner\"], peer = [...]); a flag given here wins over its key")
    run.add_argument("--data-dir", type=Path, help="the node's folder (chain store, p2p key, node.json); required")
    run.add_argument("--genesis", type=Path, help="genesis file (JSON; see `bws chain genesis`); required")
    run.add_argument("--roles", type=comma_separated,
                     help="comma-separated roles: peer, verifier (replay every block's iteration; without it the node "
                          "trusts iterations' claimed roots and relays no gossiped block), miner (train "
                          "task groups, mine), supervisor (record and check iteration messages), evaluator (score "
                          "final models, finalize tasks), client (default: peer)")
    run.add_argument("--keystore", type=Path,
                     help="the node's keystore (bws wallet new): miner, supervisor and evaluator sign with it")
    run.add_argument("--password-file", type=Path,
                     help="file holding the keystore's password (else $BWS_WALLET_PASSWORD, else a prompt)")
    run.add_argument("--dataset-dir", type=Path,
                     help="TFDS data directory for task datasets (default: $BWS_DATA_DIR or ~/.cache/bws/tensorflow_datasets)")
    run.add_argument("--peer", action="append", metavar="MULTIADDR",
                     help="a peer to connect to, /ip4/…/tcp/…/p2p/<peer id> or /ip6/…; remembered in the data "
                          "dir's peers.json and redialed with backoff whenever it is not connected (repeatable)")
    run.add_argument("--port", type=int, metavar="P",
                     help=f"p2p TCP port on loopback (default {DEFAULT_P2P_PORT}; 0 = any free port); "
                          "--listen gives the host and port instead")
    run.add_argument("--listen", metavar="MULTIADDR",
                     help=f"libp2p listen address, e.g. /ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT} (every interface) or "
                          f"/ip6/::/tcp/{DEFAULT_P2P_PORT} (default /ip4/127.0.0.1/tcp/{DEFAULT_P2P_PORT})")
    run.add_argument("--announce", metavar="MULTIADDR",
                     help="the address other nodes should dial, when it is not the listen address (behind NAT or "
                          "a port forward): /ip4/PUBLIC_IP/tcp/P, /ip6/…/tcp/P or /dns/NAME/tcp/P")
    run.add_argument("--api-port", type=int,
                     help=f"HTTP API port (default {DEFAULT_API_PORT}; 0 = any free)")
    run.add_argument("--api-host", metavar="HOST",
                     help="HTTP API address (default 127.0.0.1; the API has no authentication: give another "
                          "address, e.g. 0.0.0.0 or ::, only behind your own proxy or firewall)")
    run.add_argument("--assume-valid-depth", type=int, metavar="N",
                     help="a verifier joining late takes a block at least N below a syncing peer's head whose "
                          "iteration inputs nobody serves any more on the chain's work, trusting the iteration's "
                          "claimed roots and checking every other rule, as Bitcoin Core's assumevalid (default "
                          "1000; 0 = never: such a block waits, not validated)")
    run.add_argument("--log-level", choices=LOG_LEVELS, help="the least severe records logged (default info)")
    run.add_argument("--log-file", type=Path, metavar="FILE",
                     help="append the log to FILE instead of stderr (reopened when logrotate moves it)")
    run.set_defaults(run=run_node, config_keys=config_keys(run))
    peers = commands.add_parser("peers", help="the running node's connected and banned peers, as a table",
                                description="Show a running node's connected peers (address, direction, score) "
                                            "and its banned peers (time left), from its API's GET /peers.")
    peers.add_argument("--api", help="the node's API URL (default: the node.json of --data-dir, else "
                                     f"http://127.0.0.1:{DEFAULT_API_PORT})")
    peers.add_argument("--data-dir", type=Path, help="the data dir of a running node (finds its API)")
    peers.set_defaults(run=run_peers)


def with_config(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with each option not given on the command line taken from --config's file, else RUN_DEFAULTS."""
    from bws.node.config import ConfigError, read_config

    try:
        from_file = read_config(args.config, args.config_keys) if args.config is not None else {}
    except ConfigError as error:
        raise CommandError(str(error)) from None
    merged = argparse.Namespace(**vars(args))
    given = {name for name in args.config_keys if getattr(args, name) is not None}
    for name in args.config_keys:
        if getattr(args, name) is None and not given & ONE_OPTION.get(name, set()):
            setattr(merged, name, from_file.get(name, RUN_DEFAULTS.get(name)))
    for name in ("data_dir", "genesis"):
        if getattr(merged, name) is None:
            raise CommandError(f"give --{name.replace('_', '-')} (or {name} in the --config file)")
    return merged


def listen_address(args: argparse.Namespace) -> str:
    """The libp2p listen multiaddr from --listen and --port (one of the two gives the port)."""
    if args.listen is not None and args.port is not None:
        raise ValueError("give the p2p port in --listen or with --port, not both")
    if args.listen is not None:
        return args.listen
    return f"/ip4/127.0.0.1/tcp/{DEFAULT_P2P_PORT if args.port is None else args.port}"


def run_node(args: argparse.Namespace) -> int:
    from bws.node.api import ApiError
    from bws.node.logs import configure_logging
    from bws.node.p2p import NetworkError
    from bws.node.service import VALIDATION_MODES, Node, NodeError, NodeSettings, load_genesis
    from bws.node.store import StoreError
    from bws.node.validation import ASSUME_VALID_DEPTH

    args = with_config(args)
    try:
        configure_logging(args.log_level, args.log_file)
    except ValueError as error:
        raise CommandError(str(error)) from None
    roles = set(args.roles)
    role_set = None
    try:
        listen = listen_address(args)
    except ValueError as error:
        raise CommandError(str(error)) from None
    assume_valid_depth = ASSUME_VALID_DEPTH if args.assume_valid_depth is None else args.assume_valid_depth
    if assume_valid_depth < 0:
        raise CommandError(f"--assume-valid-depth {assume_valid_depth}: a depth is 0 (never) or more")
    try:
        if roles & {"verifier", "miner", "client", "evaluator", "supervisor"}:
            from bws.node.roles.host import RoleSet, RoleSetupError, load_role_account
            try:
                role_set = RoleSet(roles, load_role_account(args.keystore, args.password_file),
                                   None if args.dataset_dir is None else str(args.dataset_dir))
            except RoleSetupError as error:
                raise CommandError(str(error)) from None
        verifying = role_set is not None and "verifier" in roles
        node = Node(NodeSettings(data_dir=args.data_dir, genesis=load_genesis(args.genesis), roles=roles,
                                 peers=args.peer, api_port=args.api_port, api_host=args.api_host,
                                 listen=listen, announce=args.announce,
                                 oracles=role_set.oracles if verifying else None,
                                 prefetch=role_set.replay.prefetch if verifying else None,
                                 assume_valid_depth=assume_valid_depth))
    except (NodeError, StoreError) as error:
        raise CommandError(str(error)) from None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        node.start()
    except (ApiError, NetworkError, NodeError) as error:
        node.stop()
        raise CommandError(str(error)) from None
    if role_set is not None:
        role_set.attach(node)
    print(f"node {node.network.peer_id}\n  p2p: {node.network.address}\n  api: {node.api.url}\n"
          f"  head: height {node.chain.head.height}\n"
          f"  validation: {node.validation}: {VALIDATION_MODES[node.validation]}", flush=True)
    stop.wait()
    print("stopping…", flush=True)
    if role_set is not None:
        role_set.stop()
    node.stop()
    # The store is closed and the roles joined. Leave without the interpreter's teardown: a daemon
    # thread still inside XLA (a replay or compile that a block or an auditor started) aborts the
    # process when Python finalizes under it ("FATAL: exception not rethrown", exit status 134).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_peers(args: argparse.Namespace) -> int:
    from bws.node.api import ApiClient, ApiError
    from bws.node.commands.chain import api_url

    try:
        document = ApiClient(api_url(args)).get("/peers")
    except ApiError as error:
        raise CommandError(str(error)) from None
    print(format_peers(document))
    return 0


def format_peers(document: dict) -> str:
    """GET /peers as two tables; an address is the connection's, so an inbound peer shows its outgoing port."""
    connected, banned = document["connected"], document["banned"]
    lines = [f"connected peers: {len(connected)} (banned at score {document['ban_threshold']:g})"]
    if connected:
        lines += _table(["PEER ID", "DIRECTION", "ADDRESS", "SCORE"],
                        [[peer["peer_id"], peer["direction"], peer["address"] or "?", f"{peer['score']:.1f}"]
                         for peer in connected])
    lines.append(f"banned peers: {len(banned)}")
    if banned:
        lines += _table(["PEER ID", "BANNED FOR"],
                        [[peer["peer_id"], f"{peer['seconds_left']:.0f} s"] for peer in banned])
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
