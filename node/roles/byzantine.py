"""Cheating miners, so the audit and dispute path can be seen working
(`bws devnet --byzantine N:KIND`, docs/audit.md). Never for production use.

A byzantine miner trains like an honest one until iteration
`CHEAT_FROM_ITERATION` of a client task (one with a client: where training
earns fees), then at every iteration of that task:

- flip-bit: computes honestly, then flips bit 0 of one element of its update
  (the middle element of the update's first tensor by name) and publishes the
  state that update gives. Its signed trace is honest up to the optimizer and
  shows the flipped update: bisection lands on op `update`.
- random-update: skips the work: publishes a small random update and the
  state it gives, without forward, backward or optimizer. It kept no
  intermediates, so it answers no trace request.
- wrong-peers: names every peer update it received in its message but
  applies none of them. Its trace is of what it computed: bisection lands on
  op `merge` (params + peer updates).
- equivocate: computes honestly and signs two different messages for the
  iteration (same work, different header commitments), both gossiped.

The node process learns its behaviour from the environment variable
`BWS_BYZANTINE` (set by the devnet for the chosen node).
"""
from __future__ import annotations

import os

import numpy as np

from bws.spec import containers as C
from bws.spec.hashing import hash_bytes
from bws.spec.pouw import sign_iteration_message

KINDS = ("flip-bit", "random-update", "wrong-peers", "equivocate")
ENVIRONMENT_VARIABLE = "BWS_BYZANTINE"
CHEAT_FROM_ITERATION = 2
RANDOM_UPDATE_BOUND = 16   # fixed-point units: small enough not to wreck the honest members who apply it


class ByzantineError(ValueError):
    """An unknown cheating behaviour was asked for."""


def flip_update_bit(update: dict[str, np.ndarray], state_after: dict[str, np.ndarray]):
    """(update, state after) with bit 0 of the middle element of the update's
    first tensor flipped, and the state's parameter moved by the same amount."""
    name = sorted(update)[0]
    flipped = np.array(update[name], np.int32)
    index = np.unravel_index(flipped.size // 2, flipped.shape)
    old = flipped[index]
    flipped[index] = old ^ 1
    params = np.array(state_after[f"params/{name}"], np.int32)
    with np.errstate(over="ignore"):
        params[index] = params[index] + (flipped[index] - old)
    return dict(update, **{name: flipped}), dict(state_after, **{f"params/{name}": params})


class Byzantine:
    def __init__(self, kind: str, seed: int = 0) -> None:
        if kind not in KINDS:
            raise ByzantineError(f"byzantine behaviour {kind!r}: must be one of {', '.join(KINDS)}")
        self.kind = kind
        self._rng = np.random.default_rng(seed)

    @classmethod
    def from_environment(cls) -> "Byzantine | None":
        kind = os.environ.get(ENVIRONMENT_VARIABLE)
        return cls(kind) if kind else None

    def cheats(self, task: C.Task, iteration: int) -> bool:
        return bytes(task.client) != bytes(20) and iteration >= CHEAT_FROM_ITERATION

    def iterate(self, loaded, state: dict, batch: dict, peer_updates: list[dict], flat, tree):
        """(new state, update, metrics, the peer updates really applied), all flat
        {name: array} except metrics, for the cheat's iteration."""
        if self.kind == "random-update":
            before = flat(state)
            update = {name[len("params/"):]: self._rng.integers(-RANDOM_UPDATE_BOUND, RANDOM_UPDATE_BOUND + 1,
                                                                np.shape(a)).astype(np.int32)
                      for name, a in before.items() if name.startswith("params/")}
            after = dict(before)
            with np.errstate(over="ignore"):
                for name, delta in update.items():
                    total = np.array(before[f"params/{name}"], np.int32) + delta
                    for peer in peer_updates:
                        total = total + np.asarray(flat(peer)[name], np.int32)
                    after[f"params/{name}"] = total.astype(np.int32)
            after["step"] = np.asarray(before["step"] + 1, np.int32)
            return after, update, {"loss_sum": 0, "count": 1}, peer_updates
        applied = [] if self.kind == "wrong-peers" else peer_updates
        new_state, update, metrics = loaded.iterate(state, batch, applied)
        new_state, update = flat(new_state), flat(update)
        if self.kind == "flip-bit":
            update, new_state = flip_update_bit(update, new_state)
        return new_state, update, metrics, applied

    def second_message(self, secret_key: bytes, signed: C.SignedIterationMessage) -> C.SignedIterationMessage | None:
        """Equivocation: another signed message for the same iteration."""
        if self.kind != "equivocate":
            return None
        other = C.IterationMessage(work=signed.message.work,
                                   header_commitment=hash_bytes(b"BWS/equivocation" + bytes(signed.message.header_commitment)))
        return sign_iteration_message(secret_key, other)

    def claimed_trace(self, recorded, trace):
        """The trace this miner answers with (AuditServer transform): what its cheat implies."""
        if self.kind == "random-update":
            return None
        if self.kind == "flip-bit":
            outputs = dict(trace)
            update, state_after = flip_update_bit(outputs["update"], outputs["state_after"])
            outputs.update(update=update, state_after=state_after)
            return [(name, outputs[name]) for name, _ in trace]
        return trace
