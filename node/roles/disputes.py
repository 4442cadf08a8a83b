"""Submitting disputes (spec `process_dispute`), shared by the roles that find
misbehaviour: the supervisor (equivocation, broken links and fraud among its
task's messages) and the verifier (fraud in a block's iteration).

A node submits at most one dispute per miner, and none when the miner's fate
is already settled or pending:

- the chain shows the miner slashed in the task, or without a miner stake:
  the spec rejects evidence against a member already slashed (and a miner
  whose stake is gone), so a second dispute of the same fraud is never
  included; it costs no false-dispute penalty (that is burned only when the
  replay matches), but it would sit in the mempool and hold back this node's
  later transactions, which the pool keeps in nonce order;
- the mempool holds another node's dispute against the same iteration of
  the miner (gossiped). Only the same iteration: anyone can pool junk
  disputes against a miner's honest iterations (issue #14's
  junk-fraud-proofs), and those must not stop a real one against another.

The fee is the same for every role: DISPUTE_FEE, or the chain's minimum if higher.
"""
from __future__ import annotations

import logging
import threading

from bws.spec import containers as C
from bws.spec.constants import ROLE_MINER
from bws.spec.pouw import is_chained
from bws.spec.state_transition import sign_transaction
from bws.spec.tasks import get_member_index

from ..validation import ValidationError
from .context import RoleContext

logger = logging.getLogger("bws.node.roles.disputes")

DISPUTE_FEE = 1000
# Nonces come from the mempool: two roles of one node submitting at once must not take the same one.
_SUBMIT_LOCK = threading.Lock()


Evidence = C.FraudProof | C.Equivocation | C.BrokenLink


def accused(evidence: Evidence) -> tuple[bytes, bytes, int]:
    """(task id, miner, iteration) the evidence accuses (of a broken link: the later iteration)."""
    if isinstance(evidence, C.FraudProof):
        signed = evidence.message
    elif isinstance(evidence, C.Equivocation):
        signed = evidence.first
    else:
        signed = evidence.later
    work = signed.message.work
    return bytes(work.task_id), bytes(work.miner), int(work.iteration)


def broken_link(signed: C.SignedIterationMessage, previous: list[C.SignedIterationMessage],
                following: list[C.SignedIterationMessage]) -> C.BrokenLink | None:
    """A BrokenLink between `signed` and a message of its miner for the
    iteration before (`previous`) or after (`following`), if one is not chained to it."""
    work = signed.message.work
    for earlier in previous:
        if not is_chained(earlier.message.work, work):
            return C.BrokenLink(earlier=earlier, later=signed)
    for later in following:
        if not is_chained(work, later.message.work):
            return C.BrokenLink(earlier=signed, later=later)
    return None


def is_disputable(state: C.State, task_id: bytes, miner: bytes) -> bool:
    """Whether a dispute against `miner` in the task could still slash it (the
    spec's preconditions: a member, not yet slashed there, with a miner stake)."""
    task = state.tasks.get(task_id)
    index = get_member_index(task, miner) if task is not None else None
    stake = state.stakes.get(C.StakeKey(owner=miner, role=ROLE_MINER))
    return index is not None and not task.members[index].slashed and stake is not None and stake.amount > 0


def has_pending_dispute(context: RoleContext, task_id: bytes, miner: bytes, iteration: int) -> bool:
    """Whether the mempool holds a dispute (anyone's) against that iteration of `miner`."""
    return any(isinstance(body, C.Dispute) and accused(body.evidence) == (task_id, miner, iteration)
               for body in context.pooled_bodies())


class Disputes:
    """One role's dispute submissions (see the module docstring)."""

    def __init__(self, context: RoleContext) -> None:
        self.context = context
        self._disputed: set[bytes] = set()

    def needed(self, task_id: bytes, miner: bytes, iteration: int) -> bool:
        """Whether a dispute against that iteration of `miner` is still this
        role's to submit: it has not submitted one against the miner, the
        chain does not show the miner settled, and the mempool holds none
        against that iteration (counted as `disputes_not_needed`; asked again
        later, as a pending dispute may yet be dropped)."""
        context = self.context
        if miner in self._disputed:
            return False
        if not is_disputable(context.chain.head_state, task_id, miner) \
                or has_pending_dispute(context, task_id, miner, iteration):
            context.metrics["disputes_not_needed"] += 1
            logger.info("miner %s… is already slashed or disputed: no dispute", miner.hex()[:12])
            return False
        return True

    def submit(self, evidence: Evidence) -> bool:
        """Submit a Dispute carrying `evidence` if it is `needed`; whether one was submitted."""
        context = self.context
        task_id, miner, iteration = accused(evidence)
        with _SUBMIT_LOCK:
            if not self.needed(task_id, miner, iteration):
                return False
            transaction = C.Transaction(chain_id=context.chain.config.chain_id, sender=context.address,
                                        nonce=context.next_nonce(),
                                        fee=max(DISPUTE_FEE, context.chain.config.min_transaction_fee),
                                        body=C.Dispute(evidence=evidence))
            try:
                context.submit_transaction(sign_transaction(context.account.secret_key, transaction))
            except ValidationError as error:
                logger.warning("dispute against %s… not submitted: %s", miner.hex()[:12], error.reason)
                return False
            self._disputed.add(miner)
        context.metrics["disputes_submitted"] += 1
        logger.warning("dispute submitted against miner %s… (%s)", miner.hex()[:12], type(evidence).__name__)
        return True
