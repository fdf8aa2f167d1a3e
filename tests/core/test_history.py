"""mmadapt report: a recipe's history as Markdown, HTML and a PNG plot."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from mmadapt.cli import main
from mmadapt.engine.artifact import ArtifactWriter
from mmadapt.errors import ArtifactError
from mmadapt.govern import registry
from mmadapt.govern.history import history, write_history
from mmadapt.recipe import load_recipe

BARS = {"fact_accuracy": 0.7}


def _commit(out, stack, fact, ci):
    with ArtifactWriter(out, "hist") as writer:
        for part in stack:
            (writer.part_dir(part) / "part.json").write_text("{}")
        return writer.commit({
            "name": "hist", "created": "2026-11-22T10:00:00+00:00", "stack": stack,
            "recipe": {"name": "hist", "eval": {"min": BARS}},
            "metrics": {"fact_accuracy": fact, "token_f1": fact / 2}, "ci95": {"fact_accuracy": ci, "token_f1": [0, 1]},
            "costs": {"train_seconds": 12.5 * len(stack), "artifact_bytes": 2048 * len(stack), "latency_p50_ms": 40.0},
            "recipe_hash": "c" * 64, "data": {"fingerprint": "d" * 64},
        }).name


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("MMADAPT_USER", "margaret")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"question": "q?", "answer": "a", "key_fact": "a"}) + "\n")
    path = tmp_path / "hist.yaml"
    path.write_text(
        "name: hist\nmodality: text\nbase_model: /nonexistent\ndata: {eval: eval.jsonl}\nstrategies: {}\n"
        f"eval: {{min: {json.dumps(BARS)}}}\noutput_dir: {tmp_path / 'runs'}\n"
    )
    out = tmp_path / "runs"
    _commit(out, ["prompt"], 0.40, [0.30, 0.50])
    _commit(out, ["prompt", "retrieval"], 0.75, [0.62, 0.86])
    _commit(out, ["prompt", "adapter"], 0.81, [0.70, 0.90])
    parsed = load_recipe(path)
    rdir = out / "hist"
    registry.promote(rdir, "v0002", parsed, reason="meets the bar")
    with pytest.raises(registry.PromotionError):
        registry.promote(rdir, "v0001", parsed, reason="<script>alert(1)</script>")
    registry.promote(rdir, "v0003", parsed, reason="adapter")
    registry.rollback(rdir, "v0002", reason="adapter hallucinates prices | ticket 42")
    return parsed


def test_history_rows_carry_marks_bars_and_audit(recipe):
    h = history(recipe)
    assert h.primary_metric == "fact_accuracy" and h.metrics == ["fact_accuracy", "token_f1"]
    assert [(r["version"], r["stack"], r["marks"], r["meets_bars"]) for r in h.rows] == [
        ("v0001", "prompt", [], False),
        ("v0002", "prompt+retrieval", ["current", "promoted"], True),
        ("v0003", "prompt+adapter", ["promoted"], True),
    ]
    assert h.rows[0]["bars_missed"] == ["fact_accuracy 0.40 < 0.70"]
    assert [e["what"] for e in h.audit] == ["run", "run", "run", "promote", "refused-promote", "promote", "rollback"]


def test_report_files(recipe, tmp_path):
    paths = write_history(recipe, tmp_path / "out")
    md = paths["md"].read_text()
    assert "| v0002 | current, promoted | 2026-11-22T10:00:00+00:00 | prompt+retrieval | 0.750 [0.62, 0.86]" in md
    assert "fact_accuracy 0.40 < 0.70" in md and "margaret" in md
    assert "adapter hallucinates prices \\| ticket 42 |" in md  # a pipe in a reason does not break the table
    assert "![fact_accuracy per version](history.png)" in md
    html = paths["html"].read_text()
    assert html.startswith("<!doctype html>") and "<img src='history.png'" in html
    assert "&lt;script&gt;" in html and "<script>" not in html  # audit text is escaped
    with Image.open(paths["png"]) as image:
        assert image.format == "PNG" and image.size[0] >= 500 and image.size[1] >= 400


def test_cli_report_writes_next_to_the_runs(recipe):
    out = CliRunner().invoke(main, ["report", recipe.source])
    assert out.exit_code == 0, out.output
    folder = registry.recipe_dir(recipe.output_dir, recipe.name) / "history"
    assert f"md: {folder / 'report.md'}" in out.stdout
    assert {p.name for p in folder.iterdir()} == {"report.md", "report.html", "history.png"}


def test_no_versions_is_one_line_exit_2(tmp_path):
    (tmp_path / "eval.jsonl").write_text(json.dumps({"question": "q?", "answer": "a"}) + "\n")
    path = tmp_path / "empty.yaml"
    path.write_text(f"name: empty\nmodality: text\nbase_model: x\ndata: {{eval: eval.jsonl}}\nstrategies: {{}}\noutput_dir: {tmp_path}\n")
    with pytest.raises(ArtifactError, match="no versions yet"):
        history(load_recipe(path))
    out = CliRunner().invoke(main, ["report", str(path)])
    assert out.exit_code == 2 and "run the recipe first" in out.output
