"""The canonical engine against the plain flax+optax float32 jitted step.

One run prints, for the MLP 784-512-256-10 at batch 256 and 1024 and a small
CNN (28x28x1, two 3x3 conv + 2x2 max-pool blocks of 8 and 16 filters, dense 10):
time per iteration of each and their ratio, cold compile time, the replay time a
verifier pays (a fresh process: import, compile, one iteration), and peak
memory (XLA's buffer assignment for the step, and the process's peak RSS).
Each measurement runs in its own subprocess. Then training quality: the same
MLP (64-64-32-10, Adam) trained on the digits data canonically (2 slices) and
in float32, same initial weights, batches and hyper-parameters; test accuracy
side by side.

    .venv/bin/python bench/engine.py            # everything (a few minutes on 2 cores)
    .venv/bin/python bench/engine.py --rounds 5 # more canonical/float pairs per case (medians)
    .venv/bin/python bench/engine.py --quick    # fewer timed iterations, fewer epochs
"""
from __future__ import annotations

import argparse
import gzip
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CASES = [("mlp:784-512-256-10", 256), ("mlp:784-512-256-10", 1024), ("cnn:28x28x1-8-16-10", 256)]


# ---------------------------------------------------------------------------
# Workers (run in subprocesses)
# ---------------------------------------------------------------------------
def _synthetic(spec_input_shape, classes, batch, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((batch,) + tuple(spec_input_shape)), rng.integers(0, classes, batch)


def _memory(compiled) -> int:
    analysis = compiled.memory_analysis()
    return int(analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes)


def worker_canonical(model: str, batch: int, iterations: int) -> dict:
    start = time.perf_counter()
    import jax

    from bws.engine import ModelSpec, init_state, make_iteration, parse_model_shorthand, quantize_inputs, sum_updates

    spec = ModelSpec.from_dict(parse_model_shorthand(model))
    x, y = _synthetic(spec.input_shape, spec.output_shape[0], batch)
    data = {"x": jax.numpy.asarray(quantize_inputs(x)), "y": jax.numpy.asarray(y.astype(np.int32))}
    state = init_state(spec, 1)
    peers = sum_updates([], spec)
    t = time.perf_counter()
    compiled = make_iteration(spec).lower(state, data, peers).compile()
    compile_s = time.perf_counter() - t
    state, _, _ = jax.block_until_ready(compiled(state, data, peers))
    first_s = time.perf_counter() - start
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        state, _, _ = jax.block_until_ready(compiled(state, data, peers))
        times.append(time.perf_counter() - t)
    return {"compile_s": compile_s, "cold_s": first_s, "iter_s": statistics.median(times),
            "xla_bytes": _memory(compiled), "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _flax_model(model: str):
    from flax import linen as nn

    kind, _, body = model.partition(":")
    if kind == "mlp":
        sizes = [int(v) for v in body.split("-")]

        class MLP(nn.Module):
            @nn.compact
            def __call__(self, x):
                for units in sizes[1:-1]:
                    x = nn.relu(nn.Dense(units, kernel_init=nn.initializers.glorot_uniform())(x))
                return nn.Dense(sizes[-1], kernel_init=nn.initializers.glorot_uniform())(x)
        return MLP(), (sizes[0],), sizes[-1]
    image, *rest = body.split("-")
    shape = tuple(int(v) for v in image.split("x"))
    *filters, classes = [int(v) for v in rest]

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            for f in filters:
                x = nn.relu(nn.Conv(f, (3, 3), padding="SAME", kernel_init=nn.initializers.glorot_uniform())(x))
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = x.reshape(x.shape[0], -1)
            return nn.Dense(classes, kernel_init=nn.initializers.glorot_uniform())(x)
    return CNN(), shape, classes


def worker_float(model: str, batch: int, iterations: int) -> dict:
    start = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import optax

    net, input_shape, classes = _flax_model(model)
    x, y = _synthetic(input_shape, classes, batch)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    params = net.init(jax.random.key(1), x[:1])
    optimizer = optax.adam(1e-3, eps=1e-7)
    opt_state = optimizer.init(params)

    def step(params, opt_state, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(net.apply(p, x), y).mean()
        grads = jax.grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    t = time.perf_counter()
    compiled = jax.jit(step).lower(params, opt_state, x, y).compile()
    compile_s = time.perf_counter() - t
    params, opt_state = jax.block_until_ready(compiled(params, opt_state, x, y))
    first_s = time.perf_counter() - start
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        params, opt_state = jax.block_until_ready(compiled(params, opt_state, x, y))
        times.append(time.perf_counter() - t)
    return {"compile_s": compile_s, "cold_s": first_s, "iter_s": statistics.median(times),
            "xla_bytes": _memory(compiled), "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def worker_reference(model: str, batch: int) -> dict:
    """The NumPy reference's replay of one iteration (what an auditor without JAX pays)."""
    start = time.perf_counter()
    from bws.engine import ModelSpec, parse_model_shorthand, quantize_inputs
    from bws.spec.reference import training

    spec = ModelSpec.from_dict(parse_model_shorthand(model))
    x, y = _synthetic(spec.input_shape, spec.output_shape[0], batch)
    state = training.init_state(spec.to_dict(), 1)
    zero = {k: {n: np.zeros_like(a) for n, a in p.items()} for k, p in state["params"].items()}
    t = time.perf_counter()
    training.iteration(spec.to_dict(), state, {"x": quantize_inputs(x), "y": y.astype(np.int32)}, zero)
    return {"iter_s": time.perf_counter() - t, "cold_s": time.perf_counter() - start}


def _median_of(results: list[dict]) -> dict:
    return {key: statistics.median(result[key] for result in results) for key in results[0]}


def run_worker(kind: str, model: str, batch: int, iterations: int) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--model", model, "--batch", str(batch),
               "--iterations", str(iterations)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker failed: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# Training quality on digits
# ---------------------------------------------------------------------------
def load_digits():
    path = ROOT / "templates/datasets/digits/digits.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x, y = table[:, :64] / 16.0, table[:, 64]
    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[:360], order[360:]
    return x[train], y[train], x[test], y[test]


def training_quality(epochs: int, batch: int = 32, learning_rate: float = 0.003) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from bws import engine

    x_train, y_train, x_test, y_test = load_digits()
    model = {"input_shape": [64], "slices": 2,
             "layers": [{"type": "dense", "units": 64, "activation": "relu"},
                        {"type": "dense", "units": 32, "activation": "relu"},
                        {"type": "dense", "units": 10, "activation": "softmax"}],
             "loss": {"type": "softmax_cross_entropy"},
             "optimizer": {"type": "adam", "learning_rate": learning_rate}}
    spec = engine.ModelSpec.from_dict(model)
    state = engine.init_state(spec, 0)
    # float32 starts from the same weights, decoded from fixed point
    float_params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a) / 2.0**24, jnp.float32), state["params"])
    layers = sorted(float_params, key=int)

    def apply(params, x):
        for i, layer in enumerate(layers):
            x = x @ params[layer]["kernel"] + params[layer]["bias"]
            if i < len(layers) - 1:
                x = jax.nn.relu(x)
        return x

    optimizer = optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-7)
    opt_state = optimizer.init(float_params)

    @jax.jit
    def float_step(params, opt_state, x, y):
        grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean())(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    iteration = engine.make_iteration(spec)
    peers = engine.sum_updates([], spec)
    x_train_q, x_test_q = engine.quantize_inputs(x_train), engine.quantize_inputs(x_test)
    rng = np.random.default_rng(1)
    t_canonical = t_float = 0.0
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order) - batch + 1, batch):
            index = order[start:start + batch]
            t = time.perf_counter()
            state, _, _ = iteration(state, {"x": x_train_q[index], "y": y_train[index].astype(np.int32)}, peers)
            jax.block_until_ready(state)
            t_canonical += time.perf_counter() - t
            t = time.perf_counter()
            float_params, opt_state = jax.block_until_ready(float_step(
                float_params, opt_state, jnp.asarray(x_train[index], jnp.float32), jnp.asarray(y_train[index])))
            t_float += time.perf_counter() - t
    canonical = engine.evaluate(spec, state["params"], x_test_q, y_test)
    float_accuracy = float(np.mean(np.argmax(apply(float_params, jnp.asarray(x_test, jnp.float32)), -1) == y_test))
    return {"canonical": float(canonical["accuracy"]), "float": float_accuracy, "epochs": epochs, "batch": batch,
            "train_canonical_s": t_canonical, "train_float_s": t_float}


# ---------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 timed iterations and 10 epochs")
    parser.add_argument("--worker", choices=("canonical", "float", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--skip-quality", action="store_true", help="only the speed and memory table")
    parser.add_argument("--rounds", type=int, default=3,
                        help="canonical/float worker pairs per case; each figure is the median (default 3)")
    args = parser.parse_args()
    if args.worker:
        result = {"canonical": lambda: worker_canonical(args.model, args.batch, args.iterations),
                  "float": lambda: worker_float(args.model, args.batch, args.iterations),
                  "reference": lambda: worker_reference(args.model, args.batch)}[args.worker]()
        print(json.dumps(result))
        return 0

    iterations = 5 if args.quick else 20
    print("| model | batch | canonical ms/iter | float32 ms/iter | ratio | compile s (canon / float) "
          "| verifier replay, cold process s (engine / NumPy ref) | XLA memory MB (canon / float, ratio) "
          "| peak RSS MB (canon / float, ratio) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, batch in CASES:
        # The two steps run back to back, `--rounds` times: on a shared machine
        # the load changes between runs, so each figure is the median over rounds.
        runs = [(run_worker("canonical", model, batch, iterations), run_worker("float", model, batch, iterations))
                for _ in range(args.rounds)]
        canonical, baseline = (_median_of([run[side] for run in runs]) for side in (0, 1))
        ratio = statistics.median(c["iter_s"] / f["iter_s"] for c, f in runs)  # of pairs run back to back
        reference = run_worker("reference", model, batch, 1)
        mb = 1 << 20
        print(f"| {model} | {batch} | {canonical['iter_s'] * 1e3:.1f} | {baseline['iter_s'] * 1e3:.1f} "
              f"| {ratio:.2f}x "
              f"| {canonical['compile_s']:.1f} / {baseline['compile_s']:.1f} "
              f"| {canonical['cold_s']:.1f} / {reference['cold_s']:.1f} "
              f"| {canonical['xla_bytes'] / mb:.0f} / {baseline['xla_bytes'] / mb:.0f} "
              f"({canonical['xla_bytes'] / baseline['xla_bytes']:.2f}x) "
              f"| {canonical['rss_bytes'] / mb:.0f} / {baseline['rss_bytes'] / mb:.0f} "
              f"({canonical['rss_bytes'] / baseline['rss_bytes']:.2f}x) |", flush=True)
    if not args.skip_quality:
        quality = training_quality(10 if args.quick else 30)
        gap = (quality["float"] - quality["canonical"]) * 100
        print(f"\ntraining quality, digits (1437 train / 360 test), MLP 64-64-32-10, Adam lr 0.003, "
              f"batch {quality['batch']}, {quality['epochs']} epochs, same initial weights and batches:")
        print(f"  canonical (2 slices) test accuracy {quality['canonical'] * 100:.2f}%   "
              f"float32 flax/optax {quality['float'] * 100:.2f}%   gap {gap:+.2f} pp "
              f"({'within' if gap <= 1.0 else 'OUTSIDE'} the 1 pp goal)")
        print(f"  training time: canonical {quality['train_canonical_s']:.1f} s, float {quality['train_float_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
