"""A node killed with SIGKILL during block import, again and again, restarts
consistent: the head is a fully imported block, its state is exactly the
spec's state after that block, and no acknowledged block is lost."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bws.node.store import ChainStore
from bws.spec.encoding import encode
from bws.spec.state_transition import compute_block_hash, compute_state_root
from tests.node.chain_factory import ChainFactory

ROOT = Path(__file__).resolve().parents[2]
SEED = 5


def write_blocks(path: Path, blocks) -> None:
    with open(path, "wb") as handle:
        for block in blocks:
            data = encode(block)
            handle.write(len(data).to_bytes(4, "little") + data)


@pytest.mark.slow
def test_sigkill_during_import_again_and_again(tmp_path):
    factory = ChainFactory(miners=2, seed=SEED)
    # A common prefix, then two competing branches, interleaved, so imports
    # connect, store side blocks and reorg back and forth (equal work: lowest
    # hash wins); branch b ends one block longer and wins.
    prefix = factory.chain(4, miner_of=lambda h: h % 2)
    a = factory.chain(3, state=prefix[-1][1], miner_of=lambda h: 0)
    b = factory.chain(4, state=prefix[-1][1], miner_of=lambda h: 1)
    interleaved = [blk for blk, _ in prefix] + [blk for pair in zip(a, b) for blk, _ in pair] + [b[-1][0]]
    roots = {compute_block_hash(blk): blk.header.state_root for blk, _ in prefix + a + b}
    roots[factory.genesis_hash] = factory.genesis_block.header.state_root
    blocks_file = tmp_path / "blocks.bin"
    write_blocks(blocks_file, interleaved)
    data_dir = tmp_path / "node"
    rng = random.Random(1)
    acknowledged: list[bytes] = []
    kills = 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(30):
        child = subprocess.Popen([sys.executable, "-m", "tests.node.crash_importer", str(data_dir), str(blocks_file), str(SEED)],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        lines = [child.stdout.readline().strip()]
        assert lines[0] == "ready"
        # Let it acknowledge a few blocks (so every round makes progress), then
        # kill it a random moment later: usually in the middle of the next import.
        for _ in range(rng.randint(1, 3)):
            lines.append(child.stdout.readline().strip())
            if lines[-1] in ("done", ""):
                break
        time.sleep(rng.uniform(0.0, 0.015))  # an import takes a few ms: a longer wait would often let the rest finish
        child.send_signal(signal.SIGKILL)
        output = "\n".join(lines) + "\n" + child.communicate()[0]
        finished = "done" in output
        acknowledged += [bytes.fromhex(line.split()[1]) for line in output.splitlines() if line.startswith("ack")]
        kills += not finished
        store = ChainStore(data_dir)
        head = store.head_record()
        assert head.hash in roots, "head is not one of the imported blocks"
        state = store.load_head_state()
        assert compute_state_root(state) == roots[head.hash], "head state is not the spec's state after the head"
        for block_hash in acknowledged:
            assert store.has_block(block_hash), "an acknowledged block was lost"
        if acknowledged:
            assert head.cumulative_work >= store.get_block_record(acknowledged[-1]).cumulative_work
        store.close()
        if finished:
            break
    assert finished, "the importer never got to the end"
    assert kills >= 3, "the importer was never killed mid-way; the test proves nothing"
    store = ChainStore(data_dir)
    assert store.head_hash() == compute_block_hash(b[-1][0])
    store.close()


@pytest.mark.slow
def test_sigkilled_node_process_restarts_consistent(tmp_path):
    """The real `bws node run`, fed blocks through its API and killed with
    SIGKILL while importing: every block it acknowledged survives, and the
    restarted node's head state is the spec's."""
    import json
    import threading

    from bws.node.api import ApiClient, ApiError
    from bws.node.service import write_genesis

    factory = ChainFactory(miners=2, seed=SEED + 1)
    blocks = [blk for blk, _ in factory.chain(9, miner_of=lambda h: h % 2)]
    roots = {compute_block_hash(blk): blk.header.state_root for blk in blocks}
    roots[factory.genesis_hash] = factory.genesis_block.header.state_root
    genesis = tmp_path / "genesis.json"
    write_genesis(genesis, factory.genesis)
    data_dir = tmp_path / "node"
    acknowledged: list[bytes] = []
    rng = random.Random(2)
    for round_ in range(3):
        node = subprocess.Popen([sys.executable, "-m", "bws.node.cli", "node", "run", "--data-dir", str(data_dir),
                                 "--genesis", str(genesis), "--api-port", "0", "--port", "0", "--log-level", "warning"],
                                cwd=ROOT, stdout=subprocess.DEVNULL)
        info = data_dir / "node.json"
        deadline = time.time() + 90
        while not (info.exists() and json.loads(info.read_text() or "{}").get("pid") == node.pid):
            assert node.poll() is None and time.time() < deadline, "node did not start"
            time.sleep(0.1)
        client = ApiClient(json.loads(info.read_text())["api"], timeout=10)

        def feed():
            for block in blocks:
                try:
                    answer = client.post("/block", {"block": encode(block).hex()})
                except ApiError:
                    return  # the node is gone
                if answer["status"] in ("connected", "known"):
                    acknowledged.append(bytes.fromhex(answer["hash"]))

        feeder = threading.Thread(target=feed)
        feeder.start()
        time.sleep(rng.uniform(0.05, 0.3))
        node.send_signal(signal.SIGKILL)
        node.wait()
        feeder.join()
        store = ChainStore(data_dir)
        head = store.head_record()
        assert compute_state_root(store.load_head_state()) == roots[head.hash]
        assert all(store.has_block(block_hash) for block_hash in acknowledged), "an acknowledged block was lost"
        store.close()
    assert acknowledged, "no block was ever acknowledged; the test proves nothing"
