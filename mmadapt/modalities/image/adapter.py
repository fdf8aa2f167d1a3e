"""The adapter strategy for images: a brand-style LoRA on the denoiser's attention projections.

LoRA (peft, through diffusers' ``add_adapter``) on the attention projections of the
denoiser's family (``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of every UNet attention
block; for SD3/Flux also the joint attention's ``add_*_proj`` and ``to_add_out``; ``[all]``
= every linear layer; :mod:`mmadapt.modalities.image.families`), trained with the
noise-prediction loss on the references and their captions in the shared loop
(:mod:`mmadapt.modalities.image.tuning`). Saved as ``pytorch_lora_weights.safetensors`` by the
pipeline's ``save_lora_weights``, every key in peft's ``lora_A`` / ``lora_B`` names, loaded
with ``pipe.load_lora_weights``; ``scale`` weighs it at inference (0 = the base model).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from mmadapt.errors import ArtifactError
from mmadapt.modalities.image.families import family_of, lora_targets
from mmadapt.modalities.image.tuning import DiffusionTuning, train_denoiser, write_loss_log
from mmadapt.protocols import DataBundle, FitContext, FitReport, Strategy

ADAPTER_DIR = "adapter"
ADAPTER_NAME = "brand"
WEIGHTS = "pytorch_lora_weights.safetensors"


class ImageAdapterConfig(DiffusionTuning):
    method: str = Field("lora", pattern="^lora$", description="lora")
    r: int = Field(8, ge=1, le=1024, description="LoRA rank")
    alpha: int = Field(8, ge=1, le=4096, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(
        None, description="denoiser module names; None = the family's attention projections; [all] = every linear layer"
    )
    scale: float = Field(1.0, ge=0.0, le=4.0, description="LoRA weight at inference")


class ImageAdapterStrategy(Strategy):
    name = "adapter"
    config_model = ImageAdapterConfig
    trains = True

    def fit(self, stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        import torch
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        from mmadapt.engine.seed import seed_everything

        seed_everything(self.recipe.train.seed)  # the LoRA init is part of the run's determinism
        denoiser = stack.unet
        denoiser.requires_grad_(False)
        lora = LoraConfig(
            r=self.config.r,
            lora_alpha=self.config.alpha,
            lora_dropout=self.config.dropout,
            init_lora_weights="gaussian",
            target_modules=lora_targets(denoiser, family_of(stack, self.config), self.config.target_modules),
        )
        denoiser.add_adapter(lora, adapter_name=ADAPTER_NAME)
        cast_training_params(denoiser, dtype=torch.float32)  # the base may be model.dtype; the LoRA trains in float32
        try:
            report = train_denoiser(denoiser, stack, data, ctx, "adapter", self.config)
            save_lora(stack, part_dir / ADAPTER_DIR)
        finally:
            denoiser.delete_adapters(ADAPTER_NAME)  # compose() applies exactly what was saved
        (part_dir / "adapter.json").write_text(json.dumps(self.config.model_dump(), indent=2))
        write_loss_log(part_dir, report)
        return report

    def compose(self, stack, part_dir: Path) -> None:
        folder = part_dir / ADAPTER_DIR
        if not (folder / WEIGHTS).is_file():
            raise ArtifactError("adapter weights are missing", path=folder, fix="re-run the recipe")
        try:
            scale = json.loads((part_dir / "adapter.json").read_text())["scale"]
        except (OSError, ValueError, KeyError):
            scale = self.config.scale
        if stack.shared is not None:  # a pipeline shared with other versions: this LoRA is one of its named adapters
            stack.adapter = stack.shared.add_adapter(folder, scale=float(scale))
            stack.lora_scale = float(scale)
            return
        load_lora(stack.pipe, folder, ADAPTER_NAME)
        stack.pipe.set_adapters([ADAPTER_NAME], adapter_weights=[float(scale)])
        stack.lora_scale = float(scale)


def load_lora(pipe, folder: Path, name: str) -> None:
    """``pipe.load_lora_weights`` of the saved LoRA as adapter ``name``, without diffusers' notices."""
    from diffusers.utils import logging as diffusers_logging

    warn_if_mixed(folder / WEIGHTS)
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # "no LoRA keys for the text encoder": it has none by design
    try:
        pipe.load_lora_weights(str(folder), weight_name=WEIGHTS, adapter_name=name)
    finally:
        diffusers_logging.set_verbosity(level)


def warn_if_mixed(weights: Path) -> None:
    """One line for a LoRA saved before peft key names were kept for every layer, when diffusers
    drops part of it: its file mixes diffusers' ``to_q.lora.down`` attention keys with peft's
    ``lora_A`` ones, and ``load_lora_weights`` converts the file only when its first key is not
    peft's, so with a ``lora_A`` key first the attention LoRA is not loaded (as when that version
    was evaluated). It still loads as before."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())  # the order load_lora_weights reads them in
    if keys and ".lora_A." in keys[0] and any(".lora.down." in k for k in keys):
        warnings.warn(
            f"{weights}: LoRA saved with mixed key names; diffusers loads it without its attention layers "
            "(as this version was evaluated); re-run the recipe to train one that loads whole",
            stacklevel=2,
        )


class DiffusersLoras:
    """diffusers' named LoRAs on a pipeline several versions share (an
    :class:`~mmadapt.engine.shared.AdapterKind`): each version's LoRA loaded once by
    ``load_lora_weights``, the answering one set alone at its own scale by ``set_adapters``, and
    for a version without one every LoRA off (``disable_lora``) while it generates."""

    def __init__(self):
        self.scales: dict[str, float] = {}

    def load(self, pipe, folder: Path, name: str, scale: float = 1.0):
        with warnings.catch_warnings():  # "multiple adapters in the model": what sharing means
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            load_lora(pipe, folder, name)
        self.scales[name] = float(scale)
        return pipe

    @contextlib.contextmanager
    def active(self, pipe, name: str | None) -> Iterator:
        if name is None:
            pipe.disable_lora()
            try:
                yield pipe
            finally:
                pipe.enable_lora()
        else:
            pipe.set_adapters([name], adapter_weights=[self.scales[name]])
            yield pipe


def save_lora(stack, folder: Path) -> None:
    """The denoiser's LoRA ``ADAPTER_NAME`` as the diffusers file ``pipe.load_lora_weights`` reads.

    That file holds no alpha (the loader then takes alpha = r, scale 1), so a scale alpha / r != 1 is
    folded into each B. (diffusers can save the peft config beside the weights, but safetensors writes
    two metadata keys in a random order: the file would not be byte-identical run to run.)"""
    from peft.utils import get_peft_model_state_dict

    from mmadapt.modalities.image.kohya import lora_scales

    layers = get_peft_model_state_dict(stack.unet, adapter_name=ADAPTER_NAME)
    scales = lora_scales({k.split(".lora_")[0] for k in layers}, stack.unet.peft_config[ADAPTER_NAME].to_dict())
    for key in layers:
        if ".lora_B." in key and scales[key.split(".lora_")[0]] != 1.0:
            layers[key] = layers[key] * scales[key.split(".lora_")[0]]
    # peft's key names for every family, as they are: diffusers' convert_state_dict_to_diffusers
    # renames only attention keys, and load_lora_weights reads a file mixing both layouts by its
    # first key, dropping the other layout's LoRA (the attention one beside conv / proj targets)
    type(stack.pipe).save_lora_weights(folder, **{f"{stack.denoiser}_lora_layers": layers}, safe_serialization=True)


LORA_FORMATS = ("diffusers", "kohya")
KOHYA_WEIGHTS = "lora_kohya.safetensors"


def export_lora(stack, part_dir: Path, out_dir: Path, fmt: str) -> list[str]:
    """Write the trained LoRA of ``part_dir`` into ``out_dir`` as ``fmt``; return the file names.

    ``diffusers``: the file ``pipe.load_lora_weights`` reads (as saved; peft key names). ``kohya``: the ``lora_unet_*``
    layout of kohya sd-scripts / ComfyUI / A1111 for UNet (SD 1.x/2.x, SDXL) and Flux LoRAs
    (:mod:`mmadapt.modalities.image.kohya`; SD3 is refused: diffusers reads no kohya SD3 file).
    """
    import shutil

    from safetensors.torch import save_file

    from mmadapt.modalities.image.kohya import kohya_layout

    source = part_dir / ADAPTER_DIR / WEIGHTS
    if fmt not in LORA_FORMATS:
        raise ArtifactError(f"unknown LoRA export format {fmt!r}", fix=f"use --format {' or '.join(LORA_FORMATS)}")
    if not source.is_file():
        raise ArtifactError("adapter weights are missing", path=source.parent, fix="re-run the recipe")
    if fmt == "diffusers":
        shutil.copyfile(source, out_dir / WEIGHTS)
        return [WEIGHTS]
    save_file(kohya_layout(stack, source), str(out_dir / KOHYA_WEIGHTS), metadata={"format": "pt"})
    return [KOHYA_WEIGHTS]


def fuse_and_save(stack, out_dir: Path) -> list[str]:
    """Save the composed pipeline as one folder, a loaded LoRA fused into the denoiser at its scale."""
    merged = []
    if stack.lora_scale is not None:
        stack.pipe.fuse_lora(components=[stack.denoiser], adapter_names=[ADAPTER_NAME])
        stack.pipe.unload_lora_weights()
        merged.append(f"lora ({ADAPTER_NAME}, scale {stack.lora_scale:g}) fused into the {stack.denoiser}")
    stack.pipe.save_pretrained(out_dir, safe_serialization=True)
    return merged
