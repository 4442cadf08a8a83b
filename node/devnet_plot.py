"""The devnet's picture of a run, `D/devnet.png`, read from node 0's chain
store once the nodes have stopped: each group member's training loss by
iteration (from the iteration messages every node records), with its final
model's test accuracy, and the chain's growth over time, the blocks mined from
the client task's iterations marked apart from the bootstrap tasks' blocks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .store import ChainStore

LOSS_SCALE = 1 << 16   # an iteration message's loss has 16 fractional bits


@dataclass
class RunTrace:
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)   # member -> (iteration, loss)
    blocks: list[tuple[int, int, bool]] = field(default_factory=list)          # (height, timestamp, from the task)


def read_run_trace(data_dir: Path, task_id: bytes, names: dict[str, str], height: int) -> RunTrace:
    """The task's iteration losses by member (named through `names`, address hex -> name) and the main
    chain's blocks up to `height`, from a stopped node's store."""
    store = ChainStore(data_dir, read_only=True)
    try:
        trace = RunTrace()
        for signed in store.iteration_messages(task_id):
            work = signed.message.work
            member = names.get(bytes(work.miner).hex(), bytes(work.miner).hex()[:12])
            trace.losses.setdefault(member, []).append((int(work.iteration), int(work.loss) / LOSS_SCALE))
        for block_height in range(1, height + 1):
            block_hash = store.main_chain_hash(block_height)
            if block_hash is None:
                break
            header = store.get_block_record(block_hash).block().header
            trace.blocks.append((block_height, int(header.timestamp), bytes(header.task_id) == task_id))
        return trace
    finally:
        store.close()


def plot_run(trace: RunTrace, accuracies: dict[str, float], path: Path, title: str) -> None:
    """Two panels: loss by iteration per member (accuracy in the legend), height over seconds since block 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, chain) = plt.subplots(1, 2, figsize=(12, 4.5))
    for member, points in sorted(trace.losses.items()):
        points.sort()
        accuracy = accuracies.get(member)
        label = member + (f" (test accuracy {accuracy * 100:.2f}%)" if accuracy is not None else "")
        losses.plot([i for i, _ in points], [loss for _, loss in points], marker=".", markersize=3, label=label)
    losses.set_yscale("log")
    losses.set_xlabel("iteration")
    losses.set_ylabel("training loss (iteration message)")
    losses.set_title("the group's training")
    if trace.losses:
        losses.legend()
    if trace.blocks:
        start = trace.blocks[0][1]
        seconds = [timestamp - start for _, timestamp, _ in trace.blocks]
        chain.step(seconds, [height for height, _, _ in trace.blocks], where="post", color="0.6", linewidth=1)
        for from_task, marker, label in ((True, "o", "from the client task's iterations"),
                                         (False, "x", "from the bootstrap tasks")):
            chosen = [(s, h) for s, (h, _, t) in zip(seconds, trace.blocks) if t == from_task]
            if chosen:
                chain.scatter([s for s, _ in chosen], [h for _, h in chosen], marker=marker, s=18, label=label)
        chain.legend()
    chain.set_xlabel("seconds since block 1 (block timestamps)")
    chain.set_ylabel("height")
    chain.set_title("the chain")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
