"""Recipes through the CLI: malformed ones end in exit 2 with one line naming the file and the key
path (no traceback, no file written); valid ones get their defaults, overrides and data paths."""

from __future__ import annotations

import copy
import os

import pytest
import yaml
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.errors import RecipeError
from mmadapt.modalities.text import TextModality
from mmadapt.recipe import load_recipe


def _set(path, value):
    def mutate(r):
        node = r
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        return r

    return mutate


def _del(path):
    def mutate(r):
        node = r
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        return r

    return mutate


def _both_adapter_and_full(r):
    r["strategies"].update({"adapter": {}, "full": {}})
    return r


if {"adapter", "full"} <= set(TextModality.strategies):
    ADAPTER_FULL = ["strategies", "adapter and full cannot be in one stack"]
else:  # not registered for text yet
    ADAPTER_FULL = ["strategies.", "not available for modality 'text'"]

# id -> (mutation of a valid raw recipe | raw text | bytes, extra CLI args, fragments the one line must hold)
CASES = {
    "unknown-top-level-key": (_set(("colour",), "blue"), [], ["colour: unknown key"]),
    "misspelt-nested-key": (_set(("strategies", "retrieval", "top_kk"), 3), [], ["strategies.retrieval.top_kk", "did you mean 'top_k'"]),
    "misspelt-train-key": (_set(("train", "stpes"), 3), [], ["train.stpes", "did you mean 'steps'"]),
    "wrong-type-int": (_set(("train", "steps"), "many"), [], ["train.steps", "valid integer"]),
    "wrong-type-fraction": (_set(("train", "steps"), 1.5), [], ["train.steps", "fractional part"]),
    "wrong-type-list": (_set(("eval", "metrics"), "fact_accuracy"), [], ["eval.metrics", "valid list"]),
    "negative-steps": (_set(("train", "steps"), -5), [], ["train.steps", "greater than or equal to 1"]),
    "zero-top-k": (_set(("strategies", "retrieval", "top_k"), 0), [], ["strategies.retrieval.top_k"]),
    "unknown-strategy": (_set(("strategies", "retreival"), {}), [], ["strategies.retreival", "did you mean 'retrieval'"]),
    "adapter-and-full": (_both_adapter_and_full, [], ADAPTER_FULL),
    "unknown-modality": (_set(("modality",), "video"), [], ["modality", "'video'"]),
    "missing-name": (_del(("name",)), [], ["name: required key is missing"]),
    "missing-base-model": (_del(("base_model",)), [], ["base_model: required key is missing"]),
    "missing-data-eval": (_del(("data", "eval")), [], ["data.eval: required key is missing"]),
    "missing-data-file": (_set(("data", "eval"), "no/such/eval.jsonl"), [], ["data.eval", "'no/such/eval.jsonl' does not exist"]),
    "empty-file": ("", [], ["recipe is empty"]),
    "comment-only-file": ("# nothing here\n", [], ["recipe is empty"]),
    "yaml-list": ("- name: a\n- name: b\n", [], ["a recipe is a mapping of keys, got list"]),
    "yaml-scalar": ("just a sentence\n", [], ["a recipe is a mapping of keys, got str"]),
    "invalid-yaml-syntax": ("name: x\nmodality: text\ndata: [a, b\n", [], ["invalid YAML at line 4, column 1"]),
    "tab-indent": ("name: x\ndata:\n\ttrain: a\n", [], ["invalid YAML at line 3, column 1"]),
    "duplicate-keys": ("name: a\nmodality: text\nname: b\n", [], ["invalid YAML at line 3, column 1", "duplicate key 'name'"]),
    "template-without-question": (_set(("strategies", "prompt", "template"), "Q: {q}"), [], ["strategies.prompt.template", "{question}"]),
    "unknown-metric": (_set(("eval", "metrics"), ["fact_acuracy"]), [], ["eval.metrics[0]", "did you mean 'fact_accuracy'"]),
    "unknown-bar-metric": (_set(("eval", "min"), {"rouge": 0.5}), [], ["eval.min.rouge", "unknown metric"]),
    "bad-set-syntax": (None, ["--set", "train.steps"], ["override 'train.steps' is not key.path=value"]),
    "set-creates-unknown-key": (None, ["--set", "train.bogus=1"], ["train.bogus: unknown key"]),
    "set-into-a-scalar": (None, ["--set", "name.x=1"], ["override name.x: 'name' is not a section"]),
    "non-utf8": (b"name: caf\xe9\nmodality: text\n", [], ["not UTF-8"]),
    "name-with-space": (_set(("name",), "my recipe"), [], ["name: String should match pattern"]),
    "name-with-slash": (_set(("name",), "../escape"), [], ["name: String should match pattern"]),
    "huge-number": (_set(("train", "steps"), 10**30), [], ["train.steps", "less than or equal to 1000000"]),
    "infinite-lr": (_set(("train", "lr"), float("inf")), [], ["train.lr"]),
    "null-train-section": (_set(("train",), None), [], ["train: Input should be a valid dictionary"]),
    "null-strategies": (_set(("strategies",), None), [], ["strategies: Input should be a valid dictionary"]),
    "null-data": (_set(("data",), None), [], ["data: Input should be a valid dictionary"]),
    "strategy-section-is-list": (_set(("strategies", "prompt"), [1, 2]), [], ["strategies.prompt: must be a mapping of keys, got list"]),
    "unknown-stack-in-compare": (_set(("compare", "stacks"), ["prompt+nope"]), [], ["compare.stacks[0]", "unknown strategy 'nope'"]),
    "non-string-key": ("1: 2\nname: a\n", [], ["[1]"]),
}


def _write_case(case, make_recipe, write_recipe):
    content, args, fragments = CASES[case]
    if content is None or callable(content):
        raw = copy.deepcopy(make_recipe())
        if callable(content):
            raw = content(raw)
        path = write_recipe(raw)
    else:
        path = write_recipe(content)
    return path, args, fragments


@pytest.mark.parametrize("command", [["recipe", "validate"], ["run"]], ids=["validate", "run"])
@pytest.mark.parametrize("case", list(CASES))
def test_malformed_recipe_is_one_line_exit_2_writes_nothing(case, command, make_recipe, write_recipe, snapshot, tmp_path, monkeypatch):
    path, args, fragments = _write_case(case, make_recipe, write_recipe)
    monkeypatch.chdir(tmp_path)  # the default output_dir "runs" would land here
    before = snapshot(tmp_path)
    result = CliRunner().invoke(main, [*command, str(path), *args])
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith(f"error: {path}: "), out
    for fragment in fragments:
        assert fragment in lines[0], (fragment, out)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", [["recipe", "validate"], ["run"]], ids=["validate", "run"])
def test_folder_or_missing_file_as_recipe(command, tmp_path, monkeypatch, snapshot):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "recipe.yaml"
    folder.mkdir()
    before = snapshot(tmp_path)
    for target, fragment in [(folder, "is a folder, not a recipe file"), (tmp_path / "absent.yaml", "recipe file not found")]:
        result = CliRunner().invoke(main, [*command, str(target)])
        assert result.exit_code == 2, result.output
        assert result.output.strip().count("\n") == 0, result.output
        assert result.output.startswith(f"error: {target}: ") and fragment in result.output
    assert snapshot(tmp_path) == before


def test_all_problems_reported_at_once(make_recipe, write_recipe):
    raw = make_recipe()
    raw["strategies"]["retrieval"]["top_kk"] = 1
    raw["data"]["eval"] = "missing.jsonl"
    raw["eval"] = {"metrics": ["nope"]}
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(raw))
    message = str(err.value)
    assert "\n" not in message
    for fragment in ("strategies.retrieval.top_kk", "data.eval", "eval.metrics[0]"):
        assert fragment in message


# ---------------------------------------------------------------- valid recipes


def test_defaults_filled(make_recipe, write_recipe):
    raw = make_recipe()
    raw["strategies"] = {"prompt": None, "retrieval": {}}
    recipe = load_recipe(write_recipe(raw))
    resolved = recipe.resolved()
    assert recipe.stack == ["prompt", "retrieval"]
    assert resolved["train"]["steps"] == 200 and resolved["train"]["lr"] == 2.0e-4 and resolved["train"]["seed"] == 0
    assert resolved["strategies"]["prompt"]["template"] == "{question}"
    assert resolved["strategies"]["prompt"]["few_shot"] == 0
    assert resolved["strategies"]["retrieval"] == {**resolved["strategies"]["retrieval"], "embedder": "embedded:minilm-l6", "top_k": 3}
    assert resolved["eval"]["metrics"] is None and resolved["eval"]["latency_samples"] == 8
    assert resolved["inference"]["max_new_tokens"] == 48 and resolved["inference"]["temperature"] == 0.0
    assert resolved["output_dir"] == "runs"


def test_stack_is_ordered_whatever_the_yaml_order(make_recipe, write_recipe):
    raw = make_recipe()
    raw["strategies"] = {"retrieval": {}, "prompt": {}}
    assert load_recipe(write_recipe(raw)).stack == ["prompt", "retrieval"]


def test_set_overrides_applied_and_change_the_hash(make_recipe, write_recipe):
    path = write_recipe(make_recipe())
    plain = load_recipe(path)
    changed = load_recipe(path, ["train.steps=7", "strategies.retrieval.top_k=5", "output_dir=/tmp/x", "eval.metrics=[rouge_l]"])
    assert changed.train.steps == 7
    assert changed.strategies["retrieval"].top_k == 5
    assert changed.output_dir == "/tmp/x"
    assert changed.eval.metrics == ["rouge_l"]
    assert plain.hash() != changed.hash()
    assert load_recipe(path).hash() == plain.hash()  # deterministic


def test_validate_resolved_via_cli(make_recipe, write_recipe):
    path = write_recipe(make_recipe())
    result = CliRunner().invoke(main, ["recipe", "validate", str(path), "--set", "train.steps=9", "--resolved"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["train"]["steps"] == 9 and printed["strategies"]["retrieval"]["top_k"] == 1
    ok = CliRunner().invoke(main, ["recipe", "validate", str(path)])
    assert ok.exit_code == 0 and ok.output.startswith("ok: tiny-text (text, stack prompt+retrieval)")


def test_relative_data_paths_from_the_recipe_folder(text_data, make_recipe, write_recipe, tmp_path, monkeypatch):
    raw = make_recipe()
    raw["data"] = {"train": "data/train.jsonl", "eval": "data/eval.jsonl", "knowledge": "data/kb"}
    path = write_recipe(raw, folder=tmp_path / "recipes" / "text")  # data/ sits two folders up
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = load_recipe(path)
    assert recipe.path(recipe.data.eval) == text_data["eval"].resolve()
    assert recipe.path(recipe.data.knowledge) == text_data["knowledge"].resolve()


def test_relative_data_paths_from_cwd(text_data, make_recipe, write_recipe, tmp_path, monkeypatch):
    raw = make_recipe()
    raw["data"] = {"train": "train.jsonl", "eval": "eval.jsonl"}
    path = write_recipe(raw, folder=tmp_path / "conf")  # not an ancestor of data/
    with pytest.raises(RecipeError, match="data.eval"):
        load_recipe(path)
    monkeypatch.chdir(text_data["root"])
    recipe = load_recipe(path)
    assert recipe.path(recipe.data.train) == text_data["train"].resolve()
    assert os.path.isabs(recipe.path(recipe.data.eval))
