"""Genesis configurations that mine: the chain's own id, funded and staked
accounts, and a bootstrap task per bootstrap miner; and the reasons a
genesis would not mine.

Every block after genesis proves an iteration of a task in training
(spec/genesis.py), so a chain starts only if its genesis holds such a task
with a member that holds a miner stake. A bootstrap task is a genesis task
with no client and one member: the node's miner role trains it whenever no
client task needs it (node/roles/miner.py), training each batch of its
dataset once.

`bws chain genesis` and `bws devnet` both build their genesis here.
"""
from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass

from bws.spec import containers as C
from bws.spec.constants import ROLE_EVALUATOR, ROLE_MINER, ROLE_SUPERVISOR
from bws.spec.genesis import InvalidGenesis, create_genesis_state, get_genesis_task
from bws.spec.presets import PRESETS

ROLE_NAMES = {"miner": ROLE_MINER, "supervisor": ROLE_SUPERVISOR, "evaluator": ROLE_EVALUATOR}
# A bootstrap miner iterates at most 4 times a second in its turns (the miner's BOOTSTRAP_INTERVAL_SECONDS):
# 4000 iterations keep it mining for at least 1000 s of its turns.
BOOTSTRAP_ITERATIONS = 4000
# An iteration's nonces grow with its work up to the preset's cap: the digits DNN earns 14 devnet nonces (of 16)
# an iteration at 128 examples, 3 at 32.
BOOTSTRAP_BATCH_SIZE = 128
BOOTSTRAP_DEADLINE = 2**62       # a bootstrap task is never evaluated: it trains until its batches run out
NO_CLIENT = bytes(20)            # a bootstrap task's client: nobody paid for it, nobody is refunded
MAX_CHAIN_ID = 2**32 - 1         # a ChainId is a uint32


class GenesisError(ValueError):
    """A genesis that cannot be built as asked; the message says which input is wrong."""


@dataclass(frozen=True)
class BootstrapTask:
    """What every bootstrap miner trains: a chain template's task definition
    (canonical bytes) and the dataset commitments it makes."""
    definition: bytes
    dataset_root: bytes
    num_batches: int
    test_set_hash: bytes

    @classmethod
    def from_definition(cls, definition) -> BootstrapTask:
        """From a templates TaskDefinition (`bws task new`, `make_task_with_batches`)."""
        from bws.templates.task import require_chain_template

        require_chain_template(definition)
        dataset = definition.dataset
        return cls(definition=definition.to_bytes(), dataset_root=bytes.fromhex(dataset["batches_root"]),
                   num_batches=int(dataset["num_batches"]), test_set_hash=bytes.fromhex(dataset["test_root"]))

    def genesis_task(self, miner: bytes) -> C.GenesisTask:
        """`miner`'s bootstrap task: it alone trains every batch once."""
        return C.GenesisTask(client=NO_CLIENT, task_definition=self.definition, dataset_root=self.dataset_root,
                             num_batches=self.num_batches, test_set_hash=self.test_set_hash,
                             iterations=self.num_batches, evaluation_deadline=BOOTSTRAP_DEADLINE, payment=0,
                             members=[miner], supervisors=[], evaluators=[])


def make_task_with_batches(template: str, dataset: str, batches: int, *, batch_size: int | None = None,
                           learning_rate: float | None = None, dataset_dir: str | None = None, seed: int = 0,
                           test_file: str | None = None):
    """`template` on `dataset` with the fewest epochs that hold `batches` batches (a task trains each batch once)."""
    from bws.templates import jobs

    sample = jobs.make_task(template, dataset, epochs=1, batch_size=batch_size, learning_rate=learning_rate,
                            data_dir=dataset_dir, init_seed=seed)
    epochs = max(1, math.ceil(batches / sample.dataset["num_batches"]))
    return jobs.make_task(template, dataset, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                          data_dir=dataset_dir, init_seed=seed, test_file=test_file)


def draw_chain_id() -> int:
    """A chain id of a new network's own: random, so that two networks made
    from one preset do not accept each other's transactions; never a preset's
    (the presets' ids name the networks the spec describes)."""
    taken = {int(config.chain_id) for config in PRESETS.values()}
    while (chain_id := 1 + secrets.randbelow(MAX_CHAIN_ID)) in taken:
        pass
    return chain_id


def chain_config(preset: str, chain_id: int | None = None) -> C.ChainConfig:
    """The preset's parameters under the network's own chain id (drawn at random if None)."""
    if chain_id is None:
        chain_id = draw_chain_id()
    if preset not in PRESETS:
        raise GenesisError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    if not 0 <= chain_id <= MAX_CHAIN_ID:
        raise GenesisError(f"chain id {chain_id} is out of range (0 to {MAX_CHAIN_ID})")
    return dataclasses.replace(PRESETS[preset], chain_id=chain_id)


def build_genesis(config: C.ChainConfig, timestamp: int, accounts: list[C.GenesisAccount],
                  stakes: list[C.GenesisStake], miners: list[bytes],
                  bootstrap: BootstrapTask | None) -> C.GenesisConfig:
    """A genesis where every address of `miners` holds a bootstrap task of
    `bootstrap` and a miner stake: the one of `stakes`, else one ticket.
    GenesisError names what is wrong."""
    if miners and bootstrap is None:
        raise GenesisError("bootstrap miners need a bootstrap task to train (a dataset or a task file)")
    if len(set(miners)) != len(miners):
        raise GenesisError(f"bootstrap miner {_repeated(miners).hex()} is given twice")
    staked = [(bytes(s.owner), int(s.role)) for s in stakes]
    if len(set(staked)) != len(staked):
        owner, role = _repeated(staked)
        raise GenesisError(f"{owner.hex()} is staked twice as {role_name(role)}")
    funded = [bytes(a.address) for a in accounts]
    if len(set(funded)) != len(funded):
        raise GenesisError(f"{_repeated(funded).hex()} is funded twice")
    miner_stakes = [C.GenesisStake(owner=miner, role=ROLE_MINER, amount=config.miner_ticket_price)
                    for miner in miners if (miner, ROLE_MINER) not in staked]
    tasks = [bootstrap.genesis_task(miner) for miner in miners] if bootstrap is not None else []
    genesis = C.GenesisConfig(config=config, timestamp=timestamp, accounts=accounts, stakes=stakes + miner_stakes,
                              tasks=tasks)
    try:
        create_genesis_state(genesis)
    except InvalidGenesis as error:
        raise GenesisError(str(error)) from None
    return genesis


def _repeated(items: list):
    return next(item for index, item in enumerate(items) if item in items[:index])


def role_name(role: int) -> str:
    return next((name for name, value in ROLE_NAMES.items() if value == role), f"role {role}")


def mining_problems(genesis: C.GenesisConfig) -> list[str]:
    """Why a chain started from `genesis` could not mine, one plain sentence
    each; empty if it can. Block 1 needs a genesis the spec accepts, with a
    task still in training at height 1 that the nodes' miners can train and
    whose member holds a miner stake."""
    if not genesis.tasks:
        problems = ["no bootstrap task: every block proves an iteration of a task in training, and this genesis "
                    "has none (bws chain genesis --miner ADDRESS --bootstrap-dataset NAME)"]
    else:
        problems = [problem for index in range(len(genesis.tasks)) for problem in _task_problems(genesis, index)]
        if all(any(p.startswith(f"genesis task {index}:") for p in problems) for index in range(len(genesis.tasks))):
            problems.append("no genesis task can be mined, so no block can be")
    try:
        create_genesis_state(genesis)
    except InvalidGenesis as error:
        # A task the spec refuses already has its line; the file as a whole is refused too, by every node.
        problems = [p for p in problems if p != str(error)]
        problems.insert(0, f"no node loads this genesis: {error}")
    return problems


def _task_problems(genesis: C.GenesisConfig, index: int) -> list[str]:
    """What keeps genesis task `index` from being mined."""
    task, where = genesis.tasks[index], f"genesis task {index}:"
    problems = []
    try:
        get_genesis_task(genesis, index)
    except InvalidGenesis as error:
        problems.append(str(error))
    if task.evaluation_deadline <= genesis.config.evaluation_period + 1:
        problems.append(f"{where} its evaluation deadline {task.evaluation_deadline} ends its training before "
                        f"block 1 (it must exceed evaluation_period + 1 = {genesis.config.evaluation_period + 1})")
    problems += [f"{where} {problem}" for problem in _definition_problems(task)]
    miner_stakes = {bytes(s.owner) for s in genesis.stakes if s.role == ROLE_MINER}
    if task.members and not any(bytes(member) in miner_stakes for member in task.members):
        problems.append(f"{where} none of its members ({', '.join(bytes(m).hex() for m in task.members)}) holds "
                        "a miner stake, and a block's miner must (--stake ADDRESS:miner)")
    return problems


def _definition_problems(task: C.GenesisTask) -> list[str]:
    """Whether the nodes' miners can train the task: a chain template's
    definition whose dataset is the one the task commits to."""
    from bws.templates.errors import TemplateError
    from bws.templates.task import parse_task, require_chain_template

    try:
        definition = parse_task(bytes(task.task_definition))
        require_chain_template(definition)
    except TemplateError as error:
        return [f"the miners cannot train its definition: {error}"]
    dataset = definition.dataset
    problems = []
    if bytes(task.dataset_root).hex() != dataset["batches_root"]:
        problems.append(f"its dataset root {bytes(task.dataset_root).hex()} is not its definition's batches root "
                        f"{dataset['batches_root']} (no batch a miner trains would be proven in it)")
    if int(task.num_batches) != int(dataset["num_batches"]):
        problems.append(f"it commits to {task.num_batches} batches, its definition makes {dataset['num_batches']}")
    return problems
