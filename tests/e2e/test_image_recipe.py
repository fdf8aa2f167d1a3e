"""The shipped brand-style recipe through the real CLI on the embedded shapes models: the brand LoRA
(the recipe's compare settings) is more on-brand than the base model on the same prompts
and seeds, and still draws what was asked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.core.artifact import versions
from mmadapt.core.stats import paired_bootstrap

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


def test_brand_lora_is_more_on_brand_than_the_base(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    adapter = yaml.safe_load(RECIPE.read_text())["compare"]["strategies"]["adapter"]
    base = _run(tmp_path / "base", "--set", "strategies={}")
    lora = _run(
        tmp_path / "lora", f"--set=strategies={json.dumps({'adapter': adapter})}"
    )  # 600 steps: fewer (400) do not move CLIP-I
    assert [r["id"] for r in base] == [r["id"] for r in lora] and len(base) == 16
    clip_i = paired_bootstrap([r["clip_i"] for r in base], [r["clip_i"] for r in lora])
    assert clip_i["ci_low"] > 0, clip_i  # closer to the brand references, prompt by prompt
    clip_t = np.mean([r["clip_t"] for r in lora]) / np.mean([r["clip_t"] for r in base])
    assert clip_t > 0.9, clip_t  # and still what the prompt asked for
