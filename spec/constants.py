"""Every constant of the protocol, in one place, as tables.

Sections: protocol constants (presets in spec/presets.py), then the canonical
arithmetic of the engine and its NumPy reference.
"""

# ---------------------------------------------------------------------------
# Canonical arithmetic (engine and spec/reference share these numbers, nothing else)
# ---------------------------------------------------------------------------
