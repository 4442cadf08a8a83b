"""The node, wallet and chain commands as a user runs them (subprocesses)."""
import json
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from bws.node.api import ApiClient
from bws.node.service import write_genesis
from bws.node.wallet import Account, save_keystore
from bws.spec.encoding import encode
from tests.node.chain_factory import ChainFactory

BWS = [sys.executable, "-m", "bws.node.cli"]


def bws(*args, check=True):
    result = subprocess.run(BWS + [str(a) for a in args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"bws {' '.join(map(str, args))} failed: {result.stderr}")
    return result


def one_line_error(result, fragment):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_node_wallet_chain_commands(tmp_path):
    factory = ChainFactory(miners=2, seed=11)
    genesis_file = tmp_path / "genesis.json"
    write_genesis(genesis_file, factory.genesis)
    password = tmp_path / "pw"
    password.write_text("hunter2\n")
    alice_keystore = tmp_path / "alice.json"
    save_keystore(alice_keystore, Account(factory.users[0].secret), "hunter2", scrypt_n=2**10)
    bob = bws("wallet", "new", "--keystore", tmp_path / "bob.json", "--password-file", password).stdout.split()[1]
    assert bws("wallet", "address", "--keystore", tmp_path / "bob.json").stdout.strip() == bob

    data_dir = tmp_path / "node"
    node = subprocess.Popen(BWS + ["node", "run", "--data-dir", str(data_dir), "--genesis", str(genesis_file),
                                   "--api-port", "0", "--port", "0", "--log-level", "warning"],
                            stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (data_dir / "node.json").exists():
            assert node.poll() is None and time.time() < deadline, "node did not start"
            time.sleep(0.2)
        api = json.loads((data_dir / "node.json").read_text())["api"]
        client = ApiClient(api)
        for block, _ in factory.chain(3):
            client.post("/block", {"block": encode(block).hex()})
        head = json.loads(bws("chain", "head", "--data-dir", data_dir).stdout)
        assert head["height"] == 3
        assert json.loads(bws("chain", "block", "2", "--api", api).stdout)["height"] == 2

        out = bws("wallet", "transfer", "--keystore", alice_keystore, "--to", bob, "--amount", "1.5",
                  "--api", api, "--password-file", password).stdout
        assert out.startswith("submitted ")
        assert "(next 1)" in bws("wallet", "balance", "--keystore", alice_keystore, "--api", api).stdout
        assert "balance 0 coin" in bws("wallet", "balance", "--address", bob, "--api", api).stdout

        wrong = tmp_path / "wrong"
        wrong.write_text("nope")
        one_line_error(bws("wallet", "transfer", "--keystore", alice_keystore, "--to", bob, "--amount", "1",
                           "--api", api, "--password-file", wrong, check=False), "wrong password")
        one_line_error(bws("wallet", "transfer", "--keystore", alice_keystore, "--to", "zz", "--amount", "1",
                           "--api", api, "--password-file", password, check=False), "not hex")
        one_line_error(bws("chain", "block", "99", "--api", api, check=False), "no block 99")
        assert bws("node", "peers", "--data-dir", data_dir).stdout == \
            "connected peers: 0 (banned at score -100)\nbanned peers: 0\n"
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(30) == 0
    assert not (data_dir / "node.json").exists()
    # Stopped: the store itself answers, also when a killed node left its node.json behind.
    assert json.loads(bws("chain", "head", "--data-dir", data_dir).stdout)["height"] == 3
    gone = subprocess.Popen(["true"])
    gone.wait()
    (data_dir / "node.json").write_text(json.dumps({"pid": gone.pid, "api": "http://127.0.0.1:9"}))
    assert json.loads(bws("chain", "head", "--data-dir", data_dir).stdout)["height"] == 3
    bws("chain", "export", "--data-dir", data_dir, "--out", tmp_path / "chain.bin")
    assert (tmp_path / "chain.bin").stat().st_size > 0
    one_line_error(bws("wallet", "balance", "--address", bob, "--api", "http://127.0.0.1:9", check=False), "no node answering")
    one_line_error(bws("node", "peers", "--api", "http://127.0.0.1:9", check=False), "no node answering")
    assert "connected peers" in bws("node", "peers", "--help").stdout


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "genesis.json").write_text("{not json")
    one_line_error(bws("node", "run", "--data-dir", tmp_path / "d", "--genesis", tmp_path / "genesis.json", check=False),
                   "not JSON")
    one_line_error(bws("chain", "genesis", "--out", tmp_path / "g.json", "--fund", "aabb:1", check=False), "40 hex")
    address = "11" * 20
    bws("chain", "genesis", "--out", tmp_path / "g.json", "--fund", f"{address}:12.5")
    one_line_error(bws("node", "run", "--data-dir", tmp_path / "d", "--genesis", tmp_path / "g.json", "--roles", "wizard",
                       check=False), "unknown role(s) wizard")
    one_line_error(bws("wallet", "address", "--keystore", tmp_path / "g.json", check=False), "missing the field")


@pytest.mark.parametrize("content, message", [
    (None, "no genesis file"),
    ("[1]", "a genesis file is a JSON object"),
    ('{"preset": "moon"}', "unknown preset 'moon'"),
    ('{"preset": "devnet", "timestamp": 1, "accounts": [], "stakes": [], "tasks": []}', 'own "chain_id" too'),
    ('{"preset": "devnet", "chain_id": 7, "timestamp": 1, "accounts": [], "stakes": []}', "missing field(s) tasks"),
    ('{"preset": "devnet", "chain_id": 7, "timestamp": -1, "accounts": [], "stakes": [], "tasks": []}', "out of range"),
    ('{"preset": "devnet", "chain_id": 7, "timestamp": 1, "accounts": [{"address": "zz", "balance": 1}], "stakes": [], '
     '"tasks": []}', "not a valid genesis"),
])
def test_genesis_file_errors(tmp_path, content, message):
    from bws.node.service import NodeError, load_genesis

    path = tmp_path / "genesis.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(NodeError, match=re.escape(message)):
        load_genesis(path)


def test_genesis_file_round_trip(tmp_path):
    from bws.node.service import load_genesis

    genesis = ChainFactory(miners=1, seed=2).genesis
    write_genesis(tmp_path / "g.json", genesis)
    assert load_genesis(tmp_path / "g.json") == genesis
    one_line_error(bws("chain", "head", "--data-dir", tmp_path / "nothing", check=False), "no chain store")


def test_run_flags_for_operators(tmp_path):
    from bws.node.commands.node import DEFAULT_P2P_PORT, listen_address

    text = bws("node", "run", "--help").stdout
    for flag in ("--port", "--listen", "--announce", "--api-host", "--api-port", "--peer"):
        assert flag in text
    assert str(DEFAULT_P2P_PORT) in text

    def listen(**given):
        return listen_address(SimpleNamespace(**{"listen": None, "port": None, **given}))

    assert listen() == f"/ip4/127.0.0.1/tcp/{DEFAULT_P2P_PORT}"
    assert listen(port=0) == "/ip4/127.0.0.1/tcp/0"
    assert listen(listen="/ip6/::/tcp/4001") == "/ip6/::/tcp/4001"
    with pytest.raises(ValueError, match="not both"):
        listen(listen="/ip4/0.0.0.0/tcp/1", port=2)
    (tmp_path / "g.json").write_text("{}")
    one_line_error(bws("node", "run", "--data-dir", tmp_path / "d", "--genesis", tmp_path / "g.json", "--port", "1",
                       "--listen", "/ip4/127.0.0.1/tcp/2", check=False), "not both")


def test_hex_arguments_and_the_one_error_line(capsys):
    """Every command reads hex by one rule (an optional 0x, exactly the digits of its size), and a
    failing command's CommandError is printed once by `bws`, under the group's name."""
    from bws.node.cli import main
    from bws.node.commands import CommandError, parse_hex

    assert parse_hex("0x" + "ab" * 20, 20, "an address") == parse_hex("AB" * 20, 20, "an address") == b"\xab" * 20
    with pytest.raises(CommandError, match="a task id 'zz' is not hex"):
        parse_hex("zz", 32, "a task id")
    with pytest.raises(CommandError, match="a task id is 64 hex characters, got 2"):
        parse_hex("ab", 32, "a task id")
    with pytest.raises(CommandError, match="not hex"):
        parse_hex("ab cd", 2, "a pair")  # bytes.fromhex alone would take the space
    assert main(["chain", "block", "xyz", "--api", "http://127.0.0.1:9"]) == 1
    assert capsys.readouterr().err == "bws chain: error: a block hash 'xyz' is not hex\n"
