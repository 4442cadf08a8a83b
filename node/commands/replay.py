"""`bws replay FILE`: re-execute an iteration vector and compare its digests
(the arguments live with `bws engine`, in bws.node.commands.engine)."""
from .engine import register_replay as register  # noqa: F401
