"""Node benchmarks: signature verification and block validation.

    .venv/bin/python bench/node.py              # prints, and updates bench/RESULTS.md
    .venv/bin/python bench/node.py --no-write

Figures (one run):
- secp256k1 signatures verified per second: the node's libsecp256k1 path
  (node/keys.py, coincurve) against the spec's python-ecdsa, same signatures.
- block validation time (store + precheck + state transition + commit), per
  block, without replay and with the replay of the block's iteration by the
  engine, each as a ratio to one iteration's compute (the digits DNN of the
  `dnn` template, 64-128-64-10, batch 32, jitted, after compilation).
- block transition per block, the node's (node/transition.py) against the
  spec's `state_transition`, on the same blocks in one run, with 25 and 1005
  accounts in the state.
- the share of a miner's time that is not useful work: (the miner's wall
  time per iteration - the bare engine loop's) / the miner's, for the devnet's
  digits DNN, a larger DNN and the cnn template's CNN, each against the bare engine loop on the same
  model and batches in the same run; the miner is a lone in-process node
  (its own DuckDB chain, always its turn, no pacing, no peers to wait for)
  with the proving thread, and without it (everything on one thread).
- resident memory of an idle node process (`bws node run`, peer role), and of
  the mining nodes of a 4-node devnet (`bws devnet`'s processes, bootstrap
  mining, every role) once they have mined some blocks;
- gossip latency of a block across that devnet: for each block and each node
  but its miner, when the node received it minus when its miner published it
  (`GET /gossip` on every node; one machine, one clock), p50 and p99.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test chain factory lives in tests/node

RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN, END = "<!-- node:begin -->", "<!-- node:end -->"
DNN = {"input_shape": [64], "layers": [{"type": "dense", "units": 128, "activation": "relu"},
                                       {"type": "dense", "units": 64, "activation": "relu"},
                                       {"type": "dense", "units": 10, "activation": "softmax"}],
       "loss": {"type": "softmax_cross_entropy"}, "optimizer": {"type": "adam", "learning_rate": 0.003}, "slices": 2}
BATCH_SIZE = 32
DEVNET_NODES = 4
# A genesis target at which a lone miner finds a block about once in a thousand
# iterations, as a miner among many does: what proving costs when blocks are rare.
RARE_BLOCKS_TARGET = 2**244
DEVNET_TIMEOUT_SECONDS = 600


def bench_signatures(count: int) -> dict:
    from bws.node import keys
    from bws.spec import crypto
    from bws.spec.hashing import hash_bytes

    items = []
    for i in range(count):
        secret = hash_bytes(b"bench-key" + i.to_bytes(4, "little"))
        root = hash_bytes(b"bench-root" + i.to_bytes(4, "little"))
        items.append((keys.get_public_key(secret), root, keys.sign(secret, root)))
    started = time.perf_counter()
    assert all(crypto.is_valid_signature(*item) for item in items)
    ecdsa_rate = count / (time.perf_counter() - started)
    keys._parsed_public_key.cache_clear()  # measure with key parsing included
    started = time.perf_counter()
    assert all(keys.is_valid_signature(*item) for item in items)
    coincurve_rate = count / (time.perf_counter() - started)
    return {"ecdsa_per_s": ecdsa_rate, "coincurve_per_s": coincurve_rate}


def engine_replay():
    """(replay, seconds per iteration): a replay that re-executes one digits-DNN
    iteration with the engine on fixed inputs and returns its roots."""
    import numpy as np

    from bws import engine
    from bws.engine.commit import state_root, update_root
    from bws.spec import containers as C

    spec = engine.ModelSpec.from_dict(DNN)
    state = engine.init_state(spec, 0)
    rng = np.random.default_rng(0)
    batch = {"x": np.asarray(engine.quantize_inputs(rng.random((BATCH_SIZE, 64))), np.int32),
             "y": rng.integers(0, 10, BATCH_SIZE).astype(np.int32)}
    iteration = engine.make_iteration(spec)
    peers = engine.sum_updates([], spec)

    def compute():
        new_state, update, _ = iteration(state, batch, peers)
        return new_state, update

    compute()  # compile
    times = []
    for _ in range(20):
        started = time.perf_counter()
        new_state, update = compute()
        np.asarray(new_state["step"])  # wait for the result
        times.append(time.perf_counter() - started)
    seconds = min(times)  # best of 20: the shared machine's load only ever adds time

    def replay(task, message):
        new_state, update = compute()
        return C.ReplayResult(update_root=update_root(update), state_after_root=state_root(new_state))

    return replay, seconds


def bench_validation(blocks: int) -> dict:
    from bws.node.store import ChainStore
    from bws.node.validation import Chain
    from bws.spec.state_transition import Oracles
    from tests.node.chain_factory import ChainFactory, hash_evaluate, hash_replay

    replay, iteration_seconds = engine_replay()
    definition = json.dumps({"dataset": {"batch_size": BATCH_SIZE}, "model": DNN, "template": "dnn"},
                            sort_keys=True, separators=(",", ":")).encode()
    result = {"iteration_ms": iteration_seconds * 1000, "blocks": blocks}
    settings = {"without_replay": hash_replay, "with_replay": replay}
    chains, chain_blocks, times = {}, {}, {label: [] for label in settings}
    with tempfile.TemporaryDirectory() as directory:
        for label, chosen in settings.items():
            factory = ChainFactory(miners=2, seed=3, replay=chosen, task_definition=definition)
            chain_blocks[label] = [block for block, _ in factory.chain(blocks, miner_of=lambda h: h % 2)]
            chains[label] = Chain(ChainStore(Path(directory) / label), factory.genesis_state, factory.genesis_block,
                                  Oracles(replay=chosen, evaluate=hash_evaluate))
        # Interleaved, so that both settings see the same load on a shared machine.
        for index in range(blocks):
            for label, chain in chains.items():
                started = time.perf_counter()
                assert chain.import_block(chain_blocks[label][index]).status == "connected"
                times[label].append(time.perf_counter() - started)
        for chain in chains.values():
            chain.store.close()
    for label in settings:
        result[f"{label}_ms"] = min(times[label]) * 1000
    return result


def transition_section(blocks: int) -> str:
    """Block transition, node (node/transition.py) against spec (`state_transition`),
    on the same blocks in one run: a table, ms per block, best of `blocks`."""
    from bws.node import transition
    from bws.node.validation import precheck_block
    from bws.spec import state_transition as spec
    from tests.node.chain_factory import HASH_ORACLES, ChainFactory

    rows = []
    for accounts in (20, 1000):
        factory = ChainFactory(miners=2, seed=5, extra_accounts=accounts)
        senders = factory.users[:4]
        state, chain = factory.genesis_state, []
        for height in range(1, blocks + 1):
            transfers = [factory.transfer(user, factory.users[-1 - i].address, 1000, nonce=height - 1)
                         for i, user in enumerate(senders)]
            block, state = factory.next_block(state, transfers, miner=height % 2)
            chain.append(block)
        runs = {"spec": lambda s, b: spec.state_transition(s, b, HASH_ORACLES),
                "node": lambda s, b: transition.state_transition(s, b, HASH_ORACLES),
                "node, prechecked (as Chain runs it)": lambda s, b: transition.state_transition(s, b, HASH_ORACLES)}
        states = {label: factory.genesis_state for label in runs}
        times = {label: [] for label in runs}
        for block in chain:  # interleaved: every run sees the same load
            for label, run in runs.items():
                if label.startswith("node, prechecked"):  # untimed: gossip ran it when the block arrived
                    precheck_block(block, factory.genesis_state.config)
                else:
                    transition._signature_verdict.cache_clear()
                started = time.perf_counter()
                states[label] = run(states[label], block)
                times[label].append(time.perf_counter() - started)
        best = {label: min(seconds) * 1000 for label, seconds in times.items()}
        for label in runs:
            ratio = "1x" if label == "spec" else f"{best['spec'] / best[label]:.1f}x faster"
            rows.append(f"| {len(state.accounts)} | {label} | {best[label]:.2f} ms | {ratio} |")
    return "\n".join([
        f"Block transition, the node's (node/transition.py: the spec's rules on the node's primitives) against the "
        f"spec's `state_transition` on its own, on the same "
        f"{blocks} blocks (4 transfers each, hash replay) in one run, each on its own previous post-state, best of "
        f"{blocks}:", "",
        "| accounts in the state | transition | per block | vs spec |", "| --- | --- | --- | --- |", *rows])


def idle_node_rss_mb() -> float:
    from bws.node.service import write_genesis
    from tests.node.chain_factory import ChainFactory

    with tempfile.TemporaryDirectory() as directory:
        genesis = Path(directory) / "genesis.json"
        write_genesis(genesis, ChainFactory(seed=4).genesis)
        data_dir = Path(directory) / "node"
        process = subprocess.Popen([sys.executable, "-m", "bws.node.cli", "node", "run", "--data-dir", str(data_dir),
                                    "--genesis", str(genesis), "--api-port", "0", "--port", "0",
                                    "--log-level", "warning"],
                                   stdout=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            while not (data_dir / "node.json").exists() and time.time() < deadline:
                time.sleep(0.2)
            time.sleep(3)  # settle
            return rss_mb(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


# -- a miner's time that is not useful work -----------------------------------
class Offline:
    """The network of a lone in-process miner: no peers; what it publishes goes nowhere."""

    def peers(self) -> list[str]:
        return []

    def publish(self, topic: str, data: bytes) -> None:
        return None

    def request(self, peer: str, protocol: str, data: bytes, timeout=None) -> bytes:
        from bws.node.p2p import NetworkError
        raise NetworkError("offline")


def miner_models(batches: int) -> dict:
    """Task definitions by label: the devnet's task, a larger DNN (about 10x the state) and
    the cnn template's CNN (more compute for its state) on the same digits, each with
    `batches` batches or more (a batch is trained once)."""
    from bws.node.devnet import DevnetOptions, build_task, group_size_for
    from bws.templates import jobs, keras

    def with_batches(make):
        return make(max(1, math.ceil(batches / make(1).dataset["num_batches"])))

    larger = keras.Sequential([keras.Input(shape=(64,)), jobs.layers.Dense(512, activation="relu"),
                               jobs.layers.Dense(256, activation="relu"),
                               jobs.layers.Dense(10, activation="softmax")], name="dnn")
    devnet = DevnetOptions()
    return {"the devnet's digits DNN 64-128-64-10, batch 128": build_task(
                dataclasses.replace(devnet, iterations=math.ceil(batches / group_size_for(devnet.nodes)))),
            "DNN 64-512-256-10, batch 256": with_batches(
                lambda epochs: jobs.make_task("dnn", "digits", model=larger, epochs=epochs, batch_size=256)),
            "the cnn template's CNN, batch 128": with_batches(
                lambda epochs: jobs.make_task("cnn", "digits", epochs=epochs, batch_size=128))}


def lone_miner(definition, directory: Path, library, initial_target: int | None = None):
    """A miner on an in-process node whose account is the genesis's only bootstrap
    miner; the devnet's genesis target unless `initial_target` is given."""
    from bws.node.devnet import derive_account, make_genesis
    from bws.node.mempool import Mempool
    from bws.node.roles.context import RoleContext
    from bws.node.roles.miner import Miner
    from bws.node.roles.verifier import NetworkReplay
    from bws.node.store import ChainStore
    from bws.node.validation import Chain
    from bws.spec.genesis import create_genesis_state, get_genesis_block

    account = derive_account(11, "miner")
    genesis = make_genesis([SimpleNamespace(account=account)], derive_account(11, "client"), definition,
                           timestamp=int(time.time()))
    if initial_target is not None:
        genesis = dataclasses.replace(genesis, config=dataclasses.replace(genesis.config, initial_target=initial_target))
    state = create_genesis_state(genesis)
    holder = {}
    chain = Chain(ChainStore(directory), state, get_genesis_block(state), NetworkReplay(lambda: holder["context"]))
    context = RoleContext(chain=chain, mempool=Mempool(chain.account_nonce), network=Offline(), account=account,
                          library=library, import_block=chain.import_block)
    holder["context"] = context
    return Miner(context)


def run_miner(miner, iterations: int) -> dict:
    """Seconds per iteration of `iterations` back to back, and what the miner's counters gained."""
    counters = ("training_us", "iteration_step_us", "proving_us", "blocks_mined", "iterations")
    before = {name: miner.context.metrics[name] for name in counters}
    started = time.perf_counter()
    for _ in range(iterations):
        miner._last_bootstrap = float("-inf")  # no pacing: a miner always at work
        if not miner.step():
            raise RuntimeError("the miner did not iterate")
    miner.wait_proven()
    seconds = (time.perf_counter() - started) / iterations
    return {"seconds": seconds, **{name: (miner.context.metrics[name] - before[name]) / iterations
                                   for name in counters}}


def run_engine(loaded, task, iterations: int) -> float:
    """Seconds per iteration of the bare engine loop: the same iterate call on the same batches."""
    import jax

    from bws.node.roles.library import flat, tree
    from bws.spec.tasks import compute_batch_index

    state = tree(flat(loaded.initial_state()))
    started = time.perf_counter()
    for i in range(iterations):
        state, _, _ = jax.block_until_ready(loaded.iterate(state, loaded.batch(compute_batch_index(task, i, 0)), []))
    return (time.perf_counter() - started) / iterations


def bench_miner_share(iterations: int, rounds: int) -> dict:
    from bws.node.roles.library import TaskLibrary

    results = {}
    library = TaskLibrary()
    with tempfile.TemporaryDirectory() as directory:
        warm_up = 10
        for number, (label, definition) in enumerate(miner_models(warm_up + rounds * iterations).items()):
            miners = {setting: lone_miner(definition, Path(directory) / f"{number}-{setting}", library, target)
                      for setting, target in (("pipelined", None), ("rare blocks", RARE_BLOCKS_TARGET),
                                              ("serial", None))}
            miners["pipelined"].start_proving()
            miners["rare blocks"].start_proving()
            state = miners["serial"].context.chain.head_state
            task = next(iter(state.tasks.values()))
            loaded = library.load(task)
            for miner in miners.values():
                run_miner(miner, warm_up)  # compile, first blocks
            run_engine(loaded, task, 5)
            runs = {"engine": [], **{setting: [] for setting in miners}}
            for _ in range(rounds):  # interleaved: every setting sees the same load on a shared machine
                runs["engine"].append({"seconds": run_engine(loaded, task, iterations)})
                for setting, miner in miners.items():
                    runs[setting].append(run_miner(miner, iterations))
            for miner in miners.values():
                miner.context.stop.set()
                miner.join(10)
                miner.context.chain.store.close()
            results[label] = {setting: min(values, key=lambda run: run["seconds"]) for setting, values in runs.items()}
    return results


def not_useful_share(miner_seconds: float, engine_seconds: float) -> float:
    return (miner_seconds - engine_seconds) / miner_seconds


# -- a devnet: mining nodes' memory, gossip latency --------------------------------
def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def block_gossip_latencies(gossip_by_node: list[dict], since: float) -> list[float]:
    """Seconds from a block's publication by its miner (at `since` or later) to its reception by each other node."""
    published = {digest: entry["at"] for gossip in gossip_by_node for digest, entry in gossip.items()
                 if entry["published"] and entry["at"] >= since}
    return [entry["at"] - published[digest] for gossip in gossip_by_node for digest, entry in gossip.items()
            if not entry["published"] and digest in published]


def bench_devnet(blocks: int) -> dict:
    """Start a devnet's nodes (no client task: they mine their bootstrap tasks); once
    every node is connected to every other, until every node has `blocks` more
    blocks; their memory and the gossip latency of the blocks published meanwhile."""
    import numpy as np

    from bws.node.devnet import Devnet, DevnetOptions
    from bws.node.p2p import TOPIC_BLOCK

    with tempfile.TemporaryDirectory() as directory:
        devnet = Devnet(DevnetOptions(nodes=DEVNET_NODES, data_dir=directory), out=io.StringIO())
        try:
            devnet.prepare()
            devnet.start_nodes()
            deadline = time.monotonic() + DEVNET_TIMEOUT_SECONDS

            def wait_until(condition, what: str) -> None:
                while not condition([n.api.get("/status") for n in devnet.nodes]):
                    devnet.check_alive()
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the devnet did not get {what} in {DEVNET_TIMEOUT_SECONDS} s")
                    time.sleep(1.0)

            wait_until(lambda statuses: all(s["peers"] == DEVNET_NODES - 1 for s in statuses), "fully connected")
            since = time.time()
            start = max(int(n.api.get("/status")["head"]["height"]) for n in devnet.nodes)
            wait_until(lambda statuses: min(s["head"]["height"] for s in statuses) >= start + blocks,
                       f"{blocks} blocks")
            rss = [rss_mb(n.process.pid) for n in devnet.nodes]
            gossip = [n.api.get("/gossip")[TOPIC_BLOCK] for n in devnet.nodes]
            mined = sum(n.api.get("/metrics")["roles"]["counters"].get("blocks_mined", 0) for n in devnet.nodes)
        finally:
            devnet.stop_nodes()
    latencies = block_gossip_latencies(gossip, since)
    if not latencies:
        raise RuntimeError("no block was both published and received in the devnet's gossip records")
    return {"nodes": DEVNET_NODES, "blocks": blocks, "blocks_mined": mined, "rss_mb": rss,
            "latency_samples": len(latencies), "latency_p50_ms": float(np.percentile(latencies, 50)) * 1000,
            "latency_p99_ms": float(np.percentile(latencies, 99)) * 1000}


def render(figures: dict) -> str:
    s, v = figures["signatures"], figures["validation"]
    iteration = v["iteration_ms"]
    lines = [
        "## node (node/keys.py, node/validation.py, node/store.py)",
        "",
        f"`python bench/node.py` — {datetime.date.today()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end (the machine is shared), Python {platform.python_version()}.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| signatures verified per second, libsecp256k1 (coincurve) | {s['coincurve_per_s']:,.0f} |",
        f"| signatures verified per second, python-ecdsa (spec) | {s['ecdsa_per_s']:,.0f} |",
        f"| libsecp256k1 / python-ecdsa | {s['coincurve_per_s'] / s['ecdsa_per_s']:.1f}x |",
        f"| one iteration's compute (digits DNN, batch {BATCH_SIZE}, engine, best of 20) | {iteration:.2f} ms |",
        f"| block validation without replay (best of {v['blocks']}) | {v['without_replay_ms']:.1f} ms = {v['without_replay_ms'] / iteration:.1f} iterations |",
        f"| block validation with replay (best of {v['blocks']}) | {v['with_replay_ms']:.1f} ms = {v['with_replay_ms'] / iteration:.1f} iterations |",
        f"| resident memory of an idle node (peer role) | {figures['idle_rss_mb']:.0f} MB |",
    ]
    d = figures["devnet"]
    lines += [
        f"| resident memory of a mining node ({d['nodes']}-node devnet, every role, after {d['blocks']} blocks), "
        f"mean / max | {sum(d['rss_mb']) / len(d['rss_mb']):.0f} MB / {max(d['rss_mb']):.0f} MB = "
        f"{max(d['rss_mb']) / figures['idle_rss_mb']:.1f}x the idle node |",
        f"| gossip latency of a block across that devnet, miner's publication to each other node's reception, "
        f"p50 / p99 ({d['latency_samples']} receptions) | {d['latency_p50_ms']:.0f} ms / {d['latency_p99_ms']:.0f} ms |",
        "",
        "A miner's time that is not useful work: (miner's wall time per iteration - the bare engine loop's) / the "
        "miner's. The miner is a lone in-process node (its own DuckDB chain, always its turn, no pacing, no peers), "
        f"{figures['miner_iterations']} iterations back to back, best of {figures['miner_rounds']} rounds interleaved "
        "with the bare engine loop (the same `LoadedTask.iterate` on the same batches); blocks at the devnet's "
        "genesis target (a block every few iterations) or a target at which blocks are rare, as for one miner "
        "among many. The proving thread works beside the engine: the miner's pace is the slower of the two, and "
        "the proving thread's work (the roots of the whole state and update, the signed message, the nonce "
        "trials, and for a block the node's transition and the DuckDB import) is mostly Python, which runs one thread at "
        "a time.",
        "",
        "| model | setting | wall time per iteration | not useful | proving thread busy per iteration "
        "| blocks per iteration |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    settings = {"engine": "bare engine loop (baseline)", "pipelined": "miner, proving thread",
                "serial": "miner, one thread (no proving thread)",
                "rare blocks": "miner, proving thread, blocks rare (genesis target 2^244)"}
    for label, runs in figures["miner"].items():
        engine = runs["engine"]["seconds"]
        for setting, title in settings.items():
            run = runs[setting]
            share = "" if setting == "engine" else f"{100 * not_useful_share(run['seconds'], engine):.1f} %"
            busy = f"{run['proving_us'] / 1000:.1f} ms" if run.get("proving_us") and setting != "serial" else ""
            blocks = f"{run['blocks_mined']:.3f}" if "blocks_mined" in run else ""
            lines.append(f"| {label} | {title} | {run['seconds'] * 1000:.1f} ms | {share} | {busy} | {blocks} |")
    return "\n".join(lines)


def write_results(text: str) -> None:
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in current:
        current = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: section, current, flags=re.S)
    else:
        current = current.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(current)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signatures", type=int, default=300, help="signatures per implementation (default 300)")
    parser.add_argument("--blocks", type=int, default=10, help="blocks validated per setting (default 10)")
    parser.add_argument("--miner-iterations", type=int, default=60, help="iterations per miner run (default 60)")
    parser.add_argument("--miner-rounds", type=int, default=3, help="rounds of miner runs, best kept (default 3)")
    parser.add_argument("--devnet-blocks", type=int, default=30,
                        help="blocks every devnet node must have before its memory and gossip are read (default 30)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    figures = {"signatures": bench_signatures(args.signatures), "validation": bench_validation(args.blocks),
               "idle_rss_mb": idle_node_rss_mb(), "miner": bench_miner_share(args.miner_iterations, args.miner_rounds),
               "miner_iterations": args.miner_iterations, "miner_rounds": args.miner_rounds,
               "devnet": bench_devnet(args.devnet_blocks)}
    text = render(figures) + "\n\n" + transition_section(args.blocks)
    print(text)
    if not args.no_write:
        write_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
