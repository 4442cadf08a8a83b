"""`bws wallet`: keys, balances and transfers.

    bws wallet new --keystore alice.json            # asks for a password twice
    bws wallet address --keystore alice.json
    bws wallet balance --keystore alice.json --api http://127.0.0.1:8645
    bws wallet transfer --keystore alice.json --to <address> --amount 2.5 --api http://127.0.0.1:8645

The password comes from --password-file, else $BWS_WALLET_PASSWORD, else a
prompt (in a terminal; elsewhere the command says which to give). Amounts
are in coins (up to 8 decimals; 1 coin = 10**8 units), fees in units
(default: the chain's minimum).
"""
from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation
from pathlib import Path

from . import CommandError, parse_hex
from .chain import DEFAULT_API


def register(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    new = commands.add_parser("new", help="generate a key into a new encrypted keystore file",
                              description="Generate a secp256k1 key and save it encrypted (scrypt + AES-256-GCM).")
    new.add_argument("--keystore", required=True, type=Path)
    new.add_argument("--password-file", type=Path)
    new.set_defaults(run=run_new)
    address = commands.add_parser("address", help="print a keystore's address (no password needed)",
                                  description="Print the address of a keystore file.")
    address.add_argument("--keystore", required=True, type=Path)
    address.set_defaults(run=run_address)
    balance = commands.add_parser("balance", help="balance and nonce of an address, from a node",
                                  description="Ask a node for an account's balance, nonce and stakes.")
    who = balance.add_mutually_exclusive_group(required=True)
    who.add_argument("--keystore", type=Path)
    who.add_argument("--address", help="40 hex characters")
    balance.add_argument("--api", default=DEFAULT_API, help=f"node API URL (default {DEFAULT_API})")
    balance.set_defaults(run=run_balance)
    transfer = commands.add_parser("transfer", help="sign a transfer and submit it to a node",
                                   description="Sign a Transfer with the keystore's key and POST it to a node.")
    transfer.add_argument("--keystore", required=True, type=Path)
    transfer.add_argument("--to", required=True, help="recipient address, 40 hex characters")
    transfer.add_argument("--amount", required=True, help="coins, e.g. 2.5")
    transfer.add_argument("--fee", type=int, help="fee in units (default: the chain's minimum)")
    transfer.add_argument("--api", default=DEFAULT_API, help=f"node API URL (default {DEFAULT_API})")
    transfer.add_argument("--password-file", type=Path)
    transfer.set_defaults(run=run_transfer)


def parse_coins(text: str) -> int:
    from bws.spec.presets import COIN

    try:
        units = Decimal(text) * COIN
    except InvalidOperation:
        raise ValueError(f"amount {text!r} is not a number") from None
    if units <= 0 or units != units.to_integral_value():
        raise ValueError(f"amount {text!r} must be positive with at most 8 decimals")
    return int(units)


def run_new(args) -> int:
    from bws.node.wallet import KeystoreError, new_account, read_password, save_keystore

    try:
        account = new_account()
        save_keystore(args.keystore, account, read_password(args.password_file, confirm=True))
    except (KeystoreError, ValueError) as error:
        raise CommandError(str(error)) from None
    print(f"address {account.address.hex()}\nkeystore {args.keystore}")
    return 0


def run_address(args) -> int:
    from bws.node.wallet import KeystoreError, keystore_address

    try:
        print(keystore_address(args.keystore).hex())
    except KeystoreError as error:
        raise CommandError(str(error)) from None
    return 0


def run_balance(args) -> int:
    from bws.node.api import ApiClient, ApiError
    from bws.node.wallet import KeystoreError, keystore_address
    from bws.spec.presets import COIN

    try:
        address = (keystore_address(args.keystore) if args.keystore
                   else parse_hex(args.address, 20, "--address: an address"))
        account = ApiClient(args.api).get(f"/account/{address.hex()}")
    except (KeystoreError, ApiError, ValueError) as error:
        raise CommandError(str(error)) from None
    print(f"address {account['address']}\nbalance {Decimal(account['balance']) / COIN} coin ({account['balance']} units)\n"
          f"nonce {account['nonce']} (next {account['pending_nonce']})\nat height {account['height']}")
    return 0


def run_transfer(args) -> int:
    from bws.node import keys
    from bws.node.api import ApiClient, ApiError
    from bws.node.wallet import KeystoreError, load_keystore, read_password
    from bws.spec import containers as C
    from bws.spec.encoding import encode
    from bws.spec.state_transition import compute_transaction_signing_root

    client = ApiClient(args.api)
    try:
        recipient, amount = parse_hex(args.to, 20, "--to: an address"), parse_coins(args.amount)
        account = load_keystore(args.keystore, read_password(args.password_file))
        status = client.get("/status")
        fee = args.fee if args.fee is not None else int(status["min_transaction_fee"])
        nonce = client.get(f"/account/{account.address.hex()}")["pending_nonce"]
        transaction = C.Transaction(chain_id=status["chain_id"], sender=account.address, nonce=nonce, fee=fee,
                                    body=C.Transfer(recipient=recipient, amount=amount))
        signed = C.SignedTransaction(transaction=transaction, public_key=account.public_key,
                                     signature=keys.sign(account.secret_key, compute_transaction_signing_root(transaction)))
        answer = client.post("/tx", {"transaction": encode(signed).hex()})
    except (KeystoreError, ApiError, ValueError) as error:
        raise CommandError(str(error)) from None
    print(f"submitted {answer['id']} (nonce {nonce}, fee {fee} units)")
    return 0
