"""The retrieval strategy for images: the brand references most like the request, as img2img starts.

``fit`` embeds every reference image with a CLIP (default ``embedded:shapes-clip``; any
transformers CLIP folder or hub id, or ``open_clip:ARCH/WEIGHTS.safetensors``) into the shared
:class:`~mmadapt.retrieval.EmbeddingIndex` and copies the (converted) references into
the part, so the artifact reloads without the dataset. Per request the prompt's CLIP
text embedding retrieves the ``top_k`` closest references (text -> image cosine); the
best one is the img2img start image at ``strength`` (0 = the reference itself, 1 = pure
text-to-image), or with ``mode: ip_adapter`` the image an IP-Adapter conditions a
text-to-image generation on (:mod:`~mmadapt.modalities.image.ip_adapter`).
``Prediction.sources`` names the references retrieved. No training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import Field, model_validator

from mmadapt.config import StrictModel
from mmadapt.errors import ArtifactError, ModelError
from mmadapt.modalities.image.ip_adapter import IPAdapterConfig, check_supported, locate
from mmadapt.models.resolve import check_safetensors_only, load_error, resolve_model
from mmadapt.protocols import DataBundle, FitContext, FitReport, Strategy
from mmadapt.retrieval import EmbeddingIndex, Hit

CONFIG_FILE = "retrieval.json"
REFERENCES_DIR = "references"


class ImageRetrievalConfig(StrictModel):
    embedder: str = Field(
        "embedded:shapes-clip",
        max_length=4096,
        description="CLIP: embedded alias, folder, hub id or open_clip:ARCH/WEIGHTS.safetensors",
    )
    top_k: int = Field(3, ge=1, le=100, description="references retrieved per prompt (the best one starts img2img)")
    strength: float = Field(0.5, gt=0.0, le=1.0, description="img2img strength: how far from the reference the image may move")
    mode: Literal["img2img", "ip_adapter"] = Field(
        "img2img",
        description="img2img: start from the best reference's pixels; ip_adapter: condition on it through an IP-Adapter",
    )
    ip_adapter: IPAdapterConfig | None = Field(None, description="the IP-Adapter of mode ip_adapter (ip_adapter.py)")

    @model_validator(mode="after")
    def _ip_adapter_named(self):
        if self.mode == "ip_adapter" and self.ip_adapter is None:
            raise ValueError("mode ip_adapter needs ip_adapter: {model: HUB_ID_OR_FOLDER}")
        if self.mode == "img2img" and self.ip_adapter is not None:
            raise ValueError("ip_adapter is set but mode is img2img: set mode: ip_adapter (or drop ip_adapter)")
        return self


@lru_cache(maxsize=4)
def load_clip(ref: str):
    """A :class:`~mmadapt.modalities.image.metrics.ClipEmbedder` for ``ref`` (cached per process)."""
    from mmadapt.modalities.image.metrics import ClipEmbedder

    if ref.startswith("open_clip:"):
        return _open_clip(ref)
    location = resolve_model(ref)
    check_safetensors_only(location)
    try:
        return ClipEmbedder.from_pretrained(location)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise load_error(ref, exc) from None


def _open_clip(ref: str):
    """``open_clip:ARCH/WEIGHTS.safetensors`` (a local file), or ``open_clip:ARCH/TAG`` (open_clip's
    own download, which may be a pickle: only when pickles are trusted, see models/resolve.py)."""
    import open_clip

    from mmadapt.modalities.image.metrics import ClipEmbedder
    from mmadapt.models.resolve import pickle_trusted

    arch, _, pretrained = ref.split(":", 1)[1].partition("/")
    local = pretrained.endswith(".safetensors")
    if local and not Path(pretrained).is_file():
        raise ModelError("open_clip weights file not found", path=pretrained, fix="give the path of a .safetensors state dict")
    if pretrained and not local and not pickle_trusted():
        raise ModelError(
            f"open_clip pretrained tag {pretrained!r} may load pickle weights; mmadapt loads safetensors only",
            path=ref,
            fix="use open_clip:ARCH/path/to/weights.safetensors, or pass --trust-remote-pickle if you trust the source",
        )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None if local else pretrained or None)
        if local:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(pretrained))
    except Exception as exc:  # noqa: BLE001 - every loader failure is one line
        raise ModelError(
            f"cannot load open_clip model: {str(exc).splitlines()[0][:160]}",
            path=ref,
            fix="use open_clip:ARCH/WEIGHTS.safetensors with a built-in ARCH, or embedded:shapes-clip",
        ) from None
    return ClipEmbedder.from_open_clip(model, preprocess, open_clip.get_tokenizer(arch))


class ReferenceRetriever:
    """Top-k brand references per prompt (text -> image cosine in CLIP space)."""

    def __init__(self, index: EmbeddingIndex, folder: Path, config: ImageRetrievalConfig):
        self.index = index
        self.folder = folder
        self.config = config
        self.clip = load_clip(config.embedder)
        self._images: dict[str, Image.Image] = {}

    def retrieve(self, prompts: Sequence[str]) -> list[list[Hit]]:
        return self.index.search(self.clip.embed_texts(list(prompts)).numpy(), k=self.config.top_k)

    def image(self, ident: str) -> Image.Image:
        if ident not in self._images:
            item = next(i for i in self.index.items if i["id"] == ident)
            self._images[ident] = Image.open(self.folder / item["file"]).convert("RGB")
        return self._images[ident]


class ImageRetrievalStrategy(Strategy):
    name = "retrieval"
    config_model = ImageRetrievalConfig
    trains = False

    def fit(self, stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        from PIL import ImageOps

        from mmadapt.modalities.image.predict import resolution

        if self.config.mode == "ip_adapter":
            check_supported(stack)  # before any reference is embedded
            location = locate(self.config.ip_adapter)
            if self.recipe.train.eval_every and {"adapter", "full"} & set(self.recipe.stack):
                # live evaluation would load the IP-Adapter into the UNet that is still training
                raise ModelError(
                    "retrieval.mode ip_adapter cannot be evaluated during the training that follows it",
                    fix="drop train.eval_every, or use retrieval.mode img2img",
                )
        size = resolution(stack)
        refs = data.resources["references"]
        clip = load_clip(self.config.embedder)
        folder = part_dir / REFERENCES_DIR
        folder.mkdir()
        items = []
        for n, ref in enumerate(refs):
            name = f"ref_{n:04d}.png"
            ImageOps.fit(ref.image, size, method=Image.Resampling.LANCZOS).save(folder / name, format="PNG")
            items.append({"id": ref.id, "file": name, "caption": ref.caption})
        index = EmbeddingIndex(meta={"embedder": self.config.embedder})
        index.add(clip.embed_images([r.image for r in refs]).numpy(), items)
        index.save(part_dir / "index")
        config = self.config.model_dump()
        if self.config.mode == "ip_adapter":  # a folder named relative to where the run started: made absolute
            config["ip_adapter"]["model"] = location
        (part_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        return FitReport()

    def compose(self, stack, part_dir: Path) -> None:
        try:
            config = ImageRetrievalConfig.model_validate_json((part_dir / CONFIG_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(
                f"cannot read retrieval.json: {str(exc).splitlines()[0]}", path=part_dir, fix="re-run the recipe"
            ) from None
        stack.retriever = ReferenceRetriever(EmbeddingIndex.load(part_dir / "index"), part_dir / REFERENCES_DIR, config)
