"""`bws audit` answers bad input with one readable line and a non-zero exit."""
from __future__ import annotations

import pytest

from bws.node.cli import main


@pytest.mark.parametrize("argv, message", [
    (["audit", "replay", "--block", "1", "--data-dir", "/nonexistent/bws"], "no chain store at"),
    (["audit", "disputes", "--data-dir", "/nonexistent/bws"], "no chain store at"),
    (["audit", "replay", "--block", "1", "--api", "http://127.0.0.1:9", "--peer", "/ip4/127.0.0.1/tcp/9"],
     "cannot dial"),
])
def test_bad_sources_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_replay_needs_a_target(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "replay", "--api", "http://127.0.0.1:9"])
    assert exit_info.value.code == 2
    assert "one of the arguments --block --task is required" in capsys.readouterr().err


def test_byzantine_devnet_arguments_are_checked(capsys):
    assert main(["devnet", "--byzantine", "1:lazy"]) == 2
    assert "KIND a cheating miner (flip-bit" in capsys.readouterr().err
    assert main(["devnet", "--nodes", "4", "--byzantine", "7:flip-bit"]) == 2
    assert "node 7 does not exist" in capsys.readouterr().err
