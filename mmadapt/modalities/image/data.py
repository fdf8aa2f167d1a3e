"""Image data: a folder of brand reference images (+ ``captions.jsonl``), the brand palette
(``palette.json``) and eval prompts (``prompts.jsonl`` of ``{"id", "prompt"}``).

Every reference image goes through :func:`read_image`, which either returns an RGB image
and the notes of what was converted (grayscale, CMYK, palette, 16-bit, transparency
composited over white, resized to the model's resolution) or raises a one-line
``DataError`` naming the file (corrupt, empty, not an image, too small, too large).

One parser per format (:func:`parse_references` with the captions, :func:`parse_palette`,
:func:`parse_prompts`) walks a file once, adds every problem to a list (with the
``captions.jsonl`` line where there is one) and returns what it could build;
:func:`read_data` runs them over a recipe's data, and both :func:`load_data` (raise on the
first errors) and :func:`validate_data` (report them all) use it, so a run and
``mmadapt data validate`` apply the same rules.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError

from mmadapt.engine import validate as v
from mmadapt.errors import DataError
from mmadapt.protocols import DataBundle, Example

if TYPE_CHECKING:  # pragma: no cover
    from mmadapt.recipe import Recipe

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MIN_SIDE = 8  # pixels: smaller images carry no usable style
MAX_SIDE = 8192  # pixels per side
MAX_PIXELS = 40_000_000  # width x height: larger images are refused before decoding (decompression bombs)
CAPTIONS_FILE = "captions.jsonl"


@dataclass
class Reference:
    """One brand reference image, loaded and converted to the model's resolution."""

    id: str  # the file name relative to the references folder
    path: str
    image: Image.Image
    caption: str | None
    notes: list[str] = field(default_factory=list)  # conversions applied on load
    line: int | None = None  # its line in captions.jsonl


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info)


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> tuple[Image.Image, list[str]]:
    """``(RGB image, notes)`` for an image file, resized (centre crop) to ``size`` = (width, height)
    when given; a one-line ``DataError`` for anything that is not a usable image."""
    path = Path(path)
    fix = "replace it with a valid RGB image (PNG or JPEG), or remove it"
    if not path.is_file():
        raise DataError("image not found", path=path, fix="check the file name")
    if path.stat().st_size == 0:
        raise DataError("empty image file (0 bytes)", path=path, fix=fix)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
                    raise DataError(
                        f"image is {width}x{height}; the limit is {MAX_SIDE} px a side and {MAX_PIXELS // 1_000_000} Mpx",
                        path=path,
                        fix="downscale it (it is resized to the model's resolution anyway)",
                    )
                opened.load()
                image = opened.copy()
                mode = opened.mode
    except DataError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        reason = (
            "not an image or corrupt"
            if isinstance(exc, UnidentifiedImageError)
            else f"corrupt or truncated image ({str(exc).splitlines()[0][:120]})"
        )
        raise DataError(reason, path=path, fix=fix) from None
    if min(width, height) < MIN_SIDE:
        raise DataError(f"image is {width}x{height}; references need at least {MIN_SIDE} px a side", path=path, fix=fix)
    notes: list[str] = []
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append(f"{mode} with transparency: composited over white")
        else:
            notes.append(f"{mode} (alpha fully opaque): alpha dropped")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    elif mode != "RGB":
        kind = {
            "L": "grayscale",
            "1": "1-bit",
            "P": "palette",
            "CMYK": "CMYK",
            "I;16": "16-bit grayscale",
            "I": "32-bit grayscale",
            "F": "float grayscale",
            "YCbCr": "YCbCr",
        }.get(mode, mode)
        if mode.startswith("I") or mode == "F":  # 16/32-bit: scale to 8 bit before RGB
            import numpy as np

            arr = np.asarray(image, dtype=np.float64)
            peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
            image = Image.fromarray(np.clip(np.round(arr / peak * 255.0), 0, 255).astype("uint8"), "L")
        image = image.convert("RGB")
        notes.append(f"{kind} image converted to RGB")
    if size is not None and image.size != tuple(size):
        if width < size[0] or height < size[1]:
            notes.append(f"{width}x{height} is smaller than {size[0]}x{size[1]}: upscaled")
        elif max(width, height) > 4 * max(size):
            notes.append(f"{width}x{height} downscaled to {size[0]}x{size[1]}")
        image = ImageOps.fit(image, tuple(size), method=Image.Resampling.LANCZOS)
    return image, notes


def captions_path(recipe: Recipe) -> Path | None:
    """``data.captions``, else ``captions.jsonl`` in the references folder if there is one, else None."""
    if recipe.data.captions:
        return recipe.path(recipe.data.captions)
    default = recipe.path(recipe.data.references) / CAPTIONS_FILE
    return default if default.is_file() else None


def _parse_captions(captions: Path, files: list[Path], folder: Path, problems: list[v.Problem]) -> dict[str, tuple[str | None, int]]:
    """Resolved image path -> (caption, line) of each usable ``captions.jsonl`` line; bad lines go to ``problems``."""
    out: dict[str, tuple[str | None, int]] = {}
    images = {f.resolve() for f in files}
    for number, record in v.scan_jsonl(captions, problems, what=CAPTIONS_FILE):
        name = record.get("file_name")
        if not isinstance(name, str) or not name:
            problems.append(v.error(captions, number, "'file_name' must be a non-empty string"))
            continue
        key = str((captions.parent / name).resolve())
        if key in out:
            problems.append(v.error(captions, number, f"duplicate file_name {name} (first at line {out[key][1]})", "one line per image"))
            continue
        caption = record.get("caption")
        out[key] = (((caption or "").strip() or None) if isinstance(caption, str) else None, number)
        if caption is not None and not isinstance(caption, str):
            problems.append(v.error(captions, number, f"'caption' of {name} must be a string"))
        elif not (caption or "").strip():
            problems.append(v.warning(captions, number, f"{name}: empty caption, auto-captioned with the style token for training"))
        if not (captions.parent / name).is_file():
            problems.append(
                v.error(captions, number, f"{name} does not exist", "fix file_name (relative to captions.jsonl) or drop the line")
            )
        elif (captions.parent / name).resolve() not in images:
            problems.append(
                v.error(captions, number, f"{name} is not an image in the references folder {folder}", "move it there or drop the line")
            )
    return out


def parse_references(
    folder: Path, captions: Path | None, problems: list[v.Problem], size: tuple[int, int] | None = None
) -> list[Reference]:
    """Every image under ``folder`` (through :func:`read_image`) with its caption (None where
    ``captions`` has none); every problem goes to ``problems``, at its captions.jsonl line where
    the image has one, else against the image file.

    Errors: no folder, no images, bad captions lines (JSON, file_name missing or not an image
    of the folder, duplicates), images :func:`read_image` refuses, the same image twice (by
    hash). Warnings: conversions (grayscale, CMYK, palette, 16-bit, transparency ...), an image
    without a caption (auto-captioned).
    """
    if not folder.is_dir():
        problems.append(
            v.error(folder, None, "data.references must be a folder of images", "point it at the folder of brand images")
        )
        files: list[Path] = []
    else:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            problems.append(v.error(folder, None, "no images in the references folder", f"add brand images ({', '.join(IMAGE_SUFFIXES)})"))
    records: dict[str, tuple[str | None, int]] = {}
    if captions is not None:
        records = _parse_captions(captions, files, folder, problems)
    elif files:
        problems.append(
            v.warning(folder, None, f"no {CAPTIONS_FILE}: every reference is auto-captioned with the style token for training")
        )
    refs: list[Reference] = []
    hashes: list[tuple[str, str, int | None]] = []
    for path in files:
        caption, line = records.get(str(path.resolve()), (None, None))
        where, at = (captions, line) if line else (path, None)
        try:
            image, notes = read_image(path, size)
        except DataError as exc:
            message = v.Problem.from_error(exc).message
            problems.append(v.error(where, at, f"{path.name}: {message}" if line else message, exc.fix))
            continue
        for note in notes:
            problems.append(v.warning(where, at, f"{path.name}: {note}" if line else note))
        if captions is not None and line is None:
            problems.append(v.warning(path, None, f"not in {captions.name}: auto-captioned with the style token for training"))
        # the same bytes twice would weigh one image double in training: cheap next to decoding it
        hashes.append((v.file_sha256(path), str(where), at))
        refs.append(Reference(str(path.relative_to(folder)), str(path), image, caption, notes, line))
    problems.extend(v.duplicates(hashes, "image (sha256)"))
    return refs


def read_references(folder: Path, captions: Path | None, size: tuple[int, int] | None) -> list[Reference]:
    """Every image under ``folder`` with its caption; one DataError naming the first problems if
    any image or captions line is unusable (see :func:`parse_references`)."""
    problems: list[v.Problem] = []
    refs = parse_references(folder, captions, problems, size)
    v.raise_errors(problems)
    return refs


def parse_prompts(path: Path, problems: list[v.Problem]) -> list[Example]:
    """Eval prompts: JSONL of ``{"id"?, "prompt"}``; every bad line (and duplicate id) goes to ``problems``."""
    examples: list[Example] = []
    ids: list[tuple[str, str, int | None]] = []
    for number, record in v.scan_jsonl(path, problems, what="the eval prompts"):
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(v.error(path, number, "'prompt' must be a non-empty string", "add the prompt text"))
            continue
        ident = str(record.get("id") or f"eval-{number}")
        ids.append((ident, str(path), number))
        examples.append(Example(ident, prompt.strip(), None, {k: val for k, val in record.items() if k not in ("id", "prompt")}))
    problems.extend(v.duplicates(ids))
    return examples


def read_prompts(path: Path) -> list[Example]:
    """Eval prompts; one DataError naming the first bad lines if any (see :func:`parse_prompts`)."""
    problems: list[v.Problem] = []
    examples = parse_prompts(path, problems)
    v.raise_errors(problems)
    return examples


def parse_palette(path: Path, problems: list[v.Problem]) -> list[tuple[int, int, int]] | None:
    """The brand palette (:func:`mmadapt.modalities.image.metrics.load_palette`, its one parser); None
    and the problem in ``problems`` when it is unusable."""
    from mmadapt.modalities.image.metrics import load_palette

    try:
        return load_palette(path)
    except DataError as exc:
        problems.append(v.Problem.from_error(exc, path))
        return None


def read_data(recipe: Recipe, *, thorough: bool = False) -> tuple[DataBundle | None, list[v.Problem]]:
    """Parse the recipe's references (+ captions), palette and eval prompts once: the bundle (None
    when any problem is an error; no fingerprint yet, see :func:`load_data`) and every problem.
    Image has no validation-only checks (every reference is decoded either way), so ``thorough``
    changes nothing here (it is the same signature as the other modalities')."""
    d = recipe.data
    problems: list[v.Problem] = []
    refs = parse_references(recipe.path(d.references), captions_path(recipe), problems)
    palette = parse_palette(recipe.path(d.palette), problems) if d.palette else None
    prompts = parse_prompts(recipe.path(d.eval), problems)
    if v.has_errors(problems):
        return None, problems
    train = [Example(r.id, r.caption, None, {"path": r.path}) for r in refs]
    return DataBundle(train, prompts, {"references": refs, "palette": palette, "data_config": d}), problems


def data_paths(recipe: Recipe) -> list[Path]:
    """Every data file or folder the recipe names (what the fingerprint covers), each once."""
    d = recipe.data
    paths = [recipe.path(d.references), captions_path(recipe), recipe.path(d.palette) if d.palette else None, recipe.path(d.eval)]
    return [Path(p) for p in dict.fromkeys(p for p in paths if p)]


def load_data(recipe: Recipe) -> DataBundle:
    """The recipe's data, or one DataError for the first errors (warnings do not stop a run)."""
    return v.bundle_or_raise(*read_data(recipe), data_paths(recipe))


def validate_data(recipe: Recipe) -> list[v.Problem]:
    """Every problem of the references, captions, palette and prompts, with file and line.

    Errors: corrupt, empty, non-image, smaller than 8 px or larger than 8192 px / 40 Mpx
    references; bad captions lines (JSON, file_name missing or not an image of the
    folder, duplicates); an unreadable palette; bad or duplicate prompts; the same image
    twice (by hash). Warnings: grayscale / CMYK / palette / 16-bit images (converted to RGB),
    transparency (composited over white), references without a caption (auto-captioned).
    """
    return read_data(recipe, thorough=True)[1]
