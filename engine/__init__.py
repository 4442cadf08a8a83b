"""The deterministic JAX/XLA training engine (canonical fixed-point arithmetic)."""
