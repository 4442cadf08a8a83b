"""The committed vectors: the spec reproduces each, and regenerating them changes nothing."""
import json
from pathlib import Path

import pytest

from bws.node.review import check_vector, generate_vectors, read_vectors

VECTOR_DIR = Path(__file__).resolve().parents[2] / "spec" / "vectors"
COMMITTED = read_vectors(VECTOR_DIR)


@pytest.mark.parametrize("vector", COMMITTED, ids=[v["name"] for v in COMMITTED])
def test_spec_reproduces_vector(vector):
    assert check_vector(vector) is None


def test_vectors_cover_valid_and_invalid_cases_of_every_kind():
    groups = {}
    for vector in COMMITTED:
        group = vector["name"].split("/")[0]
        groups.setdefault(group, set()).add("invalid" if "invalid" in vector["expected"] else "valid")
    assert set(groups) == {"transfer", "envelope", "stake", "unstake", "submit-task", "cancel-task", "evaluation",
                           "dispute", "block", "attacks"}
    assert all(kinds == {"valid", "invalid"} for group, kinds in groups.items() if group != "envelope")


def test_each_attack_code_has_a_refused_case_beside_an_honest_one():
    """spec/THREATS.md's attack codes: each has an invalid case and a valid one in `attacks`."""
    codes = {}
    for vector in COMMITTED:
        group, case = vector["name"].split("/", 1)
        if group == "attacks":
            codes.setdefault(case.split("-")[0], set()).add("invalid" if "invalid" in vector["expected"] else "valid")
    assert {"c1", "c2", "c3", "h6", "l1", "m1", "m2", "m3"} <= set(codes)
    assert all(kinds == {"valid", "invalid"} for kinds in codes.values()), codes
    invalid = sum("invalid" in v["expected"] for v in COMMITTED)
    assert invalid >= len(COMMITTED) - invalid


def test_committed_vectors_are_what_the_spec_generates():
    fresh = {v["name"]: v for v in generate_vectors()}
    committed = {v["name"]: v for v in COMMITTED}
    assert sorted(fresh) == sorted(committed)
    changed = [name for name in fresh if json.dumps(fresh[name], sort_keys=True) != json.dumps(committed[name], sort_keys=True)]
    assert not changed, f"regenerate with `bws spec vectors --out spec/vectors`: {changed}"


def test_a_tampered_vector_is_detected():
    vector = dict(next(v for v in COMMITTED if v["name"] == "transfer/valid"))
    vector["expected"] = {"post_state_root": "00" * 32}
    assert "expected" in check_vector(vector)
    flipped = dict(next(v for v in COMMITTED if v["name"] == "block/replay-mismatch"))
    flipped["expected"] = {"post_state_root": "00" * 32}
    assert "replay does not reproduce" in check_vector(flipped)
