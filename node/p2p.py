"""The node's networking layer: py-libp2p gossip and request/response behind a
thread-safe synchronous API.

The node's logic (JAX training, DuckDB) is synchronous; py-libp2p is trio-only.
`NetworkService` runs trio, one libp2p host, GossipSub and the BWS stream
protocols in a background thread and exposes blocking calls that are safe from
any thread:

    net = NetworkService()
    addr = net.start(key_seed=seed32)            # "/ip4/127.0.0.1/tcp/P/p2p/<peer id>"
    net.subscribe(TOPIC_BLOCK, validator, on_message)
    net.register_handler(PROTOCOL_SYNC, lambda peer, request: response)
    net.connect(other_addr)
    net.publish(TOPIC_BLOCK, block_bytes)
    state = net.request(peer_id, PROTOCOL_DATA, b"...", timeout=30)
    net.stop()

Payloads are opaque bytes here; the node supplies validators and decoders.
Every rule in docs/node-p2p.md ("py-libp2p's pitfalls") is applied: one connection per
peer, hosts always closed, every handler and validator wrapped, GossipSub spam
protection off with our own pacing, a 1 s heartbeat, request/response payloads
chunked (node/p2p_framing.py), stale dial state cleared before a redial.

Threads: a topic's validator runs one message at a time on a worker thread
(never on the trio thread, so a slow validator does not stall the network;
validators of different topics may run at the same time); request handlers
run on up to `handler_threads` worker threads; `on_message` and `on_peer`
callbacks run in arrival order on one delivery thread.
"""
from __future__ import annotations

import concurrent.futures
import enum
import functools
import hashlib
import logging
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import trio
from multiaddr import Multiaddr

from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub import pubsub as _pubsub_module
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.tools.anyio_service import background_trio_service

from .p2p_framing import (
    CHUNK_BYTES,
    FrameError,
    MessageDecoder,
    MessageTooLarge,
    NetworkError,
    encode_error,
    encode_message,
)

logger = logging.getLogger("bws.node.p2p")

TOPIC_TX = "bws/tx/1"
TOPIC_BLOCK = "bws/block/1"
TOPIC_TASK = "bws/task/1"
PROTOCOL_SYNC = "/bws/sync/1"
PROTOCOL_DATA = "/bws/data/1"

# GossipSub drops RPCs above 1 MiB; the envelope (signature, key, ids) needs ~200 bytes.
MAX_GOSSIP_BYTES = 1_000_000
READ_BYTES = 64 * 1024
# GossipSub's per-peer outbound queue holds 32 RPCs and silently drops the rest
# (notes, figures). Our own publishing is paced, but a relay forwards at the rate it
# receives, so a briefly CPU-starved neighbour made relays drop. Pubsub builds each
# queue as `RpcQueue()` looked up in its module at run time; give them more room.
OUTBOUND_QUEUE_RPCS = 256
_pubsub_module.RpcQueue = functools.partial(RpcQueue, max_size=OUTBOUND_QUEUE_RPCS)
# Message ids whose first copy was validated, kept as long as Pubsub remembers seen ids.
VALIDATED_IDS_SECONDS = 120.0
VALIDATED_IDS_KEPT = 20_000
# Per topic, when this node first published or received each of its most recent
# messages (gossip latency across nodes: bench/node.py).
GOSSIP_TIMES_KEPT = 1024
OUTBOUND_POLL_SECONDS = 0.002   # how often a waiting publisher looks at the outbound queues again

__all__ = [
    "TOPIC_TX", "TOPIC_BLOCK", "TOPIC_TASK", "PROTOCOL_SYNC", "PROTOCOL_DATA", "MAX_GOSSIP_BYTES",
    "NetworkConfig", "NetworkService", "GossipMessage", "Verdict", "PeerScores", "ConnectedPeer", "BannedPeer",
    "PeerTable", "peer_id_from_seed",
    "seed_from_text",
    "NetworkError", "FrameError", "MessageTooLarge", "NotRunning", "RequestFailed",
    "RequestTimeout", "RemoteError", "PeerBanned", "PublishQueueFull",
]


class NotRunning(NetworkError):
    """The service is not started (or already stopped)."""


class RequestFailed(NetworkError):
    """A request could not be completed (peer unreachable, stream reset, bad response)."""


class RequestTimeout(RequestFailed):
    """No complete response within the request's timeout."""


class RemoteError(RequestFailed):
    """The peer answered with an error frame (its handler rejected the request)."""


class PeerBanned(NetworkError):
    """The peer's score fell below the threshold; it is blocked for a while."""


class PublishQueueFull(NetworkError):
    """The outbound gossip queue is full: the caller publishes faster than the network drains."""


class Verdict(enum.Enum):
    """What a gossip validator decides. A validator may also return a bool (True = ACCEPT)."""

    ACCEPT = "accept"   # deliver and relay
    REJECT = "reject"   # drop, do not relay, score the forwarding peer down
    IGNORE = "ignore"   # drop, do not relay, no penalty (e.g. a block whose parent is unknown yet)


@dataclass(frozen=True)
class GossipMessage:
    topic: str
    data: bytes
    origin: str          # peer id (base58) of the node that published it
    received_at: float   # time.time() when this node accepted it


@dataclass(frozen=True)
class ConnectedPeer:
    peer_id: str
    # The connection's remote address: for an inbound connection the peer's outgoing port, not where it listens.
    address: str | None
    direction: str       # "inbound" (the peer dialed us) or "outbound"
    score: float         # PeerScores: 0 is clean; at NetworkConfig.ban_threshold the peer is banned


@dataclass(frozen=True)
class BannedPeer:
    peer_id: str
    seconds_left: float


@dataclass(frozen=True)
class PeerTable:
    """What the service knows about its peers now (the node's GET /peers)."""
    connected: tuple[ConnectedPeer, ...]
    banned: tuple[BannedPeer, ...]
    ban_threshold: float


Validator = Callable[[bytes], "bool | Verdict"]
MessageCallback = Callable[[GossipMessage], None]
RequestHandler = Callable[[str, bytes], bytes]
PeerCallback = Callable[[str, bool], None]


@dataclass(frozen=True)
class NetworkConfig:
    max_gossip_bytes: int = MAX_GOSSIP_BYTES
    max_request_bytes: int = 1 << 20
    max_response_bytes: int = 64 << 20
    request_timeout: float = 30.0
    # An inbound request must arrive completely within this time (slow-loris bound).
    inbound_read_timeout: float = 10.0
    handler_threads: int = 4
    # Inbound request streams served (or waiting for a handler thread) at once; more are reset.
    max_inbound_streams: int = 64
    validation_timeout: float = 60.0
    heartbeat_interval: int = 1
    # Outbound pacing: wait while any peer's GossipSub queue (OUTBOUND_QUEUE_RPCS, then
    # silent drops) holds this many, and leave at least this long between publishes.
    outbound_high_water: int = 32
    # ... but at most this long: a queue still at the high water then is stalled, and not waited for until it drains.
    outbound_wait_seconds: float = 2.0
    publish_min_interval: float = 0.002
    publish_queue_size: int = 10_000
    delivery_queue_size: int = 10_000
    # Peer scoring: penalties subtract, the score recovers toward 0 over time,
    # at or below the threshold the peer is disconnected and blocked.
    penalty_invalid_gossip: float = 25.0
    penalty_malformed_stream: float = 50.0
    penalty_rejected_request: float = 10.0
    ban_threshold: float = -100.0
    score_recovery_per_second: float = 1.0
    ban_seconds: float = 300.0
    start_timeout: float = 20.0
    stop_timeout: float = 10.0


class PeerScores:
    """Per-peer misbehaviour score: starts at 0, penalties subtract, recovers over time.

    Pure bookkeeping (no I/O) so it can be tested on its own; the service acts
    on `penalize` returning True (the peer just crossed the ban threshold).
    """

    def __init__(self, config: NetworkConfig, clock: Callable[[], float] = time.monotonic):
        self._config = config
        self._clock = clock
        self._scores: dict[str, tuple[float, float]] = {}   # peer -> (score, when)
        self._banned_until: dict[str, float] = {}

    def score(self, peer: str) -> float:
        score, when = self._scores.get(peer, (0.0, self._clock()))
        recovered = (self._clock() - when) * self._config.score_recovery_per_second
        return min(0.0, score + recovered)

    def penalize(self, peer: str, amount: float) -> bool:
        """Subtract `amount`; True when this penalty gets the peer banned."""
        now = self._clock()
        new_score = self.score(peer) - amount
        self._scores[peer] = (new_score, now)
        if new_score <= self._config.ban_threshold and not self.is_banned(peer):
            self._banned_until[peer] = now + self._config.ban_seconds
            return True
        return False

    def is_banned(self, peer: str) -> bool:
        until = self._banned_until.get(peer)
        return until is not None and self._clock() < until

    def expire_bans(self) -> list[str]:
        """Lift bans whose time is over (their score starts again from 0); returns those peers."""
        now = self._clock()
        lifted = [peer for peer, until in self._banned_until.items() if now >= until]
        for peer in lifted:
            del self._banned_until[peer]
            self._scores.pop(peer, None)
        return lifted

    def banned(self) -> list[str]:
        return [peer for peer in self._banned_until if self.is_banned(peer)]

    def ban_seconds_left(self) -> dict[str, float]:
        """Each banned peer -> seconds until its ban is lifted."""
        now = self._clock()
        return {peer: until - now for peer, until in self._banned_until.items() if now < until}


def peer_id_from_seed(key_seed: bytes) -> str:
    """The peer id (base58) a node started with `key_seed` will have."""
    return ID.from_pubkey(create_new_key_pair(_check_seed(key_seed)).public_key).to_base58()


def _check_seed(key_seed: bytes) -> bytes:
    if not isinstance(key_seed, (bytes, bytearray)) or len(key_seed) != 32:
        raise ValueError("key_seed must be exactly 32 bytes")
    return bytes(key_seed)


def _check_listen_addr(listen_addr: str) -> Multiaddr:
    """Parse `listen_addr` (IPv4 or IPv6) and make sure its port is free: py-libp2p binds with
    SO_REUSEPORT, so a second node on a taken port would start "successfully" and share the first
    one's connections."""
    try:
        listen = Multiaddr(listen_addr)
        family, host = _ip_of(listen)
        port = int(listen.value_for_protocol("tcp"))
    except Exception as error:
        raise NetworkError(f"listen address must look like /ip4/127.0.0.1/tcp/PORT or /ip6/::1/tcp/PORT, not "
                           f"{listen_addr!r}: {error}") from None
    if port:
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        except OSError as error:
            raise NetworkError(f"cannot listen on {listen_addr}: {error.strerror}") from None
        finally:
            probe.close()
    return listen


def _ip_of(address: Multiaddr) -> tuple[socket.AddressFamily, str]:
    """The socket family and host of an /ip4 or /ip6 multiaddr."""
    protocols = [protocol.name for protocol in address.protocols()]
    if protocols[:1] == ["ip6"]:
        return socket.AF_INET6, address.value_for_protocol("ip6")
    return socket.AF_INET, address.value_for_protocol("ip4")


def _check_announce_addr(announce_addr: str) -> Multiaddr:
    """The address other nodes should dial (behind NAT or a port forward, not the listen address):
    /ip4, /ip6, /dns, /dns4 or /dns6, then /tcp/PORT; a /p2p/<peer id> part is added by the host."""
    try:
        announce = Multiaddr(announce_addr)
        protocols = [protocol.name for protocol in announce.protocols()]
        port = int(announce.value_for_protocol("tcp"))
    except Exception as error:
        raise NetworkError(f"announce address must look like /ip4/203.0.113.7/tcp/PORT, not {announce_addr!r}: "
                           f"{error}") from None
    if protocols[:2] not in (["ip4", "tcp"], ["ip6", "tcp"], ["dns", "tcp"], ["dns4", "tcp"], ["dns6", "tcp"]) \
            or protocols[2:] not in ([], ["p2p"]) or not 0 < port < 65536:
        raise NetworkError(f"announce address must be /ip4, /ip6 or /dns then /tcp/PORT (a port other nodes can "
                           f"dial), not {announce_addr!r}")
    return announce


class _ConnectionWatcher(INotifee):
    """Closes connections from banned peers as soon as they are established, and
    tells the node's `on_peer` callbacks about the others."""

    def __init__(self, service: "NetworkService"):
        self._service = service

    async def connected(self, network, conn) -> None:
        peer = conn.muxed_conn.peer_id
        if self._service._scores.is_banned(peer.to_base58()):
            self._service._nursery.start_soon(self._service._disconnect, peer)
            return
        for callback in self._service._peer_watchers:
            self._service._deliver(callback, peer.to_base58(), True)

    async def opened_stream(self, network, stream) -> None:
        pass

    async def closed_stream(self, network, stream) -> None:
        pass

    async def disconnected(self, network, conn) -> None:
        for callback in self._service._peer_watchers:
            self._service._deliver(callback, conn.muxed_conn.peer_id.to_base58(), False)

    async def listen(self, network, multiaddr) -> None:
        pass

    async def listen_close(self, network, multiaddr) -> None:
        pass


class NetworkService:
    """One libp2p node (host + GossipSub + BWS protocols) on a background trio thread."""

    def __init__(self, config: NetworkConfig | None = None):
        self.config = config or NetworkConfig()
        self._scores = PeerScores(self.config)
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop_event: trio.Event | None = None
        self._host = None
        self._pubsub: Pubsub | None = None
        self._my_id: ID | None = None
        self._address: str | None = None
        self._announce: Multiaddr | None = None
        self._topics: dict[str, tuple[Validator, MessageCallback]] = {}
        self._peer_watchers: list[PeerCallback] = []
        self._validated: dict[bytes, float] = {}   # message id -> when its first copy arrived
        self._stalled_queues: set[ID] = set()   # peers whose outbound queue publishing no longer waits for
        self._gossip_times: dict[str, OrderedDict[bytes, tuple[float, bool]]] = {}
        self._gossip_times_lock = threading.Lock()
        self._handlers: dict[str, RequestHandler] = {}
        self._publish_send: trio.MemorySendChannel | None = None
        self._handler_limiter = trio.CapacityLimiter(self.config.handler_threads)
        self._inbound_slots = trio.Semaphore(self.config.max_inbound_streams)
        self._deliveries: queue.Queue = queue.Queue(self.config.delivery_queue_size)
        self._delivery_thread: threading.Thread | None = None
        self.stats = {"published": 0, "delivered": 0, "delivery_dropped": 0, "rejected": 0,
                      "ignored": 0, "requests_served": 0, "requests_refused": 0, "bans": 0,
                      "outbound_queues_stalled": 0}

    # ----------------------------------------------------------------- lifecycle

    def start(self, listen_addr: str = "/ip4/127.0.0.1/tcp/0", key_seed: bytes | None = None,
              announce_addr: str | None = None) -> str:
        """Start listening; returns this node's full multiaddr (with /p2p/<peer id>): the
        listen address, or `announce_addr` (what other nodes should dial, e.g. behind NAT),
        which identify then tells every peer instead of the listen address.

        `key_seed` (32 bytes) makes the peer id deterministic; None draws a random key.
        """
        if self._thread is not None:
            raise NetworkError("the network service was already started")
        seed = _check_seed(key_seed) if key_seed is not None else None
        listen = _check_listen_addr(listen_addr)
        self._announce = _check_announce_addr(announce_addr) if announce_addr is not None else None
        started: concurrent.futures.Future = concurrent.futures.Future()
        self._delivery_thread = threading.Thread(target=self._deliver_forever, name="bws-p2p-deliver", daemon=True)
        self._delivery_thread.start()
        self._thread = threading.Thread(target=trio.run, args=(self._main, listen, seed, started),
                                        name="bws-p2p", daemon=True)
        self._thread.start()
        try:
            self._address = started.result(timeout=self.config.start_timeout)
        except concurrent.futures.TimeoutError:
            raise NetworkError(f"the libp2p host did not start within {self.config.start_timeout} s") from None
        return self._address

    def stop(self) -> None:
        """Close the host and end the background threads; returns within ~stop_timeout."""
        thread, token = self._thread, self._token
        if thread is None:
            return
        if token is not None:
            try:
                trio.from_thread.run_sync(self._stop_event.set, trio_token=token)
            except trio.RunFinishedError:
                pass
        thread.join(self.config.stop_timeout)
        if thread.is_alive():
            logger.warning("the libp2p thread did not finish within %s s; abandoning it", self.config.stop_timeout)
        self._deliveries.put(None)
        if threading.current_thread() is not self._delivery_thread:   # stop() from a callback
            self._delivery_thread.join(self.config.stop_timeout)
        self._token = None

    def __enter__(self) -> "NetworkService":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> str:
        if self._address is None:
            raise NotRunning("the network service is not started")
        return self._address

    @property
    def peer_id(self) -> str:
        return self.address.rsplit("/p2p/", 1)[1]

    # ----------------------------------------------------------------- sync API

    def connect(self, multiaddr: str, timeout: float = 10.0) -> str:
        """Dial a peer by its full multiaddr (…/p2p/<peer id>); returns its peer id."""
        try:
            info = info_from_p2p_addr(Multiaddr(multiaddr))
        except Exception as error:
            raise NetworkError(f"not a peer multiaddr with /p2p/<peer id>: {multiaddr!r} ({error})") from None
        self._call(self._connect, info, timeout, timeout=timeout)
        return info.peer_id.to_base58()

    def publish(self, topic: str, data: bytes) -> None:
        """Queue `data` for gossip on `topic`; paced, so bursts are not dropped locally."""
        if len(data) > self.config.max_gossip_bytes:
            raise MessageTooLarge(f"gossip message of {len(data)} bytes exceeds {self.config.max_gossip_bytes}")
        try:
            self._call_sync(self._enqueue_publish, topic, bytes(data))
        except trio.WouldBlock:
            raise PublishQueueFull(f"{self.config.publish_queue_size} gossip messages already queued") from None
        self._note_gossip_time(topic, data, time.time(), published=True)

    def gossip_times(self, topic: str) -> dict[bytes, tuple[float, bool]]:
        """SHA-256 of each recent message on `topic` -> (time.time() when this node
        first published or received it, whether it published it)."""
        with self._gossip_times_lock:
            return dict(self._gossip_times.get(topic, {}))

    def _note_gossip_time(self, topic: str, data: bytes, at: float, published: bool) -> None:
        digest = hashlib.sha256(data).digest()
        with self._gossip_times_lock:
            times = self._gossip_times.setdefault(topic, OrderedDict())
            if digest not in times:
                times[digest] = (at, published)
                if len(times) > GOSSIP_TIMES_KEPT:
                    times.popitem(last=False)

    def subscribe(self, topic: str, validator: Validator, on_message: MessageCallback) -> None:
        """Receive gossip on `topic`. `validator(data)` runs before relay; `on_message(msg)`
        gets each accepted message (not this node's own) on the delivery thread."""
        self._call(self._subscribe, topic, validator, on_message, timeout=10.0)

    def register_handler(self, protocol: str, handler: RequestHandler) -> None:
        """Serve `protocol`: `handler(peer_id, request) -> response` on a worker thread.
        An exception becomes an error response and scores the requester down."""
        self._call_sync(self._register_handler, protocol, handler)

    def request(self, peer_id: str, protocol: str, data: bytes, timeout: float | None = None,
                max_response_bytes: int | None = None) -> bytes:
        """Send one request and wait for the whole response."""
        timeout = self.config.request_timeout if timeout is None else timeout
        limit = self.config.max_response_bytes if max_response_bytes is None else max_response_bytes
        if len(data) > self.config.max_request_bytes:
            raise MessageTooLarge(f"request of {len(data)} bytes exceeds {self.config.max_request_bytes}")
        try:
            peer = ID.from_base58(peer_id)
        except Exception:
            raise NetworkError(f"not a peer id: {peer_id!r}") from None
        return self._call(self._request, peer, protocol, bytes(data), timeout, limit, timeout=timeout)

    def on_peer(self, callback: PeerCallback) -> None:
        """`callback(peer_id, connected)` on the delivery thread whenever a connection to a
        peer opens (True) or closes (False); e.g. to start chain sync with a new peer."""
        self._call_sync(self._peer_watchers.append, callback)

    def peers(self) -> list[str]:
        """Peer ids of the peers connected now."""
        return self._call_sync(lambda: sorted(p.to_base58() for p in self._host.get_connected_peers()))

    def peer_addresses(self, peer_id: str) -> list[str]:
        """Where `peer_id` says it can be dialed (its listen or announce addresses, learned by
        identify on every connection, either direction), each with /p2p/<peer id>."""
        try:
            peer = ID.from_base58(peer_id)
        except Exception:
            raise NetworkError(f"not a peer id: {peer_id!r}") from None
        suffix = f"/p2p/{peer_id}"
        return self._call_sync(lambda: [text if text.endswith(suffix) else text + suffix
                                         for text in map(str, self._host.get_peerstore().addrs(peer))])

    def mesh_peers(self, topic: str) -> list[str]:
        """Peers that have told us they subscribe to `topic` (gossip reaches them)."""
        return self._call_sync(lambda: sorted(p.to_base58() for p in self._pubsub.peer_topics.get(topic, ())))

    def outbound_queues(self) -> dict[str, int]:
        """The RPCs waiting in each GossipSub outbound queue, by peer id (`_pace_publishing` waits on them)."""
        return self._call_sync(lambda: {peer.to_base58(): len(outbound)
                                        for peer, outbound in self._pubsub.peer_queues.items()})

    def peer_score(self, peer_id: str) -> float:
        return self._call_sync(self._scores.score, peer_id)

    def banned_peers(self) -> list[str]:
        return self._call_sync(self._scores.banned)

    def peer_table(self) -> PeerTable:
        """The connected peers (address, direction, score) and the banned ones (time left)."""
        return self._call_sync(self._peer_table)

    def _peer_table(self) -> PeerTable:
        connected = []
        for peer, connections in self._host.get_network().get_connections_map().items():
            connection = connections[0]   # one connection per peer (notes, rule 1)
            addresses = connection.get_transport_addresses()
            peer_text = peer.to_base58()
            connected.append(ConnectedPeer(peer_text, str(addresses[0]) if addresses else None,
                                           str(connection.direction), self._scores.score(peer_text)))
        connected.sort(key=lambda entry: entry.peer_id)
        banned = tuple(BannedPeer(peer, seconds) for peer, seconds in sorted(self._scores.ban_seconds_left().items()))
        return PeerTable(tuple(connected), banned, self.config.ban_threshold)

    # ----------------------------------------------------------------- thread bridge

    def _call_sync(self, fn, *args):
        """Run a non-blocking function on the trio thread and return its result."""
        if self._token is None:
            raise NotRunning("the network service is not running")
        try:
            return trio.from_thread.run_sync(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise NotRunning("the network service stopped") from None

    def _call(self, async_fn, *args, timeout: float):
        """Run `async_fn` as a task on the trio thread; wait at most `timeout` + 5 s here too,
        so a stuck trio side can never hang the caller (notes, rule 8)."""
        result: concurrent.futures.Future = concurrent.futures.Future()

        async def run() -> None:
            try:
                result.set_result(await async_fn(*args))
            except Exception as error:   # re-raised in the caller's thread
                result.set_exception(error)
            except BaseException:        # trio.Cancelled: the service is stopping
                result.set_exception(NotRunning("the network service stopped during the call"))
                raise

        self._call_sync(self._nursery.start_soon, run)
        try:
            return result.result(timeout + 5.0)
        except concurrent.futures.TimeoutError:
            raise RequestTimeout(f"no answer from the network thread within {timeout + 5.0} s") from None

    # ----------------------------------------------------------------- trio side

    async def _main(self, listen: Multiaddr, seed: bytes | None, started: concurrent.futures.Future) -> None:
        try:
            key_pair = create_new_key_pair(seed)
            host = new_host(key_pair=key_pair, connection_config=ConnectionConfig(max_connections_per_peer=1),
                            announce_addrs=[self._announce] if self._announce is not None else None)
            router = GossipSub(
                protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11], degree=6, degree_low=4, degree_high=12,
                heartbeat_interval=self.config.heartbeat_interval, spam_protection_enabled=False,
            )
            pubsub = Pubsub(host, router, validation_timeout=self.config.validation_timeout)
            self._host, self._pubsub, self._my_id = host, pubsub, host.get_id()
            self._stop_event = trio.Event()
            async with host.run([listen]):
                try:
                    async with background_trio_service(pubsub), background_trio_service(router):
                        await pubsub.wait_until_ready()
                        for protocol in router.get_protocols():
                            host.set_stream_handler(protocol, self._guard_pubsub_stream(pubsub.stream_handler))
                        send, receive = trio.open_memory_channel(self.config.publish_queue_size)
                        self._publish_send = send
                        try:
                            async with trio.open_nursery() as nursery:
                                self._nursery = nursery
                                host.get_network().register_notifee(_ConnectionWatcher(self))
                                nursery.start_soon(self._pace_publishing, receive)
                                nursery.start_soon(self._expire_bans)
                                self._token = trio.lowlevel.current_trio_token()
                                started.set_result(str(host.get_addrs()[0]))
                                await self._stop_event.wait()
                                nursery.cancel_scope.cancel()
                        finally:
                            pubsub.seen_messages.stop()   # notes, rule 9
                finally:
                    with trio.move_on_after(self.config.stop_timeout / 2) as scope:
                        scope.shield = True
                        await host.close()                # notes, rule 2
        except BaseException as error:
            if not started.done():
                started.set_exception(NetworkError(f"the libp2p host failed to start: {error!r}"))
            if not isinstance(error, Exception):
                raise
            logger.exception("the libp2p service failed")

    def _guard_pubsub_stream(self, handler):
        """Pubsub's stream handler lets some parse errors escape, which would take the host
        down (notes, rule 3): contain them and score the sender down."""
        async def guarded(stream) -> None:
            peer = stream.muxed_conn.peer_id
            if self._scores.is_banned(peer.to_base58()):
                await _reset(stream)
                return
            try:
                await handler(stream)
            except Exception as error:
                logger.info("malformed pubsub stream from %s: %r", peer, error)
                self._penalize(peer, self.config.penalty_malformed_stream)
                await _reset(stream)
        return guarded

    async def _connect(self, info, timeout: float) -> None:
        peer = info.peer_id.to_base58()
        if self._scores.is_banned(peer):
            raise PeerBanned(f"peer {peer} is banned")
        # A peer that restarted with the same key on a new port is otherwise refused
        # for 60 s and dialed at its old address (notes, rule 7).
        self._host.get_network().unblock_peer(info.peer_id)
        self._host.get_peerstore().clear_addrs(info.peer_id)
        try:
            with trio.fail_after(timeout):
                await self._host.connect(info)
        except trio.TooSlowError:
            raise RequestTimeout(f"connecting to {peer} timed out after {timeout} s") from None
        except Exception as error:
            raise RequestFailed(f"cannot connect to {peer}: {error}") from None

    async def _subscribe(self, topic: str, validator: Validator, on_message: MessageCallback) -> None:
        if topic in self._topics:
            raise NetworkError(f"already subscribed to {topic!r}")
        self._topics[topic] = (validator, on_message)

        limiter = trio.CapacityLimiter(1)

        async def validate(forwarder: ID, message) -> bool:
            return await self._validate(topic, validator, limiter, forwarder, message)

        self._pubsub.set_topic_validator(topic, validate, True)
        subscription = await self._pubsub.subscribe(topic)
        self._nursery.start_soon(self._receive_topic, topic, subscription, on_message)

    async def _validate(self, topic: str, validator: Validator, limiter: trio.CapacityLimiter,
                        forwarder: ID, message) -> bool:
        if forwarder == self._my_id:
            return True   # our own publish: the node checked it before publishing
        peer = forwarder.to_base58()
        if self._scores.is_banned(peer):
            return False
        # Pubsub checks "seen" before an async validator and marks it after, so copies of
        # one message from several peers would all be validated and delivered: the first
        # copy is validated, the others are dropped here without a penalty.
        message_id = self._pubsub.get_message_id(message)
        if message_id in self._validated:
            return False
        self._remember_validated(message_id)
        if len(message.data) > self.config.max_gossip_bytes:
            verdict = Verdict.REJECT
        else:
            try:
                verdict = await trio.to_thread.run_sync(
                    validator, bytes(message.data), limiter=limiter, abandon_on_cancel=True)
            except Exception as error:
                logger.info("validator for %s raised %r: counted as reject", topic, error)
                verdict = Verdict.REJECT
        if verdict is True or verdict is Verdict.ACCEPT:
            return True
        if verdict is Verdict.IGNORE:
            self.stats["ignored"] += 1
            return False
        if verdict is not False and verdict is not Verdict.REJECT:
            logger.warning("validator for %s returned %r, not a bool or Verdict: counted as reject",
                           topic, verdict)
        self.stats["rejected"] += 1
        self._penalize(forwarder, self.config.penalty_invalid_gossip)
        return False

    def _remember_validated(self, message_id: bytes) -> None:
        now = time.monotonic()
        self._validated[message_id] = now
        if len(self._validated) > VALIDATED_IDS_KEPT:
            horizon = now - VALIDATED_IDS_SECONDS
            for old_id, when in list(self._validated.items()):
                if when >= horizon:
                    break
                del self._validated[old_id]

    async def _receive_topic(self, topic: str, subscription, on_message: MessageCallback) -> None:
        while True:
            message = await subscription.get()
            origin = ID(message.from_id)
            if origin == self._my_id:
                continue
            self.stats["delivered"] += 1
            received_at = time.time()
            self._note_gossip_time(topic, message.data, received_at, published=False)
            self._deliver(on_message, GossipMessage(topic, bytes(message.data), origin.to_base58(), received_at))

    def _deliver(self, callback, *arguments) -> None:
        try:
            self._deliveries.put_nowait((callback, *arguments))
        except queue.Full:
            self.stats["delivery_dropped"] += 1
            logger.warning("delivery queue full: dropped a callback (the node is not keeping up)")

    def _deliver_forever(self) -> None:
        while True:
            item = self._deliveries.get()
            if item is None:
                return
            callback, *arguments = item
            try:
                callback(*arguments)
            except Exception:
                logger.exception("callback %r raised", callback)

    def _enqueue_publish(self, topic: str, data: bytes) -> None:
        self._publish_send.send_nowait((topic, data))

    async def _pace_publishing(self, receive: trio.MemoryReceiveChannel) -> None:
        """Publish queued messages one at a time, waiting while a peer's outbound queue is filling: GossipSub
        drops silently once it is full (notes, figures). Only the queues of peers pubsub still writes to count,
        and a queue that stayed at the high water through a whole wait is stalled (a peer that does not read):
        not waited for again until it drains, so one such peer cannot slow every publish (issue #14)."""
        async for topic, data in receive:
            waited = 0.0
            while self._filling_queues():
                if waited >= self.config.outbound_wait_seconds:
                    stalled = self._filling_queues()
                    self._stalled_queues.update(stalled)
                    self.stats["outbound_queues_stalled"] += len(stalled)
                    logger.info("not waiting any more for the outbound queues of %s: they did not drain in %s s",
                                ", ".join(sorted(peer.to_base58() for peer in stalled)),
                                self.config.outbound_wait_seconds)
                    break
                await trio.sleep(OUTBOUND_POLL_SECONDS)
                waited += OUTBOUND_POLL_SECONDS
            try:
                await self._pubsub.publish(topic, data)
                self.stats["published"] += 1
            except Exception:
                logger.exception("publishing on %s failed", topic)
            await trio.sleep(self.config.publish_min_interval)

    def _filling_queues(self) -> set[ID]:
        """Peers whose GossipSub outbound queue is at the high water and not stalled (`_pace_publishing`)."""
        live, filling = self._pubsub.peers, set()
        for peer, outbound in self._pubsub.peer_queues.items():
            if len(outbound) < self.config.outbound_high_water:
                self._stalled_queues.discard(peer)
            elif peer in live and peer not in self._stalled_queues:
                filling.add(peer)
        self._stalled_queues.intersection_update(self._pubsub.peer_queues)
        return filling

    def _register_handler(self, protocol: str, handler: RequestHandler) -> None:
        self._handlers[protocol] = handler

        async def serve(stream) -> None:
            await self._serve(protocol, stream)

        self._host.set_stream_handler(TProtocol(protocol), serve)

    async def _serve(self, protocol: str, stream) -> None:
        """One inbound request: never raises (notes, rule 3)."""
        peer = stream.muxed_conn.peer_id
        if self._scores.is_banned(peer.to_base58()):
            await _reset(stream)
            return
        try:
            self._inbound_slots.acquire_nowait()
        except trio.WouldBlock:
            logger.warning("%s inbound streams open: refusing one from %s", self.config.max_inbound_streams, peer)
            await _reset(stream)
            return
        try:
            await self._answer(protocol, peer, stream)
        finally:
            self._inbound_slots.release()

    async def _answer(self, protocol: str, peer: ID, stream) -> None:
        peer_text = peer.to_base58()
        try:
            try:
                with trio.fail_after(self.config.inbound_read_timeout):
                    request = await _read_message(stream, self.config.max_request_bytes)
            except (FrameError, trio.TooSlowError) as error:
                what = "timed out" if isinstance(error, trio.TooSlowError) else str(error)
                logger.info("malformed %s request from %s: %s", protocol, peer_text, what)
                self.stats["requests_refused"] += 1
                self._penalize(peer, self.config.penalty_malformed_stream)
                with trio.move_on_after(1.0):
                    await stream.write(encode_error(f"malformed request: {what}"))
                await _reset(stream)
                return
            handler = self._handlers[protocol]
            try:
                response = await trio.to_thread.run_sync(handler, peer_text, request,
                                                         limiter=self._handler_limiter, abandon_on_cancel=True)
            except Exception as error:
                self.stats["requests_refused"] += 1
                self._penalize(peer, self.config.penalty_rejected_request)
                frames = [encode_error(f"{protocol} rejected the request: {type(error).__name__}: {error}")]
            else:
                try:
                    frames = encode_message(response, self.config.max_response_bytes)
                    self.stats["requests_served"] += 1
                except (TypeError, MessageTooLarge) as error:
                    logger.error("%s handler returned an unusable response: %s", protocol, error)
                    frames = [encode_error(f"{protocol} could not answer: {error}")]
            with trio.fail_after(self.config.request_timeout):
                for frame in frames:
                    await stream.write(frame)
            await stream.close()
        except Exception as error:
            logger.info("%s stream from %s failed: %r", protocol, peer_text, error)
            await _reset(stream)

    async def _request(self, peer: ID, protocol: str, data: bytes, timeout: float, limit: int) -> bytes:
        peer_text = peer.to_base58()
        if self._scores.is_banned(peer_text):
            raise PeerBanned(f"peer {peer_text} is banned")
        stream = None
        try:
            with trio.fail_after(timeout):
                stream = await self._host.new_stream(peer, [TProtocol(protocol)])
                for frame in encode_message(data, self.config.max_request_bytes):
                    await stream.write(frame)
                decoder = await _read_decoder(stream, limit)
        except trio.TooSlowError:
            await _reset(stream)
            raise RequestTimeout(f"{protocol} request to {peer_text} timed out after {timeout} s") from None
        except FrameError as error:
            await _reset(stream)
            self._penalize(peer, self.config.penalty_malformed_stream)
            raise RequestFailed(f"malformed {protocol} response from {peer_text}: {error}") from None
        except Exception as error:
            await _reset(stream)
            raise RequestFailed(f"{protocol} request to {peer_text} failed: {type(error).__name__}: {error}") from None
        await _close(stream)
        if decoder.error_text is not None:
            raise RemoteError(f"{peer_text} answered {protocol} with an error: {decoder.error_text}")
        return decoder.payload

    def _penalize(self, peer: ID, amount: float) -> None:
        if self._scores.penalize(peer.to_base58(), amount):
            self.stats["bans"] += 1
            logger.warning("peer %s fell below the score threshold: disconnected and banned for %s s",
                           peer, self.config.ban_seconds)
            self._pubsub.add_to_blacklist(peer)
            self._forget_pubsub_peer(peer)
            self._nursery.start_soon(self._disconnect, peer)

    def _forget_pubsub_peer(self, peer: ID) -> None:
        """What py-libp2p 0.8.1's blacklist leaves behind: it drops the peer's stream but not its outbound queue
        nor the router's record of it, and the disconnect that follows skips both (the peer is no longer among
        pubsub's peers), so the queue stayed for good, undrained, and paced every publish (issue #14)."""
        outbound = self._pubsub.peer_queues.pop(peer, None)
        if outbound is not None:
            outbound.close()   # its sending task ends
        self._stalled_queues.discard(peer)
        self._pubsub.router.remove_peer(peer)

    async def _disconnect(self, peer: ID) -> None:
        try:
            await self._host.disconnect(peer)
        except Exception as error:
            logger.info("disconnecting %s failed: %r", peer, error)

    async def _expire_bans(self) -> None:
        while True:
            await trio.sleep(1.0)
            for peer in self._scores.expire_bans():
                self._pubsub.remove_from_blacklist(ID.from_base58(peer))


async def _read_decoder(stream, limit: int) -> MessageDecoder:
    decoder = MessageDecoder(limit, CHUNK_BYTES)
    while True:
        try:
            data = await stream.read(READ_BYTES)
        except StreamEOF:
            data = b""
        if not data:
            decoder.finish()
        if decoder.feed(data):
            return decoder


async def _read_message(stream, limit: int) -> bytes:
    """A whole framed request from `stream` (an error frame is not a request)."""
    decoder = await _read_decoder(stream, limit)
    if decoder.error_text is not None:
        raise FrameError("an error frame where a request was expected")
    return decoder.payload


async def _reset(stream) -> None:
    if stream is None:
        return
    try:
        with trio.move_on_after(1.0):
            await stream.reset()
    except Exception:
        pass


async def _close(stream) -> None:
    try:
        with trio.move_on_after(1.0):
            await stream.close()
    except Exception:
        pass


def seed_from_text(text: str) -> bytes:
    """A 32-byte key seed derived from a label (tests, devnet node names)."""
    return hashlib.sha256(b"BWS/p2p-key/" + text.encode("utf-8")).digest()
