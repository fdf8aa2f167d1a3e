"""Every shipped text recipe that trains (LoRA, prompt tuning, full, hybrid) runs through the real
CLI on the embedded SmolLM2 — shortened with --set so CI can afford it — and its artifact reloads
into the answers the run recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import mmadapt
from mmadapt.cli import main
from mmadapt.engine.artifact import read_manifest, versions

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
SHORT = [
    "--set", "train.steps=3", "--set", "train.warmup_steps=1", "--set", "train.checkpoint_every=2", "--set", "train.micro_batch_size=2",
    "--set", "eval.limit=3", "--set", "eval.bootstrap=0", "--set", "eval.latency_samples=1",
    "--set", "inference.max_new_tokens=12", "--quiet", "--show", "0",
]  # fmt: skip


@pytest.mark.parametrize(
    "recipe, trained_part",
    [("lora.yaml", "adapter"), ("prompt-tuning.yaml", "adapter"), ("full.yaml", "full"), ("hybrid.yaml", "adapter")],
)
def test_shipped_training_recipe_runs_and_reloads(recipe, trained_part, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = ROOT / "recipes" / "text" / recipe
    result = CliRunner().invoke(main, ["run", str(path), "--set", f"output_dir={tmp_path}", *SHORT])
    assert result.exit_code == 0, result.output
    name = mmadapt.load_recipe(path).name
    (version_name,) = versions(tmp_path / name)
    version = tmp_path / name / version_name
    manifest = read_manifest(version)
    part = manifest["parts"][trained_part]
    assert part["steps"] == 3 and part["trainable_params"] > 0 and part["final_loss"] > 0
    assert not list(version.rglob("*.bin")) and list(version.rglob("*.safetensors"))
    if trained_part == "adapter":  # an adapter is a small fraction of the 135 M-parameter base
        assert part["bytes"] < 0.05 * 4 * manifest["base_model"]["parameters"]
    rows = [json.loads(line) for line in (version / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    again = mmadapt.load_artifact(version).predictor.predict([r["question"] for r in rows])
    assert [p.output for p in again] == [r["answer"] for r in rows]
