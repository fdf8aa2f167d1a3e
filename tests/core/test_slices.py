"""eval.slice_by: every metric per slice with its CI in run, compare, ab and eval; a bad field is one line.

The toy modality (tests/fixtures/toy_modality.py) needs no model: its adapter memorises the train
pairs, so it is exact on the eval words train holds (slice "seen") and wrong on the others ("unseen").
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import mmadapt
from mmadapt import protocols
from mmadapt.cli import main
from mmadapt.errors import RecipeError
from mmadapt.govern.ab import ab_test
from mmadapt.govern.suites import run_suite
from mmadapt.protocols import Example, register_modality
from tests.fixtures.toy_modality import SpellModality

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spell(tmp_path, monkeypatch):
    before = dict(protocols.MODALITIES)
    register_modality("spell", SpellModality)
    rng = random.Random(0)
    words = ["".join(rng.choice("bdklmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(40)]
    pairs = {w: w.capitalize() + "X" for w in words}
    train, held = words[:20], words[20:]
    rows = [{"word": w, "spelling": pairs[w], "group": "seen"} for w in train[:8]]
    rows += [{"word": w, "spelling": pairs[w], "group": "unseen"} for w in held[:6]]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"word": w, "spelling": pairs[w]}) + "\n" for w in train))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "spell.yaml"
    recipe.write_text(
        "name: spell\nmodality: spell\nbase_model: echo\ndata: {train: train.jsonl, eval: eval.jsonl}\n"
        f"strategies: {{adapter: {{}}}}\noutput_dir: {tmp_path / 'runs'}\n"
        "eval: {bootstrap: 200, latency_samples: 0, slice_by: group}\n"
    )
    (tmp_path / "suite.yaml").write_text("name: s\nmodality: spell\nsets: [eval.jsonl]\nbars: {exact: 0.1}\nslice_by: group\n")
    monkeypatch.chdir(tmp_path)
    yield recipe
    protocols.MODALITIES.clear()
    protocols.MODALITIES.update(before)
    protocols._loaded.pop("spell", None)


def test_run_reports_every_metric_per_slice_with_its_ci(spell):
    result = mmadapt.run(mmadapt.load_recipe(spell), progress=False)
    slices = json.loads((result.version_dir / "manifest.json").read_text())["slices"]
    assert slices["by"] == "group" and list(slices["groups"]) == ["seen", "unseen"]
    seen, unseen = slices["groups"]["seen"], slices["groups"]["unseen"]
    assert (seen["n"], seen["metrics"]["exact"], seen["ci95"]["exact"]) == (8, 1.0, [1.0, 1.0])
    assert (unseen["n"], unseen["metrics"]["exact"], unseen["ci95"]["exact"]) == (6, 0.0, [0.0, 0.0])
    assert set(seen["ci95"]) == {"exact", "edits"} and unseen["metrics"]["edits"] > 0
    assert result.metrics["exact"] == round(8 / 14, 4)  # the whole split is still reported
    lines = [json.loads(line) for line in (result.version_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["slice"] for r in lines] == ["seen"] * 8 + ["unseen"] * 6

    out = CliRunner().invoke(main, ["run", str(spell), "--quiet"])
    assert out.exit_code == 0, out.output
    assert "by slice (group)" in out.output and "unseen (n=6)" in out.output and "0.000 [0.00, 0.00]" in out.output


def test_a_field_the_eval_examples_lack_is_one_line_exit_2_before_anything_is_written(spell, tmp_path):
    out = CliRunner().invoke(main, ["run", str(spell), "--set", "eval.slice_by=gruop", "--quiet"])
    assert out.exit_code == 2
    errors = [line for line in out.output.splitlines() if "slice_by" in line]
    line = errors[0]
    assert len(errors) == 1 and line.startswith("error: ") and "eval.slice_by: 'gruop' is not a metadata field" in line and "did you mean 'group'" in line
    assert not (tmp_path / "runs").exists()
    with pytest.raises(RecipeError, match="is a list, not one value"):
        (tmp_path / "eval.jsonl").write_text(json.dumps({"word": "a", "spelling": "A", "group": ["x"]}) + "\n")
        mmadapt.run(mmadapt.load_recipe(spell), progress=False)


def test_compare_ab_and_eval_report_each_slice(spell):
    recipe = mmadapt.load_recipe(spell)
    result = mmadapt.compare(recipe, ["adapter"], progress=False)  # one spawned run: the slow part of this test
    report = json.loads((result.report_dir / "report.json").read_text())
    by_stack = {row["stack"]: row["slices"]["groups"] for row in report["rows"]}
    assert by_stack["adapter"]["seen"]["metrics"]["exact"] == 1.0
    assert by_stack["adapter"]["unseen"]["ci95"]["exact"] == [0.0, 0.0]
    md = (result.report_dir / "report.md").read_text()
    assert "## By slice (group)" in md and "| adapter | unseen (n=6) | 0.000 [0.00, 0.00]" in md

    mmadapt.run(recipe.with_stack([]), progress=False)  # v0001 of "spell": the base; v0002: the adapter
    mmadapt.run(recipe, progress=False)
    ab = ab_test(recipe, "v0001", "v0002", resamples=200)
    seen = {d.metric: d for d in ab.slices["seen"]}
    unseen = {d.metric: d for d in ab.slices["unseen"]}
    assert ab.slice_by == "group" and seen["exact"].n == 8 and seen["exact"].verdict == "better"
    assert unseen["exact"].diff == 0.0 and unseen["exact"].verdict == "no evidence"
    out = CliRunner().invoke(main, ["ab", str(spell), "--a", "v0001", "--b", "v0002", "--quiet", "--resamples", "200"])
    assert out.exit_code == 0 and "by slice (group)" in out.output, out.output

    suite = run_suite(spell.parent / "suite.yaml", [str(spell)], progress=False)
    groups = suite.to_dict()["targets"][0]["sets"][0]["slices"]["groups"]
    assert groups["seen"]["metrics"]["exact"] == 1.0 and groups["unseen"]["n"] == 6
    out = CliRunner().invoke(main, ["eval", str(spell.parent / "suite.yaml"), str(spell), "--quiet"])
    assert out.exit_code == 0 and "eval.jsonl by slice (group)" in out.output, out.output


def test_speech_derives_terms_seen_from_the_train_transcripts():
    from mmadapt.modalities.speech.data import terms_seen

    train = [Example("t1", "a.wav", "Restart the Pellatron after the QPX-9 update.")]
    evaluation = [Example("e1", "b.wav", "x", {"terms": ["Pellatron", "qpx 9"]}),
                  Example("e2", "c.wav", "x", {"terms": ["Pellatron", "frizzet"]}),
                  Example("e3", "d.wav", "x", {"terms": []})]
    assert terms_seen(train, evaluation) == ["seen", "unseen", "no terms"]


def test_image_derives_prompt_seen_from_the_reference_captions():
    from mmadapt.protocols import DataBundle, get_modality

    data = DataBundle([Example("r1", "two circles in a row, stripes, zentrix style")],
                      [Example("p1", "Two  circles in a row"), Example("p2", "one star at the top")])
    assert get_modality("image").derived_slices(data) == {"prompt_seen": ["seen", "unseen"]}


def test_the_shipped_zentrix_eval_split_holds_the_unseen_facts_and_its_checker_passes():
    rows = [json.loads(line) for line in (ROOT / "datasets/zentrix-support/eval.jsonl").read_text().splitlines()]
    unseen = [r for r in rows if r["slice"] == "unseen"]
    suite_set = [json.loads(line) for line in (ROOT / "eval/zentrix-unseen-facts.jsonl").read_text().splitlines()]
    assert len(unseen) >= 20 and [r["question"] for r in unseen] == [r["question"] for r in suite_set]
    train = (ROOT / "datasets/zentrix-support/train.jsonl").read_text().lower()
    assert all(r["key_fact"].lower() not in train for r in unseen)
    check = subprocess.run([sys.executable, str(ROOT / "datasets/zentrix-support/check.py")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
