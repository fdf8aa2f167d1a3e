"""``train.ema``: an exponential moving average of the trained weights, beside the loop.

diffusers' ``EMAModel`` (``diffusers.training_utils``, what its training scripts use with
``--use_ema``) keeps a shadow copy of the trainable parameters and after every optimizer step
moves it ``1 - decay`` of the way to them; ``decay`` ramps up as ``(1 + n) / (10 + n)`` (0 at
the first step) and is capped at ``train.ema_decay``. The loop scores and saves the shadow
weights (they are copied into the model at the end), and a checkpoint holds them beside the raw
weights so that ``--resume`` continues the same average.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmadapt.config import TrainConfig
from mmadapt.errors import MmadaptError

EMA_FILE = "ema.safetensors"


def start(params: list[torch.nn.Parameter], config: TrainConfig, *, sharded: bool):
    """An ``EMAModel`` over ``params`` when ``train.ema`` is on, else None."""
    if not config.ema:
        return None
    if sharded:
        raise MmadaptError(
            "train.ema does not combine with distributed.strategy: fsdp (the average would be of shards)",
            fix="set train.distributed.strategy: ddp, or train.ema: false",
        )
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=config.ema_decay)


def save(ema, names: list[str], folder: Path) -> None:
    """The shadow weights, named as the trainable parameters, into a checkpoint folder."""
    shadow = {name: s.detach().contiguous().cpu() for name, s in zip(names, ema.shadow_params)}
    save_file(shadow, str(folder / EMA_FILE), metadata={"optimization_step": str(ema.optimization_step)})


def load(ema, names: list[str], folder: Path) -> None:
    """Put a checkpoint's shadow weights and step count back into ``ema``."""
    from safetensors import safe_open

    path = folder / EMA_FILE
    if not path.is_file():
        raise MmadaptError(
            "the checkpoint was written without train.ema, the run now has it", path=folder,
            fix="resume with the recipe it was started with, or start afresh without --resume",
        )
    with safe_open(str(path), "pt") as handle:
        step = int(handle.metadata()["optimization_step"])
    shadow = load_file(str(path))
    with torch.no_grad():
        for name, s in zip(names, ema.shadow_params):
            s.copy_(shadow[name].to(s.device, s.dtype))
    ema.optimization_step = step


@contextlib.contextmanager
def swapped_in(ema, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """The shadow weights in the model for the duration (an evaluation at a checkpoint), then the raw ones back."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)
