"""The one training loop behind every ``adapter`` and ``full`` strategy, all modalities.

A modality supplies the model, the examples' lengths, a ``collate`` that turns a list
of example indices into (batch, count of loss items), and a ``loss`` of (model, batch)
-> the loss *summed* over those items. The loop owns everything else:

* a deterministic batch plan: for each epoch a seeded permutation, grouped by length
  within windows (less padding), so the batch of any step is known from the step alone;
* gradient accumulation (``batch_size`` examples per optimizer step in micro-batches of
  ``micro_batch_size``), the loss normalised over the whole step's tokens;
* AdamW (fused/foreach where available), warmup then cosine/linear/constant schedule,
  gradient clipping;
* resumable checkpoints every ``checkpoint_every`` steps: trainable weights, optimizer
  moments and RNG state as safetensors (no pickles), written atomically, so a resumed
  run reproduces an uninterrupted one;
* multi-process runs (torchrun / accelerate launch, see :mod:`mmadapt.engine.distributed`): the
  model is wrapped in DDP (or sharded with FSDP, ``train.distributed.strategy``, see
  :mod:`mmadapt.engine.fsdp`), each rank takes every ``world``-th index of the step's batch
  so the global batch stays ``batch_size``, the loss is normalised by the item count summed over ranks (N processes
  compute the gradient of 1 process), gradients are clipped after they are synced, and
  only rank 0 writes checkpoints;
* ``train.precision: bf16``: forward and loss under bf16 autocast, weights and optimizer fp32;
* ``train.eval_every`` / ``keep: best``: the eval split scored at checkpoints through the scorer the
  runner puts in the :class:`FitContext` (:mod:`mmadapt.engine.curve`), the best step's weights kept.
* ``train.ema``: diffusers' ``EMAModel`` of the trainable weights (:mod:`mmadapt.engine.ema`), checkpointed,
  scored at ``eval_every`` and put into the model at the end (what the strategy saves).
* ``train.gradient_checkpointing``: the model's own (transformers / diffusers) activation
  checkpointing, non-reentrant, so frozen inputs (LoRA, QLoRA) still get gradients through it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mmadapt.config import TrainConfig
from mmadapt.engine import distributed, fsdp
from mmadapt.engine import ema as averaging
from mmadapt.engine.cpu_memory import return_freed_memory_to_os
from mmadapt.engine.curve import EvalCurve, curve_for
from mmadapt.engine.seed import seed_everything
from mmadapt.errors import MmadaptError
from mmadapt.protocols import FitContext, FitReport

CHECKPOINT = "checkpoint"
GROUP_WINDOW = 4  # batches per length-grouping window: enough to cut padding, small enough to keep batches random


@dataclass
class BatchPlan:
    """Which examples form the micro-batches of each optimizer step, known from the step alone."""

    lengths: Sequence[int]
    batch_size: int
    micro_batch_size: int
    seed: int = 0
    _epochs: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.lengths:
            raise ValueError("no training examples")
        self.micro_batch_size = min(self.micro_batch_size, self.batch_size)

    def _epoch_order(self, epoch: int) -> list[int]:
        """A seeded permutation; within windows of a few batches, examples of similar length are
        put in the same batch (less padding), then the batches are shuffled again."""
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.lengths)).tolist()
            window = self.batch_size * GROUP_WINDOW
            batches: list[list[int]] = []
            for start in range(0, len(order), window):
                chunk = sorted(order[start : start + window], key=lambda i: self.lengths[i])
                batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
            shuffled = [batches[i] for i in rng.permutation(len(batches))]
            self._epochs = {epoch: [i for batch in shuffled for i in batch]}  # keep one epoch in memory
        return self._epochs[epoch]

    def step_indices(self, step: int) -> list[int]:
        """The ``batch_size`` example indices of optimizer step ``step`` (0-based), wrapping epochs."""
        n = len(self.lengths)
        start = step * self.batch_size
        out = []
        while len(out) < self.batch_size:
            epoch, offset = divmod(start + len(out), n)
            order = self._epoch_order(epoch)
            out.extend(order[offset : offset + self.batch_size - len(out)])
        return out

    def rank_indices(self, step: int, rank: int = 0, world: int = 1) -> list[int]:
        """Rank ``rank``'s share of step ``step``: every ``world``-th index (lengths balanced across ranks)."""
        return self.step_indices(step)[rank::world]

    def micro_batches(self, step: int, rank: int = 0, world: int = 1) -> list[list[int]]:
        """The micro-batches this rank runs at ``step`` (sorted by length, ``micro_batch_size`` each)."""
        indices = sorted(self.rank_indices(step, rank, world), key=lambda i: self.lengths[i])
        return [indices[i : i + self.micro_batch_size] for i in range(0, len(indices), self.micro_batch_size)]


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if params and params[0].is_cuda:
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return torch.optim.AdamW(params, **kwargs)


# ---------------------------------------------------------------- checkpoints


def _named_trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, losses: list[float], ema: Any = None
) -> None:
    """Atomically replace ``folder/checkpoint`` with the state after ``step`` optimizer steps (and ``ema``'s).

    In a multi-process run every rank calls this (sharded tensors are gathered) and rank 0 writes.
    """
    named = _named_trainable(model)
    weights = {k: fsdp.full(v).contiguous().cpu() for k, v in named.items()}
    id_to_name = {id(p): k for k, p in named.items()}
    moments: dict[str, torch.Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            name = id_to_name[id(p)]
            for key, value in state.items():
                tensor = value if torch.is_tensor(value) else torch.tensor(value)
                moments[f"{name}::{key}"] = fsdp.full(tensor).contiguous().cpu()
    if not distributed.is_main():
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{CHECKPOINT}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(weights, str(tmp / "weights.safetensors"))
        save_file(moments or {"__empty__": torch.zeros(1)}, str(tmp / "optimizer.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(tmp / "rng.safetensors"))
        if ema is not None:
            averaging.save(ema, list(named), tmp)
        (tmp / "state.json").write_text(
            json.dumps({"step": step, "losses": losses, "python_random": repr(random.getstate())})
        )
    except BaseException:  # disk full, read-only, interrupted: no half checkpoint left taking space
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    target = folder / CHECKPOINT
    old = folder / f".{CHECKPOINT}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    _remove_leftovers(folder)  # this save's .old, and any left by a process killed mid-save


def _remove_leftovers(folder: Path, *, including_current: bool = False) -> None:
    for stale in [*folder.glob(f".{CHECKPOINT}.tmp-*"), *folder.glob(f".{CHECKPOINT}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    if including_current:
        shutil.rmtree(folder / CHECKPOINT, ignore_errors=True)


def _newest_checkpoint(folder: Path) -> tuple[Path, dict] | None:
    """The complete checkpoint of the highest step in ``folder`` with its state.

    Normally ``checkpoint/``. A process killed between the two renames of
    :func:`save_checkpoint` leaves only ``.checkpoint.old-<pid>`` (the previous one) and
    ``.checkpoint.tmp-<pid>`` (the new one, complete once its ``state.json``, written last,
    parses): either is a whole checkpoint, so ``--resume`` loses nothing.
    """
    candidates = [folder / CHECKPOINT, *folder.glob(f".{CHECKPOINT}.tmp-*"), *folder.glob(f".{CHECKPOINT}.old-*")]
    best = None
    for candidate in candidates:
        try:
            state = json.loads((candidate / "state.json").read_text())
            step = int(state["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # missing, or torn by the kill: not a checkpoint
        if best is None or step > best[1]["step"]:
            best = (candidate, {**state, "step": step})
    return best


def load_checkpoint(
    folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: Any = None
) -> tuple[int, list[float]] | None:
    """Restore the last checkpoint in ``folder``; return (step, losses) or None when there is none."""
    found = _newest_checkpoint(folder)
    if found is None:
        return None
    target, state = found
    weights = load_file(str(target / "weights.safetensors"))
    named = _named_trainable(model)
    missing = set(named) - set(weights)
    if missing:
        raise RuntimeError(f"checkpoint in {target} does not match the model (missing {sorted(missing)[:3]})")
    with torch.no_grad():
        for name, param in named.items():
            param.copy_(fsdp.like(weights[name], param))
    moments = load_file(str(target / "optimizer.safetensors"))
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = next(k for k, v in named.items() if v is p)
            entries = {key.split("::", 1)[1]: v for key, v in moments.items() if key.split("::", 1)[0] == name}
            if entries:
                optimizer.state[p] = {k: fsdp.like(v, p) if k != "step" else v for k, v in entries.items()}
    rng = load_file(str(target / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    if ema is not None:
        averaging.load(ema, list(named), target)
    return int(state["step"]), list(state["losses"])


# ---------------------------------------------------------------- the loop


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Turn on the model library's activation checkpointing: recompute each block's activations in the
    backward pass instead of keeping them (transformers' ``gradient_checkpointing_enable``, which peft
    models forward to its base; diffusers' ``enable_gradient_checkpointing``)."""
    if callable(hf := getattr(model, "gradient_checkpointing_enable", None)):
        hf(gradient_checkpointing_kwargs={"use_reentrant": False})  # reentrant checkpointing drops grads of frozen inputs
        if callable(inputs := getattr(model, "enable_input_require_grads", None)):
            inputs()  # peft: embeddings frozen, the checkpointed blocks still see an input that requires grad
    elif callable(diffusers := getattr(model, "enable_gradient_checkpointing", None)):
        diffusers()
    else:
        raise MmadaptError(
            f"train.gradient_checkpointing: {type(model).__name__} has no activation checkpointing",
            fix="set train.gradient_checkpointing: false",
        )


LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]

def _to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` (tensors in dicts, lists, tuples) on ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def train_strategy(
    model: torch.nn.Module,
    ctx: FitContext,
    name: str,
    *,
    lengths: Sequence[int],
    collate: Callable[[list[int]], tuple[Any, int]],
    loss_fn: LossFn,
    config: TrainConfig,
) -> FitReport:
    """:func:`train` for the strategy ``name`` of a run: its checkpoints live in the run's
    crash-surviving ``run_dir/<name>``, and ``--resume`` and progress bars follow the run; with
    ``train.eval_every`` the run's scorer draws the eval curve there (:mod:`mmadapt.engine.curve`)."""
    checkpoint_dir = Path(ctx.run_dir) / name
    return train(
        model,
        lengths=lengths,
        collate=collate,
        loss_fn=loss_fn,
        config=config,
        checkpoint_dir=checkpoint_dir,
        resume=ctx.resume,
        progress=ctx.progress,
        desc=f"{name} training",
        curve=curve_for(ctx, config, checkpoint_dir, ctx.resume),
    )


def train(
    model: torch.nn.Module,
    *,
    lengths: Sequence[int],
    collate: Callable[[list[int]], tuple[Any, int]],
    loss_fn: LossFn,
    config: TrainConfig,
    checkpoint_dir: Path,
    resume: bool = False,
    progress: bool = True,
    desc: str = "training",
    on_step: Callable[[int, float], None] | None = None,
    curve: EvalCurve | None = None,
) -> FitReport:
    """Train ``model``'s trainable parameters for ``config.steps`` optimizer steps.

    ``config`` is the recipe's ``train`` section. ``collate`` returns a micro-batch and
    the number of loss items in it (e.g. answer tokens); ``loss_fn`` returns the loss
    *summed* over them; the loop divides by the step's total, so gradient accumulation
    equals one big batch — and, summed over ranks, N processes equal one.
    """
    seed_everything(config.seed)
    world, rank = distributed.world_size(), distributed.rank()
    if world > 1 and config.batch_size % world:
        raise MmadaptError(
            f"train.batch_size {config.batch_size} is not a multiple of the {world} processes",
            fix=f"set train.batch_size to a multiple of {world} (it is the global batch)",
        )
    if world > 1 and config.keep == "best":
        raise MmadaptError("train.keep: best is for one process (the best weights are not gathered across ranks)",
                           fix="keep: last in a multi-process run, or run it in one process")
    device = distributed.device() if world > 1 else None
    if device is not None and device.type == "cuda":
        model.to(device)
    if not any(p.requires_grad for p in model.parameters()):
        raise RuntimeError("the model has no trainable parameters")
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    net: torch.nn.Module = model  # what forward passes go through
    ddp = sharded = None
    if world > 1 and config.distributed.strategy == "fsdp":
        sharded = fsdp.shard(model)
    elif world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device is not None and device.type == "cuda" else None
        # buffers (rotary tables ...) are equal on every rank; no broadcast per forward
        net = ddp = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config.lr, config.weight_decay)
    ema = averaging.start(params, config, sharded=sharded is not None)
    with_ema = {"ema": ema} if ema is not None else {}
    plan = BatchPlan(lengths, config.batch_size, config.micro_batch_size or config.batch_size, config.seed)
    start_step, losses = 0, []
    if resume:
        restored = load_checkpoint(checkpoint_dir, model, optimizer, **with_ema)
        if restored:
            start_step, losses = restored
    elif distributed.is_main() and checkpoint_dir.is_dir():
        _remove_leftovers(checkpoint_dir, including_current=True)
    if rank:
        distributed.seed_rank(config.seed + start_step)  # dropout differs per rank, reproducibly
    device_type = next(iter(params)).device.type
    if device_type == "cpu":
        return_freed_memory_to_os()  # else freed activations stay resident (engine/cpu_memory.py)
    autocast = torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    model.train()
    began = time.perf_counter()
    show = progress and distributed.is_main()
    bar = tqdm(total=config.steps, initial=start_step, desc=desc, unit="step", disable=not show, leave=False)
    for step in range(start_step, config.steps):
        factor = lr_factor(step, config.steps, config.warmup_steps, config.schedule)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * factor
        micro = [collate(indices) for indices in plan.micro_batches(step, rank, world)]
        total_items = sum(count for _batch, count in micro)
        if world > 1:
            total_items = int(distributed.all_reduce_sum(total_items)[0])
        step_loss = 0.0
        optimizer.zero_grad(set_to_none=True)
        for k, (batch, _count) in enumerate(micro):  # one graph alive at a time: memory stays that of one micro-batch
            last = k == len(micro) - 1
            if device is not None:
                batch = _to_device(batch, device)
            if sharded is not None:
                model.set_requires_gradient_sync(last)
            with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext(), autocast:
                loss = loss_fn(net, batch) / max(total_items, 1)
            step_loss += float(loss.detach())
            if world > 1:
                loss = loss * world  # DDP and FSDP average gradients over ranks; we want their sum
            loss.backward()
        if world > 1:
            step_loss = distributed.all_reduce_sum(step_loss)[0]
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        if ema is not None:
            ema.step(params)
        losses.append(round(step_loss, 6))
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if on_step:
            on_step(step + 1, step_loss)
        if curve is not None:
            curve.loss(step + 1, step_loss)
            if curve.due(step + 1):
                with averaging.swapped_in(ema, params):
                    curve.score(model, step + 1, step_loss)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            save_checkpoint(checkpoint_dir, model, optimizer, step + 1, losses, **with_ema)
    bar.close()
    del ddp, net
    if sharded is not None:
        fsdp.unshard(sharded)
    distributed.barrier()  # rank 0's checkpoint is on disk before anyone goes on
    if ema is not None:
        ema.copy_to(params)  # what the strategy saves is the average
    kept = curve.finish(model) if curve is not None else {}  # keep: best puts the best step's weights back
    model.eval()
    return FitReport(
        trainable_params=int(sum(p.numel() for p in params)),
        train_seconds=time.perf_counter() - began,
        steps=config.steps,
        final_loss=losses[-1] if losses else None,
        log=[{"step": i + 1, "loss": v} for i, v in enumerate(losses)],
        eval_curve=list(curve.points) if curve is not None else [],
        kept=kept,
    )
