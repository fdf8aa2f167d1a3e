"""Real multi-process runs (gloo, CPU, 2 processes) against one process: training and batch inference."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from _dist_helpers import clean_env, free_port, torchrun, write_recipe

pytestmark = pytest.mark.slow

CLI = ["-m", "mmadapt.cli"]
TRAIN = "{steps: 30, lr: 2.0e-3, batch_size: 8, micro_batch_size: 2, warmup_steps: 3, checkpoint_every: 10, seed: 1%s}"


def _run(command, cwd, timeout=600):
    out = subprocess.run(command, capture_output=True, text=True, env=clean_env(), cwd=cwd, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _manifest(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") :])  # only rank 0 prints; it prints the manifest alone


def _greedy_ids(version_dir: Path, questions: list[str]) -> list[list[int]]:
    """Greedy token ids of the saved adapter (forced to 8 new tokens, so an early end proves nothing)."""
    from mmadapt.engine.runner import load_artifact
    from mmadapt.modalities.text.predict import chat_texts

    loaded = load_artifact(version_dir)
    stack = loaded.stack
    texts, _ = chat_texts(stack, questions)
    out = []
    for text in texts:
        enc = stack.tokenizer([text], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            ids = stack.model.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=stack.tokenizer.pad_token_id)
        out.append(ids[0, enc["input_ids"].shape[1] :].tolist())
    return out


def _adapter_weights(version_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(version_dir / "adapter" / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_lm, qa_data):
    """The reference: one process, global batch 8."""
    tmp = tmp_path_factory.mktemp("single")
    recipe = write_recipe(tmp / "one.yaml", name="one", model=tiny_lm, data=qa_data, output_dir=tmp / "runs", train=TRAIN % "")
    began = time.perf_counter()
    out = _run([sys.executable, *CLI, "run", "--json", "--quiet", str(recipe)], tmp)
    manifest = _manifest(out.stdout)
    manifest["_seconds"] = time.perf_counter() - began
    return tmp / "runs" / "one" / manifest["version"], manifest


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_processes_train_the_same_lora_as_one(tmp_path, tiny_lm, qa_data, single, strategy):
    one_dir, one = single
    extra = "" if strategy == "ddp" else ", distributed: {strategy: fsdp}"
    recipe = write_recipe(tmp_path / "two.yaml", name="two", model=tiny_lm, data=qa_data, output_dir=tmp_path / "runs", train=TRAIN % extra)
    out = _run([*torchrun(2), *CLI, "run", "--json", "--quiet", str(recipe)], tmp_path)
    two = _manifest(out.stdout)
    two_dir = tmp_path / "runs" / "two" / two["version"]
    # only rank 0 wrote: one version, no second artifact or stray temporaries
    assert [p.name for p in (tmp_path / "runs" / "two").iterdir() if p.name.startswith(("v0", ".tmp"))] == ["v0001"]

    loss_1, loss_2 = one["parts"]["adapter"]["final_loss"], two["parts"]["adapter"]["final_loss"]
    print(f"{strategy}: final loss 1 process {loss_1} / 2 processes {loss_2} (|diff| {abs(loss_1 - loss_2):.2e})")
    assert loss_1 < 6.0 and abs(loss_1 - loss_2) < 1e-3
    assert one["parts"]["adapter"]["trainable_params"] == two["parts"]["adapter"]["trainable_params"]

    w1, w2 = _adapter_weights(one_dir), _adapter_weights(two_dir)
    assert set(w1) == set(w2)
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
    assert max(float(w1[k].abs().max()) for k in w1 if "lora_B" in k) > 1e-3  # it trained (lora_B starts at 0)

    questions = [json.loads(line)["question"] for line in (qa_data / "eval.jsonl").read_text().splitlines()]
    assert _greedy_ids(one_dir, questions) == _greedy_ids(two_dir, questions)


def test_accelerate_launch_trains_the_same_lora(tmp_path, tiny_lm, qa_data, single):
    """`accelerate launch -m mmadapt.cli run` (its multi-process launcher, gloo on this CPU) with no recipe change."""
    _, one = single
    recipe = write_recipe(tmp_path / "acc.yaml", name="acc", model=tiny_lm, data=qa_data, output_dir=tmp_path / "runs", train=TRAIN % "")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        *CLI, "run", "--json", "--quiet", str(recipe),
    ]
    out = _run(command, tmp_path)
    acc = _manifest(out.stdout)
    assert abs(acc["parts"]["adapter"]["final_loss"] - one["parts"]["adapter"]["final_loss"]) < 1e-3
    log = (tmp_path / "runs" / "acc" / ".work").glob("*/adapter/checkpoint/state.json")
    assert len(json.loads(next(log).read_text())["losses"]) == 30


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_lm, qa_data):
    """An adapter trained hard enough that its answers differ between inputs, and 200 inputs."""
    tmp = tmp_path_factory.mktemp("served")
    recipe = write_recipe(
        tmp / "hot.yaml", name="hot", model=tiny_lm, data=qa_data, output_dir=tmp / "runs",
        train="{steps: 80, lr: 1.0e-2, batch_size: 8, micro_batch_size: 2, checkpoint_every: 10, seed: 1}", inference="{max_new_tokens: 12, batch_size: 4}",
    )
    _run([sys.executable, *CLI, "run", "--quiet", str(recipe)], tmp)
    inputs = tmp / "questions.jsonl"
    inputs.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is code {i} and port {7 * i}?"}) + "\n" for i in range(200)))
    return tmp, recipe, tmp / "runs" / "hot" / "v0001", inputs


def _batch(prefix, target, inputs, output, cwd, shard_size):
    return [*prefix, *CLI, "batch", str(target), "--inputs", str(inputs), "--output", str(output), "--shard-size", str(shard_size), "--quiet"]


def _shard_log(stderr: str) -> tuple[int, int]:
    found = re.findall(r"batch rank \d+/\d+: predicted (\d+) shards, skipped (\d+) finished shards", stderr)
    assert found, stderr[-2000:]
    return sum(int(p) for p, _ in found), sum(int(s) for _, s in found)


def test_batch_two_processes_match_one_and_resume_after_a_kill(tmp_path, served):
    _, recipe, version, inputs = served
    began = time.perf_counter()
    one = _run(_batch([sys.executable], version, inputs, tmp_path / "one.jsonl", tmp_path, 4), tmp_path)
    one_seconds = time.perf_counter() - began
    assert _shard_log(one.stderr) == (50, 0)
    rows = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(200)) and [r["id"] for r in rows] == [f"q{i}" for i in range(200)]
    assert all(r["output"] for r in rows) and len({r["output"] for r in rows}) > 1  # real, input-dependent answers

    began = time.perf_counter()
    two = _run(_batch(torchrun(2), recipe, inputs, tmp_path / "two.jsonl", tmp_path, 4), tmp_path)  # a recipe = its current version
    two_seconds = time.perf_counter() - began
    assert _shard_log(two.stderr) == (50, 0)
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    print(f"batch of 200: 1 process {one_seconds:.1f}s, 2 processes {two_seconds:.1f}s")

    # kill a 2-process run midway, then rerun it
    output = tmp_path / "killed.jsonl"
    parts = tmp_path / "killed.jsonl.parts"
    proc = subprocess.Popen(
        _batch(torchrun(2), version, inputs, output, tmp_path, 4), cwd=tmp_path, env=clean_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("shard-*.jsonl"))) < 6 and proc.poll() is None:
        time.sleep(0.01)
    workers = psutil.Process(proc.pid).children(recursive=True)  # torchrun starts each worker in its own session
    for process in [*workers, psutil.Process(proc.pid)]:  # a crash: SIGKILL, by pid, only what this test started
        os.kill(process.pid, signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(workers, timeout=30)
    finished = {p.name: p.stat().st_mtime_ns for p in parts.glob("shard-*.jsonl")}
    assert 6 <= len(finished) < 50, f"the kill must land midway ({len(finished)} of 50 shards were done)"
    assert not output.exists()

    rerun = _run(_batch(torchrun(2), version, inputs, output, tmp_path, 4), tmp_path)
    predicted, skipped = _shard_log(rerun.stderr)
    assert skipped == len(finished) and predicted == 50 - len(finished)
    assert {name: (parts / name).stat().st_mtime_ns for name in finished} == finished  # not rewritten
    assert output.read_bytes() == (tmp_path / "one.jsonl").read_bytes()

    # other inputs into the same parts folder are refused, not mixed in
    other = tmp_path / "other.txt"
    other.write_text("a different question\n")
    refused = subprocess.run(_batch([sys.executable], version, other, output, tmp_path, 4), capture_output=True, text=True, env=clean_env(), cwd=tmp_path)
    assert refused.returncode == 2 and "belong to other inputs" in refused.stderr


def test_a_sigkilled_two_process_run_resumes_to_the_single_process_loss(tmp_path, tiny_lm, qa_data, single):
    """Rank 0's checkpoints carry a 2-process run over a crash: --resume ends where one process ends."""
    _, one = single
    recipe = write_recipe(tmp_path / "res.yaml", name="res", model=tiny_lm, data=qa_data, output_dir=tmp_path / "runs", train=TRAIN % "")
    proc = subprocess.Popen(
        [*torchrun(2), *CLI, "run", "--json", "--quiet", str(recipe)], cwd=tmp_path, env=clean_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    states = tmp_path / "runs" / "res" / ".work"
    deadline = time.time() + 300
    while time.time() < deadline and not list(states.glob("*/adapter/checkpoint/state.json")) and proc.poll() is None:
        time.sleep(0.01)
    workers = psutil.Process(proc.pid).children(recursive=True)
    for process in [*workers, psutil.Process(proc.pid)]:
        os.kill(process.pid, signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(workers, timeout=30)
    step = json.loads(next(states.glob("*/adapter/checkpoint/state.json")).read_text())["step"]
    assert 0 < step < 30, "killed after a checkpoint and before the end"
    assert not list((tmp_path / "runs" / "res").glob("v0*"))

    out = _run([*torchrun(2), *CLI, "run", "--json", "--quiet", "--resume", str(recipe)], tmp_path)
    resumed = _manifest(out.stdout)
    assert abs(resumed["parts"]["adapter"]["final_loss"] - one["parts"]["adapter"]["final_loss"]) < 1e-3
