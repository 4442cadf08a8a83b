"""The BWS protocol, as an executable specification.

Pure Python: no I/O, nothing imported from bws.engine, bws.templates or bws.node.
"""

if not __debug__:
    # Every rule is an `assert`; `python -O` would strip them and accept anything.
    raise RuntimeError("bws.spec needs assertions enabled: do not run it under python -O")
