"""JAX/XLA settings the engine's bits depend on, applied when bws.engine is imported.

- jax_enable_x64: exact products need int64 (x * y, then a shift).
- XLA flags, pinned in XLA_FLAGS before JAX starts a backend (it reads them
  once, then): `--xla_gpu_enable_triton_gemm=false`. XLA:GPU's Triton GEMMs
  return wrong int8 x int8 -> int32 sums (measured with jax 0.11.2 on an H100
  and an H200: a 3-slice MLP's input delta came out about twice the exact
  value, a small MLP's forward pass differed; with padding to 16 and with an
  optimization barrier before the dot alike), while the same iterations
  through cuBLAS match the CPU and the NumPy reference bit for bit. CPU
  backends ignore the flag.

The engine's entry points call `require_settings()`: if a GPU backend was
started before bws.engine was imported, without the pinned flags, it refuses
to compute rather than produce bits no verifier can reproduce.
"""
from __future__ import annotations

import os

import jax
from jax._src import xla_bridge

PINNED_XLA_FLAGS = {"--xla_gpu_enable_triton_gemm": "false"}


def with_pinned_flags(xla_flags: str) -> str:
    """`xla_flags` with every pinned flag set to its pinned value (other flags kept, in order)."""
    kept = [flag for flag in xla_flags.split() if flag.split("=", 1)[0] not in PINNED_XLA_FLAGS]
    return " ".join(kept + [f"{name}={value}" for name, value in PINNED_XLA_FLAGS.items()])


def has_pinned_flags(xla_flags: str) -> bool:
    """Whether `xla_flags` sets every pinned flag to its pinned value (XLA reads the last of repeated flags)."""
    values = dict(flag.split("=", 1) for flag in xla_flags.split() if "=" in flag)
    return all(values.get(name) == value for name, value in PINNED_XLA_FLAGS.items())


if not jax.config.jax_enable_x64:
    jax.config.update("jax_enable_x64", True)
if not xla_bridge.backends_are_initialized():
    os.environ["XLA_FLAGS"] = with_pinned_flags(os.environ.get("XLA_FLAGS", ""))
FLAGS_PINNED_AT_START = has_pinned_flags(os.environ.get("XLA_FLAGS", ""))
"""Whether the backends JAX starts (or had started before this import) see the pinned flags."""


def require_settings() -> None:
    """Raise unless the settings above are in effect for the engine's next computation."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError("the engine needs jax_enable_x64; something switched it off after importing bws.engine")
    if not FLAGS_PINNED_AT_START and jax.default_backend() == "gpu":
        raise RuntimeError(
            "XLA:GPU was started before bws.engine was imported, without "
            + " ".join(f"{name}={value}" for name, value in PINNED_XLA_FLAGS.items())
            + " (its Triton GEMMs return wrong int8 sums): import bws.engine before using JAX, or set XLA_FLAGS")
