"""`bws node run --config FILE`: the node's options in a TOML file.

    data_dir = "n1"
    genesis = "genesis.json"
    roles = ["peer", "verifier", "miner"]
    keystore = "alice.json"
    password_file = "alice.pw"
    peer = ["/ip4/127.0.0.1/tcp/30645/p2p/12D3KooW..."]
    api_port = 8645
    log_file = "n1/node.log"

A key is a long flag of `bws node run` without its dashes, `-` written `_`
(`--data-dir` is `data_dir`). Its TOML type follows the flag: a string, an
integer for a number, an array of strings for a repeatable flag (`peer`) or a
comma-separated one (`roles`). A path is relative to the file's folder, so the
file means the same from any working directory (a systemd unit's included).
A flag given on the command line wins over the file's key (a repeatable one
replaces the file's list). An unknown key, a wrong type, a value outside the
flag's choices or a file that is not TOML is a ConfigError naming the file and
the key. The keys come from the command's parser (`config_keys`), so a new
flag is a new key without a change here.
"""
from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass
from pathlib import Path


class ConfigError(Exception):
    """The config file cannot be read or holds a key the command does not take; the message names both."""


def comma_separated(text: str) -> list[str]:
    """The argparse type of a flag that takes a comma-separated list (`--roles peer,miner`); in a config file it
    is an array of strings."""
    return [item.strip() for item in text.split(",") if item.strip()]


@dataclass(frozen=True)
class ConfigKey:
    name: str                           # the flag's dest: data_dir for --data-dir
    kind: str                           # "string", "integer" or "strings" (a TOML array of strings)
    is_path: bool                       # resolved against the config file's folder
    choices: tuple[str, ...] | None


def config_keys(parser: argparse.ArgumentParser, leave_out: tuple[str, ...] = ("help", "config")) -> dict[str, ConfigKey]:
    """One key per long flag of `parser` (by dest), typed as the flag parses its value."""
    keys = {}
    # argparse has no public list of a parser's arguments; _actions is the one every version keeps.
    for action in parser._actions:
        if action.dest in leave_out or not any(flag.startswith("--") for flag in action.option_strings):
            continue
        if isinstance(action, argparse._AppendAction) or action.type is comma_separated:
            kind = "strings"
        elif action.type is int:
            kind = "integer"
        else:
            kind = "string"
        keys[action.dest] = ConfigKey(action.dest, kind, action.type is Path,
                                      tuple(action.choices) if action.choices else None)
    return keys


TOML_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
                   dict: "a table"}


def _type_name(value: object) -> str:
    return TOML_TYPE_NAMES.get(type(value), "a date or time")


def read_config(path: Path, keys: dict[str, ConfigKey]) -> dict[str, object]:
    """The file's options by dest, each as its flag would give it (Path, int, list of str, str)."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}") from None
    except OSError as error:
        raise ConfigError(f"cannot read the config file {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not TOML: {error}") from None
    return {name: _option_value(path, keys, name, value) for name, value in document.items()}


def _option_value(path: Path, keys: dict[str, ConfigKey], name: str, value: object) -> object:
    key = keys.get(name)
    if key is None:
        raise ConfigError(f"{path}: unknown key {name!r} (known: {', '.join(sorted(keys))})")
    if key.kind == "strings":
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{path}: {name} is an array of strings, got {_type_name(value)}")
        items = value
    elif key.kind == "integer":
        if type(value) is not int:   # a TOML boolean is a Python bool, an int subclass: refused too
            raise ConfigError(f"{path}: {name} is an integer, got {_type_name(value)}")
        return value
    else:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {name} is a string, got {_type_name(value)}")
        items = [value]
    for item in items:
        if key.choices is not None and item not in key.choices:
            raise ConfigError(f"{path}: {name} {item!r} is not one of {', '.join(key.choices)}")
    if key.is_path:
        items = [Path(path).parent / Path(item).expanduser() for item in items]
    return items if key.kind == "strings" else items[0]
