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

from mmadapt.modalities.image import metrics as image_metrics
from mmadapt.modalities.image.adapter import ImageAdapterStrategy
from mmadapt.modalities.image.config import ImageData, ImageEvaluator, ImageInference
from mmadapt.modalities.image.data import CAPTIONS_FILE, read_prompts, read_references
from mmadapt.modalities.image.full import ImageFullStrategy
from mmadapt.modalities.image.model import ImageStack, load_pipeline
from mmadapt.modalities.image.predict import ImagePredictor
from mmadapt.modalities.image.prompt import ImagePromptStrategy
from mmadapt.modalities.image.retrieval import ImageRetrievalStrategy, load_clip
from mmadapt.modalities.text.data import fingerprint
from mmadapt.protocols import DataBundle, Example, Modality, Prediction

METRICS = ("palette_adherence", "clip_i", "clip_t")
SAMPLES_DIR = "samples"
CONTACT_SHEET = "contact_sheet.png"


def captions_path(recipe) -> Path | None:
    if recipe.data.captions:
        return recipe.path(recipe.data.captions)
    default = recipe.path(recipe.data.references) / CAPTIONS_FILE
    return default if default.is_file() else None


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

    def load_data(self, recipe) -> DataBundle:
        from mmadapt.modalities.image.metrics import load_palette

        d = recipe.data
        folder = recipe.path(d.references)
        captions = captions_path(recipe)
        refs = read_references(folder, captions, None)
        prompts = read_prompts(recipe.path(d.eval))
        palette = load_palette(recipe.path(d.palette)) if d.palette else None
        train = [Example(r.id, r.caption, None, {"path": r.path}) for r in refs]
        paths = [p for p in (folder, captions, recipe.path(d.palette) if d.palette else None, recipe.path(d.eval)) if p]
        digest, files = fingerprint([Path(p) for p in dict.fromkeys(paths)])
        return DataBundle(train, prompts, {"references": refs, "palette": palette, "data_config": d}, digest, files)

    def validate_data(self, recipe) -> list:
        """Every problem of the references, captions, palette and prompts, with file and line.

        Errors: corrupt, empty, non-image, smaller than 8 px or larger than 8192 px / 40 Mpx
        references; bad captions lines (JSON, file_name missing or not an image of the
        folder, duplicates); an unreadable palette; bad or duplicate prompts. Warnings:
        grayscale / CMYK / palette / 16-bit images (converted to RGB), transparency
        (composited over white), references without a caption (auto-captioned), the same
        image twice (by hash).
        """
        from mmadapt.engine import validate as v
        from mmadapt.errors import DataError
        from mmadapt.modalities.image.data import read_image, reference_files
        from mmadapt.modalities.image.metrics import load_palette

        problems: list = []
        d = recipe.data
        folder = recipe.path(d.references)
        try:
            files = reference_files(folder)
        except DataError as exc:
            files = []
            problems.append(v.Problem.from_error(exc))
        else:
            if not files:
                problems.append(v.error(folder, None, "no images in the references folder", "add brand images (.png, .jpg ...)"))
        captions = captions_path(recipe)
        lines: dict[str, int] = {}
        if captions is not None:
            for number, record in v.scan_jsonl(captions, problems, what="captions.jsonl"):
                name = record.get("file_name")
                if not isinstance(name, str) or not name:
                    problems.append(v.error(captions, number, "'file_name' must be a non-empty string"))
                    continue
                key = str((captions.parent / name).resolve())
                if key in lines:
                    problems.append(
                        v.error(
                            captions, number, f"duplicate file_name {name} (first at line {lines[key]})", "one line per image"
                        )
                    )
                    continue
                lines[key] = number
                caption = record.get("caption")
                if caption is not None and not isinstance(caption, str):
                    problems.append(v.error(captions, number, f"'caption' of {name} must be a string"))
                elif not (caption or "").strip():
                    problems.append(
                        v.warning(captions, number, f"{name}: empty caption, auto-captioned with the style token for training")
                    )
                if not (captions.parent / name).is_file():
                    problems.append(
                        v.error(
                            captions,
                            number,
                            f"{name} does not exist",
                            "fix file_name (relative to captions.jsonl) or drop the line",
                        )
                    )
                elif (captions.parent / name).resolve() not in {f.resolve() for f in files}:
                    problems.append(
                        v.error(
                            captions,
                            number,
                            f"{name} is not an image in the references folder {folder}",
                            "move it there or drop the line",
                        )
                    )
        elif files:
            problems.append(
                v.warning(
                    folder, None, f"no {CAPTIONS_FILE}: every reference is auto-captioned with the style token for training"
                )
            )
        hashes = []
        for path in files:
            line = lines.get(str(path.resolve()))
            where, at = (captions, line) if line else (path, None)
            try:
                _image, notes = read_image(path)
            except DataError as exc:
                problem = v.Problem.from_error(exc)
                problems.append(v.error(where, at, f"{path.name}: {problem.message}" if line else problem.message, exc.fix))
                continue
            for note in notes:
                problems.append(v.warning(where, at, f"{path.name}: {note}" if line else note))
            if captions is not None and line is None:
                problems.append(
                    v.warning(path, None, f"not in {captions.name}: auto-captioned with the style token for training")
                )
            hashes.append((v.file_sha256(path), str(where), at))
        problems.extend(p for p in v.duplicates(hashes, "image (sha256)"))
        if d.palette:
            try:
                load_palette(recipe.path(d.palette))
            except DataError as exc:
                problems.append(v.Problem.from_error(exc))
        prompts = recipe.path(d.eval)
        ids = []
        for number, record in v.scan_jsonl(prompts, problems, what="the eval prompts"):
            if not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
                problems.append(v.error(prompts, number, "'prompt' must be a non-empty string", "add the prompt text"))
                continue
            ids.append((str(record.get("id") or f"eval-{number}"), str(prompts), number))
        problems.extend(v.duplicates(ids))
        return problems

    def new_stack(self, recipe) -> ImageStack:
        pipe, info = load_pipeline(recipe.base_model, trust_remote_code=recipe.trust_remote_code)
        return ImageStack(recipe, pipe, info)

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

    def retrieval_source(self, recipe) -> str | None:
        return recipe.data.references

    def drift_texts(self, examples: Sequence[Example]) -> list[str]:
        """An image request stands for its prompt text (a reference: its caption)."""
        return [str(e.input or "") for e in examples]

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
        lines = [f"prompt: {input}", f"image: {prediction.output.width}x{prediction.output.height} px"]
        if prediction.sources:
            lines.append(f"   references: {', '.join(prediction.sources)}")
        return "\n".join(lines)
