"""The shape of the package, checked (tests/test_package_rules.py checks pickles, tools/ and the wheel): no import cycles, layers that only import downwards,
modules small enough to read, and shared code that asks the modality contract instead of guessing.

Every ``import`` statement counts, at module level or inside a function (a lazy import is still
a dependency); only imports under ``if TYPE_CHECKING:`` are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmadapt"
MAX_LINES = 450

# Who may import whom: a module of the key's layer never imports a module of the listed layers.
FORBIDDEN = {
    "mmadapt.engine": ("mmadapt.govern", "mmadapt.cli", "mmadapt.modalities"),
    "mmadapt.govern": ("mmadapt.cli", "mmadapt.modalities"),
    "mmadapt.serve": ("mmadapt.cli", "mmadapt.modalities"),
    "mmadapt.modalities": ("mmadapt.govern", "mmadapt.cli"),
    "mmadapt.retrieval": ("mmadapt.engine", "mmadapt.govern", "mmadapt.cli", "mmadapt.modalities"),
    "mmadapt.models": ("mmadapt.engine", "mmadapt.govern", "mmadapt.cli", "mmadapt.modalities"),
    "mmadapt.records": ("mmadapt.engine", "mmadapt.govern", "mmadapt.cli", "mmadapt.modalities", "mmadapt.protocols"),
    "mmadapt.protocols": ("mmadapt.engine", "mmadapt.govern", "mmadapt.cli", "mmadapt.modalities"),
    "mmadapt.config": ("mmadapt.engine", "mmadapt.govern", "mmadapt.cli", "mmadapt.modalities", "mmadapt.recipe"),
    "mmadapt.recipe": ("mmadapt.engine", "mmadapt.govern", "mmadapt.cli", "mmadapt.modalities"),
    "mmadapt.evalspec": ("mmadapt.engine", "mmadapt.govern", "mmadapt.cli", "mmadapt.modalities", "mmadapt.recipe"),
    "mmadapt.guard": ("mmadapt.engine", "mmadapt.govern", "mmadapt.cli", "mmadapt.modalities", "mmadapt.recipe", "mmadapt.serve"),
    "mmadapt.errors": ("mmadapt.",),
}
SHARED = ("mmadapt.engine", "mmadapt.govern", "mmadapt.serve", "mmadapt.cli", "mmadapt.recipe", "mmadapt.evalspec", "mmadapt.guard")  # never guess at a modality


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def imports_of(name: str) -> set[str]:
    """The mmadapt modules ``name`` imports (a package import counts as its ``__init__``)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_read_from_functions_too():
    assert "mmadapt.engine.versions" in GRAPH["mmadapt.engine.artifact"]  # a lazy import inside commit()


def test_no_import_cycle_inside_mmadapt():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer):
    bad = []
    for name, targets in GRAPH.items():
        if name == layer or name.startswith(layer + "."):
            bad += [f"{name} -> {t}" for t in targets if any(t == f or t.startswith(f if f.endswith(".") else f + ".") for f in FORBIDDEN[layer])]
    assert bad == []


def test_modules_stay_small_enough_to_read():
    big = {name: n for name, path in MODULES.items() if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}


def test_shared_code_does_not_guess_at_modalities_with_getattr():
    """engine/, govern/, cli/ and recipe.py ask the Modality contract; they never probe a recipe,
    stack or modality object with getattr/hasattr."""
    suspects = ("recipe", "stack", "modality", "data")
    bad = []
    for name, path in MODULES.items():
        if not name.startswith(SHARED):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
                subject = ast.unparse(node.args[0]) if node.args else ""
                if any(word in subject.lower() for word in suspects):
                    bad.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert bad == []


def test_no_modality_is_named_in_shared_code():
    """Shared code never branches on a modality's name: no 'text', 'image' or 'speech' literal compared
    with a modality, and no import of a modality package."""
    bad = []
    for name, path in MODULES.items():
        if not name.startswith(SHARED):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                text = ast.unparse(node)
                if "modality" in text and any(f"'{m}'" in text or f'"{m}"' in text for m in ("text", "image", "speech")):
                    bad.append(f"{name}:{node.lineno}: {text}")
    assert bad == []
