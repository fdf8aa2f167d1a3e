"""The four image strategies on a tiny random pipeline: artifacts, reload, LoRA format, determinism."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors import safe_open

from mmadapt.engine.runner import load_artifact, run
from mmadapt.errors import ModelError
from mmadapt.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
BRAND = ROOT / "datasets" / "brand-style"
PROMPTS = ["two circles in a row", "a star at the top left", "three squares in a column"]


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory) -> Path:
    import torch

    from tests.fixtures.tiny import tiny_diffusion_pipeline

    torch.set_num_threads(1)
    return tiny_diffusion_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def brand_subset(tmp_path_factory) -> Path:
    """6 brand references (the last without a caption line), the palette and 3 prompts."""
    root = tmp_path_factory.mktemp("brand")
    (root / "images").mkdir()
    lines = [json.loads(x) for x in (BRAND / "captions.jsonl").read_text().splitlines()[:6]]
    for line in lines:
        shutil.copy(BRAND / line["file_name"], root / line["file_name"])
    (root / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines[:5]))
    shutil.copy(BRAND / "palette.json", root / "palette.json")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    return root


def recipe_file(folder: Path, tiny_pipe: Path, brand: Path, strategies: dict, **extra) -> Path:
    raw = {
        "name": "tiny-image",
        "modality": "image",
        "base_model": str(tiny_pipe),
        "data": {
            "references": str(brand / "images"),
            "captions": str(brand / "captions.jsonl"),
            "palette": str(brand / "palette.json"),
            "eval": str(brand / "prompts.jsonl"),
        },
        "strategies": strategies,
        "train": {"steps": 4, "lr": 5e-3, "batch_size": 4, "warmup_steps": 0, "checkpoint_every": 2},
        "eval": {"latency_samples": 1, "bootstrap": 20},
        "inference": {"steps": 3, "guidance_scale": 3.0, "batch_size": 2},
        "output_dir": str(folder / "runs"),
        **extra,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def pixels(image) -> np.ndarray:
    return np.asarray(Image.open(image) if isinstance(image, (str, Path)) else image, dtype=np.int16)


def test_prompt_and_retrieval_write_a_complete_artifact(tmp_path, tiny_pipe, brand_subset):
    recipe = load_recipe(
        recipe_file(
            tmp_path,
            tiny_pipe,
            brand_subset,
            {
                "prompt": {"template": "{prompt}, zentrix style", "negative_prompt": "blurry", "guidance_scale": 2.0},
                "retrieval": {"top_k": 2, "strength": 0.6},
            },
        )
    )
    result = run(recipe, progress=False)
    version = result.version_dir
    assert set(result.metrics) == {"palette_adherence", "clip_i", "clip_t"}
    assert all(lo <= result.metrics[m] <= hi for m, (lo, hi) in result.manifest["ci95"].items())
    assert json.loads((version / "prompt" / "prompt.json").read_text())["negative_prompt"] == "blurry"
    assert sorted(p.name for p in (version / "retrieval" / "references").iterdir()) == [f"ref_{i:04d}.png" for i in range(6)]
    rows = [json.loads(x) for x in (version / "predictions.jsonl").read_text().splitlines()]
    refs = {p.name for p in (brand_subset / "images").iterdir()}
    assert [len(r["sources"]) for r in rows] == [2, 2, 2] and all(set(r["sources"]) <= refs for r in rows)
    assert rows[0]["generated_from"] == f"{PROMPTS[0]}, zentrix style" and rows[0]["prompt"] == PROMPTS[0]
    assert result.manifest["samples"][0] == "samples/contact_sheet.png" and (version / "samples" / "contact_sheet.png").is_file()
    loaded = load_artifact(version)
    again = loaded.predictor.predict([PROMPTS[1]])[0]
    assert again.sources == rows[1]["sources"]
    assert np.abs(pixels(again.output) - pixels(version / rows[1]["image"])).max() <= 1  # what was evaluated is what reloads


def test_images_do_not_depend_on_the_batch(tmp_path, tiny_pipe, brand_subset):
    from mmadapt.protocols import get_modality

    recipe = load_recipe(recipe_file(tmp_path, tiny_pipe, brand_subset, {}))
    modality = get_modality("image")
    predictor = modality.predictor(modality.new_stack(recipe))
    together = predictor.predict(PROMPTS)
    alone = predictor.predict([PROMPTS[2]])
    assert np.abs(pixels(together[2].output) - pixels(alone[0].output)).max() <= 1
    assert np.abs(pixels(together[0].output) - pixels(together[1].output)).max() > 10  # different prompts, different seeds


RELOAD = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from mmadapt.engine.runner import load_artifact
art = load_artifact(sys.argv[1])
art.predictor.predict([sys.argv[2]])[0].output.save(sys.argv[3])
"""


def test_lora_is_diffusers_format_and_reloads_in_a_new_process(tmp_path, tiny_pipe, brand_subset):
    recipe = load_recipe(
        recipe_file(tmp_path, tiny_pipe, brand_subset, {"adapter": {"r": 4, "alpha": 4, "auto_caption": "zentrix style"}})
    )
    result = run(recipe, progress=False)
    version = result.version_dir
    weights = version / "adapter" / "adapter" / "pytorch_lora_weights.safetensors"
    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
    assert keys and all(
        k.startswith("unet.") and (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight")) for k in keys
    )  # peft's key names, which load_lora_weights reads as they are
    projections = {re.search(r"\.(to_q|to_k|to_v|to_out\.0)\.lora_[AB]\.", k).group(1) for k in keys}
    assert projections == {"to_q", "to_k", "to_v", "to_out.0"}
    assert result.manifest["parts"]["adapter"]["trainable_params"] > 0
    assert result.manifest["parts"]["adapter"]["steps"] == 4
    out = tmp_path / "reloaded.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", RELOAD, str(version), PROMPTS[0], str(out)], check=True, env=env, timeout=300)
    evaluated = version / "samples" / "p0.png"
    assert np.abs(pixels(out) - pixels(evaluated)).max() <= 1  # max pixel difference <= 1/255

    # the scale knob: 0 gives the base model's image, 1 the trained one
    from mmadapt.protocols import get_modality

    modality = get_modality("image")
    base = modality.predictor(modality.new_stack(recipe.with_stack([]))).predict([PROMPTS[0]])[0].output
    stack = modality.new_stack(recipe)
    (version / "adapter" / "adapter.json").write_text(json.dumps({**recipe.strategies["adapter"].model_dump(), "scale": 0.0}))
    modality.strategies["adapter"](recipe.strategies["adapter"], recipe).compose(stack, version / "adapter")
    off = modality.predictor(stack).predict([PROMPTS[0]])[0].output
    assert np.abs(pixels(off) - pixels(base)).max() <= 1
    assert np.abs(pixels(evaluated) - pixels(base)).max() > 1


def test_adapter_training_is_deterministic_and_leaves_the_base_untouched(tmp_path, tiny_pipe, brand_subset):
    recipe = load_recipe(recipe_file(tmp_path, tiny_pipe, brand_subset, {"adapter": {"r": 4}}))
    first = run(recipe, progress=False)
    second = run(recipe, progress=False)
    a = first.version_dir / "adapter" / "adapter" / "pytorch_lora_weights.safetensors"
    b = second.version_dir / "adapter" / "adapter" / "pytorch_lora_weights.safetensors"
    assert a.read_bytes() == b.read_bytes()
    assert first.manifest["parts"]["adapter"]["final_loss"] == second.manifest["parts"]["adapter"]["final_loss"]


def test_full_saves_the_denoiser_as_safetensors_and_reloads(tmp_path, tiny_pipe, brand_subset):
    recipe = load_recipe(recipe_file(tmp_path, tiny_pipe, brand_subset, {"full": {"train": {"lr": 1e-3}}}))
    result = run(recipe, progress=False)
    folder = result.version_dir / "full" / "model" / "unet"
    assert (folder / "diffusion_pytorch_model.safetensors").is_file() and (folder / "config.json").is_file()
    assert not [p for p in result.version_dir.rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]
    params = result.manifest["parts"]["full"]["trainable_params"]
    assert params == sum(p.numel() for p in load_artifact(result.version_dir).stack.unet.parameters())
    again = load_artifact(result.version_dir).predictor.predict([PROMPTS[2]])[0].output
    assert np.abs(pixels(again) - pixels(result.version_dir / "samples" / "p2.png")).max() <= 1


def test_bad_base_models_are_one_line_model_errors(tmp_path, tiny_pipe, brand_subset):
    from mmadapt.modalities.image.model import load_pipeline

    with pytest.raises(ModelError, match="not a local folder, a hub id"):
        load_pipeline(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(ModelError, match="not a diffusers pipeline folder"):
        load_pipeline(str(empty))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipe, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"nope")
    with pytest.raises(ModelError) as info:
        load_pipeline(str(broken))
    assert "\n" not in str(info.value) and str(broken) in str(info.value)
    pipe, info = load_pipeline(str(tiny_pipe))
    assert info["denoiser"] == "unet" and info["pipeline"] == "StableDiffusionPipeline" and info["parameters"] > 0


def test_a_crashed_lora_run_resumes_to_the_uninterrupted_weights(tmp_path, tiny_pipe, brand_subset, monkeypatch):
    from mmadapt.engine import trainer

    weights = "adapter/adapter/pytorch_lora_weights.safetensors"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = run(load_recipe(recipe_file(tmp_path / "a", tiny_pipe, brand_subset, {"adapter": {"r": 4}})), progress=False)
    recipe = load_recipe(recipe_file(tmp_path / "b", tiny_pipe, brand_subset, {"adapter": {"r": 4}}))
    real_save = trainer.save_checkpoint

    def save_then_crash(folder, model, optimizer, step, losses):
        real_save(folder, model, optimizer, step, losses)
        if step == 2:
            raise KeyboardInterrupt("killed after the step-2 checkpoint")

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, progress=False)
    assert not list((tmp_path / "b" / "runs" / "tiny-image").glob("v0*"))  # no partial artifact
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    resumed = run(recipe, resume=True, progress=False)
    assert (resumed.version_dir / weights).read_bytes() == (straight.version_dir / weights).read_bytes()
    assert resumed.manifest["parts"]["adapter"]["final_loss"] == straight.manifest["parts"]["adapter"]["final_loss"]


def test_clip_embedders_load_safetensors_only(tmp_path, monkeypatch):
    from mmadapt.modalities.image.retrieval import load_clip

    monkeypatch.delenv("MMADAPT_TRUST_REMOTE_PICKLE", raising=False)
    with pytest.raises(ModelError, match="may load pickle weights; mmadapt loads safetensors only"):
        load_clip("open_clip:ViT-B-32/laion2b_s34b_b79k")
    with pytest.raises(ModelError, match="open_clip weights file not found"):
        load_clip(f"open_clip:ViT-B-32/{tmp_path}/missing.safetensors")
    pickled = tmp_path / "clip"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelError, match="weights are pickle files"):
        load_clip(str(pickled))


def test_an_sdxl_pipeline_serves_prompt_and_retrieval(tmp_path, brand_subset):
    from tests.fixtures.tiny import tiny_sdxl_pipeline

    sdxl = tiny_sdxl_pipeline(tmp_path / "tiny-sdxl")
    stack = {"prompt": {"template": "{prompt}, zentrix style"}, "retrieval": {"top_k": 2}}
    result = run(load_recipe(recipe_file(tmp_path, sdxl, brand_subset, stack)), progress=False)
    assert result.manifest["base_model"]["pipeline"] == "StableDiffusionXLPipeline"
    assert set(result.metrics) == {"palette_adherence", "clip_i", "clip_t"}
    rows = [json.loads(x) for x in (result.version_dir / "predictions.jsonl").read_text().splitlines()]
    assert all(len(r["sources"]) == 2 for r in rows)  # training SDXL: tests/image/test_image_families.py


@pytest.mark.parametrize(("clip_range", "kept"), [(4.0, True), (1.0, False)])
def test_a_folder_keeps_the_x0_clipping_its_scheduler_chose(tmp_path, tiny_pipe, clip_range, kept):
    """StableDiffusionPipeline turns clip_sample off on load; a range other than DDIM's default 1 was chosen."""
    from mmadapt.modalities.image.model import load_pipeline

    folder = tmp_path / "sd"
    shutil.copytree(tiny_pipe, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config.update(clip_sample=True, clip_sample_range=clip_range)
    config_file.write_text(json.dumps(config))
    pipe, _ = load_pipeline(str(folder))
    assert pipe.scheduler.config.clip_sample is kept
    assert pipe.scheduler.config.clip_sample_range == clip_range


def test_a_guarded_image_recipe_refuses_a_prompt_with_a_grey_image(tmp_path, tiny_pipe, brand_subset):
    from mmadapt.engine.runner import run

    guard = {"input": {"blocked_patterns": ["star"]}, "refusal": "Not that shape."}
    result = run(load_recipe(recipe_file(tmp_path, tiny_pipe, brand_subset, {}, guard=guard)), progress=False)
    made, refused, _ = result.evaluation.predictions  # PROMPTS[1] names a star
    assert refused.info["guard"] == {"refused": True, "escalated": False, "redactions": 0, "kinds": {},
                                     "reason": "input matches blocked pattern 'star'"}
    assert refused.output.size == made.output.size and set(refused.output.getdata()) == {(128, 128, 128)}
    assert result.manifest["metrics"]["refusal_rate"] == round(1 / 3, 4) and "escalation_rate" in result.manifest["metrics"]
