"""Operating a node (issue #15): `bws node run --config FILE` (TOML, keys = the long flags, flags win), one log
format for every logger with --log-file, and CLI errors that stay one line without a terminal, the wallet
password from $BWS_WALLET_PASSWORD wherever a keystore is opened."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bws.node.cli import build_parser
from bws.node.commands import CommandError
from bws.node.commands.node import RUN_DEFAULTS, with_config
from bws.node.config import ConfigError, read_config
from bws.node.service import write_genesis
from bws.node.wallet import PASSWORD_ENV, Account, save_keystore
from tests.node.chain_factory import ChainFactory

BWS = [sys.executable, "-m", "bws.node.cli"]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
CONFIG = """\
data_dir = "n1"
genesis = "../genesis.json"
roles = ["peer", "verifier", "miner"]
keystore = "/keys/alice.json"
peer = ["/ip4/127.0.0.1/tcp/30645/p2p/12D3KooWabc"]
api_port = 8650
log_level = "debug"
"""


def parse_run(*argv: str):
    return build_parser(only="node").parse_args(["node", "run", *argv])


def config_keys():
    return parse_run().config_keys


def bws(*args, env=None, closed_stdin=False, timeout=120):
    """`bws ARGS` without a terminal: stdin from /dev/null, or closed (Python's sys.stdin is then None)."""
    return subprocess.run(BWS + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env, preexec_fn=(lambda: os.close(0)) if closed_stdin else None)


def one_line_error(result, fragment):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- the config file ---------------------------------------------------------------
def test_every_long_flag_of_node_run_is_a_key():
    flags = set(re.findall(r"--([a-z][a-z-]+)", subprocess.run(BWS + ["node", "run", "--help"], capture_output=True,
                                                                  text=True, timeout=60).stdout))
    assert {flag.replace("-", "_") for flag in flags} - {"help", "config"} == set(config_keys())


def test_values_are_typed_as_the_flags_and_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "node.toml"
    path.write_text(CONFIG)
    assert read_config(path, config_keys()) == {
        "data_dir": tmp_path / "etc" / "n1", "genesis": tmp_path / "etc" / ".." / "genesis.json",
        "roles": ["peer", "verifier", "miner"], "keystore": Path("/keys/alice.json"),
        "peer": ["/ip4/127.0.0.1/tcp/30645/p2p/12D3KooWabc"], "api_port": 8650, "log_level": "debug"}


def test_flags_win_over_the_file_and_the_file_over_the_defaults(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(CONFIG)
    args = with_config(parse_run("--config", str(path), "--api-port", "9000", "--peer", "/ip4/1.2.3.4/tcp/1/p2p/x",
                                 "--roles", "peer"))
    assert args.api_port == 9000 and args.peer == ["/ip4/1.2.3.4/tcp/1/p2p/x"] and args.roles == ["peer"]
    assert args.data_dir == tmp_path / "n1" and args.log_level == "debug"
    assert args.api_host == RUN_DEFAULTS["api_host"] and args.port is None and args.log_file is None
    path.write_text('port = 30650\n')
    assert with_config(parse_run("--config", str(path), "--listen", "/ip4/0.0.0.0/tcp/1", "--data-dir", "d",
                                 "--genesis", "g")).port is None   # --listen is the port too: it wins over `port`
    plain = with_config(parse_run("--data-dir", "d", "--genesis", "g.json"))
    assert {name: getattr(plain, name) for name in RUN_DEFAULTS} == RUN_DEFAULTS
    with pytest.raises(CommandError, match=r"give --genesis \(or genesis in the --config file\)"):
        with_config(parse_run("--data-dir", "d"))


@pytest.mark.parametrize("text, message", [
    ('data_dr = "n1"\n', "unknown key 'data_dr' (known: announce, api_host"),
    ('api_port = "8645"\n', "api_port is an integer, got a string"),
    ("api_port = true\n", "api_port is an integer, got a boolean"),
    ("api_port = 1.5\n", "api_port is an integer, got a number"),
    ('roles = "peer,miner"\n', "roles is an array of strings, got a string"),
    ('peer = ["/ip4/1.2.3.4/tcp/1", 5]\n', "peer is an array of strings, got an array"),
    ("genesis = 2024-01-01\n", "genesis is a string, got a date or time"),
    ('log_level = "loud"\n', "log_level 'loud' is not one of debug, info, warning, error"),
    ("[node]\ndata_dir = 'n1'\n", "unknown key 'node'"),
    ("data_dir = \n", "not TOML: Invalid value (at line 1, column 12)"),
    (b"\xff", "not TOML"),
])
def test_a_bad_file_is_an_error_naming_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "node.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as error:
        read_config(path, config_keys())
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_a_bad_file_is_one_line_from_the_command(tmp_path):
    (tmp_path / "node.toml").write_text('api_port = "8645"\n')
    one_line_error(bws("node", "run", "--config", tmp_path / "node.toml", closed_stdin=True),
                   "node.toml: api_port is an integer, got a string")
    one_line_error(bws("node", "run", "--config", tmp_path / "missing.toml"), "no config file at")


# -- one log format --------------------------------------------------------------------
LOGGING_SCRIPT = """
import logging, sys, warnings
from bws.node.logs import configure_logging
configure_logging(sys.argv[1], sys.argv[2])
import libp2p.network.auto_connector   # sets its own logger to INFO
logging.getLogger("libp2p.pubsub.gossipsub").warning("a libp2p warning")
logging.getLogger("libp2p.network.auto_connector").info("a libp2p info line")
logging.getLogger("bws.node").info("a node line")
logging.getLogger("bws.node").debug("a debug line")
logging.getLogger("jax._src.xla_bridge").info("a jax line")
logging.getLogger("absl").warning("an absl line")
warnings.warn("a python warning")
"""


def test_the_node_libp2p_jax_and_absl_log_one_format_to_the_log_file(tmp_path):
    log_file = tmp_path / "node.log"
    log_file.write_text("")   # appended to, as after logrotate's copy or a restart
    result = subprocess.run([sys.executable, "-c", LOGGING_SCRIPT, "info", str(log_file)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = log_file.read_text().splitlines()
    assert all(LOG_LINE.match(line) for line in lines), lines
    assert [line.split(" ", 1)[1] for line in lines] == [
        "WARNING libp2p.pubsub.gossipsub: a libp2p warning", "INFO bws.node: a node line",
        "INFO jax._src.xla_bridge: a jax line", "WARNING absl: an absl line",
        "WARNING py.warnings: UserWarning: a python warning (<string>:12)"]


@pytest.mark.slow
def test_a_node_started_from_a_config_file_alone_logs_to_its_log_file(tmp_path):
    factory = ChainFactory(miners=1, seed=3)
    write_genesis(tmp_path / "genesis.json", factory.genesis)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "node.toml").write_text('data_dir = "../n1"\ngenesis = "../genesis.json"\nport = 0\n'
                                                'api_port = 0\nlog_file = "node.log"\n')
    node = subprocess.Popen(BWS + ["node", "run", "--config", str(tmp_path / "etc" / "node.toml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            cwd=tmp_path / "etc" / "..")
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "n1" / "node.json").exists():
            assert node.poll() is None and time.monotonic() < deadline, "the node did not start"
            time.sleep(0.2)
        api = json.loads((tmp_path / "n1" / "node.json").read_text())["api"]
        assert json.loads(bws("chain", "head", "--api", api).stdout)["height"] == 0
    finally:
        node.send_signal(signal.SIGTERM)
        _, stderr = node.communicate(timeout=60)
    assert node.returncode == 0
    lines = (tmp_path / "etc" / "node.log").read_text().splitlines()
    assert any("HTTP API listening on 127.0.0.1" in line for line in lines)
    assert lines and all(LOG_LINE.match(line) for line in lines), lines
    assert "bws.node" not in stderr   # the log went to the file only


# -- no terminal -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    factory = ChainFactory(miners=1, seed=4)
    save_keystore(directory / "alice.json", Account(factory.users[0].secret), "hunter2", scrypt_n=2**10)
    write_genesis(directory / "genesis.json", factory.genesis)
    return directory


@pytest.mark.parametrize("closed_stdin", [False, True])
def test_without_a_terminal_or_a_password_every_keystore_command_says_how_to_give_one(keys, tmp_path, closed_stdin):
    env = {name: value for name, value in os.environ.items() if name != PASSWORD_ENV}
    to = "11" * 20
    commands = [
        ("wallet", "new", "--keystore", tmp_path / "new.json"),
        ("wallet", "transfer", "--keystore", keys / "alice.json", "--to", to, "--amount", "1",
         "--api", "http://127.0.0.1:9"),
        ("node", "run", "--data-dir", tmp_path / "n", "--genesis", keys / "genesis.json", "--roles", "miner",
         "--keystore", keys / "alice.json"),
    ]
    for command in commands:
        one_line_error(bws(*command, env=env, closed_stdin=closed_stdin), f"set ${PASSWORD_ENV}")


def test_the_password_comes_from_the_environment_wherever_a_keystore_is_opened(keys, tmp_path):
    env = dict(os.environ, **{PASSWORD_ENV: "hunter2"})
    created = bws("wallet", "new", "--keystore", tmp_path / "new.json", env=env, closed_stdin=True)
    assert created.returncode == 0 and created.stdout.startswith("address "), created.stderr
    # Unlocked, each goes on to the node it needs (none answers here): the password was taken.
    one_line_error(bws("wallet", "transfer", "--keystore", keys / "alice.json", "--to", "11" * 20, "--amount", "1",
                       "--api", "http://127.0.0.1:9", env=env, closed_stdin=True), "no node answering")
    task = tmp_path / "task.json"
    assert bws("task", "new", "--template", "dnn", "--dataset", "digits", "-o", task).returncode == 0
    one_line_error(bws("task", "submit", task, "--keystore", keys / "alice.json", "--api", "http://127.0.0.1:9",
                       env=env, closed_stdin=True), "no node answering")
    wrong = dict(env, **{PASSWORD_ENV: "not it"})
    one_line_error(bws("task", "submit", task, "--keystore", keys / "alice.json", "--api", "http://127.0.0.1:9",
                       env=wrong, closed_stdin=True), "wrong password")
