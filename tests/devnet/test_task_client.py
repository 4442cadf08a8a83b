"""The client role from the command line against a running devnet's nodes:
`bws task submit` a task file whose test split is withheld, `bws task reveal`
refused while the task trains, then `bws task reveal --wait` hands it over in
evaluation, `bws task status --watch` follows it to the end, `bws task result`
reads the scores from the chain and downloads the best model over /bws/data/1,
and `--check` scores that model again on the client's side: the same score."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bws.node.devnet import Devnet, DevnetOptions
from bws.node.wallet import save_keystore

pytestmark = pytest.mark.slow


def bws(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bws.node.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(420)
def test_submit_status_result_through_the_cli(tmp_path):
    devnet = Devnet(DevnetOptions(nodes=4, iterations=10, data_dir=str(tmp_path / "devnet"), seed=5))
    try:
        devnet.prepare()
        devnet.start_nodes()
        keystore, password = tmp_path / "client.json", tmp_path / "password"
        password.write_text("client password")
        save_keystore(keystore, devnet.client_account, "client password", scrypt_n=2**12)
        api = devnet.nodes[0].api.url
        submitted = bws("task", "submit", str(devnet.root / "task.json"), "--keystore", str(keystore),
                        "--password-file", str(password), "--api", api, "--group-size", "2", "--iterations", "10",
                        "--payment", "5", "--deadline-blocks", "24")
        assert submitted.returncode == 0, submitted.stderr
        task_id = submitted.stdout.strip()
        assert len(task_id) == 64
        assert "its test split is withheld: reveal it in evaluation" in submitted.stderr

        reveal = ("task", "reveal", str(devnet.root / "task.json"), "--test-file", str(devnet.root / "client_test.npz"),
                  "--api", api)
        early = bws(*reveal)
        # Refused: the genesis's bootstrap tasks (same definition) train, and the submitted one is not in evaluation.
        assert early.returncode == 1 and "not in evaluation yet" in early.stderr, early.stderr
        revealed = bws(*reveal, "--wait", "--task-id", task_id, timeout=300)
        assert revealed.returncode == 0, revealed.stderr
        assert f"of task {task_id}" in revealed.stdout and "task evaluation" in revealed.stderr
        assert devnet.nodes[0].api.get(f"/task/{task_id}")["test_split_withheld"] is True

        watched = bws("task", "status", task_id, "--api", api, "--watch", timeout=300)
        assert watched.returncode == 0, watched.stderr
        assert watched.stdout.strip().splitlines()[-1].startswith("finalized:"), watched.stdout

        scores = bws("task", "result", task_id, "--api", api)
        assert scores.returncode == 0, scores.stderr
        best_line = next(line for line in scores.stdout.splitlines() if line.endswith("<- best"))
        best_node = next(n for n in devnet.nodes if n.account.address.hex() == best_line.split()[0])
        output = tmp_path / "model.npz"
        result = bws("task", "result", task_id, "--api", best_node.api.url, "--output", str(output))
        assert result.returncode == 0, result.stderr
        checked = bws("task", "result", task_id, "--api", best_node.api.url, "--check", str(devnet.root / "task.json"),
                      "--test-file", str(devnet.root / "client_test.npz"))
        assert checked.returncode == 0, checked.stderr
        assert "on the test split; the evaluator reported" in checked.stdout and ": the same" in checked.stdout
        unchecked = bws("task", "result", task_id, "--api", best_node.api.url, "--check", str(devnet.root / "task.json"))
        assert unchecked.returncode == 1 and "give the client's --test-file" in unchecked.stderr
        model = np.load(output)
        assert any(name.startswith("params/") for name in model.files)
        assert all(model[name].dtype.kind in "iu" for name in model.files)  # fixed-point integers only

        refused = bws("task", "status", "00" * 31, "--api", api)
        assert refused.returncode == 1 and "task id is 64 hex characters" in refused.stderr
    finally:
        devnet.stop_nodes()
