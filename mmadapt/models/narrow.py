"""16-bit copies of the float32 folders mmadapt converts, so a bf16/fp16 base loads from 16-bit weights.

The embedded models are dequantised once into float32 safetensors (models/embedded.py). Loading one
with ``model.dtype: bf16`` made transformers map the whole float32 file while it built the bf16 copy:
the load peaked at runtime + float32 file + bf16 weights, above the bf16 training peak with gradient
checkpointing on. :func:`narrowed` returns a cached copy of such a folder whose float32 tensors are
stored in the 16-bit dtype (``tensor.to(dtype)``, the cast ``from_pretrained(dtype=...)`` applies
itself, so the loaded weights are the same bits), built once through :func:`~mmadapt.models.cache.cached_build`
(temporary sibling, renamed into place, verified by sha256). Every other file is copied unchanged.

Only folders inside mmadapt's own cache are narrowed: a hub or local model is loaded as it is (no copy
of a user's model is written uninvited).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from mmadapt.models.cache import HASHES_FILE, cache_dir, cached_build

NARROW = {"bf16": "bfloat16", "fp16": "float16"}


def _float32_weights(folder: Path) -> list[Path]:
    """The folder's safetensors files when every floating tensor in them is float32 ([] otherwise)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            dtypes = {handle.get_slice(key).get_dtype() for key in handle.keys()}
        if not dtypes & {"F32"} or dtypes & {"F16", "BF16", "F64"}:
            return []
    return files


def narrowable(location: str) -> bool:
    """Whether a 16-bit ``model.dtype`` loads ``location`` from a 16-bit copy: a float32 folder mmadapt built
    in its own cache (also what ``mmadapt plan`` asks to size the load)."""
    folder = Path(location)
    if not folder.is_dir() or not (folder / HASHES_FILE).is_file():
        return False
    return cache_dir().resolve() in folder.resolve().parents and bool(_float32_weights(folder))


def narrowed(location: str, dtype: str) -> str:
    """``location``, or (a float32 folder in mmadapt's cache, ``dtype`` bf16/fp16) its cached 16-bit copy."""
    folder = Path(location)
    if dtype not in NARROW or not narrowable(location):
        return location
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    target = getattr(torch, NARROW[dtype])

    def build(out: Path) -> None:
        for path in sorted(folder.iterdir()):
            if path.name == HASHES_FILE or not path.is_file():
                continue
            if path.suffix != ".safetensors":
                shutil.copy2(path, out / path.name)
                continue
            with safe_open(str(path), framework="pt") as handle:
                tensors = {k: _cast(handle.get_tensor(k), target) for k in handle.keys()}
                metadata = handle.metadata()
            save_file(tensors, str(out / path.name), metadata=metadata)
            del tensors

    # the source's hash list names the sha256 of each of its files: its own hash identifies the contents
    fingerprint = hashlib.sha256((folder / HASHES_FILE).read_bytes() + dtype.encode()).hexdigest()
    announce = f"{folder.name}: storing its float32 weights as {NARROW[dtype]} for model.dtype={dtype}"
    return str(cached_build(f"{folder.name}-{dtype}", fingerprint, build, announce=announce))


def _cast(tensor, dtype):
    return tensor.to(dtype) if tensor.dtype.is_floating_point else tensor
