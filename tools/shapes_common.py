"""What every shapes-world training stage shares: sizes, the scene pool, pickle-free stage
checkpoints, the learning-rate schedule and exported folders with their hash lists.

The stages themselves: :mod:`tools.shapes_text` (tokenizer, CLIP), :mod:`tools.shapes_vae`,
:mod:`tools.shapes_unet`; :mod:`tools.shapes_train` runs them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mmadapt.models.cache import write_hashes
from tools import shapes_world as sw

IMAGE_SIZE = 32
LATENT_SIZE = 16  # the VAE halves the side once
LATENT_CHANNELS = 8
PIXEL_LATENT_CHANNELS = 4  # --pixel-space: latents 4x32x32
VAE_CROP = 16
VAE_DETAIL_POOL = 8000  # --pixel-space: render_detail images mixed 1:1 with base-world renders
SAMPLE_CLIP = 4.0  # |x0| bound of the sampler, in scaled latent units
MAX_TOKENS = 24


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- data


class SceneData:
    """A fixed, seeded pool of scenes and their pixels (uint8), captions drawn per use."""

    def __init__(self, n: int, seed: int):
        self.scenes = sw.generate_scenes(n, seed)
        self.pixels = (
            torch.from_numpy(np.stack([np.asarray(sw.render(s, IMAGE_SIZE)) for s in self.scenes]))
            .permute(0, 3, 1, 2)
            .contiguous()
        )
        self.rng = random.Random(seed + 1)

    def __len__(self) -> int:
        return len(self.scenes)

    def images(self, idx) -> torch.Tensor:
        """Images in [-1, 1]."""
        return self.pixels[idx].float() / 127.5 - 1.0

    def captions(self, idx, full_share: float = 0.5) -> list[str]:
        out = []
        for i in idx.tolist():
            scene = self.scenes[i]
            out.append(sw.caption(scene) if self.rng.random() < full_share else sw.caption(scene, self.rng))
        return out


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids


# ---------------------------------------------------------------- checkpoints


TENSOR_GROUPS = ("model", "ema")  # state dicts saved as <name>.safetensors


def save_ckpt(path: Path, state: dict) -> None:
    """Atomically replace the stage checkpoint folder ``path`` with ``state``, pickle-free.

    ``state["model"]`` / ``state["ema"]`` (state dicts) go to ``model.safetensors`` /
    ``ema.safetensors``; ``state["opt"]`` (an optimizer's state dict) to ``opt.safetensors``,
    its tensors, and ``state.json``, its param groups; every other entry (step, seconds spent,
    the LR scheduler's state ...) to ``state.json``. :func:`load_ckpt` gives the same dict back.
    """
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    info: dict = {}
    for key, value in state.items():
        if key in TENSOR_GROUPS:
            tensors = value
        elif key == "opt":
            tensors, info["opt"] = _optimizer_tensors(value)
        else:
            info[key] = value
            continue
        save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp / f"{key}.safetensors"))
    (tmp / "state.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_ckpt(path: Path) -> dict | None:
    """The state :func:`save_ckpt` wrote to ``path`` (or kept as ``.old`` when killed between its
    two renames), or None when there is none."""
    for folder in (path, path.with_name(f".{path.name}.old")):
        if (folder / "state.json").is_file():
            break
    else:
        if path.with_suffix(".pt").is_file():
            log(f"ignoring {path.with_suffix('.pt')}: pickle checkpoints are no longer read, the stage starts over")
        return None
    state = json.loads((folder / "state.json").read_text())
    for key in TENSOR_GROUPS:
        if (folder / f"{key}.safetensors").is_file():
            state[key] = load_file(str(folder / f"{key}.safetensors"))
    if "opt" in state:
        state["opt"] = _optimizer_state(load_file(str(folder / "opt.safetensors")), state["opt"])
    return state


def _optimizer_tensors(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict as (tensors named ``<param index>.<slot>``, JSON-able rest)."""
    tensors, scalars = {}, {}
    for index, slots in state_dict["state"].items():
        for slot, value in slots.items():
            (tensors if torch.is_tensor(value) else scalars)[f"{index}.{slot}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of :func:`_optimizer_tensors` (JSON turned the ``betas`` tuples into lists)."""
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def replace_folder(tmp: Path, target: Path) -> None:
    write_hashes(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def cosine_schedule(opt: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The stages' learning-rate curve, as torch schedulers (step it after each optimizer step).

    Optimizer step ``k`` (0-based) runs at ``lr * (k + 1) / warmup`` while ``k < warmup``,
    then follows a cosine from ``lr`` down to ``lr / 10`` at ``k = total``, and stays at
    ``lr / 10`` after (the time-budgeted stages may outrun ``total``, an estimate).
    """
    from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, SequentialLR

    return SequentialLR(
        opt,
        [
            LinearLR(opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1),
            CosineAnnealingLR(opt, T_max=total - warmup, eta_min=0.1 * opt.defaults["lr"]),
            ConstantLR(opt, factor=0.1, total_iters=sys.maxsize),
        ],
        milestones=[warmup, total],
    )
