"""`export --format kohya` for Flux (and SD3 refused): the file round-trips through diffusers' kohya loader.

A LoRA with known random weights (alpha != r, so the scale is carried) is saved through the
adapter's own save path, exported with ``export_lora``, and loaded into a fresh pipeline with
plain ``pipe.load_lora_weights``: the images equal those of the diffusers file the artifact
composes, and of the LoRA in memory. A second test takes every Flux module diffusers maps, at
FLUX.1's real widths (tensors only), through diffusers' converter and gets each module's update back.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmadapt.errors import ArtifactError
from mmadapt.modalities.image.adapter import ADAPTER_DIR, ADAPTER_NAME, KOHYA_WEIGHTS, WEIGHTS, export_lora, save_lora

# every Flux linear that diffusers 0.42's load_lora_weights reads back from a kohya file at any width:
# the double blocks whole, the single blocks' linear2 and modulation (linear1 it splits at FLUX.1's widths only)
READ_BACK = [
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.0.attn.to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "norm1.linear",
    "norm1_context.linear",
    "single_transformer_blocks.0.proj_out",
    "single_transformer_blocks.0.norm.linear",
]


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    from tests.fixtures.tiny_diffusion import tiny_flux_pipeline

    torch.set_num_threads(1)
    return tiny_flux_pipeline(tmp_path_factory.mktemp("flux") / "pipe")


def random_lora(stack, targets: list[str], *, r: int = 4, alpha: int = 8, std: float = 0.2) -> None:
    from peft import LoraConfig

    stack.unet.add_adapter(LoraConfig(r=r, lora_alpha=alpha, target_modules=targets), adapter_name=ADAPTER_NAME)
    generator = torch.Generator().manual_seed(0)
    for name, param in stack.unet.named_parameters():
        if ".lora_" in name:  # B starts at zero: random A and B make the LoRA change the image
            param.data = torch.randn(param.shape, generator=generator) * std


def image(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(1)
    out = pipe(
        prompt=["two circles in a row"],
        num_inference_steps=2,
        guidance_scale=3.0,
        generator=[generator],
        height=32,
        width=32,
        output_type="np",
    )
    return out.images[0]


def test_a_flux_lora_exported_as_kohya_loads_with_plain_load_lora_weights_to_the_same_images(tmp_path, flux):
    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    pipe = FluxPipeline.from_pretrained(flux)
    base = image(pipe)
    stack = SimpleNamespace(pipe=pipe, unet=pipe.transformer, denoiser="transformer")
    random_lora(stack, READ_BACK)
    in_memory = image(pipe)
    save_lora(stack, tmp_path / "adapter" / ADAPTER_DIR)  # as ImageAdapterStrategy.fit saves it
    out = tmp_path / "out"
    out.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every module here is one diffusers reads back: no warning
        assert export_lora(stack, tmp_path / "adapter", out, "kohya") == [KOHYA_WEIGHTS]

    kohya = load_file(str(out / KOHYA_WEIGHTS))
    assert {k.split(".")[0] for k in kohya} == {
        *(
            f"lora_unet_double_blocks_0_{n}"
            for n in (
                "img_attn_qkv",
                "img_attn_proj",
                "img_mlp_0",
                "img_mlp_2",
                "img_mod_lin",
                "txt_attn_qkv",
                "txt_attn_proj",
                "txt_mlp_0",
                "txt_mlp_2",
                "txt_mod_lin",
            )
        ),
        "lora_unet_single_blocks_0_linear2",
        "lora_unet_single_blocks_0_modulation_lin",
    }
    assert kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (12, 16)  # q, k, v rank-stacked
    assert kohya["lora_unet_double_blocks_0_img_attn_qkv.alpha"].item() == 12.0  # rank 12: the scale 8/4 is in B
    assert kohya["lora_unet_double_blocks_0_img_mlp_0.alpha"].item() == 4.0

    composed = FluxPipeline.from_pretrained(flux)  # what the artifact composes: the diffusers file
    composed.load_lora_weights(str(tmp_path / "adapter" / ADAPTER_DIR), weight_name=WEIGHTS)
    fresh = FluxPipeline.from_pretrained(flux)
    fresh.load_lora_weights(str(out), weight_name=KOHYA_WEIGHTS)  # diffusers detects the kohya keys itself
    assert np.abs(in_memory - base).max() > 0.05  # the LoRA changes the image, so equality below means something
    assert np.abs(image(composed) - in_memory).max() < 1e-5
    assert np.abs(image(fresh) - in_memory).max() < 1e-5


def test_every_mapped_flux_module_at_flux1_widths_comes_back_through_diffusers_converter():
    """Tensors only, FLUX.1's widths (3072; linear1 = 3 x 3072 + 12288): to kohya and back through the function
    FluxPipeline.load_lora_weights calls; each module's update B @ A x scale comes back, a fused member the
    LoRA lacks comes back as zero, per-module scales (peft's alpha_pattern) are kept."""
    from diffusers import FluxPipeline

    from mmadapt.modalities.image.kohya import flux_to_kohya, lora_scales

    width, r = 3072, 2
    shapes = {  # module -> (in, out)
        **{
            f"transformer_blocks.0.{m}": (width, width)
            for m in (
                "attn.to_q",
                "attn.to_k",
                "attn.to_v",
                "attn.to_out.0",
                "attn.add_q_proj",
                "attn.add_k_proj",
                "attn.add_v_proj",
                "attn.to_add_out",
            )
        },
        "transformer_blocks.0.ff.net.0.proj": (width, 4 * width),
        "transformer_blocks.0.ff.net.2": (4 * width, width),
        "transformer_blocks.0.norm1_context.linear": (width, 6 * width),
        "single_transformer_blocks.0.attn.to_q": (width, width),
        "single_transformer_blocks.0.attn.to_k": (width, width),
        "single_transformer_blocks.0.attn.to_v": (width, width),  # proj_mlp left out: a zero block in linear1
        "single_transformer_blocks.0.proj_out": (5 * width, width),
        "single_transformer_blocks.0.norm.linear": (width, 3 * width),
        "x_embedder": (64, width),
        "context_embedder": (4096, width),
        "time_text_embed.guidance_embedder.linear_1": (256, width),
        "time_text_embed.timestep_embedder.linear_2": (width, width),
        "time_text_embed.text_embedder.linear_1": (768, width),
        "norm_out.linear": (width, 2 * width),
        "proj_out": (width, 64),
    }
    generator = torch.Generator().manual_seed(0)
    layers = {}
    for module, (fan_in, fan_out) in shapes.items():
        layers[f"{module}.lora_A.weight"] = torch.randn(r, fan_in, generator=generator)
        layers[f"{module}.lora_B.weight"] = torch.randn(fan_out, r, generator=generator)
    config = {"r": r, "lora_alpha": 4, "alpha_pattern": {"attn.to_k": 2}}  # to_k: scale 1, the rest 2
    scales = lora_scales(set(shapes), config)
    assert scales["transformer_blocks.0.attn.to_k"] == 1.0 and scales["transformer_blocks.0.attn.to_q"] == 2.0
    widths = {m: out for m, (_, out) in shapes.items()} | {"single_transformer_blocks.0.proj_mlp": 4 * width}
    kohya = flux_to_kohya(layers, scales, widths)
    swapped = kohya["lora_unet_final_layer_adaLN_modulation_1.lora_up.weight"]  # BFL: (scale, shift); diffusers: (shift, scale)
    assert torch.equal(swapped, 2.0 * torch.cat(layers["norm_out.linear.lora_B.weight"].chunk(2)[::-1]))
    back = FluxPipeline.lora_state_dict(kohya)
    for module in [*shapes, "single_transformer_blocks.0.proj_mlp"]:
        key = f"transformer.{module}" if f"transformer.{module}.lora_A.weight" in back else module  # see kohya.py: unprefixed
        a, b = back[f"{key}.lora_A.weight"], back[f"{key}.lora_B.weight"]
        x = torch.randn(a.shape[1], 3, generator=generator)  # the update applied to a few inputs (B @ A itself is 150 MB)
        if module.endswith("proj_mlp"):
            assert not (b @ (a @ x)).any()
            continue
        expected = scales[module] * layers[f"{module}.lora_B.weight"] @ (layers[f"{module}.lora_A.weight"] @ x)
        assert torch.allclose(b @ (a @ x), expected, rtol=1e-5, atol=1e-3), module


def test_the_export_says_which_keys_diffusers_will_not_read_back(tmp_path, flux):
    """The family's default targets reach the single blocks' q, k, v (linear1, split by diffusers at FLUX.1's
    widths only), `all` reaches the embedders too (their converted keys lack the transformer. prefix)."""
    from diffusers import FluxPipeline

    from mmadapt.modalities.image.families import JOINT_ATTENTION

    pipe = FluxPipeline.from_pretrained(flux)
    stack = SimpleNamespace(pipe=pipe, unet=pipe.transformer, denoiser="transformer")
    random_lora(stack, [*JOINT_ATTENTION, "x_embedder"])
    save_lora(stack, tmp_path / "adapter" / ADAPTER_DIR)
    (tmp_path / "out").mkdir()
    with pytest.warns(UserWarning, match="cannot read lora_unet_img_in, lora_unet_single_blocks_0_linear1 "):
        export_lora(stack, tmp_path / "adapter", tmp_path / "out", "kohya")


def test_a_unet_lora_with_alpha_not_r_exports_as_kohya_to_the_trained_images(tmp_path):
    """SD 1.x (and SDXL): diffusers' converters; the scale alpha / r = 0.5 reaches the kohya file (in B, alpha = rank)."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from tests.fixtures.tiny import tiny_diffusion_pipeline

    folder = tiny_diffusion_pipeline(tmp_path / "sd")
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    stack = SimpleNamespace(pipe=pipe, unet=pipe.unet, denoiser="unet")
    random_lora(stack, ["to_q", "to_k", "to_v", "to_out.0"], alpha=2, std=0.6)  # scale 0.5
    in_memory = image(pipe)
    save_lora(stack, tmp_path / "adapter" / ADAPTER_DIR)
    (tmp_path / "out").mkdir()
    export_lora(stack, tmp_path / "adapter", tmp_path / "out", "kohya")
    alphas = {v.item() for k, v in load_file(str(tmp_path / "out" / KOHYA_WEIGHTS)).items() if k.endswith(".alpha")}
    assert alphas == {4.0}
    fresh = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    fresh.load_lora_weights(str(tmp_path / "out"), weight_name=KOHYA_WEIGHTS)
    assert np.abs(image(fresh) - in_memory).max() < 1e-5
    assert np.abs(image(StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)) - in_memory).max() > 0.05


def test_an_sd3_lora_is_refused_for_kohya_in_one_line_naming_the_diffusers_version(tmp_path):
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    model = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=16,
        pos_embed_max_size=8,
    )
    none = dict.fromkeys(["vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3"])
    pipe = StableDiffusion3Pipeline(transformer=model, scheduler=FlowMatchEulerDiscreteScheduler(), **none)
    stack = SimpleNamespace(pipe=pipe, unet=model, denoiser="transformer")
    random_lora(stack, ["to_q"])
    save_lora(stack, tmp_path / "adapter" / ADAPTER_DIR)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(
        ArtifactError, match=f"diffusers {diffusers.__version__} reads no kohya file for a SD3Transformer2DModel"
    ) as info:
        export_lora(stack, tmp_path / "adapter", out, "kohya")
    assert "\n" not in str(info.value) and not list(out.iterdir())
