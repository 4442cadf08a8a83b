"""The peers a node remembers and redials (`DATA_DIR/peers.json`).

A node dials its `--peer` addresses and every address a peer told it through
identify (the peer's listen or `--announce` address, learned on connections in
either direction), keeps them in `peers.json` (written atomically), and while
it has fewer than TARGET_PEERS peers redials the ones not connected, each
address with its own exponential backoff; `--peer` addresses are redialed
whatever the count (a group's members must reach each other directly to fetch
updates, and an operator names a peer to stay connected to it). So a node whose bootstrap peer was
down when it started, or restarted later, finds it again by itself.

    book = load_peer_book(data_dir / PEER_BOOK_FILE, configured=settings.peers)
    dialer = Dialer(book, network, path).start()     # a thread; dialer.stop() saves the book

`PeerBook` is bookkeeping only (no I/O, a clock passed in), so its backoff is
tested on its own; `Dialer` is the edge that dials and writes the file.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from multiaddr import Multiaddr

from .p2p import NetworkError, NetworkService

logger = logging.getLogger("bws.node.peers")

PEER_BOOK_FILE = "peers.json"
PEER_BOOK_VERSION = 1
# GossipSub's mesh wants 4 to 12 peers per topic (degree 6): below 8 the node dials what it remembers.
TARGET_PEERS = 8
# First retry after 1 s (nodes of a devnet start together, and a restarted peer is back within seconds),
# doubling per failure up to 2 min: a peer back after a long outage is found within 2 min, for one dial
# per address per 2 min.
REDIAL_BASE_SECONDS = 1.0
REDIAL_MAX_SECONDS = 120.0
DIAL_TIMEOUT_SECONDS = 5.0
# How often the dialer looks at its peers (and learns their addresses) when nothing woke it earlier.
DIAL_TICK_SECONDS = 1.0
# Bounds whatever peers announce: addresses kept in all, and taken from one peer's identify.
MAX_REMEMBERED = 64
MAX_LEARNED_PER_PEER = 2
# A peers file holds at most MAX_REMEMBERED short addresses (< 16 KiB): a larger one is not ours, and is not read.
MAX_FILE_BYTES = 1 << 20
# Hosts a peer may listen on but no one can dial.
UNSPECIFIED_HOSTS = frozenset({"0.0.0.0", "::"})


class PeerBookError(Exception):
    """A peers file cannot be read; the message names the file."""


@dataclass
class _Entry:
    configured: bool        # from --peer: never forgotten
    failures: int = 0
    next_attempt: float = 0.0


def peer_id_of(address: str) -> str:
    return address.rsplit("/p2p/", 1)[-1]


def is_dialable(address: str) -> bool:
    """A full multiaddr a node can dial: /ip4|ip6|dns*/HOST/tcp/PORT/p2p/<peer id>, HOST specified."""
    try:
        multiaddr = Multiaddr(address)
        names = [protocol.name for protocol in multiaddr.protocols()]
        host = multiaddr.value_for_protocol(names[0])
        port = int(multiaddr.value_for_protocol("tcp"))
    except Exception:
        return False
    return (names in (["ip4", "tcp", "p2p"], ["ip6", "tcp", "p2p"], ["dns", "tcp", "p2p"], ["dns4", "tcp", "p2p"],
                      ["dns6", "tcp", "p2p"])
            and host not in UNSPECIFIED_HOSTS and 0 < port < 65536)


class PeerBook:
    """Addresses to dial, each with its backoff. Not thread-safe: the Dialer's thread owns it."""

    def __init__(self, configured: list[str] = (), remembered: list[str] = ()) -> None:
        self._entries: dict[str, _Entry] = {address: _Entry(configured=True) for address in configured}
        # An address the file lacks (a new --peer, one learned since): save the book at the next round.
        self.changed = any(address not in remembered for address in configured)
        for address in remembered:
            self._entries.setdefault(address, _Entry(configured=False))

    def addresses(self) -> list[str]:
        return list(self._entries)

    def due(self, now: float, connected: set[str], own_peer_id: str, configured_only: bool = False) -> list[str]:
        """The addresses to dial now: not connected, not ours, backoff elapsed; learned ones
        only while the node has fewer than TARGET_PEERS peers."""
        wanting = len(connected) < TARGET_PEERS and not configured_only
        return [address for address, entry in self._entries.items()
                if entry.next_attempt <= now and (entry.configured or wanting)
                and peer_id_of(address) not in connected and peer_id_of(address) != own_peer_id]

    def is_configured(self, address: str) -> bool:
        entry = self._entries.get(address)
        return entry is not None and entry.configured

    def failures(self, address: str) -> int:
        entry = self._entries.get(address)
        return entry.failures if entry is not None else 0

    def succeeded(self, address: str) -> None:
        entry = self._entries.get(address)
        if entry is not None:
            entry.failures, entry.next_attempt = 0, 0.0

    def failed(self, address: str, now: float) -> float:
        """Back off this address; returns the seconds until its next try."""
        entry = self._entries[address]
        delay = min(REDIAL_MAX_SECONDS, REDIAL_BASE_SECONDS * 2 ** min(entry.failures, 32))
        entry.failures += 1
        entry.next_attempt = now + delay
        return delay

    def disconnected(self, peer_id: str, now: float) -> None:
        """A peer left: try its addresses again soon (it may be restarting), from the shortest backoff."""
        for address, entry in self._entries.items():
            if peer_id_of(address) == peer_id:
                entry.failures, entry.next_attempt = 0, now + REDIAL_BASE_SECONDS

    def learn(self, peer_id: str, addresses: list[str]) -> int:
        """Remember where a connected peer says it listens; returns how many addresses were new."""
        fresh = [address for address in addresses
                 if is_dialable(address) and peer_id_of(address) == peer_id and address not in self._entries]
        added = 0
        for address in fresh[:MAX_LEARNED_PER_PEER]:
            if len(self._entries) >= MAX_REMEMBERED and not self._forget_one():
                break
            self._entries[address] = _Entry(configured=False)
            added += 1
        self.changed |= added > 0
        return added

    def _forget_one(self) -> bool:
        """Make room: forget the learned address that failed most often."""
        learned = [(entry.failures, address) for address, entry in self._entries.items() if not entry.configured]
        if not learned:
            return False
        del self._entries[max(learned)[1]]
        return True


def load_peer_book(path: Path, configured: list[str]) -> PeerBook:
    """The book of `configured` (--peer) addresses and those remembered in `path`. A missing
    file is an empty memory; a damaged one is ignored with a log line naming it (the node still
    has its --peer addresses), and so is each entry that is not a dialable address."""
    try:
        remembered = read_peer_file(path)
    except PeerBookError as error:
        logger.warning("%s; starting with the --peer addresses only", error)
        remembered = []
    usable = [address for address in remembered if is_dialable(address)]
    if len(usable) < len(remembered):
        logger.warning("%s: ignored %d entries that are not dialable /ip4|ip6|dns/.../tcp/PORT/p2p/<peer id> "
                       "addresses", path, len(remembered) - len(usable))
    if usable:
        logger.info("%s: %d remembered peer address(es)", path, len(usable))
    return PeerBook(configured, usable[:MAX_REMEMBERED])


def read_peer_file(path: Path) -> list[str]:
    """The addresses in a peers file ([] if there is none); PeerBookError naming the file otherwise."""
    try:
        if Path(path).stat().st_size > MAX_FILE_BYTES:
            raise PeerBookError(f"{path}: not a peers file (over {MAX_FILE_BYTES} bytes)")
        document = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise PeerBookError(f"{path}: not a peers file ({error})") from None
    if not isinstance(document, dict) or document.get("version") != PEER_BOOK_VERSION \
            or not isinstance(document.get("peers"), list):
        raise PeerBookError(f"{path}: not a peers file (want {{\"version\": {PEER_BOOK_VERSION}, \"peers\": [...]}})")
    return [address for address in document["peers"] if isinstance(address, str)]


def write_peer_file(path: Path, addresses: list[str]) -> None:
    from .wallet import write_atomically

    document = {"version": PEER_BOOK_VERSION, "peers": addresses}
    write_atomically(Path(path), (json.dumps(document, indent=1) + "\n").encode(), overwrite=True)


class Dialer:
    """Keeps the node connected: dials the book's due addresses while the node has fewer than
    TARGET_PEERS peers, learns connected peers' addresses, and saves the book when it grew."""

    def __init__(self, book: PeerBook, network: NetworkService, path: Path) -> None:
        self.book = book
        self._network = network
        self._path = Path(path)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()      # the book: this thread, and on_peer's disconnections
        self._thread: threading.Thread | None = None

    def start(self) -> "Dialer":
        self._network.on_peer(self._on_peer)
        self._thread = threading.Thread(target=self._run, name="bws-dial", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(DIAL_TIMEOUT_SECONDS + 5)
        self._save()

    def dial_round(self, configured_only: bool = False) -> int:
        """One pass: learn connected peers' addresses, then dial what is due (only the --peer
        addresses with `configured_only`: a node's start waits for those alone, as it always
        did, not for a long list of remembered ones); returns the dials that connected."""
        try:
            connected = set(self._network.peers())
            own = self._network.peer_id
        except NetworkError:
            return 0
        with self._lock:
            for peer in connected:
                try:
                    self.book.learn(peer, self._network.peer_addresses(peer))
                except NetworkError:
                    continue
            due = self.book.due(time.monotonic(), connected, own, configured_only)
        successes = 0
        for address in due:
            if self._stopping.is_set():
                break
            try:
                self._network.connect(address, timeout=DIAL_TIMEOUT_SECONDS)
            except NetworkError as error:
                with self._lock:
                    first = self.book.failures(address) == 0
                    delay = self.book.failed(address, time.monotonic())
                # An operator's --peer that does not answer is worth a line once; retries only at debug.
                level = logging.INFO if first and self.book.is_configured(address) else logging.DEBUG
                logger.log(level, "dial %s failed (%s); next try in %.0f s, then less often", address, error, delay)
                continue
            with self._lock:
                self.book.succeeded(address)
            successes += 1
            logger.info("connected to %s", address)
        if self.book.changed:
            self._save()
        return successes

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.dial_round()
            self._wake.wait(DIAL_TICK_SECONDS)
            self._wake.clear()

    def _on_peer(self, peer_id: str, connected: bool) -> None:
        if not connected:
            with self._lock:
                self.book.disconnected(peer_id, time.monotonic())
            self._wake.set()

    def _save(self) -> None:
        with self._lock:
            addresses, self.book.changed = self.book.addresses(), False
        try:
            write_peer_file(self._path, addresses)
        except OSError as error:
            logger.warning("could not save the peers to %s: %s", self._path, error)
