"""The package's imports point down (issue 19; docs/architecture.md).

Every module of `workbench` sits in one layer; a module imports only from its own layer or below,
the imports (at any depth of the file) form no circle, no module imports a private name
(`_name`) of another, and no module imports the flat compatibility names (`workbench.smoothness`,
...) instead of a module's home. The walk is static (ast): it sees every import statement,
including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import workbench
from workbench import _compat

PACKAGE = Path(workbench.__file__).parent
LAYERS = ("base", "attacks", "training", "estimator", "studies", "reports", "ui")
# top-level files: the package's face, its entry point, and two ground-floor helpers
TOP = {"__init__": "ui", "__main__": "ui", "_compat": "base", "_version": "base"}
# imports inside a function, with their reason (none may dodge a circle: the graph below includes
# them, and it must have none)
INNER_OK = {
    "workbench.ui.cli": "each subcommand loads its own stack (plotly, the sweep, the studies) "
                        "so that `python -m workbench --help` starts in a fraction of a second",
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(PACKAGE).with_suffix("")
        parts = ("workbench",) + rel.parts
        if parts[-1] == "__init__" and len(parts) > 2:
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "ui"
    if parts[1] in LAYERS:
        return parts[1]
    return TOP[parts[1]]


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """The workbench modules an ImportFrom names (a package's names may be modules)."""
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if node.level:
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + (node.module.split(".") if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("workbench"):
        return []
    mods = _modules()
    out = [target]
    for a in node.names:
        if f"{target}.{a.name}" in mods or f"{target}.{a.name}" in _compat.ALIASES_FULL:
            out.append(f"{target}.{a.name}")
    return out


def _imports():
    """(module, target, lineno, inner, names) for every import of a workbench module."""
    mods = _modules()
    for module, path in mods.items():
        tree = ast.parse(path.read_text())
        top = set(id(n) for n in tree.body)
        for node in ast.walk(tree):
            inner = id(node) not in top and not _in_type_checking(tree, node)
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(module, path, node)
                for t in targets:
                    yield module, t, node.lineno, inner, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("workbench"):
                        yield module, a.name, node.lineno, inner, []


def _in_type_checking(tree, node) -> bool:
    return False


def _home(target: str) -> str:
    """A module's name, or for a name imported from a package, the package."""
    mods = _modules()
    while target not in mods and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def test_every_module_has_a_layer():
    for m in _modules():
        assert _layer(m) in LAYERS, m


def test_no_module_imports_a_compatibility_alias():
    bad = [(m, t, line) for m, t, line, _, _ in _imports() if t in _compat.ALIASES_FULL
           and m != "workbench"]
    assert not bad, "import the module's home, not its old flat name: " + repr(bad)


def test_imports_point_down():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    bad = []
    for m, t, line, _, _ in _imports():
        t = _home(t)
        if t == "workbench" or t not in _modules():
            continue
        if rank[_layer(t)] > rank[_layer(m)]:
            bad.append(f"{m}:{line} ({_layer(m)}) imports {t} ({_layer(t)})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_inside_a_function_but_the_listed_ones():
    bad = sorted({f"{m}:{line} imports {t}" for m, t, line, inner, _ in _imports()
                  if inner and m not in INNER_OK})
    assert not bad, "imports inside functions:\n" + "\n".join(bad)


def test_no_import_circle():
    graph: dict[str, set[str]] = {m: set() for m in _modules()}
    for m, t, _, _, _ in _imports():
        t = _home(t)
        if t != m and t in graph and t != "workbench" and not (
                m.startswith(t + ".") and t.count(".") == 1):  # a subpackage's __init__ re-export
            graph[m].add(t)
    # drop the subpackages' __init__ files: they only re-export their modules
    state, stack, cycles = {}, [], []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in graph[u]:
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in graph:
        if m not in state:
            visit(m)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_name_crosses_modules():
    bad = []
    for m, t, line, _, names in _imports():
        for n in names:
            if n.startswith("_") and not n.startswith("__") and _home(t) != m:
                bad.append(f"{m}:{line} imports {n} from {t}")
    # attribute access to a private name of an imported workbench module (module._helper)
    for module, path in _modules().items():
        tree = ast.parse(path.read_text())
        aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and (node.level or (node.module or "").startswith("workbench"))
                   for a in node.names if not a.name[0].isupper()}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                bad.append(f"{module}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("old", sorted(_compat.ALIASES))
def test_every_old_name_still_imports_as_the_same_module(old):
    import importlib

    alias = importlib.import_module(f"workbench.{old}")
    home = importlib.import_module(f"workbench.{_compat.ALIASES[old]}")
    assert alias is home
    assert getattr(workbench, old) is home
