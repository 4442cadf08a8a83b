"""Plugging the role components into the node process (node/service.py).

    roles = RoleSet({"miner", "verifier", "supervisor", "evaluator"}, account, dataset_dir)
    node = Node(NodeSettings(..., oracles=roles.oracles, prefetch=roles.replay.prefetch))   # the verifier's replay, evaluation
    node.start()
    roles.attach(node)      # serves /bws/data/1 and /bws/audit/1, hears iteration messages, starts the role threads
    ...
    roles.stop(); node.stop()

`bws node run --roles miner,verifier,... --keystore K --password-file P`
does exactly this. The node keeps everything that is not a role: store,
validation, mempool, gossip, sync, API. The roles add, through the node's
hooks: the tensor data protocol, the iteration messages they hear, each new
head (to forget what they keep for tasks it no longer holds), a "roles"
section in /metrics and role fields in /task/<id>.
"""
from __future__ import annotations

import logging
from pathlib import Path

from bws.spec import containers as C
from bws.spec.state_transition import Oracles
from bws.spec.tasks import get_member_index
from bws.templates.errors import TemplateError
from bws.templates.task import WITHHELD_TEST_SPLIT, parse_task

from ..audit import PROTOCOL_AUDIT, AuditServer
from ..p2p import PROTOCOL_DATA
from ..wallet import Account, KeystoreError, load_keystore, read_password
from .client import accept_reveal
from .context import RoleContext
from .data import TensorCache
from .evaluator import Evaluator, NetworkEvaluate
from .flood import FLOOD, MessageFlooder, attacks_from_environment
from .library import TaskLibrary
from .miner import Miner
from .signed import SIGNED_MESSAGES_FILE, SignedMessages
from .supervisor import Supervisor
from .verifier import NetworkReplay

logger = logging.getLogger("bws.node.roles")

# Roles that sign (transactions, iteration messages) and so need the node's key.
SIGNING_ROLES = frozenset({"miner", "supervisor", "evaluator"})
TENSORS_DIRECTORY = "tensors"   # in the data dir: the tensor cache saved when the node stops


class RoleSetupError(Exception):
    """The roles cannot start (no key for a signing role, unreadable keystore)."""


def load_role_account(keystore: str | None, password_file: str | None) -> Account | None:
    """The node's account from its keystore (its password from --password-file,
    $BWS_WALLET_PASSWORD or a prompt: wallet.read_password), or None if none was given."""
    if keystore is None:
        return None
    try:
        return load_keystore(Path(keystore), read_password(password_file))
    except (OSError, KeystoreError, ValueError) as error:
        raise RoleSetupError(f"cannot unlock {keystore}: {error}") from None


def is_test_split_withheld(definition: bytes) -> bool:
    """Whether a task's definition keeps its test split with the client until evaluation."""
    try:
        return parse_task(definition).dataset["test_split"] == WITHHELD_TEST_SPLIT
    except TemplateError:
        return False


class RoleSet:
    def __init__(self, roles: set[str], account: Account | None, dataset_dir: str | None = None) -> None:
        if roles & SIGNING_ROLES and account is None:
            raise RoleSetupError(f"role(s) {', '.join(sorted(roles & SIGNING_ROLES))} sign messages and "
                                 "transactions: give the node a key (--keystore and --password-file)")
        self.roles = set(roles)
        self.account = account
        self.dataset_dir = dataset_dir
        self.context: RoleContext | None = None
        self.replay = NetworkReplay(lambda: self.context)
        self.oracles = Oracles(replay=self.replay, evaluate=NetworkEvaluate(lambda: self.context))
        self.miner = self.supervisor = self.evaluator = self.flooder = None
        self._node = None

    def attach(self, node) -> None:
        """Start the roles on a started node."""
        self._node = node
        self.context = RoleContext(chain=node.chain, mempool=node.mempool, network=node.network,
                                   account=self.account, library=TaskLibrary(self.dataset_dir),
                                   import_block=node.import_block,
                                   cache=TensorCache(directory=Path(node.data_dir) / TENSORS_DIRECTORY),
                                   signed=SignedMessages(Path(node.data_dir) / SIGNED_MESSAGES_FILE))
        node.network.register_handler(PROTOCOL_DATA, self._serve_data)
        node.reveal_handler = self.reveal
        node.iteration_message_listeners.append(self._on_iteration_message)
        node.head_listeners.append(self.context.follow_head)
        self.context.follow_head(node.chain.head_state)
        node.metrics_extensions.append(self.metrics)
        node.task_extensions.append(self.task_info)
        if "miner" in self.roles:
            self.miner = Miner(self.context)
        if "supervisor" in self.roles:
            self.supervisor = Supervisor(self.context)
        if "evaluator" in self.roles:
            self.evaluator = Evaluator(self.context)
        if FLOOD in attacks_from_environment() and self.account is not None:   # bws devnet --byzantine N:flood-messages
            self.flooder = MessageFlooder(self.context)
        # Every node with roles answers an auditor's request for the iteration messages it saw (a
        # supervisor records them all); a miner also answers for its own iterations' traces.
        audit = self.miner.audit if self.miner is not None else AuditServer(self.context)
        node.network.register_handler(PROTOCOL_AUDIT, audit.serve)
        for role in (self.miner, self.supervisor, self.evaluator, self.flooder):
            if role is not None:
                role.start()
        logger.info("roles started: %s", ", ".join(sorted(self.roles)))
        if self.account is None:
            logger.warning("no key (--keystore): this node replays blocks and refuses those that mismatch, "
                           "but signs nothing: it disputes no mismatch and mines nothing")

    def stop(self) -> None:
        if self.context is None:
            return
        self.context.stop.set()
        for role in (self.miner, self.supervisor, self.evaluator, self.flooder):
            if role is not None:
                role.join(timeout=30)
        self.context.cache.save()

    # -- hooks ------------------------------------------------------------
    def _serve_data(self, peer: str, request: bytes) -> bytes:
        return self.context.serve_data(request)

    def reveal(self, raw: bytes) -> dict:
        """POST /reveal: a withheld test split, served over /bws/data/1 from now on
        if a task committing to its root is in evaluation."""
        task_id, root, tensors = accept_reveal(self.context.chain.head_state, raw)
        self.context.cache.put_tensors(tensors, root, pin=True)
        self.context.metrics["test_sets_revealed"] += 1
        logger.info("test split %s… of task %s… revealed", root.hex()[:16], task_id.hex()[:12])
        return {"task_id": task_id.hex(), "test_set_hash": root.hex(),
                "examples": int(tensors["x"].shape[0]) if "x" in tensors and tensors["x"].ndim else 0}

    def _on_iteration_message(self, signed: C.SignedIterationMessage, origin: str) -> None:
        if self.context.messages.add(signed, origin):
            self.context.metrics["task_messages"] += 1
            work = signed.message.work
            task = self.context.chain.head_state.tasks.get(work.task_id)
            if task is not None and get_member_index(task, work.miner) is not None:
                # only its group's messages say a task is being trained (any key can sign a message)
                self.context.note_task_activity(bytes(work.task_id))
            if self.supervisor is not None:
                self.supervisor.on_message(signed)

    def metrics(self) -> dict:
        context = self.context
        gauges = {k: v for k, v in context.gauges.items() if isinstance(k, str)}
        gauges["task_messages_kept"] = len(context.messages)
        counters = {**context.metrics, "task_messages_refused": context.messages.refused}
        return {"roles": {"enabled": sorted(self.roles), "counters": counters, "gauges": gauges,
                          "address": context.address.hex() if self.account else None}}

    def task_info(self, task_id: bytes, task: C.Task) -> dict:
        """Role fields of /task/<id>: iterations seen, each member's latest model root, the evaluation, the supervisor's history."""
        context = self.context
        models = {}
        for member in task.members:
            latest = context.messages.latest(task_id, bytes(member.address))
            if latest is not None:
                models[bytes(member.address).hex()] = {"iteration": int(latest.message.work.iteration),
                                                       "state_root": bytes(latest.message.work.state_after_root).hex(),
                                                       "loss": int(latest.message.work.loss) / (1 << 16)}
        document = {"max_iteration_seen": context.messages.max_iteration(task_id), "latest_models": models,
                    "test_split_withheld": is_test_split_withheld(bytes(task.task_definition))}
        evaluation = context.gauges.get(("evaluation", task_id))
        if evaluation is not None:
            document["evaluation"] = evaluation
        if self.supervisor is not None and self.account and self.account.address in [bytes(s) for s in task.supervisors]:
            document["supervisor_history"] = self.supervisor.history(task_id)
        return document
