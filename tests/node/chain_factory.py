"""Builds valid BWS chains for the node's tests, by the spec's rules.

The chain starts from a spec genesis with one genesis task in TRAINING, so
blocks can be mined from block 1 on. Iterations are "trained" by
`hash_replay`, a deterministic stand-in for the engine whose roots are hashes
of the iteration's inputs (and final models are scored by `hash_evaluate`): the chain mechanics under test (proofs, nonces,
commitments, fork choice, reorgs, the store) do not depend on what the
iteration computes, and the real engine replay is exercised by the engine's
and the devnet's tests. Every block is built the way an honest miner would,
then checked with the spec's `state_transition`.
"""
from __future__ import annotations

import copy
import dataclasses
import json

from bws.node.merkle import MerkleTree
from bws.spec import containers as C
from bws.spec import state_transition as T
from bws.spec.constants import ROLE_EVALUATOR, ROLE_MINER, ROLE_SUPERVISOR
from bws.spec.crypto import compute_address, get_public_key
from bws.spec.genesis import create_genesis_state, get_genesis_block
from bws.spec.hashing import hash_bytes
from bws.spec.pouw import (
    compute_header_commitment, compute_message_digest, compute_nonce, compute_nonce_seed, get_input_mask_seed,
    get_nonce_allowance, is_valid_pow, sign_iteration_message,
)
from bws.spec.presets import COIN, DEVNET
from bws.spec.tasks import compute_batch_index

ITERATIONS = 1000  # per miner; each batch is trained once (spec/tasks.py is_dataset_large_enough)
TASK_DEFINITION = json.dumps(
    {"dataset": {"batch_size": 32}, "model": {"input_shape": [64], "layers": [{"type": "dense", "units": 16384}],
                                              "loss": {"type": "mse"}, "optimizer": {"type": "sgd"}},
     "template": "test"}, sort_keys=True, separators=(",", ":")).encode()


def secret_key(label: str, seed: int) -> bytes:
    return hash_bytes(f"bws-test-key/{seed}/{label}".encode())


def hash_replay(task: C.Task, message: C.IterationMessage) -> C.ReplayResult:
    """A deterministic iteration: the update and new state are hashes of the
    inputs (the input mask's seed among them, as the header keys it)."""
    work = message.work
    update = hash_bytes(b"update" + work.state_before_root + work.batch_root + b"".join(work.peer_update_roots)
                        + get_input_mask_seed(message))
    return C.ReplayResult(update_root=update, state_after_root=hash_bytes(b"after" + work.state_before_root + update))


def hash_evaluate(task: C.Task, scored: C.ScoredModel) -> int:
    """A deterministic score: a number below 1000 drawn from the model's root."""
    return int.from_bytes(hash_bytes(b"score" + scored.final_message.message.work.state_after_root)[:4], "little") % 1000


HASH_ORACLES = T.Oracles(replay=hash_replay, evaluate=hash_evaluate)


@dataclasses.dataclass(frozen=True)
class Key:
    secret: bytes

    @property
    def public_key(self) -> bytes:
        return get_public_key(self.secret)

    @property
    def address(self) -> bytes:
        return compute_address(self.public_key)


class ChainFactory:
    def __init__(self, miners: int = 2, seed: int = 0, extra_accounts: int = 2, replay=hash_replay,
                 task_definition: bytes = TASK_DEFINITION, batch_size: int | None = None) -> None:
        """`replay` computes the roots each iteration message claims (and is
        the replay to validate the chain with)."""
        self.seed = seed
        self.replay = replay
        self.oracles = T.Oracles(replay=replay, evaluate=hash_evaluate)
        self.miners = [Key(secret_key(f"miner{i}", seed)) for i in range(miners)]
        self.users = [Key(secret_key(f"user{i}", seed)) for i in range(extra_accounts)]
        self.client = Key(secret_key("client", seed))
        supervisor, evaluator = Key(secret_key("supervisor", seed)), Key(secret_key("evaluator", seed))
        funded = self.miners + self.users + [self.client, supervisor, evaluator]
        self.batch_roots = [hash_bytes(f"batch{i}".encode()) for i in range(ITERATIONS * miners)]
        self._batch_tree = MerkleTree(self.batch_roots)
        genesis = C.GenesisConfig(
            config=DEVNET, timestamp=1_700_000_000,
            accounts=[C.GenesisAccount(address=k.address, balance=1000 * COIN) for k in funded],
            stakes=[C.GenesisStake(owner=k.address, role=ROLE_MINER, amount=DEVNET.miner_ticket_price) for k in self.miners]
            + [C.GenesisStake(owner=supervisor.address, role=ROLE_SUPERVISOR, amount=DEVNET.supervisor_ticket_price),
               C.GenesisStake(owner=evaluator.address, role=ROLE_EVALUATOR, amount=DEVNET.evaluator_ticket_price)],
            tasks=[C.GenesisTask(
                client=self.client.address, task_definition=task_definition,
                dataset_root=self._batch_tree.root, num_batches=len(self.batch_roots),
                test_set_hash=hash_bytes(b"test set"), iterations=ITERATIONS, evaluation_deadline=10**9,
                payment=100 * COIN, members=[k.address for k in self.miners],
                supervisors=[supervisor.address], evaluators=[evaluator.address])],
        )
        self.genesis = genesis
        state = create_genesis_state(genesis)
        (self.task_id,) = state.tasks
        self.genesis_state = state
        self.genesis_block = get_genesis_block(state)
        self.genesis_hash = T.compute_block_hash(self.genesis_block)

    # -- transactions ---------------------------------------------------------
    def transfer(self, sender: Key, recipient: bytes, amount: int, nonce: int, fee: int = 10) -> C.SignedTransaction:
        transaction = C.Transaction(chain_id=DEVNET.chain_id, sender=sender.address, nonce=nonce, fee=fee,
                                    body=C.Transfer(recipient=recipient, amount=amount))
        return T.sign_transaction(sender.secret, transaction)

    # -- blocks ---------------------------------------------------------------
    def work(self, state: C.State, miner: Key, iteration: int, header_commitment: bytes = bytes(32)) -> C.IterationWork:
        """`miner`'s work at `iteration`, trained for the header whose commitment is given."""
        task = state.tasks[self.task_id]
        member_index = [m.address for m in task.members].index(miner.address)
        batch_index = compute_batch_index(task, iteration, member_index)
        before = hash_bytes(b"state" + miner.address + iteration.to_bytes(8, "little"))
        work = C.IterationWork(
            task_id=self.task_id, iteration=iteration, miner=miner.address, state_before_root=before,
            batch_index=batch_index, batch_root=self.batch_roots[batch_index],
            batch_proof=self._batch_tree.proof(batch_index), peer_update_roots=[],
            update_root=bytes(32), state_after_root=bytes(32), loss=-1234,
        )
        replayed = self.replay(task, C.IterationMessage(work=work, header_commitment=header_commitment))
        return dataclasses.replace(work, update_root=replayed.update_root, state_after_root=replayed.state_after_root)

    def next_block(self, state: C.State, transactions=(), miner: int = 0, timestamp: int | None = None,
                   tamper_work=None) -> tuple[C.Block, C.State]:
        """A valid block on `state` (unless `tamper_work(work)` changes the
        iteration's work before the nonces are derived), and the state after it
        (None when tampered)."""
        key = self.miners[miner]
        task = state.tasks[self.task_id]
        member = next(m for m in task.members if m.address == key.address)
        timestamp = timestamp if timestamp is not None else state.latest_block_header.timestamp + 2
        parent_hash = hash_bytes(C.BlockHeader.encode_value(dataclasses.replace(
            state.latest_block_header, state_root=T.compute_state_root(state))))
        template = C.BlockHeader(
            parent_hash=parent_hash, height=state.height + 1, timestamp=timestamp, state_root=bytes(32),
            transactions_root=T.compute_transactions_root(list(transactions)), miner=key.address,
            target=state.target, task_id=self.task_id, iteration=0, message_digest=bytes(32), nonce_index=0,
            nonce=bytes(32))
        commitment = compute_header_commitment(template)
        iteration = int(member.next_minable_iteration)
        while True:
            work = self.work(state, key, iteration, commitment)
            if tamper_work is not None:
                work = tamper_work(work)
            message = sign_iteration_message(key.secret, C.IterationMessage(work=work, header_commitment=commitment))
            seed = compute_nonce_seed(work)
            for nonce_index in range(get_nonce_allowance(state.config, task)):
                header = dataclasses.replace(template, iteration=iteration,
                                             message_digest=compute_message_digest(message.message),
                                             nonce_index=nonce_index, nonce=compute_nonce(seed, nonce_index))
                if is_valid_pow(header):
                    block = C.Block(header=header, transactions=list(transactions),
                                    proofs=[C.PouwProof(message=message)])
                    # The state root as its miner computes it, believing its own (maybe tampered) claim;
                    # a block that breaks another rule keeps a zero root (the rule refuses it first).
                    post = copy.deepcopy(state)
                    try:
                        T.process_block(post, block, T.Oracles(replay=lambda task, m: C.ReplayResult(
                            update_root=m.work.update_root, state_after_root=m.work.state_after_root)
                            if m == message.message else self.replay(task, m), evaluate=hash_evaluate))
                        block = dataclasses.replace(block, header=dataclasses.replace(
                            header, state_root=T.compute_state_root(post)))
                    except AssertionError:
                        assert tamper_work is not None, "an honest block broke a rule"
                    if tamper_work is not None:
                        return block, None
                    return block, T.state_transition(state, block, self.oracles)
            iteration += 1

    def forge(self, block: C.Block, key: Key, task_id: bytes | None = None, target: int | None = None) -> C.Block:
        """`block` mined again by `key` (any key: the stateless checks ask no stake), for another task or
        against another target: a forger's block that passes the node's stateless checks, with a zero state
        root (it is refused before any transition)."""
        template = dataclasses.replace(
            block.header, miner=key.address, task_id=block.header.task_id if task_id is None else task_id,
            target=block.header.target if target is None else target, state_root=bytes(32), iteration=0,
            message_digest=bytes(32), nonce_index=0, nonce=bytes(32))
        commitment = compute_header_commitment(template)
        for iteration in range(ITERATIONS):
            work = dataclasses.replace(block.proofs[0].message.message.work, miner=key.address,
                                       task_id=template.task_id, iteration=iteration)
            message = sign_iteration_message(key.secret, C.IterationMessage(work=work, header_commitment=commitment))
            seed = compute_nonce_seed(work)
            for nonce_index in range(self.genesis_state.config.max_nonces_per_iteration):
                header = dataclasses.replace(template, iteration=iteration, nonce_index=nonce_index,
                                             message_digest=compute_message_digest(message.message),
                                             nonce=compute_nonce(seed, nonce_index))
                if is_valid_pow(header):
                    return dataclasses.replace(block, header=header, proofs=[C.PouwProof(message=message)])
        raise AssertionError("no nonce met the target")

    def chain(self, length: int, state: C.State | None = None, miner_of=lambda height: 0, **kwargs) -> list[tuple[C.Block, C.State]]:
        state = self.genesis_state if state is None else state
        blocks = []
        for _ in range(length):
            block, state = self.next_block(state, miner=miner_of(state.height + 1), **kwargs)
            blocks.append((block, state))
        return blocks
