"""Evaluation suites (eval/*.yaml): the schema, run_suite, `mmadapt eval` exit codes, the promote gate,
and metrics users bring — on the toy 'spell' modality (no model, no torch work: each test runs in a second
or two). A version with the glossary (retrieval) spells the held-out words; a prompt-only one does not."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

import mmadapt
from mmadapt import protocols
from mmadapt.cli import main
from mmadapt.errors import MmadaptError, RecipeError, SuiteError
from mmadapt.evalspec import load_suite
from mmadapt.govern.registry import PromotionError, promote, read_audit
from mmadapt.govern.suites import run_suite
from mmadapt.protocols import register_modality
from tests.fixtures.toy_modality import SpellModality

METRIC = "tests.fixtures.user_metrics:capitalised"


def _jsonl(path, pairs):
    path.write_text("".join(json.dumps({"word": w, "spelling": s}) + "\n" for w, s in pairs))


@pytest.fixture
def spell(tmp_path, monkeypatch):
    """The spell modality registered; data, a suite (eval/spell-heldout.yaml) and a recipe writer."""
    before = dict(protocols.MODALITIES)
    register_modality("spell", SpellModality)
    rng = random.Random(1)
    words = {}
    while len(words) < 40:
        stem = "".join(rng.choice("bdklmnprstvz") + rng.choice("aeiou") for _ in range(3))
        words[stem] = stem.capitalize() + rng.choice(["X", "-9", "Pro", "OS"])
    pairs = list(words.items())
    _jsonl(tmp_path / "train.jsonl", pairs[:20])
    _jsonl(tmp_path / "eval.jsonl", pairs[:10])
    _jsonl(tmp_path / "heldout.jsonl", pairs[20:30])  # in the glossary, never in train
    (tmp_path / "glossary.tsv").write_text("".join(f"{w}\t{s}\n" for w, s in pairs[20:]))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "spell-heldout.yaml").write_text(
        "name: spell-heldout\nmodality: spell\nsets: [../heldout.jsonl]\nbars: {exact: 0.8, edits: 1.0}\n"
    )
    (tmp_path / "recipes").mkdir()
    monkeypatch.chdir(tmp_path)

    def recipe(name="spell", stack="{retrieval: {}}", eval_extra="", file=None):
        path = tmp_path / "recipes" / f"{file or name}.yaml"
        path.write_text(
            f"name: {name}\nmodality: spell\nbase_model: echo\n"
            "data: {train: train.jsonl, eval: eval.jsonl, glossary: glossary.tsv}\n"
            f"strategies: {stack}\noutput_dir: {tmp_path / 'runs'}\n"
            f"eval: {{bootstrap: 200, latency_samples: 0{eval_extra}}}\n"
        )
        return path

    yield recipe
    protocols.MODALITIES.clear()
    protocols.MODALITIES.update(before)
    protocols._loaded.pop("spell", None)


def _run(path, **overrides):
    return mmadapt.run(mmadapt.load_recipe(path, [f"{k}={v}" for k, v in overrides.items()]), progress=False)


# ---------------------------------------------------------------- the schema


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name: s\nmodality: spell\nsets: [heldout.jsonl]\nbar: {exact: 1}\n", "bar: unknown key (did you mean 'bars'?)"),
        ("name: s\nmodality: spell\n", "sets: required key is missing"),
        ("name: s\nmodality: spell\nsets: []\n", "sets: List should have at least 1 item"),
        ("name: s\nmodality: spell\nsets: [heldout.jsonl]\nmetrics: [exakt]\n", "metrics[0]: unknown metric 'exakt' (did you mean 'exact'?)"),
        ("name: s\nmodality: spell\nsets: [heldout.jsonl]\nbars: {edits: 1}\nmetrics: [exact]\n", "bars.edits: not among the suite's metrics"),
        ("name: s\nmodality: spell\nsets: [missing.jsonl]\n", "sets[0]: 'missing.jsonl' does not exist"),
        ("name: s\nmodality: spel\nsets: [heldout.jsonl]\n", "unknown modality 'spel' (did you mean 'spell'?)"),
        ("name: s\nmodality: spell\nsets: [heldout.jsonl]\nbars: {exact: high}\n", "bars.exact: Input should be a valid number"),
        ("name: s\nname: t\n", "invalid YAML at line 2"),
        ("- a list\n", "a suite is a mapping of keys"),
        ("name: s\nmodality: spell\nsets: [heldout.jsonl]\nmetrics: [nope.nothing:fn]\n", "module 'nope.nothing' does not import"),
        (f"name: s\nmodality: spell\nsets: [heldout.jsonl]\nmetrics: [{METRIC.replace('capitalised', 'NOT_CALLABLE')}]\n",
         "names no callable 'NOT_CALLABLE'"),
    ],
)
def test_a_bad_suite_is_one_line_with_the_key_path(spell, tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(str(path))


def test_a_suite_reads_sets_relative_to_its_file_and_bar_directions_from_the_modality(spell, tmp_path):
    suite = load_suite("eval/spell-heldout.yaml")
    assert suite.sets == [(tmp_path / "heldout.jsonl").resolve()] and suite.metrics == ["exact", "edits"]
    assert suite.bar_text("exact") == ">= 0.80" and suite.bar_text("edits") == "<= 1.00"  # edits is lower-is-better
    assert suite.check({"exact": 0.9, "edits": 0.5}) == []
    assert suite.check({"exact": 0.1, "edits": 2.0}) == ["exact 0.10 < 0.80", "edits 2.00 > 1.00"]


# ---------------------------------------------------------------- run_suite and the CLI


def test_run_suite_passes_the_glossary_version_and_fails_the_prompt_only_one(spell):
    path = spell()
    good = _run(path)
    bad = _run(path, strategies="{prompt: {}}")
    result = run_suite("eval/spell-heldout.yaml", [str(good.version_dir), f"{path}@{bad.version_dir.name}"])
    first, second = result.targets
    assert first.passed and first.sets[0].metrics == {"exact": 1.0, "edits": 0.0} and first.sets[0].examples == 10
    assert not second.passed and second.failures[0] == "exact 0.00 < 0.80" and second.failures[1].startswith("edits ")
    assert second.sets[0].ci["exact"] == (0.0, 0.0) and not result.passed
    diffs = {d.metric: d for d in result.diffs[(1, "heldout.jsonl")]}
    assert diffs["exact"].diff == -1.0 and diffs["exact"].verdict == "worse" and diffs["edits"].verdict == "worse"


def test_every_bar_holds_on_every_set(spell, tmp_path):
    (tmp_path / "eval" / "two.yaml").write_text("name: two\nmodality: spell\nsets: [../heldout.jsonl, ../eval.jsonl]\nbars: {exact: 0.8}\n")
    version = _run(spell()).version_dir  # the glossary spells the held-out words, not the train words of eval.jsonl
    target = run_suite("eval/two.yaml", [str(version)]).targets[0]
    assert [(s.set, s.metrics["exact"]) for s in target.sets] == [("heldout.jsonl", 1.0), ("eval.jsonl", 0.0)]
    assert target.failures == ["eval.jsonl: exact 0.00 < 0.80"] and not target.passed


def test_eval_cli_exit_codes(spell, tmp_path):
    path = spell()
    _run(path)
    cli = CliRunner()
    ok = cli.invoke(main, ["eval", "eval/spell-heldout.yaml", str(path), "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert "PASS" in ok.output and "exact" in ok.output and ">= 0.80" in ok.output and "<= 1.00" in ok.output

    _run(path, strategies="{prompt: {}}")  # no bars in the recipe: the new version is current
    failed = cli.invoke(main, ["eval", "eval/spell-heldout.yaml", str(path), f"{path}@v0001", "--quiet"])
    assert failed.exit_code == 1, failed.output
    assert "FAIL" in failed.output and "(paired, 95% bootstrap CI)" in failed.output and "better" in failed.output

    as_json = cli.invoke(main, ["eval", "eval/spell-heldout.yaml", str(path), f"{path}@v0001", "--quiet", "--json"])
    report = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and report["passed"] is False and report["lower_is_better"] == ["edits"]
    assert report["targets"][0]["failures"][0] == "exact 0.00 < 0.80" and report["targets"][1]["passed"] is True
    assert report["diffs"][0]["set"] == "heldout.jsonl" and report["diffs"][0]["metrics"][0]["verdict"] == "better"

    for args, message in [
        (["eval", "eval/nope.yaml", str(path)], "suite file not found"),
        (["eval", "eval/spell-heldout.yaml"], "a suite and at least one target are needed"),
        (["eval", "eval/spell-heldout.yaml", str(tmp_path)], "is not a version folder nor a recipe"),
        (["eval", "eval/spell-heldout.yaml", f"{path}@v0009"], "no version 'v0009'"),
        (["eval", "--all", "eval/spell-heldout.yaml"], "--all takes no suite or targets"),
    ]:
        bad = cli.invoke(main, args)
        assert bad.exit_code == 2 and message in bad.output, (args, bad.output)
        assert len(bad.output.strip().splitlines()) == 1


def test_a_target_of_another_modality_is_one_line_exit_2(spell, tmp_path):
    (tmp_path / "q.jsonl").write_text('{"id": "q1", "question": "Q?", "answer": "A.", "key_fact": "A"}\n')
    (tmp_path / "eval" / "text.yaml").write_text("name: t\nmodality: text\nsets: [../q.jsonl]\n")
    path = spell()
    _run(path)
    out = CliRunner().invoke(main, ["eval", "eval/text.yaml", str(path)])
    assert out.exit_code == 2 and "is a spell version; suite t is for text" in out.output
    assert len(out.output.strip().splitlines()) == 1


def test_eval_all_runs_every_suite_on_every_run_recipe_of_its_modality(spell):
    good = spell()
    spell(name="never-run")
    _run(good)
    cli = CliRunner()
    out = cli.invoke(main, ["eval", "--all", "--quiet"])
    assert out.exit_code == 0, out.output
    assert "skipped recipes/never-run.yaml: no versions (run it first)" in out.output
    assert "eval/spell-heldout.yaml" in out.output and "pass" in out.output and "exact 1.000, edits 0.000" in out.output
    report = json.loads(cli.invoke(main, ["eval", "--all", "--quiet", "--json"]).stdout)
    assert report["passed"] and report["skipped"] == [{"recipe": "recipes/never-run.yaml", "why": "no versions (run it first)"}]

    _run(good, strategies="{prompt: {}}")  # the current version now misses the bars
    out = cli.invoke(main, ["eval", "--all", "--quiet"])
    assert out.exit_code == 1 and "FAIL" in out.output and "exact 0.00 < 0.80" in out.output

    (good.parent.parent / "eval" / "broken.yaml").write_text("name: b\n")  # bad input: nothing is scored
    out = cli.invoke(main, ["eval", "--all"])
    assert out.exit_code == 2 and out.output == "error: eval/broken.yaml: modality: required key is missing; sets: required key is missing\n"


def test_eval_all_holds_only_the_recipes_a_suite_names(spell):
    good, other = spell(), spell(name="other")
    _run(good)
    _run(other)
    suite = good.parent.parent / "eval" / "spell-heldout.yaml"
    suite.write_text(suite.read_text() + "recipes: [other]\n")
    report = json.loads(CliRunner().invoke(main, ["eval", "--all", "--quiet", "--json"]).stdout)
    assert [row["recipe"] for row in report["rows"]] == ["other"]


# ---------------------------------------------------------------- the promote gate


def test_promote_is_refused_by_a_failing_suite_with_the_figures_and_accepted_when_it_passes(spell, tmp_path):
    # eval.min makes the recipe gated (the first version becomes current, later ones wait for promote)
    path = spell(eval_extra=", min: {exact: 0.0}, suites: [eval/spell-heldout.yaml]")
    recipe = mmadapt.load_recipe(path)
    rdir = tmp_path / "runs" / "spell"
    _run(path)  # v0001: retrieval, current
    _run(path, strategies="{prompt: {}}")  # v0002: made worse on purpose
    with pytest.raises(PromotionError) as info:
        promote(rdir, "v0002", recipe, reason="try")
    message = str(info.value)
    assert "v0002 does not meet its bars (eval.min, eval.suites): eval/spell-heldout.yaml: exact 0.00 < 0.80" in message
    assert "\n" not in message and (rdir / "current").read_text().strip() == "v0001"
    refused = read_audit(rdir)[-1]
    assert refused["what"] == "refused-promote" and refused["version"] == "v0002"
    assert refused["suites"]["eval/spell-heldout.yaml"]["heldout.jsonl"]["exact"] == 0.0

    _run(path, strategies="{retrieval: {}, adapter: {}}")  # v0003
    assert promote(rdir, "v0003", recipe, reason="good") == "v0003"
    assert (rdir / "current").read_text().strip() == "v0003"
    assert read_audit(rdir)[-1]["suites"]["eval/spell-heldout.yaml"]["heldout.jsonl"]["exact"] == 1.0

    cli = CliRunner().invoke(main, ["registry", "promote", str(path), "v0002"])
    assert cli.exit_code == 2 and "eval/spell-heldout.yaml: exact 0.00 < 0.80" in cli.output


def test_recipe_eval_suites_are_checked_at_validation(spell, tmp_path):
    (tmp_path / "q.jsonl").write_text('{"id": "q1", "question": "Q?", "answer": "A.", "key_fact": "A"}\n')
    (tmp_path / "eval" / "text.yaml").write_text("name: t\nmodality: text\nsets: [../q.jsonl]\n")
    (tmp_path / "eval" / "bad.yaml").write_text("name: b\nmodality: spell\nsets: [../q.jsonl]\nbars: {exakt: 1}\n")
    for suites, expected in [
        ("[eval/none.yaml]", "eval.suites[0]: 'eval/none.yaml' does not exist"),
        ("[eval/text.yaml]", "eval.suites[0]: eval/text.yaml is a text suite, the recipe is spell"),
        ("[eval/bad.yaml]", "eval.suites[0]: " + str(tmp_path / "eval" / "bad.yaml") + ": bars.exakt: not among"),
    ]:
        with pytest.raises(RecipeError) as info:
            mmadapt.load_recipe(spell(eval_extra=f", suites: {suites}"))
        assert expected in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- metrics users bring


def test_a_user_metric_is_scored_in_run_and_eval_with_a_ci(spell, tmp_path):
    path = spell(stack="{retrieval: {}, adapter: {}}", eval_extra=f", metrics: [exact, '{METRIC}'], min: {{'{METRIC}': 0.5}}")
    run = _run(path)
    assert run.metrics[METRIC] == 1.0 and run.evaluation.ci[METRIC] == (1.0, 1.0)  # product spellings are capitalised
    rows = [json.loads(line) for line in (run.version_dir / "predictions.jsonl").read_text().splitlines()]
    assert all(r[METRIC] == 1.0 for r in rows)

    (tmp_path / "eval" / "user.yaml").write_text(
        f"name: u\nmodality: spell\nsets: [../heldout.jsonl]\nmetrics: ['{METRIC}', tests.fixtures.user_metrics:length_ratio]\n"
        f"bars: {{'{METRIC}': 0.9}}\n"
    )
    prompt_only = _run(path, strategies="{prompt: {}}")
    result = run_suite("eval/user.yaml", [str(run.version_dir), str(prompt_only.version_dir)])
    assert result.targets[0].passed and result.targets[0].sets[0].metrics[METRIC] == 1.0
    assert result.targets[1].failures == [f"{METRIC} 0.00 < 0.90"]  # the echoed word is lower case
    assert "tests.fixtures.user_metrics:length_ratio" in result.targets[1].sets[0].metrics
    assert {d.metric for d in result.diffs[(1, "heldout.jsonl")]} == {METRIC, "tests.fixtures.user_metrics:length_ratio"}


@pytest.mark.parametrize(
    "metric, expected",
    [
        ("nope.nothing:fn", "eval.metrics[1]: metric 'nope.nothing:fn': module 'nope.nothing' does not import (ModuleNotFoundError"),
        ("tests.fixtures.user_metrics:missing", "eval.metrics[1]: metric 'tests.fixtures.user_metrics:missing': tests.fixtures.user_metrics has no such name 'missing'"),
        ("tests.fixtures.user_metrics:NOT_CALLABLE", "names no callable 'NOT_CALLABLE'"),
        ("not a path:x", "is not package.module:function"),
    ],
)
def test_a_user_metric_that_does_not_import_is_one_line_exit_2_before_anything_loads(spell, tmp_path, metric, expected):
    path = spell(eval_extra=f", metrics: [exact, '{metric}']")
    with pytest.raises(RecipeError) as info:
        mmadapt.load_recipe(path)
    assert expected in str(info.value) and "\n" not in str(info.value)
    out = CliRunner().invoke(main, ["run", str(path)])
    assert out.exit_code == 2 and expected in out.output and len(out.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing was written


@pytest.mark.slow  # one stack in a spawned process (~10 s): the metric is imported there by its path
def test_a_user_metric_works_in_compare(spell):
    from mmadapt.govern.compare import compare

    path = spell(eval_extra=f", metrics: [exact, '{METRIC}']")
    result = compare(mmadapt.load_recipe(path), ["base", "adapter"], progress=False)
    assert {row["stack"]: row[METRIC] for row in result.rows} == {"base": 0.0, "adapter": 1.0}


def test_a_bar_on_a_user_metric_needs_the_metric_measured(spell):
    with pytest.raises(RecipeError, match=r"eval.min.tests.fixtures.user_metrics:capitalised: a user metric must also be listed in eval.metrics"):
        mmadapt.load_recipe(spell(eval_extra=f", min: {{'{METRIC}': 0.5}}"))


def test_an_unknown_modality_metric_still_names_the_nearest_one(spell):
    with pytest.raises(MmadaptError, match=r"eval.metrics\[0\]: unknown metric 'exakt' \(did you mean 'exact'\?\)"):
        mmadapt.load_recipe(spell(eval_extra=", metrics: [exakt]"))
