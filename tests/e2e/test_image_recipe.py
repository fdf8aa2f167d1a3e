"""The shipped brand-style recipe through the real CLI on the embedded shapes models: the brand LoRA
and the full fine-tune (the recipe's compare settings) are more on-brand than the base model on
the same prompts and seeds, by palette and by CLIP-I, and still draw what was asked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.engine.artifact import versions
from mmadapt.engine.stats import paired_bootstrap

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "image" / "brand-style.yaml"
FAST = ["--set", "eval.bootstrap=50", "--set", "eval.latency_samples=1", "--quiet"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as `mmadapt compare` runs each stack: on shared cores more threads only spin."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _run(out: Path, *overrides: str) -> list[dict]:
    result = CliRunner().invoke(main, ["run", str(RECIPE), "--set", f"output_dir={out}", *FAST, *overrides])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    version = out / "image-brand-style" / versions(out / "image-brand-style")[-1]
    assert (version / "samples" / "contact_sheet.png").is_file()
    return [json.loads(line) for line in (version / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def base_predictions(tmp_path_factory):
    here = os.getcwd()
    os.chdir(ROOT)  # the recipe's data paths are relative to the repository
    try:
        return _run(tmp_path_factory.mktemp("base"), "--set", "strategies={}")
    finally:
        os.chdir(here)


@pytest.mark.parametrize("strategy", ["adapter", "full"])
def test_brand_tuning_is_more_on_brand_than_the_base(strategy, base_predictions, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = yaml.safe_load(RECIPE.read_text())["compare"]["strategies"][strategy]
    tuned = _run(tmp_path / strategy, f"--set=strategies={json.dumps({strategy: config})}")
    base = base_predictions
    assert [r["id"] for r in base] == [r["id"] for r in tuned] and len(base) == 48
    for metric in ("palette_adherence", "clip_i"):  # closer to the brand, prompt by prompt
        diff = paired_bootstrap([r[metric] for r in base], [r[metric] for r in tuned])
        assert diff["ci_low"] > 0, (metric, diff)
    clip_t = np.mean([r["clip_t"] for r in tuned]) / np.mean([r["clip_t"] for r in base])
    assert clip_t > 0.85, clip_t  # and still what the prompt asked for (measured: full 0.95; the whole LoRA
    # 0.876 at the recipe's scale 0.8, 0.850 at 0.9)
