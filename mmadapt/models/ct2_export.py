"""Write a transformers Whisper as a CTranslate2 Whisper folder, the layout faster-whisper loads.

The conversion is the ``ctranslate2`` package's own ``TransformersConverter`` (the optional extra
``mmadapt[ct2]``): the model (LoRA already merged by the caller) and its processor are saved as a
transformers folder in a temporary sibling of ``out_dir``, converted from there, and the files
faster-whisper reads beside ``model.bin`` and ``config.json`` are added: ``tokenizer.json`` (copied
by the converter) and ``preprocessor_config.json`` (the feature extractor: its mel count, 80 or 128;
transformers 5 keeps it inside ``processor_config.json``, which faster-whisper does not read).
Weights stay float32 unless ``quantization`` is given: CTranslate2 quantises at load time
(``compute_type="int8"``), so one folder serves every compute type.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mmadapt.errors import ModelError

FILES = ("model.bin", "config.json", "tokenizer.json", "preprocessor_config.json")


def require_ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise ModelError("the ctranslate2 package is not installed", fix="pip install 'mmadapt[ct2]'") from None
    return ctranslate2


def write_ct2_whisper(model, processor, out_dir: Path, quantization: str | None = None) -> Path:
    """Convert the plain (unwrapped, merged) Whisper ``model`` with ``processor`` into ``out_dir``
    (replaced if it exists); return it. The folder holds :data:`FILES`."""
    require_ctranslate2()
    from ctranslate2.converters import TransformersConverter

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.hf-", dir=out_dir.parent) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
        if not (Path(stage) / "tokenizer.json").is_file():
            raise ModelError("the Whisper tokenizer has no tokenizer.json", fix="use a fast (tokenizers) Whisper tokenizer")
        try:
            TransformersConverter(stage, copy_files=["tokenizer.json"]).convert(
                str(out_dir), quantization=quantization, force=True
            )
        except (ValueError, NotImplementedError, RuntimeError) as exc:
            raise ModelError(f"CTranslate2 could not convert the model: {exc}", fix="export --format transformers") from None
    processor.feature_extractor.to_json_file(str(out_dir / "preprocessor_config.json"))
    missing = [name for name in FILES if not (out_dir / name).is_file()]
    if missing:
        raise ModelError(f"the CTranslate2 folder lacks {', '.join(missing)}", path=out_dir, fix="report this conversion")
    return out_dir
