"""`bws devnet --byzantine`, end to end as separate processes: cheating
nodes are disputed by the task's supervisor, slashed on chain, and the
auditor's replay (over libp2p, from the running nodes) localizes each fraud
to the expected op; the honest miner is not slashed. The devnet itself fails
(non-zero exit) unless all of that holds (node/audit_devnet.py), and the
output is checked here too."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.timeout(480)
def test_cheats_are_disputed_localized_and_slashed_and_the_honest_miner_is_not(tmp_path):
    command = [sys.executable, "-m", "bws.node.cli", "devnet", "--data-dir", str(tmp_path / "devnet"), "--seed", "3",
               "--nodes", "6", "--iterations", "8", "--min-accuracy", "0", "--timeout", "420",
               "--byzantine", "1:flip-bit", "--byzantine", "2:wrong-peers", "--byzantine", "3:equivocate"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=460)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    lines = output.splitlines()
    members = {line.split()[1]: line for line in lines if line.strip().startswith("member ")}
    assert "SLASHED" in members["node1"] and "SLASHED" in members["node2"] and "SLASHED" in members["node3"]
    honest = [line for name, line in members.items() if "honest" in line]
    assert honest and all("not slashed" in line for line in honest)
    assert any("fraud" in l and "node1" in l and "op update tensor update:0/bias" in l for l in lines), output[-3000:]
    assert any("fraud" in l and "node2" in l and "op merge" in l for l in lines), output[-3000:]
    assert any("equivocation" in l and "node3" in l for l in lines), output[-3000:]
    assert "first divergent op" in output
