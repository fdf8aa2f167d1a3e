"""advise: the rules engine, rule by rule; the documented scenarios; a real compare report."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.errors import DataError, MmadaptError
from mmadapt.govern.advise import RULES, Constraints, advise, advise_recipe, read_report

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs/advise.md"
CALM = dict(privacy="internal", latency_ms=2000, gpu_hours=10, release_cadence="quarterly")


def _advice(report=None, **kw):
    return advise(Constraints(**{"examples": 500, **CALM, **kw}), report)


def _row(stack, value, lo, hi, **costs):
    return {"stack": stack, "fact_accuracy": value, "fact_accuracy_ci": [lo, hi], "train_seconds": 0.0,
            "latency_p95_ms": 100.0, **costs}


def _report(*rows):
    return {"recipe": "r", "primary_metric": "fact_accuracy", "rows": list(rows)}


def _fired(advice, rule):
    return [r for r in advice.reasons if r.rule == rule]


# ---------------------------------------------------------------- the documentation


def test_the_rules_table_in_the_docs_is_the_engine_s_table():
    rows = [line for line in DOC.read_text().splitlines() if re.match(r"^\| [A-Z]\d \|", line)]
    parsed = {}
    for line in rows:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        parsed[cells[0]] = tuple(cells[1:])
    assert parsed == RULES


def _scenarios():
    text = DOC.read_text()
    found = re.findall(r"```console\n\$ mmadapt advise (.+?)\n(.*?)```", text, flags=re.S)
    return [(args, expected.strip()) for args, expected in found]


def test_the_docs_hold_at_least_six_scenarios_with_different_answers():
    answers = {expected.splitlines()[0] for _, expected in _scenarios()}
    assert len(_scenarios()) >= 6 and len(answers) >= 3


@pytest.mark.parametrize("args,expected", _scenarios(), ids=lambda v: v[:40] if isinstance(v, str) else None)
def test_documented_scenario(args, expected, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = shlex.split(args)
    if argv[0].endswith(".yaml"):  # "no compare report yet": keep runs/ of this checkout out of it
        argv += ["--set", f"output_dir={tmp_path}"]
    out = CliRunner().invoke(main, ["advise", *argv])
    assert out.exit_code == 0, out.output
    shown = out.stdout.split("\nreasons")[0].strip()
    assert shown == expected


# ---------------------------------------------------------------- rule by rule


def test_no_constraint_at_all_ranks_by_cost():
    advice = advise(Constraints())
    assert advice.order == ["prompt", "prompt+retrieval", "prompt+adapter", "prompt+retrieval+adapter", "prompt+full"]
    assert advice.reasons == []


def test_D1_nothing_to_retrieve_from_excludes_retrieval():
    advice = advise(Constraints(examples=500, has_retrieval_source=False))
    assert advice.excluded == {"prompt+retrieval": ["D1"], "prompt+retrieval+adapter": ["D1"]}
    assert _fired(advice, "D1")[0].sources == ["constraint:recipe.retrieval_source"]
    assert "D1" not in {r.rule for r in advise(Constraints(examples=500, has_retrieval_source=True)).reasons}


def test_D2_no_examples_excludes_training():
    advice = _advice(examples=0)
    assert {s for s, rules in advice.excluded.items() if "D2" in rules} == {
        "prompt+adapter", "prompt+retrieval+adapter", "prompt+full"
    }
    assert advice.recommended == "prompt"


@pytest.mark.parametrize("examples,excluded", [(99, True), (100, False)])
def test_E1_full_needs_a_hundred_examples_unless_measured(examples, excluded):
    advice = _advice(examples=examples)
    assert ("prompt+full" in advice.excluded) is excluded
    if excluded:
        assert _fired(advice, "E1")[0].sources == [f"constraint:examples={examples}"]
    measured = _advice(_report(_row("prompt", 0.3, 0.2, 0.4), _row("prompt+full", 0.9, 0.8, 1.0)), examples=examples)
    assert measured.recommended == "prompt+full" and not _fired(measured, "E1")


def test_G1_zero_gpu_hours_excludes_training_but_a_small_budget_does_not():
    assert set(_advice(gpu_hours=0).excluded) == {"prompt+adapter", "prompt+retrieval+adapter", "prompt+full"}
    assert _advice(gpu_hours=0.5).excluded == {}


def test_G2_measured_training_time_over_the_budget():
    report = _report(_row("prompt", 0.5, 0.4, 0.6), _row("prompt+adapter", 0.9, 0.85, 0.95, train_seconds=7200.0))
    advice = _advice(report, gpu_hours=1.5)
    assert advice.excluded == {"prompt+adapter": ["G2"]} and advice.recommended == "prompt"
    assert _fired(advice, "G2")[0].sources == [
        "measured:report.json:prompt+adapter.train_seconds=7200", "constraint:gpu-hours=1.5"
    ]
    assert _advice(report, gpu_hours=2).recommended == "prompt+adapter"


def test_L2_measured_latency_over_the_budget_and_L1_only_without_a_measurement():
    report = _report(_row("prompt+retrieval", 0.9, 0.85, 0.95, latency_p95_ms=900.0), _row("prompt", 0.5, 0.4, 0.6))
    advice = _advice(report, latency_ms=800)
    assert advice.excluded == {"prompt+retrieval": ["L2"]}
    assert "measured:report.json:prompt+retrieval.latency_p95_ms=900" in _fired(advice, "L2")[0].sources
    assert not _fired(_advice(report, latency_ms=900), "L2")
    assert not _fired(_advice(report, latency_ms=300), "L1")  # measured: the prior is superseded
    unmeasured = _advice(latency_ms=300)
    assert _fired(unmeasured, "L1")[0].stacks == ["prompt+retrieval", "prompt+retrieval+adapter"]
    assert not _fired(_advice(latency_ms=500), "L1")


def test_B1_bars_exclude_stacks_that_miss_them_or_warn_when_none_meets():
    report = _report(_row("prompt+retrieval", 0.85, 0.8, 0.9), _row("prompt+adapter", 0.7, 0.6, 0.8))
    advice = _advice(report, bars={"fact_accuracy": 0.8})
    assert advice.excluded == {"prompt+adapter": ["B1"]}
    assert "fact_accuracy 0.70 < 0.80" in _fired(advice, "B1")[0].text
    assert "constraint:recipe.eval.min" in _fired(advice, "B1")[0].sources
    none = _advice(report, bars={"fact_accuracy": 0.95})
    assert none.excluded == {} and none.recommended == "prompt+retrieval"
    assert "no stack meets eval.min" in none.warnings[0]


def test_P1_restricted_data_moves_away_from_weights():
    open_data = _advice(examples=2000, privacy="internal")
    restricted = _advice(examples=2000, privacy="restricted")
    assert open_data.recommended == "prompt+adapter"
    assert restricted.recommended == "prompt+retrieval"
    assert restricted.scores["prompt+adapter"] == open_data.scores["prompt+adapter"] - 3
    assert restricted.scores["prompt+retrieval"] == open_data.scores["prompt+retrieval"] + 1
    assert all(r.sources == ["constraint:privacy=restricted"] for r in _fired(restricted, "P1"))
    assert not _fired(_advice(privacy="public"), "P1")


def test_K1_and_C1_knowledge_that_changes_and_weekly_releases():
    often = _advice(knowledge_changes="often")
    assert often.recommended == "prompt+retrieval"
    assert often.scores["prompt+retrieval"] == 2 and often.scores["prompt+adapter"] == -1
    weekly = _advice(release_cadence="weekly")
    assert weekly.scores["prompt+adapter"] == -1 and weekly.scores["prompt+retrieval"] == 0
    assert _fired(weekly, "C1")[0].sources == ["constraint:release-cadence=weekly"]
    assert not _fired(_advice(knowledge_changes="rarely"), "K1")


@pytest.mark.parametrize("cadence,days,fires", [
    ("weekly", 7, True), ("Weekly", 7, True), (14, 14, True), ("14", 14, True), (1, 1, True),
    (15, 15, False), ("monthly", 30, False), ("quarterly", 91, False), (None, None, False),
])
def test_C1_fires_for_releases_at_most_14_days_apart(cadence, days, fires):
    advice = _advice(release_cadence=cadence)
    assert Constraints(release_cadence=cadence).cadence_days == days
    assert bool(_fired(advice, "C1")) is fires
    assert advice.scores["prompt+adapter"] == (-1 if fires else 0)
    if fires:
        label = str(cadence).lower()
        assert _fired(advice, "C1")[0].sources == [f"constraint:release-cadence={label}"]
        assert f"a release every {days} days" in _fired(advice, "C1")[0].text


@pytest.mark.parametrize("bad", ["fortnightly", "0", "-7", "1.5", "", 0, True])
def test_a_cadence_is_a_name_or_a_whole_number_of_days(bad):
    with pytest.raises(MmadaptError, match="release cadence .* is not weekly, monthly, quarterly or a number of days"):
        Constraints(release_cadence=bad)


@pytest.mark.parametrize("examples,delta", [(99, -2), (100, 0), (999, 0), (1000, 2)])
def test_E2_E3_examples_move_the_adapter(examples, delta):
    advice = _advice(examples=examples)
    assert advice.scores["prompt+adapter"] == delta


def test_E3_does_not_apply_when_knowledge_changes_often():
    assert not _fired(_advice(examples=5000, knowledge_changes="often"), "E3")


def test_E4_full_fine_tuning_needs_data_compute_and_open_data():
    assert _advice(examples=20000, gpu_hours=48).scores["prompt+full"] == 1
    assert _advice(examples=20000, gpu_hours=12).scores["prompt+full"] == -2
    assert _advice(examples=20000, gpu_hours=48, privacy="restricted").scores["prompt+full"] == -2 - 3


def test_M1_overlapping_cis_prefer_the_cheaper_and_the_priors_are_superseded():
    report = _report(
        _row("prompt+retrieval", 0.78, 0.66, 0.88),
        _row("prompt+adapter", 0.82, 0.72, 0.92, train_seconds=612.4),
    )
    advice = _advice(report, examples=5000)  # E3 would favour the adapter without the report
    assert advice.recommended == "prompt+retrieval"
    assert not _fired(advice, "E3")
    (m1,) = _fired(advice, "M1")
    assert m1.stacks == ["prompt+retrieval", "prompt+adapter"]
    assert "measured:report.json:prompt+retrieval.fact_accuracy=0.78" in m1.sources
    assert "measured:report.json:prompt+adapter.fact_accuracy=0.82" in m1.sources
    assert "no evidence prompt+adapter is better" in m1.text


def test_M1_an_operational_rule_can_pick_the_dearer_of_two_tied_stacks():
    report = _report(_row("prompt", 0.80, 0.70, 0.90), _row("prompt+retrieval", 0.82, 0.72, 0.92))
    assert _advice(report).recommended == "prompt"
    assert _advice(report, knowledge_changes="often").recommended == "prompt+retrieval"


def test_M2_a_clearly_better_stack_wins_over_operational_preferences():
    report = _report(_row("prompt+retrieval", 0.52, 0.40, 0.64), _row("prompt+adapter", 0.86, 0.78, 0.94))
    advice = _advice(report, knowledge_changes="often", release_cadence="weekly")
    assert advice.order == ["prompt+adapter", "prompt+retrieval"]
    assert _fired(advice, "M2")[0].stacks == ["prompt+retrieval"]


def test_for_an_error_rate_the_smallest_is_best():
    def wer_row(stack, value, lo, hi):
        return {"stack": stack, "wer": value, "wer_ci": [lo, hi], "train_seconds": 0.0}

    report = {"primary_metric": "wer", "lower_is_better": ["wer"], "rows": [
        wer_row("prompt", 0.30, 0.26, 0.34), wer_row("prompt+retrieval", 0.12, 0.10, 0.14), wer_row("base", 0.45, 0.40, 0.50),
    ]}
    advice = _advice(report)
    assert advice.order == ["prompt+retrieval", "prompt", "base"]
    assert "wholly above" in _fired(advice, "M2")[0].text


def test_base_wins_when_nothing_measured_beats_it():
    report = _report(_row("base", 0.50, 0.40, 0.60), _row("prompt+adapter", 0.55, 0.45, 0.65, train_seconds=30.0))
    advice = _advice(report)
    assert advice.recommended == "base"


def test_every_stack_excluded_gives_no_recommendation_and_a_warning():
    advice = advise(Constraints(examples=0, has_retrieval_source=False), stacks=["prompt+retrieval", "prompt+adapter"])
    assert advice.recommended is None and advice.warnings


# ---------------------------------------------------------------- inputs and errors


def test_constraints_are_validated():
    with pytest.raises(MmadaptError, match="privacy 'secret'"):
        Constraints(privacy="secret")
    with pytest.raises(MmadaptError, match="gpu-hours must be >= 0"):
        Constraints(gpu_hours=-1)


def test_bad_reports_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_report(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        read_report(bad)
    bad.write_text(json.dumps({"rows": [{"no": "stack"}]}))
    with pytest.raises(DataError, match="no rows"):
        read_report(bad)


def test_cli_needs_examples_without_a_recipe_and_prints_json():
    runner = CliRunner()
    missing = runner.invoke(main, ["advise", "--privacy", "public", "--latency-ms", "1", "--gpu-hours", "1", "--release-cadence", "weekly"])
    assert missing.exit_code == 2 and "--examples" in missing.output
    out = runner.invoke(main, ["advise", "--examples", "40", "--privacy", "restricted", "--latency-ms", "2000",
                               "--gpu-hours", "10", "--release-cadence", "quarterly", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["recommended"] == "prompt+retrieval"
    assert all(r["sources"] for r in data["reasons"])


def test_cli_release_cadence_takes_names_and_days_and_a_bad_one_is_one_line():
    base = ["advise", "--examples", "40", "--privacy", "internal", "--latency-ms", "2000", "--gpu-hours", "10", "--json"]
    runner = CliRunner()
    for cadence, fires in [("weekly", True), ("monthly", False), ("quarterly", False), ("14", True), ("30", False)]:
        out = runner.invoke(main, [*base, "--release-cadence", cadence])
        assert out.exit_code == 0, out.output
        assert any(r["rule"] == "C1" for r in json.loads(out.stdout)["reasons"]) is fires, cadence
    bad = runner.invoke(main, [*base, "--release-cadence", "fortnightly"])
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines() == [
        "error: --release-cadence 'fortnightly' is not weekly, monthly, quarterly or a number of days (e.g. 14)"
    ]


@pytest.mark.slow  # two compare subprocesses (~15 s on 2 shared cores)
def test_a_real_compare_report_feeds_the_advice(tmp_path, tiny_lm, monkeypatch):
    """compare runs base and a full fine-tune of a tiny model (one process each); advise reads its report.json."""
    from mmadapt.govern.compare import compare
    from mmadapt.recipe import load_recipe

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rows = [{"question": f"What port does gateway {i} listen on?", "answer": "port 7443", "key_fact": "7443"} for i in range(16)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text("".join(
        json.dumps({"question": f"Which port for gateway number {i}?", "answer": "port 7443", "key_fact": "7443"}) + "\n"
        for i in range(12)
    ))
    (tmp_path / "r.yaml").write_text(
        f"name: adv\nmodality: text\nbase_model: {tiny_lm}\ndata: {{train: train.jsonl, eval: eval.jsonl}}\n"
        "strategies: {full: {train: {lr: 3.0e-3}}}\ntrain: {steps: 30, batch_size: 8, warmup_steps: 2}\n"
        "eval: {metrics: [fact_accuracy], latency_samples: 2, bootstrap: 200, min: {fact_accuracy: 0.9}}\n"
        f"inference: {{max_new_tokens: 8}}\noutput_dir: {tmp_path / 'runs'}\n"
    )
    recipe = load_recipe(tmp_path / "r.yaml")
    result = compare(recipe, ["base", "full"], progress=False)
    report = read_report(result.report_dir / "report.json")
    assert [r["stack"] for r in report["rows"]] == ["base", "full"]
    advice = advise_recipe(recipe, privacy="internal", latency_ms=5000, gpu_hours=1, release_cadence="quarterly")
    assert advice.report == "report.json" and advice.primary_metric == "fact_accuracy"
    # 16 examples would exclude full (E1, a prior), but it was measured on held-out questions
    assert not _fired(advice, "E1")
    assert advice.recommended == "full" and advice.excluded == {"base": ["B1"]}
    (b1,) = _fired(advice, "B1")
    assert b1.sources[0].startswith("measured:report.json:base.fact_accuracy=")
