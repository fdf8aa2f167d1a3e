"""What the installed package may and may not contain, read from the source (AST) and from a built wheel.

* No pickles: nothing under ``mmadapt/`` or ``tools/`` loads a pickle (``torch.load`` with
  ``weights_only`` other than its default True, whatever the import spelling), writes one
  (``torch.save``) or imports ``pickle``.
* The package stands alone: nothing under ``mmadapt/`` imports ``tools`` (training tooling, not
  installed) or ``tests``, statically, lazily inside a function, or by a dotted string.
* No two modules of ``mmadapt`` import each other (function-level imports count).
* The wheel holds the shipped shapes models, hash lists included, and no training tooling.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmadapt"
TOOLS = ROOT / "tools"
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib"}
TORCH_LOADS = {"torch.load", "torch.serialization.load"}
TORCH_SAVES = {"torch.save", "torch.serialization.save"}


def _sources(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Absolute names an ``import`` / ``from ... import`` statement binds (``a.b`` and ``a.b.c`` for ``from a.b import c``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        return [source] + [f"{source}.{alias.name}" for alias in node.names]
    return []


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted name, from every import in the file (``import torch as t``: t -> torch)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``t.serialization.load`` -> ``torch.serialization.load`` when ``t`` is torch; None for anything else."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    head = aliases.get(node.id, node.id)
    return ".".join([head, *reversed(parts)])


def pickle_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every place ``source`` loads, writes or imports a pickle: ``file:line what``."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found: list[str] = []
    calls: set[int] = set()
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            for name in _imported(node, "", False):
                if name and name.split(".")[0] in PICKLE_MODULES:
                    found.append(f"{where} imports {name}")
        if isinstance(node, ast.Call):
            target = _dotted(node.func, aliases)
            calls.add(id(node.func))
            if target in TORCH_SAVES:
                found.append(f"{where} {target} writes a pickle")
            if target in TORCH_LOADS:
                keywords = {k.arg: k.value for k in node.keywords}
                if None in keywords:
                    found.append(f"{where} {target}(**kwargs) may pass weights_only=False")
                elif "weights_only" in keywords:
                    value = keywords["weights_only"]
                    if not (isinstance(value, ast.Constant) and value.value is True):
                        found.append(f"{where} {target}(weights_only={ast.unparse(value)})")
    for node in ast.walk(tree):  # torch.load passed around (functools.partial, a table of loaders ...)
        if isinstance(node, ast.Attribute | ast.Name) and id(node) not in calls and isinstance(node.ctx, ast.Load):
            target = _dotted(node, aliases)
            if target in TORCH_LOADS | TORCH_SAVES:
                found.append(f"{filename}:{node.lineno} {target} referenced outside a call")
    return found


def forbidden_imports(source: str, module: str, is_package: bool = False, forbidden: tuple[str, ...] = ("tools", "tests")) -> list[str]:
    """Imports of ``forbidden`` top-level packages in ``source`` (the module ``module``): statements
    anywhere in the file, ``importlib.import_module`` / ``__import__`` with a constant name, and
    ``"module:attr"`` strings (lazy references). One ``line name`` per offending node."""
    tree = ast.parse(source, module)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        names = _imported(node, module, is_package)
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            if _dotted(node.func, aliases) in ("importlib.import_module", "__import__"):
                names = [str(node.args[0].value)]
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and ":" in node.value and " " not in node.value:
            names = [node.value]  # e.g. "mmadapt.models.ct2_whisper:embedded_whisper_tiny_en"
        hits = [name for name in names if name.split(".")[0].split(":")[0] in forbidden]
        if hits:
            found.append((node.lineno, hits[-1]))
    return [f"{line} {name}" for line, name in sorted(found)]


def import_graph(folder: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same tree it imports (at top level or inside functions)."""
    modules = {_module_name(p): p for p in _sources(folder)}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = {t for node in ast.walk(tree) for t in _imported(node, name, path.name == "__init__.py")}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


# ---------------------------------------------------------------- the checkers find every spelling


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load(p, weights_only=False)",
        "import torch as t\nt.load(p, map_location='cpu', weights_only=False)",
        "from torch import load\nload(p, weights_only=False)",
        "from torch import load as read\nread(p, weights_only=flag)",
        "from torch import serialization\nserialization.load(p, weights_only=False)",
        "import torch.serialization\ntorch.serialization.load(p, **options)",
        "import functools, torch\nread = functools.partial(torch.load, weights_only=False)",
        "import torch\ntorch.save(state, p)",
        "def f():\n    import pickle\n    return pickle.loads(b'')",
        "from joblib import load",
    ],
)
def test_pickle_checker_finds_each_spelling(source):
    assert pickle_uses(source)


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load(p)",
        "import torch\ntorch.load(p, weights_only=True)",
        "from safetensors.torch import load_file, save_file\nsave_file(d, p)\nload_file(p)",
        "import json\njson.load(f)",
        "from mmadapt.retrieval.index import EmbeddingIndex\nEmbeddingIndex.load(p)",
    ],
)
def test_pickle_checker_lets_safe_loads_through(source):
    assert pickle_uses(source) == []


def test_import_checker_finds_lazy_and_string_imports():
    source = (
        "import importlib\n"
        "def f():\n    from tools import shapes_train\n"
        "def g():\n    return importlib.import_module('tests.fixtures.tiny')\n"
        "LAZY = 'tools.shapes_world:render'\n"
        "from mmadapt.models import shapes\n"
        "from . import tools\n"  # mmadapt.models.tools: a module of the package, not the tooling
    )
    assert forbidden_imports(source, "mmadapt.models.probe") == [
        "3 tools.shapes_train",
        "5 tests.fixtures.tiny",
        "6 tools.shapes_world:render",
    ]


# ---------------------------------------------------------------- the rules hold


def test_no_pickle_in_the_package_or_the_tools():
    found = [f for folder in (PACKAGE, TOOLS) for p in _sources(folder) for f in pickle_uses(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == [], "weights are safetensors only:\n" + "\n".join(found)


def test_the_package_imports_neither_tools_nor_tests():
    found = [
        f"{p.relative_to(ROOT)}:{f}"
        for p in _sources(PACKAGE)
        for f in forbidden_imports(p.read_text(), _module_name(p), p.name == "__init__.py")
    ]
    assert found == [], "mmadapt must work installed, without tools/ or tests/:\n" + "\n".join(found)


# ---------------------------------------------------------------- the wheel


def _build_wheel(src: Path, out: Path) -> Path:
    """``pip wheel`` of ``src``: without build isolation where this environment can build wheels
    (setuptools >= 70.1 or the ``wheel`` package), else in pip's isolated build environment
    (setuptools and wheel from the package index, as ``pip install .`` would)."""
    local = importlib.util.find_spec("wheel") is not None or importlib.util.find_spec("setuptools.command.bdist_wheel") is not None
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)]
    if local:
        command.insert(4, "--no-build-isolation")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    wheels = list(out.glob("mmadapt-*.whl"))
    assert done.returncode == 0 and len(wheels) == 1, done.stdout[-2000:] + done.stderr[-4000:]
    return wheels[0]


def test_the_wheel_ships_the_models_and_no_training_tooling(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("mmadapt", "tools", "tests"):  # tools/ and tests/ present, as in a checkout, and left out
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    wheel = _build_wheel(src, tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "installed")
    assert not [n for n in names if n.split("/")[0] in ("tools", "tests")]
    assert not [n for n in names if "shapes_train" in n or "shapes_world" in n or "tests/fixtures" in n]
    assert {n.split("/")[0] for n in names} == {"mmadapt", wheel.name.split("-py3")[0] + ".dist-info"}

    from mmadapt.models.cache import HASHES_FILE, verify

    installed = tmp_path / "installed" / "mmadapt" / "models" / "shapes"
    for model in ("shapes-clip", "shapes-diffusion"):
        folder = installed / model
        listed = json.loads((folder / HASHES_FILE).read_text())
        assert any(name.endswith(".safetensors") for name in listed)
        assert verify(folder), f"{model} as installed from the wheel does not match its {HASHES_FILE}"
        shipped = ROOT / "mmadapt" / "models" / "shapes" / model
        assert sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*") if p.is_file()) == sorted(
            p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
        )
