"""Batched, seeded generation for the image stack: text-to-image, or img2img from a retrieved reference,
or text-to-image conditioned on it through an IP-Adapter (``retrieval.mode: ip_adapter``).

Each prompt gets its own generator seeded from ``inference.seed`` and the prompt text, so
an image does not depend on which batch it was generated in (what is evaluated is what a
reloaded artifact gives for the same prompt and seed).
"""

from __future__ import annotations

import contextlib
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mmadapt.modalities.image.model import fresh_scheduler
from mmadapt.protocols import Prediction


def prompt_seed(seed: int, prompt: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(prompt.encode("utf-8"))) % 2**31


def resolution(stack) -> tuple[int, int]:
    """(width, height) the pipeline generates at."""
    cfg = stack.recipe.inference
    sample = getattr(stack.unet.config, "sample_size", None) or getattr(stack.pipe, "default_sample_size", None)
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    default = int(sample or 64) * int(getattr(stack.pipe, "vae_scale_factor", 8))
    return int(cfg.width or default), int(cfg.height or default)


MAX_SIDE = 2048  # the largest width or height a serve request's `size` may ask for


@dataclass(frozen=True)
class ImageRequest:
    """A prompt with its own ``width`` x ``height`` (serve's ``size``), instead of the recipe's."""

    prompt: str
    width: int
    height: int


def prompt_of(item) -> str:
    return item.prompt if isinstance(item, ImageRequest) else item


def parse_size(size) -> tuple[int, int]:
    """OpenAI's ``size`` ("256x256") as (width, height): each side a multiple of 8 up to :data:`MAX_SIDE`."""
    from mmadapt.errors import RequestError

    parts = size.lower().split("x") if isinstance(size, str) else []
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise RequestError(f"`size` {size!r} is not WIDTHxHEIGHT", fix='e.g. "512x512"')
    width, height = (int(p) for p in parts)
    if not all(8 <= side <= MAX_SIDE and side % 8 == 0 for side in (width, height)):
        raise RequestError(f"`size` {size} is not served: each side must be a multiple of 8 from 8 to {MAX_SIDE}",
                           fix='e.g. "512x512"')
    return width, height


class ImagePredictor:
    """Generate one image per prompt under the composed stack."""

    def __init__(self, stack):
        self.stack = stack
        self._img2img = None

    def img2img(self):
        """An image-to-image pipeline sharing the stack's components (and LoRA), with its own scheduler."""
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            stack = self.stack
            with warnings.catch_warnings():  # the constructor's "clip_sample not set" notice: handled just below
                warnings.simplefilter("ignore", FutureWarning)
                pipe = AutoPipelineForImage2Image.from_pipe(stack.pipe, requires_safety_checker=False)
            # a StableDiffusion* constructor rewrites the (shared) scheduler's clip_sample: give both their own
            stack.pipe.scheduler = fresh_scheduler(stack.scheduler_class, stack.scheduler_config)
            pipe.scheduler = fresh_scheduler(stack.scheduler_class, stack.scheduler_config)
            pipe.set_progress_bar_config(disable=True)
            self._img2img = pipe
        return self._img2img

    def ip_adapted(self):
        """The stack's pipeline with the retrieval's IP-Adapter loaded (once, on first use: see ip_adapter.py)."""
        if not self.stack.ip_adapter_loaded:
            from mmadapt.modalities.image.ip_adapter import load_ip_adapter

            load_ip_adapter(self.stack, self.stack.retriever.config.ip_adapter)
            self.stack.ip_adapter_loaded = True
        return self.stack.pipe

    def _from_references(self, hits, kwargs: dict, width: int, height: int):
        """Images for one batch from the best reference of each prompt's ``hits``, per ``retrieval.mode``."""
        retriever = self.stack.retriever
        if retriever.config.mode == "img2img":
            refs = [retriever.image(h[0].id) for h in hits]
            if (width, height) != resolution(self.stack):  # a request's own size: the references at it
                refs = [r.resize((width, height)) for r in refs]
            return self.img2img()(image=refs, strength=retriever.config.strength, **kwargs).images
        # diffusers repeats one IP-Adapter image over the whole batch of a call: one call per reference,
        # with the prompts that retrieved it (each keeps its own generator, so the batch does not matter)
        pipe = self.ip_adapted()
        groups: dict[str, list[int]] = {}
        for row, h in enumerate(hits):
            groups.setdefault(h[0].id, []).append(row)
        images: list = [None] * len(hits)
        for ident, rows in groups.items():
            part = {k: [v[r] for r in rows] if isinstance(v, list) else v for k, v in kwargs.items()}
            made = pipe(height=height, width=width, ip_adapter_image=retriever.image(ident), **part).images
            for row, image in zip(rows, made):
                images[row] = image
        return images

    def _kwargs(self, prompts: Sequence[str]) -> dict:
        stack, cfg = self.stack, self.stack.recipe.inference
        negative = stack.negative_prompt if stack.negative_prompt is not None else cfg.negative_prompt
        kwargs = dict(
            prompt=[stack.styled(p) for p in prompts],
            num_inference_steps=cfg.steps,
            guidance_scale=stack.guidance_scale if stack.guidance_scale is not None else cfg.guidance_scale,
            generator=[torch.Generator().manual_seed(prompt_seed(cfg.seed, p)) for p in prompts],
        )
        if negative:
            kwargs["negative_prompt"] = [negative] * len(prompts)
        return kwargs

    def predict(self, inputs: Sequence, *, progress: bool = False) -> list[Prediction]:
        # a full fine-tune scored while it trains (train.eval_every) has a float32 denoiser beside
        # model.dtype frozen parts: autocast joins them; a composed stack is one dtype and runs as is
        mixed = self.stack.unet.dtype != self.stack.dtype
        # on a shared pipeline (mmadapt serve) this version's LoRA alone is on (or none) while it generates
        shared = contextlib.nullcontext() if self.stack.shared is None else self.stack.shared.use(self.stack.adapter)
        with shared, torch.inference_mode(), torch.autocast("cpu", dtype=self.stack.dtype, enabled=mixed):
            return self._predict(inputs, progress=progress)

    def _predict(self, inputs: Sequence, *, progress: bool) -> list[Prediction]:
        """Prompts at the recipe's resolution; an :class:`ImageRequest` at its own (one group per size)."""
        default = resolution(self.stack)
        sizes = [(x.width, x.height) if isinstance(x, ImageRequest) else default for x in inputs]
        out: list[Prediction | None] = [None] * len(inputs)
        for size in dict.fromkeys(sizes):
            rows = [i for i, s in enumerate(sizes) if s == size]
            for i, prediction in zip(rows, self._generate([prompt_of(inputs[i]) for i in rows], *size, progress=progress)):
                out[i] = prediction
        return out  # type: ignore[return-value]

    def _generate(self, inputs: Sequence[str], width: int, height: int, *, progress: bool) -> list[Prediction]:
        stack, cfg = self.stack, self.stack.recipe.inference
        out: list[Prediction] = []
        batches = [list(inputs[i : i + cfg.batch_size]) for i in range(0, len(inputs), cfg.batch_size)]
        for batch in tqdm(batches, desc="generating", unit="batch", disable=not progress, leave=False):
            kwargs = self._kwargs(batch)
            if stack.retriever is None:
                images = stack.pipe(height=height, width=width, **kwargs).images
                out.extend(Prediction(im, sources=[], info={"prompt": p}) for im, p in zip(images, kwargs["prompt"]))
                continue
            hits = stack.retriever.retrieve(batch)
            images = self._from_references(hits, kwargs, width, height)
            for im, p, h in zip(images, kwargs["prompt"], hits):
                out.append(
                    Prediction(im, sources=[x.id for x in h], info={"prompt": p, "scores": [round(x.score, 4) for x in h]})
                )
        return out
