"""`bws spec render`, `bws spec diff`, `bws spec vectors`."""
import ast
import subprocess
from pathlib import Path

import pytest

from bws.node.cli import main
from bws.node.review import ReviewError, diff_spec, render_spec

SPEC_DIR = Path(__file__).resolve().parents[2] / "spec"


def public_functions():
    for path in sorted(SPEC_DIR.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                yield path.stem, node.name


def test_render_contains_every_public_function_in_reading_order():
    document = render_spec()
    for module, name in public_functions():
        assert f"### `{name}(" in document, f"{module}.{name} missing"
    positions = [document.index(f"## `spec/{m}.py`") for m in ("state_transition", "pouw", "fork_choice",
                                                              "containers", "constants", "encoding")]
    assert positions == sorted(positions), "the state transition first, the codec last"
    assert "| `MAX_GROUP_SIZE` | `64` |" in document
    assert "| `max_nonces_per_iteration` | 16 | 64 |" in document
    assert "| `header_commitment` | `Hash32` |" in document
    guides = [document.index(f"## {title}") for title in ("Networking", "The honest miner", "Threat model")]
    assert guides == sorted(guides) and guides[0] > document.index("## `spec/encoding.py`")
    assert "**Signature malleability**" in document
    assert "| `bws/task/1` | a `SignedIterationMessage` |" in document
    assert "**Sign IT_RES(i) once**" in document


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin", "HOME": str(repo)})


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / "constants.py").write_text('"""Constants."""\nA = 1\nB = 2  # note\n')
    (tmp_path / "spec" / "rules.py").write_text('def keep():\n    return 1\n\n\ndef change(x):\n    return x + 1\n\n\n'
                                                'def drop():\n    pass\n')
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "one")
    (tmp_path / "spec" / "constants.py").write_text('"""Constants."""\nA = 1\nB = 2  # note\nC = 3\n')
    (tmp_path / "spec" / "rules.py").write_text('def keep():\n    return 1\n\n\ndef change(x):\n    return x + 2\n')
    git(tmp_path, "commit", "-q", "-am", "two")
    return tmp_path


def test_diff_lists_added_removed_and_changed_rules(repo):
    report = diff_spec(repo, "HEAD~1", "HEAD")
    assert "1 added, 1 removed, 1 changed." in report
    assert "- constant `spec.constants.C`" in report
    assert "- function `spec.rules.drop`" in report
    assert "### function `spec.rules.change`" in report
    assert "-    return x + 1\n+    return x + 2" in report
    assert "spec.rules.keep" not in report


def test_diff_against_working_tree_and_bad_revision(repo):
    (repo / "spec" / "rules.py").write_text('def keep():\n    return 5\n\n\ndef change(x):\n    return x + 2\n')
    assert "### function `spec.rules.keep`" in diff_spec(repo, "HEAD", None)
    with pytest.raises(ReviewError, match="nosuchrev"):
        diff_spec(repo, "nosuchrev", "HEAD")


def test_cli_commands(repo, tmp_path, capsys):
    out = tmp_path / "spec.md"
    assert main(["spec", "render", "--out", str(out)]) == 0
    assert out.read_text().startswith("# The BWS protocol")
    assert main(["spec", "diff", "HEAD~1", "HEAD", "--repo", str(repo)]) == 0
    assert "spec.constants.C" in capsys.readouterr().out
    assert main(["spec", "diff", "nope", "--repo", str(repo)]) == 1
    assert "bws spec: error: git" in capsys.readouterr().err
    assert main(["spec", "vectors", "--check", str(SPEC_DIR / "vectors")]) == 0
    assert "vectors reproduced" in capsys.readouterr().out
    assert main(["spec", "vectors"]) == 1
    assert main(["spec", "vectors", "--check", str(tmp_path / "empty")]) == 1
    assert "no vectors" in capsys.readouterr().err
