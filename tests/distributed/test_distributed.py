"""Single-process checks of the distributed helpers, the rank slices of the batch plan, batch inputs and launch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from _dist_helpers import clean_env

from mmadapt.config import TrainConfig
from mmadapt.engine import distributed, trainer
from mmadapt.engine.batch import read_inputs
from mmadapt.errors import MmadaptError, RecipeError
from mmadapt.recipe import load_recipe


def test_layout_comes_from_the_launcher_environment(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.detect() == distributed.DistEnv(0, 1, 0)
    assert distributed.initialize() is False  # one process: no group, every helper is the identity
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.detect() == distributed.DistEnv(3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(MmadaptError, match="not a valid process layout"):
        distributed.detect()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(MmadaptError, match="MASTER_ADDR"):
        distributed.initialize()


def test_shards_cover_the_inputs_once_and_gather_restores_order():
    items = [f"x{i}" for i in range(11)]
    shards = [distributed.shard(items, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == sorted(items)
    assert [len(s) for s in shards] == [4, 4, 3]
    assert distributed.shard_indices(5, 1, 2) == [1, 3]
    assert distributed.gather_in_order(items, len(items)) == items  # one process
    assert distributed.rank_seed(7, 0) == 7 and distributed.rank_seed(7, 1) != 7
    assert distributed.all_reduce_sum([1.5, 2]) == [1.5, 2.0]


def test_rank_slices_of_a_step_make_the_global_batch():
    lengths = [5, 9, 3, 7, 1, 8, 2, 6, 4, 10, 11, 12]
    plan = trainer.BatchPlan(lengths, batch_size=8, micro_batch_size=2, seed=1)
    for step in range(5):
        whole = plan.step_indices(step)
        parts = [plan.rank_indices(step, r, 2) for r in range(2)]
        assert sorted(parts[0] + parts[1]) == sorted(whole) and not set(parts[0]) & set(parts[1])
        micro = [plan.micro_batches(step, r, 2) for r in range(2)]
        assert len(micro[0]) == len(micro[1]) == 2  # equal micro-batch counts: collectives line up
        assert plan.micro_batches(step) == plan.micro_batches(step, 0, 1)


def test_recipe_selects_fsdp_and_bf16(tmp_path):
    cfg = TrainConfig()
    assert cfg.precision == "fp32" and cfg.distributed.strategy == "ddp"
    recipe = tmp_path / "r.yaml"
    (tmp_path / "e.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    recipe.write_text(
        f"name: r\nmodality: text\nbase_model: x\ndata: {{eval: {tmp_path}/e.jsonl}}\nstrategies: {{}}\n"
        "train: {precision: bf16, distributed: {strategy: fsdp}}\n"
    )
    parsed = load_recipe(recipe)
    assert parsed.train.precision == "bf16" and parsed.train.distributed.strategy == "fsdp"
    with pytest.raises(RecipeError, match=r"train.distributed.stratgy: unknown key \(did you mean 'strategy'"):
        load_recipe(recipe, ["train.distributed={stratgy: fsdp}"])
    with pytest.raises(RecipeError, match="train.precision"):
        load_recipe(recipe, ["train.precision=fp8"])


def test_bf16_autocast_trains(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    y = x @ torch.tensor([[1.0], [-1.0], [2.0], [0.5]])
    model = torch.nn.Linear(4, 1)

    def collate(indices):
        return (x[indices], y[indices]), len(indices)

    def loss_fn(net, batch):
        out = net(batch[0])
        assert out.dtype == torch.bfloat16  # the forward really ran under autocast
        return ((out.float() - batch[1]) ** 2).sum()

    config = TrainConfig(steps=60, lr=0.05, batch_size=8, warmup_steps=0, precision="bf16", checkpoint_every=100)
    report = trainer.train(model, lengths=[1] * 32, collate=collate, loss_fn=loss_fn, config=config, checkpoint_dir=tmp_path, progress=False)
    assert model.weight.dtype == torch.float32  # weights stay fp32
    assert report.log[-1]["loss"] < report.log[0]["loss"] * 0.1


def test_batch_inputs_from_lines_jsonl_and_folders(tmp_path):
    (tmp_path / "q.txt").write_text("first question\n\n  second question  \n")
    keys = ("question", "prompt")
    assert read_inputs(tmp_path / "q.txt", keys) == [("line-1", "first question"), ("line-3", "second question")]
    (tmp_path / "q.jsonl").write_text('{"id": "a", "question": "x?"}\n"plain"\n{"prompt": "a red square"}\n')
    assert read_inputs(tmp_path / "q.jsonl", keys) == [("a", "x?"), ("line-2", "plain"), ("line-3", "a red square")]
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("b.wav", "a.wav", ".hidden.wav"):
        (audio / name).write_bytes(b"RIFF")
    assert read_inputs(audio, keys) == [("a.wav", str(audio / "a.wav")), ("b.wav", str(audio / "b.wav"))]
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "answer": "no input"}\n')
    with pytest.raises(MmadaptError, match="no input key"):
        read_inputs(tmp_path / "bad.jsonl", keys)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(MmadaptError, match="no inputs"):
        read_inputs(tmp_path / "empty.txt", keys)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mmadapt.cli", *args], capture_output=True, text=True, env=clean_env(), cwd=cwd)


def test_launch_prints_the_torchrun_command_and_the_slurm_script(tmp_path, tiny_lm, qa_data):
    from _dist_helpers import write_recipe

    recipe = write_recipe(tmp_path / "l.yaml", name="l", model=tiny_lm, data=qa_data, output_dir=tmp_path / "runs", train="{steps: 2}")
    out = _cli("launch", str(recipe), "--nproc", "4", "--set", "train.steps=3", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"{sys.executable} -m torch.distributed.run --nproc_per_node 4 --standalone -m mmadapt.cli run {recipe} --set train.steps=3"
    )
    out = _cli("launch", str(recipe), "--nproc", "4", "--nnodes", "2", "--rdzv", "node001:29500", "--dry-run", cwd=tmp_path)
    assert "--nnodes 2 --rdzv_backend c10d --rdzv_endpoint node001:29500 --rdzv_id mmadapt-l" in out.stdout
    out = _cli("launch", str(recipe), "--nproc", "4", "--nnodes", "2", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "needs --rdzv HOST:PORT" in out.stderr
    out = _cli("launch", str(recipe), "--nproc", "2", "--set", "train.stepz=3", "--dry-run", cwd=tmp_path)
    assert out.returncode == 2 and "train.stepz: unknown key" in out.stderr

    out = _cli("launch", "--slurm", str(recipe), "--nproc", "8", "--nnodes", "3", "--partition", "gpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    script = tmp_path / "runs" / "l" / "l.sbatch"
    text = script.read_text()
    assert text in out.stdout and f"submit with: sbatch {script}" in out.stdout
    for line in ("#SBATCH --nodes=3", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu"):
        assert line in text
    assert 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    assert '--nnodes "$SLURM_NNODES" --nproc_per_node 8' in srun
    assert '--rdzv_backend c10d --rdzv_endpoint "$head_node:$rdzv_port"' in srun and srun.endswith(f"-m mmadapt.cli run {recipe}")
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
