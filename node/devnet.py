"""`bws devnet`: a local network on loopback that trains a real model while
it mines blocks from the training iterations.

What it does, in order:
1. builds the task definition (a job template on a dataset, as `bws task new`);
2. writes keys for a client and every node, and a genesis (devnet preset
   under a chain id of its own, node/genesis.py) where every node is funded and staked for the miner, supervisor and
   evaluator roles, and holds a bootstrap task (a genesis task in training
   with that node as its only member: blocks need a task in training, so
   the first blocks, which include the client's task, are mined on these);
3. starts every node as a separate process (`bws node run` with the roles
   peer, verifier, miner, supervisor and evaluator) listening on 127.0.0.1,
   each dialing the nodes started before it;
4. submits the task from the client account through node 0's HTTP API;
5. shows progress from the nodes' APIs until the task is finalized (group
   selected by the chain, trained by its group, mined into blocks, every
   block replayed by the other nodes, evaluated, fee split); the client's
   test split (the dataset's test split, written to the client's own file)
   is withheld until the task is in evaluation, then revealed through node 0
   (`--public-test`: the dataset's test split, rebuilt by every evaluator);
6. prints a summary and stops every node (always: also on failure and Ctrl-C).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

from bws.spec import containers as C
from bws.spec.constants import EVALUATORS_PER_TASK, ROLE_EVALUATOR, ROLE_MINER, ROLE_SUPERVISOR, SUPERVISORS_PER_TASK
from bws.spec.crypto import CURVE_ORDER
from bws.spec.genesis import create_genesis_state
from bws.spec.presets import COIN, DEVNET
from bws.spec.tasks import get_ticket_price

from .api import ApiClient, ApiError
from .audit_devnet import audit_devnet, audit_failures, miner_tickets, node_environment, print_audit
from .audit_sources import ChainViaApi
from .devnet_attacks import (
    ATTACKER_BALANCE, FLOOD, JUNK_FRAUD_PROOFS, POISON_TASK, RESTART, STALL_TASK, TRANSACTION_ATTACKS, Arena,
    AttackOutcome, JunkFraudProofs, PoisonTask, StallTask, TransactionAttacker, attack_failures,
    honest_without_miner_stake, kept_flood_messages, landed_transactions, resumed_trainings,
)
from .devnet_plot import plot_run, read_run_trace
from .genesis import BOOTSTRAP_ITERATIONS, BootstrapTask, build_genesis, chain_config, make_task_with_batches
from .p2p import peer_id_from_seed
from .roles.client import Client, TaskOrder, reveal_test_set, withheld_test_set
from .service import NODE_INFO_FILE, P2P_KEY_FILE, write_genesis
from .store import StoreError
from .wallet import Account, save_keystore

DEVNET_PASSWORD = "bws-devnet"
DEVNET_SCRYPT_N = 2**12          # devnet keys protect nothing; keep start-up fast
NODE_BALANCE = 1000 * COIN
CLIENT_BALANCE = 10_000 * COIN
TASK_PAYMENT = 1000 * COIN
TRANSACTION_FEE = 1000
START_TIMEOUT_SECONDS = 180.0
NODE_ROLES = ("peer", "verifier", "miner", "supervisor", "evaluator")
SETTLE_DEPTH = 2                         # blocks below the lowest head compared across nodes
DEADLINE_START_BLOCKS = 6                # inclusion, group selection, training start, slack
DEADLINE_BLOCKS_PER_ITERATION = 0.6
STOP_TIMEOUT_SECONDS = 15.0


class DevnetError(Exception):
    """The devnet could not run to the end (the message says what failed)."""


# What the best final model must reach on digits by default, per template (50 iterations a member). The cnn's bar is
# lower: every step drops 1 input value in 16 (the mask its header keys), and it ended at 94.3 % twice (measured).
DEFAULT_MIN_ACCURACY = {"dnn": 0.95, "cnn": 0.93}


@dataclass
class DevnetOptions:
    nodes: int = 4
    template: str = "dnn"
    dataset: str = "digits"
    data_dir: str | None = None
    blocks: int = 10
    seed: int = 0
    iterations: int = 50
    batch_size: int = 128
    learning_rate: float = 0.003
    min_accuracy: float | None = None   # None: the template's (DEFAULT_MIN_ACCURACY)
    timeout: float = 900.0
    dataset_dir: str | None = None
    byzantine: dict = field(default_factory=dict)   # node index -> cheating behaviour (node/audit_devnet.py)
    attacks: dict = field(default_factory=dict)     # node index -> its network attacks (node/devnet_attacks.py)
    restart_every: float = 0.0   # SIGKILL and restart an honest member of the task's group this often (0: never)
    observers: int = 0   # extra nodes with the peer role only: they replay nothing and must hold the same chain
    withhold_test: bool = True   # the client's test split, revealed only when the task is in evaluation
    chain_id: int | None = None  # the genesis' chain id; None: drawn at random (a devnet is a network of its own)


@dataclass
class DevnetNode:
    index: int
    account: Account
    data_dir: Path
    listen_port: int
    api_port: int
    process: subprocess.Popen | None = None
    api: ApiClient | None = None
    observer: bool = False   # the peer role only (not in the genesis, no key, no replay)
    restarting: bool = False  # killed and started again (--restart-every), its API not back yet

    @property
    def name(self) -> str:
        return f"{'observer' if self.observer else 'node'}{self.index}"

    @property
    def p2p_key(self) -> bytes:
        """The node's libp2p identity seed, derived from its account key."""
        return hashlib.sha256(b"BWS/devnet-p2p-identity" + self.account.secret_key).digest()

    @property
    def multiaddr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.listen_port}/p2p/{peer_id_from_seed(self.p2p_key)}"


def derive_account(seed: int, label: str) -> Account:
    """A devnet key from the seed and a label (reproducible devnets)."""
    counter = 0
    while True:
        digest = hashlib.sha256(f"BWS/devnet-key/{seed}/{label}/{counter}".encode()).digest()
        if 0 < int.from_bytes(digest, "big") < CURVE_ORDER:
            return Account(digest)
        counter += 1


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (bound, read, released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def read_node_info(data_dir: Path) -> dict | None:
    """A started node's info file ({"api", "address", "pid", ...}), or None
    while it is absent or still being written."""
    try:
        info = json.loads((data_dir / NODE_INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "api" in info else None


def group_size_for(nodes: int) -> int:
    """Members of the client task: every node but the supervisor's and evaluator's seats."""
    return nodes - SUPERVISORS_PER_TASK - EVALUATORS_PER_TASK


def build_task(options: DevnetOptions, test_file: str | None = None):
    """The client task's definition: enough epochs of the dataset for every member's iterations."""
    return make_task_with_batches(options.template, options.dataset, group_size_for(options.nodes) * options.iterations,
                                  batch_size=options.batch_size, learning_rate=options.learning_rate,
                                  dataset_dir=options.dataset_dir, seed=options.seed, test_file=test_file)


def build_bootstrap_task(options: DevnetOptions):
    """The bootstrap tasks' definition: enough epochs for BOOTSTRAP_ITERATIONS (each batch is trained once)."""
    return make_task_with_batches(options.template, options.dataset, BOOTSTRAP_ITERATIONS,
                                  batch_size=options.batch_size, learning_rate=options.learning_rate,
                                  dataset_dir=options.dataset_dir, seed=options.seed)


def write_client_test_file(options: DevnetOptions, path: Path) -> str:
    """The devnet client's own test split: the dataset's test split, as the .npz `bws task new --test-file` takes."""
    import numpy as np

    from bws.templates import datasets

    test = datasets.load_split(options.dataset, "test", data_dir=options.dataset_dir)
    np.savez(path, x=test.inputs, y=test.labels)
    return str(path)


def evaluation_deadline(height: int, iterations: int) -> int:
    """The task's evaluation deadline, submitted at `height`. Evaluation opens
    when a block proves the last iteration, or evaluation_period blocks
    before the deadline, whichever comes first; blocks come from the group's
    iterations (at most one per iteration, about 0.35 per iteration measured
    with two miners), so allowing DEADLINE_BLOCKS_PER_ITERATION of them
    keeps training uncut while the wait after an unproven last iteration
    stays short."""
    return (height + DEADLINE_START_BLOCKS + math.ceil(DEADLINE_BLOCKS_PER_ITERATION * iterations)
            + int(DEVNET.evaluation_period))


def make_genesis(nodes: list[DevnetNode], client: Account, definition, timestamp: int,
                 miner_tickets: dict[bytes, int] | None = None, chain_id: int | None = None,
                 funded: dict[bytes, int] | None = None) -> C.GenesisConfig:
    """Every node a bootstrap miner of `definition`, funded and staked for
    every role; `miner_tickets`: miner stakes of that many tickets for some
    addresses (default one each); `chain_id`: drawn at random if None;
    `funded`: more accounts and their balances (the attackers')."""
    config = chain_config("devnet", chain_id)
    tickets = miner_tickets or {}
    stakes = [C.GenesisStake(owner=n.account.address, role=role,
                             amount=get_ticket_price(config, role) * (tickets.get(n.account.address, 1)
                                                                      if role == ROLE_MINER else 1))
              for n in nodes for role in (ROLE_MINER, ROLE_SUPERVISOR, ROLE_EVALUATOR)]
    accounts = [C.GenesisAccount(address=client.address, balance=CLIENT_BALANCE)] + [
        C.GenesisAccount(address=n.account.address, balance=NODE_BALANCE) for n in nodes] + [
        C.GenesisAccount(address=address, balance=balance) for address, balance in (funded or {}).items()]
    return build_genesis(config, timestamp, accounts, stakes, [n.account.address for n in nodes],
                         BootstrapTask.from_definition(definition))


class Devnet:
    """One devnet run; `run()` returns the summary or raises DevnetError."""

    def __init__(self, options: DevnetOptions, out=sys.stdout) -> None:
        if options.nodes < SUPERVISORS_PER_TASK + EVALUATORS_PER_TASK + 1:
            raise DevnetError(f"--nodes must be at least {SUPERVISORS_PER_TASK + EVALUATORS_PER_TASK + 1} "
                              "(a task needs a miner, a supervisor and an evaluator, on different nodes)")
        if options.observers < 0:
            raise DevnetError(f"--observers must be 0 or more, got {options.observers}")
        self.options = options
        self.out = out
        self.root = Path(options.data_dir or tempfile.mkdtemp(prefix="bws-devnet-"))
        self.nodes: list[DevnetNode] = []
        self.observers: list[DevnetNode] = []
        self.client_account = derive_account(options.seed, "client")
        self.task_id: bytes | None = None
        self.test_set: dict | None = None     # the client's withheld test split
        self.revealed = False
        self.genesis_state = None
        self.started = time.monotonic()
        self.attacker_accounts = {(index, kind): derive_account(options.seed, f"node{index}/{kind}")
                                  for index, kinds in options.attacks.items() for kind in kinds
                                  if kind in TRANSACTION_ATTACKS}
        self.attackers: list[TransactionAttacker] = []
        self.restart_victim: DevnetNode | None = None
        self.restarts = 0
        self.last_restart = 0.0
        self.last_metrics: dict[int, dict] = {}

    @property
    def every_node(self) -> list[DevnetNode]:
        """The group's nodes, then the observers: every process the devnet runs."""
        return self.nodes + self.observers

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- setup ----------------------------------------------------------
    def prepare(self):
        self.root.mkdir(parents=True, exist_ok=True)
        if any(self.root.glob("node*/chain.duckdb")):
            raise DevnetError(f"{self.root} already holds a devnet; pass an empty or new --data-dir")
        self.say(f"devnet: {self.options.nodes} nodes, template {self.options.template} on {self.options.dataset}, "
                 f"data in {self.root}")
        if self.options.withhold_test:
            from bws.templates.task import task_data

            test_file = write_client_test_file(self.options, self.root / "client_test.npz")
            definition = build_task(self.options, test_file)
            self.test_set = withheld_test_set(task_data(definition, self.options.dataset_dir, test_file))
        else:
            definition = build_task(self.options)
        ports = free_ports(2 * (self.options.nodes + self.options.observers))
        for index in range(self.options.nodes):
            node = DevnetNode(index, derive_account(self.options.seed, f"node{index}"), self.root / f"node{index}",
                              ports[2 * index], ports[2 * index + 1])
            node.data_dir.mkdir(parents=True, exist_ok=True)
            save_keystore(node.data_dir / "key.json", node.account, DEVNET_PASSWORD, scrypt_n=DEVNET_SCRYPT_N,
                          overwrite=True)
            (node.data_dir / P2P_KEY_FILE).write_bytes(node.p2p_key)
            self.nodes.append(node)
        for index in range(self.options.observers):
            port = 2 * (self.options.nodes + index)
            observer = DevnetNode(index, derive_account(self.options.seed, f"observer{index}"),
                                  self.root / f"observer{index}", ports[port], ports[port + 1], observer=True)
            observer.data_dir.mkdir(parents=True, exist_ok=True)
            (observer.data_dir / P2P_KEY_FILE).write_bytes(observer.p2p_key)
            self.observers.append(observer)
        (self.root / "password.txt").write_text(DEVNET_PASSWORD)
        genesis = make_genesis(self.nodes, self.client_account, build_bootstrap_task(self.options), int(time.time()),
                               miner_tickets(self.nodes, self.options.byzantine), self.options.chain_id,
                               {a.address: ATTACKER_BALANCE for a in self.attacker_accounts.values()})
        write_genesis(self.root / "genesis.json", genesis)
        (self.root / "task.json").write_bytes(definition.to_bytes())
        self.genesis_state = create_genesis_state(genesis)
        return definition

    def start_nodes(self) -> None:
        """Start every node at once, each dialing the nodes before it (the
        node redials them until they are up, node/peerbook.py). The nodes share a persistent
        XLA compilation cache, so the iteration compiles once per machine."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        for node in self.every_node:
            self.launch(node, "wb")
        for node in self.every_node:
            while (info := read_node_info(node.data_dir)) is None:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise DevnetError(f"{node.name} did not start within {START_TIMEOUT_SECONDS:.0f} s "
                                      f"(see {node.data_dir / 'node.log'})")
                time.sleep(0.2)
            node.api = ApiClient(info["api"], timeout=30)
        self.say(f"devnet: {len(self.every_node)} nodes up: "
                 + ", ".join(f"{n.name} api {n.api.url}" for n in self.every_node))

    def launch(self, node: DevnetNode, log_mode: str) -> None:
        """Start `node`'s process (`log_mode` "ab": a restart, which keeps the log)."""
        environment = dict(os.environ)
        environment.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "bws" / "jax"))
        command = [sys.executable, "-m", "bws.node.cli", "node", "run", "--data-dir", str(node.data_dir),
                   "--genesis", str(self.root / "genesis.json"),
                   "--listen", f"/ip4/127.0.0.1/tcp/{node.listen_port}", "--api-port", str(node.api_port)]
        if node.observer:
            command += ["--roles", "peer"] + [arg for other in self.nodes for arg in ("--peer", other.multiaddr)]
        else:
            command += ["--keystore", str(node.data_dir / "key.json"), "--password-file",
                        str(self.root / "password.txt"), "--roles", ",".join(NODE_ROLES)]
            command += [arg for earlier in self.nodes[:node.index] for arg in ("--peer", earlier.multiaddr)]
            environment.update(node_environment(node.index, self.options.byzantine, self.options.attacks))
        if self.options.dataset_dir:
            command += ["--dataset-dir", self.options.dataset_dir]
        with open(node.data_dir / "node.log", log_mode) as log:
            node.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def check_alive(self) -> None:
        for node in self.every_node:
            if node.process is not None and node.process.poll() is not None:
                tail = (node.data_dir / "node.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise DevnetError(f"{node.name} exited with code {node.process.returncode}: " + " | ".join(tail))

    def stop_nodes(self) -> None:
        for node in self.every_node:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for node in self.every_node:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait()

    # -- the run --------------------------------------------------------
    def submit(self, definition) -> None:
        api = self.nodes[0].api
        height = int(api.get("/status")["head"]["height"])
        iterations = self.options.iterations
        order = TaskOrder(group_size=group_size_for(self.options.nodes), iterations=iterations,
                          evaluation_deadline=evaluation_deadline(height, iterations),
                          payment=TASK_PAYMENT, fee=TRANSACTION_FEE)
        client = Client(self.client_account, api, int(self.genesis_state.config.chain_id))
        self.task_id = client.submit(definition, order)
        self.order = order
        self.say(f"devnet: task {self.task_id.hex()[:16]}… submitted at height {height} "
                 f"({order.group_size} miners x {iterations} iterations, fee {TASK_PAYMENT // COIN} BWS, "
                 f"deadline height {order.evaluation_deadline})")
        self.attackers = [self.attacker(index, kind, definition) for index, kind in self.attacker_accounts]

    def attacker(self, index: int, kind: str, definition) -> TransactionAttacker:
        """Node `index`'s `kind` attack, through its API, with its own account (node/devnet_attacks.py)."""
        node = self.nodes[index]
        arena = Arena(api=node.api, others={n.name: n.api for n in self.nodes if n is not node},
                      chain_id=int(self.genesis_state.config.chain_id), task_definition=definition, order=self.order)
        account = self.attacker_accounts[(index, kind)]
        if kind == JUNK_FRAUD_PROOFS:
            return JunkFraudProofs(node.name, account, arena, time.monotonic)
        return {POISON_TASK: PoisonTask, STALL_TASK: StallTask}[kind](node.name, account, arena)

    def poll(self) -> dict:
        metrics = [self.node_metrics(n) for n in self.nodes]
        try:
            task = self.nodes[0].api.get(f"/task/{self.task_id.hex()}")
        except ApiError as error:
            if error.status != HTTPStatus.NOT_FOUND:
                raise
            task = {"status": "in mempool", "blocks": []}  # not in a block yet
        return {"metrics": metrics, "task": task,
                "observer_heights": [int(n.api.get("/status")["head"]["height"]) for n in self.observers]}

    def node_metrics(self, node: DevnetNode) -> dict:
        """The node's /metrics; while a restarted node is not up yet, what it answered last."""
        if node.restarting:
            if read_node_info(node.data_dir) is None:
                return self.last_metrics[node.index]
            node.restarting = False
        self.last_metrics[node.index] = node.api.get("/metrics")
        return self.last_metrics[node.index]

    @staticmethod
    def role_counters(snapshot: dict) -> list[dict]:
        return [m.get("roles", {}).get("counters", {}) for m in snapshot["metrics"]]

    def progress_line(self, snapshot: dict) -> str:
        metrics, task = snapshot["metrics"], snapshot["task"]
        counters = self.role_counters(snapshot)
        losses = [model["loss"] for model in task.get("latest_models", {}).values()]
        return (f"[{time.monotonic() - self.started:5.0f}s] height {max(m['height'] for m in metrics):3d} | "
                f"task {task['status']:14s} iteration {task.get('max_iteration_seen', -1) + 1:3d}/"
                f"{self.options.iterations} loss {min(losses) if losses else float('nan'):.3f} | "
                f"iterations {sum(c.get('iterations', 0) for c in counters):4d} | "
                f"blocks mined {sum(c.get('blocks_mined', 0) for c in counters):3d} (task {len(task['blocks']):3d}) | "
                f"verified {sum(c.get('peer_blocks_verified', 0) for c in counters):3d} "
                f"rejected {sum(m['chain'].get('blocks_rejected', 0) for m in metrics):2d} "
                f"replay mismatches {sum(c.get('replay_mismatches', 0) for c in counters)}")

    def watch(self) -> dict:
        deadline = self.started + self.options.timeout
        last_line = ""
        while True:
            self.check_alive()
            if time.monotonic() > deadline:
                raise DevnetError(f"timeout after {self.options.timeout:.0f} s; last progress: {last_line}")
            try:
                snapshot = self.poll()
            except ApiError as error:
                time.sleep(1.0)
                self.check_alive()  # a node that died is the better message
                raise DevnetError(f"a node stopped answering: {error.message}") from None
            line = self.progress_line(snapshot)
            if line.split("|", 1)[1] != last_line.split("|", 1)[-1]:
                self.say(line)
            last_line = line
            status = snapshot["task"]["status"]
            if status == "evaluation" and self.test_set is not None and not self.revealed:
                self.reveal_test_set()
            if status in ("expired", "cancelled"):
                raise DevnetError(f"the task was {status} instead of finalized (see the nodes' logs in {self.root})")
            try:
                for attacker in self.attackers:
                    attacker.act()
            except ApiError as error:
                raise DevnetError(f"an attacker's node stopped answering: {error.message}") from None
            self.restart_step(snapshot["task"])
            if (status == "finalized" and not any(n.restarting for n in self.nodes)
                    and all(a.settled() for a in self.attackers) and self.finalized_everywhere()):
                settled = self.settled_height(snapshot)
                if settled is not None:
                    snapshot["settled_height"] = settled
                    return snapshot
            time.sleep(1.0)

    def reveal_test_set(self) -> None:
        """The client's part in evaluation: its withheld test split, through node 0."""
        try:
            answer = reveal_test_set(self.nodes[0].api, self.test_set)
        except ApiError as error:
            raise DevnetError(f"node0 refused the client's test split: {error.message}") from None
        self.revealed = True
        self.say(f"devnet: the client revealed its test split ({answer['examples']} examples, root "
                 f"{answer['test_set_hash'][:16]}…) to the evaluators")

    def restart_step(self, task: dict) -> None:
        """--restart-every S: while the task's group trains, SIGKILL one honest
        member every S seconds and start it again on the same data dir (the
        first kill S seconds after the group is drawn). The node must resume
        after its last saved iteration and never sign a second version."""
        if not self.options.restart_every or task["status"] not in ("group_selected", "training"):
            return
        now = time.monotonic()
        if self.restart_victim is None:
            self.restart_victim = self.honest_member(task)
            self.last_restart = now
        if self.restart_victim is None or now - self.last_restart < self.options.restart_every:
            return
        victim = self.restart_victim
        os.killpg(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        (victim.data_dir / NODE_INFO_FILE).unlink(missing_ok=True)
        victim.restarting = True
        self.launch(victim, "ab")
        self.restarts += 1
        self.last_restart = now
        self.say(f"devnet: killed {victim.name} (SIGKILL) and started it again ({self.restarts} so far)")

    def honest_member(self, task: dict) -> DevnetNode | None:
        """The first member of the task's group that neither cheats nor attacks, other than node 0 (the
        client's node, which the devnet asks about the task and the summary)."""
        members = [m["address"] for m in task["task"]["members"]]
        return next((n for n in self.nodes[1:] if n.account.address.hex() in members
                     and n.index not in self.options.byzantine and n.index not in self.options.attacks), None)

    def finalized_everywhere(self) -> bool:
        """Whether every node (observers too) holds the client task finalized at its head
        (a node whose head does not know the task yet, lagging or on a branch, does not)."""
        for node in self.every_node:
            try:
                if node.api.get(f"/task/{self.task_id.hex()}")["status"] != "finalized":
                    return False
            except ApiError as error:
                if error.status != HTTPStatus.NOT_FOUND:
                    raise
                return False
        return True

    def settled_height(self, snapshot: dict) -> int | None:
        """The highest height, at most SETTLE_DEPTH below the lowest head, at
        which every node (observers too) has the same block, if it is at least
        --blocks, else None. A block's hash commits to its parent, so the chains
        are the same on every node up to it. The newest blocks may still be
        racing, and on a loaded machine the nodes' tips can stay apart for a
        while: the common chain below them is what is compared, not one height
        that every poll must catch in agreement."""
        top = min([m["height"] for m in snapshot["metrics"]] + snapshot["observer_heights"]) - SETTLE_DEPTH
        low = max(1, self.options.blocks)
        if top < low or not self._same_block_everywhere(low):
            return None
        while low < top:  # the highest agreeing height in [low, top] (agreement holds below it too)
            middle = (low + top + 1) // 2
            if self._same_block_everywhere(middle):
                low = middle
            else:
                top = middle - 1
        return low

    def _same_block_everywhere(self, height: int) -> bool:
        hashes = set()
        for node in self.every_node:
            try:
                hashes.add(node.api.get(f"/block/{height}")["hash"])
            except ApiError as error:
                if error.status != HTTPStatus.NOT_FOUND:
                    raise
                return False  # the node reorganized to a shorter (heavier) chain meanwhile
        return len(hashes) == 1

    def blocks_verified_elsewhere(self, height: int) -> int:
        """How many of the blocks up to `height` some node other than their
        miner holds on its main chain: a node connects a block only after its
        transition, replay included, so each of those was verified by replay
        on another node."""
        miners = {n.account.address.hex() for n in self.nodes}
        verified = 0
        for block_height in range(1, height + 1):
            miner = self.nodes[0].api.get(f"/block/{block_height}")["block"]["header"]["miner"]
            holders = [n for n in self.nodes if n.account.address.hex() != miner
                       and n.api.get(f"/block/{block_height}")["main_chain"]]
            verified += bool(holders) and miner in miners
        return verified

    def summary(self, snapshot: dict) -> dict:
        settled = snapshot["settled_height"]
        settled_hash = self.nodes[0].api.get(f"/block/{settled}")["hash"]
        evaluation = next((d["evaluation"] for d in (n.api.get(f"/task/{self.task_id.hex()}") for n in self.nodes)
                           if "evaluation" in d), None)
        counters = self.role_counters(snapshot)
        balances = {}
        for label, address in [("client", self.client_account.address)] + [(n.name, n.account.address) for n in self.nodes]:
            now = int(self.nodes[0].api.get(f"/account/{address.hex()}")["balance"])
            before = int(self.genesis_state.accounts[address].balance)
            balances[label] = {"address": address.hex(), "genesis": before, "now": now, "change": now - before}
        best = max(evaluation, key=lambda r: r["correct"]) if evaluation else None
        verified = self.blocks_verified_elsewhere(settled)
        return {
            "height": settled, "head": settled_hash, "blocks_verified_elsewhere": verified,
            "blocks_from_task": len(snapshot["task"]["blocks"]),
            "iterations": sum(c.get("iterations", 0) for c in counters),
            "task_iterations": snapshot["task"].get("max_iteration_seen", -1) + 1,
            "best_accuracy": (best["correct"] / best["count"]) if best and best["count"] else 0.0,
            "evaluation": evaluation or [],
            "balances": balances,
            "verified": [c.get("peer_blocks_verified", 0) for c in counters],
            "models_scored": [c.get("models_scored", 0) for c in counters],
            "rejected": [m["chain"].get("blocks_rejected", 0) for m in snapshot["metrics"]],
            "mismatches": sum(c.get("replay_mismatches", 0) for c in counters),
            "supervision": {name: sum(c.get(name, 0) for c in counters)
                            for name in ("supervisor_recorded", "supervisor_replays", "disputes_submitted")},
            "miner_time_us": {name: sum(c.get(name, 0) for c in counters)
                              for name in ("training_us", "iteration_step_us", "proving_us")},
            "test_split": ("the client's, withheld until evaluation, then revealed" if self.revealed
                           else "the dataset's, public"),
            "seconds": time.monotonic() - self.started,
            "names": [n.name for n in self.nodes],
            "observers": {n.name: n.api.get("/metrics")["chain"].get("blocks_rejected", 0) for n in self.observers},
            "node_of_address": {n.account.address.hex(): n.name for n in self.nodes},
        }

    def attack_outcomes(self) -> tuple[list[AttackOutcome], list[str]]:
        """What every attacker did and what it cost it, and the honest nodes that lost their miner stake
        (nodes still running)."""
        api = self.nodes[0].api
        accounts = {a.account.address: api.get(f"/account/{a.account.address.hex()}") for a in self.attackers}
        chain = ChainViaApi(api.url)
        landed = landed_transactions(chain, max((int(a["height"]) for a in accounts.values()), default=0),
                                     set(accounts))
        outcomes = []
        for attacker in self.attackers:
            account = accounts[attacker.account.address]
            mine = [signed for height, signed in landed[attacker.account.address] if height <= int(account["height"])]
            outcomes.append(attacker.outcome(mine, int(account["balance"])))
        tasks = {task_id: chain.task(task_id) for task_id in [*map(bytes, self.genesis_state.tasks), self.task_id]}
        for index, kinds in sorted(self.options.attacks.items()):
            if FLOOD in kinds:
                node = self.nodes[index]
                others = [n.multiaddr for n in self.nodes if n is not node]
                sent = node.api.get("/metrics").get("roles", {}).get("counters", {}).get("flood_messages_sent", 0)
                outcomes.append(AttackOutcome(node.name, FLOOD, sent=sent,
                                              kept=kept_flood_messages(others, tasks, node.account.address)))
        if self.restart_victim is not None:
            outcomes.append(AttackOutcome(self.restart_victim.name, RESTART, sent=self.restarts,
                                          resumed=resumed_trainings(self.restart_victim.data_dir / "node.log",
                                                                    self.task_id)))
        elif self.options.restart_every:
            outcomes.append(AttackOutcome("-", RESTART))   # no honest member to restart: "never got to attack"
        honest = {n.name: n.account.address.hex() for n in self.nodes if n.index not in self.options.byzantine}
        return outcomes, honest_without_miner_stake(honest, api)

    def write_plot(self, summary: dict) -> str:
        """D/devnet.png (node/devnet_plot.py), from node 0's store; a reason instead if it cannot be drawn."""
        names = summary["node_of_address"]
        accuracies = {names.get(e["miner"], e["miner"][:12]): e["correct"] / e["count"]
                      for e in summary["evaluation"] if e["count"]}
        path = self.root / "devnet.png"
        try:
            trace = read_run_trace(self.nodes[0].data_dir, self.task_id, names, summary["height"])
            plot_run(trace, accuracies, path, f"bws devnet: {self.options.nodes} nodes, {self.options.template} "
                                              f"on {self.options.dataset}")
        except (StoreError, OSError, ValueError) as error:
            return f"not drawn ({error})"
        return str(path)

    def print_summary(self, summary: dict) -> None:
        names = summary["node_of_address"]
        self.say("")
        self.say("devnet summary")
        self.say(f"  blocks mined            {summary['height']} (from the client task's iterations: "
                 f"{summary['blocks_from_task']}), the same chain on every node up to block "
                 f"{summary['head'][:16]}…")
        self.say(f"  blocks replayed by another node  {summary['blocks_verified_elsewhere']} of {summary['height']}")
        self.say(f"  training iterations     {summary['iterations']} in all (client task: {summary['task_iterations']} "
                 f"per member)")
        for entry in summary["evaluation"]:
            name = names.get(entry["miner"], entry["miner"][:12])
            if not entry["count"]:
                self.say(f"  final model of {name:6s}   not scored (no final message or model)")
                continue
            self.say(f"  final model of {name:6s}   "
                     f"{entry['correct']}/{entry['count']} = {entry['correct'] / entry['count'] * 100:.2f}% test accuracy")
        self.say(f"  best model accuracy     {summary['best_accuracy'] * 100:.2f}% (test split: {summary['test_split']})")
        self.say("  blocks verified by replay (per node): " + ", ".join(
            f"{name} {count}" for name, count in zip(summary["names"], summary["verified"])))
        self.say("  blocks rejected (per node):           " + ", ".join(
            f"{name} {count}" for name, count in zip(summary["names"], summary["rejected"])))
        self.say("  final models scored (per node):      " + ", ".join(
            f"{name} {count}" for name, count in zip(summary["names"], summary["models_scored"]))
            + " (the evaluator's, and every replaying node's check of its result)")
        self.say(f"  replay mismatches       {summary['mismatches']}")
        if summary["observers"]:
            self.say("  observers (peer role, no replay): same chain, blocks rejected " + ", ".join(
                f"{name} {count}" for name, count in summary["observers"].items()))
        supervision = summary["supervision"]
        self.say(f"  supervisor              {supervision['supervisor_recorded']} iteration messages recorded, "
                 f"{supervision['supervisor_replays']} replayed, {supervision['disputes_submitted']} disputes")
        miner_time = summary["miner_time_us"]
        if miner_time["iteration_step_us"]:
            # The training thread's wall time per iteration, waits for peers and pacing left out; what the
            # proving thread does beside it (roots, signatures, nonces, blocks) counts only where it holds it up.
            overhead = miner_time["iteration_step_us"] - miner_time["training_us"]
            self.say(f"  miners' time            {miner_time['training_us'] / 1e6:.1f} s in the engine's iterations of "
                     f"{miner_time['iteration_step_us'] / 1e6:.1f} s of iteration wall time (waits for peers and "
                     f"pacing left out): {100 * overhead / miner_time['iteration_step_us']:.1f}% not useful work; "
                     f"the proving thread worked {miner_time['proving_us'] / 1e6:.1f} s beside it")
        self.say("  payouts (balance change since genesis, BWS):")
        for label, entry in summary["balances"].items():
            self.say(f"    {label:7s} {entry['address'][:16]}…  {entry['change'] / COIN:+14.8f}")
        self.say(f"  plot                    {summary['plot']} (loss by iteration per member, blocks over time)")
        self.say(f"  took {summary['seconds']:.0f} s; data in {self.root}")

    def run(self) -> dict:
        try:
            definition = self.prepare()
            self.start_nodes()
            self.submit(definition)
            snapshot = self.watch()
            summary = self.summary(snapshot)
            if self.options.byzantine:
                summary["audit"] = audit_devnet(self)
            if self.options.attacks or self.options.restart_every:
                summary["attacks"], summary["honest_without_stake"] = self.attack_outcomes()
        finally:
            self.stop_nodes()
        summary["plot"] = self.write_plot(summary)
        self.print_summary(summary)
        if "audit" in summary:
            print_audit(self.say, summary["audit"])
            if failures := audit_failures(summary["audit"]):
                raise DevnetError("byzantine run: " + "; ".join(failures))
        if "attacks" in summary:
            self.say("  attackers (what each did, what it cost):")
            for outcome in summary["attacks"]:
                self.say(f"    {outcome.node:6s} {outcome.kind:18s} {outcome.describe()}")
            if failures := attack_failures(summary["attacks"], summary["honest_without_stake"]):
                raise DevnetError("network attack run: " + "; ".join(failures))
        min_accuracy = self.options.min_accuracy
        if min_accuracy is None:
            min_accuracy = DEFAULT_MIN_ACCURACY[self.options.template]
        if summary["best_accuracy"] < min_accuracy:
            raise DevnetError(f"best model accuracy {summary['best_accuracy'] * 100:.2f}% is below the required "
                              f"{min_accuracy * 100:.2f}%")
        return summary
