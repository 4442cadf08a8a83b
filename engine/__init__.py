"""The deterministic JAX/XLA training engine (canonical fixed-point arithmetic).

Importing it switches on jax_enable_x64 (the engine needs exact int64 products)
and pins the XLA flags its bits depend on (engine/settings.py); see docs/engine.md.
"""
from . import settings  # noqa: F401  (first: x64 and XLA flags, before anything starts a backend)
from .iteration import (BatchError, check_batch, evaluate, forward, gradients, init_state, make_iteration,
                        param_shapes, predict, quantize_inputs, sum_updates)
from .model import EngineError, ModelSpec, ModelSpecError, parse_model_shorthand
from .commit import batch_root, state_root, update_root
from . import ops

__all__ = ["BatchError", "EngineError", "ModelSpec", "ModelSpecError", "batch_root", "check_batch", "evaluate",
           "forward", "gradients", "init_state", "make_iteration", "ops", "param_shapes", "parse_model_shorthand",
           "predict", "quantize_inputs", "state_root", "sum_updates", "update_root"]
