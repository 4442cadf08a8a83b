"""`bws task`: write and inspect task definitions (what a SubmitTask carries).

    bws task new --template dnn --dataset digits --epochs 20 > task.json
    bws task new --template dnn --dataset digits --test-file my_test.npz > task.json   # test split withheld
    bws task show task.json
"""
from __future__ import annotations

import argparse
import sys

from bws.templates import jobs
from bws.templates.errors import TemplateError

from . import CommandError, task_client


def register(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    new = commands.add_parser("new", help="write a task definition (canonical JSON) to stdout",
                              description="Build a task from a job template and a dataset; prints canonical JSON.")
    new.add_argument("--template", required=True, choices=sorted(jobs.TEMPLATES),
                     help="job template: " + "; ".join(f"{t.name}: {t.description}" for t in jobs.TEMPLATES.values()))
    new.add_argument("--dataset", default="digits", help="TFDS dataset name, prepared locally (default: digits, shipped)")
    new.add_argument("--model", metavar="KERAS_JSON", help="a Keras model.to_json() file (default: the template's model)")
    new.add_argument("--generator", metavar="KERAS_JSON", help="gan: the generator's Keras JSON")
    new.add_argument("--discriminator", metavar="KERAS_JSON", help="gan: the discriminator's Keras JSON")
    new.add_argument("--epochs", type=int, help="epochs over the training split (default: per template)")
    new.add_argument("--batch-size", type=int, help="examples per iteration (default: per template)")
    new.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    new.add_argument("--learning-rate", type=float, help="default: per template")
    new.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default 0)")
    new.add_argument("--slices", type=int, choices=(2, 3),
                     help="int8 slices per fixed-point number (default: 2 for gan, 3 otherwise)")
    new.add_argument("--seed", type=int, default=0, help="seed of the canonical weight initialization")
    new.add_argument("--schedule-seed", type=int, default=0, help="seed of the batch schedule")
    new.add_argument("--latent-dim", type=int, default=16, help="gan: size of the generator's noise input")
    new.add_argument("--data-dir", help="TFDS data directory (default: $BWS_DATA_DIR or ~/.cache/bws/tensorflow_datasets)")
    new.add_argument("--test-file", metavar="NPZ",
                     help="your own test split, withheld until evaluation (bws task reveal): an .npz with x (inputs "
                          "in the dataset's units) and y (labels); default: the dataset's test split, public")
    new.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    new.set_defaults(run=run_new)

    show = commands.add_parser("show", help="print a readable summary of a task file",
                               description="Validate a task file and summarize it (hash, dataset, model).")
    show.add_argument("task_file", metavar="TASK_JSON")
    show.set_defaults(run=run_show)

    task_client.register(commands)  # submit, status, reveal, result (the client role)


def _read_keras(path: str):
    from bws.templates import keras

    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read Keras JSON {path}: {exc}") from None
    return keras.models.model_from_json(text)


def run_new(args: argparse.Namespace) -> int:
    try:
        model = None
        if args.template == "gan":
            if args.model:
                raise CommandError("the gan template takes --generator and --discriminator, not --model")
            if bool(args.generator) != bool(args.discriminator):
                raise CommandError("give both --generator and --discriminator, or neither")
            if args.generator:
                model = (_read_keras(args.generator), _read_keras(args.discriminator))
        elif args.generator or args.discriminator:
            raise CommandError("--generator/--discriminator are for the gan template")
        elif args.model:
            model = _read_keras(args.model)
        for name in ("epochs", "batch_size", "latent_dim"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be positive, got {value}")
        task = jobs.make_task(args.template, args.dataset, model, epochs=args.epochs, batch_size=args.batch_size,
                              optimizer=args.optimizer, learning_rate=args.learning_rate, momentum=args.momentum,
                              slices=args.slices, schedule_seed=args.schedule_seed, init_seed=args.seed,
                              latent_dim=args.latent_dim, data_dir=args.data_dir, test_file=args.test_file)
    except TemplateError as exc:
        raise CommandError(str(exc)) from None
    data = task.to_bytes() + b"\n"
    if args.output:
        with open(args.output, "wb") as f:
            f.write(data)
        print(f"wrote {args.output} (task {task.task_hash})", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def run_show(args: argparse.Namespace) -> int:
    from bws.templates.keras.models import model_from_engine_description
    from bws.templates.task import WITHHELD_TEST_SPLIT, load_task

    try:
        task = load_task(args.task_file)
        dataset, hyper = task.dataset, task.hyperparameters
        print(f"task       {task.task_hash}")
        print(f"template   {task.template}: {jobs.TEMPLATES[task.template].description}")
        print(f"dataset    {dataset['name']}:{dataset['version']} split {dataset['split']} "
              f"({dataset['num_examples']} examples, inputs scaled to {dataset['input_range']}), "
              f"target {dataset['target']}")
        kept = "the client's, withheld until evaluation" if dataset["test_split"] == WITHHELD_TEST_SPLIT \
            else "the dataset's, rebuilt by evaluators"
        print(f"test split {dataset['test_split']} ({dataset['test_examples']} examples, {kept}), root {dataset['test_root']}")
        print(f"batches    {dataset['num_batches']} of {dataset['batch_size']} ({hyper['epochs']} epochs, "
              f"schedule {dataset['schedule']['rule']} seed {dataset['schedule']['seed']}), root {dataset['batches_root']}")
        print(f"training   {hyper['iterations']} iterations, init seed {hyper['init_seed']}, {task.document['slices']} int8 slices")
        optimizer = ", ".join(f"{k}={v}" for k, v in sorted(task.model["optimizer"].items()) if k != "type")
        print(f"optimizer  {task.model['optimizer']['type']} ({optimizer})")
        print(f"loss       {task.model['loss']['type']}")
        networks = [("generator", task.generator), ("discriminator", task.model)] if task.template == "gan" \
            else [("model", task.model)]
        if task.template == "gan":
            print(f"latent dim {hyper['latent_dim']}")
        for name, description in networks:
            print()
            model_from_engine_description(description, name=name).summary()
    except TemplateError as exc:
        raise CommandError(str(exc)) from None
    return 0
