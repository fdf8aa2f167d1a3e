"""``retrieval.mode: ip_adapter``: the retrieved reference conditions generation through an IP-Adapter.

Instead of starting img2img from the reference's pixels, the reference goes through the
IP-Adapter's CLIP image encoder and its image projection into extra cross-attention tokens
(decoupled cross-attention, Ye et al. 2023), so the image is generated from noise with the
reference's look. Everything is diffusers' own machinery: ``pipe.load_ip_adapter`` (the
h94/IP-Adapter layout: ``model/subfolder/weight_name`` plus ``image_encoder_folder``),
``pipe.set_ip_adapter_scale``, and ``ip_adapter_image=`` at call time (the predictor makes
one call per retrieved reference: diffusers gives a call's one image to all its prompts).

Supported: UNet pipelines with diffusers' ``IPAdapterMixin`` (SD 1.x/2.x, SDXL). Diffusers
has IP-Adapter loaders for SD3 and Flux too, with other signatures and image encoders
(SigLIP for SD3); they are not wired here, and such a pipeline is one line.

The IP-Adapter is loaded on the first generation, not at compose: a stack may still train
its UNet after retrieval (``retrieval+adapter``), and a UNet with an IP-Adapter loaded
refuses every call without image embeddings.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from pydantic import Field

from mmadapt.config import StrictModel
from mmadapt.errors import ModelError
from mmadapt.models.resolve import check_safetensors_only, resolve_model

FIELD = "strategies.retrieval.ip_adapter"


class IPAdapterConfig(StrictModel):
    model: str = Field(
        max_length=4096, description="the IP-Adapter: a hub id (e.g. h94/IP-Adapter) or a local folder in that layout"
    )
    subfolder: str = Field("models", max_length=1000, description="folder of the weights inside `model` ('' = its root)")
    weight_name: str = Field(
        "ip-adapter_sd15.safetensors",
        max_length=1000,
        pattern=r"\.safetensors$",
        description="the IP-Adapter weights file in `subfolder` (SDXL: sdxl_models / ip-adapter_sdxl.safetensors)",
    )
    image_encoder_folder: str = Field(
        "image_encoder",
        max_length=1000,
        description="the CLIP image encoder: a folder name inside `subfolder`, or a path with '/' inside `model`",
    )
    scale: float = Field(0.6, ge=0.0, le=2.0, description="weight of the reference's image tokens (0 = text only)")


def _unsupported(stack) -> str | None:
    """Why ``stack``'s pipeline cannot take an IP-Adapter here, or None."""
    from diffusers.loaders import IPAdapterMixin

    if stack.denoiser != "unet" or not isinstance(stack.pipe, IPAdapterMixin):
        return f"{type(stack.pipe).__name__} ({type(stack.unet).__name__}) takes no IP-Adapter in mmadapt"
    return None


def check_supported(stack) -> None:
    """One ModelError when ``stack``'s pipeline family takes no IP-Adapter here."""
    reason = _unsupported(stack)
    if reason:
        raise ModelError(
            reason,
            path=stack.recipe.base_model,
            fix="retrieval.mode ip_adapter supports SD 1.x/2.x and SDXL pipelines; use retrieval.mode img2img",
        )


def _mismatch(config: IPAdapterConfig, detail: str) -> ModelError:
    return ModelError(
        f"{FIELD}: the IP-Adapter {config.model!r} ({config.subfolder}/{config.weight_name}) does not fit the pipeline: {detail}",
        fix=f"name the IP-Adapter made for this base model family in {FIELD}.model / subfolder / weight_name",
    )


def locate(config: IPAdapterConfig) -> str:
    """Where ``config.model`` loads from (a hub id, or the folder made absolute); for a folder, its weights
    file and image encoder must be there: one line naming the recipe field if not."""
    try:
        location = resolve_model(config.model)
    except ModelError as exc:
        raise ModelError(f"{FIELD}.model: {exc.message}", path=config.model, fix=exc.fix) from None
    if Path(location).is_dir():
        sub = Path(location, config.subfolder)
        encoder = (
            Path(location, config.image_encoder_folder)
            if "/" in config.image_encoder_folder
            else sub / config.image_encoder_folder
        )
        for field, path in (("weight_name", sub / config.weight_name), ("image_encoder_folder", encoder)):
            if not path.exists():
                raise ModelError(
                    f"{FIELD}.{field}: {path} does not exist",
                    fix=f"check {FIELD}.subfolder / weight_name / image_encoder_folder against the folder's layout",
                )
        check_safetensors_only(location)
    return location


def load_ip_adapter(stack, config: IPAdapterConfig) -> None:
    """Load ``config``'s IP-Adapter into ``stack.pipe`` and check it fits (one line if not)."""
    import torch

    check_supported(stack)
    location = locate(config)
    pipe = stack.pipe
    try:
        pipe.load_ip_adapter(
            location,
            subfolder=config.subfolder or None,
            weight_name=config.weight_name,
            image_encoder_folder=config.image_encoder_folder,
            low_cpu_mem_usage=False,  # shape mismatches raise here, not as meta tensors later
        )
    except OSError as exc:  # not found (a hub id offline and not cached, a missing file)
        raise ModelError(
            f"{FIELD}: cannot load the IP-Adapter {config.model!r}: {_first_line(exc)}",
            fix=f"check {FIELD}.model / subfolder / weight_name / image_encoder_folder (offline: a hub id must be cached)",
        ) from None
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise _mismatch(config, _first_line(exc)) from None
    if getattr(pipe, "image_encoder", None) is None:
        raise _mismatch(config, f"no image encoder at {config.image_encoder_folder!r}")
    # the UNet's attention took the IP-Adapter's keys; the encoder and projection must agree too:
    # one tiny image through both, as the pipeline will do (diffusers checks only at generation)
    with torch.inference_mode():
        try:
            embeds = pipe.prepare_ip_adapter_image_embeds([Image.new("RGB", (8, 8))], None, pipe.device, 1, False)
            tokens = pipe.unet.encoder_hid_proj(embeds)[0]
        except (ValueError, RuntimeError) as exc:
            raise _mismatch(
                config, f"its image projection does not take the image encoder's output ({_first_line(exc)})"
            ) from None
    width = int(pipe.unet.config.cross_attention_dim)
    if tokens.shape[-1] != width:
        raise _mismatch(config, f"its image tokens are {tokens.shape[-1]}-wide, the UNet's cross-attention {width}")
    pipe.set_ip_adapter_scale(config.scale)


def _first_line(exc: BaseException) -> str:
    """The line of a loader's message that says what did not fit (torch puts it under a header line)."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()] or [type(exc).__name__]
    return next((x for x in lines if "mismatch" in x or "shape" in x), lines[0])[:240]
