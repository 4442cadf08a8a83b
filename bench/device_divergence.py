"""Where does an accelerator part from the CPU? Per-op trace roots of iteration vectors, CPU vs the default device.

    python bench/device_divergence.py it.vec [more.vec ...]

For each vector, runs the iteration's ops (engine/trace.py: merge, forward/i, loss,
backward/i, optimizer, update, state_after) once on the CPU and once on the default
JAX device, and prints the first op whose outputs differ, with the differing tensors,
how many elements differ and the first differing values. Run it where a GPU/TPU is at
hand (bench/RESULTS.md "engine on GPU" has what it found on an H100).
"""
import sys

import jax
import numpy as np

from bws.engine import trace
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


def main(paths: list[str]) -> int:
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
