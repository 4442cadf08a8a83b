"""A node's rule for a revealed test split (POST /reveal): only while a task
committing to its root is in evaluation; the whole path (a CLI reveal refused
while training, accepted in evaluation, evaluators scoring on it) runs in
tests/devnet/test_task_client.py."""
from http import HTTPStatus
from types import SimpleNamespace

import numpy as np
import pytest

from bws.node.api import ApiError
from bws.node.roles.client import accept_reveal, revealable_task
from bws.node.roles.data import bundle_root
from bws.spec.tensors import encode_tensor_bundle
from bws.spec.constants import TASK_EVALUATION, TASK_EXPIRED, TASK_FINALIZED, TASK_TRAINING

TEST_SET = {"x": np.arange(12, dtype=np.int32).reshape(3, 4), "y": np.array([0, 1, 2], np.int32)}
ROOT = bundle_root(TEST_SET)


def state_with(*statuses, root=ROOT):
    return SimpleNamespace(tasks={bytes([i]) * 32: SimpleNamespace(test_set_hash=root, status=status)
                                  for i, status in enumerate(statuses)})


def test_a_reveal_is_taken_while_a_committing_task_is_in_evaluation():
    task_id, root, tensors = accept_reveal(state_with(TASK_TRAINING, TASK_EVALUATION), encode_tensor_bundle(TEST_SET))
    assert task_id == b"\x01" * 32 and root == ROOT
    assert all(np.array_equal(tensors[k], TEST_SET[k]) for k in TEST_SET)


@pytest.mark.parametrize("state, status, message", [
    (state_with(TASK_TRAINING), HTTPStatus.CONFLICT, "not in evaluation yet"),
    (state_with(TASK_FINALIZED, TASK_EXPIRED), HTTPStatus.CONFLICT, "has ended"),
    (state_with(TASK_EVALUATION, root=b"\x07" * 32), HTTPStatus.NOT_FOUND, "no task on chain commits"),
])
def test_a_reveal_out_of_time_is_refused_with_why(state, status, message):
    with pytest.raises(ApiError, match=message) as refused:
        revealable_task(state, ROOT)
    assert refused.value.status == status


def test_bytes_that_are_not_a_bundle_are_a_bad_request():
    with pytest.raises(ApiError, match="not a tensor bundle") as refused:
        accept_reveal(state_with(TASK_EVALUATION), b"\x01\x00\x00\x00garbage")
    assert refused.value.status == HTTPStatus.BAD_REQUEST
