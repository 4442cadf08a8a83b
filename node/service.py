"""The node process: store + validation + mempool + networking + HTTP API.

    node = Node(NodeSettings(data_dir=..., genesis=load_genesis(path), roles={"peer"}, peers=[...], api_port=8645))
    node.start()      # opens the store, joins the network, syncs, serves the API
    ...
    node.stop()       # clean shutdown (also on SIGINT/SIGTERM under `bws node run`)

What the node does with the network (node/p2p.py's NetworkService):
- gossip `bws/block/1`: validated before relay with `precheck_block` (stateless,
  libsecp256k1); a junk block is REJECTed (the forwarding peer is scored down).
  A replaying node ACCEPTs the rest (relayed at once) and imports them on
  delivery; a trusting node (no replay) imports them in the validator and
  answers IGNORE: it relays no block it could not check. An orphan triggers a sync.
- gossip `bws/tx/1`: envelope checked before relay (REJECT on a bad one);
  state-dependent failures (nonce already used, balance) are IGNOREd, since an
  honest peer may simply be behind; accepted transactions enter the mempool.
- gossip `bws/task/1`: signed iteration messages, signature checked before
  relay; a node with the supervisor role records every one in the store
  (the roles layer's supervisor acts on the record: equivocation, fraud).
  One IGNOREd because the head does not hold its group yet is judged again
  at the next heads (node/deferred_gossip.py).
- request/response `/bws/sync/1` (node/sync.py's codec): status, main-chain
  blocks by height, a block by hash. Sync runs when a peer connects, when an
  orphan arrives, and every SYNC_INTERVAL seconds against peers with more work.
- peers: `--peer` addresses and those peers announce are kept in `peers.json`
  and redialed with backoff (node/peerbook.py).
- the mempool is saved to `mempool.bin` (atomically: write, fsync, rename)
  every MEMPOOL_SAVE_SECONDS when it changed and at stop, and re-checked at
  start (node/mempool_file.py); pending transactions are gossiped again every
  REBROADCAST_SECONDS.

Oracles: the spec's transition needs a `replay` and an `evaluate`. A node
with the verifier role gets them from the roles layer (the engine
re-executing iterations and scoring final models on inputs fetched from
peers); a node without it trusts the iterations' claimed roots, the
evaluation results' claimed scores and the fraud-proof outcomes the state
root commits to (node/transition.py
`trusting_transition`), and checks every other rule (docs/node.md). `/status`
says which (`VALIDATION_MODES`). A replaying node that joins late takes the
blocks deeper than `assume_valid_depth` under a syncing peer's announced head
whose inputs nobody serves any more on that trust too (assumevalid,
node/validation.py); `/status` counts them (`assumed_valid`).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path

from bws.spec import containers as C
from bws.spec.constants import TASK_CANCELLED, TASK_EVALUATION, TASK_EXPIRED, TASK_FINALIZED, TASK_GROUP_SELECTED, \
    TASK_SUBMITTED, TASK_TRAINING
from bws.spec.encoding import DecodeError, decode, encode
from bws.spec.genesis import InvalidGenesis, create_genesis_state, get_genesis_block
from bws.spec.pouw import compute_message_digest
from bws.spec.presets import PRESETS
from bws.spec.state_transition import Oracles, compute_block_hash
from bws.spec.tasks import get_member_index

from . import sync
from .api import ApiError, ApiServer, from_json, to_json
from .deferred_gossip import DeferredGossip
from .mempool import Mempool, MempoolError
from .mempool_file import MEMPOOL_FILE, MempoolFileError, read_mempool_file, write_mempool_file
from .p2p import PROTOCOL_SYNC, TOPIC_BLOCK, TOPIC_TASK, TOPIC_TX, NetworkError, NetworkService, Verdict
from .peerbook import PEER_BOOK_FILE, Dialer, load_peer_book
from .store import ChainStore, StoreError, transaction_id
from .validation import (
    ASSUME_VALID_DEPTH, BlockFromFuture, BlockNotValidated, BlockRejected, Chain, ImportResult, Prefetch,
    TransactionRejected, check_transaction_envelope, decode_received, is_signed_iteration_message_valid,
    precheck_block, transaction_pool_record,
)

logger = logging.getLogger("bws.node")

ROLES = ("peer", "verifier", "supervisor", "miner", "client", "evaluator")
SYNC_INTERVAL = 2.0
# Gossip is lossy and sync carries blocks, not the mempool: a peer that was down or restarting when a
# transaction was gossiped never hears of it. Once a minute each pending transaction is offered again
# (receivers IGNORE what they already hold, so nothing is relayed twice), at most this many per round
# (publishing is paced at >= 2 ms a message).
REBROADCAST_SECONDS = 60.0
REBROADCAST_MAX_TRANSACTIONS = 1000
# The mempool is saved this often when it changed (atomically), so a node killed with SIGKILL loses at most the
# transactions of the last seconds; and at a clean stop.
MEMPOOL_SAVE_SECONDS = 2.0
NODE_INFO_FILE = "node.json"
P2P_KEY_FILE = "p2p.key"
TASK_STATUS_NAMES = {TASK_SUBMITTED: "submitted", TASK_GROUP_SELECTED: "group_selected", TASK_TRAINING: "training",
                     TASK_EVALUATION: "evaluation", TASK_FINALIZED: "finalized", TASK_CANCELLED: "cancelled",
                     TASK_EXPIRED: "expired"}
# How a node checks blocks, by whether it has a replay; GET /status shows the mode and its line, so that an operator
# knows what the node vouches for when it relays.
VALIDATION_MODES = {
    "replay": "replays every block's iteration before accepting it; relays a gossiped block once its stateless "
              "checks pass",
    "trusting": "replays no iteration (no verifier role): trusts their claimed roots and checks every other rule; "
                "imports gossiped blocks but relays none, since it could not check them",
}


def judge_at_head(head_state: C.State, signed: C.SignedIterationMessage) -> Verdict | None:
    """A validly signed iteration message, against the head: ACCEPT a group member's message for an iteration of
    its task, IGNORE one for an iteration beyond the task's, None when the head holds no such task or member
    (maybe only behind the sender's head)."""
    work = signed.message.work
    task = head_state.tasks.get(work.task_id)
    if task is None or get_member_index(task, work.miner) is None:
        return None
    return Verdict.IGNORE if work.iteration >= task.iterations else Verdict.ACCEPT


class NodeError(Exception):
    """The node cannot start or do what was asked; the message says why."""


# ---------------------------------------------------------------------------
# Genesis files
# ---------------------------------------------------------------------------
def load_genesis(path: Path) -> C.GenesisConfig:
    """A genesis file that starts a chain (read_genesis, accepted by the spec)."""
    genesis = read_genesis(path)
    try:
        create_genesis_state(genesis)
    except InvalidGenesis as error:
        raise NodeError(f"{path}: not a valid genesis: {error}") from None
    return genesis


def read_genesis(path: Path) -> C.GenesisConfig:
    """A genesis file: JSON of a GenesisConfig (bytes as hex), where "config"
    may be replaced by "preset": "devnet" | "mainnet" with the network's own
    "chain_id" beside it. Not checked against the spec (load_genesis is)."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NodeError(f"no genesis file at {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NodeError(f"{path} is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise NodeError(f"{path}: a genesis file is a JSON object")
    if "preset" in document:
        preset = document.pop("preset")
        if not isinstance(preset, str) or preset not in PRESETS:
            raise NodeError(f"{path}: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        if "chain_id" not in document:
            raise NodeError(f"{path}: a genesis with a \"preset\" gives its network's own \"chain_id\" too "
                            "(two networks that share one accept each other's transactions)")
        document["config"] = dict(to_json(PRESETS[preset]), chain_id=document.pop("chain_id"))
    try:
        genesis = from_json(C.GenesisConfig, document)
    except (ValueError, TypeError) as error:
        raise NodeError(f"{path}: not a valid genesis: {error}") from None
    # A task file ends with a newline (`bws task new -o` writes one, editors add one) that is no part of the JSON;
    # the definition's bytes are the canonical JSON alone, which the spec still checks.
    tasks = [replace(task, task_definition=bytes(task.task_definition).rstrip(b" \t\r\n"))
             for task in genesis.tasks]
    return replace(genesis, tasks=tasks)


def write_genesis(path: Path, genesis: C.GenesisConfig) -> None:
    Path(path).write_text(json.dumps(to_json(genesis), indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------
@dataclass
class NodeSettings:
    data_dir: Path
    genesis: C.GenesisConfig
    roles: set[str] = field(default_factory=lambda: {"peer"})
    peers: list[str] = field(default_factory=list)
    api_port: int = 0
    api_host: str = "127.0.0.1"
    listen: str = "/ip4/127.0.0.1/tcp/0"
    announce: str | None = None        # the p2p address other nodes should dial (NAT); default the listen one
    oracles: Oracles | None = None     # the verifier's replay and evaluation; None: a trusting node
    prefetch: Prefetch | None = None   # the replay's input fetch, run outside the chain lock
    assume_valid_depth: int = ASSUME_VALID_DEPTH   # assumevalid under a syncing peer's head (validation.py); 0 never


class Node:
    def __init__(self, settings: NodeSettings) -> None:
        unknown = set(settings.roles) - set(ROLES)
        if unknown:
            raise NodeError(f"unknown role(s) {', '.join(sorted(unknown))}; roles are {', '.join(ROLES)}")
        if "verifier" in settings.roles and settings.oracles is None:
            raise NodeError("the verifier role needs a replay and an evaluation (the engine's); this node was given none")
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.roles = set(settings.roles)
        self.started_at = time.time()
        # When this process last saw the head move (its start, until a block moves it): a node whose head
        # stands still for long is stuck or cut off, which /health and /metrics let an operator see.
        self._head_changed_at = time.monotonic()
        genesis_state = create_genesis_state(settings.genesis)
        self.store = ChainStore(self.data_dir)
        try:
            self.chain = Chain(self.store, genesis_state, get_genesis_block(genesis_state),
                               settings.oracles, settings.prefetch, settings.assume_valid_depth)
        except StoreError:
            self.store.close()
            raise
        self.mempool = Mempool(self.chain.account_nonce)
        self.network = NetworkService()
        self.api: ApiServer | None = None
        self.dialer: Dialer | None = None
        self._stopping = threading.Event()
        self._sync_wanted = threading.Event()
        self._sync_thread: threading.Thread | None = None
        self._rebroadcast_thread: threading.Thread | None = None
        self._mempool_thread: threading.Thread | None = None
        self.counters = {"gossip_blocks": 0, "gossip_transactions": 0, "iteration_messages": 0,
                         "synced_blocks": 0, "sync_failures": 0, "rebroadcast_transactions": 0,
                         "iteration_messages_deferred_taken": 0}
        # Iteration messages IGNOREd only because the head did not hold their group yet, judged again at new heads.
        self.deferred_messages = DeferredGossip()
        # Hooks of the roles layer (node/roles/host.py): called with each
        # valid gossiped iteration message (signed, origin peer) after the
        # supervisor's record; with the new head state after a block moved the head; extra sections for
        # /metrics; extra fields for /task/<id>.
        self.iteration_message_listeners: list = []
        self.head_listeners: list = []
        self.metrics_extensions: list = []
        self.task_extensions: list = []
        # Takes a revealed test split's bundle (POST /reveal); set by the roles layer, which serves tensor data.
        self.reveal_handler = None

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> "Node":
        self._restore_mempool()
        address = self.network.start(self.settings.listen, key_seed=self._p2p_key(),
                                     announce_addr=self.settings.announce)
        self.network.subscribe(TOPIC_BLOCK, self._validate_gossip_block, self._on_gossip_block)
        self.network.subscribe(TOPIC_TX, self._validate_gossip_transaction, self._on_gossip_transaction)
        self.network.subscribe(TOPIC_TASK, self._validate_iteration_message, self._on_iteration_message)
        self.network.register_handler(PROTOCOL_SYNC, self._serve_sync)
        self.network.on_peer(lambda peer, connected: connected and self._sync_wanted.set())
        self.api = ApiServer(self, self.settings.api_port, self.settings.api_host).start()
        book = load_peer_book(self.data_dir / PEER_BOOK_FILE, configured=list(self.settings.peers))
        self.dialer = Dialer(book, self.network, self.data_dir / PEER_BOOK_FILE)
        self.dialer.dial_round(configured_only=True)   # --peer dialed before start returns, as callers expect
        self.dialer.start()
        self._sync_thread = threading.Thread(target=self._sync_forever, name="bws-sync", daemon=True)
        self._sync_thread.start()
        self._rebroadcast_thread = threading.Thread(target=self._rebroadcast_forever, name="bws-rebroadcast",
                                                    daemon=True)
        self._rebroadcast_thread.start()
        self._mempool_thread = threading.Thread(target=self._save_mempool_forever, name="bws-mempool-save",
                                                daemon=True)
        self._mempool_thread.start()
        self._write_info(address)
        logger.info("node %s listening on %s (p2p), gives other nodes %s", self.network.peer_id,
                    self.settings.listen, address)
        if "/ip4/0.0.0.0/" in address or "/ip6/::/" in address:
            logger.warning("other nodes cannot dial %s: give the node's public address with --announce", address)
        self._log_api_address()
        return self

    def _log_api_address(self) -> None:
        host = self.settings.api_host
        logger.info("HTTP API listening on %s port %d (%s)", host, self.api.port, self.api.url)
        if host not in ("127.0.0.1", "::1", "localhost"):
            logger.warning("the HTTP API on %s has no authentication: whoever reaches port %d can submit "
                           "transactions and blocks; put it behind your own proxy", host, self.api.port)

    def stop(self) -> None:
        self._stopping.set()
        self._sync_wanted.set()
        if self.api is not None:
            self.api.stop()
        if self.dialer is not None:
            self.dialer.stop()
        self.network.stop()
        for thread in (self._sync_thread, self._rebroadcast_thread, self._mempool_thread):
            if thread is not None:
                thread.join(10)
        self._save_mempool()
        self.store.close()
        (self.data_dir / NODE_INFO_FILE).unlink(missing_ok=True)

    def _p2p_key(self) -> bytes:
        """A stable libp2p identity per data dir."""
        path = self.data_dir / P2P_KEY_FILE
        if not path.exists():
            from .wallet import write_atomically
            write_atomically(path, secrets.token_bytes(32))
        key = path.read_bytes()
        if len(key) != 32:
            raise NodeError(f"{path} is corrupt (a p2p key is 32 bytes); delete it to get a new peer id")
        return key

    def _restore_mempool(self) -> None:
        """Re-admit the transactions saved at the last stop, each checked against the head state
        as if newly submitted; a damaged file is logged and ignored (an empty mempool)."""
        path = self.data_dir / MEMPOOL_FILE
        try:
            saved = read_mempool_file(path)
        except MempoolFileError as error:
            logger.warning("%s; starting with an empty mempool", error)
            return
        records, dropped = [], 0
        for raw in saved:
            try:
                signed = decode_received(raw, C.SignedTransaction)
                self.chain.check_transaction(signed)
                records.append(transaction_pool_record(signed, raw))
            except TransactionRejected:
                dropped += 1
        for record in sorted(records, key=lambda record: (record.sender, record.nonce)):
            try:
                self.mempool.add(record)
            except MempoolError:
                dropped += 1
        if saved:
            logger.info("mempool: %d saved transaction(s) restored from %s, %d dropped (no longer valid at the "
                        "head)", len(saved) - dropped, path, dropped)

    def _save_mempool_forever(self) -> None:
        saved = self.mempool.changes   # as restored at start
        while not self._stopping.wait(MEMPOOL_SAVE_SECONDS):
            if self.mempool.changes != saved:
                saved = self.mempool.changes
                self._save_mempool()

    def _save_mempool(self) -> None:
        pending = sorted(self.mempool.transactions(), key=lambda record: (record.sender, record.nonce))
        try:
            write_mempool_file(self.data_dir / MEMPOOL_FILE, [record.raw for record in pending])
        except OSError as error:
            logger.warning("could not save the mempool to %s: %s", self.data_dir / MEMPOOL_FILE, error)

    def _rebroadcast_forever(self) -> None:
        while not self._stopping.wait(REBROADCAST_SECONDS):
            self.rebroadcast()

    def rebroadcast(self) -> int:
        """Gossip the pending transactions again (best paying first); returns how many."""
        pending = self.mempool.select(REBROADCAST_MAX_TRANSACTIONS, self.mempool.max_bytes)
        for record in pending:
            self._publish(TOPIC_TX, record.raw)
        self.counters["rebroadcast_transactions"] += len(pending)
        return len(pending)

    def _write_info(self, address: str) -> None:
        info = {"pid": os.getpid(), "address": address, "api": self.api.url, "peer_id": self.network.peer_id}
        (self.data_dir / NODE_INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")

    # -- chain events -------------------------------------------------------
    def import_block(self, block: C.Block, announced_height: int | None = None) -> list[ImportResult]:
        """Import a block (and waiting orphans), update the mempool, and ask
        for a sync if its parent is missing. `announced_height`: the head
        height of the peer that served it by sync (Chain.import_block)."""
        results = self.chain.import_with_orphans(block, announced_height)
        head_moved = False
        for result in results:
            for connected in result.connected:
                self.mempool.prune({bytes(tx.transaction.sender) for tx in connected.transactions})
            for disconnected in result.disconnected:
                self.mempool.reinsert(transaction_pool_record(tx, encode(tx)) for tx in disconnected.transactions)
            if result.disconnected:
                self.mempool.prune()
            if result.status in ("connected", "reorg"):
                self._head_changed_at = time.monotonic()
                head_moved = True
                logger.info("head %s at height %d (%s)", result.block_hash.hex()[:16], result.height, result.status)
        if head_moved:
            head_state = self.chain.head_state
            for listener in self.head_listeners:
                listener(head_state)
            self.deferred_messages.retry(self._take_deferred_message)
        if results[0].status == "orphan":
            self._sync_wanted.set()
        return results

    @property
    def validation(self) -> str:
        """"replay" or "trusting" (VALIDATION_MODES): whether blocks' iterations are replayed."""
        return "trusting" if self.chain.oracles is None else "replay"

    # -- gossip ---------------------------------------------------------------
    def _validate_gossip_block(self, data: bytes) -> Verdict:
        """REJECT a block that fails the stateless prechecks (the forwarding
        peer is scored down), IGNORE one already stored or a side block the
        cheap checks against the head refuse (issue #14's h2: not relayed, and
        its peer not blamed, as its head may differ). A replaying node
        ACCEPTs the rest: relayed at once, imported (replayed) on delivery.
        A trusting node could not check the iteration, so relaying would
        vouch for fake ones (issue #14): it imports the block here, on the
        topic's validator thread, and answers IGNORE, so the block is neither
        relayed nor delivered to `_on_gossip_block` (no second import). No
        verdict of the full rules is a REJECT: an honest replaying peer
        relays a block before its own import, so it would be scored down for
        blocks it did not make."""
        try:
            block = decode_received(data, C.Block)
            precheck_block(block, self.chain.config)
        except BlockRejected:
            return Verdict.REJECT
        if self.store.has_block(bytes(compute_block_hash(block))):
            return Verdict.IGNORE
        try:
            self.chain.check_side_block(block)
        except BlockRejected:
            return Verdict.IGNORE   # refused against this node's head, which its peer's may not be: no blame
        if self.validation == "trusting":
            self._import_gossiped(block)
            return Verdict.IGNORE
        return Verdict.ACCEPT

    def _on_gossip_block(self, message) -> None:
        self._import_gossiped(decode_received(message.data, C.Block))

    def _import_gossiped(self, block: C.Block) -> None:
        """Import a gossiped block that passed the prechecks; a refusal is only logged (the peer's verdict rests
        on the prechecks)."""
        self.counters["gossip_blocks"] += 1
        try:
            self.import_block(block)
        except (BlockRejected, BlockFromFuture, BlockNotValidated) as error:
            logger.info("gossiped block refused: %s", error.reason)

    def _validate_gossip_transaction(self, data: bytes) -> Verdict:
        try:
            signed = decode_received(data, C.SignedTransaction)
            check_transaction_envelope(signed, self.chain.config.chain_id)
        except TransactionRejected:
            return Verdict.REJECT
        try:
            self.chain.check_transaction(signed)
        except TransactionRejected:
            return Verdict.IGNORE
        return Verdict.IGNORE if transaction_id(signed) in self.mempool else Verdict.ACCEPT

    def _on_gossip_transaction(self, message) -> None:
        self.counters["gossip_transactions"] += 1
        try:
            self.mempool.add(transaction_pool_record(decode_received(message.data, C.SignedTransaction), message.data))
        except (MempoolError, TransactionRejected) as error:
            logger.debug("gossiped transaction not pooled: %s", error)

    def _validate_iteration_message(self, data: bytes) -> Verdict:
        """REJECT what does not decode or is not signed by the miner it names;
        IGNORE (kept and relayed by no one here) a message for a task this
        node's head does not hold, by a key outside the task's group, or for an
        iteration beyond the task's: any key can sign messages, only a group's
        are worth relaying (issue #14's m4). The first two may only mean that
        this node's head is behind the sender's (the block that drew the group
        not imported yet): such a message is kept and judged again at the next
        heads (node/deferred_gossip.py), not relayed then."""
        try:
            signed = decode(data, C.SignedIterationMessage)
        except DecodeError:
            return Verdict.REJECT
        if not is_signed_iteration_message_valid(signed):
            return Verdict.REJECT
        verdict = judge_at_head(self.chain.head_state, signed)
        if verdict is None:
            self.deferred_messages.defer(data, signed)
            return Verdict.IGNORE
        return verdict

    def _take_deferred_message(self, signed: C.SignedIterationMessage) -> bool:
        """A message IGNOREd at an earlier head: taken, as if just gossiped, if the head now holds its group."""
        if judge_at_head(self.chain.head_state, signed) is not Verdict.ACCEPT:
            return False
        self.counters["iteration_messages_deferred_taken"] += 1
        self._take_iteration_message(signed, None, time.time())
        return True

    def _on_iteration_message(self, message) -> None:
        self._take_iteration_message(decode(message.data, C.SignedIterationMessage), message.origin,
                                     message.received_at)

    def _take_iteration_message(self, signed: C.SignedIterationMessage, origin: str | None,
                                received_at: float) -> None:
        self.counters["iteration_messages"] += 1
        if "supervisor" in self.roles:
            self.record_iteration_message(signed, received_at)
        for listener in self.iteration_message_listeners:
            listener(signed, origin)

    def record_iteration_message(self, signed: C.SignedIterationMessage, received_at: float) -> bool:
        """The supervisors' record (every valid message seen, by task, iteration
        and miner); False for a duplicate. Acting on what it shows (equivocation,
        fraud) is the supervisor role's (node/roles/supervisor.py)."""
        return self.store.record_iteration_message(signed, bytes(compute_message_digest(signed.message)), received_at)

    # -- sync -------------------------------------------------------------------
    def _serve_sync(self, peer: str, request: bytes) -> bytes:
        kind, argument = sync.decode_request(request)
        if kind == sync.STATUS:
            head = self.chain.head
            return sync.encode_status(sync.Status(self.chain.genesis_hash, head.hash, head.height, head.cumulative_work))
        if kind == sync.BLOCKS_BY_HEIGHT:
            start, count = argument
            records = [self.store.get_block_record(h) for h in self.store.main_chain_hashes(start, count)]
            return sync.encode_blocks([r.encoded for r in records if r is not None])
        record = self.store.get_block_record(argument)
        return sync.encode_blocks([record.encoded] if record is not None else [])

    def _sync_forever(self) -> None:
        while not self._stopping.is_set():
            self._sync_wanted.wait(SYNC_INTERVAL)
            self._sync_wanted.clear()
            if self._stopping.is_set():
                return
            try:
                peers = self.network.peers()
            except NetworkError:
                continue
            for peer in peers:
                try:
                    self.sync_with(peer)
                except (NetworkError, sync.SyncError) as error:
                    self.counters["sync_failures"] += 1
                    logger.info("sync with %s failed: %s", peer[:12], error)

    def sync_with(self, peer: str) -> int:
        """Fetch what `peer` has and we lack: main-chain blocks by height from a
        little below our head, then missing ancestors by hash. Returns the
        number of blocks newly connected or stored."""
        status = sync.decode_status(self.network.request(peer, PROTOCOL_SYNC, sync.encode_request(sync.STATUS)))
        if status.genesis_hash != self.chain.genesis_hash:
            raise sync.SyncError("peer is on another chain (different genesis)")
        imported, assumed_before = 0, self.chain.metrics["assumed_valid"]
        while status.cumulative_work > self.chain.head.cumulative_work and not self._stopping.is_set():
            start = max(1, self.chain.head.height + 1 - sync.REORG_OVERLAP)
            raw_blocks = sync.decode_blocks(self.network.request(
                peer, PROTOCOL_SYNC, sync.encode_request(sync.BLOCKS_BY_HEIGHT, (start, sync.MAX_BLOCKS_PER_REQUEST))))
            if not raw_blocks:
                break
            progress = 0
            for raw in raw_blocks:
                results = self._import_synced(raw, status.height)
                progress += sum(r.status in ("connected", "reorg", "side") for r in results)
                if results and results[0].status == "orphan":
                    progress += self._backfill(peer, results[0].missing_parent, status.height)
            imported += progress
            if progress == 0:
                break
        self.counters["synced_blocks"] += imported
        if (assumed := self.chain.metrics["assumed_valid"] - assumed_before) > 0:
            logger.info("assumed valid %d block(s) at least %d below the head %s announced (height %d): their "
                        "iterations' inputs are no longer served, so their claimed roots were trusted "
                        "(--assume-valid-depth)", assumed, self.chain.assume_valid_depth, peer[:12], status.height)
        return imported

    def _import_synced(self, raw: bytes, announced_height: int) -> list[ImportResult]:
        try:
            return self.import_block(decode_received(raw, C.Block), announced_height)
        except BlockRejected as error:
            raise sync.SyncError(f"peer served an invalid block: {error.reason}") from None
        except (BlockFromFuture, BlockNotValidated):
            return []   # not the peer's fault: offered again later

    def _backfill(self, peer: str, missing: bytes, announced_height: int) -> int:
        """Fetch ancestors by hash until one connects (a fork deeper than the overlap)."""
        for _ in range(sync.MAX_BACKFILL):
            raw_blocks = sync.decode_blocks(self.network.request(
                peer, PROTOCOL_SYNC, sync.encode_request(sync.BLOCK_BY_HASH, missing)))
            if not raw_blocks:
                return 0
            results = self._import_synced(raw_blocks[0], announced_height)
            if not results:
                return 0
            if results[0].status != "orphan":
                return sum(r.status in ("connected", "reorg", "side") for r in results)
            missing = results[0].missing_parent
        return 0

    # -- the API backend (node/api.py) -------------------------------------------
    def status(self) -> dict:
        head = self.chain.head
        return {
            "genesis": self.chain.genesis_hash.hex(),
            "chain_id": int(self.chain.config.chain_id),
            "min_transaction_fee": int(self.chain.config.min_transaction_fee),
            "head": {"hash": head.hash.hex(), "height": head.height, "cumulative_work": str(head.cumulative_work)},
            "peers": len(self._safe_peers()),
            "mempool": {"transactions": len(self.mempool), "bytes": self.mempool.total_bytes},
            "roles": sorted(self.roles),
            "validation": self.validation,
            "validation_detail": VALIDATION_MODES[self.validation],
            # blocks taken since the start without their unavailable replay, on the chain's work (assumevalid)
            "assumed_valid": self.chain.metrics["assumed_valid"],
            "address": self.network.address,
        }

    def health(self) -> dict:
        """Cheap (no store read): a liveness probe may call it every second."""
        if self._stopping.is_set():
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the node is shutting down")
        return {"ok": True, "height": self.chain.head.height,
                "seconds_since_head_change": self.seconds_since_head_change(), "peers": len(self._safe_peers())}

    def seconds_since_head_change(self) -> float:
        return round(time.monotonic() - self._head_changed_at, 1)

    def peers(self) -> dict:
        try:
            table = self.network.peer_table()
        except NetworkError as error:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"the network is not running: {error}") from None
        return {"connected": [{"peer_id": peer.peer_id, "address": peer.address, "direction": peer.direction,
                               "score": round(peer.score, 2)} for peer in table.connected],
                "banned": [{"peer_id": peer.peer_id, "seconds_left": round(peer.seconds_left, 1)}
                           for peer in table.banned],
                "ban_threshold": table.ban_threshold}

    def _safe_peers(self) -> list[str]:
        try:
            return self.network.peers()
        except NetworkError:
            return []

    def block(self, reference: bytes | int) -> dict:
        block_hash = self.store.main_chain_hash(reference) if isinstance(reference, int) else reference
        record = self.store.get_block_record(block_hash) if block_hash is not None else None
        if record is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no block {reference if isinstance(reference, int) else reference.hex()}")
        return {"hash": record.hash.hex(), "height": record.height, "cumulative_work": str(record.cumulative_work),
                "main_chain": self.store.is_on_main_chain(record.hash), "block": to_json(record.block())}

    def account(self, address: bytes) -> dict:
        state = self.chain.head_state
        account = state.accounts.get(address)
        stakes = [{"role": int(key.role), "amount": int(stake.amount), "release_height": int(stake.release_height)}
                  for key, stake in state.stakes.items() if key.owner == address]
        return {"address": address.hex(), "balance": int(account.balance) if account else 0,
                "nonce": int(account.nonce) if account else 0, "pending_nonce": self.mempool.pending_nonce(address),
                "stakes": stakes, "height": int(state.height)}

    def task(self, task_id: bytes) -> dict:
        task, removed = self.chain.head_state.tasks.get(task_id), False
        if task is None:
            task, removed = self.store.removed_task(task_id), True
        if task is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no task {task_id.hex()}")
        document = {"task_id": task_id.hex(), "status": TASK_STATUS_NAMES.get(int(task.status), str(int(task.status))),
                    "task": to_json(task), "blocks": self.store.audit_entries(task_id), "removed": removed}
        for extension in self.task_extensions:
            document.update(extension(task_id, task))
        return document

    def submit_transaction(self, raw: bytes) -> dict:
        try:
            signed = decode_received(raw, C.SignedTransaction)
            self.chain.check_transaction(signed)
            self.mempool.add(transaction_pool_record(signed, raw))
        except (TransactionRejected, MempoolError) as error:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"transaction rejected: {error}") from None
        self._publish(TOPIC_TX, raw)
        return {"id": transaction_id(signed).hex(), "mempool": len(self.mempool)}

    def submit_block(self, raw: bytes) -> dict:
        try:
            block = decode_received(raw, C.Block)
            results = self.import_block(block)
        except (BlockRejected, BlockFromFuture, BlockNotValidated) as error:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"block rejected: {error.reason}") from None
        result = results[0]
        if result.status in ("connected", "reorg", "side"):
            self._publish(TOPIC_BLOCK, raw)
        return {"status": result.status, "hash": result.block_hash.hex(), "height": result.height,
                "head": self.chain.head.hash.hex()}

    def reveal(self, raw: bytes) -> dict:
        if self.reveal_handler is None:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "this node serves no tensor data (it runs no roles): "
                                                           "reveal the test split through a node with roles")
        return self.reveal_handler(raw)

    def _publish(self, topic: str, data: bytes) -> None:
        try:
            self.network.publish(topic, data)
        except NetworkError as error:
            logger.warning("could not gossip on %s: %s", topic, error)

    def gossip(self) -> dict:
        """When this node first published or received each recent gossip message, by topic
        ({topic: {SHA-256 of the message, hex: {"at": time.time(), "published": bool}}})."""
        return {topic: {digest.hex(): {"at": at, "published": published}
                        for digest, (at, published) in self.network.gossip_times(topic).items()}
                for topic in (TOPIC_BLOCK, TOPIC_TASK, TOPIC_TX)}

    def metrics(self) -> dict:
        chain = dict(self.chain.metrics)
        transitions, seconds = chain["transitions"], chain["transition_seconds"]
        chain["mean_transition_ms"] = round(1000 * seconds / transitions, 3) if transitions else None
        network = dict(self.network.stats)
        network["peers"] = len(self._safe_peers())
        document = {"uptime_seconds": round(time.time() - self.started_at, 1), "chain": chain, "node": dict(self.counters),
                    "mempool": {"transactions": len(self.mempool), "bytes": self.mempool.total_bytes},
                    "network": network, "height": self.chain.head.height,
                    "seconds_since_head_change": self.seconds_since_head_change()}
        for extension in self.metrics_extensions:
            document.update(extension())
        return document
