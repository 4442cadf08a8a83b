"""NumPy reference of the canonical arithmetic: the engine is held to these bits."""
