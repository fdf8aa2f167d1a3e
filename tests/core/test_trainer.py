"""The shared training loop: batch plan, schedule, accumulation, checkpoints and --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmadapt.config import TrainConfig
from mmadapt.engine import trainer


def test_batch_plan_is_a_function_of_the_step():
    lengths = [5, 9, 3, 7, 1, 8, 2, 6, 4, 10]
    a = trainer.BatchPlan(lengths, batch_size=4, micro_batch_size=2, seed=3)
    b = trainer.BatchPlan(lengths, batch_size=4, micro_batch_size=2, seed=3)
    steps = [a.step_indices(s) for s in range(7)]
    assert steps == [b.step_indices(s) for s in reversed(range(7))][::-1]
    # each epoch visits every example exactly once
    flat = [i for s in steps for i in s]
    assert sorted(flat[:10]) == list(range(10))
    assert sorted(flat[10:20]) == list(range(10))
    assert all(len(m) <= 2 for m in a.micro_batches(0))
    other_seed = [trainer.BatchPlan(lengths, 4, 2, seed=4).step_indices(s) for s in range(7)]
    assert other_seed != steps


def test_lr_schedule_shapes():
    assert trainer.lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert trainer.lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert trainer.lr_factor(99, 100, 10, "cosine") < 0.01
    assert trainer.lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert trainer.lr_factor(80, 100, 0, "constant") == 1.0


class Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)
        self.frozen = torch.nn.Linear(3, 3)
        torch.nn.init.eye_(self.frozen.weight)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.lin(self.frozen(x))


def _problem(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    lengths = list(range(1, n + 1))

    def collate(indices):
        return (x[indices], y[indices]), len(indices)

    def loss_fn(model, batch):
        xb, yb = batch
        return ((model(xb) - yb) ** 2).sum()

    return lengths, collate, loss_fn


def _train(tmp_path, *, steps=12, micro=None, resume=False, seed=0, ckpt=4, model=None, on_step=None):
    torch.manual_seed(123)
    model = model or Regressor()
    lengths, collate, loss_fn = _problem()
    config = TrainConfig(steps=steps, lr=0.1, batch_size=8, micro_batch_size=micro, warmup_steps=2, seed=seed, checkpoint_every=ckpt)
    report = trainer.train(
        model, lengths=lengths, collate=collate, loss_fn=loss_fn, config=config,
        checkpoint_dir=tmp_path, resume=resume, progress=False, on_step=on_step,
    )
    return model, report


def _dataset_loss(model):
    lengths, collate, loss_fn = _problem()
    batch, count = collate(list(range(len(lengths))))
    with torch.no_grad():
        return float(loss_fn(model, batch)) / count


def test_loss_decreases_and_counts_trainable(tmp_path):
    torch.manual_seed(123)
    untrained = _dataset_loss(Regressor())
    model, report = _train(tmp_path, steps=60)
    assert report.trainable_params == 4  # the frozen layer is not counted
    assert _dataset_loss(model) < untrained * 0.2


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    _, whole = _train(tmp_path / "a", micro=None)
    _, accumulated = _train(tmp_path / "b", micro=2)
    assert [r["loss"] for r in whole.log] == pytest.approx([r["loss"] for r in accumulated.log], abs=1e-5)


class Killed(Exception):
    pass


def _interrupted(folder: Path, at: int) -> None:
    """Train into ``folder`` until an exception at step ``at`` (checkpoints every 4 steps)."""

    def stop(step, loss):
        if step == at:
            raise Killed

    with pytest.raises(Killed):
        _train(folder, on_step=stop)


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    _, full = _train(tmp_path / "full")
    _interrupted(tmp_path / "killed", 6)  # checkpoint at step 4 exists, steps 5-6 are lost
    state = json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4
    _, resumed = _train(tmp_path / "killed", resume=True)
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-6)
    assert [r["loss"] for r in resumed.log] == pytest.approx([r["loss"] for r in full.log], abs=1e-6)


def test_checkpoints_hold_no_pickles(tmp_path):
    _train(tmp_path)
    files = {p.name for p in (tmp_path / "checkpoint").iterdir()}
    assert files == {"weights.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"}


@pytest.mark.parametrize("left", ["old", "tmp"])
def test_a_kill_between_the_checkpoint_renames_loses_no_checkpoint(tmp_path, left):
    """save_checkpoint moves checkpoint/ aside, then the new one in: a kill in between leaves no
    checkpoint/, only .checkpoint.old-<pid> and .checkpoint.tmp-<pid>; resume takes the newest whole one."""
    _, full = _train(tmp_path / "full")
    run = tmp_path / "killed"
    _interrupted(run, 10)  # checkpoints at 4 and 8
    current = run / "checkpoint"
    # a whole checkpoint under the name the kill left it with, beside a temporary the kill tore
    os.replace(current, run / f".checkpoint.{left}-999")
    (run / ".checkpoint.tmp-998").mkdir()
    (run / ".checkpoint.tmp-998" / "state.json").write_text('{"step": 9')
    assert not current.exists() and trainer._newest_checkpoint(run)[1]["step"] == 8
    _, resumed = _train(run, resume=True)
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-6)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]  # leftovers removed by the next save


def test_without_resume_an_old_checkpoint_is_discarded(tmp_path):
    _train(tmp_path, steps=8)
    _, report = _train(tmp_path, steps=8)  # no resume: starts from step 0
    assert len(report.log) == 8


@pytest.mark.slow
def test_sigkilled_lora_run_resumes_to_the_same_final_loss(tmp_path, tiny_lm):
    """Kill a real `mmadapt run` after its first checkpoint; --resume ends at the uninterrupted loss."""
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"question": f"What is code {i}?", "answer": f"Code {i} means ZX-{1000 + i}.", "key_fact": f"ZX-{1000 + i}"} for i in range(16)]
    (data / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (data / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:4]) + "\n")

    def recipe(name):
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            f"name: {name}\nmodality: text\nbase_model: {tiny_lm}\n"
            f"data: {{train: {data}/train.jsonl, eval: {data}/eval.jsonl}}\n"
            "strategies: {adapter: {method: lora, r: 4, alpha: 8}}\n"
            "train: {steps: 120, lr: 1.0e-3, batch_size: 8, micro_batch_size: 1, checkpoint_every: 10, seed: 1}\n"
            f"eval: {{latency_samples: 0, bootstrap: 0}}\ninference: {{max_new_tokens: 4}}\noutput_dir: {tmp_path}/runs\n"
        )
        return path

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "mmadapt.cli", "run", "--json", "--quiet"]
    straight = subprocess.run([*cli, str(recipe("straight"))], capture_output=True, text=True, env=env, check=True)
    expected = json.loads(straight.stdout)["parts"]["adapter"]["final_loss"]

    path = recipe("killed")
    proc = subprocess.Popen([*cli, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    checkpoints = tmp_path / "runs" / "killed" / ".work"
    deadline = time.time() + 120
    while time.time() < deadline and not list(checkpoints.glob("*/adapter/checkpoint/state.json")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads(next(checkpoints.glob("*/adapter/checkpoint/state.json")).read_text())
    assert 0 < state["step"] < 120, "the run was killed after a checkpoint and before the end"
    assert not list((tmp_path / "runs" / "killed").glob("v0*")), "a killed run publishes nothing"

    resumed = subprocess.run([*cli, "--resume", str(path)], capture_output=True, text=True, env=env, check=True)
    manifest = json.loads(resumed.stdout)
    assert manifest["parts"]["adapter"]["final_loss"] == pytest.approx(expected, abs=1e-4)
    assert Path(manifest["name"]) and (tmp_path / "runs" / "killed" / "v0001" / "adapter").is_dir()
