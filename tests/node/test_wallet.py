"""Keystore: round trip, wrong password, tampering, corruption, atomic writes."""
import json

import pytest

from bws.node import keys
from bws.node.wallet import (
    KeystoreError, Account, keystore_address, load_keystore, new_account, save_keystore, write_atomically,
)

FAST_N = 2**10  # tests only; the default is 2**15


def test_round_trip(tmp_path):
    account = new_account()
    path = tmp_path / "key.json"
    save_keystore(path, account, "correct horse", scrypt_n=FAST_N)
    assert keystore_address(path) == account.address
    loaded = load_keystore(path, "correct horse")
    assert loaded == account
    root = bytes(range(32))
    assert keys.is_valid_signature(loaded.public_key, root, loaded.sign(root))
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_wrong_password_is_a_clear_error(tmp_path):
    path = tmp_path / "key.json"
    save_keystore(path, new_account(), "right", scrypt_n=FAST_N)
    with pytest.raises(KeystoreError, match="wrong password"):
        load_keystore(path, "wrong")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(address="00" * 20), "wrong password, or the keystore file was modified"),
    (lambda d: d["kdf"].update(n=2**11), "wrong password, or the keystore file was modified"),
    (lambda d: d.update(ciphertext=d["ciphertext"][:-2] + "00"), "modified"),
    (lambda d: d.update(ciphertext="zz"), "not hex"),
    (lambda d: d.pop("kdf"), "missing the field 'kdf'"),
    (lambda d: d.update(version=7), "unsupported keystore version 7"),
    (lambda d: d["kdf"].update(n=3), "scrypt parameters out of range"),
    (lambda d: d["kdf"].update(n=2**40), "scrypt parameters out of range"),
    (lambda d: d["cipher"].update(name="rot13"), "unsupported cipher"),
    (lambda d: d["cipher"].update(nonce="00"), "must be 12 bytes"),
])
def test_tampered_file_is_a_clear_error(tmp_path, edit, message):
    path = tmp_path / "key.json"
    save_keystore(path, new_account(), "pw", scrypt_n=FAST_N)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match=message):
        load_keystore(path, "pw")


@pytest.mark.parametrize("content, message", [
    (b"", "not valid JSON"),
    (b"\xff\xfe garbage", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"{" * 10, "not valid JSON"),
])
def test_corrupted_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "key.json"
    path.write_bytes(content)
    with pytest.raises(KeystoreError, match=message):
        load_keystore(path, "pw")


def test_missing_file_and_no_overwrite(tmp_path):
    with pytest.raises(KeystoreError, match="no keystore"):
        load_keystore(tmp_path / "absent.json", "pw")
    path = tmp_path / "key.json"
    save_keystore(path, new_account(), "pw", scrypt_n=FAST_N)
    with pytest.raises(KeystoreError, match="already exists"):
        save_keystore(path, new_account(), "pw", scrypt_n=FAST_N)


def test_empty_password_refused(tmp_path):
    with pytest.raises(KeystoreError, match="empty password"):
        save_keystore(tmp_path / "k.json", new_account(), "", scrypt_n=FAST_N)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "f"
    write_atomically(target, b"one")
    write_atomically(target, b"two", overwrite=True)
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_smallest_secret_round_trips_and_non_object_is_refused():
    from bws.node import wallet
    account = Account(b"\x00" * 31 + b"\x01")
    doc = wallet.encrypt_keystore(account, "pw", scrypt_n=FAST_N)
    assert wallet.decrypt_keystore(doc, "pw") == account
    with pytest.raises(KeystoreError, match="must be a JSON object"):
        wallet.decrypt_keystore([], "pw")


def test_the_password_comes_from_the_file_the_environment_or_a_terminal(tmp_path, monkeypatch, capsys):
    """Issue #15: without a terminal and a password file the CLI printed an
    EOFError traceback, and `bws node run` ignored $BWS_WALLET_PASSWORD."""
    from bws.node.cli import main
    from bws.node.roles.host import RoleSetupError, load_role_account
    from bws.node.wallet import PASSWORD_ENV, read_password
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    (tmp_path / "pw").write_text("from the file\n")
    assert read_password(tmp_path / "pw") == "from the file"
    with pytest.raises(ValueError, match="give --password-file, set \\$BWS_WALLET_PASSWORD, or run in a terminal"):
        read_password(None)
    assert main(["wallet", "new", "--keystore", str(tmp_path / "k.json")]) == 1
    assert "no password" in capsys.readouterr().err and not (tmp_path / "k.json").exists()
    monkeypatch.setenv(PASSWORD_ENV, "from the environment")
    assert main(["wallet", "new", "--keystore", str(tmp_path / "k.json")]) == 0
    assert load_role_account(str(tmp_path / "k.json"), None) is not None   # bws node run --keystore, no file
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    with pytest.raises(RoleSetupError, match="cannot unlock"):
        load_role_account(str(tmp_path / "k.json"), None)
