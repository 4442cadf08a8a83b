"""`bws engine` and `bws replay`: iteration vectors and the canonical engine.

    bws engine vector --model mlp:784-512-256-10 --batch 1024 --seed 1 --out it.vec
    bws engine check --model cnn:28x28x1-8-16-10
    bws replay it.vec [--impl engine|reference] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys

from . import CommandError


def register(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    vector = commands.add_parser(
        "vector", help="write an iteration vector (one iteration's inputs and expected digests)",
        description="Run one canonical iteration on synthetic data and write its inputs and output digests "
                    "to a self-contained file that `bws replay` re-executes.")
    _add_model_arguments(vector)
    vector.add_argument("--batch", type=int, default=256, help="examples in the batch (default 256)")
    vector.add_argument("--seed", type=int, default=1, help="seed of the initial state and the synthetic data")
    vector.add_argument("--warmup", type=int, default=1, help="iterations run before the recorded one (default 1)")
    vector.add_argument("--peers", type=int, default=2, help="random peer updates summed into its input (default 2)")
    vector.add_argument("--out", required=True, metavar="FILE", help="where to write the vector")
    vector.set_defaults(run=run_vector)

    check = commands.add_parser(
        "check", help="check that a model's compiled iteration uses only canonical integer primitives",
        description="Trace the whole iteration (forward, backward, optimizer) and walk its jaxpr against the "
                    "allow-list; prints the number of equations checked or the offending primitive.")
    _add_model_arguments(check)
    check.set_defaults(run=run_check)


def register_replay(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="an iteration vector written by `bws engine vector`")
    parser.add_argument("--impl", choices=("engine", "reference"), default="engine",
                        help="engine: the JIT-compiled JAX engine (default); reference: the NumPy spec")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(run=run_replay)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="mlp:IN-H1-...-OUT, cnn:HxWxC-F1-...-CLASSES, or a model JSON file (docs/engine.md)")
    parser.add_argument("--slices", type=int, choices=(1, 2, 3), help="int8 slices per operand (default: the model's, 2)")


def _load_model(args) -> dict:
    from bws.engine import ModelSpec, parse_model_shorthand

    text = args.model
    if text.startswith(("mlp:", "cnn:")):
        model = parse_model_shorthand(text)
    else:
        try:
            with open(text, "r", encoding="utf-8") as f:
                model = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read model file {text}: {error}") from None
    if args.slices is not None and isinstance(model, dict):
        model["slices"] = args.slices
    return ModelSpec.from_dict(model).to_dict()


def run_vector(args) -> int:
    from tqdm import tqdm

    from bws.engine import EngineError
    from bws.engine.vector import make_vector

    if args.warmup < 0 or args.peers < 0 or args.peers > 64:
        raise CommandError("--warmup must be >= 0 and --peers in 0..64")
    try:
        model = _load_model(args)
        with tqdm(total=args.warmup + 1, desc="iterations", unit="it", file=sys.stderr, leave=False) as bar:
            vector = make_vector(model, args.batch, args.seed, warmup=args.warmup, peers=args.peers,
                                 progress=lambda: bar.update(1))
        data = vector.to_bytes()
        with open(args.out, "wb") as f:
            f.write(data)
    except (EngineError, ValueError, OSError) as error:
        raise CommandError(str(error)) from None
    print(f"wrote {args.out} ({len(data)} bytes)")
    print(f"state_root  {vector.expected['state_root']}")
    print(f"update_root {vector.expected['update_root']}")
    print("metrics     " + " ".join(f"{k}={v}" for k, v in vector.expected["metrics"].items()))
    return 0


def run_check(args) -> int:
    from bws.engine import EngineError
    from bws.engine.checker import check_iteration

    try:
        count = check_iteration(_load_model(args))
    except (EngineError, ValueError) as error:
        raise CommandError(str(error)) from None
    print(f"canonical: {count} equations checked, all integer primitives on the allow-list")
    return 0


def run_replay(args) -> int:
    from bws.engine import EngineError
    from bws.engine.vector import read_vector, replay

    try:
        with open(args.file, "rb") as f:
            data = f.read()
        result = replay(read_vector(data), args.impl)
    except OSError as error:
        raise CommandError(f"cannot read {args.file}: {error.strerror or error}") from None
    except EngineError as error:
        raise CommandError(str(error)) from None
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        got, expected = result["got"], result["expected"]
        print(f"impl        {result['impl']} ({', '.join(f'{k} {v}' for k, v in result['ran_on'].items())})")
        for key in ("state_root", "update_root"):
            flag = "" if got[key] == expected[key] else f"   (expected {expected[key]})"
            print(f"{key:<11} {got[key]}{flag}")
        metrics = " ".join(f"{k}={v}" for k, v in got["metrics"].items())
        flag = "" if got["metrics"] == expected["metrics"] else f"   (expected {expected['metrics']})"
        print(f"metrics     {metrics}{flag}")
        print("MATCH" if result["match"] else "MISMATCH")
    return 0 if result["match"] else 1
