"""The node's libsecp256k1 signatures against the spec's python-ecdsa ones:
same bytes for the same key and root, same verdict on anything."""
from hypothesis import given, strategies as st

from bws.node import keys
from bws.spec import crypto as spec

secret_keys = st.integers(1, keys.CURVE_ORDER - 1).map(lambda k: k.to_bytes(32, "big"))
roots = st.binary(min_size=32, max_size=32)


@given(secret_keys, roots)
def test_same_public_key_address_and_signature_bytes(secret_key, root):
    assert keys.get_public_key(secret_key) == spec.get_public_key(secret_key)
    signature = keys.sign(secret_key, root)
    assert signature == spec.sign(secret_key, root)
    public_key = keys.get_public_key(secret_key)
    assert keys.compute_address(public_key) == spec.compute_address(public_key)
    assert keys.is_valid_signature(public_key, root, signature)


@given(secret_keys, roots, st.data())
def test_same_verdict_on_mutated_signatures(secret_key, root, data):
    public_key = keys.get_public_key(secret_key)
    signature = bytearray(keys.sign(secret_key, root))
    position = data.draw(st.integers(0, 63))
    signature[position] ^= data.draw(st.integers(1, 255))
    mutated = bytes(signature)
    assert keys.is_valid_signature(public_key, root, mutated) == spec.is_valid_signature(public_key, root, mutated)


@given(secret_keys, roots)
def test_high_s_twin_is_rejected_by_both(secret_key, root):
    public_key = keys.get_public_key(secret_key)
    signature = keys.sign(secret_key, root)
    s = int.from_bytes(signature[32:], "big")
    high = signature[:32] + (keys.CURVE_ORDER - s).to_bytes(32, "big")
    assert not keys.is_valid_signature(public_key, root, high)
    assert not spec.is_valid_signature(public_key, root, high)


@given(st.binary(max_size=70), st.binary(max_size=40), st.binary(max_size=70))
def test_same_verdict_on_random_inputs(public_key, root, signature):
    assert keys.is_valid_signature(public_key, root, signature) == spec.is_valid_signature(public_key, root, signature)


@given(secret_keys, roots, st.binary(min_size=33, max_size=33))
def test_same_verdict_on_random_public_keys(secret_key, root, public_key):
    signature = keys.sign(secret_key, root)
    assert keys.is_valid_signature(public_key, root, signature) == spec.is_valid_signature(public_key, root, signature)


@given(secret_keys, roots, roots)
def test_signature_of_other_root_is_rejected(secret_key, root, other):
    public_key = keys.get_public_key(secret_key)
    signature = keys.sign(secret_key, root)
    expected = root == other
    assert keys.is_valid_signature(public_key, other, signature) == expected == spec.is_valid_signature(public_key, other, signature)
