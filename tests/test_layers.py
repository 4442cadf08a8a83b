"""The layering, enforced: every module's imports, read with `ast` (nothing is
imported or run), against the rules of README.md and docs/interfaces.md.

- Dependencies point one way: node → templates → engine → spec. A layer
  imports only itself and the layers below it.
- The spec does no I/O: besides itself it imports only numpy, ecdsa and the
  standard modules in `SPEC_LIBRARIES`.
- The role components (node/roles/) reach the running node only through
  `RoleContext` (node/roles/context.py): from the rest of the node they
  import only the modules in `ROLE_NODE_IMPORTS`, which hold no node state;
  the context itself also holds the node's mempool.

Every import counts, those inside functions too. And one name, one module:
`C` is always the spec's containers, `K` its constants (`MODULE_ALIASES`),
in the tests and benches too. The checker is tested on small synthetic
trees at the end of this file.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
LAYERS = ("spec", "engine", "templates", "node")  # bottom first: each imports only itself and those before it
SPEC_LIBRARIES = frozenset({
    "numpy", "ecdsa", "__future__", "contextlib", "contextvars", "copy", "dataclasses", "decimal", "fractions",
    "functools", "hashlib", "json", "math", "typing",
})
ROLE_NODE_IMPORTS = frozenset({
    "transition", "validation", "keys", "merkle",  # the rules the node runs, and its signatures
    "p2p", "audit",                                # protocol names, network errors, wire codecs, the audit server
    "wallet", "api",                               # the account type, the API client (the client role)
})
CONTEXT_NODE_IMPORTS = ROLE_NODE_IMPORTS | {"mempool"}
MODULE_ALIASES = {"C": "bws.spec.containers", "K": "bws.spec.constants"}
ALIASED_FOLDERS = LAYERS + ("tests", "property_tests", "bench")


def module_name(path: Path, root: Path) -> str:
    """The installed name of a source file: node/roles/miner.py -> bws.node.roles.miner."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["bws", *parts])


def is_module(name: str, root: Path) -> bool:
    """Whether `name` (bws.x.y) is a module or package of the tree under `root`."""
    parts = name.split(".")[1:]
    if not parts:
        return False
    base = root.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file; `from X import y` names X.y when y is a module
    of the tree, else X. Relative imports are resolved."""
    return [(line, target) for line, target, _ in bindings_of(path, root)]


def bindings_of(path: Path, root: Path) -> list[tuple[int, str, str]]:
    """(line, imported module, the name it binds) for every imported name of the file (as `imports_of`)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, alias.asname or alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((node.lineno, submodule if base.startswith("bws.") and is_module(submodule, root)
                              else base, alias.asname or alias.name))
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "bws" and parts[1] in LAYERS else None


def violations(root: Path) -> list[str]:
    """Every import against the rules, as 'file:line: source imports target (why)'."""
    found = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            source = module_name(path, root)
            for line, target in imports_of(path, root):
                problem = problem_of(source, target)
                if problem:
                    found.append(f"{path.relative_to(root)}:{line}: {source} imports {target} ({problem})")
    return found


def problem_of(source: str, target: str) -> str | None:
    """Why `source` may not import `target`, or None."""
    source_layer, target_layer = layer_of(source), layer_of(target)
    if target_layer is None:
        if source_layer == "spec" and target.split(".")[0] not in SPEC_LIBRARIES | {"bws"}:
            return "the spec imports only numpy, ecdsa and standard modules that do no I/O"
        return None
    if LAYERS.index(target_layer) > LAYERS.index(source_layer):
        return f"{source_layer} is below {target_layer}: dependencies point node → templates → engine → spec"
    if source.startswith("bws.node.roles.") and target_layer == "node" and not target.startswith("bws.node.roles"):
        allowed = CONTEXT_NODE_IMPORTS if source == "bws.node.roles.context" else ROLE_NODE_IMPORTS
        node_module = target.split(".")[2] if target.count(".") >= 2 else "__init__"
        if node_module not in allowed:
            return "roles reach the running node only through RoleContext (node/roles/context.py)"
    return None


def alias_violations(root: Path) -> list[str]:
    """Every import that binds a name of MODULE_ALIASES to another module."""
    found = []
    for folder in ALIASED_FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            for line, target, bound in bindings_of(path, root):
                if bound in MODULE_ALIASES and target != MODULE_ALIASES[bound]:
                    found.append(f"{path.relative_to(root)}:{line}: {bound} is {MODULE_ALIASES[bound]}, not {target}")
    return found


def test_the_code_base_keeps_its_layers():
    assert violations(REPOSITORY) == []


def test_each_alias_names_one_module():
    assert alias_violations(REPOSITORY) == []


def test_every_layer_is_read():
    """The walk finds the real tree (a checker that read nothing would pass anything)."""
    counted = {layer: len(list((REPOSITORY / layer).rglob("*.py"))) for layer in LAYERS}
    assert all(counted.values()), counted
    miner = REPOSITORY / "node" / "roles" / "miner.py"
    assert {"bws.node.keys", "bws.spec.containers"} <= {target for _, target in imports_of(miner, REPOSITORY)}


# ---------------------------------------------------------------------------
# The checker itself, on synthetic trees
# ---------------------------------------------------------------------------
def make_tree(root: Path, files: dict[str, str]) -> Path:
    for layer in LAYERS:
        (root / layer).mkdir(parents=True, exist_ok=True)
        (root / layer / "__init__.py").write_text("")
    (root / "node" / "roles").mkdir(exist_ok=True)
    (root / "node" / "roles" / "__init__.py").write_text("")
    for name in ("spec/hashing.py", "engine/commit.py", "templates/task.py", "node/service.py", "node/keys.py",
                 "node/store.py", "node/mempool.py", "node/roles/data.py"):
        (root / name).write_text("")
    for name, text in files.items():
        (root / name).write_text(text)
    return root


CLEAN = {
    "spec/tensors.py": "import numpy as np\nfrom .hashing import x\nfrom . import hashing\n",
    "engine/vector.py": "from bws.spec.hashing import x\nfrom .commit import y\n",
    "templates/jobs.py": "from bws.engine import commit\nfrom bws.spec import hashing\n",
    "node/api.py": "from bws.templates.task import t\nfrom .service import Node\n",
    "node/roles/miner.py": "from .. import keys\nfrom .data import d\nfrom bws.spec.hashing import h\n",
    "node/roles/context.py": "from ..mempool import Mempool\n",
}


def test_a_clean_tree_passes(tmp_path):
    assert violations(make_tree(tmp_path, CLEAN)) == []


def test_relative_imports_resolve(tmp_path):
    root = make_tree(tmp_path, CLEAN)
    assert [t for _, t in imports_of(root / "node/roles/miner.py", root)] == [
        "bws.node.keys", "bws.node.roles.data", "bws.spec.hashing"]
    assert [t for _, t in imports_of(root / "spec/tensors.py", root)] == ["numpy", "bws.spec.hashing",
                                                                         "bws.spec.hashing"]


def test_an_alias_of_another_module_is_reported(tmp_path):
    root = make_tree(tmp_path, {"spec/containers.py": "", "spec/constants.py": "",
                                "engine/ok.py": "from bws.spec import containers as C, constants as K\n",
                                "engine/bad.py": "from bws.spec import constants as C\n",
                                "node/roles/bad.py": "from bws.spec import containers as K\n"})
    assert alias_violations(root) == [
        "engine/bad.py:1: C is bws.spec.containers, not bws.spec.constants",
        "node/roles/bad.py:1: K is bws.spec.constants, not bws.spec.containers"]


def test_each_forbidden_import_is_reported(tmp_path):
    forbidden = {
        "spec/bad.py": ("def f():\n    from bws.engine import commit\n", "spec is below engine"),
        "spec/io.py": ("import socket\n", "do no I/O"),
        "engine/bad.py": ("from bws.templates.task import t\n", "engine is below templates"),
        "templates/bad.py": ("import bws.node.service\n", "templates is below node"),
        "node/roles/bad.py": ("from ..store import ChainStore\n", "only through RoleContext"),
        "node/roles/worse.py": ("from .. import service\n", "only through RoleContext"),
        "node/roles/miner.py": ("from ..mempool import Mempool\n", "only through RoleContext"),
    }
    root = make_tree(tmp_path, {**CLEAN, **{name: text for name, (text, _) in forbidden.items()}})
    reported = violations(root)
    assert len(reported) == len(forbidden), reported
    for name, (_, why) in forbidden.items():
        assert any(entry.startswith(f"{name}:") and why in entry for entry in reported), (name, reported)
