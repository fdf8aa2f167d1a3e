"""DESIGN.md's map matches the tree: every module of mmadapt/, tools/ and tests/fixtures/ is named on
it, and every file name on it exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "DESIGN.md"


def _layout() -> str:
    text = MAP.read_text(encoding="utf-8")
    section = text[text.index("## Layout (the map)") :]
    return section[section.index("```") + 3 : section.index("```", section.index("```") + 3)]


def test_every_module_is_on_the_map():
    layout = _layout()
    named = set(re.findall(r"[\w.]+\.py\b", layout))
    missing = []
    for folder in ("mmadapt", "tools", "tests/fixtures"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "__init__.py" and path.parent.name not in ("mmadapt",) and path.parent.parent.name != "modalities":
                continue  # package markers; the modality __init__ (its Modality class) and mmadapt's are on the map
            if path.name not in named:
                missing.append(str(path.relative_to(ROOT)))
    assert missing == [], f"add these to DESIGN.md's map: {missing}"


def test_every_file_on_the_map_exists():
    layout = _layout()
    existing = {p.name for folder in ("mmadapt", "tools", "tests/fixtures") for p in (ROOT / folder).rglob("*.py")}
    ghosts = sorted(name for name in set(re.findall(r"\b[\w]+\.py\b", layout)) if name not in existing)
    assert ghosts == [], f"DESIGN.md names files that do not exist: {ghosts}"


def test_every_folder_on_the_map_exists():
    for folder in ("mmadapt/engine", "mmadapt/govern", "mmadapt/modalities", "mmadapt/retrieval", "mmadapt/models",
                   "mmadapt/cli", "tools", "recipes", "datasets", "bench", "docs", "tests/fixtures"):
        assert (ROOT / folder).is_dir(), folder
        assert f"{folder.rsplit('/', 1)[-1]}/" in _layout(), folder
