"""Where an auditor outside a node gets what it replays (docs/audit.md):

- chain data (blocks, tasks, dispute transactions, recorded iteration
  messages) from a node's HTTP API (`ChainViaApi`, the node may be running)
  or its DuckDB store (`ChainViaStore`, the node stopped: DuckDB lets one
  process open the file);
- tensors, the accused miner's signed trace and the iteration messages peers
  saw, over libp2p from the nodes it dials (`NetworkSource`: `/bws/data/1`
  and `/bws/audit/1`).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bws.spec import containers as C
from bws.spec.pouw import compute_message_digest

from .api import ApiClient, ApiError, from_json
from .audit import (
    NOT_READY, PROTOCOL_AUDIT, REFUSED, REQUEST_OP, REQUEST_TRACE, AuditError, decode_messages_answer,
    decode_signed_trace, messages_request, retry_after,
)
from .p2p import PROTOCOL_DATA, NetworkError, NetworkService
from .roles.data import FOUND, DataError, decode_checked, tensors_request
from .store import ChainStore, StoreError

logger = logging.getLogger("bws.node.audit")

REQUEST_TIMEOUT_SECONDS = 60.0
TRACE_ROUNDS = 4   # a trace request that times out is sent again (a miner under load answers late)
TRACE_READY_TIMEOUT_SECONDS = 900.0   # how long an auditor waits for a miner that answers NOT_READY


@dataclass
class DisputeRecord:
    height: int
    block_hash: bytes
    sender: bytes
    kind: str                                   # "fraud" or "equivocation"
    messages: list[C.SignedIterationMessage]    # the evidence


class ChainViaApi:
    def __init__(self, url: str) -> None:
        self.api = ApiClient(url, timeout=30)

    def _get(self, path: str) -> dict:
        try:
            return self.api.get(path)
        except ApiError as error:
            raise AuditError(f"{self.api.url}{path}: {error.message}") from None

    def block(self, reference: str) -> C.Block:
        return from_json(C.Block, self._get(f"/block/{reference}")["block"])

    def block_hash(self, height: int) -> bytes:
        return bytes.fromhex(self._get(f"/block/{height}")["hash"])

    def height(self) -> int:
        return int(self._get("/status")["head"]["height"])

    def task(self, task_id: bytes) -> C.Task:
        return from_json(C.Task, self._get(f"/task/{task_id.hex()}")["task"])

    def recorded_messages(self, task_id: bytes, iteration: int, miner: bytes) -> list[C.SignedIterationMessage]:
        return []  # the API serves no message records: peers answer /bws/audit/1 instead

    def chain_id(self) -> int:
        return int(self._get("/status")["chain_id"])

    def pending_nonce(self, address: bytes) -> int:
        return int(self._get(f"/account/{address.hex()}")["pending_nonce"])


class ChainViaStore:
    def __init__(self, data_dir: str) -> None:
        try:
            self.store = ChainStore(Path(data_dir), read_only=True)
        except StoreError as error:
            hint = " (a running node holds its store: use --api instead)" if Path(data_dir).exists() else ""
            raise AuditError(f"{error}{hint}") from None

    def block(self, reference: str) -> C.Block:
        block_hash = (self.store.main_chain_hash(int(reference)) if reference.isdigit()
                      else bytes.fromhex(reference))
        record = self.store.get_block_record(block_hash) if block_hash else None
        if record is None:
            raise AuditError(f"no block {reference} in {self.store.path}")
        return record.block()

    def block_hash(self, height: int) -> bytes:
        return self.store.main_chain_hash(height)

    def height(self) -> int:
        return self.store.head_record().height

    def task(self, task_id: bytes) -> C.Task:
        task = self.store.get_task(task_id)
        if task is None:
            raise AuditError(f"no task {task_id.hex()} in {self.store.path}")
        return task

    def recorded_messages(self, task_id: bytes, iteration: int, miner: bytes) -> list[C.SignedIterationMessage]:
        return self.store.iteration_messages(task_id, iteration, miner)


def chain_disputes(chain) -> list[DisputeRecord]:
    """Every Dispute transaction on the main chain, oldest first."""
    found = []
    for height in range(1, chain.height() + 1):
        block = chain.block(str(height))
        for signed in block.transactions:
            body = signed.transaction.body
            if not isinstance(body, C.Dispute):
                continue
            evidence = body.evidence
            kind, messages = (("fraud", [evidence.message]) if isinstance(evidence, C.FraudProof)
                              else ("equivocation", [evidence.first, evidence.second]))
            found.append(DisputeRecord(height, chain.block_hash(height), bytes(signed.transaction.sender), kind,
                                       messages))
    return found


class NetworkSource:
    """Tensors, traces and messages from the nodes this auditor dialed."""

    def __init__(self, network: NetworkService, peers: list[str]) -> None:
        self.network = network
        self.peers = peers

    @classmethod
    def dial(cls, addresses: list[str]) -> "NetworkSource":
        if not addresses:
            raise AuditError("no peer to fetch the iteration's data from: give --peer MULTIADDR")
        network = NetworkService()
        network.start()
        peers, failures = [], []
        for address in addresses:
            try:
                peers.append(network.connect(address, timeout=10))
            except NetworkError as error:
                failures.append(f"cannot dial {address}: {error}")
        if not peers:
            network.stop()
            raise AuditError("; ".join(failures))
        for failure in failures:  # the reachable peers may still have everything the audit needs
            logger.warning("%s", failure)
        return cls(network, peers)

    def close(self) -> None:
        self.network.stop()

    def _ask(self, protocol: str, request: bytes, patient: bool = False):
        """Each peer's answer in turn (peers that fail or do not have it are
        skipped). A `patient` ask (traces and op outputs, which the miner may
        still be computing) asks again the peers that answered NOT_READY or
        REFUSED (asked too fast), after the time they named, until
        TRACE_READY_TIMEOUT_SECONDS, and those that timed out, up to TRACE_ROUNDS times."""
        peers, timeouts = list(self.peers), Counter()
        deadline = time.monotonic() + TRACE_READY_TIMEOUT_SECONDS
        while peers:
            again, wait = [], 0.0
            for peer in peers:
                try:
                    answer = self.network.request(peer, protocol, request, timeout=REQUEST_TIMEOUT_SECONDS)
                except NetworkError:
                    timeouts[peer] += 1
                    if patient and timeouts[peer] < TRACE_ROUNDS:
                        again.append(peer)
                    continue
                if answer[:1] == FOUND:
                    yield answer[1:]
                elif answer[:1] in (NOT_READY, REFUSED) and patient and time.monotonic() < deadline:
                    if answer[:1] == REFUSED:
                        logger.info("%s: %s", peer[:12], answer[3:].decode("utf-8", "replace"))
                    again.append(peer)
                    wait = max(wait, retry_after(answer))
            if wait:
                logger.info("asking again in %.0f s (a trace still computed, or asked too fast)", wait)
                time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
            peers = again

    def fetch_tensors(self, root: bytes):
        for answer in self._ask(PROTOCOL_DATA, tensors_request(root)):
            try:
                return decode_checked(answer, root)
            except DataError:
                continue
        raise AuditError(f"no peer has the tensors with root {bytes(root).hex()[:16]}…")

    def fetch_trace(self, signed: C.SignedIterationMessage) -> bytes | None:
        digest = bytes(compute_message_digest(signed.message))
        for answer in self._ask(PROTOCOL_AUDIT, REQUEST_TRACE + digest, patient=True):
            try:
                decode_signed_trace(answer, signed)
            except AuditError:
                continue  # a peer answering for another miner: keep asking
            return answer
        return None

    def fetch_op(self, signed: C.SignedIterationMessage, index: int, root: bytes):
        digest = bytes(compute_message_digest(signed.message))
        for answer in self._ask(PROTOCOL_AUDIT, REQUEST_OP + digest + index.to_bytes(2, "little"), patient=True):
            try:
                return decode_checked(answer, root)
            except DataError:
                continue
        return None

    def messages(self, task_id: bytes, iteration: int, miner: bytes) -> list[C.SignedIterationMessage]:
        """The distinct signed messages peers saw for (task, iteration, miner)."""
        found: dict[bytes, C.SignedIterationMessage] = {}
        for answer in self._ask(PROTOCOL_AUDIT, messages_request(task_id, iteration, miner)):
            for signed in decode_messages_answer(FOUND + answer):
                found.setdefault(bytes(compute_message_digest(signed.message)), signed)
        return list(found.values())
