"""`bws devnet --byzantine N:KIND` for the network attackers of issue #14, and
`--restart-every S`: the devnet attacks its own network and fails unless the
attacks fail (docs/audit.md).

The cheating miners (node/roles/byzantine.py, node/audit_devnet.py) cheat at
the work; these attack as a client or a peer would:

- poison-task: submits, through node N's API, task definitions that the rules
  must refuse without raising (JSON nested deeper than
  MAX_TASK_DEFINITION_DEPTH, an integer longer than
  MAX_TASK_DEFINITION_INTEGER_DIGITS), the next one when node N's pool has
  dropped the last. Expected: none lands (its fee is never paid), the other
  nodes' pools drop them, and no miner stalls (the honest task finalizes).
- junk-fraud-proofs: every JUNK_BURST_SECONDS, a burst of fraud proofs at a
  high fee (each burst pays more, replacing the last one's pending proofs):
  one against the newest block's iteration (it replays fine) and
  JUNK_BURST_SIZE - 1 against iterations that do not exist (signed by the
  attacker, no member). Expected: blocks keep carrying the honest
  transactions (a fraud proof takes one of a block's seats only once it
  applies), every one that lands costs its fee and FALSE_DISPUTE_PENALTY, and
  nobody honest is slashed.
- stall-task: submits once a paid task whose dataset nobody has (its name and
  dataset root match no node's data), with the earliest deadline the rules
  allow. Expected: the chain does not stop, the task expires at its deadline
  and the payment is refunded, and the honest task finalizes.
- flood-messages: runs in node N's process (node/roles/flood.py). Expected:
  honest nodes keep none of its messages (asked over /bws/audit/1 at the end).

Each transaction attacker signs with an account of its own, derived from the
seed, node N and the kind, and funded in the genesis: node N's own account
earns block rewards and fees, so only an account that does nothing else shows
what an attack cost. The devnet calls `act()` at every progress poll, reads
every `outcome()` once the honest task is finalized (nodes running) and fails
on `attack_failures`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

from bws.spec import containers as C
from bws.spec.constants import (
    FALSE_DISPUTE_PENALTY, MAX_TASK_DEFINITION_DEPTH, MAX_TASK_DEFINITION_INTEGER_DIGITS, ROLE_MINER,
)
from bws.spec.hashing import hash_bytes
from bws.spec.presets import COIN
from bws.spec.encoding import encode
from bws.spec.state_transition import sign_transaction
from bws.spec.tasks import compute_task_id
from bws.templates.task import TaskDefinition

from .api import ApiClient, ApiError, from_json
from .audit_sources import ChainViaApi, NetworkSource
from .roles.client import TaskOrder, submit_task_transaction
from .roles.flood import FLOOD, flood_targets, junk_iteration_message
from .wallet import Account

POISON_TASK, JUNK_FRAUD_PROOFS, STALL_TASK = "poison-task", "junk-fraud-proofs", "stall-task"
ATTACK_KINDS = (POISON_TASK, JUNK_FRAUD_PROOFS, STALL_TASK, FLOOD)
TRANSACTION_ATTACKS = (POISON_TASK, JUNK_FRAUD_PROOFS, STALL_TASK)
RESTART = "restart-every"            # the outcome of --restart-every, checked like an attack's
ATTACKER_BALANCE = 1000 * COIN
ATTACK_FEE = 100_000                 # a hundred times the devnet client's fee: the attacks outbid it
ATTACK_PAYMENT = 10 * COIN
JUNK_BURST_SECONDS = 10.0
JUNK_BURST_SIZE = 5                  # one more than a block's fraud-proof seats (MAX_FRAUD_PROOFS_PER_BLOCK)
JUNK_FEE_BUMP = 1.1                  # a burst replaces the last one's pending proofs: the pool wants 10% more
# A deadline this far ahead of the head: inclusion, then more than 1 + training_start_delay + evaluation_period
# blocks (devnet preset: 7) as process_submit_task requires, and room for inclusion a few blocks late.
STALL_DEADLINE_BLOCKS = 12
STALLED_DATASET = "bws_devnet_stalled_no_node_has_this"   # a valid dataset name (templates/task.py)


# -- the transactions ---------------------------------------------------------
def _signed(account: Account, chain_id: int, nonce: int, fee: int, body) -> C.SignedTransaction:
    return sign_transaction(account.secret_key, C.Transaction(chain_id=chain_id, sender=account.address, nonce=nonce,
                                                             fee=fee, body=body))


def poison_definitions() -> list[bytes]:
    """Canonical JSON task definitions the rules refuse (issue #14's c3): the
    model nested 100 times deeper than allowed (a RecursionError, before the
    bound), an integer 250 times longer than allowed (a ValueError whose limit
    was the interpreter's)."""
    deep = MAX_TASK_DEFINITION_DEPTH * 100
    long_integer = "9" * (MAX_TASK_DEFINITION_INTEGER_DIGITS * 250)
    return [f'{{"dataset":{{"batch_size":1}},"model":{"[" * deep}{"]" * deep}}}'.encode(),
            f'{{"dataset":{{"batch_size":1}},"model":{{"layers":[]}},"seed":{long_integer}}}'.encode()]


def poison_task_transaction(account: Account, chain_id: int, nonce: int, definition: bytes,
                            deadline: int) -> C.SignedTransaction:
    body = C.SubmitTask(task_definition=definition, dataset_root=hash_bytes(definition), num_batches=1,
                        test_set_hash=hash_bytes(definition), group_size=1, iterations=1,
                        evaluation_deadline=deadline, payment=ATTACK_PAYMENT)
    return _signed(account, chain_id, nonce, ATTACK_FEE, body)


def stalled_definition(definition: TaskDefinition) -> TaskDefinition:
    """`definition` on a dataset no node has, under a
    dataset root no node can match (and a test root of its own: a reveal for
    the honest task must not match it)."""
    dataset = dict(definition.dataset, name=STALLED_DATASET,
                   batches_root=hash_bytes(STALLED_DATASET.encode()).hex(),
                   test_root=hash_bytes(STALLED_DATASET.encode() + b"/test").hex())
    return dataclasses.replace(definition, document=dict(definition.document, dataset=dataset))


def fraud_proof_transaction(account: Account, chain_id: int, nonce: int, fee: int,
                            message: C.SignedIterationMessage) -> C.SignedTransaction:
    return _signed(account, chain_id, nonce, fee, C.Dispute(evidence=C.FraudProof(message=message)))


def junk_burst(account: Account, chain_id: int, nonce: int, fee: int, honest: C.SignedIterationMessage,
               burst: int) -> list[C.SignedTransaction]:
    """A burst of fraud proofs from `nonce` on: against `honest` (it replays
    fine: a false accusation that lands), then against iterations that do not
    exist (the attacker's own messages for `honest`'s task, where it holds no
    seat: invalid, they never land)."""
    task_id = bytes(honest.message.work.task_id)
    messages = [honest] + [junk_iteration_message(account, task_id, 0, burst * JUNK_BURST_SIZE + k)
                           for k in range(1, JUNK_BURST_SIZE)]
    return [fraud_proof_transaction(account, chain_id, nonce + k, fee, m) for k, m in enumerate(messages)]


def charged_by_rules(signed: C.SignedTransaction) -> int:
    """What a landed attack transaction costs its sender by the rules, once the
    run is over: its fee, and for a fraud proof against an honest iteration the
    false-dispute penalty (a task's payment is refunded when it expires)."""
    body = signed.transaction.body
    penalty = FALSE_DISPUTE_PENALTY if isinstance(body, C.Dispute) and isinstance(body.evidence, C.FraudProof) else 0
    return int(signed.transaction.fee) + penalty


# -- what an attacker did and what it cost ------------------------------------
@dataclass
class AttackOutcome:
    """One attacker's line in the summary, and what `attack_failures` checks."""
    node: str
    kind: str
    sent: int = 0            # transactions submitted, messages gossiped, or kills
    refused: int = 0         # submissions its node's API refused
    landed: int = 0          # its transactions on the main chain
    spent: int = 0           # its account's balance at genesis minus now, in units
    charged: int = 0         # what the rules charge for the landed ones (charged_by_rules)
    dropped: int = 0         # poison-task: times another node's pool dropped one
    kept: int = 0            # flood-messages: its messages some honest node kept
    task_status: str = ""    # stall-task: the stalled task's status at the end
    resumed: int = 0         # restart-every: restarts after which the miner resumed its training

    def describe(self) -> str:
        cost = f"cost {self.spent / COIN:.8f} BWS"
        if self.kind == FLOOD:
            return f"gossiped {self.sent} iteration messages; honest nodes kept {self.kept}"
        if self.kind == RESTART:
            return f"killed (SIGKILL) and restarted {self.sent} times; resumed its training {self.resumed} times"
        done = (f"submitted {self.sent} transactions ({self.refused} refused by its node's API), "
                f"{self.landed} on chain")
        if self.kind == POISON_TASK:
            return f"{done}, dropped {self.dropped} times by the other nodes' pools; {cost}"
        if self.kind == STALL_TASK:
            return f"{done}, the stalled task {self.task_status}; {cost}"
        return f"{done} (false accusations, each paying {FALSE_DISPUTE_PENALTY / COIN:.0f} BWS); {cost}"


def attack_failures(outcomes: list[AttackOutcome], honest_without_stake: list[str]) -> list[str]:
    """What the attacks achieved (empty: every one failed as issue #14 expects;
    the devnet itself has checked that the honest task finalized)."""
    failures = [f"honest node {name} lost its miner stake" for name in honest_without_stake]
    for outcome in outcomes:
        who = f"{outcome.node} ({outcome.kind})"
        if outcome.sent == 0:
            failures.append(f"{who} never got to attack")
        if outcome.kind in TRANSACTION_ATTACKS and outcome.spent != outcome.charged:
            failures.append(f"{who} spent {outcome.spent} units, the rules charge {outcome.charged} for what landed")
        if outcome.kind == POISON_TASK:
            if outcome.landed:
                failures.append(f"{who}: {outcome.landed} poison task(s) landed on chain")
            if outcome.dropped + outcome.refused == 0:
                failures.append(f"{who}: no pool dropped or refused a poison task")
        elif outcome.kind == STALL_TASK:
            if outcome.landed != 1 or outcome.task_status != "expired":
                failures.append(f"{who}: expected the stalled task on chain and expired, got {outcome.landed} "
                                f"landed, status {outcome.task_status or 'none'}")
        elif outcome.kind == FLOOD and outcome.kept:
            failures.append(f"{who}: honest nodes kept {outcome.kept} of its messages")
        elif outcome.kind == RESTART and outcome.resumed == 0:
            failures.append(f"{who}: the restarted miner never resumed its training from a saved iteration")
    return failures


# -- the attackers ---------------------------------------------------------------
@dataclass(frozen=True)
class Arena:
    """What a transaction attacker sees of the devnet."""
    api: ApiClient                    # its node's
    others: dict[str, ApiClient]      # the other nodes', by name
    chain_id: int
    task_definition: TaskDefinition   # the honest task's (the stall task's model)
    order: TaskOrder                  # the honest task's order


class TransactionAttacker:
    kind = ""

    def __init__(self, node: str, account: Account, arena: Arena) -> None:
        self.node, self.account, self.arena = node, account, arena
        self.submitted = 0   # admitted by its node
        self.refused = 0

    def act(self) -> None:
        """One step of the attack, at each progress poll."""
        raise NotImplementedError

    def settled(self) -> bool:
        """Whether what the attack set going has played out (the devnet waits for it before it stops)."""
        return True

    def _account(self, api: ApiClient | None = None) -> dict:
        return (api or self.arena.api).get(f"/account/{self.account.address.hex()}")

    def _submit(self, signed: C.SignedTransaction) -> bool:
        try:
            self.arena.api.post("/tx", {"transaction": encode(signed).hex()})
        except ApiError:
            self.refused += 1
            return False
        self.submitted += 1
        return True

    def outcome(self, landed: list[C.SignedTransaction], balance: int) -> AttackOutcome:
        return AttackOutcome(self.node, self.kind, sent=self.submitted + self.refused, refused=self.refused,
                             landed=len(landed), spent=ATTACKER_BALANCE - balance,
                             charged=sum(charged_by_rules(t) for t in landed))


class PoisonTask(TransactionAttacker):
    kind = POISON_TASK

    def __init__(self, node: str, account: Account, arena: Arena) -> None:
        super().__init__(node, account, arena)
        self._definitions = poison_definitions()
        self._held_by: set[str] = set()   # the other nodes whose pool held the pending poison at the last poll
        self.dropped = 0

    def act(self) -> None:
        # A pool that held the pending poison and no longer does, with the nonce unused, dropped it.
        for name, api in self.arena.others.items():
            try:
                account = self._account(api)
            except ApiError:   # restarting (--restart-every): what its pool holds shows once it is back
                continue
            holds = int(account["pending_nonce"]) > int(account["nonce"])
            if name in self._held_by and not holds:
                self.dropped += 1
            self._held_by = (self._held_by | {name}) if holds else (self._held_by - {name})
        account = self._account()
        if int(account["pending_nonce"]) == int(account["nonce"]):   # its node dropped the last one: the next
            definition = self._definitions[(self.submitted + self.refused) % len(self._definitions)]
            self._submit(poison_task_transaction(self.account, self.arena.chain_id, int(account["nonce"]), definition,
                                                 int(account["height"]) + STALL_DEADLINE_BLOCKS))

    def outcome(self, landed: list[C.SignedTransaction], balance: int) -> AttackOutcome:
        return dataclasses.replace(super().outcome(landed, balance), dropped=self.dropped)


class JunkFraudProofs(TransactionAttacker):
    kind = JUNK_FRAUD_PROOFS

    def __init__(self, node: str, account: Account, arena: Arena, clock) -> None:
        super().__init__(node, account, arena)
        self._clock = clock
        self._last_burst = -math.inf
        self._bursts = 0
        self._fee = ATTACK_FEE

    def act(self) -> None:
        if self._clock() - self._last_burst < JUNK_BURST_SECONDS:
            return
        self._last_burst = self._clock()
        account = self._account()
        height, nonce = int(account["height"]), int(account["nonce"])
        if height < 1:
            return
        honest = from_json(C.Block, self.arena.api.get(f"/block/{height}")["block"]).proofs[0].message
        for signed in junk_burst(self.account, self.arena.chain_id, nonce, self._fee, honest, self._bursts):
            self._submit(signed)
        self._bursts += 1
        self._fee = math.ceil(self._fee * JUNK_FEE_BUMP) + 1


class StallTask(TransactionAttacker):
    kind = STALL_TASK

    def __init__(self, node: str, account: Account, arena: Arena) -> None:
        super().__init__(node, account, arena)
        self.task_id: bytes | None = None

    def act(self) -> None:
        if self.task_id is not None:
            return
        account = self._account()
        nonce, order = int(account["nonce"]), self.arena.order
        stall_order = dataclasses.replace(order, evaluation_deadline=int(account["height"]) + STALL_DEADLINE_BLOCKS,
                                          payment=ATTACK_PAYMENT, fee=ATTACK_FEE)
        signed = submit_task_transaction(self.account, self.arena.chain_id, nonce,
                                         stalled_definition(self.arena.task_definition), stall_order)
        if self._submit(signed):
            self.task_id = bytes(compute_task_id(self.arena.chain_id, self.account.address, nonce))

    def status(self) -> str:
        """The stalled task's status on its node ("" before it is on chain)."""
        if self.task_id is None:
            return ""
        try:
            return self.arena.api.get(f"/task/{self.task_id.hex()}")["status"]
        except ApiError:
            return ""

    def settled(self) -> bool:
        """The stalled task ended (or never got on chain: its node refused it)."""
        return (self.task_id is None and self.refused > 0) or self.status() in ("expired", "finalized", "cancelled")

    def outcome(self, landed: list[C.SignedTransaction], balance: int) -> AttackOutcome:
        return dataclasses.replace(super().outcome(landed, balance), task_status=self.status() or "never on chain")


def landed_transactions(chain: ChainViaApi, height: int,
                        senders: set[bytes]) -> dict[bytes, list[tuple[int, C.SignedTransaction]]]:
    """(block height, transaction) of `senders` in the main chain's blocks 1..height, by sender."""
    found: dict[bytes, list[tuple[int, C.SignedTransaction]]] = {sender: [] for sender in senders}
    for block_height in range(1, height + 1):
        for signed in chain.block(str(block_height)).transactions:
            sender = bytes(signed.transaction.sender)
            if sender in found:
                found[sender].append((block_height, signed))
    return found


def kept_flood_messages(honest_multiaddrs: list[str], tasks: dict[bytes, C.Task], miner: bytes) -> int:
    """How many distinct messages of the flooder's for its flood targets the
    honest nodes answer an auditor's `M` request with (/bws/audit/1)."""
    source = NetworkSource.dial(honest_multiaddrs)
    try:
        return sum(len(source.messages(task_id, iteration, miner))
                   for task_id, iteration in flood_targets(tasks, miner))
    finally:
        source.close()


RESUMED_LINE = re.compile(r"resuming task ([0-9a-f]{12})… at iteration (\d+)")


def resumed_trainings(log: Path, task_id: bytes) -> int:
    """How many times the node's log says it resumed training `task_id` from a saved iteration."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(1 for match in RESUMED_LINE.finditer(text) if match.group(1) == task_id.hex()[:12])


def honest_without_miner_stake(nodes: dict[str, str], api: ApiClient) -> list[str]:
    """The honest nodes (name -> its address's hex, asked of `api`) that no longer hold a miner stake."""
    return [name for name, address in nodes.items()
            if not any(int(s["role"]) == ROLE_MINER for s in api.get(f"/account/{address}")["stakes"])]
