"""The BWS protocol, as an executable specification.

Pure Python: no I/O, nothing imported from bws.engine, bws.templates or bws.node.
"""
