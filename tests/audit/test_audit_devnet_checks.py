"""The byzantine devnet's verdict (node/audit_devnet.py `audit_failures`):
each cheat must be disputed with the right evidence, localized as expected
and slashed; an honest member must not be slashed."""
from __future__ import annotations

from bws.node.audit_devnet import audit_failures


def fraud(accused: str, op, tensor, notes=()) -> dict:
    return {"kind": "fraud", "accused": accused, "op": op, "tensor": tensor, "notes": list(notes)}


def run(members: list[tuple[str, str | None, bool]], disputes: list[dict]) -> list[str]:
    return audit_failures({"not_drawn": [], "disputes": disputes,
                           "members": [{"name": n, "byzantine": k, "slashed": s} for n, k, s in members]})


NO_TRACE = "the miner provides no intermediate commitments for this iteration: it cannot show any op of its claim"


def test_every_cheat_caught_as_expected_passes():
    members = [("node0", None, False), ("node1", "flip-bit", True), ("node2", "random-update", True),
               ("node3", "wrong-peers", True), ("node4", "equivocate", True)]
    disputes = [fraud("node1", "update", "update:0/bias"), fraud("node2", None, "update:0/bias", [NO_TRACE]),
                fraud("node3", "merge", "update:1/kernel"),
                {"kind": "equivocation", "accused": "node4", "op": None, "tensor": None, "notes": []}]
    assert run(members, disputes) == []


def test_a_random_update_must_be_localized_to_the_update_and_show_no_intermediates():
    members = [("node0", None, False), ("node1", "random-update", True)]
    (failure,) = run(members, [fraud("node1", None, "update:0/bias")])
    assert "node1 (random-update)" in failure and "no intermediate commitments" in failure
    (failure,) = run(members, [fraud("node1", None, "state_after:params/0/bias", [NO_TRACE])])
    assert "tensor update:0/bias" in failure


def test_an_unslashed_cheat_and_a_slashed_honest_miner_fail():
    failures = run([("node0", None, True), ("node1", "flip-bit", False)], [fraud("node1", "update", "update:0/bias")])
    assert failures == ["honest miner node0 was slashed", "node1 (flip-bit) was not slashed"]
