"""Export a saved artifact for serving stacks that do not load adapters.

``export(version_dir, out_dir, merge=True)`` rebuilds the composed stack of a version and
asks its modality to write one self-contained model folder (``Modality.export_model``):
a LoRA is merged into the base weights (peft ``merge_and_unload``), full fine-tuned
weights are written as they are, the tokenizer / processor goes beside them, safetensors
only. What no weight can hold — a system prompt, a retrieval index — is copied from the
version into ``mmadapt/<part>/`` next to the model, and ``mmadapt/export.json`` records
the source version, its recipe hash, and what was merged and what was copied.

The folder is written like an artifact: in a temporary sibling renamed into place when
complete, so a failed export leaves nothing behind. The result loads with plain
``from_pretrained`` and is a valid ``base_model:`` for another recipe. Another ``format`` a
modality declares in ``export_formats`` (speech: ``ct2``, a CTranslate2 folder for
faster-whisper) is written the same way, with the same ``mmadapt/`` sidecar.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mmadapt.engine.artifact import read_manifest
from mmadapt.errors import ArtifactError
from mmadapt.protocols import get_modality

EXPORT_INFO = "export.json"
SIDECAR = "mmadapt"


def merge_adapters(model) -> tuple[Any, list[str]]:
    """``(plain model, what was merged)``: a peft LoRA folded into the base weights.

    A peft method that adds no weights to merge (prompt tuning's virtual tokens live in the
    input, not in a layer) cannot be exported as a plain model: a one-line error says so.
    """
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return model, []
    if not isinstance(model, PeftModel):
        return model, []
    kinds = sorted({str(getattr(cfg, "peft_type", "?")).split(".")[-1] for cfg in model.peft_config.values()})
    if any(kind != "LORA" for kind in kinds):
        raise ArtifactError(
            f"a {'/'.join(k.lower() for k in kinds)} adapter cannot be merged into the base weights",
            fix="serve it with peft from the version's adapter/ folder, or export without --merge, or train method: lora",
        )
    return model.merge_and_unload(), [f"lora ({name})" for name in model.peft_config]


def save_model_folder(model, out_dir: Path, *companions) -> list[str]:
    """Save ``model`` (adapters merged) and its tokenizer/processor ``companions`` as one folder."""
    plain, merged = merge_adapters(model)
    plain.save_pretrained(out_dir, safe_serialization=True)
    for companion in companions:
        companion.save_pretrained(out_dir)
    return merged


def export(
    version_dir: str | Path, out_dir: str | Path, *, merge: bool = True, format: str | None = None, progress: bool = False
) -> Path:
    """Write ``out_dir`` from the version in ``version_dir``; return ``out_dir``.

    With ``merge`` the modality writes a merged model folder in ``format`` (one of its
    ``export_formats``, the first by default: ``transformers``, or e.g. speech's ``ct2``); without
    it, only the version's parts are copied (the adapter stays a peft folder) under ``mmadapt/``.
    A ``format`` among the modality's ``adapter_formats`` (image: ``diffusers``, ``kohya``) writes
    the trained adapter in that tool's layout (``Modality.export_adapter``) instead of a merged model.
    """
    from mmadapt.engine.runner import load_artifact

    version_dir, out = Path(version_dir), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArtifactError("the export folder exists and is not empty", path=out, fix="name a new folder or remove it")
    manifest = read_manifest(version_dir)  # the format is checked before any weights load
    modality = get_modality(manifest["recipe"]["modality"])
    if format is not None and format not in (*modality.export_formats, *modality.adapter_formats):
        raise ArtifactError(
            f"the {modality.name} modality cannot export --format {format}",
            fix=f"use one of: {', '.join((*modality.export_formats, *modality.adapter_formats))}",
        )
    if format is not None and format not in modality.adapter_formats and not merge:
        raise ArtifactError(f"--format {format} writes a merged model", fix=f"drop --no-merge, or export --format {modality.export_formats[0]}")
    loaded = load_artifact(version_dir)
    model_format = format if format in modality.export_formats else modality.export_formats[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        info: dict[str, Any] = {
            "format": 1,
            "source": str(version_dir.resolve()),
            "name": loaded.manifest.get("name"),
            "version": loaded.manifest.get("version"),
            "recipe_hash": loaded.manifest.get("recipe_hash"),
            "modality": loaded.recipe.modality,
            "stack": loaded.recipe.stack,
            "base_model": loaded.recipe.base_model,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "model_format": None if format in modality.adapter_formats or not merge else model_format,
            "merged": [],
            "copied": [],
        }
        if format in loaded.modality.adapter_formats:
            info["adapter_format"] = format
            info["written"] = loaded.modality.export_adapter(loaded.stack, version_dir, tmp, format)
        elif merge:
            info["merged"] = loaded.modality.export_model(loaded.stack, tmp, model_format)
        sidecar = tmp / SIDECAR
        sidecar.mkdir()
        for name in loaded.recipe.stack:
            strategy = loaded.modality.strategies[name]
            if (merge or format in modality.adapter_formats) and strategy.trains:
                continue  # its weights are in the merged model / the exported adapter
            shutil.copytree(version_dir / name, sidecar / name)
            info["copied"].append(name)
        (sidecar / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
