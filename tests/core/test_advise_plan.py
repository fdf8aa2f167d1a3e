"""advise with plan's predictions for a model not run yet (--model / --gpus / --gpu-memory): what fits is
excluded or priced (rules F1, F2), predicted rows are labelled apart from measured ones, and measured rows
stay. Configs are built in (llama-3-*) or written to tmp_path; nothing is downloaded or loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.govern.advise import Constraints, advise
from mmadapt.govern.advise_evidence import predict_costs
from mmadapt.govern.plan import KNOWN

ROOT = Path(__file__).resolve().parents[2]
MUCH = dict(examples=20000, privacy="public", latency_ms=2000, gpu_hours=100, release_cadence="quarterly")
CALM = ["--privacy", "internal", "--latency-ms", "2000", "--gpu-hours", "10", "--release-cadence", "quarterly"]


def _fired(advice, rule):
    return [r for r in advice.reasons if r.rule == rule]


def _verdicts(advice):
    """setup's method -> fits, of the predicted rows."""
    return {r["setup"].split(",")[0]: r["fits"] for r in advice.costs if r["source"] == "predicted (plan)"}


@pytest.fixture
def llama_8b_config(tmp_path) -> Path:
    """Llama-3 8B's config.json, written out (a small file; no weights)."""
    path = tmp_path / "llama-8b" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"model_type": "llama", **KNOWN["llama-3-8b"]}))
    return path


def test_a_70b_on_one_80gb_gpu_full_does_not_fit_qlora_does():
    advice = advise(Constraints(**MUCH), predicted=predict_costs("llama-3-70b", gpus=1, gpu_memory="80GiB"))
    assert advice.excluded == {"prompt+full": ["F1"]}
    (f1,) = _fired(advice, "F1")
    assert "full fine-tuning of llama-3-70b (70.6 B) fits no setup on 1 x 80GiB" in f1.text
    # checkpointing does not lower full fine-tuning's peak (weights + gradients + AdamW moments set it);
    # under a bf16 base the masters stay fp32 (mixed precision), so the leanest full setup is fp32's 16 bytes a weight
    assert f1.sources[0].startswith("predicted:plan:llama-3-70b[full, fp32].peak_gib=")
    assert "constraint:gpu-memory=80GiB" in f1.sources
    (f2,) = _fired(advice, "F2")
    assert f2.stacks == ["prompt+adapter", "prompt+retrieval+adapter"]
    assert "fits on 1 x 80GiB as qlora-4bit" in f2.text and "; lora fits no setup (" in f2.text
    # bf16 weights alone are 141 GB: plain LoRA cannot fit one 80 GiB device, 4-bit QLoRA can
    assert _verdicts(advice) == {"lora r8": "no", "qlora-4bit": "yes", "full": "no"}
    for row in advice.costs:
        assert (row["fits"] == "yes") == (row["peak GiB/device"] <= 80)
    assert advice.plan == {"model": "llama-3-70b", "params_b": pytest.approx(70.55, abs=0.01), "gpus": 1,
                           "gpu_memory": "80GiB", "steps": 200}


def test_on_eight_gpus_fsdp_makes_full_fine_tuning_of_an_8b_fit():
    # (a 70 B is 18 bytes a weight in mixed precision: 159 GB a device even sharded by 8 — F1)
    advice = advise(Constraints(**MUCH), predicted=predict_costs("llama-3-8b", gpus=8, gpu_memory="80GiB"))
    assert advice.excluded == {} and not _fired(advice, "F1")
    by_stack = {tuple(r.stacks): r.text for r in _fired(advice, "F2")}
    assert "as full, bf16, fsdp x8" in by_stack[("prompt+full",)]
    rows = {r["setup"]: r for r in advice.costs}
    assert rows["full, fp32, ddp x8"]["fits"] == "no" and rows["full, bf16, fsdp x8"]["fits"] == "yes"
    # the step order is relative to the fastest setup that fits: 1.0x once, full slower than the adapter
    orders = [float(r["step order"].rstrip("x")) for r in advice.costs if r["fits"] == "yes"]
    assert min(orders) == 1.0 and float(rows["full, bf16, fsdp x8"]["step order"].rstrip("x")) > 1.0


def test_a_recipe_priced_on_a_24gb_gpu_says_which_keys_make_it_fit(make_recipe, write_recipe, llama_8b_config):
    raw = make_recipe(base_model=str(llama_8b_config.parent))
    raw["strategies"]["adapter"] = {"r": 4}
    recipe = write_recipe(raw)
    out = CliRunner().invoke(main, ["advise", str(recipe), *CALM, "--gpu-memory", "24GB", "--set", f"output_dir={recipe.parent / 'runs'}"])
    assert out.exit_code == 0, out.output
    assert "not advised: prompt+full (F1)" in out.output  # 8 B x 8 bytes (bf16 weights, grads, AdamW) > 24 GB
    assert "predicted:   " + str(llama_8b_config.parent) + " (8.03 B parameters) on 1 x 24GB" in out.output
    costs = out.output.split("compute costs")[1].split("\nreasons")[0]
    assert "lora r4" in costs and "predicted (plan)" in costs and "measured" not in costs
    f2 = next(line for line in out.output.splitlines() if line.startswith("  F2 (prompt+adapter"))
    # the recipe's fp32 base does not fit 24 GB; LoRA at r4 on a bf16 base with checkpointing does, and beats QLoRA's step
    assert "fits on 1 x 24GB as lora r4, bf16, checkpointing:" in f2 and "; set model.dtype=bf16, train.gradient_checkpointing=true" in f2


def test_measured_rows_stay_beside_the_predicted_ones(llama_8b_config):
    report = ["advise", "--examples", "2000", *CALM, "--knowledge-changes", "rarely", "--report", str(ROOT / "docs/advise/overlap.json")]
    plain = CliRunner().invoke(main, report)
    priced = CliRunner().invoke(main, [*report, "--model", str(llama_8b_config), "--gpu-memory", "80GiB"])
    assert plain.exit_code == 0 and priced.exit_code == 0, priced.output
    assert "compute costs" not in plain.output  # without --model the output is what it always was
    first = plain.output.split("\nreasons")[0].strip()
    assert priced.output.startswith(first)  # the same order, the same measured report
    costs = priced.output.split("compute costs")[1].split("\nreasons")[0]
    assert "measured (overlap.json)" in costs and "predicted (plan)" in costs and "612.4" in costs
    assert "measured:overlap.json:prompt+adapter.train_seconds=612.4" in priced.output  # M1's measured source
    data = json.loads(CliRunner().invoke(main, [*report, "--model", str(llama_8b_config), "--json"]).stdout)
    assert {r["source"] for r in data["costs"]} == {"predicted (plan)", "measured (overlap.json)"}
    assert data["plan"]["gpus"] == 1 and data["plan"]["gpu_memory"] == "80GiB"


@pytest.mark.parametrize("extra,message", [
    (["--model", "llama-3-8b", "--gpu-memory", "lots"], "--gpu-memory 'lots' is not a size"),
    (["--model", "{tmp}/missing/config.json"], "missing/config.json"),
    (["--model", "{tmp}/whisper.json"], "the model config lacks a decoder's shape"),
    (["--gpus", "2"], "--gpus and --gpu-memory price a model"),
])
def test_bad_input_is_one_line_and_exit_2(extra, message, tmp_path):
    (tmp_path / "whisper.json").write_text(json.dumps({"model_type": "whisper", "d_model": 384}))
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    out = CliRunner().invoke(main, ["advise", "--examples", "500", *CALM, *extra])
    assert out.exit_code == 2, out.output
    assert message in out.output and len(out.output.strip().splitlines()) == 1
