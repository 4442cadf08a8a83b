"""Where does an accelerator part from the CPU? Per-op trace roots of iteration vectors, CPU vs the default device.

    python bench/device_divergence.py it.vec [more.vec ...]
    python bench/device_divergence.py --dots [M,K,N ...]
    python bench/device_divergence.py --steps it.vec


For each vector, runs the iteration's ops (engine/trace.py: merge, forward/i, loss,
backward/i, optimizer, update, state_after) once on the CPU and once on the default
JAX device, and prints the first op whose outputs differ, with the differing tensors,
how many elements differ and the first differing values. Run it where a GPU/TPU is at
hand (bench/RESULTS.md "engine on GPU" has what it found on an H100).

`--dots` checks the primitive under the engine's contractions: an int8 x int8 -> int32
`dot_general` of full-range random digits, M x K by K x N, on the default device
against NumPy's int64 product (default shapes: mlp:784-512-256-10 at batch 1024, each
contraction also with K doubled, as the engine joins digit pairs into one dot). An
exact backend prints "exact" for every shape; a sum that leaves the int8 path (e.g.
through float32, exact only up to 2**24) shows as differing elements. Each shape runs
in both operand layouts the engine uses: b as K x N and as N x K (a dense layer's
input delta contracts the kernel's last axis).

`--steps` takes the dense and conv layers' backward apart: the forward pass and loss
run once on the CPU; then, for each such layer, last to first, each sub-step
(activation backward, block max/min, split into digits, kernel-gradient contraction,
input-delta contraction, the whole layer in one jit) runs on the CPU and on the device
from the same CPU-made inputs, and differing outputs are printed.
"""
import sys

import jax
import numpy as np

from bws.engine import ops, trace
from bws.engine.iteration import _as_spec, add_trees, is_loss_fused, loss_input
from bws.engine.vector import read_vector


def trace_on(device, vector):
    with jax.default_device(device):
        state = jax.device_put(vector.state, device)
        peer = jax.device_put(vector.peer_update_sum, device)
        return trace.trace_iteration(vector.model, state, vector.batch, peer)


def first_divergence(cpu_trace, device_trace) -> list[str]:
    lines = []
    for (name, cpu_out), (_, device_out) in zip(cpu_trace, device_trace):
        differing = [k for k in cpu_out if not np.array_equal(np.asarray(cpu_out[k]), np.asarray(device_out[k]))]
        lines.append(f"{name:28s} {'same' if not differing else 'DIFFERS: ' + ', '.join(differing)}")
        for key in differing:
            a, b = np.asarray(cpu_out[key]).ravel(), np.asarray(device_out[key]).ravel()
            where = np.flatnonzero(a != b)
            lines.append(f"    {key} {cpu_out[key].dtype}{list(np.shape(cpu_out[key]))}: {where.size}/{a.size} differ; "
                         f"first cpu={a[where[:5]].tolist()} device={b[where[:5]].tolist()}")
        if differing:
            break
    return lines


MLP_DOTS = [(1024, 784, 512), (1024, 512, 256), (1024, 256, 16),     # forward (K padded to 16)
            (1024, 16, 256), (1024, 256, 512), (1024, 512, 784),     # delta into each layer
            (784, 1024, 512), (512, 1024, 256), (256, 1024, 16)]     # weight gradients (K = batch)


def check_dots(shapes) -> bool:
    """Print, per M x K x N shape and layout, whether the device's int8 dot is exact; whether all were."""
    device, rng, exact = jax.devices()[0], np.random.default_rng(0), True
    for m, k, n in shapes:
        for joined in (k, 2 * k):
            a = rng.integers(-128, 128, (m, joined), dtype=np.int8)
            b = rng.integers(-128, 128, (joined, n), dtype=np.int8)
            want = a.astype(np.int64) @ b.astype(np.int64)
            for layout, operand, axis in (("b K x N", b, 0), ("b N x K", np.ascontiguousarray(b.T), 1)):
                got = np.asarray(jax.lax.dot_general(
                    jax.device_put(a, device), jax.device_put(operand, device), (((1,), (axis,)), ((), ())),
                    preferred_element_type=jax.numpy.int32))
                wrong = np.flatnonzero(got.astype(np.int64) != want)
                exact &= wrong.size == 0
                print(f"{m:5d} x {joined:5d} x {n:5d} ({layout}): " + ("exact" if wrong.size == 0 else
                      f"{wrong.size}/{want.size} differ; first device={got.ravel()[wrong[:3]].tolist()} "
                      f"exact={want.ravel()[wrong[:3]].tolist()}"))
    return exact


def _compare(name: str, cpu_out, device_out) -> bool:
    """Print whether two pytrees of arrays are equal, with the first differences; whether they were."""
    cpu_leaves, device_leaves = jax.tree.leaves(cpu_out), jax.tree.leaves(device_out)
    same = True
    for index, (a, b) in enumerate(zip(cpu_leaves, device_leaves)):
        a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
        where = np.flatnonzero(a != b)
        if where.size:
            same = False
            print(f"    {name} output {index}: {where.size}/{a.size} differ; "
                  f"first cpu={a[where[:5]].tolist()} device={b[where[:5]].tolist()}")
    print(f"  {name:22s} {'same' if same else 'DIFFERS'}")
    return same


def check_backward_steps(vector) -> bool:
    """Each dense/conv layer's backward sub-steps on the CPU and the device from the same inputs; whether all agreed."""
    spec, cpu, device = _as_spec(vector.model), jax.devices("cpu")[0], jax.devices()[0]
    state = vector.state

    def forward_and_loss(params, peer, x, y):
        merged = add_trees(params, peer)
        caches = []
        for info in spec.layer_shapes():
            x, cache = ops.layer_forward(info, merged.get(str(info.index), {}), x, spec.slices, train=True,
                                         seed_key=state["seed"], step=state["step"])
            caches.append(cache)
        delta, _ = ops.loss_forward_backward(spec.loss["type"], loss_input(spec, x, caches), y)
        return merged, caches, delta

    with jax.default_device(cpu):
        merged, caches, delta = jax.jit(forward_and_loss)(state["params"], vector.peer_update_sum,
                                                          vector.batch["x"], vector.batch["y"])
    infos, agreed = spec.layer_shapes(), True

    def on_both(name, function, *args):
        outputs = []
        for where in (cpu, device):
            with jax.default_device(where):
                outputs.append(jax.device_get(jax.jit(function)(*jax.device_put(args, where))))
        return _compare(name, *outputs), outputs[0]

    for info in reversed(infos):
        params, cache, kind = merged.get(str(info.index), {}), caches[info.index], info.config["type"]
        fused = is_loss_fused(spec) and info.index == len(infos) - 1
        print(f"layer {info.index} {kind}")
        if kind in ("dense", "conv2d"):
            config = info.config
            act = delta
            if not fused:
                ok, act = on_both("activation backward", lambda z, y, d: ops.activation_backward(
                    config["activation"], z, y, d, config["alpha"]), cache["z"], cache["y"], delta)
                agreed &= ok
            agreed &= on_both("max and min", ops._max_and_min, act)[0]
            ok, (digits_d, shift_d) = on_both("split", lambda d: ops.split(d, spec.slices), act)
            agreed &= ok
            width = cache["x_digits"][0][0].shape[-1]
            rows_x = [d.reshape(-1, width) for d in cache["x_digits"][0]]
            rows_d = [d.reshape(-1, act.shape[-1]) for d in digits_d]
            agreed &= on_both("kernel contraction", lambda a, b: ops.contract_rows(
                a, b, transpose_in_loop=kind == "dense"), rows_x, rows_d)[0]
            if kind == "dense":
                agreed &= on_both("input contraction", lambda a, b: ops.contract(
                    a, b, (((act.ndim - 1,), (1,)), ((), ()))), digits_d, cache["k_digits"][0])[0]
        ok, (delta, _) = on_both("whole layer", lambda p, c, d: ops.layer_backward(
            info, p, c, d, spec.slices, fused_activation=fused), params, cache, delta)
        agreed &= ok
        if delta is None:
            break
    return agreed


def main(paths: list[str]) -> int:
    if paths[:1] == ["--dots"]:
        try:
            shapes = [tuple(int(v) for v in text.split(",")) for text in paths[1:]] or MLP_DOTS
        except ValueError:
            shapes = []
        if any(len(shape) != 3 or min(shape) < 1 for shape in shapes) or (paths[1:] and not shapes):
            print(f"--dots takes shapes M,K,N of positive integers, got {' '.join(paths[1:])}", file=sys.stderr)
            return 2
        print(f"jax {jax.__version__}: int8 dots on {jax.devices()[0].platform} ({jax.devices()[0].device_kind})")
        return 0 if check_dots(shapes) else 1
    if paths[:1] == ["--steps"]:
        agreed = True
        for path in paths[1:]:
            print(f"== {path}: backward sub-steps, cpu vs {jax.devices()[0].platform}")
            agreed &= check_backward_steps(read_vector(open(path, "rb").read()))
        return 0 if agreed else 1
    cpu, device = jax.devices("cpu")[0], jax.devices()[0]
    print(f"jax {jax.__version__}: cpu vs {device.platform} ({device.device_kind})")
    diverged = False
    for path in paths:
        vector = read_vector(open(path, "rb").read())
        print(f"== {path} {[layer['type'] for layer in vector.model['layers']]}")
        lines = first_divergence(trace_on(cpu, vector), trace_on(device, vector))
        diverged |= any("DIFFERS" in line for line in lines)
        print("\n".join(lines))
    return 1 if diverged else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
