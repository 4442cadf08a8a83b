"""`bws chain genesis`: a chain of its own (chain id), a chain that mines
(stakes, bootstrap tasks), `--check`, and genesis files as people write them."""
import dataclasses
import json
import subprocess
import sys

import pytest

from bws.node import genesis as G
from bws.node.service import NodeError, load_genesis, read_genesis, write_genesis
from bws.node.store import ChainStore
from bws.node.validation import Chain, TransactionRejected
from bws.spec import containers as C
from bws.spec.constants import ROLE_MINER
from bws.spec.genesis import InvalidGenesis, create_genesis_state, get_genesis_block
from bws.spec.presets import COIN, DEVNET
from bws.spec.state_transition import InvalidTransaction, Oracles, apply_transaction, sign_transaction
from tests.node.chain_factory import Key, secret_key

BWS = [sys.executable, "-m", "bws.node.cli"]
ALICE, BOB, CAROL = (Key(secret_key(name, 15)) for name in ("alice", "bob", "carol"))


def bws(*args):
    return subprocess.run(BWS + [str(a) for a in args], capture_output=True, text=True, timeout=120)


def nothing(*arguments):
    raise AssertionError("a transfer replays and evaluates nothing")


NO_ORACLES = Oracles(replay=nothing, evaluate=nothing)


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    """A task file as `bws task new -o` writes it: canonical JSON, then a newline."""
    path = tmp_path_factory.mktemp("task") / "task.json"
    result = bws("task", "new", "--template", "dnn", "--dataset", "digits", "--batch-size", "128", "-o", path)
    assert result.returncode == 0, result.stderr
    assert path.read_bytes().endswith(b"}\n")
    return path


@pytest.fixture(scope="module")
def mining_genesis(tmp_path_factory, task_file):
    """A genesis from the command line: two bootstrap miners on the task file, stakes for the other roles, funds."""
    path = tmp_path_factory.mktemp("genesis") / "genesis.json"
    result = bws("chain", "genesis", "--out", path, "--miner", ALICE.address.hex(), "--miner", BOB.address.hex(),
                 "--stake", f"{ALICE.address.hex()}:supervisor", "--stake", f"{BOB.address.hex()}:evaluator:25",
                 "--stake", f"{CAROL.address.hex()}:miner:30", "--fund", f"{ALICE.address.hex()}:1000",
                 "--bootstrap-task", task_file, "--chain-id", 4242)
    assert result.returncode == 0, result.stderr
    assert "chain id 4242" in result.stdout and "2 bootstrap miners" in result.stdout
    return path


def test_the_command_writes_a_genesis_that_mines(mining_genesis, task_file):
    genesis = load_genesis(mining_genesis)
    assert genesis.config == dataclasses.replace(DEVNET, chain_id=4242)
    stakes = {(bytes(s.owner), int(s.role)): int(s.amount) for s in genesis.stakes}
    assert stakes == {(ALICE.address, 1): DEVNET.supervisor_ticket_price, (BOB.address, 2): 25 * COIN,
                      (CAROL.address, ROLE_MINER): 30 * COIN, (ALICE.address, ROLE_MINER): DEVNET.miner_ticket_price,
                      (BOB.address, ROLE_MINER): DEVNET.miner_ticket_price}
    # One bootstrap task per miner, on the task file's canonical bytes (its newline is no part of the definition).
    assert [[bytes(m) for m in t.members] for t in genesis.tasks] == [[ALICE.address], [BOB.address]]
    assert {bytes(t.task_definition) for t in genesis.tasks} == {task_file.read_bytes().rstrip(b"\n")}
    assert all(t.client == bytes(20) and t.iterations == t.num_batches for t in genesis.tasks)
    assert G.mining_problems(genesis) == []
    result = bws("chain", "genesis", "--check", mining_genesis)
    assert result.returncode == 0, result.stdout
    assert "this genesis can mine (chain id 4242" in result.stdout


def test_two_genesis_files_of_one_preset_are_two_chains(tmp_path):
    """Each gets a chain id of its own; a transfer signed for one is invalid on
    the other, by the spec and at the node's mempool admission."""
    paths = [tmp_path / f"genesis{i}.json" for i in range(2)]
    for path in paths:
        result = bws("chain", "genesis", "--out", path, "--preset", "devnet", "--fund", f"{ALICE.address.hex()}:10")
        assert result.returncode == 0, result.stderr
    first, second = (load_genesis(path) for path in paths)
    assert first.config.chain_id != second.config.chain_id
    assert DEVNET.chain_id not in (first.config.chain_id, second.config.chain_id)
    assert dataclasses.replace(first.config, chain_id=DEVNET.chain_id) == DEVNET   # the preset's parameters otherwise

    transfer = C.Transaction(chain_id=first.config.chain_id, sender=ALICE.address, nonce=0,
                             fee=DEVNET.min_transaction_fee, body=C.Transfer(recipient=BOB.address, amount=COIN))
    signed = sign_transaction(ALICE.secret, transfer)
    states = [create_genesis_state(genesis) for genesis in (first, second)]
    apply_transaction(states[0], signed, CAROL.address, NO_ORACLES)
    with pytest.raises(InvalidTransaction, match="wrong chain id"):
        apply_transaction(states[1], signed, CAROL.address, NO_ORACLES)

    chains = [Chain(ChainStore(tmp_path / f"store{i}"), state, get_genesis_block(state), None)
              for i, state in enumerate(states)]
    chains[0].check_transaction(signed)
    with pytest.raises(TransactionRejected, match=f"wrong chain id {first.config.chain_id}"):
        chains[1].check_transaction(signed)
    for chain in chains:
        chain.store.close()


def test_draw_chain_id_is_never_a_presets():
    drawn = {G.draw_chain_id() for _ in range(200)}
    assert len(drawn) > 190 and not drawn & {DEVNET.chain_id, 0xB5}
    assert all(0 < chain_id < 2**32 for chain_id in drawn)


def edited(genesis: C.GenesisConfig, **changes) -> C.GenesisConfig:
    return dataclasses.replace(genesis, **changes)


def test_check_explains_a_genesis_that_cannot_mine(mining_genesis, tmp_path):
    genesis = load_genesis(mining_genesis)
    task = genesis.tasks[0]
    assert G.mining_problems(edited(genesis, tasks=[])) == [
        "no bootstrap task: every block proves an iteration of a task in training, and this genesis has none "
        "(bws chain genesis --miner ADDRESS --bootstrap-dataset NAME)"]
    unstaked = [s for s in genesis.stakes if s.role != ROLE_MINER or bytes(s.owner) == CAROL.address]
    problems = G.mining_problems(edited(genesis, stakes=unstaked))
    assert problems[0].startswith(f"genesis task 0: none of its members ({ALICE.address.hex()}) holds a miner stake")
    assert problems[-1] == "no genesis task can be mined, so no block can be"
    too_many = dataclasses.replace(task, iterations=task.num_batches + 1)
    assert any("do not fit" in p for p in G.mining_problems(edited(genesis, tasks=[too_many, genesis.tasks[1]])))
    stingy = dataclasses.replace(genesis.config, work_units_per_nonce=10**15)
    problems = G.mining_problems(edited(genesis, config=stingy))
    assert problems[0].startswith("no node loads this genesis: genesis task 0:") and "earn no nonce" in problems[0]
    assert "genesis task 1:" in problems[1] and "earn no nonce" in problems[1]
    short = dataclasses.replace(task, evaluation_deadline=DEVNET.evaluation_period + 1)
    assert any("ends its training before block 1" in p for p in G.mining_problems(edited(genesis, tasks=[short])))
    elsewhere = dataclasses.replace(task, dataset_root=bytes(32))
    problems = G.mining_problems(edited(genesis, tasks=[elsewhere]))
    assert any("is not its definition's batches root" in p for p in problems)

    bad = tmp_path / "bad.json"
    write_genesis(bad, edited(genesis, stakes=unstaked, tasks=[too_many]))
    result = bws("chain", "genesis", "--check", bad)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{bad}: this genesis cannot mine:"
    assert any("none of its members" in line for line in lines) and any("do not fit" in line for line in lines)
    assert "Traceback" not in result.stderr


def test_a_task_file_with_its_trailing_newline_loads_as_a_genesis_task(mining_genesis, task_file, tmp_path):
    """A hand-made genesis holding a task file's bytes, newline included, loads
    with the canonical definition; the spec itself still refuses the newline."""
    document = json.loads(mining_genesis.read_text())
    document["tasks"][0]["task_definition"] = task_file.read_bytes().hex()
    path = tmp_path / "hand-made.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    genesis = load_genesis(path)
    assert genesis == load_genesis(mining_genesis)
    newline = dataclasses.replace(genesis.tasks[0], task_definition=task_file.read_bytes())
    with pytest.raises(InvalidGenesis, match="not canonical JSON"):
        create_genesis_state(edited(genesis, tasks=[newline]))
    document["tasks"][0]["task_definition"] = json.dumps(json.loads(task_file.read_bytes()), indent=1).encode().hex()
    path.write_text(json.dumps(document))
    with pytest.raises(NodeError, match="not canonical JSON"):
        load_genesis(path)


def test_a_preset_genesis_names_its_own_chain_id(tmp_path):
    path = tmp_path / "genesis.json"
    path.write_text('{"preset": "devnet", "timestamp": 1, "accounts": [], "stakes": [], "tasks": []}')
    with pytest.raises(NodeError, match='gives its network\'s own "chain_id" too'):
        read_genesis(path)
    path.write_text('{"preset": "devnet", "chain_id": 9, "timestamp": 1, "accounts": [], "stakes": [], "tasks": []}')
    assert load_genesis(path).config == dataclasses.replace(DEVNET, chain_id=9)


@pytest.mark.parametrize("args, message", [
    (["--miner", "11" * 20, "--miner", "11" * 20], f"bootstrap miner {'11' * 20} is given twice"),
    (["--stake", f"{'11' * 20}:wizard"], "the role is one of miner, supervisor, evaluator, got 'wizard'"),
    (["--stake", f"{'11' * 20}:miner:-3"], "is not a positive amount of coins"),
    (["--stake", "11:miner"], "an address is 40 hex characters"),
    (["--stake", f"{'11' * 20}:miner", "--stake", f"{'11' * 20}:miner:4"], "is staked twice as miner"),
    (["--fund", f"{'11' * 20}:1", "--fund", f"{'11' * 20}:2"], "is funded twice"),
    (["--bootstrap-dataset", "digits"], "--bootstrap-dataset sets what the bootstrap miners train"),
    (["--miner", "11" * 20, "--bootstrap-task", "t.json", "--bootstrap-iterations", "5"],
     "drop --bootstrap-iterations"),
    (["--miner", "11" * 20, "--bootstrap-task", "missing.json"], "cannot read task file"),
    (["--chain-id", str(2**32)], "out of range"),
])
def test_bad_genesis_flags_are_one_line_errors(tmp_path, args, message):
    result = bws("chain", "genesis", "--out", tmp_path / "g.json", *args)
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "g.json").exists()


def test_help():
    genesis_help = bws("chain", "genesis", "--help").stdout
    for flag in ("--out", "--check", "--preset", "--chain-id", "--fund", "--stake", "--miner", "--bootstrap-dataset",
                 "--bootstrap-template", "--bootstrap-iterations", "--bootstrap-batch-size", "--bootstrap-task"):
        assert flag in genesis_help
    # The help names node/genesis.py's defaults without importing it.
    assert f"(default {G.BOOTSTRAP_ITERATIONS})" in genesis_help
    assert f"(default {G.BOOTSTRAP_BATCH_SIZE}:" in genesis_help
    assert "genesis" in bws("chain", "--help").stdout
    assert "--chain-id" in bws("devnet", "--help").stdout
    both = bws("chain", "genesis", "--check", "g.json", "--miner", "11" * 20)
    assert both.returncode == 1 and "--check reads a genesis file as it is: drop --miner" in both.stderr
    missing = bws("chain", "genesis")
    assert missing.returncode == 2 and "one of the arguments --out --check is required" in missing.stderr
