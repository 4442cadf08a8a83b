"""Custom types of the protocol, each with one line of meaning.

Every type is also a codec type (see spec/encoding.py): its name says what a
value means, its base says how it is encoded.
"""
from .encoding import ByteVector, uint8, uint32, uint64, uint256


class Bytes20(ByteVector):
    """20 bytes."""
    LENGTH = 20


class Bytes32(ByteVector):
    """32 bytes: a SHA-256 digest or a Merkle root."""
    LENGTH = 32


class Bytes33(ByteVector):
    """33 bytes: a compressed secp256k1 public key."""
    LENGTH = 33


class Bytes64(ByteVector):
    """64 bytes: an ECDSA signature r ‖ s, each 32 bytes big-endian."""
    LENGTH = 64


class Hash32(Bytes32):
    """SHA-256 digest of a canonical encoding (block hash, message digest)."""


class Root(Bytes32):
    """Merkle root (state root, tensor root, dataset root, transaction root)."""


class Address(Bytes20):
    """Account address: the last 20 bytes of SHA-256 of the compressed public key."""


class PublicKey(Bytes33):
    """Compressed secp256k1 public key (0x02/0x03 ‖ x)."""


class Signature(Bytes64):
    """secp256k1 ECDSA signature r ‖ s with low s (s ≤ n/2)."""


class TaskId(Bytes32):
    """Id of a task: hash of its client address and the client's transaction nonce."""


class Coin(uint64):
    """Amount of BWS coin, in its smallest unit."""


class Height(uint64):
    """Block height; genesis is 0."""


class Timestamp(uint64):
    """Seconds since the Unix epoch, as the block's miner declared it."""


class Nonce(uint64):
    """Per-account transaction counter (replay protection)."""


class ChainId(uint32):
    """Network identifier signed into every transaction (cross-chain replay protection)."""


class Iteration(uint64):
    """Index of a training iteration within a task, from 0."""


class Count(uint64):
    """A number of things (batches, iterations, tickets)."""


class Role(uint8):
    """Staking role: ROLE_MINER, ROLE_SUPERVISOR or ROLE_EVALUATOR (spec/constants.py)."""


class TaskStatus(uint8):
    """Lifecycle state of a task: one of the TASK_* constants (spec/constants.py)."""


class Target(uint256):
    """Proof-of-work target: a block is valid when its work hash, as a big-endian integer, is ≤ it."""


class Work(uint256):
    """Expected number of hashes for one block at a target: 2**256 // (target + 1)."""
