"""`bws devnet` end to end, as separate processes on loopback: a short run
(the dnn and the cnn template) trains, mines, verifies every block on another node, evaluates and pays out,
then leaves no node running; a node that dies makes the devnet fail with a
readable message, and the other nodes are stopped too."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bws.node.devnet import read_node_info

pytestmark = pytest.mark.slow


def devnet_command(data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bws.node.cli", "devnet", "--data-dir", str(data_dir), "--seed", "3", *extra]


def running_nodes(data_dir: Path) -> list[int]:
    """Pids of processes whose command line names the devnet's directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(data_dir).encode() in command and b"devnet" not in command:
                pids.append(int(entry.name))
    return pids


@pytest.mark.timeout(480)
@pytest.mark.parametrize("template, iterations", [("dnn", 12), ("cnn", 16)])
def test_short_devnet_trains_mines_verifies_and_pays_out(tmp_path, template, iterations):
    data_dir = tmp_path / "devnet"
    result = subprocess.run(devnet_command(data_dir, "--template", template, "--iterations", str(iterations),
                                           "--blocks", "8", "--min-accuracy", "0.5", "--timeout", "420"),
                            capture_output=True, text=True, timeout=460)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"template {template} on digits" in output and "devnet summary" in output
    replayed = next(line for line in output.splitlines() if "blocks replayed by another node" in line)
    verified, total = (int(v) for v in replayed.split("node")[-1].split("of"))
    assert verified == total >= 8, replayed
    assert "replay mismatches       0" in output
    assert f"client task: {iterations} per member" in output
    # The client paid the fee (and a transaction fee); the group's nodes were paid.
    client_line = next(line for line in output.splitlines() if line.strip().startswith("client "))
    assert float(client_line.split()[-1]) < -999
    # The client withheld its test split and revealed it in evaluation; the run's picture was drawn.
    assert "devnet: the client revealed its test split" in output
    assert "test split: the client's, withheld until evaluation, then revealed" in output
    assert f"plot                    {data_dir / 'devnet.png'}" in output
    assert (data_dir / "devnet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not running_nodes(data_dir), "devnet left nodes running"


@pytest.mark.timeout(300)
def test_a_dead_node_fails_the_devnet_and_the_others_are_stopped(tmp_path):
    data_dir = tmp_path / "devnet"
    process = subprocess.Popen(devnet_command(data_dir, "--nodes", "3", "--iterations", "400", "--timeout", "240"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 200
        while (info := read_node_info(data_dir / "node1")) is None:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "node1 never started"
            time.sleep(0.5)
        os.kill(info["pid"], signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stdout + stderr
    assert "bws devnet: error: node1 exited" in stderr
    assert not running_nodes(data_dir), "devnet left nodes running"
