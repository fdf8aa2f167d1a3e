"""SIGKILL a real ``python -m mmadapt.cli run`` (tiny LM, prompt + LoRA stack) at seeded random points,
during training and during artifact writing. After every kill the registry is consistent (only complete
versions, ``current`` names a complete one, ``list_versions`` works), the previous version still loads
and predicts, and a final ``--resume`` run finishes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mmadapt.engine.artifact import MANIFEST, versions
from mmadapt.engine.runner import load_artifact
from mmadapt.govern.registry import current_version, list_versions
from mmadapt.recipe import load_recipe

pytestmark = pytest.mark.slow

SEED = 20261122
STEPS = 60
KILLS = 10
TRAIN = [
    {"id": f"t{i}", "question": q, "answer": a}
    for i, (q, a) in enumerate(
        [
            ("What port does the gateway listen on?", "Port 7443."),
            ("How much does the Pro plan cost?", "$149 a month."),
            ("Who makes Zentrix?", "Zentrix Labs."),
            ("What is the default timeout?", "850 ms."),
        ]
    )
]
EVAL = [{"id": "e1", "question": "Which port is the gateway on?", "answer": "7443"}]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    return env


def _spawn(recipe: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mmadapt.cli", "run", str(recipe), "--quiet", *args],
        cwd=recipe.parent, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """Poll every 10 ms until ``ready()`` or the process exits; True when ready while it still runs."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.01)
    raise AssertionError("the run never reached the kill point")


def _written_since(path: Path, since_ns: int) -> bool:
    try:
        return path.stat().st_mtime_ns > since_ns
    except FileNotFoundError:  # absent, or between the checkpoint's two renames
        return False


def _check_registry(rdir: Path, before: list[str]) -> list[str]:
    """Only complete versions, the old ones untouched, current names a complete one."""
    found = versions(rdir)
    assert found[: len(before)] == before, (before, found)
    rows = list_versions(rdir)
    assert [r["version"] for r in rows] == found
    for name in found:
        manifest = json.loads((rdir / name / MANIFEST).read_text())
        assert manifest["version"] == name and (rdir / name / "adapter" / "adapter" / "adapter_model.safetensors").is_file()
    for entry in rdir.iterdir():  # a version-looking folder without a manifest is never listed
        if entry.name.startswith("v") and entry.name not in found:
            assert not (entry / MANIFEST).exists()
    current = current_version(rdir)
    assert current in found and sum(r["current"] for r in rows) == 1
    return found


def test_sigkill_at_random_points_never_corrupts_the_registry(tmp_path, tiny_lm):
    for name, rows in (("train.jsonl", TRAIN), ("eval.jsonl", EVAL)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "kill.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "kill", "modality": "text", "base_model": str(tiny_lm),
        "data": {"train": "train.jsonl", "eval": "eval.jsonl"},
        "strategies": {"prompt": {"system": "Answer briefly."}, "adapter": {"method": "lora", "r": 4}},
        "train": {"steps": STEPS, "batch_size": 2, "checkpoint_every": 1, "warmup_steps": 0, "seed": 0},
        "inference": {"max_new_tokens": 4}, "output_dir": "runs",
    }))
    rdir = tmp_path / "runs" / "kill"
    state = tmp_path / "runs" / "kill" / ".work" / load_recipe(recipe).hash()[:16] / "adapter" / "checkpoint" / "state.json"

    first = _spawn(recipe, "--set", "train.steps=2")  # the previous version every kill must leave intact
    assert first.wait(timeout=300) == 0, first.stderr.read()
    known = _check_registry(rdir, [])
    assert known == ["v0001"]

    rng = random.Random(SEED)
    kills: list[tuple[str, float, int]] = []
    attempts = 0
    while len(kills) < KILLS:
        attempts += 1
        assert attempts <= KILLS + 6, f"only {len(kills)} kills landed in {attempts - 1} runs"
        phase = "training" if len(kills) < 6 else "writing"
        step_before = json.loads(state.read_text())["step"] if state.is_file() else 0
        if phase == "training" and step_before >= STEPS - 10:
            phase = "writing"
        started = time.time_ns()
        proc = _spawn(recipe, "--resume")
        try:
            if phase == "training":  # a checkpoint written by this process: its training loop is running
                ready = _wait_for(proc, lambda since=started: _written_since(state, since))
                delay = rng.uniform(0.0, 0.5)
            else:  # the adapter part is in the temporary version folder: evaluation, manifest, rename
                ready = _wait_for(proc, lambda: any(rdir.glob(".tmp-*/adapter/adapter/adapter_model.safetensors")))
                delay = rng.uniform(0.0, 0.3)
            if ready:
                time.sleep(delay)
                os.kill(proc.pid, signal.SIGKILL)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code == -signal.SIGKILL:
            kills.append((phase, round(delay, 3), json.loads(state.read_text())["step"] if state.is_file() else 0))
        else:
            assert code == 0, proc.stderr.read()
        now = _check_registry(rdir, known)
        previous = load_artifact(rdir / known[-1])  # the version before this run still loads and predicts
        answer = previous.predictor.predict(["Which port is the gateway on?"])[0].output
        assert isinstance(answer, str)
        known = now
    assert {p for p, _, _ in kills} == {"training", "writing"}, kills

    final = _spawn(recipe, "--resume")
    assert final.wait(timeout=300) == 0, final.stderr.read()
    found = _check_registry(rdir, known)
    assert len(found) == len(known) + 1 and current_version(rdir) == found[-1]
    manifest = json.loads((rdir / found[-1] / MANIFEST).read_text())
    assert manifest["parts"]["adapter"]["steps"] == STEPS
    assert not list(rdir.glob(".tmp-*")), "the last writer removes the folders of killed runs"
    print(f"\n{len(kills)} kills: {kills}")
