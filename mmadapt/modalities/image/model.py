"""Loading a diffusers text-to-image pipeline for the image modality, and the image stack.

Any diffusers text-to-image pipeline loads: ``embedded:shapes-diffusion`` (through
:func:`mmadapt.models.shapes.load_shapes_pipeline`, which restores its x0-clipping
sampler), a hub id (from the local Hugging Face cache when offline) or a local folder
(``AutoPipelineForText2Image``, falling back to ``DiffusionPipeline``; a saved scheduler
that clips x0 to a range it chose keeps that clipping, see :func:`restore_chosen_clipping`). The *denoiser*
is whatever the pipeline calls it: ``pipe.unet`` (SD 1.x/2.x, SDXL) or
``pipe.transformer`` (SD3, Flux, PixArt ...).

``model.dtype: bf16`` (or fp16) is the dtype of the FROZEN parts, as diffusers' training scripts
use ``weight_dtype``: the VAE, the text encoders and the denoiser's base weights are cast to it
after loading; what trains stays float32 (a LoRA's weights, :mod:`.adapter`; a recipe with
``full`` keeps the denoiser float32 while it trains and runs the result in the dtype, :mod:`.full`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mmadapt.errors import ModelError
from mmadapt.models.resolve import check_safetensors_only, load_error, pickle_trusted, resolve_model
from mmadapt.protocols import Stack

DENOISERS = ("unet", "transformer")
EMBEDDED_SHAPES = "embedded:shapes-diffusion"


def denoiser_name(pipe) -> str:
    """``"unet"`` or ``"transformer"``: the attribute of ``pipe`` that holds the denoiser."""
    for name in DENOISERS:
        if getattr(pipe, name, None) is not None:
            return name
    raise ModelError(f"{type(pipe).__name__} has neither a unet nor a transformer", fix="use a text-to-image diffusion pipeline")


def load_pipeline(ref: str, *, trust_remote_code: bool = False, allow_pickle: bool | None = None, dtype=None):
    """(pipeline, info) for an embedded alias, hub id or local folder; CPU, no safety checker; float32,
    or ``dtype`` (a torch dtype, or diffusers' per-component dict with a ``"default"``) for a folder or hub id."""
    import torch

    if ref == EMBEDDED_SHAPES:
        from mmadapt.models.shapes import embedded_shapes_diffusion, load_shapes_pipeline

        location = str(embedded_shapes_diffusion())
        pipe = load_shapes_pipeline(Path(location))
    else:
        from diffusers import AutoPipelineForText2Image, DiffusionPipeline

        location = resolve_model(ref)
        allow_pickle = pickle_trusted(allow_pickle)
        check_safetensors_only(location, allow_pickle=allow_pickle)
        if Path(location).is_dir() and not (Path(location) / "model_index.json").is_file():
            raise ModelError(
                "not a diffusers pipeline folder (no model_index.json)",
                path=ref,
                fix="point base_model at a folder saved with pipeline.save_pretrained()",
            )
        kwargs = dict(
            dtype=dtype or torch.float32,
            safety_checker=None,
            requires_safety_checker=False,
            use_safetensors=None if allow_pickle else True,
            trust_remote_code=trust_remote_code,
        )
        try:
            try:
                pipe = AutoPipelineForText2Image.from_pretrained(location, **kwargs)
            except ValueError as exc:  # a pipeline class AutoPipeline does not map: the generic loader
                if "AutoPipeline" not in str(exc):
                    raise
                pipe = DiffusionPipeline.from_pretrained(location, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as exc:
            raise load_error(ref, exc) from None
        restore_chosen_clipping(pipe, location)
    name = denoiser_name(pipe)
    pipe.set_progress_bar_config(disable=True)
    index = Path(location) / "model_index.json"
    denoiser = getattr(pipe, name)
    info = {
        "resolved": location,
        "pipeline": type(pipe).__name__,
        "denoiser": name,
        "revision": hashlib.sha256(index.read_bytes()).hexdigest()[:16] if index.is_file() else None,
        "parameters": int(sum(p.numel() for p in denoiser.parameters())),
    }
    return pipe, info


def restore_chosen_clipping(pipe, location: str) -> None:
    """Give ``pipe`` back the x0 clipping its saved scheduler config chose.

    ``StableDiffusionPipeline.__init__`` (and its img2img/inpaint siblings) turn any
    scheduler's ``clip_sample`` off: a fix for old Stable Diffusion configs that carried
    DDIM's default ``clip_sample: true`` (range 1) by mistake. A config that sets a
    ``clip_sample_range`` other than that default asked for clipping on purpose (e.g. a
    retrained ``shapes-diffusion`` folder: its small model's first steps predict x0 far
    outside the latent range), so its scheduler is rebuilt from the saved config.
    """
    saved = Path(location) / "scheduler" / "scheduler_config.json"
    if not saved.is_file() or getattr(pipe.scheduler.config, "clip_sample", True):
        return
    try:
        config = json.loads(saved.read_text())
    except (OSError, ValueError):
        return
    if config.get("clip_sample") is True and config.get("clip_sample_range", 1.0) != 1.0:
        pipe.scheduler = type(pipe.scheduler).from_config(config)


def fresh_scheduler(scheduler_class, config):
    """A new scheduler from a saved config (pipelines' constructors rewrite a shared scheduler's config)."""
    return scheduler_class.from_config(dict(config))


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name: str):
    """The torch dtype of a recipe's ``model.dtype``."""
    import torch

    return getattr(torch, DTYPES[name])


def cast_frozen_parts(pipe, dtype, *, denoiser: str | None) -> None:
    """Every torch module of ``pipe`` (VAE, text encoders, image encoder ...) to ``dtype``, and the
    denoiser too unless ``denoiser`` names it (it is trained in full, in float32)."""
    import torch

    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and name != denoiser:
            if any(p.is_floating_point() and p.dtype != dtype for p in component.parameters()):
                component.to(dtype=dtype)


class ImageStack(Stack):
    """Live state of an image stack: the pipeline, a style template, a reference retriever."""

    def __init__(self, recipe, pipe, base_info):
        super().__init__(recipe, base_info)
        self.pipe = pipe
        self.denoiser = base_info["denoiser"]
        # the scheduler as loaded: derived pipelines (img2img) get their own copy of it
        self.scheduler_class = type(pipe.scheduler)
        self.scheduler_config = json.loads(json.dumps(dict(pipe.scheduler.config), default=list))
        self.template: str | None = None  # "{prompt}, zentrix style" (prompt strategy)
        self.negative_prompt: str | None = None
        self.guidance_scale: float | None = None
        self.retriever = None  # ReferenceRetriever (retrieval strategy)
        self.ip_adapter_loaded = False  # retrieval.mode ip_adapter: loaded into pipe on first generation
        self.lora_scale: float | None = None  # set when a LoRA is loaded (adapter strategy)
        self.shared = None  # engine.shared.SharedBase when this stack shares its pipeline (mmadapt serve)
        self.adapter: str | None = None  # the named LoRA of the shared pipeline this stack answers with
        self.dtype = torch_dtype(recipe.model.dtype)  # the frozen parts' (model.dtype)

    @property
    def unet(self):
        return getattr(self.pipe, self.denoiser)

    def styled(self, prompt: str) -> str:
        return self.template.format(prompt=prompt) if self.template else prompt
