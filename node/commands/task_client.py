"""`bws task submit|status|reveal|result`: the client role from the command line.

    bws task submit task.json --keystore client.json --api http://127.0.0.1:8645 --group-size 2 --iterations 50
    bws task status <task id> --api http://127.0.0.1:8645 [--watch]
    bws task reveal task.json --test-file my_test.npz --task-id <task id> --wait
    bws task result <task id> --api http://127.0.0.1:8645 --output model.npz

`submit` signs a SubmitTask transaction for a task file (`bws task new`) with
its fee escrowed, `status` shows the task's lifecycle, training progress and
blocks, `reveal` hands a withheld test split (`bws task new --test-file`) to
the node once the task is in evaluation (`--wait`: waits for that), so that
evaluators can score the final models, `result` reads the evaluation scores from the block that finalized
the task and downloads the best final model from the node over
`/bws/data/1` (checked against the model root its miner signed) into an
.npz file of fixed-point integer tensors (`params/<layer>/kernel`, ...);
`result --check task.json [--test-file my_test.npz]` scores that model on the
test split itself: evaluation is integer-exact, so the count on chain (which
every replaying node checked) must come out the same.
"""
from __future__ import annotations

import sys
import time
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from pathlib import Path

from bws.node.api import ApiError

from . import CommandError, parse_hex
from .chain import DEFAULT_API

TERMINAL = ("finalized", "cancelled", "expired")


def register(commands) -> None:
    submit = commands.add_parser("submit", help="submit a task file to the chain (client role)",
                                 description="Sign and send a SubmitTask transaction for TASK_JSON; prints the task id.")
    submit.add_argument("task_file", metavar="TASK_JSON", help="a task definition from `bws task new`")
    submit.add_argument("--keystore", required=True, type=Path, help="the client's keystore (bws wallet new)")
    submit.add_argument("--password-file", type=Path, help="file holding the password (else $BWS_WALLET_PASSWORD, else a prompt)")
    submit.add_argument("--api", default=DEFAULT_API, help=f"node API URL (default {DEFAULT_API})")
    submit.add_argument("--group-size", type=int, default=2, help="miners that train the task together (default 2)")
    submit.add_argument("--iterations", type=int, help="iterations of each miner (default: the task's batches / group size)")
    submit.add_argument("--payment", default="10", help="the fee for the work, in coins, escrowed until the task ends (default 10)")
    submit.add_argument("--deadline-blocks", type=int,
                        help="blocks from now until the evaluation deadline (default: iterations + 20)")
    submit.add_argument("--fee", type=int, help="transaction fee in units (default: the chain's minimum)")
    submit.set_defaults(run=run_submit)

    status = commands.add_parser("status", help="show a submitted task's state and progress",
                                 description="Show a task's lifecycle status, training progress and blocks.")
    status.add_argument("task_id", metavar="TASK_ID", help="64 hex characters (printed by submit)")
    status.add_argument("--api", default=DEFAULT_API, help=f"node API URL (default {DEFAULT_API})")
    status.add_argument("--watch", action="store_true", help="keep showing changes until the task ends")
    status.set_defaults(run=run_status)

    reveal = commands.add_parser("reveal", help="reveal a task's withheld test split to the evaluators",
                                 description="Send the test split of TASK_JSON (made with --test-file) to the node, "
                                             "which serves it to the evaluators; nodes take it only while the task "
                                             "is in evaluation.")
    reveal.add_argument("task_file", metavar="TASK_JSON", help="the task definition (bws task new --test-file)")
    reveal.add_argument("--test-file", required=True, metavar="NPZ", help="the test file the task was made with")
    reveal.add_argument("--task-id", help="with --wait: the submitted task to wait for (printed by submit)")
    reveal.add_argument("--wait", action="store_true", help="wait until the task is in evaluation, then reveal")
    reveal.add_argument("--data-dir", help="TFDS data directory (default: $BWS_DATA_DIR or ~/.cache/bws/tensorflow_datasets)")
    reveal.add_argument("--api", default=DEFAULT_API, help=f"node API URL (default {DEFAULT_API})")
    reveal.set_defaults(run=run_reveal)

    result = commands.add_parser("result", help="scores of a finalized task, and its best model",
                                 description="Read the evaluation of a finalized task from the chain and download "
                                             "the best final model from the node.")
    result.add_argument("task_id", metavar="TASK_ID", help="64 hex characters")
    result.add_argument("--api", default=DEFAULT_API, help=f"node API URL (default {DEFAULT_API})")
    result.add_argument("--output", type=Path, help="write the best model's tensors to this .npz file")
    result.add_argument("--check", metavar="TASK_JSON",
                        help="score the best model here on the task's test split and compare with the evaluator's "
                             "score (integer-exact: they must be equal); TASK_JSON is the submitted task file")
    result.add_argument("--test-file", metavar="NPZ", help="with --check: the task's withheld test split")
    result.add_argument("--data-dir", help="with --check: TFDS data directory (default: $BWS_DATA_DIR or "
                                           "~/.cache/bws/tensorflow_datasets)")
    result.set_defaults(run=run_result)


def run_submit(args) -> int:
    from bws.node.api import ApiClient, ApiError
    from bws.node.wallet import read_password
    from bws.node.roles.client import Client, TaskOrder
    from bws.node.wallet import KeystoreError, load_keystore
    from bws.spec.presets import COIN
    from bws.templates.errors import TemplateError
    from bws.templates.task import WITHHELD_TEST_SPLIT, load_task, require_chain_template

    try:
        definition = load_task(args.task_file)
        require_chain_template(definition)  # before asking for a password or a node
        try:
            payment = int(Decimal(args.payment) * COIN)
        except InvalidOperation:
            raise ValueError(f"--payment {args.payment!r} is not a number of coins") from None
        if args.group_size < 1:
            raise ValueError("--group-size must be at least 1")
        iterations = args.iterations or definition.dataset["num_batches"] // args.group_size
        account = load_keystore(args.keystore, read_password(args.password_file))
        api = ApiClient(args.api)
        status = api.get("/status")
        deadline = int(status["head"]["height"]) + (args.deadline_blocks or iterations + 20)
        fee = args.fee if args.fee is not None else int(status["min_transaction_fee"])
        task_id = Client(account, api, int(status["chain_id"])).submit(
            definition, TaskOrder(group_size=args.group_size, iterations=iterations, evaluation_deadline=deadline,
                                  payment=payment, fee=fee))
    except (TemplateError, KeystoreError, ApiError, ValueError) as error:
        raise CommandError(str(error)) from None
    print(task_id.hex())
    print(f"submitted: {args.group_size} miners x {iterations} iterations, payment {args.payment} coins, "
          f"evaluation deadline at height {deadline}", file=sys.stderr)
    if definition.dataset["test_split"] == WITHHELD_TEST_SPLIT:
        print(f"its test split is withheld: reveal it in evaluation, e.g. bws task reveal {args.task_file} "
              f"--test-file YOUR_TEST.npz --task-id {task_id.hex()} --wait --api {args.api}", file=sys.stderr)
    return 0


def describe(document: dict) -> str:
    models = document.get("latest_models", {})
    losses = ", ".join(f"{miner[:8]}… iteration {m['iteration'] + 1} loss {m['loss']:.3f}" for miner, m in models.items())
    waiting = document["status"] == "evaluation" and document.get("test_split_withheld")
    return (f"{document['status']}: {len(document['blocks'])} blocks from its iterations"
            + (f"; {losses}" if losses else "")
            + ("; its test split is withheld: the client reveals it now (bws task reveal)" if waiting else ""))


def run_status(args) -> int:
    from bws.node.api import ApiClient, ApiError

    api = ApiClient(args.api)
    last = None
    try:
        task_id = parse_hex(args.task_id, 32, "a task id")
        while True:
            try:
                document = api.get(f"/task/{task_id.hex()}")
            except ApiError as error:
                if error.status != HTTPStatus.NOT_FOUND or not args.watch:
                    raise
                document = None  # the submission is not in a block yet
            line = describe(document) if document else "not in a block yet"
            if line != last:
                print(line, flush=True)
                last = line
            if document and (not args.watch or document["status"] in TERMINAL):
                return 0
            time.sleep(2.0)
    except (ApiError, ValueError) as error:
        raise CommandError(str(error)) from None
    except KeyboardInterrupt:
        return 130


def wait_for_evaluation(api, task_id: bytes, poll_seconds: float = 1.0) -> None:
    """Return once the task is in evaluation; ValueError if it ended first."""
    last = None
    while True:
        try:
            status = api.get(f"/task/{task_id.hex()}")["status"]
        except ApiError as error:
            if error.status != HTTPStatus.NOT_FOUND:
                raise
            status = "not in a block yet"
        if status != last:
            print(f"task {status}", file=sys.stderr, flush=True)
            last = status
        if status == "evaluation":
            return
        if status in TERMINAL:
            raise ValueError(f"the task is {status}: there is no evaluation to reveal the test split to")
        time.sleep(poll_seconds)


def run_reveal(args) -> int:
    from bws.node.api import ApiClient
    from bws.node.roles.client import reveal_test_set, withheld_test_set
    from bws.templates.errors import TemplateError
    from bws.templates.task import WITHHELD_TEST_SPLIT, load_task, task_data

    try:
        definition = load_task(args.task_file)
        if definition.dataset["test_split"] != WITHHELD_TEST_SPLIT:
            raise ValueError(f"this task tests on the public {definition.dataset['name']}:"
                             f"{definition.dataset['test_split']}: there is nothing to reveal")
        if args.wait and not args.task_id:
            raise ValueError("--wait needs --task-id (the id `bws task submit` printed)")
        test_set = withheld_test_set(task_data(definition, args.data_dir, test_file=args.test_file))
        api = ApiClient(args.api, timeout=300)
        if args.wait:
            wait_for_evaluation(api, parse_hex(args.task_id, 32, "a task id"))
        answer = reveal_test_set(api, test_set)
    except (TemplateError, ApiError, ValueError) as error:
        raise CommandError(str(error)) from None
    except KeyboardInterrupt:
        return 130
    print(f"revealed the test split ({answer['examples']} examples, root {answer['test_set_hash'][:16]}…) "
          f"of task {answer['task_id']}")
    return 0


def evaluation_models(api, task_id: bytes, document: dict) -> dict[str, dict]:
    """The final models of the EvaluationResult that finalized the task (in the
    block at its status height), by miner: {"correct", "iteration", "state_root"}."""
    block = api.get(f"/block/{document['task']['status_height']}")["block"]
    for signed in block["transactions"]:
        body = signed["transaction"]["body"]
        if body.get("type") == "EvaluationResult" and body["task_id"] == task_id.hex():
            models = {}
            for scored in body["models"]:
                work = scored["final_message"]["message"]["work"]
                models[work["miner"]] = {"correct": int(scored["correct"]), "iteration": int(work["iteration"]),
                                         "state_root": work["state_after_root"]}
            return models
    raise ValueError("the finalizing block holds no evaluation result for this task")


def download_tensors(p2p_address: str, root: bytes) -> dict:
    """Fetch a tensor bundle by root from a node over /bws/data/1, checked against the root."""
    from bws.node.p2p import PROTOCOL_DATA, NetworkService
    from bws.node.roles.data import FOUND, decode_checked, tensors_request

    network = NetworkService()
    network.start()
    try:
        peer = network.connect(p2p_address)
        answer = network.request(peer, PROTOCOL_DATA, tensors_request(root), timeout=60)
    finally:
        network.stop()
    if answer[:1] != FOUND:
        raise ValueError("the node does not hold that model (a node keeps models in its data dir's tensors/, "
                         "within 1 GiB, saved when it stops: it may have been killed, or dropped it for newer ones)")
    return decode_checked(answer[1:], root)


def run_result(args) -> int:
    import numpy as np

    from bws.node.api import ApiClient, ApiError
    from bws.node.p2p import NetworkError
    from bws.node.roles.data import DataError
    from bws.templates.errors import TemplateError
    from bws.templates.task import parse_task

    api = ApiClient(args.api)
    try:
        task_id = parse_hex(args.task_id, 32, "a task id")
        document = api.get(f"/task/{task_id.hex()}")
        if document["status"] != "finalized":
            raise ValueError(f"the task is {document['status']}, not finalized")
        models = evaluation_models(api, task_id, document)
        examples = parse_task(bytes.fromhex(document["task"]["task_definition"])).dataset["test_examples"]
        members = [m["address"] for m in document["task"]["members"]]
        scored = [miner for miner in members if miner in models]
        best = max(scored, key=lambda miner: (models[miner]["correct"], -members.index(miner)), default=None)
        for miner in members:
            if miner not in models:
                print(f"{miner}  no final model scored")
                continue
            correct, mark = models[miner]["correct"], "  <- best" if miner == best else ""
            print(f"{miner}  test accuracy {correct / examples * 100:.2f}% ({correct}/{examples}){mark}")
        if args.output is None and args.check is None:
            return 0
        if best is None:
            raise ValueError("the evaluation scored no model")
        model = models[best]
        tensors = download_tensors(api.get("/status")["address"], bytes.fromhex(model["state_root"]))
        if args.output is not None:
            np.savez(args.output, **tensors)
            print(f"best model (iteration {model['iteration'] + 1}, root {model['state_root'][:16]}…) written to {args.output}")
        if args.check is not None:
            return check_score(args, document, tensors, model["correct"])
    except (ApiError, ValueError, NetworkError, DataError, OSError, TemplateError) as error:
        raise CommandError(str(error)) from None
    return 0


def check_score(args, document: dict, tensors: dict, reported: int) -> int:
    """Score the downloaded model on the task's test split here; 0 if it gets the evaluator's count right."""
    from bws import engine
    from bws.engine.commit import unflatten
    from bws.templates.task import load_task, task_data

    definition = load_task(args.check)
    if definition.to_bytes().hex() != document["task"]["task_definition"]:
        raise ValueError(f"{args.check} is not the definition this task was submitted with")
    data = task_data(definition, args.data_dir, test_file=args.test_file)
    if not data.has_test:
        raise ValueError("this task's test split is withheld: give the client's --test-file")
    result = engine.evaluate(definition.model, unflatten(tensors)["params"], data.test_x, data.test_y)
    same = result["correct"] == reported
    print(f"checked here: {result['correct']}/{result['count']} = {result['correct'] / max(result['count'], 1) * 100:.2f}% "
          f"on the test split; the evaluator reported {reported} right: {'the same' if same else 'DIFFERENT'}")
    return 0 if same else 1
