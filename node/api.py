"""The node's HTTP/JSON API (on 127.0.0.1 unless the operator gives `--api-host`).

| method and path | answer |
| --- | --- |
| `GET /status` | head hash and height, cumulative work, peers, mempool size, roles |
| `GET /block/<hash hex or height>` | the block as JSON (header, transactions, proofs) and whether it is on the main chain |
| `GET /account/<address hex>` | balance, nonce, and the next nonce counting pending transactions |
| `GET /task/<task id hex>` | the task's state on chain, and the blocks mined from its iterations |
| `POST /tx` | body `{"transaction": "<hex of a SignedTransaction>"}`: validated, added to the mempool, gossiped; answers its id |
| `POST /block` | body `{"block": "<hex of a Block>"}`: imported like a gossiped block; answers the verdict |
| `POST /reveal` | body `{"tensors": "<hex of a tensor bundle>"}`: a withheld test split, served to evaluators once a task committing to its root is in evaluation (refused before: 409); answers the task id and root |
| `GET /metrics` | counters: blocks imported/rejected, reorgs, transactions, peers, timings |
| `GET /metrics/prometheus` | the same numbers in the Prometheus text format (node/prometheus.py), `bws_...` |
| `GET /health` | `{"ok": true}` with the head's height, seconds since the head last moved, peers; 503 while stopping |
| `GET /peers` | connected peers (id, address, direction, score) and banned ones (seconds left), the ban threshold |
| `GET /gossip` | per topic, when this node first saw each recent message |

The Prometheus text has its own path rather than `/metrics?format=...`: one
path, one content type, so a scraper's `metrics_path` is all it needs and no
cache or proxy can mix the two answers (geth does the same with
`/debug/metrics/prometheus`). No path takes query parameters: one is refused
(400) rather than ignored, so `/metrics?format=prometheus` says where the text
is instead of quietly answering JSON.

Errors are JSON `{"error": "<what was wrong>"}` with 400 (bad request: bad
path, query parameters, bad hex, not decodable, rejected by validation), 404 (unknown block,
task or path), 405 (wrong method), 409 (a reveal before its time), 413 (body
over the path's limit: MAX_BODY_BYTES, MAX_REVEAL_BODY_BYTES for /reveal) and
503 (the node is shutting down, or serves no tensor data). Bytes are
lower-case hex everywhere.
"""
from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Protocol

from bws.spec.encoding import ByteVector, Container, FixedWidthInt, _ByteList, _List, _Map, _Union, boolean, get_fields

from . import prometheus

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_REVEAL_BODY_BYTES = 256 * 1024 * 1024   # a test split, hex: twice its bundle (an MNIST-sized one is ~60 MB)
HASH_HEX_LENGTH = 64
ADDRESS_HEX_LENGTH = 40


class ApiError(Exception):
    """A request the API answers with an error status and message."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class NodeBackend(Protocol):
    """What the API needs from the node (node/service.py implements it).
    Methods raise ApiError for answers other than 200."""

    def status(self) -> dict: ...
    def block(self, reference: bytes | int) -> dict: ...
    def account(self, address: bytes) -> dict: ...
    def task(self, task_id: bytes) -> dict: ...
    def submit_transaction(self, raw: bytes) -> dict: ...
    def submit_block(self, raw: bytes) -> dict: ...
    def reveal(self, raw: bytes) -> dict: ...
    def metrics(self) -> dict: ...
    def gossip(self) -> dict: ...
    def health(self) -> dict: ...
    def peers(self) -> dict: ...


@dataclass(frozen=True)
class TextAnswer:
    """An answer that is not JSON (the Prometheus exposition)."""
    text: str
    content_type: str


Answer = dict | TextAnswer

# The GET paths without arguments, and what they answer.
FIXED_GET_ROUTES: dict[str, Callable[[NodeBackend], Answer]] = {
    "status": lambda node: node.status(),
    "health": lambda node: node.health(),
    "peers": lambda node: node.peers(),
    "metrics": lambda node: node.metrics(),
    "metrics/prometheus": lambda node: TextAnswer(prometheus.render(node.metrics()), prometheus.CONTENT_TYPE),
    "gossip": lambda node: node.gossip(),
}


def to_json(value: Any) -> Any:
    """A protocol value as JSON: containers as objects (a union member gets a
    "type" field), bytes as hex, ints as ints (as strings above 2**53, so
    JavaScript readers keep every digit), lists as lists."""
    if isinstance(value, Container):
        return {name: (to_json_tagged if issubclass(typ, _Union) else to_json)(getattr(value, name))
                for name, typ in get_fields(type(value))}
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value) if -(2**53) < value < 2**53 else str(int(value))
    if isinstance(value, dict):
        return [{"key": to_json(k), "value": to_json(v)} for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [to_json_tagged(item) for item in value]
    if value is None:
        return None
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


def from_json(typ: type, value: Any) -> Any:
    """The inverse of to_json for a value of codec type `typ` (containers,
    unions tagged with "type", bytes as hex, ints or decimal strings).
    ValueError/TypeError name the field that is wrong."""
    try:
        if isinstance(typ, type) and issubclass(typ, Container):
            if not isinstance(value, dict):
                raise TypeError(f"expected an object for {typ.__name__}")
            fields = get_fields(typ)
            extra = set(value) - {name for name, _ in fields} - {"type"}
            if extra:
                raise ValueError(f"unknown field(s) {', '.join(sorted(extra))} in {typ.__name__}")
            missing = [name for name, _ in fields if name not in value]
            if missing:
                raise ValueError(f"missing field(s) {', '.join(missing)} in {typ.__name__}")
            return typ(**{name: from_json(field_type, value[name]) for name, field_type in fields})
        if issubclass(typ, _Union):
            if not isinstance(value, dict) or "type" not in value:
                raise TypeError("a union value is an object with a \"type\" field")
            options = {option.__name__: option for option in typ.OPTIONS}
            if value["type"] not in options:
                raise ValueError(f"type {value['type']!r} is not one of {', '.join(options)}")
            return from_json(options[value["type"]], value)
        if issubclass(typ, (ByteVector, _ByteList)):
            if not isinstance(value, str):
                raise TypeError("bytes are written as a hex string")
            return typ(bytes.fromhex(value))
        if issubclass(typ, boolean):  # to_json writes it as 0 or 1 (it is an int)
            if value not in (0, 1) or not isinstance(value, int):
                raise TypeError("expected 0, 1, true or false")
            return typ(int(value))
        if issubclass(typ, FixedWidthInt):
            if isinstance(value, str) and value.lstrip("-").isdigit():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError("expected an integer")
            return typ(value)
        if issubclass(typ, _List):
            if not isinstance(value, list):
                raise TypeError("expected a list")
            return typ([from_json(typ.ELEM, item) for item in value])
        if issubclass(typ, _Map):
            if not isinstance(value, list):
                raise TypeError("a map is a list of {\"key\", \"value\"} objects")
            return typ({from_json(typ.KEY, entry["key"]): from_json(typ.VALUE, entry["value"]) for entry in value})
    except (KeyError, IndexError) as error:
        raise ValueError(f"missing {error}") from None
    raise TypeError(f"cannot read a {typ.__name__} from JSON")


def to_json_tagged(value: Any) -> Any:
    """Like to_json; a container also names its type (list items and union members)."""
    rendered = to_json(value)
    if isinstance(value, Container):
        return {"type": type(value).__name__, **rendered}
    return rendered


def parse_hex(text: str, what: str, length: int | None = None) -> bytes:
    if length is not None and len(text) != length:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{what} must be {length} hex characters, got {len(text)}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{what} is not valid hex") from None


def _json_body_field(body: bytes, field: str) -> bytes:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get(field), str):
        raise ApiError(HTTPStatus.BAD_REQUEST, f'body must be a JSON object {{"{field}": "<hex>"}}')
    return parse_hex(document[field].strip(), field)


def route(method: str, path: str, body: bytes) -> Callable[[NodeBackend], Answer]:
    """The backend call a request maps to, or ApiError naming what is wrong.
    Pure (no I/O), so it is fuzzed directly."""
    path, _, query = path.partition("?")
    parts = [part for part in path.split("/") if part]
    if not parts:
        raise ApiError(HTTPStatus.NOT_FOUND, "no such path; try /status")
    joined = "/".join(parts)
    name, arguments = (joined, []) if joined in FIXED_GET_ROUTES else (parts[0], parts[1:])
    routes_get = {**dict.fromkeys(FIXED_GET_ROUTES, 0), "block": 1, "account": 1, "task": 1}
    routes_post = {"tx": 0, "block": 0, "reveal": 0}
    if method == "GET" and name in routes_get:
        expected = routes_get[name]
    elif method == "POST" and name in routes_post:
        expected = routes_post[name]
    elif name in routes_get or name in routes_post:
        raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed on /{name}")
    else:
        raise ApiError(HTTPStatus.NOT_FOUND, f"no such path /{name}")
    if query:
        _refuse_query(name, query)
    if len(arguments) != expected:
        raise ApiError(HTTPStatus.NOT_FOUND if expected == 0 else HTTPStatus.BAD_REQUEST,
                       f"/{name} takes {expected} path argument(s), got {len(arguments)}")
    if method == "GET":
        if name in FIXED_GET_ROUTES:
            return FIXED_GET_ROUTES[name]
        argument = arguments[0]
        if name == "block":
            if argument.isdigit() and len(argument) < 20:
                height = int(argument)
                return lambda node: node.block(height)
            block_hash = parse_hex(argument, "block hash", HASH_HEX_LENGTH)
            return lambda node: node.block(block_hash)
        if name == "account":
            address = parse_hex(argument, "address", ADDRESS_HEX_LENGTH)
            return lambda node: node.account(address)
        task_id = parse_hex(argument, "task id", HASH_HEX_LENGTH)
        return lambda node: node.task(task_id)
    if name == "tx":
        raw = _json_body_field(body, "transaction")
        return lambda node: node.submit_transaction(raw)
    if name == "reveal":
        raw = _json_body_field(body, "tensors")
        return lambda node: node.reveal(raw)
    raw = _json_body_field(body, "block")
    return lambda node: node.submit_block(raw)


def _refuse_query(name: str, query: str) -> None:
    """No path takes query parameters (module docstring): name the ones given."""
    keys = sorted({key for key, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)}) or [query]
    hint = "; the Prometheus text is at /metrics/prometheus" if name == "metrics" else ""
    raise ApiError(HTTPStatus.BAD_REQUEST,
                   f"/{name} takes no query parameters, got {', '.join(repr(key) for key in keys)}{hint}")


def body_limit(path: str) -> int:
    """The largest body the API reads for a request to `path`."""
    return MAX_REVEAL_BODY_BYTES if path.split("?", 1)[0].strip("/") == "reveal" else MAX_BODY_BYTES


class _Handler(BaseHTTPRequestHandler):
    server_version = "bws-node"
    protocol_version = "HTTP/1.1"
    backend: NodeBackend  # set on the subclass made per server

    def log_message(self, format: str, *args) -> None:  # quiet: the node logs what matters
        return

    def _answer(self, status: HTTPStatus, answer: Answer) -> None:
        if isinstance(answer, TextAnswer):
            payload, content_type = answer.text.encode("utf-8"), answer.content_type
        else:
            payload, content_type = (json.dumps(answer, sort_keys=True) + "\n").encode("utf-8"), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _handle(self, method: str) -> None:
        try:
            length_header = self.headers.get("Content-Length", "0")
            if not length_header.isdigit():
                raise ApiError(HTTPStatus.BAD_REQUEST, "Content-Length must be a non-negative integer")
            length, limit = int(length_header), body_limit(self.path)
            if length > limit:
                self.close_connection = True
                raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes exceeds {limit}")
            body = self.rfile.read(length) if length else b""
            call = route(method, self.path, body)
            self._answer(HTTPStatus.OK, call(self.backend))
        except ApiError as error:
            self._answer(error.status, {"error": error.message})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class ApiServer:
    """The HTTP server on a background thread, on 127.0.0.1 unless given another host (an IPv4
    or IPv6 address; 0.0.0.0 or :: for every interface)."""

    def __init__(self, backend: NodeBackend, port: int, host: str = "127.0.0.1") -> None:
        handler = type("BoundHandler", (_Handler,), {"backend": backend})
        server_class = _ThreadingHTTPServerV6 if ":" in host else ThreadingHTTPServer
        try:
            self._server = server_class((host, port), handler)
        except (OSError, OverflowError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"cannot listen on {host}:{port}: {reason}") from None
        self.host = host
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="bws-api", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the API (loopback when it listens on every interface)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def start(self) -> "ApiServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class _ThreadingHTTPServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class ApiClient:
    """A small client of this API (used by the CLI): raises ApiError with the
    node's message on an error status, and on a node that does not answer."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, document: dict | None = None) -> dict:
        import urllib.error
        import urllib.request

        data = None if document is None else json.dumps(document).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read().decode("utf-8")).get("error", error.reason)
            except (ValueError, AttributeError):
                message = str(error.reason)
            raise ApiError(HTTPStatus(error.code), message) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"no node answering at {self.url} ({reason})") from None

    def get(self, path: str) -> dict:
        return self._call("GET", path)

    def post(self, path: str, document: dict) -> dict:
        return self._call("POST", path, document)
