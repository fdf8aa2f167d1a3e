"""LoRA and full fine-tuning of tiny random SDXL, SD3 and Flux pipelines through `mmadapt run`.

Per family: the loss falls over 30 steps on 4 references of one colour scheme, and every
artifact reloads in a new process to the pixels it was evaluated on. A run killed after a
checkpoint resumes to the uninterrupted run's weights (LoRA of each family: the resume path is
the shared trainer's; each family's draws — DDPM with add_time_ids, SD3's flow, Flux's packing — go through it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from mmadapt.cli import main
from mmadapt.errors import ModelError

ROOT = Path(__file__).resolve().parents[2]
BRAND = ROOT / "datasets" / "brand-style"
FAMILIES = ("sdxl", "sd3", "flux")
STRATEGIES = {"adapter": {"r": 4, "alpha": 4}, "full": {"train": {"lr": 1e-3}}}
VERSIONS: dict[str, Path] = {}  # "sd3/adapter" -> version folder, filled by the training tests


@pytest.fixture(scope="module")
def pipes(tmp_path_factory) -> dict[str, Path]:
    import torch

    from tests.fixtures.tiny_diffusion import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sdxl_pipeline

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("families")
    return {
        "sdxl": tiny_sdxl_pipeline(root / "sdxl"),
        "sd3": tiny_sd3_pipeline(root / "sd3"),
        "flux": tiny_flux_pipeline(root / "flux"),
    }


@pytest.fixture(scope="module")
def brand4(tmp_path_factory) -> Path:
    """4 brand references of one colour scheme with captions, the palette, one eval prompt."""
    root = tmp_path_factory.mktemp("brand4")
    (root / "images").mkdir()
    lines = [json.loads(x) for x in (BRAND / "captions.jsonl").read_text().splitlines()[:4]]
    for line in lines:
        shutil.copy(BRAND / line["file_name"], root / line["file_name"])
    (root / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    shutil.copy(BRAND / "palette.json", root / "palette.json")
    (root / "prompts.jsonl").write_text(json.dumps({"id": "p0", "prompt": "two circles in a row"}) + "\n")
    return root


def family_recipe(folder: Path, base: Path, brand: Path, strategy: str, steps: int = 30) -> Path:
    raw = {
        "name": "tiny-family",
        "modality": "image",
        "base_model": str(base),
        "data": {
            "references": str(brand / "images"),
            "captions": str(brand / "captions.jsonl"),
            "palette": str(brand / "palette.json"),
            "eval": str(brand / "prompts.jsonl"),
        },
        "strategies": {strategy: STRATEGIES[strategy]},
        "train": {"steps": steps, "lr": 1e-2, "batch_size": 4, "warmup_steps": 0, "checkpoint_every": 10},
        "eval": {"latency_samples": 0, "bootstrap": 10, "metrics": ["palette_adherence"]},
        "inference": {"steps": 2, "guidance_scale": 3.0, "batch_size": 1, "height": 32, "width": 32},
        "output_dir": str(folder / "runs"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cli_run(recipe: Path, *extra: str) -> Path:
    """`mmadapt run RECIPE --json` in process; the version folder it wrote."""
    result = CliRunner().invoke(main, ["run", str(recipe), "--json", "--quiet", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output[result.output.index("{") :])
    return Path(yaml.safe_load(recipe.read_text())["output_dir"]) / "tiny-family" / manifest["version"]


def pixels(image) -> np.ndarray:
    return np.asarray(Image.open(image) if isinstance(image, (str, Path)) else image, dtype=np.int16)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["adapter", "full"])
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_and_the_loss_falls(tmp_path, pipes, brand4, family, strategy):
    version = cli_run(family_recipe(tmp_path, pipes[family], brand4, strategy))
    losses = json.loads((version / strategy / "losses.json").read_text())
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.95 * np.mean(losses[:5]), losses
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["base_model"]["pipeline"] == {"sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}[family]
    assert not [p for p in version.rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]
    VERSIONS[f"{family}/{strategy}"] = version


RELOAD = """
import sys, torch
torch.set_num_threads(1)
from mmadapt.engine.runner import load_artifact
for version, out in zip(sys.argv[1::2], sys.argv[2::2]):
    load_artifact(version).predictor.predict(["two circles in a row"])[0].output.save(out)
"""


@pytest.mark.slow
def test_every_family_artifact_reloads_in_a_new_process_to_the_same_pixels(tmp_path):
    if len(VERSIONS) < 2 * len(FAMILIES):
        pytest.skip("needs the training tests of this module")
    args = []
    for key, version in sorted(VERSIONS.items()):
        args += [str(version), str(tmp_path / f"{key.replace('/', '-')}.png")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", RELOAD, *args], check=True, env=env, timeout=300)
    for version, out in zip(args[::2], args[1::2]):
        assert np.abs(pixels(out) - pixels(Path(version) / "samples" / "p0.png")).max() == 0, version


def run_killed_after(recipe: Path, monkeypatch, step: int):
    """`mmadapt run RECIPE` killed just after its step-``step`` checkpoint; the CLI's result."""
    from mmadapt.engine import trainer

    real_save = trainer.save_checkpoint

    def save_then_crash(folder, model, optimizer, at, losses, **kwargs):
        real_save(folder, model, optimizer, at, losses, **kwargs)
        if at == step:
            raise KeyboardInterrupt(f"killed after the step-{step} checkpoint")

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_crash)
    try:
        return CliRunner().invoke(main, ["run", str(recipe), "--json", "--quiet"])  # click: Abort, exit 1
    finally:
        monkeypatch.setattr(trainer, "save_checkpoint", real_save)


def _weight_files(version: Path, strategy: str) -> dict[str, bytes]:
    return {str(p.relative_to(version)): p.read_bytes() for p in sorted((version / strategy).rglob("*.safetensors"))}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["adapter", "full"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_killed_run_resumes_to_the_uninterrupted_weights(tmp_path, pipes, brand4, monkeypatch, family, strategy):
    straight = cli_run(family_recipe(tmp_path / "a", pipes[family], brand4, strategy, steps=12))
    recipe = family_recipe(tmp_path / "b", pipes[family], brand4, strategy, steps=12)
    killed = run_killed_after(recipe, monkeypatch, 10)
    assert killed.exit_code != 0 and not list((tmp_path / "b" / "runs" / "tiny-family").glob("v0*"))
    resumed = cli_run(recipe, "--resume")
    expected = _weight_files(straight, strategy)
    assert expected and _weight_files(resumed, strategy) == expected


def test_lora_targets_per_family_and_all(pipes):
    from diffusers import SD3Transformer2DModel

    from mmadapt.modalities.image.families import ATTENTION, JOINT_ATTENTION, DDPMFamily, FlowFamily, lora_targets

    model = SD3Transformer2DModel.from_pretrained(pipes["sd3"] / "transformer")
    assert lora_targets(model, FlowFamily, None) == list(JOINT_ATTENTION)
    assert lora_targets(model, DDPMFamily, None) == list(ATTENTION)
    every = lora_targets(model, FlowFamily, ["all"])
    assert "transformer_blocks.0.attn.add_q_proj" in every and "proj_out" in every and "transformer_blocks.0.ff.net.2" in every


def test_an_unsupported_denoiser_is_one_line(pipes):
    from types import SimpleNamespace

    import torch

    from mmadapt.modalities.image.families import family_of

    stack = SimpleNamespace(pipe=SimpleNamespace(), unet=torch.nn.Linear(2, 2), denoiser="transformer", recipe=SimpleNamespace(base_model="x"))
    with pytest.raises(ModelError, match="training the denoiser of SimpleNamespace \\(Linear\\) is not supported") as info:
        family_of(stack, None)
    assert "\n" not in str(info.value)


def plain_image(pipe) -> np.ndarray:
    """What the evaluated sample was generated with, through the plain diffusers call."""
    import torch

    from mmadapt.modalities.image.predict import prompt_seed

    prompt = "two circles in a row"
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(prompt_seed(0, prompt))
    return pixels(pipe(prompt=[prompt], num_inference_steps=2, guidance_scale=3.0, generator=[generator], height=32, width=32).images[0])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_export_diffusers_kohya_and_merged_give_the_evaluated_images(tmp_path, pipes, family):
    from diffusers import DiffusionPipeline

    key = f"{family}/adapter"
    if key not in VERSIONS:
        pytest.skip("needs the training tests of this module")
    version = VERSIONS[key]
    evaluated = pixels(version / "samples" / "p0.png")
    formats = ["diffusers", "kohya"] if family == "sdxl" else ["diffusers"]
    for fmt in formats:
        out = tmp_path / fmt
        result = CliRunner().invoke(main, ["export", str(version), str(out), "--format", fmt], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        (weights,) = [p for p in out.iterdir() if p.suffix == ".safetensors"]
        if fmt == "kohya":
            from safetensors import safe_open

            with safe_open(str(weights), "pt") as f:
                assert all(k.startswith("lora_unet_") for k in f.keys())
        pipe = DiffusionPipeline.from_pretrained(pipes[family])
        pipe.load_lora_weights(str(out), weight_name=weights.name)  # diffusers' own loader detects kohya keys
        assert np.abs(plain_image(pipe) - evaluated).max() <= 1, fmt
    merged = tmp_path / "merged"
    result = CliRunner().invoke(main, ["export", str(version), str(merged)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert np.abs(plain_image(DiffusionPipeline.from_pretrained(merged)) - evaluated).max() <= 2
    if family == "flux":  # kohya (BFL keys): this LoRA's single-block q, k, v sit in linear1, which diffusers splits at
        # FLUX.1's widths only, so the export says so; test_kohya_export.py loads a Flux kohya file back
        with pytest.warns(UserWarning, match="cannot read lora_unet_single_blocks_0_linear1"):
            result = CliRunner().invoke(main, ["export", str(version), str(tmp_path / "k"), "--format", "kohya"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        from safetensors import safe_open

        with safe_open(str(tmp_path / "k" / "lora_kohya.safetensors"), "pt") as f:
            assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in set(f.keys())


@pytest.mark.slow
def test_a_trained_flux_lora_round_trips_as_kohya_to_the_evaluated_images(tmp_path, pipes, brand4):
    """`mmadapt run` (alpha 8, r 4: scale 2) on the targets diffusers' kohya Flux reader takes back at any width
    (the single blocks' q, k, v go to linear1, which it splits at FLUX.1's widths only), `export --format kohya`,
    plain `load_lora_weights` in a fresh pipeline: the evaluated image."""
    from diffusers import DiffusionPipeline

    from tests.image.test_kohya_export import READ_BACK

    recipe = family_recipe(tmp_path, pipes["flux"], brand4, "adapter", steps=10)
    raw = yaml.safe_load(recipe.read_text())
    raw["strategies"]["adapter"].update(target_modules=READ_BACK, alpha=8)
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    version = cli_run(recipe)
    out = tmp_path / "kohya"
    result = CliRunner().invoke(main, ["export", str(version), str(out), "--format", "kohya"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pipe = DiffusionPipeline.from_pretrained(pipes["flux"])
    pipe.load_lora_weights(str(out), weight_name="lora_kohya.safetensors")
    evaluated = pixels(version / "samples" / "p0.png")
    assert np.abs(plain_image(pipe) - evaluated).max() <= 1
    assert np.abs(plain_image(DiffusionPipeline.from_pretrained(pipes["flux"])) - evaluated).max() > 8  # the LoRA shows


@pytest.mark.slow
def test_the_sdxl_recipe_runs_on_the_tiny_sdxl(tmp_path, pipes):
    recipe = ROOT / "recipes" / "image" / "brand-style-sdxl.yaml"
    sets = [f"base_model={pipes['sdxl']}", f"output_dir={tmp_path}", "train.steps=3", "train.batch_size=2",
            "inference.height=16", "inference.width=16", "inference.steps=2", "eval.limit=2", "eval.bootstrap=10",
            "eval.latency_samples=0", "eval.metrics=[palette_adherence]"]
    args = ["run", str(recipe), "--quiet", "--json"] + [x for s in sets for x in ("--set", s)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output[result.output.index("{") :])
    assert manifest["base_model"]["pipeline"] == "StableDiffusionXLPipeline" and manifest["parts"]["adapter"]["steps"] == 3


def marked(width: int, height: int) -> Image.Image:
    """A grey image whose outermost 2 px are marks: red left, blue right, green top, yellow bottom."""
    a = np.full((height, width, 3), 128, dtype=np.uint8)
    a[:, :2], a[:, -2:] = (255, 0, 0), (0, 0, 255)
    a[:2, 2:-2], a[-2:, 2:-2] = (0, 255, 0), (255, 255, 0)
    return Image.fromarray(a)


def edges_kept(image: Image.Image) -> bool:
    a = np.asarray(image, dtype=np.int16)
    mid_h, mid_w = a.shape[0] // 2, a.shape[1] // 2
    return bool(
        a[mid_h, 0, 0] > 200 and a[mid_h, -1, 2] > 200 and a[0, mid_w, 1] > 200 and a[-1, mid_w, :2].min() > 200
    )


def test_buckets_keep_every_references_full_content_in_the_latent_cache(tmp_path, pipes):
    from types import SimpleNamespace

    import torch

    from mmadapt.modalities.image.adapter import ImageAdapterConfig
    from mmadapt.modalities.image.families import family_of
    from mmadapt.modalities.image.tuning import encode_references, reference_images
    from mmadapt.protocols import get_modality
    from mmadapt.recipe import load_recipe

    refs = [SimpleNamespace(image=marked(w, h), caption="zentrix style") for w, h in ((64, 32), (32, 32), (32, 64))]
    on = ImageAdapterConfig(buckets=True, bucket_step=4)
    cropped = reference_images(refs, (16, 16), ImageAdapterConfig())
    assert not edges_kept(cropped[0]) and not edges_kept(cropped[2])  # a square crop cuts the wide/tall marks
    bucketed = reference_images(refs, (16, 16), on)
    assert [im.size for im in bucketed] == [(24, 12), (16, 16), (12, 24)]
    assert all(edges_kept(im) for im in bucketed)

    brand = tmp_path / "brand"
    (brand / "images").mkdir(parents=True)
    for n, ref in enumerate(refs):
        ref.image.save(brand / "images" / f"r{n}.png")
    (brand / "palette.json").write_text(json.dumps(["#FF0000", "#0000FF"]))
    (brand / "prompts.jsonl").write_text(json.dumps({"id": "p0", "prompt": "a star"}) + "\n")
    raw = yaml.safe_load(family_recipe(tmp_path, pipes["sdxl"], brand, "adapter", steps=3).read_text())
    raw["data"].pop("captions")
    raw["strategies"]["adapter"].update(buckets=True, bucket_step=4)
    raw["inference"].update(height=16, width=16)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    recipe = load_recipe(tmp_path / "recipe.yaml")
    modality = get_modality("image")
    stack = modality.new_stack(recipe)
    data_refs = modality.load_data(recipe).resources["references"]
    family = family_of(stack, recipe.strategies["adapter"])
    groups, bucket, _cond, _empty, extras = encode_references(stack, data_refs, ["a"] * 3, family, recipe.strategies["adapter"])
    vae = stack.pipe.vae
    for ref, (b, row) in zip(data_refs, bucket):
        full = reference_images([ref], (16, 16), recipe.strategies["adapter"])[0]
        assert edges_kept(full)
        pixels = torch.from_numpy(np.asarray(full, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            expected = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        assert torch.allclose(groups[b][row : row + 1], expected, atol=1e-5)
    assert sorted(tuple(g.shape[2:]) for g in groups) == [(6, 12), (8, 8), (12, 6)]
    assert extras["time_ids"][:, 2:4].abs().sum() == 0  # SDXL's crop top-left: nothing was cropped
    version = cli_run(tmp_path / "recipe.yaml")  # mixed-size micro-batches train
    assert len(json.loads((version / "adapter" / "losses.json").read_text())) == 3
