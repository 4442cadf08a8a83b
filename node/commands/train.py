"""`bws train TASK_JSON`: train a task locally, canonically (the same integer
arithmetic every miner runs), with a progress bar; write the loss curve, the
final test metrics and the exported model.

    bws train task.json --out runs/dnn
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import CommandError


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_file", metavar="TASK_JSON", help="a task definition (bws task new ... > task.json)")
    parser.add_argument("--out", metavar="DIR", default="bws-train",
                        help="output folder for the loss curve, metrics and exported model (default: bws-train)")
    parser.add_argument("--data-dir", help="TFDS data directory (default: $BWS_DATA_DIR or ~/.cache/bws/tensorflow_datasets)")
    parser.add_argument("--test-file", metavar="NPZ", help="the test split of a task made with --test-file (withheld)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from bws.engine import EngineError
    from bws.templates.errors import TemplateError
    from bws.templates.export import export_model
    from bws.templates.task import load_task
    from bws.templates.training import save_image_grid, save_loss_curve, train_task

    try:
        task = load_task(args.task_file)
        print(f"task {task.task_hash}: {task.template} on {task.dataset['name']}, "
              f"{task.hyperparameters['iterations']} iterations", file=sys.stderr)
        result = train_task(task, args.data_dir, progress=not args.quiet, test_file=args.test_file)
        os.makedirs(args.out, exist_ok=True)
        written = [os.path.join(args.out, "loss.png"), os.path.join(args.out, "metrics.json")]
        save_loss_curve(result.iteration_losses, written[0], f"{task.template} on {task.dataset['name']} (canonical)")
        with open(written[1], "w", encoding="utf-8") as f:
            json.dump({"task": task.task_hash, "template": task.template, **result.test_metrics,
                       "final_losses": {k: v[-1] for k, v in result.iteration_losses.items()}}, f, indent=1, sort_keys=True)
        if task.template == "gan":
            shape = task.generator["layers"] and tuple(task.model["input_shape"])
            side = int(round(float(sum(shape)) ** 0.5)) if len(shape) == 1 else shape[0]
            grid = os.path.join(args.out, "samples.png")
            save_image_grid(result.samples, (side, -1), tuple(task.dataset["input_range"]), grid,
                            f"generated {task.dataset['name']} (canonical GAN)")
            written.append(grid)
            written += export_model(task.generator, result.params["generator"], args.out, "generator")
            written += export_model(task.model, result.params["discriminator"], args.out, "discriminator")
        else:
            written += export_model(task.model, result.params["model"], args.out, "model")
    except (TemplateError, EngineError) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write to {args.out}: {exc.strerror}") from None
    for name, value in sorted(result.test_metrics.items()):
        print(f"{name}: {value:.4f}")
    for path in written:
        print(f"wrote {path}")
    return 0
