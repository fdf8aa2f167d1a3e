"""The image training knobs on the tiny SDXL: `model.dtype: bf16` for the frozen parts, `train.ema`,
and `cache_embeddings: false` (VAE and text encoders every step)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.image.test_image_families import brand4, cli_run, family_recipe, pipes, pixels, run_killed_after  # noqa: F401 - fixtures

WEIGHTS = "adapter/adapter/pytorch_lora_weights.safetensors"


def _recipe(tmp_path, pipes, brand4, *, steps, train=None, adapter=None, model=None):  # noqa: F811
    path = family_recipe(tmp_path, pipes["sdxl"], brand4, "adapter", steps=steps)
    raw = yaml.safe_load(path.read_text())
    raw["train"].update(train or {})
    raw["strategies"]["adapter"].update(adapter or {})
    if model:
        raw["model"] = model
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _checkpoint(folder):
    """The adapter's last resumable checkpoint of the run under ``folder`` (the run's work dir)."""
    (found,) = (folder / "runs" / "tiny-family" / ".work").glob("*/adapter/checkpoint")
    return found


def _bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@pytest.mark.slow
def test_bf16_frozen_parts_train_the_sdxl_lora_in_float32_and_the_loss_falls(tmp_path, pipes, brand4):  # noqa: F811
    from mmadapt.engine.runner import load_artifact
    from mmadapt.protocols import get_modality
    from mmadapt.recipe import load_recipe

    path = _recipe(tmp_path, pipes, brand4, steps=30, model={"dtype": "bf16"})
    recipe = load_recipe(path)
    stack = get_modality("image").new_stack(recipe)
    fp32 = get_modality("image").new_stack(load_recipe(path, overrides=["model.dtype=fp32"]))
    for name in ("vae", "text_encoder", "text_encoder_2", "unet"):
        part, full = getattr(stack.pipe, name), getattr(fp32.pipe, name)
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}, name
        assert 2 * _bytes(part) == _bytes(full), name  # the frozen weights take half the memory

    version = cli_run(path)
    losses = json.loads((version / "adapter" / "losses.json").read_text())
    assert np.mean(losses[-5:]) < 0.95 * np.mean(losses[:5]), losses
    raw = load_file(str(_checkpoint(tmp_path) / "weights.safetensors"))
    assert raw and {v.dtype for v in raw.values()} == {torch.float32}  # the LoRA trained in float32
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["recipe"]["model"] == {"dtype": "bf16"}
    again = load_artifact(version).predictor.predict(["two circles in a row"])[0].output
    assert np.abs(pixels(again) - pixels(version / "samples" / "p0.png")).max() == 0


@pytest.mark.slow
def test_sdxl_lora_ema_is_saved_and_resumed(tmp_path, pipes, brand4, monkeypatch):  # noqa: F811
    """The artifact holds the EMA (not the raw last step), and a run killed after a checkpoint resumes
    to the uninterrupted run's EMA."""
    ema = {"ema": True, "checkpoint_every": 4}
    straight = cli_run(_recipe(tmp_path / "a", pipes, brand4, steps=6, train=ema))
    checkpoint = _checkpoint(tmp_path / "a")
    saved = load_file(str(straight / WEIGHTS))

    def as_saved(tensors):  # the checkpoint's peft names -> the file's (save_lora_weights keeps peft's names)
        return {f"unet.{k.replace('.brand', '')}": v for k, v in tensors.items()}

    averaged, last = as_saved(load_file(str(checkpoint / "ema.safetensors"))), as_saved(load_file(str(checkpoint / "weights.safetensors")))
    assert saved.keys() == averaged.keys()
    assert all(torch.equal(saved[k], averaged[k]) for k in saved)
    assert any(not torch.allclose(saved[k], last[k]) for k in saved)

    recipe = _recipe(tmp_path / "b", pipes, brand4, steps=6, train=ema)
    assert run_killed_after(recipe, monkeypatch, 4).exit_code != 0
    resumed = cli_run(recipe, "--resume")
    assert (resumed / WEIGHTS).read_bytes() == (straight / WEIGHTS).read_bytes()


@pytest.mark.slow
def test_without_cached_embeddings_the_steps_are_the_same(tmp_path, pipes, brand4):  # noqa: F811
    cached = cli_run(_recipe(tmp_path / "a", pipes, brand4, steps=3))
    every_step = cli_run(_recipe(tmp_path / "b", pipes, brand4, steps=3, adapter={"cache_embeddings": False}))
    a, b = (json.loads((v / "adapter" / "losses.json").read_text()) for v in (cached, every_step))
    assert np.allclose(a, b, rtol=1e-4), (a, b)
