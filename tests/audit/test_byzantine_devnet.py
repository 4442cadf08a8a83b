"""`bws devnet --byzantine`, end to end as separate processes: cheating
nodes are disputed (by the task's supervisor or a verifier), slashed on
chain, and the auditor's replay (over libp2p, from the running nodes)
localizes each fraud to the expected op; the honest miner is not slashed.
The devnet itself fails (non-zero exit) unless all of that holds
(node/audit_devnet.py), and the output is checked here too.

Two runs, so each fits a 2-core machine: three cheats among six nodes, and
the fourth (a miner that skips the work) among four."""
from __future__ import annotations

import subprocess
import sys

import duckdb
import pytest

from bws.node.devnet import derive_account
from bws.node.service import load_genesis
from bws.spec.tasks import compute_task_id

pytestmark = pytest.mark.slow


def run_byzantine_devnet(data_dir, nodes: int, iterations: int, *byzantine: str,
                         observers: int = 0) -> tuple[str, dict[str, str]]:
    """The devnet's output and its member lines by node name; fails unless the devnet passed."""
    command = [sys.executable, "-m", "bws.node.cli", "devnet", "--data-dir", str(data_dir), "--seed", "3",
               "--nodes", str(nodes), "--iterations", str(iterations), "--min-accuracy", "0", "--timeout", "420",
               "--observers", str(observers)]
    for value in byzantine:
        command += ["--byzantine", value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=460)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    members = {line.split()[1]: line for line in output.splitlines() if line.strip().startswith("member ")}
    honest = [line for line in members.values() if "honest" in line]
    assert honest and all("not slashed" in line for line in honest), output[-3000:]
    return output, members


@pytest.mark.timeout(480)
def test_cheats_are_disputed_localized_and_slashed_and_the_honest_miner_is_not(tmp_path):
    data_dir = tmp_path / "devnet"
    output, members = run_byzantine_devnet(data_dir, 6, 8, "1:flip-bit", "2:wrong-peers", "3:equivocate", observers=1)
    lines = output.splitlines()
    assert "SLASHED" in members["node1"] and "SLASHED" in members["node2"] and "SLASHED" in members["node3"]
    assert any("fraud" in l and "node1" in l and "op update tensor update:0/bias" in l for l in lines), output[-3000:]
    assert any("fraud" in l and "node2" in l and "op merge" in l for l in lines), output[-3000:]
    assert any("equivocation" in l and "node3" in l for l in lines), output[-3000:]
    assert "first divergent op" in output
    # A node that replays nothing took the disputes' outcomes from the state roots: the same chain, nothing refused.
    assert "observers (peer role, no replay): same chain, blocks rejected observer0 0" in output

    # The stopped nodes' stores answer the auditor's queries (docs/audit.md).
    for store in ("node0", "observer0"):
        listed = subprocess.run([sys.executable, "-m", "bws.node.cli", "audit", "disputes", "--data-dir",
                                 str(data_dir / store)], capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0, listed.stderr
        assert "3 dispute(s) on the main chain" in listed.stdout
    cheats = {derive_account(3, f"node{i}").address.hex() for i in (1, 2, 3)}
    accused = {line.split("accused ")[1].split()[0] for line in listed.stdout.splitlines() if "accused" in line}
    assert accused == cheats
    db = duckdb.connect(str(data_dir / "node0" / "chain.duckdb"), read_only=True)
    disputes = db.execute("""
        SELECT b.height, hex(t.tx_id) AS tx, hex(t.sender) AS disputer, t.fee, hex(b.hash) AS block
        FROM transactions t JOIN main_chain b ON b.hash = t.block_hash
        WHERE t.kind = 'Dispute' ORDER BY b.height, t.position""").fetchall()
    assert len(disputes) == 3
    chain_id = load_genesis(data_dir / "genesis.json").config.chain_id
    task_id = bytes(compute_task_id(chain_id, derive_account(3, "client").address, 0)).hex()
    equivocations = db.execute("""
        SELECT iteration, lower(hex(miner)) AS miner, count(*) AS messages
        FROM iteration_messages WHERE task_id = from_hex(?)
        GROUP BY iteration, miner HAVING count(*) > 1""", [task_id]).fetchall()
    assert {miner for _, miner, _ in equivocations} == {derive_account(3, "node3").address.hex()}
    db.close()


@pytest.mark.timeout(480)
def test_a_miner_that_skips_the_work_is_slashed_and_its_audit_names_the_update_and_no_intermediates(tmp_path):
    output, members = run_byzantine_devnet(tmp_path / "devnet", 4, 6, "1:random-update")
    assert "SLASHED" in members["node1"] and "byzantine random-update" in members["node1"]
    lines = output.splitlines()
    assert any("fraud" in l and "against node1" in l and "op - tensor update:0/bias" in l for l in lines), output[-3000:]
    assert "provides no intermediate commitments" in output
