"""retrieval.mode ip_adapter on tiny random pipelines and a tiny random IP-Adapter, loaded by diffusers' own
``load_ip_adapter``: the reference conditions the image, per seed; what does not fit is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from mmadapt.engine.runner import load_artifact, run
from mmadapt.errors import ModelError, RecipeError
from mmadapt.protocols import get_modality
from mmadapt.recipe import load_recipe
from tests.image.test_image_strategies import PROMPTS, brand_subset, pixels, recipe_file  # noqa: F401  (fixture)

TINY_IP = {"subfolder": "models", "weight_name": "ip-adapter.safetensors", "scale": 1.0}


@pytest.fixture(scope="module")
def pipes(tmp_path_factory) -> dict[str, Path]:
    from tests.fixtures.tiny import tiny_diffusion_pipeline, tiny_sdxl_pipeline
    from tests.fixtures.tiny_diffusion import tiny_ip_adapter

    root = tmp_path_factory.mktemp("ip")
    out = {"sd": tiny_diffusion_pipeline(root / "sd"), "sdxl": tiny_sdxl_pipeline(root / "sdxl")}
    for family in ("sd", "sdxl"):
        out[f"{family}-ip"] = tiny_ip_adapter(root / f"{family}-ip", out[family])
    return out


def ip_strategies(ip: Path, **extra) -> dict:
    return {"retrieval": {"top_k": 1, "mode": "ip_adapter", "ip_adapter": {"model": str(ip), **TINY_IP, **extra}}}


def with_references(version: Path, folder: Path, change) -> Path:
    """A copy of the artifact ``version`` whose reference images are ``change(image)``."""
    shutil.copytree(version, folder)
    for ref in (folder / "retrieval" / "references").iterdir():
        change(Image.open(ref).convert("RGB")).save(ref)
    return folder


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_ip_adapter_conditions_on_the_retrieved_reference(tmp_path, pipes, brand_subset, family):  # noqa: F811
    result = run(
        load_recipe(recipe_file(tmp_path, pipes[family], brand_subset, ip_strategies(pipes[f"{family}-ip"]))), progress=False
    )
    version = result.version_dir
    saved = json.loads((version / "retrieval" / "retrieval.json").read_text())
    assert saved["mode"] == "ip_adapter" and saved["ip_adapter"]["model"] == str(pipes[f"{family}-ip"].resolve())
    rows = [json.loads(x) for x in (version / "predictions.jsonl").read_text().splitlines()]
    assert all(len(r["sources"]) == 1 for r in rows)

    loaded = load_artifact(version)
    first, again = (loaded.predictor.predict([PROMPTS[0]])[0] for _ in range(2))
    assert np.array_equal(pixels(first.output), pixels(again.output))  # deterministic per seed
    assert np.abs(pixels(first.output) - pixels(version / rows[0]["image"])).max() <= 1  # what was evaluated reloads
    inverted = load_artifact(with_references(version, tmp_path / "inverted", ImageOps.invert))
    other = inverted.predictor.predict([PROMPTS[0]])[0]
    assert other.sources == first.sources  # the same reference retrieved (the index is unchanged) ...
    assert np.abs(pixels(other.output) - pixels(first.output)).max() > 10  # ... its pixels change the image

    # generated from noise, not from the reference: at scale 0 the image is the base model's text-to-image
    loaded.stack.pipe.set_ip_adapter_scale(0.0)
    (tmp_path / "plain").mkdir()
    plain = load_recipe(recipe_file(tmp_path / "plain", pipes[family], brand_subset, {}))
    image = get_modality("image")
    base = image.predictor(image.new_stack(plain)).predict([PROMPTS[0]])[0]
    unscaled = loaded.predictor.predict([PROMPTS[0]])[0]
    assert np.abs(pixels(unscaled.output) - pixels(base.output)).max() <= 1


def test_an_ip_adapter_that_does_not_fit_the_unet_is_one_line(tmp_path, pipes, brand_subset):  # noqa: F811
    from mmadapt.cli.main import main
    from tests.fixtures.tiny_diffusion import tiny_ip_adapter

    wrong = tiny_ip_adapter(tmp_path / "wrong-ip", pipes["sd"], token_width=24)  # the UNet's cross-attention is 32
    recipe = recipe_file(tmp_path, pipes["sd"], brand_subset, ip_strategies(wrong))
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 2, result.output
    (error,) = [x for x in result.output.splitlines() if x.startswith("error:")]  # progress lines aside: one line
    assert "strategies.retrieval.ip_adapter" in error and "does not fit the pipeline" in error, error
    assert "size mismatch for to_k_ip" in error, error  # what did not fit, from diffusers' loader
    assert error == result.output.strip().splitlines()[-1]
    assert not any((tmp_path / "runs").rglob("manifest.json"))  # nothing written


def test_an_image_encoder_that_does_not_fit_or_a_missing_file_is_one_line(tmp_path, pipes, brand_subset):  # noqa: F811
    from mmadapt.modalities.image.ip_adapter import IPAdapterConfig, load_ip_adapter, locate
    from tests.fixtures.tiny_diffusion import tiny_ip_adapter

    ip = tiny_ip_adapter(tmp_path / "ip", pipes["sd"], encoder_dim=12)  # the projection takes 16
    stack = get_modality("image").new_stack(load_recipe(recipe_file(tmp_path, pipes["sd"], brand_subset, {})))
    with pytest.raises(ModelError, match="image projection does not take the image encoder's output") as err:
        load_ip_adapter(stack, IPAdapterConfig(model=str(ip), **TINY_IP))
    assert "\n" not in str(err.value) and "strategies.retrieval.ip_adapter" in str(err.value)
    with pytest.raises(ModelError, match=r"strategies\.retrieval\.ip_adapter\.weight_name: .*missing\.safetensors does not exist"):
        locate(IPAdapterConfig(model=str(ip), **{**TINY_IP, "weight_name": "missing.safetensors"}))
    with pytest.raises(ModelError, match=r"strategies\.retrieval\.ip_adapter\.image_encoder_folder: .*elsewhere does not exist"):
        locate(IPAdapterConfig(model=str(ip), image_encoder_folder="elsewhere", **TINY_IP))
    with pytest.raises(ModelError, match=r"strategies\.retrieval\.ip_adapter\.model: not a local folder"):
        locate(IPAdapterConfig(model=str(tmp_path / "nowhere"), **TINY_IP))


def test_the_recipe_names_the_ip_adapter_and_a_transformer_pipeline_is_refused(tmp_path, brand_subset):  # noqa: F811
    from mmadapt.modalities.image.ip_adapter import check_supported
    from tests.fixtures.tiny_diffusion import tiny_sd3_pipeline

    sd3 = tiny_sd3_pipeline(tmp_path / "sd3")
    with pytest.raises(RecipeError, match=r"strategies\.retrieval.*mode ip_adapter needs ip_adapter"):
        load_recipe(recipe_file(tmp_path, sd3, brand_subset, {"retrieval": {"mode": "ip_adapter"}}))
    with pytest.raises(RecipeError, match=r"strategies\.retrieval.*ip_adapter is set but mode is img2img"):
        load_recipe(recipe_file(tmp_path, sd3, brand_subset, {"retrieval": {"ip_adapter": {"model": "h94/IP-Adapter"}}}))
    recipe = load_recipe(recipe_file(tmp_path, sd3, brand_subset, ip_strategies(tmp_path)))
    assert recipe.strategies["retrieval"].ip_adapter.image_encoder_folder == "image_encoder"  # the documented default
    with pytest.raises(ModelError, match="StableDiffusion3Pipeline .* takes no IP-Adapter in mmadapt") as err:
        check_supported(get_modality("image").new_stack(recipe))
    assert "retrieval.mode img2img" in str(err.value)


def test_a_lora_trains_after_an_ip_adapter_retrieval(tmp_path, pipes, brand_subset):  # noqa: F811
    """The IP-Adapter loads at the first generation, so the UNet still trains after retrieval (retrieval+adapter)."""
    strategies = {**ip_strategies(pipes["sd-ip"]), "adapter": {"r": 2, "alpha": 2}}
    result = run(load_recipe(recipe_file(tmp_path, pipes["sd"], brand_subset, strategies)), progress=False)
    assert result.manifest["stack"] == ["retrieval", "adapter"] and result.manifest["parts"]["adapter"]["steps"] == 4
    rows = [json.loads(x) for x in (result.version_dir / "predictions.jsonl").read_text().splitlines()]
    again = load_artifact(result.version_dir).predictor.predict([PROMPTS[2]])[0]
    assert np.abs(pixels(again.output) - pixels(result.version_dir / rows[2]["image"])).max() <= 1

    (tmp_path / "live").mkdir()
    live = load_recipe(recipe_file(tmp_path / "live", pipes["sd"], brand_subset, strategies))
    live.train.eval_every = 2
    with pytest.raises(ModelError, match="cannot be evaluated during the training that follows it"):
        run(live, progress=False)
    assert not any((tmp_path / "live" / "runs").rglob("manifest.json"))
