"""Bootstrap miners' turns (node/roles/miner.py) and the devnet's settle check
(node/devnet.py), without processes: on a slow, loaded machine every bootstrap
miner used to mine at once after 4 s without a new head, making forks faster
than they propagated, and the devnet waited for one poll that caught every
node's chain in agreement two blocks below the lowest head."""
from __future__ import annotations

import io
import time
from http import HTTPStatus
from types import SimpleNamespace

from bws.node.api import ApiError
from bws.node.devnet import Devnet, DevnetOptions
from bws.node.roles import miner as miner_module
from bws.node.roles.miner import BOOTSTRAP_TURN_TIMEOUT_SECONDS, Miner
from bws.spec import containers as C
from bws.spec.constants import ROLE_MINER, TASK_TRAINING

NODES = 4


def address(n: int) -> bytes:
    return bytes([n + 1]) * 20


def task_id(n: int) -> bytes:
    return bytes([n + 1]) * 32


def bootstrap_state(height: int, last_task: bytes = bytes(32), parent_hash: bytes = bytes(32)):
    """A head state holding one bootstrap task per node (turn order: node n is turns[n])."""
    tasks = {task_id(n): SimpleNamespace(client=bytes(20), group_size=1, status=TASK_TRAINING,
                                         members=[SimpleNamespace(address=address(n))]) for n in range(NODES)}
    stakes = {C.StakeKey(owner=address(n), role=ROLE_MINER): 1 for n in range(NODES)}
    header = SimpleNamespace(height=height, task_id=last_task, parent_hash=parent_hash)
    return SimpleNamespace(tasks=tasks, stakes=stakes, height=height, latest_block_header=header)


def bare_miner(head_hash: bytes = b"h0") -> Miner:
    miner = Miner.__new__(Miner)   # only what the turn logic reads
    miner.context = SimpleNamespace(chain=SimpleNamespace(head=SimpleNamespace(hash=head_hash)))
    miner._head_hash, miner._head_since = head_hash, time.monotonic()
    miner._turn_intervals = miner_module.deque(maxlen=miner_module.BOOTSTRAP_TURN_SAMPLES)
    return miner


def may_mine(miner: Miner, state) -> list[int]:
    return [n for n in range(NODES) if miner._bootstrap_turn(state, task_id(n))]


def test_one_more_bootstrap_miner_may_mine_per_turn_timeout_never_all_at_once():
    miner, state = bare_miner(), bootstrap_state(height=5)   # height 5: node 1's turn (5 mod 4)
    assert may_mine(miner, state) == [1]
    timeout = miner.turn_timeout()
    miner._head_since = time.monotonic() - 1.5 * timeout
    assert may_mine(miner, state) == [1, 2]
    miner._head_since = time.monotonic() - 2.5 * timeout
    assert may_mine(miner, state) == [1, 2, 3]
    miner._head_since = time.monotonic() - 3.5 * timeout
    assert may_mine(miner, state) == [0, 1, 2, 3]


def test_a_slashed_bootstrap_miner_takes_no_turn():
    miner, state = bare_miner(), bootstrap_state(height=5)
    del state.stakes[C.StakeKey(owner=address(1), role=ROLE_MINER)]
    assert may_mine(miner, state) == [3]   # the turns are nodes 0, 2, 3: height 5 is turns[5 mod 3], node 3
    miner._head_since = time.monotonic() - 10 * miner.turn_timeout()
    assert may_mine(miner, state) == [0, 2, 3]


def test_the_turn_timeout_grows_with_the_observed_in_turn_block_interval():
    miner = bare_miner(b"h0")
    assert miner.turn_timeout() == BOOTSTRAP_TURN_TIMEOUT_SECONDS
    slow = 5.0
    for height in range(6, 6 + 5):
        # Block `height` extends the previous head and was mined by the miner whose turn it was (height - 1).
        new_head = b"h%d" % height
        miner._head_since -= slow
        miner.context.chain.head.hash = new_head
        miner._note_head(bootstrap_state(height, last_task=task_id((height - 1) % NODES), parent_hash=miner._head_hash))
        assert miner._head_hash == new_head
    assert abs(miner.turn_timeout() - 2 * slow) < 0.5
    # Out-of-turn blocks (a successor's, after a timeout) and reorgs do not count: the timeout cannot feed itself.
    for height in range(11, 11 + 20):
        miner._head_since -= 100.0
        miner.context.chain.head.hash = b"x%d" % height
        miner._note_head(bootstrap_state(height, last_task=task_id(height % NODES), parent_hash=miner._head_hash))
    assert abs(miner.turn_timeout() - 2 * slow) < 0.5
    miner._turn_intervals.extend([1000.0] * 16)
    assert miner.turn_timeout() == miner_module.BOOTSTRAP_TURN_TIMEOUT_MAX_SECONDS


class FakeApi:
    def __init__(self, chain: list[str], status: str = "finalized"):
        self.chain, self.status = chain, status

    def get(self, path: str) -> dict:
        if path.startswith("/block/"):
            height = int(path.rsplit("/", 1)[1])
            if height >= len(self.chain):
                raise ApiError(HTTPStatus.NOT_FOUND, f"no block {height}")
            return {"hash": self.chain[height]}
        if path.startswith("/task/"):
            if self.status is None:
                raise ApiError(HTTPStatus.NOT_FOUND, "no task")
            return {"status": self.status}
        raise AssertionError(path)


def devnet_with(chains: list[list[str]], blocks: int = 8, statuses=None) -> Devnet:
    devnet = Devnet(DevnetOptions(blocks=blocks), out=io.StringIO())
    devnet.task_id = bytes(32)
    statuses = statuses or ["finalized"] * len(chains)
    devnet.nodes = [SimpleNamespace(api=FakeApi(c, s)) for c, s in zip(chains, statuses)]
    return devnet


def snapshot(devnet: Devnet) -> dict:
    return {"metrics": [{"height": len(n.api.chain) - 1} for n in devnet.nodes], "observer_heights": []}


def test_settled_is_the_highest_common_height_below_racing_tips():
    common = [f"b{h}" for h in range(40)]
    chains = [common + [f"n{n}-{h}" for h in range(40, 40 + 3 + n)] for n in range(NODES)]  # forks 3 to 6 deep
    devnet = devnet_with(chains)
    assert devnet.settled_height(snapshot(devnet)) == 39
    # Tips that agree: two below the lowest head, as before.
    devnet = devnet_with([common[:30], common[:32], common, common])
    assert devnet.settled_height(snapshot(devnet)) == 27


def test_not_settled_below_blocks_or_while_a_node_does_not_hold_the_task_finalized():
    common = [f"b{h}" for h in range(12)]
    forked = [common[:6] + [f"n{n}-{h}" for h in range(6, 20)] for n in range(NODES)]
    devnet = devnet_with(forked)
    assert devnet.settled_height(snapshot(devnet)) is None   # they agree only up to 5 < --blocks 8
    devnet = devnet_with([common] * NODES, statuses=["finalized", "finalized", "evaluation", "finalized"])
    assert not devnet.finalized_everywhere()
    lagging = devnet_with([common] * NODES, statuses=["finalized", None, "finalized", "finalized"])
    assert not lagging.finalized_everywhere()   # its head does not know the task yet: 404, not a crash
    assert devnet_with([common] * NODES).finalized_everywhere()
