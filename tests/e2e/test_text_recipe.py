"""The shipped Zentrix recipe through the real CLI on the embedded SmolLM2, and a run killed with
SIGKILL mid-way through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.engine.artifact import read_manifest, versions

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "text" / "zentrix-support.yaml"
FAST = ["--set", "eval.bootstrap=0", "--set", "eval.latency_samples=1", "--quiet", "--show", "0"]


def _run(recipe: Path, out: Path) -> Path:
    result = CliRunner().invoke(main, ["run", str(recipe), "--set", f"output_dir={out}", *FAST])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    found = versions(out / "zentrix-support")
    assert found == ["v0001"]
    version = out / "zentrix-support" / found[0]
    assert (version / "manifest.json").is_file() and (version / "predictions.jsonl").is_file()
    return version


def test_zentrix_retrieval_beats_prompt_only_on_seen_and_unseen_facts(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with_retrieval = _run(RECIPE, tmp_path / "rag")
    manifest = read_manifest(with_retrieval)
    assert manifest["stack"] == ["prompt", "retrieval"]
    assert (with_retrieval / "retrieval" / "index" / "vectors.safetensors").is_file()

    raw = yaml.safe_load(RECIPE.read_text())
    raw.pop("strategies")
    raw["strategies"] = {"prompt": yaml.safe_load(RECIPE.read_text())["strategies"]["prompt"]}
    raw["data"] = {k: str((ROOT / v).resolve()) for k, v in raw["data"].items()}
    prompt_only_recipe = tmp_path / "prompt-only.yaml"
    prompt_only_recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    prompt_only = _run(prompt_only_recipe, tmp_path / "prompt")
    assert read_manifest(prompt_only)["stack"] == ["prompt"]
    assert read_manifest(prompt_only)["data"]["fingerprint"] == manifest["data"]["fingerprint"]

    # the recipe slices its eval split (eval.slice_by: slice): facts train states, reworded (seen), and
    # knowledge-base facts no train line states (unseen, 22). Retrieval must win on both.
    def fact(m, part):
        return m["slices"]["groups"][part]["metrics"]["fact_accuracy"]

    plain_manifest = read_manifest(prompt_only)
    rag, plain = fact(manifest, "seen"), fact(plain_manifest, "seen")
    rag_unseen, plain_unseen = fact(manifest, "unseen"), fact(plain_manifest, "unseen")
    print(f"fact_accuracy seen/unseen: prompt+retrieval {rag:.3f}/{rag_unseen:.3f}, prompt only {plain:.3f}/{plain_unseen:.3f}")
    assert manifest["slices"]["groups"]["unseen"]["n"] == 22
    assert rag >= plain + 0.40, (rag, plain)
    assert rag_unseen >= plain_unseen + 0.25, (rag_unseen, plain_unseen)  # measured 8 of 22 against 0 of 22


# ---------------------------------------------------------------- SIGKILL through the real CLI

MMADAPT = str(Path(sys.executable).parent / "mmadapt")


def _tiny_recipe(tmp_path: Path, tiny_lm: Path, make_recipe, n_eval: int) -> Path:
    data = tmp_path / "data"
    with open(data / "eval.jsonl", "w") as handle:
        for i in range(n_eval):
            handle.write(json.dumps({"id": f"e{i}", "question": f"Question {i}: which port?", "answer": "7443", "key_fact": "7443"}) + "\n")
    raw = make_recipe(
        base_model=str(tiny_lm),
        output_dir=str(tmp_path / "runs"),
        strategies={"prompt": {"few_shot": 1}},
        eval={"bootstrap": 0, "latency_samples": 1},
        inference={"max_new_tokens": 48, "batch_size": 4},
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([MMADAPT, *args], capture_output=True, text=True, env=env, timeout=600, **kwargs)


def test_sigkill_mid_run_then_rollback(tmp_path, tiny_lm, make_recipe, text_data):
    recipe = _tiny_recipe(tmp_path, tiny_lm, make_recipe, n_eval=2)
    rdir = tmp_path / "runs" / "tiny-text"
    for steps in (1, 2):
        done = _cli("run", str(recipe), "--quiet", "--set", f"train.steps={steps}")
        assert done.returncode == 0, done.stderr
    assert versions(rdir) == ["v0001", "v0002"]

    slow = _tiny_recipe(tmp_path, tiny_lm, make_recipe, n_eval=400)  # long enough to be killed mid-evaluation
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([MMADAPT, "run", str(slow), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 300
        partial = []
        while time.monotonic() < deadline and proc.poll() is None:
            partial = list(rdir.glob(f".tmp-*-{proc.pid}-*/prompt/prompt.json"))
            if partial:
                break
            time.sleep(0.05)
        assert partial, "the third run never started writing its artifact"
        time.sleep(0.5)
        assert proc.poll() is None, "the third run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert versions(rdir) == ["v0001", "v0002"]
    listed = _cli("registry", "list", str(recipe))
    assert listed.returncode == 0, listed.stderr
    assert "v0001" in listed.stdout and "v0002" in listed.stdout and "v0003" not in listed.stdout
    rolled = _cli("registry", "rollback", str(recipe), "--reason", "v0002 regressed")
    assert rolled.returncode == 0 and rolled.stdout.strip() == "current: v0001", rolled.stderr
    asked = _cli("ask", str(rdir / "v0001"), "Which port?")
    assert asked.returncode == 0 and asked.stdout.startswith("Q: Which port?"), asked.stderr
    oldest = _cli("registry", "rollback", str(recipe))
    assert oldest.returncode == 2 and "oldest version" in oldest.stderr and "Traceback" not in oldest.stderr
    # the next run clears the dead run's temporary folder and takes the next number
    again = _cli("run", str(recipe), "--quiet", "--set", "train.steps=3")
    assert again.returncode == 0, again.stderr
    assert versions(rdir) == ["v0001", "v0002", "v0003"] and not list(rdir.glob(".tmp-*"))
