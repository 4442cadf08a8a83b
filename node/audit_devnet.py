"""`bws devnet --byzantine N:KIND`: make node N cheat, then check that the
network caught it (docs/audit.md). The network attackers among the kinds are
node/devnet_attacks.py's; this module parses them with the cheats.

The cheating node gets `BYZANTINE_MINER_TICKETS` times the miner stake in
the genesis, so the chain draws it into the client task's group (a cheat
with nothing to cheat on shows nothing). Its process gets the behaviour in
`BWS_BYZANTINE` (node/roles/byzantine.py). After the task is finalized, while
the nodes still run, the devnet lists the chain's disputes and the task's
slashed members, replays every fraud dispute with the auditor (inputs, trace
and op outputs fetched from the nodes over libp2p) and checks: every
byzantine member was disputed with the right evidence and slashed, its fault
localized to the expected tensor and op, and no honest miner was slashed.
"""
from __future__ import annotations

from dataclasses import dataclass

from .audit import AuditError, audit_iteration
from .audit_sources import ChainViaApi, NetworkSource, chain_disputes
from .devnet_attacks import ATTACK_KINDS
from .roles.byzantine import ENVIRONMENT_VARIABLE as BYZANTINE_VARIABLE, KINDS
from .roles.flood import ENVIRONMENT_VARIABLE as ATTACKS_VARIABLE
from .roles.library import TaskLibrary, TaskUnavailable

# Left out of a 4-node devnet's 2 seats with probability (3/1003)*(2/1002) ~ 6e-6
# (with 50 tickets it was ~0.2%, and a CI run drew the honest miners).
BYZANTINE_MINER_TICKETS = 1000


@dataclass(frozen=True)
class Expected:
    """How the network must catch one kind of cheat."""
    evidence: str                   # the dispute's evidence: "fraud" or "equivocation"
    op: str | None = None           # the op the bisection names (None: no trace to bisect)
    tensor_prefix: str = ""         # the first differing tensor of the update and state starts with this
    note: str = ""                  # a note the audit report must carry


EXPECTED = {
    "flip-bit": Expected("fraud", "update", "update:0/bias"),
    "wrong-peers": Expected("fraud", "merge", "update:"),
    # It did no work, so it has no intermediates to show: the report says so.
    "random-update": Expected("fraud", None, "update:0/bias", "provides no intermediate commitments"),
    "equivocate": Expected("equivocation"),
}


class ByzantineSpecError(ValueError):
    """A --byzantine argument is malformed."""


def parse_byzantine(values: list[str], nodes: int) -> tuple[dict[int, str], dict[int, tuple[str, ...]]]:
    """["1:flip-bit", "4:poison-task", "4:stall-task"] -> ({1: "flip-bit"}, {4: ("poison-task", "stall-task")}):
    the cheating miners and the network attackers (node/devnet_attacks.py) by node. A node cheats in one way
    at most, and may also attack in several; ByzantineSpecError names the bad value."""
    cheats: dict[int, str] = {}
    attacks: dict[int, tuple[str, ...]] = {}
    for value in values:
        index, _, kind = value.partition(":")
        if not index.isdigit() or kind not in KINDS + ATTACK_KINDS:
            raise ByzantineSpecError(f"--byzantine {value!r}: expected N:KIND with KIND a cheating miner "
                                     f"({', '.join(KINDS)}) or a network attacker ({', '.join(ATTACK_KINDS)})")
        node = int(index)
        if not 0 <= node < nodes:
            raise ByzantineSpecError(f"--byzantine {value!r}: node {index} does not exist (nodes 0..{nodes - 1})")
        if kind in ATTACK_KINDS:
            if kind in attacks.get(node, ()):
                raise ByzantineSpecError(f"--byzantine {value!r}: node {index} is already a {kind} attacker")
            attacks[node] = attacks.get(node, ()) + (kind,)
            continue
        if node in cheats:
            raise ByzantineSpecError(f"--byzantine {value!r}: node {index} already cheats ({cheats[node]})")
        cheats[node] = kind
    return cheats, attacks


def miner_tickets(nodes, byzantine: dict[int, str]) -> dict[bytes, int]:
    return {nodes[index].account.address: BYZANTINE_MINER_TICKETS for index in byzantine}


def node_environment(index: int, byzantine: dict[int, str], attacks: dict[int, tuple[str, ...]]) -> dict[str, str]:
    """The environment that makes node `index` cheat (node/roles/byzantine.py) or run its attacks itself
    (node/roles/flood.py; the devnet runs the others, through its API)."""
    environment = {BYZANTINE_VARIABLE: byzantine[index]} if index in byzantine else {}
    if index in attacks:
        environment[ATTACKS_VARIABLE] = ",".join(attacks[index])
    return environment


def audit_devnet(devnet) -> dict:
    """Disputes, slashes and audit reports of the devnet's client task (nodes running)."""
    chain = ChainViaApi(devnet.nodes[0].api.url)
    task = chain.task(devnet.task_id)
    name_of = {n.account.address: n.name for n in devnet.nodes}
    kind_of = {devnet.nodes[i].account.address: kind for i, kind in devnet.options.byzantine.items()}
    supervisors = {bytes(s) for s in task.supervisors}
    disputes = [d for d in chain_disputes(chain) if bytes(d.messages[0].message.work.task_id) == devnet.task_id]
    try:
        loaded = TaskLibrary(devnet.options.dataset_dir).load(task)
    except TaskUnavailable as error:
        raise AuditError(str(error)) from None
    source = NetworkSource.dial([n.multiaddr for n in devnet.nodes])
    entries = []
    try:
        for dispute in disputes:
            signed = dispute.messages[0]
            miner = bytes(signed.message.work.miner)
            entry = {"height": dispute.height, "kind": dispute.kind, "disputer": name_of.get(dispute.sender, "?"),
                     "disputer_role": "supervisor" if dispute.sender in supervisors else "verifier",
                     "accused": name_of.get(miner, miner.hex()), "iteration": int(signed.message.work.iteration),
                     "byzantine": kind_of.get(miner), "op": None, "tensor": None, "notes": [], "report": ""}
            if dispute.kind == "fraud":
                report = audit_iteration(source, loaded, signed)
                entry.update(op=report.divergent_op, tensor=report.first_tensor, notes=report.notes,
                             report=report.render(), verdict=report.verdict)
            entries.append(entry)
    finally:
        source.close()
    members = [{"name": name_of.get(bytes(m.address), bytes(m.address).hex()), "slashed": bool(m.slashed),
                "byzantine": kind_of.get(bytes(m.address))} for m in task.members]
    return {"disputes": entries, "members": members,
            "not_drawn": [f"node{i}" for i, _ in devnet.options.byzantine.items()
                          if devnet.nodes[i].account.address not in {bytes(m.address) for m in task.members}]}


def print_audit(say, audit: dict) -> None:
    say("  disputes and slashes:")
    for member in audit["members"]:
        role = f"byzantine {member['byzantine']}" if member["byzantine"] else "honest"
        say(f"    member {member['name']:6s} {role:26s} {'SLASHED' if member['slashed'] else 'not slashed'}")
    for entry in audit["disputes"]:
        where = f", localized to op {entry['op'] or '-'} tensor {entry['tensor'] or '-'}" if entry["kind"] == "fraud" else ""
        say(f"    dispute at height {entry['height']}: {entry['kind']} by {entry['disputer']} "
            f"({entry['disputer_role']}) against "
            f"{entry['accused']} (iteration {entry['iteration']}){where}")
    for entry in audit["disputes"]:
        if entry["report"]:
            say("\n".join("    " + line for line in entry["report"].splitlines()))


def audit_failures(audit: dict) -> list[str]:
    """What the byzantine run got wrong (empty: every cheat caught and localized, no honest miner slashed)."""
    failures = [f"{name} was not drawn into the task's group" for name in audit["not_drawn"]]
    for member in audit["members"]:
        if member["byzantine"] is None:
            if member["slashed"]:
                failures.append(f"honest miner {member['name']} was slashed")
            continue
        if not member["slashed"]:
            failures.append(f"{member['name']} ({member['byzantine']}) was not slashed")
        expected = EXPECTED[member["byzantine"]]
        mine = [d for d in audit["disputes"] if d["accused"] == member["name"]]
        if not any(caught_as(d, expected) for d in mine):
            failures.append(f"{member['name']} ({member['byzantine']}): expected a {expected.evidence} dispute "
                            f"localized to op {expected.op}, tensor {expected.tensor_prefix or '-'}"
                            f"{', note ' + repr(expected.note) if expected.note else ''}; got "
                            f"{[(d['kind'], d['op'], d['tensor'], d['notes']) for d in mine]}")
    return failures


def caught_as(entry: dict, expected: Expected) -> bool:
    """Whether a dispute (with its audit) is the evidence and localization `expected`."""
    if entry["kind"] != expected.evidence:
        return False
    if expected.evidence != "fraud":
        return True
    return (entry["op"] == expected.op and (entry["tensor"] or "").startswith(expected.tensor_prefix)
            and (not expected.note or any(expected.note in note for note in entry["notes"])))
