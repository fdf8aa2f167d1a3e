"""The image modality: a diffusion pipeline adapted to a brand's look by prompt, retrieval, LoRA or full fine-tuning.

Data: a folder of brand reference images (``captions.jsonl`` beside them, optional), the
brand palette (``palette.json``) and eval prompts (``prompts.jsonl``). Metrics (see
:mod:`mmadapt.modalities.image.metrics`): ``palette_adherence`` (CIELAB, weight-free),
``clip_i`` (mean CLIP cosine to the references: style consistency) and ``clip_t``
(CLIP cosine to the eval prompt as written, without any style template: does the image
still show what was asked). The judge CLIP is ``data.evaluator.clip``. Each run writes
its samples and a contact sheet beside ``predictions.jsonl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmadapt.errors import ArtifactError, RequestError
from mmadapt.modalities.image import data as image_data
from mmadapt.modalities.image import metrics as image_metrics
from mmadapt.modalities.image.adapter import DiffusersLoras, ImageAdapterStrategy, export_lora, fuse_and_save
from mmadapt.modalities.image.config import ImageData, ImageEvaluator, ImageInference
from mmadapt.modalities.image.full import ImageFullStrategy
from mmadapt.modalities.image.model import DENOISERS, ImageStack, cast_frozen_parts, load_pipeline, torch_dtype
from mmadapt.modalities.image.predict import ImagePredictor, ImageRequest, parse_size, prompt_of, resolution
from mmadapt.modalities.image.prompt import ImagePromptStrategy
from mmadapt.modalities.image.retrieval import ImageRetrievalStrategy, load_clip
from mmadapt.protocols import DataBundle, Example, GuardSurface, Modality, Prediction, ServeRequest, Stack

METRICS = ("palette_adherence", "clip_i", "clip_t")
SAMPLES_DIR = "samples"
CONTACT_SHEET = "contact_sheet.png"


class ImageModality(Modality):
    name = "image"
    strategies = {
        "prompt": ImagePromptStrategy,
        "retrieval": ImageRetrievalStrategy,
        "adapter": ImageAdapterStrategy,
        "full": ImageFullStrategy,
    }
    inference_model = ImageInference
    data_model = ImageData
    metrics = METRICS
    default_metrics = METRICS
    primary_metric = "palette_adherence"
    lower_is_better = frozenset()
    input_keys = ("prompt", "input", "text")
    api_endpoint = "images.generations"
    guard_surface = GuardSurface(words="input", output_text=False, escalation=False)  # prompts checked before generating

    def guard_output(self, message: str, stack: Stack) -> Any:
        """A refused prompt gets a plain grey image of the recipe's size (the message is in ``info["guard"]``)."""
        from PIL import Image

        return Image.new("RGB", resolution(stack), (128, 128, 128))

    def load_data(self, recipe) -> DataBundle:
        return image_data.load_data(recipe)

    def validate_data(self, recipe) -> list:
        """Every problem of the references, captions, palette and prompts, with file and line (see engine/validate.py)."""
        return image_data.validate_data(recipe)

    def new_stack(self, recipe) -> ImageStack:
        import torch

        dtype = torch_dtype(recipe.model.dtype)
        trained = "full" in recipe.strategies  # full fine-tuning trains the denoiser's own float32 weights
        dtypes = {"default": dtype, **({d: torch.float32 for d in DENOISERS} if trained else {})} if dtype != torch.float32 else dtype
        pipe, info = load_pipeline(recipe.base_model, trust_remote_code=recipe.trust_remote_code, dtype=dtypes)
        if dtype != torch.float32:  # a loader that took no dtype (the embedded pipeline): cast after loading
            cast_frozen_parts(pipe, dtype, denoiser=info["denoiser"] if trained else None)
        return ImageStack(recipe, pipe, info)

    def base_key(self, recipe) -> tuple | None:
        """Shared unless a `full` part owns the denoiser's weights."""
        return None if "full" in recipe.stack else ("image", recipe.base_model, recipe.trust_remote_code)

    def share_stack(self, recipe, base: ImageStack | None) -> ImageStack:
        """One pipeline for every version on this base; their LoRAs load into it as diffusers named adapters."""
        from mmadapt.engine.shared import SharedBase

        if base is None:
            stack = self.new_stack(recipe)
            stack.shared = SharedBase(stack.pipe, DiffusersLoras())
            return stack
        stack = ImageStack(recipe, base.shared.model, base.base_info)
        stack.scheduler_class, stack.scheduler_config = base.scheduler_class, base.scheduler_config  # as loaded
        stack.shared = base.shared
        return stack

    def predictor(self, stack: ImageStack) -> ImagePredictor:
        return ImagePredictor(stack)

    def score(
        self, predictions: list[Prediction], examples: list[Example], metrics: Sequence[str], data: DataBundle
    ) -> list[dict[str, Any]]:
        from mmadapt.errors import DataError

        images = [p.output for p in predictions]
        prompts = [e.input for e in examples]
        recipe_data = data.resources.get("data_config")
        evaluator = recipe_data.evaluator if recipe_data is not None else ImageEvaluator()
        columns: dict[str, list[float]] = {}
        if "palette_adherence" in metrics:
            palette = data.resources.get("palette")
            if not palette:
                raise DataError(
                    "palette_adherence needs the brand palette", fix="set data.palette, or drop the metric from eval.metrics"
                )
            columns["palette_adherence"] = image_metrics.palette_adherence_scores(
                images, palette, max_delta_e=evaluator.max_delta_e
            )
        if "clip_i" in metrics or "clip_t" in metrics:
            judge = load_clip(evaluator.clip)
            if "clip_i" in metrics:
                columns["clip_i"] = image_metrics.clip_i_scores(images, [r.image for r in data.resources["references"]], judge)
            if "clip_t" in metrics:
                columns["clip_t"] = image_metrics.clip_t_scores(images, prompts, judge)
        rows = []
        for n, (pred, ex) in enumerate(zip(predictions, examples)):
            row: dict[str, Any] = {"id": ex.id, "prompt": ex.input, "generated_from": pred.info.get("prompt", ex.input)}
            row.update({m: round(float(values[n]), 6) for m, values in columns.items()})
            row["references_used"] = pred.sources
            rows.append(row)
        return rows

    def write_samples(self, predictions: list[Prediction], rows: list[dict[str, Any]], folder: Path) -> list[str]:
        """Each generated image as ``samples/<id>.png`` and a contact sheet of all of them (first in the list)."""
        out = folder / SAMPLES_DIR
        out.mkdir(parents=True, exist_ok=True)
        files = []
        for pred, row in zip(predictions, rows):
            name = f"{SAMPLES_DIR}/{''.join(c if c.isalnum() or c in '-_' else '_' for c in str(row['id']))}.png"
            pred.output.save(folder / name, format="PNG")
            row["image"] = name
            files.append(name)
        captions = [f"{r['id']}: {r['prompt']}" for r in rows]
        image_metrics.contact_sheet(
            [p.output for p in predictions], captions, out / CONTACT_SHEET, columns=8, scale=4, caption_height=36
        )
        return [f"{SAMPLES_DIR}/{CONTACT_SHEET}", *files]

    def derived_slices(self, data: DataBundle) -> dict[str, list[str]]:
        """``prompt_seen``: ``seen`` when an eval prompt's text is written in some reference caption (the
        scene was trained on), else ``unseen``."""
        captions = [" ".join(str(e.input).lower().split()) for e in data.train]
        prompts = (" ".join(str(e.input).lower().split()) for e in data.eval)
        return {"prompt_seen": ["seen" if any(p in c for c in captions) else "unseen" for p in prompts]}

    export_formats = ("pipeline",)  # a merged model: the diffusers pipeline folder with the LoRA fused
    adapter_formats = ("diffusers", "kohya")  # the LoRA alone, as load_lora_weights or kohya / ComfyUI read it

    def export_model(self, stack: ImageStack, out_dir: Path, format: str = "pipeline") -> list[str]:
        """The composed pipeline as one diffusers folder (a LoRA fused in; full weights as trained)."""
        return fuse_and_save(stack, out_dir)

    def export_adapter(self, stack: ImageStack, version_dir: Path, out_dir: Path, fmt: str) -> list[str]:
        """The version's LoRA as ``diffusers`` (``load_lora_weights``) or ``kohya`` (ComfyUI / A1111) file."""
        if "adapter" not in stack.recipe.stack:
            raise ArtifactError("this version has no trained LoRA (no adapter in its stack)", path=version_dir, fix="export it with --merge")
        return export_lora(stack, version_dir / "adapter", out_dir, fmt)

    def retrieval_source(self, recipe) -> str | None:
        return recipe.data.references

    def drift_texts(self, examples: Sequence[Example]) -> list[str]:
        """An image request stands for its prompt text (a reference: its caption)."""
        return [str(prompt_of(e.input) or "") for e in examples]

    def guard_words(self, input: Any) -> list[str]:
        """The prompt, whether it comes alone or with a request's own size."""
        return [prompt_of(input)] if isinstance(prompt_of(input), str) else []

    def drift_terms(self, data: DataBundle) -> list[str]:
        return []

    def drift_embedder(self, recipe) -> str | None:
        return None  # the retrieval embedder is a CLIP for images; prompts are compared as plain text

    def output_json(self, output: Any, index: int, files_dir: Path) -> Any:
        """A generated image is written as ``files_dir/NNNNNN.png``; the line holds its path."""
        files_dir.mkdir(parents=True, exist_ok=True)
        target = files_dir / f"{index:06d}.png"
        output.save(target, format="PNG")
        return str(target)

    def show(self, input: Any, prediction: Prediction) -> str:
        lines = [f"prompt: {prompt_of(input)}", f"image: {prediction.output.width}x{prediction.output.height} px"]
        if prediction.sources:
            lines.append(f"   references: {', '.join(prediction.sources)}")
        return "\n".join(lines)

    def serve_inputs(self, request: ServeRequest) -> list:
        """The prompt once per image asked for (``n``). Images are seeded by ``inference.seed`` and the
        prompt, so ``n`` copies of one prompt are the same image; ``size`` ("WIDTHxHEIGHT", each side a
        multiple of 8 up to ``MAX_SIDE``) generates at that size instead of the recipe's resolution."""
        prompt = request.fields.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError("`prompt` must be a non-empty string")
        if request.fields.get("response_format") not in (None, "b64_json"):
            raise RequestError(f"response_format {request.fields['response_format']!r} is not served", fix="ask for b64_json")
        n = int(request.fields.get("n") or 1)
        if request.fields.get("size") is None:
            return [prompt] * n
        return [ImageRequest(prompt, *parse_size(request.fields["size"]))] * n

    def serve_payload(self, predictions: list[Prediction], request: ServeRequest) -> dict[str, Any]:
        import base64
        import io

        data = []
        for p in predictions:
            buffer = io.BytesIO()
            p.output.save(buffer, format="PNG")
            data.append({"b64_json": base64.b64encode(buffer.getvalue()).decode("ascii"), "revised_prompt": p.info.get("prompt")})
        return {"data": data, "mmadapt": {"references": [p.sources for p in predictions]}}
