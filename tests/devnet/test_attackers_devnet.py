"""`bws devnet --byzantine N:KIND` with issue #14's network attackers and
`--restart-every`, end to end as separate processes: one node submits poison
tasks, junk fraud proofs and a task nobody can train, and floods the task
topic, while an honest member of the group is killed with SIGKILL and
restarted. The devnet itself fails (non-zero exit) unless every attack failed
as expected (node/devnet_attacks.py `attack_failures`): nothing poisoned
landed, every false accusation that landed cost its penalty, the stalled task
expired and was refunded, no flood message was kept, the restarted miner
resumed its training, no honest stake was slashed, and the honest task was
finalized. The output is checked here too. One run of five nodes: about
two minutes on a 2-core machine."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.timeout(480)
def test_network_attackers_and_restarts_fail_and_the_honest_task_finalizes(tmp_path):
    command = [sys.executable, "-m", "bws.node.cli", "devnet", "--data-dir", str(tmp_path / "devnet"), "--seed", "3",
               "--nodes", "5", "--iterations", "40", "--min-accuracy", "0", "--timeout", "420",
               "--restart-every", "10"]   # the first kill 10 s after the group is drawn: well inside its training
    for kind in ("poison-task", "junk-fraud-proofs", "stall-task", "flood-messages"):
        command += ["--byzantine", f"4:{kind}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=460)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    lines = {line.split()[1]: line for line in output.splitlines()
             if line.startswith("    ") and len(line.split()) > 2 and line.split()[0] in ("node0", "node1", "node2",
                                                                                         "node3", "node4")}
    assert "0 on chain" in lines["poison-task"] and "cost 0.00000000 BWS" in lines["poison-task"], output[-3000:]
    assert "false accusations" in lines["junk-fraud-proofs"], output[-3000:]
    assert "the stalled task expired" in lines["stall-task"], output[-3000:]
    assert "honest nodes kept 0" in lines["flood-messages"], output[-3000:]
    restarts = lines["restart-every"]
    assert "restarted 0 times" not in restarts and "resumed its training 0 times" not in restarts, output[-3000:]
    assert "(SIGKILL) and started it again" in output
