"""Text adapters as artifacts: a LoRA and a prompt-tuning run on the tiny model reload in a *new*
process and give the same greedy answers; ``mmadapt export --merge`` folds the LoRA into plain
weights that answer the same again, and refuses prompt tuning with one line and no folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each case starts fresh python processes (torch import ~5 s)

ASK = """
import json, sys
import mmadapt
loaded = mmadapt.load_artifact(sys.argv[1])
print(json.dumps([p.output for p in loaded.predictor.predict(json.loads(sys.argv[2]))]))
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmadapt.cli", *args], capture_output=True, text=True, timeout=600)


def _train(make_recipe, write_recipe, lm: Path, out: Path, name: str, strategies: dict) -> tuple[Path, dict]:
    raw = make_recipe(
        base_model=str(lm),
        name=name,
        output_dir=str(out),
        strategies=strategies,
        train={"steps": 8, "lr": 5.0e-2, "batch_size": 3, "warmup_steps": 0, "seed": 3, "checkpoint_every": 4},
        eval={"metrics": ["token_f1"], "bootstrap": 0, "latency_samples": 1},
        inference={"max_new_tokens": 6, "batch_size": 2},
    )
    proc = _cli("run", str(write_recipe(raw, name=f"{name}.yaml")), "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]  # peft's known-harmless notices stay out (models/quiet.py)
    manifest = json.loads(proc.stdout[proc.stdout.index("{") :])
    version = out / name / manifest["version"]
    return version, manifest


def _answers(version: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in (version / "predictions.jsonl").read_text().splitlines()]
    return [r["question"] for r in rows], [r["answer"] for r in rows]


def _in_new_process(version: Path, questions: list[str]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", ASK, str(version), json.dumps(questions)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


PROMPT = {"system": "Answer briefly."}


def test_lora_reloads_in_a_new_process_and_exports_merged(make_recipe, write_recipe, talkative_lm, tmp_path):
    base, _ = _train(make_recipe, write_recipe, talkative_lm, tmp_path / "runs", "tiny-base", {"prompt": PROMPT})
    lora, manifest = _train(
        make_recipe,
        write_recipe,
        talkative_lm,
        tmp_path / "runs",
        "tiny-lora",
        {"prompt": PROMPT, "adapter": {"method": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear"}},
    )
    part = manifest["parts"]["adapter"]
    assert part["trainable_params"] > 0 and part["steps"] == 8
    assert (lora / "adapter" / "adapter" / "adapter_model.safetensors").is_file()
    questions, answers = _answers(lora)
    assert answers != _answers(base)[1]  # the trained LoRA changed what the model says
    assert _in_new_process(lora, questions) == answers

    out = tmp_path / "serving" / "tiny-lora"
    proc = _cli("export", str(lora), str(out), "--merge")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((out / "mmadapt" / "export.json").read_text())
    assert info["merged"] == ["lora (default)"] and info["copied"] == ["prompt"]
    assert info["recipe_hash"] == manifest["recipe_hash"]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.parent.glob(".*tmp*"))
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    # the merged folder is a plain base model: under the same prompt it answers as the LoRA did
    served, _ = _train(make_recipe, write_recipe, out, tmp_path / "runs", "tiny-served", {"prompt": PROMPT})
    assert _answers(served)[1] == answers


def test_prompt_tuning_reloads_in_a_new_process_and_refuses_merge(make_recipe, write_recipe, talkative_lm, tmp_path):
    version, manifest = _train(
        make_recipe,
        write_recipe,
        talkative_lm,
        tmp_path / "runs",
        "tiny-pt",
        {"prompt": PROMPT, "adapter": {"method": "prompt_tuning", "num_virtual_tokens": 4}},
    )
    assert 0 < manifest["parts"]["adapter"]["trainable_params"] < 1000  # 4 virtual tokens x hidden size
    questions, answers = _answers(version)
    assert _in_new_process(version, questions) == answers

    out = tmp_path / "serving" / "tiny-pt"
    proc = _cli("export", str(version), str(out), "--merge")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot be merged" in errors[0] and "Traceback" not in proc.stderr
    assert not out.exists() and not list((tmp_path / "serving").glob(".*"))
    # without --merge the parts are copied as they are (a peft folder a serving stack with peft loads)
    proc = _cli("export", str(version), str(out), "--no-merge")
    assert proc.returncode == 0, proc.stderr
    assert (out / "mmadapt" / "adapter" / "adapter" / "adapter_model.safetensors").is_file()
