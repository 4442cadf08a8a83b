"""secp256k1 signatures through libsecp256k1 (coincurve).

The node's fast path for the spec's signatures (`bws.spec.crypto`, built on
python-ecdsa), with the same function names and the same bytes: RFC 6979
deterministic signatures over a 32-byte signing root, encoded r ‖ s (32 bytes
each, big-endian), valid only when low-S; compressed 33-byte public keys.
libsecp256k1 signs low-S by construction and its verifier rejects high-S, the
spec's rule; property tests (property_tests/test_node_keys.py) hold the two
implementations to the same signature bytes and the same verdicts.
"""
from __future__ import annotations

import secrets
from functools import lru_cache

import coincurve
from coincurve.ecdsa import cdata_to_der, der_to_cdata, deserialize_compact, serialize_compact

from bws.spec import crypto as spec_crypto
from bws.spec.types import Address, PublicKey, Signature

SECRET_KEY_SIZE = 32
SIGNING_ROOT_SIZE = 32
SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 33
CURVE_ORDER = spec_crypto.CURVE_ORDER


class KeyFormatError(ValueError):
    """A secret key, signing root or signature has the wrong shape; the message says which."""


def validate_secret_key(secret_key: bytes) -> bytes:
    if not isinstance(secret_key, (bytes, bytearray)) or len(secret_key) != SECRET_KEY_SIZE:
        raise KeyFormatError(f"a secret key is {SECRET_KEY_SIZE} bytes")
    if not 0 < int.from_bytes(secret_key, "big") < CURVE_ORDER:
        raise KeyFormatError("secret key out of range (must be in [1, n-1])")
    return bytes(secret_key)


def generate_secret_key() -> bytes:
    while True:
        candidate = secrets.token_bytes(SECRET_KEY_SIZE)
        if 0 < int.from_bytes(candidate, "big") < CURVE_ORDER:
            return candidate


def get_public_key(secret_key: bytes) -> PublicKey:
    """Compressed public key (33 bytes) of a secret key."""
    return PublicKey(coincurve.PrivateKey(validate_secret_key(secret_key)).public_key.format(compressed=True))


def compute_address(public_key: bytes) -> Address:
    """The spec's address derivation (a hash, no curve arithmetic), used as is."""
    return spec_crypto.compute_address(PublicKey(public_key))


def sign(secret_key: bytes, signing_root: bytes) -> Signature:
    """RFC 6979 low-S signature of a 32-byte signing root, as r ‖ s."""
    if len(signing_root) != SIGNING_ROOT_SIZE:
        raise KeyFormatError(f"a signing root is {SIGNING_ROOT_SIZE} bytes, got {len(signing_root)}")
    der = _private_key(bytes(secret_key)).sign(bytes(signing_root), hasher=None)
    return Signature(serialize_compact(der_to_cdata(der)))


@lru_cache(maxsize=64)
def _private_key(secret_key: bytes) -> coincurve.PrivateKey:
    # Building one derives its public key (a curve multiplication); a node signs with one key over and over.
    return coincurve.PrivateKey(validate_secret_key(secret_key))


@lru_cache(maxsize=65536)
def _parsed_public_key(public_key: bytes) -> coincurve.PublicKey | None:
    # Parsing (decompressing) a key is a large part of a verification, and the
    # same keys sign over and over (every miner signs every iteration).
    if len(public_key) != PUBLIC_KEY_SIZE or public_key[0] not in (2, 3):
        return None  # the spec accepts only compressed keys; libsecp256k1 would also take 65-byte ones
    try:
        return coincurve.PublicKey(public_key)
    except (ValueError, TypeError):
        return None


def is_valid_public_key(public_key: bytes) -> bool:
    return _parsed_public_key(bytes(public_key)) is not None


def is_valid_signature(public_key: bytes, signing_root: bytes, signature: bytes) -> bool:
    """Whether `signature` (r ‖ s, low-S) signs `signing_root` under
    `public_key`. Never raises: anything malformed is not a valid signature."""
    if len(signing_root) != SIGNING_ROOT_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < CURVE_ORDER and 0 < s <= CURVE_ORDER // 2):
        return False
    key = _parsed_public_key(bytes(public_key))
    if key is None:
        return False
    try:
        return key.verify(cdata_to_der(deserialize_compact(bytes(signature))), bytes(signing_root), hasher=None)
    except (ValueError, TypeError):
        return False
