"""models/narrow.py: a float32 folder in mmadapt's cache loads as bf16 from a cached bf16 copy, the
same tensors as ``from_pretrained(dtype=bfloat16)`` on the float32 folder; other folders are left alone."""

from __future__ import annotations

import shutil

import pytest
import torch

from mmadapt.models.cache import cached_build
from mmadapt.models.narrow import narrowed


@pytest.fixture
def cached_fp32_lm(tiny_lm, tmp_path, monkeypatch):
    """The tiny float32 Llama as a converted entry of a fresh mmadapt cache (as embedded models are)."""
    monkeypatch.setenv("MMADAPT_CACHE", str(tmp_path / "cache"))
    return str(cached_build("tiny-lm", "c" * 64, lambda out: shutil.copytree(tiny_lm, out, dirs_exist_ok=True)))


def test_bf16_copy_loads_the_same_tensors_and_is_built_once(cached_fp32_lm):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    copy = narrowed(cached_fp32_lm, "bf16")
    assert copy != cached_fp32_lm and narrowed(cached_fp32_lm, "bf16") == copy  # built once, then found
    with safe_open(f"{copy}/model.safetensors", framework="pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}
    assert open(f"{copy}/config.json").read() == open(f"{cached_fp32_lm}/config.json").read()
    direct = AutoModelForCausalLM.from_pretrained(cached_fp32_lm, dtype=torch.bfloat16).state_dict()
    loaded = AutoModelForCausalLM.from_pretrained(copy, dtype=torch.bfloat16).state_dict()
    assert direct.keys() == loaded.keys()
    assert all(loaded[k].dtype == direct[k].dtype and torch.equal(loaded[k], direct[k]) for k in direct)
    assert narrowed(cached_fp32_lm, "fp32") == cached_fp32_lm
    assert narrowed(copy, "bf16") == copy  # already 16-bit: nothing to narrow


def test_a_folder_outside_the_cache_is_loaded_as_it_is(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("MMADAPT_CACHE", str(tmp_path / "cache"))
    assert narrowed(str(tiny_lm), "bf16") == str(tiny_lm)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing written


def test_plan_sizes_the_load_of_a_narrowed_folder_from_its_16bit_copy(cached_fp32_lm, tiny_lm):
    """`mmadapt plan` knows a bf16 base of a cached float32 folder maps the 16-bit copy, not the float32 file
    (a user's own float32 folder still maps its float32 file while the bf16 copy is made)."""
    from dataclasses import replace

    from mmadapt.govern.plan import Setup, load_shape, predict

    setup = replace(Setup(device="cpu", seq_len=64, batch=1, micro_batch=1), dtype="bf16", method="lora")
    ours, users = load_shape(cached_fp32_lm), load_shape(str(tiny_lm))
    assert ours.narrowed_16bit and not users.narrowed_16bit
    assert predict(ours, setup).load == pytest.approx(ours.params * 2)
    assert predict(users, setup).load == pytest.approx(users.params * 4 + predict(users, setup).weights)
