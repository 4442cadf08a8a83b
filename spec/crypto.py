"""Keys, signatures and addresses: secp256k1 ECDSA through `ecdsa`.

- Signatures are RFC 6979 deterministic (SHA-256), so signing the same digest
  twice gives the same bytes and no bad RNG can leak a key.
- Signatures are r ‖ s, 32 bytes each, big-endian, with 1 ≤ r < n and
  1 ≤ s ≤ n/2 (low-S). Threat stopped: *signature malleability* — (r, n - s)
  is also a valid ECDSA signature of the same digest; accepting only the low
  one means a third party cannot produce a second valid encoding of a signed
  object, so ids of signed objects are stable.
- Public keys are compressed (33 bytes, x < p, on the curve); an address is
  the last 20 bytes of SHA-256 of the compressed key.
- What is signed is always a signing root: SHA-256 of a domain tag and the
  canonical encoding of the unsigned object (spec/containers.py), so a
  signature for one kind of object is never valid for another.
"""
import hashlib

from ecdsa import SECP256k1, BadSignatureError, SigningKey, VerifyingKey
from ecdsa.errors import MalformedPointError
from ecdsa.util import sigdecode_strings, sigencode_strings_canonize

from .hashing import hash_bytes
from .types import Address, Bytes32, PublicKey, Signature

CURVE_ORDER = SECP256k1.order
FIELD_PRIME = SECP256k1.curve.p()


class CryptoError(ValueError):
    """A secret key or public key that is not a valid secp256k1 key."""


def get_public_key(secret_key: bytes) -> PublicKey:
    """Compressed public key of a 32-byte secret key (1 ≤ key < n, big-endian)."""
    if len(secret_key) != 32 or not 1 <= int.from_bytes(secret_key, "big") < CURVE_ORDER:
        raise CryptoError("a secret key is 32 bytes, big-endian, in [1, n)")
    signing_key = SigningKey.from_string(secret_key, curve=SECP256k1)
    return PublicKey(signing_key.get_verifying_key().to_string("compressed"))


def compute_address(public_key: PublicKey) -> Address:
    """Address of a public key: the last 20 bytes of SHA-256 of its compressed form."""
    return Address(hash_bytes(public_key)[-20:])


def is_valid_public_key(public_key: bytes) -> bool:
    """Whether `public_key` is a canonical compressed secp256k1 point."""
    if len(public_key) != 33 or public_key[0] not in (2, 3) or int.from_bytes(public_key[1:], "big") >= FIELD_PRIME:
        return False
    try:
        VerifyingKey.from_string(public_key, curve=SECP256k1)
    except (MalformedPointError, ValueError, AssertionError):
        return False
    return True


def sign(secret_key: bytes, signing_root: Bytes32) -> Signature:
    """RFC 6979 deterministic ECDSA (SHA-256) over a 32-byte signing root, low-S."""
    get_public_key(secret_key)  # validates the key
    signing_key = SigningKey.from_string(secret_key, curve=SECP256k1)
    r, s = signing_key.sign_digest_deterministic(
        signing_root, hashfunc=hashlib.sha256, sigencode=sigencode_strings_canonize)
    return Signature(r + s)


def is_low_s_signature(signature: bytes) -> bool:
    """Whether `signature` is r ‖ s with 1 ≤ r < n and 1 ≤ s ≤ n/2."""
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    return len(signature) == 64 and 1 <= r < CURVE_ORDER and 1 <= s <= CURVE_ORDER // 2


def is_valid_signature(public_key: bytes, signing_root: Bytes32, signature: bytes) -> bool:
    """Whether `signature` is a low-S ECDSA signature of `signing_root` by `public_key`."""
    if not is_valid_public_key(public_key) or not is_low_s_signature(signature):
        return False
    verifying_key = VerifyingKey.from_string(public_key, curve=SECP256k1)
    try:
        return verifying_key.verify_digest(
            (signature[:32], signature[32:]), signing_root, sigdecode=sigdecode_strings)
    except BadSignatureError:
        return False
