"""Run one iteration in this process and print its digests as JSON; the
determinism tests start it in subprocesses under different XLA settings.

    python tests/engine/probe.py canonical [--disable-jit] [--shard N] [--model M --batch B]
    python tests/engine/probe.py reference [--model M --batch B]
    python tests/engine/probe.py float
"""
import argparse
import hashlib
import json
import sys

import numpy as np

MODEL = "mlp:784-512-256-10"
BATCH = 1024


def synthetic(rng, width=784, batch=BATCH, classes=10):
    x = rng.random((batch, width))
    y = rng.integers(0, classes, batch)
    return x, y


def canonical(disable_jit: bool, shards: int, model: str, batch_size: int) -> dict:
    import jax

    from bws.engine import ModelSpec, init_state, make_iteration, parse_model_shorthand, quantize_inputs, sum_updates
    from bws.engine.commit import state_root, update_root

    spec = ModelSpec.from_dict(parse_model_shorthand(model))
    x, y = synthetic(np.random.default_rng(0), spec.input_shape[0], batch_size, spec.output_shape[0])
    batch = {"x": quantize_inputs(x), "y": y.astype(np.int32)}
    if shards > 1:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        devices = jax.devices()[:shards]
        assert len(devices) == shards, f"need {shards} devices, have {len(jax.devices())}"
        mesh = Mesh(np.array(devices), ("batch",))
        batch = {k: jax.device_put(v, NamedSharding(mesh, PartitionSpec("batch"))) for k, v in batch.items()}
    state = init_state(spec, 1)
    if disable_jit:
        with jax.disable_jit():
            new_state, update, metrics = make_iteration(spec, jit=False)(state, batch, sum_updates([], spec))
    else:
        new_state, update, metrics = make_iteration(spec)(state, batch, sum_updates([], spec))
    return {"state_root": state_root(jax.tree.map(np.asarray, new_state)).hex(),
            "update_root": update_root(jax.tree.map(np.asarray, update)).hex(),
            "metrics": {k: int(v) for k, v in metrics.items()}, "devices": len(jax.devices())}


def reference(model_name: str, batch_size: int) -> dict:
    from bws.engine import ModelSpec, parse_model_shorthand, quantize_inputs
    from bws.engine.commit import state_root, update_root
    from bws.spec.reference import training

    spec = ModelSpec.from_dict(parse_model_shorthand(model_name))
    model = spec.to_dict()
    x, y = synthetic(np.random.default_rng(0), spec.input_shape[0], batch_size, spec.output_shape[0])
    batch = {"x": quantize_inputs(x), "y": y.astype(np.int32)}
    state = training.init_state(model, 1)
    zero = {k: {n: np.zeros_like(a) for n, a in p.items()} for k, p in state["params"].items()}
    new_state, update, metrics = training.iteration(model, state, batch, zero)
    return {"state_root": state_root(new_state).hex(), "update_root": update_root(update).hex(),
            "metrics": {k: int(v) for k, v in metrics.items()}}


def float_step() -> dict:
    """The plain flax+optax float32 step on the same model and data."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(512)(x))
            x = nn.relu(nn.Dense(256)(x))
            return nn.Dense(10)(x)

    x, y = synthetic(np.random.default_rng(0))
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    model = MLP()
    params = model.init(jax.random.key(1), x[:1])
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()
        grads = jax.grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, opt_state = step(params, opt_state)
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.asarray(leaf).tobytes())
    return {"params_digest": digest.hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("canonical", "reference", "float"))
    parser.add_argument("--disable-jit", action="store_true")
    parser.add_argument("--shard", type=int, default=1)
    parser.add_argument("--model", default=MODEL, help="an mlp: shorthand")
    parser.add_argument("--batch", type=int, default=BATCH)
    args = parser.parse_args()
    if args.kind == "canonical":
        result = canonical(args.disable_jit, args.shard, args.model, args.batch)
    elif args.kind == "reference":
        result = reference(args.model, args.batch)
    else:
        result = float_step()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
