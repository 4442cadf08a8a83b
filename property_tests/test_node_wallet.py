"""The keystore reader on arbitrary JSON and arbitrary bytes: KeystoreError, never a crash."""
import json

import pytest
from hypothesis import given, strategies as st

from bws.node import wallet

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["version", "address", "kdf", "cipher", "ciphertext", "name", "n", "r", "p", "salt", "nonce"]


def base_document():
    return wallet.encrypt_keystore(wallet.Account(b"\x01" * 32), "pw", scrypt_n=2**4)


@given(st.data())
def test_mutated_document_is_rejected_cleanly(data):
    doc = base_document()
    target = doc if data.draw(st.booleans()) else doc[data.draw(st.sampled_from(["kdf", "cipher"]))]
    key = data.draw(st.sampled_from(FIELDS))
    target[key] = data.draw(json_values)
    try:
        account = wallet.decrypt_keystore(doc, "pw")
    except wallet.KeystoreError:
        return
    assert account.secret_key == b"\x01" * 32


@given(st.binary(max_size=300))
def test_random_file_is_rejected_cleanly(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("ks") / "key.json"
    path.write_bytes(content)
    with pytest.raises(wallet.KeystoreError):
        wallet.load_keystore(path, "pw")


@given(json_values)
def test_random_json_is_rejected_cleanly(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("ks") / "key.json"
    path.write_text(json.dumps(value))
    with pytest.raises(wallet.KeystoreError):
        wallet.load_keystore(path, "pw")
