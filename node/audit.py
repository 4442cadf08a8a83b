"""Auditing one iteration: replay it with the engine and with the spec's
reference, and on a mismatch localize the fault (docs/audit.md).

1. Inputs: the signed IT_RES, the task, the model state before
   (`state_before_root`), the peer updates it names (`peer_update_roots`), all
   fetched by root and checked; the batch rebuilt from the local dataset and
   checked against `batch_root`.
2. Replay: `bws.engine.trace.trace_iteration` (engine) and `reference_trace`
   (the spec's NumPy reference) give every op's outputs; the last two ops are
   the update and the state after, whose roots the message claims. Engine and
   reference must agree; if they do not, the audit reports an engine fault and
   accuses nobody.
3. Tensor diff: the claimed update and state (fetched by their roots from the
   accused miner) against the replay, tensor by tensor: the first differing
   tensor, how many elements differ, the first differing values.
4. Bisection: the accused miner's claimed intermediate commitments (its signed
   trace: one root per op, served over `/bws/audit/1`) against the replay's;
   the first op whose root differs is where the miner's computation left the
   canonical one. The miner then reveals that op's outputs (checked against
   its root) and the report names the op, the tensor, the number of differing
   elements and the first differing values.

The audit protocol `/bws/audit/1` (request's first byte is the kind):

    b"M" ‖ task(32) ‖ u64le(iteration) ‖ miner(20)
        -> FOUND ‖ u16le(n) ‖ n × (u32le(len) ‖ encode(SignedIterationMessage))   the messages seen
    b"R" ‖ message digest(32)
        -> FOUND ‖ signed trace                 the miner's claimed op roots (see encode_signed_trace)
    b"O" ‖ message digest(32) ‖ u16le(op index)
        -> FOUND ‖ tensor bundle                that op's outputs (its root is the trace's)
    R or O while the miner still computes the trace (the first one of a model compiles)
        -> NOT_READY ‖ u16le(seconds)           ask again after that many seconds
    R or O beyond the asking peer's rate limit (TRACE_REQUESTS_BURST at once, then
    TRACE_REQUESTS_PER_SECOND; rate_limit.py), M beyond its own (MESSAGE_REQUESTS_BURST,
    MESSAGE_REQUESTS_PER_SECOND)
        -> REFUSED ‖ u16le(seconds) ‖ UTF-8 reason naming the limit    ask again after that many seconds
    anything unknown -> NOT_FOUND
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import struct
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from bws.engine import sum_updates
from bws.engine.trace import Trace, reference_trace, trace_iteration, trace_roots
from bws.spec import containers as C
from bws.spec.crypto import is_valid_signature
from bws.spec.encoding import DecodeError, decode, encode
from bws.spec.hashing import compute_tensors_root, hash_bytes
from bws.spec.pouw import compute_message_digest, get_input_mask_seed
from bws.spec.tensors import encode_tensor_bundle

from .rate_limit import PeerRateLimiter, RateLimit
from .roles.data import FOUND, NOT_FOUND
from .roles.library import LoadedTask, at_iteration, tree
from .transition import claimed_result

logger = logging.getLogger("bws.node.audit")

PROTOCOL_AUDIT = "/bws/audit/1"
REQUEST_MESSAGES = b"M"
REQUEST_TRACE = b"R"
REQUEST_OP = b"O"
TRACE_DOMAIN = b"BWS/trace"
FIRST_VALUES = 5          # differing values shown per tensor
RECENT_ITERATIONS = 256   # iterations a miner can still prove its intermediate commitments for
NOT_READY = b"\x02"       # answer to a trace request while the trace is computed: ‖ u16le seconds to wait
ANSWER_WITHIN_SECONDS = 5.0   # a request waits this long for its trace (well inside a requester's timeout)
TRACE_RETRY_SECONDS = 5
REFUSED = b"\x03"          # answer to a trace request over its peer's rate limit: ‖ u16le seconds ‖ UTF-8 reason
TRACE_REQUESTS_BURST = 8   # an audit asks one trace and one op's outputs: a few audits at once, retries included
# A trace request may hold one of the p2p layer's 4 handler threads for ANSWER_WITHIN_SECONDS and encode an op's
# outputs (megabytes): one peer must not keep them from serving sync and data. An auditor waiting for a trace asks
# every TRACE_RETRY_SECONDS at most.
TRACE_REQUESTS_PER_SECOND = 0.5
TRACE_PEERS_TRACKED = 1024   # rate-limit buckets kept (rate_limit.py: forgetting one forgives a burst at most)
# A message request is a look-up and the encoding of two messages at most, but any peer can send them without end.
# A member asks up to 4 peers for each message it missed; an auditor or a verifier a few per dispute.
MESSAGE_REQUESTS_BURST = 64
MESSAGE_REQUESTS_PER_SECOND = 16.0
TRACE_THREAD_NICENESS = 10


class AuditError(Exception):
    """An audit could not be carried out (inputs missing or malformed); the message says which."""


# ---------------------------------------------------------------------------
# Signed traces: the accused miner's claimed intermediate commitments
# ---------------------------------------------------------------------------
def encode_trace_roots(roots: list[tuple[str, bytes]]) -> bytes:
    parts = [struct.pack("<H", len(roots))]
    for name, root in roots:
        raw = name.encode("utf-8")
        parts += [struct.pack("<H", len(raw)), raw, bytes(root)]
    return b"".join(parts)


def decode_trace_roots(data: bytes) -> tuple[list[tuple[str, bytes]], int]:
    """(roots, bytes read); AuditError on malformed bytes."""
    try:
        (count,), offset = struct.unpack_from("<H", data, 0), 2
        roots = []
        for _ in range(count):
            (length,) = struct.unpack_from("<H", data, offset)
            offset += 2
            name = data[offset:offset + length].decode("utf-8")
            root = bytes(data[offset + length:offset + length + 32])
            if len(name.encode("utf-8")) != length or len(root) != 32:
                raise AuditError("truncated trace")
            roots.append((name, root))
            offset += length + 32
    except (struct.error, UnicodeDecodeError) as error:
        raise AuditError(f"malformed trace: {error}") from None
    return roots, offset


def trace_signing_root(digest: bytes, roots: list[tuple[str, bytes]]) -> bytes:
    return bytes(hash_bytes(TRACE_DOMAIN + bytes(digest) + encode_trace_roots(roots)))


def encode_signed_trace(digest: bytes, roots: list[tuple[str, bytes]], sign: Callable[[bytes], bytes]) -> bytes:
    """The trace roots followed by the miner's 64-byte signature over
    hash(b"BWS/trace" ‖ message digest ‖ encoded roots): the miner is bound to
    the intermediates it claims, as to the message it signed."""
    return encode_trace_roots(roots) + bytes(sign(trace_signing_root(digest, roots)))


def decode_signed_trace(data: bytes, signed: C.SignedIterationMessage) -> list[tuple[str, bytes]]:
    """The roots of a signed trace for `signed`; AuditError unless its miner signed them."""
    roots, offset = decode_trace_roots(data)
    signature = bytes(data[offset:])
    digest = bytes(compute_message_digest(signed.message))
    if len(signature) != 64 or not is_valid_signature(bytes(signed.public_key), trace_signing_root(digest, roots),
                                                      signature):
        raise AuditError("the trace is not signed by the message's miner")
    return roots


# ---------------------------------------------------------------------------
# Inputs and replay
# ---------------------------------------------------------------------------
class AuditSource(Protocol):
    """Where an audit gets its data: tensors by root, and the accused miner's trace."""

    def fetch_tensors(self, root: bytes) -> dict[str, np.ndarray]:
        """The bundle with `root` (checked); AuditError if nobody has it."""

    def fetch_trace(self, signed: C.SignedIterationMessage) -> bytes | None:
        """The miner's signed trace bytes, or None if it does not answer."""

    def fetch_op(self, signed: C.SignedIterationMessage, index: int, root: bytes) -> dict[str, np.ndarray] | None:
        """The outputs of op `index` of the miner's trace (checked against `root`), or None."""


@dataclass
class IterationInputs:
    signed: C.SignedIterationMessage
    loaded: LoadedTask
    state_before: dict[str, np.ndarray]
    peer_updates: list[dict[str, np.ndarray]]
    batch: dict[str, np.ndarray]

    @property
    def work(self) -> C.IterationWork:
        return self.signed.message.work


def load_inputs(source: AuditSource, loaded: LoadedTask, signed: C.SignedIterationMessage) -> IterationInputs:
    work = signed.message.work
    try:
        state_before = at_iteration(source.fetch_tensors(bytes(work.state_before_root)), int(work.iteration))
    except ValueError as error:
        raise AuditError(str(error)) from None
    updates = [source.fetch_tensors(bytes(root)) for root in work.peer_update_roots]
    index = int(work.batch_index)
    if index >= len(loaded.batch_roots) or loaded.batch_roots[index] != bytes(work.batch_root):
        raise AuditError(f"batch {index}: the local dataset has no batch with the message's root "
                         f"{bytes(work.batch_root).hex()[:16]}…")
    return IterationInputs(signed, loaded, state_before, updates,
                           loaded.masked_batch(index, get_input_mask_seed(signed.message)))


def replay_traces(inputs: IterationInputs) -> tuple[Trace, Trace]:
    """(engine trace, reference trace) of the iteration on its claimed inputs."""
    spec = inputs.loaded.spec
    try:
        state = tree(inputs.state_before)
        peer_sum = sum_updates([tree(u) for u in inputs.peer_updates], spec=spec)
        return (trace_iteration(spec, state, inputs.batch, peer_sum),
                reference_trace(spec, state, inputs.batch, peer_sum))
    except (ValueError, TypeError, KeyError) as error:
        raise AuditError(f"the iteration's inputs do not fit the model: {error}") from None


def reference_replay(loaded: LoadedTask, state_before: dict, peer_updates: list[dict], batch: dict) -> C.ReplayResult:
    """The update and state-after roots the spec's NumPy reference gives for an
    iteration (flat inputs, already checked): what a node compares its engine's
    replay with before it accuses anyone."""
    spec = loaded.spec
    peer_sum = sum_updates([tree(u) for u in peer_updates], spec=spec)
    return _result(reference_trace(spec, tree(state_before), batch, peer_sum))


# ---------------------------------------------------------------------------
# Differences
# ---------------------------------------------------------------------------
@dataclass
class TensorDiff:
    """How one named tensor differs between the claim and the replay."""
    name: str
    differing: int                 # elements that differ (all of them if the shapes differ)
    size: int
    first: list[tuple[tuple[int, ...], int, int]] = field(default_factory=list)  # (index, claimed, replayed)
    note: str = ""

    def describe(self) -> str:
        text = f"tensor {self.name}: {self.differing} of {self.size} elements differ"
        if self.note:
            text += f" ({self.note})"
        for index, claimed, replayed in self.first:
            text += f"\n      at {list(index)}: claimed {claimed} (0x{claimed & 0xFFFFFFFF:08x}), " \
                    f"replayed {replayed} (0x{replayed & 0xFFFFFFFF:08x})"
        return text


def diff_tensors(claimed: dict[str, np.ndarray], replayed: dict[str, np.ndarray]) -> list[TensorDiff]:
    """Every tensor that differs, in name order (the order of the commitment's leaves)."""
    diffs = []
    for name in sorted(set(claimed) | set(replayed)):
        if name not in claimed or name not in replayed:
            present = replayed.get(name, claimed.get(name))
            diffs.append(TensorDiff(name, int(np.size(present)), int(np.size(present)),
                                    note="missing from the claim" if name not in claimed else "not in the replay"))
            continue
        a, b = np.asarray(claimed[name]), np.asarray(replayed[name])
        if a.shape != b.shape or a.dtype != b.dtype:
            diffs.append(TensorDiff(name, int(b.size), int(b.size),
                                    note=f"claimed {a.dtype}{list(a.shape)}, replayed {b.dtype}{list(b.shape)}"))
            continue
        where = np.argwhere(a != b)
        if len(where):
            first = [(tuple(int(i) for i in index), int(a[tuple(index)]), int(b[tuple(index)]))
                     for index in where[:FIRST_VALUES]]
            diffs.append(TensorDiff(name, len(where), int(b.size), first))
    return diffs


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------
@dataclass
class AuditReport:
    task_id: bytes
    iteration: int
    miner: bytes
    digest: bytes
    claimed: C.ReplayResult
    engine: C.ReplayResult
    reference: C.ReplayResult
    tensor_diffs: list[TensorDiff] = field(default_factory=list)   # claimed update+state vs replay
    divergent_op: str | None = None
    divergent_op_index: int | None = None
    op_diffs: list[TensorDiff] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def engine_matches_reference(self) -> bool:
        return self.engine == self.reference

    @property
    def matches(self) -> bool:
        return self.engine_matches_reference and self.engine == self.claimed

    @property
    def first_tensor(self) -> str | None:
        return self.tensor_diffs[0].name if self.tensor_diffs else None

    @property
    def verdict(self) -> str:
        if not self.engine_matches_reference:
            return "ENGINE FAULT (engine and reference disagree; nobody is accused)"
        return "MATCH" if self.matches else "MISMATCH"

    def to_dict(self) -> dict:
        def roots(result: C.ReplayResult) -> dict:
            return {"update_root": bytes(result.update_root).hex(), "state_after_root": bytes(result.state_after_root).hex()}

        def diff(d: TensorDiff) -> dict:
            return {"tensor": d.name, "differing": d.differing, "size": d.size, "note": d.note,
                    "first": [{"index": list(i), "claimed": c, "replayed": r} for i, c, r in d.first]}
        return {"task": self.task_id.hex(), "iteration": self.iteration, "miner": self.miner.hex(),
                "message_digest": self.digest.hex(), "verdict": self.verdict.split(" ")[0].lower(),
                "claimed": roots(self.claimed), "engine": roots(self.engine), "reference": roots(self.reference),
                "first_differing_tensor": self.first_tensor, "tensor_diffs": [diff(d) for d in self.tensor_diffs],
                "divergent_op": self.divergent_op, "divergent_op_index": self.divergent_op_index,
                "op_diffs": [diff(d) for d in self.op_diffs], "notes": self.notes}

    def render(self) -> str:
        lines = [f"audit of task {self.task_id.hex()[:16]}… iteration {self.iteration} miner {self.miner.hex()} "
                 f"(message {self.digest.hex()[:16]}…)",
                 f"  verdict: {self.verdict}",
                 f"  {'':10s} {'update root':66s} state-after root",
                 f"  {'claimed':10s} {bytes(self.claimed.update_root).hex()}   {bytes(self.claimed.state_after_root).hex()}",
                 f"  {'engine':10s} {bytes(self.engine.update_root).hex()}   {bytes(self.engine.state_after_root).hex()}",
                 f"  {'reference':10s} {bytes(self.reference.update_root).hex()}   "
                 f"{bytes(self.reference.state_after_root).hex()}"]
        if self.tensor_diffs:
            lines.append(f"  first differing tensor: {self.first_tensor} "
                         f"({len(self.tensor_diffs)} tensor(s) of the update and state differ)")
            lines += ["    " + d.describe() for d in self.tensor_diffs[:3]]
        if self.divergent_op is not None:
            lines.append(f"  bisection: first divergent op #{self.divergent_op_index} {self.divergent_op} "
                         "(every op before it matches the miner's claimed commitments)")
            lines += ["    " + d.describe() for d in self.op_diffs[:3]]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _result(trace: Trace) -> C.ReplayResult:
    roots = dict(trace_roots(trace[-2:]))
    return C.ReplayResult(update_root=roots["update"], state_after_root=roots["state_after"])


def first_divergence(claimed: list[tuple[str, bytes]], replayed: list[tuple[str, bytes]]) -> int | None:
    """Index of the first op whose claimed root differs from the replay's (or
    whose name does not match: a claim of a different computation), None if all agree."""
    for index, (mine, theirs) in enumerate(zip(claimed, replayed)):
        if mine != theirs:
            return index
    return None if len(claimed) == len(replayed) else min(len(claimed), len(replayed))


def audit_iteration(source: AuditSource, loaded: LoadedTask, signed: C.SignedIterationMessage) -> AuditReport:
    """Replay one iteration and, on a mismatch, localize it (see the module docstring)."""
    work = signed.message.work
    inputs = load_inputs(source, loaded, signed)
    engine_trace, ref_trace = replay_traces(inputs)
    report = AuditReport(bytes(work.task_id), int(work.iteration), bytes(work.miner),
                         bytes(compute_message_digest(signed.message)),
                         claimed_result(signed.message),
                         _result(engine_trace), _result(ref_trace))
    if report.matches or not report.engine_matches_reference:
        return report
    replayed = dict(engine_trace)
    for what, root, ours in (("update", work.update_root, replayed["update"]),
                             ("state after", work.state_after_root, replayed["state_after"])):
        if bytes(root) == bytes(compute_tensors_root(ours)):
            continue
        try:
            theirs = source.fetch_tensors(bytes(root))
        except AuditError as error:
            report.notes.append(f"the claimed {what} is not available ({error}): no per-tensor diff")
            continue
        report.tensor_diffs += [dataclasses.replace(d, name=f"{what.replace(' ', '_')}:{d.name}")
                                for d in diff_tensors(theirs, ours)]
    _bisect(source, signed, engine_trace, report)
    return report


def _bisect(source: AuditSource, signed: C.SignedIterationMessage, engine_trace: Trace, report: AuditReport) -> None:
    raw = source.fetch_trace(signed)
    if raw is None:
        report.notes.append("the miner provides no intermediate commitments for this iteration: "
                            "it cannot show any op of its claim, so the whole iteration is unsupported")
        return
    try:
        claimed = decode_signed_trace(raw, signed)
    except AuditError as error:
        report.notes.append(f"the miner's intermediate commitments are unusable: {error}")
        return
    ours = trace_roots(engine_trace)
    index = first_divergence(claimed, ours)
    if index is None:
        report.notes.append("the miner's intermediate commitments all match the replay, yet its message does not: "
                            "its message does not commit to the computation it claims")
        return
    if index >= len(ours) or index >= len(claimed) or claimed[index][0] != ours[index][0]:
        name = claimed[index][0] if index < len(claimed) else "(missing)"
        report.divergent_op, report.divergent_op_index = ours[min(index, len(ours) - 1)][0], index
        report.notes.append(f"the miner's op #{index} is {name!r}, the model's is {report.divergent_op!r}: "
                            "its trace is not of this model's iteration")
        return
    report.divergent_op, report.divergent_op_index = ours[index][0], index
    outputs = source.fetch_op(signed, index, claimed[index][1])
    if outputs is None:
        report.notes.append(f"the miner did not reveal the outputs of op {ours[index][0]}")
        return
    report.op_diffs = diff_tensors(outputs, engine_trace[index][1])


# ---------------------------------------------------------------------------
# Serving the audit protocol (on the miner's node)
# ---------------------------------------------------------------------------
@dataclass
class RecordedIteration:
    """What a miner actually used for one iteration: enough to recompute its trace on request."""
    signed: C.SignedIterationMessage
    loaded: LoadedTask
    state_before: dict
    applied_updates: list[dict]
    batch: dict
    cheated: bool = False            # a byzantine miner's cheat: its trace goes through the transform
    trace: Trace | None = None


TraceTransform = Callable[[RecordedIteration, Trace], Trace | None]


class AuditServer:
    """Answers `/bws/audit/1` for one node: the iteration messages it saw, and
    for its own recent iterations the signed trace of what it computed.

    Traces are computed in a thread of their own, at a lower priority than
    the training thread. The first traced iteration of a model compiles
    (tens of seconds, minutes on a loaded machine), so `record` has the
    thread trace the first iteration of each model at once, before anyone
    asks; later traces take a fraction of a second. A request waits at most
    ANSWER_WITHIN_SECONDS for its trace, then is answered NOT_READY with the
    seconds to wait before asking again (the auditor does: audit_sources.py).
    `transform` lets a byzantine miner answer with what its cheat implies."""

    def __init__(self, context, transform: TraceTransform | None = None) -> None:
        self.context = context
        self.transform = transform
        self._recent: OrderedDict[bytes, RecordedIteration] = OrderedDict()
        self._done: dict[bytes, threading.Event] = {}   # digest of a recent iteration -> set once its trace is computed
        self._models: Counter[str] = Counter()          # the models of the recent iterations
        self._limiter = PeerRateLimiter(RateLimit(TRACE_REQUESTS_BURST, TRACE_REQUESTS_PER_SECOND, TRACE_PEERS_TRACKED))
        self._message_limiter = PeerRateLimiter(
            RateLimit(MESSAGE_REQUESTS_BURST, MESSAGE_REQUESTS_PER_SECOND, TRACE_PEERS_TRACKED))
        self._pending: queue.Queue[bytes] = queue.Queue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def record(self, recorded: RecordedIteration) -> None:
        digest = bytes(compute_message_digest(recorded.signed.message))
        model = recorded.loaded.spec.to_json()
        with self._lock:
            is_new = digest not in self._recent
            self._recent[digest] = recorded
            first_of_model = is_new and not self._models[model]
            if is_new:
                self._models[model] += 1
            while len(self._recent) > RECENT_ITERATIONS:
                old, forgotten = self._recent.popitem(last=False)
                self._done.pop(old, None)
                forgotten_model = forgotten.loaded.spec.to_json()
                self._models[forgotten_model] -= 1
                if not self._models[forgotten_model]:
                    del self._models[forgotten_model]
            if first_of_model:  # compile the model's traced iteration now, not when an auditor is waiting
                self._schedule(digest)

    def _schedule(self, digest: bytes) -> threading.Event:
        """The event set when the recent `digest`'s trace is computed, queueing it if it is not yet (lock held)."""
        event = self._done.get(digest)
        if event is None:
            event = self._done[digest] = threading.Event()
            self._pending.put(digest)
            if self._worker is None:
                # Not a daemon: the interpreter must not exit under a compile (XLA's C++
                # frames abort the process when Python ends a daemon thread there).
                self._worker = threading.Thread(target=self._compute_traces, name="bws-audit-trace")
                self._worker.start()
        return event

    def _compute_traces(self) -> None:
        """Compute queued traces until the program exits (its main thread ends)."""
        _lower_thread_priority()
        while threading.main_thread().is_alive():
            try:
                digest = self._pending.get(timeout=0.5)
            except queue.Empty:
                continue
            with self._lock:
                recorded, event = self._recent.get(digest), self._done.get(digest)
            try:
                if recorded is not None and recorded.trace is None:
                    spec = recorded.loaded.spec
                    trace = trace_iteration(spec, tree(recorded.state_before), recorded.batch,
                                            sum_updates([tree(u) for u in recorded.applied_updates], spec=spec))
                    recorded.trace = self.transform(recorded, trace) if self.transform and recorded.cheated else trace
            except Exception:  # a trace that cannot be computed is answered NOT_FOUND; the node keeps running
                logger.exception("tracing iteration %s… failed", digest.hex()[:16])
            finally:
                if event is not None:
                    event.set()

    def _trace(self, digest: bytes) -> Trace | None | bytes:
        """The trace of one of this node's recent iterations, None if it has
        none (not its iteration, or it did no work), NOT_READY if still computing."""
        with self._lock:
            recorded = self._recent.get(digest)
            done = self._schedule(digest) if recorded is not None else None
        if recorded is None:
            return None
        if not done.wait(ANSWER_WITHIN_SECONDS):
            return NOT_READY
        return recorded.trace

    def serve(self, peer: str, request: bytes) -> bytes:
        kind, body = request[:1], bytes(request[1:])
        if kind == REQUEST_MESSAGES and len(body) == 32 + 8 + 20:
            if wait := self._message_limiter.take(peer):
                return refusal("message", self._message_limiter.limit, wait)
            task_id, iteration, miner = body[:32], struct.unpack("<Q", body[32:40])[0], body[40:]
            found = self.context.messages.get(task_id, iteration, miner)
            encoded = [encode(m) for m in found]
            return FOUND + struct.pack("<H", len(encoded)) + b"".join(struct.pack("<I", len(e)) + e for e in encoded)
        if kind not in (REQUEST_TRACE, REQUEST_OP) or len(body) != (32 if kind == REQUEST_TRACE else 34):
            return NOT_FOUND
        if wait := self._limiter.take(peer):
            logger.debug("trace request from %s refused: over its rate limit", peer)
            return refusal("trace", self._limiter.limit, wait)
        trace = self._trace(body[:32])
        if trace is NOT_READY:
            return NOT_READY + struct.pack("<H", TRACE_RETRY_SECONDS)
        if kind == REQUEST_TRACE:
            return NOT_FOUND if trace is None else FOUND + encode_signed_trace(body, trace_roots(trace),
                                                                               self.context.account.sign)
        index = struct.unpack("<H", body[32:])[0]
        return NOT_FOUND if trace is None or index >= len(trace) else FOUND + encode_tensor_bundle(trace[index][1])


def refusal(kind: str, limit: RateLimit, wait: float) -> bytes:
    """The REFUSED answer to a request over its peer's rate limit: the seconds to wait and the limit, in words."""
    seconds = max(1, math.ceil(wait))
    return (REFUSED + struct.pack("<H", seconds)
            + f"refused: {kind} requests are limited to {limit.describe()}; ask again in {seconds} s".encode())


def _lower_thread_priority() -> None:
    """Raise the calling thread's niceness by TRACE_THREAD_NICENESS (Linux
    schedules threads one by one), so tracing yields to training."""
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + TRACE_THREAD_NICENESS))
    except (AttributeError, OSError) as error:  # not Linux, or not allowed: trace at the normal priority
        logger.debug("trace thread keeps its priority: %s", error)


def retry_after(answer: bytes) -> float:
    """The seconds a NOT_READY or REFUSED answer asks to wait (1 to 60)."""
    seconds = struct.unpack_from("<H", answer, 1)[0] if len(answer) >= 3 else 1
    return float(min(max(seconds, 1), 60))


def messages_request(task_id: bytes, iteration: int, miner: bytes) -> bytes:
    return REQUEST_MESSAGES + bytes(task_id) + struct.pack("<Q", iteration) + bytes(miner)


def decode_messages_answer(answer: bytes) -> list[C.SignedIterationMessage]:
    if answer[:1] != FOUND:
        return []
    try:
        (count,), offset = struct.unpack_from("<H", answer, 1), 3
        messages = []
        for _ in range(count):
            (length,) = struct.unpack_from("<I", answer, offset)
            messages.append(decode(bytes(answer[offset + 4:offset + 4 + length]), C.SignedIterationMessage))
            offset += 4 + length
    except (struct.error, DecodeError) as error:
        raise AuditError(f"malformed message list: {error}") from None
    return messages


__all__ = ["AuditError", "AuditReport", "AuditServer", "AuditSource", "IterationInputs", "NOT_READY", "PROTOCOL_AUDIT",
           "REFUSED", "RecordedIteration", "TensorDiff", "audit_iteration", "decode_messages_answer",
           "decode_signed_trace", "diff_tensors", "encode_signed_trace", "first_divergence", "load_inputs",
           "messages_request", "reference_replay", "replay_traces", "retry_after"]
