"""Property-based fuzzing of recipe YAML: every mutation of a shipped recipe ends in a valid
recipe or one clear RecipeError with the file and a key path — never a traceback, never a file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmadapt.cli import main
from mmadapt.errors import MmadaptError
from mmadapt.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (ROOT / "recipes").rglob("*.yaml"))
EXAMPLES = int(os.environ.get("MMADAPT_FUZZ_EXAMPLES", "600"))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["../../../../etc/passwd", "/nonexistent/file.jsonl", "..", "~", "embedded:nope", "\u202e\u0000x", "💥" * 30]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=6)


def _paths(node, prefix=()):
    """Every key path of a nested mapping."""
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(_paths(value, (*prefix, key)))
    return out


def _get(node, path):
    for key in path:
        node = node[key]
    return node


@st.composite
def mutated_recipes(draw):
    source = draw(st.sampled_from(SHIPPED))
    raw = yaml.safe_load(source.read_text())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(raw)
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["delete", "retype", "add", "typo", "wrap"]))
        if kind == "delete" and path:
            parent = _get(raw, path[:-1])
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
        elif kind == "retype" and path:
            parent = _get(raw, path[:-1])
            if isinstance(parent, dict):
                parent[path[-1]] = draw(values)
        elif kind == "add":
            node = _get(raw, path)
            if isinstance(node, dict):
                node[draw(st.text(min_size=1, max_size=12))] = draw(values)
        elif kind == "typo" and path:
            parent = _get(raw, path[:-1])
            if isinstance(parent, dict) and isinstance(path[-1], str) and len(path[-1]) > 2:
                key = path[-1]
                i = draw(st.integers(min_value=0, max_value=len(key) - 1))
                parent[key[:i] + key[i + 1 :] + draw(st.sampled_from(["", "s", "_"]))] = parent.pop(key)
        elif kind == "wrap":
            raw = draw(st.sampled_from([[raw], "just a string", 42, None, {"recipe": raw}])) if not path else raw
        if not isinstance(raw, dict):
            break
    return source, raw


def _dump(raw) -> str:
    try:
        return yaml.safe_dump(raw, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError:
        return "{unbalanced: [\n"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(case=mutated_recipes())
def test_every_mutation_is_valid_or_one_clear_error(case, tmp_path_factory):
    source, raw = case
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / source.name
    path.write_text(_dump(raw), encoding="utf-8")
    before = sorted(folder.rglob("*"))
    os.chdir(ROOT)  # shipped data paths are relative to the project
    try:
        recipe = load_recipe(path)
    except MmadaptError as exc:
        message = str(exc)
        assert "\n" not in message, message
        assert str(path) in message, message
        assert message.strip(), "empty error"
    else:
        assert recipe.name and recipe.modality in ("text", "image", "speech")
    assert sorted(folder.rglob("*")) == before, "validation must write nothing"


@pytest.mark.parametrize(
    "text",
    [
        "name: [unclosed",
        "- a\n- list",
        "",
        "name: x\nname: y\n",
        "name: ok\nmodality: text\nbase_model: embedded:smollm2-135m-instruct\ndata: {eval: ../../../../nope.jsonl}\nstrategies: {prompt: {}}\n",
        "&a [*a]",
        "name: !!python/object/apply:os.system ['echo pwned']\n",
        "a: " + "[" * 2000 + "]" * 2000,
    ],
)
def test_cli_reports_hostile_yaml_in_one_line(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(main, ["recipe", "validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_symlinked_data_outside_the_project_is_followed_or_refused_clearly(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "eval.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    (tmp_path / "link.jsonl").symlink_to(outside / "eval.jsonl")
    (tmp_path / "dangling.jsonl").symlink_to(outside / "missing.jsonl")
    base = "name: s\nmodality: text\nbase_model: embedded:smollm2-135m-instruct\nstrategies: {prompt: {}}\n"
    good = tmp_path / "good.yaml"
    good.write_text(base + f"data: {{eval: {tmp_path / 'link.jsonl'}}}\n")
    assert load_recipe(good).data.eval.endswith("link.jsonl")
    bad = tmp_path / "bad.yaml"
    bad.write_text(base + f"data: {{eval: {tmp_path / 'dangling.jsonl'}}}\n")
    with pytest.raises(MmadaptError, match=r"data\.eval: .* does not exist"):
        load_recipe(bad)
