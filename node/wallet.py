"""The wallet: key generation and the encrypted keystore file.

A keystore is one small JSON file holding one secp256k1 secret key, encrypted
with AES-256-GCM under a key derived from the password by scrypt:

    {"version": 1, "address": "<hex>",
     "kdf": {"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": "<hex>"},
     "cipher": {"name": "aes-256-gcm", "nonce": "<hex>"},
     "ciphertext": "<hex>"}

Everything but the ciphertext is authenticated as GCM associated data, so a
file whose address or scrypt parameters were edited fails to open just like a
wrong password would. Files are written to a temporary name, fsynced and
renamed over the target: a crash never leaves half a keystore behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import getpass
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import keys

KEYSTORE_VERSION = 1
# scrypt cost: 2**15 takes ~0.1 s and 32 MiB, the usual interactive setting.
DEFAULT_SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SALT_SIZE = 16
NONCE_SIZE = 12
# Upper bound accepted when reading a file, so a hostile file cannot make us
# allocate gigabytes (scrypt memory is 128 * r * n bytes).
MAX_SCRYPT_N = 2**20
MAX_KEYSTORE_BYTES = 64 * 1024


class KeystoreError(Exception):
    """A keystore file could not be created, read or decrypted; the message says why."""


@dataclass(frozen=True)
class Account:
    """An unlocked key: what signing needs."""

    secret_key: bytes

    @property
    def public_key(self) -> bytes:
        return keys.get_public_key(self.secret_key)

    @property
    def address(self) -> bytes:
        return keys.compute_address(self.public_key)

    def sign(self, signing_root: bytes) -> bytes:
        return keys.sign(self.secret_key, signing_root)


def new_account() -> Account:
    return Account(keys.generate_secret_key())


def _derive_key(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * r * n + 2**20, dklen=32)


def _associated_data(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


def encrypt_keystore(account: Account, password: str, scrypt_n: int = DEFAULT_SCRYPT_N) -> dict:
    """The keystore document (a JSON-able dict) for `account` under `password`."""
    if not password:
        raise KeystoreError("refusing an empty password")
    if scrypt_n < 2 or scrypt_n & (scrypt_n - 1) or scrypt_n > MAX_SCRYPT_N:
        raise KeystoreError(f"scrypt n must be a power of two in [2, {MAX_SCRYPT_N}], got {scrypt_n}")
    salt = secrets.token_bytes(SALT_SIZE)
    nonce = secrets.token_bytes(NONCE_SIZE)
    header = {
        "version": KEYSTORE_VERSION,
        "address": account.address.hex(),
        "kdf": {"name": "scrypt", "n": scrypt_n, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex()},
        "cipher": {"name": "aes-256-gcm", "nonce": nonce.hex()},
    }
    key = _derive_key(password, salt, scrypt_n, SCRYPT_R, SCRYPT_P)
    ciphertext = AESGCM(key).encrypt(nonce, account.secret_key, _associated_data(header))
    return {**header, "ciphertext": ciphertext.hex()}


def _field(doc: dict, name: str, kind: type):
    if name not in doc:
        raise KeystoreError(f"keystore is missing the field {name!r}")
    value = doc[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise KeystoreError(f"keystore field {name!r} must be a {kind.__name__}")
    return value


def _hex_field(doc: dict, name: str, size: int | None = None) -> bytes:
    text = _field(doc, name, str)
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise KeystoreError(f"keystore field {name!r} is not hex") from None
    if size is not None and len(value) != size:
        raise KeystoreError(f"keystore field {name!r} must be {size} bytes, got {len(value)}")
    return value


def decrypt_keystore(doc: object, password: str) -> Account:
    """The account inside keystore document `doc`; KeystoreError on a wrong
    password or any malformed/tampered field."""
    if not isinstance(doc, dict):
        raise KeystoreError("keystore must be a JSON object")
    version = _field(doc, "version", int)
    if version != KEYSTORE_VERSION:
        raise KeystoreError(f"unsupported keystore version {version} (this wallet reads {KEYSTORE_VERSION})")
    address = _hex_field(doc, "address")
    kdf = _field(doc, "kdf", dict)
    if _field(kdf, "name", str) != "scrypt":
        raise KeystoreError(f"unsupported key derivation {kdf['name']!r} (expected 'scrypt')")
    n, r, p = _field(kdf, "n", int), _field(kdf, "r", int), _field(kdf, "p", int)
    if n < 2 or n & (n - 1) or n > MAX_SCRYPT_N or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise KeystoreError(f"scrypt parameters out of range (n={n}, r={r}, p={p})")
    salt = _hex_field(kdf, "salt")
    cipher = _field(doc, "cipher", dict)
    if _field(cipher, "name", str) != "aes-256-gcm":
        raise KeystoreError(f"unsupported cipher {cipher['name']!r} (expected 'aes-256-gcm')")
    nonce = _hex_field(cipher, "nonce", NONCE_SIZE)
    ciphertext = _hex_field(doc, "ciphertext")
    header = {key: value for key, value in doc.items() if key != "ciphertext"}
    key = _derive_key(password, salt, n, r, p)
    try:
        secret_key = AESGCM(key).decrypt(nonce, ciphertext, _associated_data(header))
    except InvalidTag:
        raise KeystoreError("wrong password, or the keystore file was modified") from None
    try:
        account = Account(keys.validate_secret_key(secret_key))
    except keys.KeyFormatError as exc:
        raise KeystoreError(f"keystore holds an invalid key: {exc}") from None
    if account.address != address:
        raise KeystoreError("keystore address does not match its key")
    return account


def write_atomically(path: Path, data: bytes, overwrite: bool = False) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or
    the complete new one: temp file in the same folder, fsync, rename, fsync
    the folder."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise KeystoreError(f"{path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_keystore(path: Path, account: Account, password: str, scrypt_n: int = DEFAULT_SCRYPT_N, overwrite: bool = False) -> None:
    doc = encrypt_keystore(account, password, scrypt_n)
    write_atomically(Path(path), (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8"), overwrite)


def read_keystore_document(path: Path) -> dict:
    """The parsed keystore at `path` (not decrypted): enough to show its address."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise KeystoreError(f"no keystore at {path}") from None
    if size > MAX_KEYSTORE_BYTES:
        raise KeystoreError(f"{path} is {size} bytes; a keystore is well under {MAX_KEYSTORE_BYTES}")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeystoreError(f"{path} is not a keystore (not valid JSON: {exc})") from None
    if not isinstance(doc, dict):
        raise KeystoreError(f"{path} is not a keystore (not a JSON object)")
    return doc


def keystore_address(path: Path) -> bytes:
    return _hex_field(read_keystore_document(path), "address")


def load_keystore(path: Path, password: str) -> Account:
    try:
        return decrypt_keystore(read_keystore_document(path), password)
    except KeystoreError as exc:
        raise KeystoreError(f"{path}: {exc}") from None


PASSWORD_ENV = "BWS_WALLET_PASSWORD"


def read_password(password_file: Path | None, confirm: bool = False) -> str:
    """A keystore's password: the first line of `password_file`, else
    $BWS_WALLET_PASSWORD, else typed at a prompt (twice when `confirm`) if a
    terminal is attached; ValueError naming the three ways otherwise."""
    if password_file is not None:
        try:
            return Path(password_file).read_text().rstrip("\n")
        except OSError as error:
            raise ValueError(f"cannot read the password file {password_file}: {error.strerror}") from None
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if sys.stdin is None or not sys.stdin.isatty():   # None: the process started with stdin closed
        raise ValueError(f"no password: give --password-file, set ${PASSWORD_ENV}, or run in a terminal to type it")
    password = getpass.getpass("password: ")
    if confirm and getpass.getpass("again: ") != password:
        raise ValueError("the passwords differ")
    return password
