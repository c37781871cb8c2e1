"""The package's shape (issue 20): an import graph without cycles, no private names reached across modules,
modules of a readable size, short command functions, and providers described by the registry rather than
named in comparisons."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mfbench"
MAX_LINES = 400
MAX_COMMAND_LINES = 40
LONG_ALLOWED: set[str] = set()
NAMES_ALLOWED: set[str] = set()
BUILT_IN = {"reference", "embedding_bag", "compiled", "triton", "sharded", "dense"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _trees():
    return {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _imports(name: str, tree: ast.Module):
    """(imported module, imported name or None) for every import in the module, nested ones included."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                yield base, alias.name


def _edges() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at import time or inside a function (a lazy import is an
    import too). A package's own __init__ running first is not counted: the packages' __init__ files import
    nothing of the package at import time."""
    edges = {name: set() for name in MODULES}
    for name, tree in _trees().items():
        for base, imported in _imports(name, tree):
            full = f"{base}.{imported}" if imported else base
            target = full if full in MODULES else base if base in MODULES else None
            if target and target != name:
                edges[name].add(target)
    return edges


def test_the_import_graph_has_no_cycle():
    edges = _edges()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_a_cycle_when_there_is_one(monkeypatch, tmp_path):
    """The check above reads real imports: a planted pair of modules importing each other is found."""
    (tmp_path / "mfbench").mkdir()
    (tmp_path / "mfbench" / "__init__.py").write_text("")
    (tmp_path / "mfbench" / "a.py").write_text("from mfbench import b\n")
    (tmp_path / "mfbench" / "b.py").write_text("def f():\n    from mfbench.a import g\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "mfbench")
    monkeypatch.setitem(globals(), "MODULES", _modules())
    with pytest.raises(AssertionError, match="mfbench.a -> mfbench.b -> mfbench.a"):
        test_the_import_graph_has_no_cycle()


def test_no_module_imports_a_private_name_of_another():
    found = []
    for name, tree in _trees().items():
        aliases = {}
        for base, imported in _imports(name, tree):
            if not base.startswith("mfbench"):
                continue
            if imported and imported.startswith("_") and not imported.startswith("__"):
                found.append(f"{name}: from {base} import {imported}")
            full = f"{base}.{imported}" if imported else base
            if full in MODULES:
                aliases[full.rpartition(".")[2] if imported else full] = full
        for node in ast.walk(tree):  # module._name reached through an imported module
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{name}: {node.value.id}.{node.attr}")
    assert not found, "\n".join(found)


def test_modules_stay_readable():
    long = {str(path.relative_to(ROOT)): n for path in MODULES.values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= LONG_ALLOWED, long


def test_each_command_function_is_short():
    long = {}
    for path in (PACKAGE / "shells" / "cli").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("cmd_"):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_COMMAND_LINES:
                    long[f"{path.name}:{node.name}"] = length
    assert not long, long


def _literals(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {v for elt in node.elts for v in _literals(elt)}
    return set()


def test_providers_are_described_by_the_registry_not_compared_by_name():
    """The registry's fields (baseline, reference, exact, autotuned, collective, ...) say what a provider is;
    'dense' may still name the dense architecture (architecture == "dense")."""
    found = []
    for name, path in MODULES.items():
        rel = str(path.relative_to(ROOT))
        if rel in NAMES_ALLOWED:
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            named = set().union(*map(_literals, sides)) & BUILT_IN
            other = " ".join(ast.get_source_segment(source, s) or "" for s in sides if not _literals(s))
            if named and "arch" not in other:
                found.append(f"{rel}:{node.lineno}: {ast.get_source_segment(source, node)}")
    assert not found, "\n".join(found)


def test_package_inits_import_nothing_of_the_package_at_import_time():
    """What lets the graph above leave out a package's __init__, which runs before any module under it."""
    found = []
    for name, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."]
                found += [f"{name}: {m}" for m in modules if m.startswith("mfbench") or m == "."]
    assert not found, found
