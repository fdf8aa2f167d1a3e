"""compare --parallel and --grid, run for real: each stack in a spawned process (the toy 'spell'
modality of tests/fixtures/toy_modality.py, a few seconds a stack; a tiny random LM for the LoRA grid)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mmadapt import protocols
from mmadapt.cli import main
from mmadapt.errors import DataError
from mmadapt.govern.advise import advise_recipe, read_report
from mmadapt.govern.compare import compare
from mmadapt.protocols import register_modality
from mmadapt.recipe import load_recipe
from tests.fixtures.toy_modality import SpellAdapter, SpellModality
from tests.test_toy_modality import spell  # noqa: F401 - the fixture: the toy modality registered, data and a recipe

FIGURES = ("stack", "settings", "label", "exact", "exact_ci", "edits", "edits_ci", "exact_vs_base", "edits_vs_base", "rank", "tied")


def _figures(report_dir):
    rows = json.loads((report_dir / "report.json").read_text())["rows"]
    return [{k: row.get(k) for k in FIGURES} for row in rows]


@pytest.mark.slow  # eight stacks in spawned processes (~15 s on 2 shared cores)
def test_parallel_compare_writes_the_same_report_as_sequential(spell, tmp_path):  # noqa: F811
    recipe = load_recipe(spell)
    stacks = ["base", "prompt", "retrieval", "retrieval+adapter"]
    one_by_one = compare(recipe, stacks, progress=False)
    at_once = compare(recipe, stacks, parallel=2, progress=False)
    assert at_once.report_dir != one_by_one.report_dir
    assert _figures(at_once.report_dir) == _figures(one_by_one.report_dir)
    assert [r["label"] for r in at_once.rows] == stacks  # the order asked, whatever order they finished in
    assert [r["exact"] for r in at_once.rows] == [0.0, 0.0, 0.5, 1.0]
    for stack in ("base", "prompt", "retrieval", "retrieval-adapter"):  # each stack's versions in its own folder
        assert sorted(p.name for p in (tmp_path / "runs" / f"spell--{stack}").glob("v*")) == ["v0001", "v0002"]


class BrokenAdapter(SpellAdapter):
    def learn(self, stack, data):
        raise DataError("the adapter cannot learn this", path="train.jsonl", fix="none: a test")


class BrokenSpell(SpellModality):
    """The toy modality with an adapter that always fails (in the spawned process, like a real error)."""

    strategies = {**SpellModality.strategies, "adapter": BrokenAdapter}


def test_a_failing_stack_does_not_stop_the_others_and_is_named(spell, tmp_path):  # noqa: F811
    register_modality("spell", BrokenSpell)  # the fixture restores the registry afterwards
    out = CliRunner().invoke(main, ["compare", str(spell), "--stacks", "base,adapter,retrieval", "--parallel", "2", "--quiet"])
    assert out.exit_code == 2, out.output
    error = [line for line in out.output.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "adapter failed: train.jsonl: the adapter cannot learn this" in error[0]
    assert "the 2 other run(s) finished" in error[0]
    (report,) = (tmp_path / "runs" / "spell" / "compare").glob("*/report.json")
    written = json.loads(report.read_text())
    assert [r["label"] for r in written["rows"]] == ["base", "retrieval"] and list(written["failed"]) == ["adapter"]
    assert "## Failed" in report.with_name("report.md").read_text()
    assert (tmp_path / "runs" / "spell--retrieval" / "v0001").is_dir()
    assert not list((tmp_path / "runs").glob("spell--adapter/v*"))
    assert protocols.MODALITIES["spell"].endswith(":BrokenSpell")


def test_a_grid_runs_in_parallel_and_advise_reads_its_labels(spell, tmp_path):  # noqa: F811
    args = ["compare", str(spell), "--stacks", "base,retrieval", "--grid", "inference.upper=false,true", "--parallel", "2", "--quiet"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "ranked by exact (higher is better)" in out.output
    (path,) = (tmp_path / "runs" / "spell" / "compare").glob("*/report.json")
    rows = read_report(path)["rows"]
    assert [(r["label"], r["stack"], r["settings"], r["exact"], r["rank"]) for r in rows] == [
        ("base", "base", {}, 0.0, 2),
        ("retrieval[upper=false]", "retrieval", {"inference.upper": False}, 0.5, 1),
        ("retrieval[upper=true]", "retrieval", {"inference.upper": True}, 0.0, 3),
    ]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "spell", "spell--base", "spell--retrieval--upperfalse", "spell--retrieval--uppertrue"
    ]
    advice = advise_recipe(load_recipe(spell), privacy="internal", latency_ms=1000, gpu_hours=1, release_cadence="quarterly")
    assert advice.recommended == "retrieval[upper=false]"
    assert set(advice.alternatives) == {"base", "retrieval[upper=true]"}


@pytest.mark.slow  # a 2x2 LoRA grid and one more run of a tiny model, each in its own process (~20 s on 2 shared cores)
def test_a_lora_grid_over_rank_and_learning_rate(tmp_path, tiny_lm, monkeypatch):
    """2 ranks x 2 learning rates through the CLI, two at a time: four ranked rows with CIs and ties; one of them
    again on its own, one process after another, gives the same figures (same seeds, same training)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rows = [{"question": f"What port does gateway {i} listen on?", "answer": "port 7443", "key_fact": "7443"} for i in range(8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text("".join(
        json.dumps({"question": f"Which port for gateway number {i}?", "answer": "port 7443", "key_fact": "7443"}) + "\n"
        for i in range(6)
    ))
    (tmp_path / "r.yaml").write_text(
        f"name: grid\nmodality: text\nbase_model: {tiny_lm}\ndata: {{train: train.jsonl, eval: eval.jsonl}}\n"
        "strategies: {adapter: {r: 4}}\ntrain: {steps: 4, batch_size: 4, warmup_steps: 1}\n"
        "eval: {metrics: [fact_accuracy, token_f1], latency_samples: 1, bootstrap: 200}\n"
        f"inference: {{max_new_tokens: 6}}\noutput_dir: {tmp_path / 'runs'}\n"
    )
    out = CliRunner().invoke(main, ["compare", str(tmp_path / "r.yaml"), "--stacks", "adapter", "--grid", "adapter.r=4,8",
                                    "--grid", "train.lr=1e-3,2e-3", "--parallel", "2", "--quiet"])
    assert out.exit_code == 0, out.output
    (path,) = (tmp_path / "runs" / "grid" / "compare").glob("*/report.json")
    report = json.loads(path.read_text())
    labels = ["adapter[r=4,lr=0.001]", "adapter[r=4,lr=0.002]", "adapter[r=8,lr=0.001]", "adapter[r=8,lr=0.002]"]
    assert [r["label"] for r in report["rows"]] == labels and {r["stack"] for r in report["rows"]} == {"adapter"}
    assert report["rows"][3]["settings"] == {"adapter.r": 8, "train.lr": 0.002}
    assert sorted(r["rank"] for r in report["rows"]) == [1, 2, 3, 4]
    best = min(report["rows"], key=lambda r: r["rank"])
    for row in report["rows"]:
        lo, hi = row["fact_accuracy_ci"]
        assert lo <= row["fact_accuracy"] <= hi
        assert row["tied"] == (hi >= best["fact_accuracy_ci"][0] and lo <= best["fact_accuracy_ci"][1])
    assert best["tied"] and all(row["fact_accuracy"] <= best["fact_accuracy"] for row in report["rows"])
    markdown = path.with_name("report.md").read_text()
    assert "## Ranked by fact_accuracy (higher is better)" in markdown and "| 1 | adapter[r=" in markdown
    manifests = {r["label"]: json.loads((tmp_path / "runs" / r["version"] / "manifest.json").read_text()) for r in report["rows"]}
    assert manifests[labels[1]]["recipe"]["strategies"]["adapter"]["r"] == 4 and manifests[labels[1]]["recipe"]["train"]["lr"] == 0.002

    again = compare(load_recipe(tmp_path / "r.yaml"), ["adapter"], grid={"adapter.r": [8], "train.lr": [2e-3]}, progress=False)
    (alone,) = again.rows
    assert alone["label"] == labels[3]
    for key in ("fact_accuracy", "fact_accuracy_ci", "token_f1", "token_f1_ci"):
        assert alone[key] == report["rows"][3][key]
    version = json.loads((tmp_path / "runs" / alone["version"] / "manifest.json").read_text())
    assert version["parts"]["adapter"]["final_loss"] == manifests[labels[3]]["parts"]["adapter"]["final_loss"]
