"""`bws devnet --template cnn`: the convolutional job template goes through
the whole path too (group training, blocks mined from its iterations and
replayed by other nodes, evaluation, payout). A short run; `make demo`-sized
runs reach ~95 % (bench/RESULTS.md)."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.timeout(480)
def test_cnn_devnet_trains_mines_verifies_and_pays_out(tmp_path):
    command = [sys.executable, "-m", "bws.node.cli", "devnet", "--data-dir", str(tmp_path / "devnet"), "--seed", "5",
               "--template", "cnn", "--iterations", "16", "--blocks", "8", "--min-accuracy", "0.5", "--timeout", "420"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=460)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "template cnn on digits" in output
    replayed = next(line for line in output.splitlines() if "blocks replayed by another node" in line)
    verified, total = (int(v) for v in replayed.split("node")[-1].split("of"))
    assert verified == total >= 8, replayed
    assert "replay mismatches       0" in output
    assert "client task: 16 per member" in output
