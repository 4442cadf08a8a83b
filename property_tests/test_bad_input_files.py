"""Bad input in the files a user hands to the node: spec vector files
(`bws spec vectors --check DIR`), genesis files (`bws node run --genesis
FILE`, `load_genesis`), the node's slashing-protection file, and the data dir's remembered peers
(`peers.json`) and saved mempool (`mempool.bin`). Random and mutated contents must be refused with the
command's one-line error (exit code 1) or the area's own exception, never a
traceback, and nothing may be written next to the input."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import example, given, strategies as st

from bws.node.cli import main
from bws.node.service import NodeError, load_genesis, write_genesis
from bws.node.review import ToyChain
from property_tests.strategies import mutated

VECTOR_DIR = Path(__file__).resolve().parent.parent / "spec" / "vectors"
VECTOR_LINE = (VECTOR_DIR / "transfer.jsonl").read_text().splitlines()[0]
GENESIS = ToyChain().genesis


def _listing(directory: Path) -> dict:
    return {path.name: path.read_bytes() for path in directory.iterdir()}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=16),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=10,
)


@st.composite
def vector_files(draw) -> bytes:
    """A vector file: garbage, a valid line mutated as bytes, or a valid line
    with one field replaced by any JSON value."""
    kind = draw(st.sampled_from(["bytes", "mutated line", "field"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "mutated line":
        return draw(mutated(VECTOR_LINE.encode()))
    vector = json.loads(VECTOR_LINE)
    vector[draw(st.sampled_from(sorted(vector) + ["extra"]))] = draw(json_values)
    return json.dumps(vector).encode()


@example(b"3")
@example(VECTOR_LINE.replace('"kind": "transaction"', '"kind": "transaction", "pre_state": 5').encode())
@given(vector_files())
def test_vector_check_refuses_bad_files_with_one_line(contents):
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        (directory / "case.jsonl").write_bytes(contents)
        before = _listing(directory)
        code = main(["spec", "vectors", "--check", str(directory)])
        assert code in (0, 1)
        assert _listing(directory) == before, "checking vectors wrote next to them"


@st.composite
def genesis_files(draw) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        write_genesis(Path(directory) / "genesis.json", GENESIS)
        valid = (Path(directory) / "genesis.json").read_bytes()
    kind = draw(st.sampled_from(["bytes", "mutated", "field"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "mutated":
        return draw(mutated(valid))
    document = json.loads(valid)
    target = draw(st.sampled_from([document, document["config"], document["accounts"][0], document["tasks"][0]]))
    target[draw(st.sampled_from(sorted(target) + ["preset"]))] = draw(json_values)
    return json.dumps(document).encode()


def _genesis_with(**fields) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        write_genesis(Path(directory) / "genesis.json", GENESIS)
        document = json.loads((Path(directory) / "genesis.json").read_text())
    return json.dumps({**document, **fields}).encode()


@given(genesis_files())
@example(_genesis_with(preset=[]))   # found by the nightly profile: an unhashable preset was a TypeError
def test_genesis_loader_refuses_bad_files_with_node_error(contents):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "genesis.json"
        path.write_bytes(contents)
        before = _listing(Path(directory))
        try:
            load_genesis(path)
        except NodeError as error:
            assert str(error).startswith(str(path)) or "genesis" in str(error)
        assert _listing(Path(directory)) == before, "loading a genesis file wrote next to it"


def _signed_record() -> bytes:
    """A slashing-protection file holding one signed message of the toy chain."""
    from bws.node import keys
    from bws.node.roles.miner import sign_iteration_message
    from bws.node.roles.signed import SignedMessages
    from bws.spec import containers as C

    toy = ToyChain()
    work = toy.iteration_work(toy.genesis_task_id, toy.genesis_state.tasks[toy.genesis_task_id], 0, 0)
    secret = toy.keys["alice"]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "signed.bin"
        SignedMessages(path).sign(C.IterationMessage(work=work, header_commitment=bytes(32)),
                                  lambda m: sign_iteration_message(secret, keys.get_public_key(secret), m))
        return path.read_bytes()


SIGNED_RECORD = _signed_record()


@given(st.one_of(st.binary(max_size=300), mutated(SIGNED_RECORD), mutated(SIGNED_RECORD * 2)))
@example(SIGNED_RECORD[:-1])
def test_slashing_protection_file(data):
    """The node's slashing-protection file (node/roles/signed.py), damaged any
    way: it loads the whole records it holds (a torn tail is dropped) or
    refuses with SignedRecordError naming the file, never another exception."""
    from bws.node.roles.signed import SignedMessages, SignedRecordError

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "signed.bin"
        path.write_bytes(data)
        try:
            record = SignedMessages(path)
        except SignedRecordError as error:
            assert str(path) in str(error)
            return
        assert len(record) <= max(1, len(data) // 100)


PEERS_FILE = json.dumps({"version": 1, "peers": [
    "/ip4/127.0.0.1/tcp/30645/p2p/12D3KooWKg6J2kG2hAse6t7YcgBzmfYsY5MQUgiHumxnGbiJwS1r",
    "/ip6/::1/tcp/30646/p2p/12D3KooWGpkaL5usWChVoCxU3u5HXin4LmiVFuW64gyRydXEzys2"]}).encode()


@given(st.one_of(st.binary(max_size=300), mutated(PEERS_FILE),
                 st.builds(lambda peers: json.dumps({"version": 1, "peers": peers}).encode(), json_values)))
@example(b'{"version": 1, "peers": [1e999]}')
def test_peers_file(data):
    """The remembered peers (node/peerbook.py), damaged any way: read_peer_file gives strings or
    PeerBookError naming the file; the node's loader never raises (it logs and keeps its --peer
    addresses), keeps only dialable addresses, and writes nothing."""
    from bws.node.peerbook import PEER_BOOK_FILE, PeerBookError, is_dialable, load_peer_book, read_peer_file

    configured = ["/ip4/10.0.0.1/tcp/1/p2p/12D3KooWKg6J2kG2hAse6t7YcgBzmfYsY5MQUgiHumxnGbiJwS1r"]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / PEER_BOOK_FILE
        path.write_bytes(data)
        before = _listing(Path(directory))
        try:
            assert all(isinstance(address, str) for address in read_peer_file(path))
        except PeerBookError as error:
            assert str(path) in str(error)
        addresses = load_peer_book(path, configured).addresses()
        assert addresses[:1] == configured and all(is_dialable(address) for address in addresses[1:])
        assert _listing(Path(directory)) == before, "loading the peers wrote next to them"


def _mempool_file() -> bytes:
    from bws.node.mempool_file import write_mempool_file
    from bws.spec.encoding import encode
    from tests.node.chain_factory import ChainFactory

    factory = ChainFactory(miners=2, seed=5)
    transfers = [encode(factory.transfer(factory.users[0], factory.users[1].address, 10, nonce=n)) for n in range(2)]
    with tempfile.TemporaryDirectory() as directory:
        write_mempool_file(Path(directory) / "mempool.bin", transfers)
        return (Path(directory) / "mempool.bin").read_bytes()


MEMPOOL_FILE_BYTES = _mempool_file()


@given(st.one_of(st.binary(max_size=300), mutated(MEMPOOL_FILE_BYTES)))
@example(MEMPOOL_FILE_BYTES[:-1])
def test_mempool_file(data):
    """The saved mempool (node/mempool_file.py), damaged any way: records or MempoolFileError naming
    the file; each record the node then re-checks is a transaction or TransactionRejected
    (the node drops it and counts it), never another exception."""
    from bws.node.mempool_file import MempoolFileError, read_mempool_file
    from bws.node.validation import TransactionRejected, check_transaction_envelope, decode_received
    from bws.spec import containers as C
    from bws.spec.presets import DEVNET

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "mempool.bin"
        path.write_bytes(data)
        try:
            records = read_mempool_file(path)
        except MempoolFileError as error:
            assert str(path) in str(error)
            return
        for raw in records:
            try:
                check_transaction_envelope(decode_received(raw, C.SignedTransaction), DEVNET.chain_id)
            except TransactionRejected:
                pass


CONFIG_FILE = (b'data_dir = "n1"\ngenesis = "genesis.json"\nroles = ["peer", "verifier", "miner"]\n'
               b'peer = ["/ip4/127.0.0.1/tcp/30645/p2p/12D3KooWabc"]\napi_port = 8645\nlog_level = "info"\n')
toml_values = st.one_of(st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.text(max_size=12),
                        st.lists(st.one_of(st.integers(), st.text(max_size=8)), max_size=3))


def _toml_value(value) -> str:
    """`value` written as TOML (json.dumps writes TOML's strings, integers, floats and arrays)."""
    return ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)


@given(st.one_of(st.binary(max_size=300), mutated(CONFIG_FILE),
                 st.builds(lambda key, value: CONFIG_FILE + f"{key} = {_toml_value(value)}\n".encode(),
                           st.sampled_from(["api_port", "roles", "peer", "log_level", "data_dir", "other"]),
                           toml_values)))
@example(CONFIG_FILE + b"api_port = 99999999999999999999\n")
def test_node_config_file(data):
    """`bws node run --config FILE` (node/config.py), damaged any way: the options, each of its flag's type, or a
    ConfigError naming the file, never another exception."""
    from bws.node.cli import build_parser
    from bws.node.config import ConfigError, read_config

    keys = build_parser(only="node").parse_args(["node", "run"]).config_keys
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "node.toml"
        path.write_bytes(data)
        try:
            options = read_config(path, keys)
        except ConfigError as error:
            assert str(error).startswith(str(path)) or str(error).endswith(str(path))
            return
        for name, value in options.items():
            expected = {"strings": list, "integer": int, "string": (str, Path)}[keys[name].kind]
            assert isinstance(value, expected) and not isinstance(value, bool), (name, value)
