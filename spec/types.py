"""Custom types of the protocol, each with one line of meaning."""


class Bytes32(bytes):
    """32 bytes: a SHA-256 digest or a Merkle root."""
