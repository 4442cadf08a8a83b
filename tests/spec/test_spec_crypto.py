"""Keys, RFC 6979 signatures, low-S, addresses."""
import hashlib

import pytest

from bws.spec.crypto import (
    CURVE_ORDER, CryptoError, compute_address, get_public_key, is_valid_public_key, is_valid_signature, sign,
)

KEY_ONE = (1).to_bytes(32, "big")

# Published RFC 6979 secp256k1/SHA-256 vectors (private key 1; e.g. the
# python-ecdsa and Trezor test suites), in low-S form.
KNOWN = [
    (b"Satoshi Nakamoto",
     "934b1ea10a4b3c1757e2b0c017d0b6143ce3c9a7e6a4a49860d7a6ab210ee3d8"
     "2442ce9d2b916064108014783e923ec36b49743e2ffa1c4496f01a512aafd9e5"),
    (b"All those moments will be lost in time, like tears in rain. Time to die...",
     "8600dbd41e348fe5c9465ab92d23e3db8b98b873beecd930736488696438cb6b"
     "547fe64427496db33bf66019dacbf0039c04199abb0122918601db38a72cfc21"),
]


@pytest.mark.parametrize("message,expected", KNOWN)
def test_rfc6979_known_vectors(message, expected):
    digest = hashlib.sha256(message).digest()
    assert sign(KEY_ONE, digest).hex() == expected
    assert is_valid_signature(get_public_key(KEY_ONE), digest, bytes.fromhex(expected))


def test_signing_is_deterministic_and_low_s():
    key = hashlib.sha256(b"k").digest()
    for n in range(20):
        digest = hashlib.sha256(bytes([n])).digest()
        signature = sign(key, digest)
        assert signature == sign(key, digest)
        assert int.from_bytes(signature[32:], "big") <= CURVE_ORDER // 2


def test_high_s_twin_is_rejected():
    digest = hashlib.sha256(b"Satoshi Nakamoto").digest()
    signature = sign(KEY_ONE, digest)
    s = int.from_bytes(signature[32:], "big")
    twin = signature[:32] + (CURVE_ORDER - s).to_bytes(32, "big")
    assert not is_valid_signature(get_public_key(KEY_ONE), digest, twin)


@pytest.mark.parametrize("mutate", [
    lambda sig: b"\x00" * 32 + sig[32:],                                   # r = 0
    lambda sig: CURVE_ORDER.to_bytes(32, "big") + sig[32:],               # r = n
    lambda sig: sig[:32] + b"\x00" * 32,                                   # s = 0
    lambda sig: sig[:63] + bytes([sig[63] ^ 1]),                           # flipped bit
    lambda sig: sig[:63],                                                  # short
])
def test_malformed_signatures_are_rejected(mutate):
    digest = hashlib.sha256(b"m").digest()
    assert not is_valid_signature(get_public_key(KEY_ONE), digest, mutate(sign(KEY_ONE, digest)))


def test_wrong_key_or_digest_is_rejected():
    digest = hashlib.sha256(b"m").digest()
    signature = sign(KEY_ONE, digest)
    other = get_public_key((2).to_bytes(32, "big"))
    assert not is_valid_signature(other, digest, signature)
    assert not is_valid_signature(get_public_key(KEY_ONE), hashlib.sha256(b"n").digest(), signature)


def test_public_keys_must_be_canonical_compressed_points():
    public = get_public_key(KEY_ONE)
    assert public.hex() == "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
    assert is_valid_public_key(public)
    assert not is_valid_public_key(b"\x04" + public[1:])          # not a compressed prefix
    assert not is_valid_public_key(b"\x02" + b"\xff" * 32)        # x >= p
    assert not is_valid_public_key(public[:32])
    off_curve = next(b"\x02" + x.to_bytes(32, "big") for x in range(5, 100)
                     if not is_valid_public_key(b"\x02" + x.to_bytes(32, "big")))
    assert not is_valid_signature(off_curve, b"\x00" * 32, sign(KEY_ONE, b"\x00" * 32))


@pytest.mark.parametrize("secret", [b"\x00" * 32, CURVE_ORDER.to_bytes(32, "big"), b"\x01" * 31])
def test_invalid_secret_keys_are_refused(secret):
    with pytest.raises(CryptoError):
        get_public_key(secret)


def test_address_is_last_20_bytes_of_sha256_of_the_key():
    public = get_public_key(KEY_ONE)
    assert compute_address(public) == hashlib.sha256(public).digest()[-20:]
