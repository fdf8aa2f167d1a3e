"""A trained LoRA in the kohya sd-scripts / ComfyUI key layout (``mmadapt export --format kohya``).

* UNet LoRAs (SD 1.x/2.x, SDXL): diffusers' own converters, ``convert_unet_state_dict_to_peft``
  then ``convert_state_dict_to_kohya`` (``lora_unet_*`` keys), each ``.alpha`` = the file's scale x rank
  (the converter writes alpha = rank, right only at scale 1).
* Flux: the kohya sd-scripts layout in Black Forest Labs' module names
  (``lora_unet_double_blocks_N_img_attn_qkv``, ``lora_unet_single_blocks_N_linear1``, ...).
  diffusers reads it (``_convert_kohya_flux_lora_to_diffusers``, which ``FluxPipeline.load_lora_weights``
  calls on any ``.lora_down.weight`` key) but writes none, and peft has no such converter, so the
  inverse is written here, table by table from that function. Where BFL fuses several diffusers
  linears into one (q, k, v -> ``qkv``; a single block's q, k, v and ``proj_mlp`` -> ``linear1``)
  an exact inverse needs the rank-stacked form: ``lora_down`` = the members' A stacked (rank n x r),
  ``lora_up`` = their B block-diagonal. diffusers' converter recognises exactly that form (its
  "sparse" branch: rank divisible by n, off-diagonal blocks zero) and splits it back into the
  members' own A and B, so the round trip is exact. A member the LoRA does not cover gets zero
  blocks (a zero update). ``.alpha`` = scale x rank, except the final layer, whose alpha diffusers
  drops: there the scale is baked into ``lora_up`` and alpha = rank.
* SD3: refused. Its kohya layout (``lora_unet_joint_blocks_*``) has no reader in the installed
  diffusers (``SD3LoraLoaderMixin`` converts no non-diffusers keys), so no round trip could be shown.

Limits of diffusers' reader, not of the file (kohya and ComfyUI read any width): it splits
``linear1`` at FLUX.1's widths (3072 x 3 + 12288), and it returns the embedders' and final layer's
keys without the ``transformer.`` prefix, so ``load_lora_weights`` leaves a LoRA on those modules out.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from mmadapt.errors import ArtifactError

# diffusers module under transformer_blocks.N / single_transformer_blocks.N -> BFL name under
# lora_unet_double_blocks_N_ / lora_unet_single_blocks_N_; a tuple is one fused BFL linear whose
# output is its members' outputs concatenated in that order.
DOUBLE = {
    ("attn.to_q", "attn.to_k", "attn.to_v"): "img_attn_qkv",
    ("attn.to_out.0",): "img_attn_proj",
    ("ff.net.0.proj",): "img_mlp_0",
    ("ff.net.2",): "img_mlp_2",
    ("norm1.linear",): "img_mod_lin",
    ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"): "txt_attn_qkv",
    ("attn.to_add_out",): "txt_attn_proj",
    ("ff_context.net.0.proj",): "txt_mlp_0",
    ("ff_context.net.2",): "txt_mlp_2",
    ("norm1_context.linear",): "txt_mod_lin",
}
SINGLE = {
    ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"): "linear1",
    ("proj_out",): "linear2",
    ("norm.linear",): "modulation_lin",
}
TOP = {
    "time_text_embed.timestep_embedder.linear_1": "time_in_in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in_out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in_in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in_out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in_in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in_out_layer",
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
}
FINAL = {"norm_out.linear": "final_layer_adaLN_modulation_1", "proj_out": "final_layer_linear"}
BLOCKS = {"transformer_blocks": ("double_blocks", DOUBLE), "single_transformer_blocks": ("single_blocks", SINGLE)}


def read_lora(source: Path, prefix: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The LoRA tensors of ``prefix`` (``unet`` / ``transformer``) in a diffusers LoRA file, keys without
    the prefix, and the peft config diffusers' scripts save beside them (None in mmadapt's files, whose
    scale is folded into B: ``adapter.save_lora``)."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from safetensors import safe_open

    with safe_open(str(source), "pt") as f:
        raw = (f.metadata() or {}).get(LORA_ADAPTER_METADATA_KEY)
        layers = {k.removeprefix(f"{prefix}."): f.get_tensor(k) for k in f.keys() if k.startswith(f"{prefix}.")}
    config = {k.removeprefix(f"{prefix}."): v for k, v in json.loads(raw).items() if k.startswith(f"{prefix}.")} if raw else {}
    return layers, config or None


def lora_scales(modules: set[str], config: dict | None) -> dict[str, float]:
    """Each module's LoRA scale as ``load_lora_weights`` applies it: alpha / r of the saved peft config (its
    rank / alpha patterns and rsLoRA as peft reads them); 1 where the file has no config (diffusers takes alpha = r)."""
    if config is None:
        return dict.fromkeys(modules, 1.0)
    from peft.utils.other import get_pattern_key

    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    scales = {}
    for name in modules:
        r = ranks.get(get_pattern_key(ranks.keys(), name), config["r"])
        alpha = alphas.get(get_pattern_key(alphas.keys(), name), config["lora_alpha"])
        scales[name] = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
    return scales


def unet_to_kohya(layers: dict[str, torch.Tensor], scales: dict[str, float]) -> dict[str, torch.Tensor]:
    """A UNet LoRA (diffusers keys) -> ``lora_unet_*`` by diffusers' converters; alpha = scale x rank."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya, convert_unet_state_dict_to_peft

    peft_keys = convert_unet_state_dict_to_peft({f"unet.{k}": v for k, v in layers.items()})
    out = convert_state_dict_to_kohya(peft_keys)
    for key, tensor in peft_keys.items():
        if ".lora_A." in key:
            module = key.removeprefix("unet.").split(".lora_A.")[0]
            alpha_key = "lora_unet_" + module.replace(".", "_") + ".alpha"
            if alpha_key not in out:
                raise ArtifactError(f"diffusers' kohya converter wrote no {alpha_key}", fix="use --format diffusers")
            out[alpha_key] = torch.tensor(scales[module] * tensor.shape[0], dtype=torch.float32)
    return out


def flux_groups(modules: set[str]) -> dict[str, tuple[tuple[str, ...], str]]:
    """kohya name -> (the diffusers modules it stands for, in output order; its kind: fused / plain / final)."""
    groups: dict[str, tuple[tuple[str, ...], str]] = {}
    for name in sorted(modules):
        block = re.fullmatch(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)", name)
        if block:
            bfl, table = BLOCKS[block[1]]
            found = [(members, k) for members, k in table.items() if block[3] in members]
            if found:
                members, kohya = found[0]
                full = tuple(f"{block[1]}.{block[2]}.{m}" for m in members)
                groups[f"lora_unet_{bfl}_{block[2]}_{kohya}"] = (full, "fused" if len(full) > 1 else "plain")
                continue
        elif name in TOP or name in FINAL:
            kind = "plain" if name in TOP else "final"
            groups[f"lora_unet_{(TOP | FINAL)[name]}"] = ((name,), kind)
            continue
        raise ArtifactError(
            f"the LoRA on Flux module {name!r} has no kohya (BFL) name",
            fix="use --format diffusers, or train without that target",
        )
    return groups


def flux_to_kohya(
    layers: dict[str, torch.Tensor], scales: dict[str, float], out_features: dict[str, int]
) -> dict[str, torch.Tensor]:
    """A Flux transformer LoRA (peft keys ``{module}.lora_A.weight`` / ``.lora_B.weight``, no prefix) -> the
    kohya BFL layout; ``out_features`` gives the width of fused members the LoRA does not cover."""
    from diffusers.loaders.lora_conversion_utils import swap_scale_shift

    modules = {k.split(".lora_")[0] for k in layers}
    out: dict[str, torch.Tensor] = {}
    for kohya, (members, kind) in flux_groups(modules).items():
        present = [m for m in members if m in modules]
        a = {m: layers[f"{m}.lora_A.weight"] for m in present}
        b = {m: layers[f"{m}.lora_B.weight"] for m in present}
        if kind == "fused":  # the rank-stacked form (module docstring); scales differing per member go into B
            rank, first = max(t.shape[0] for t in a.values()), a[present[0]]
            scale = scales[present[0]]
            downs, ups = [], []
            for m in members:
                down = first.new_zeros(rank, first.shape[1])
                up = first.new_zeros(out_features[m], rank)
                if m in a:
                    down[: a[m].shape[0]] = a[m]
                    up[:, : b[m].shape[1]] = b[m] * (scales[m] / scale)
                downs.append(down)
                ups.append(up)
            down, up, alpha = torch.cat(downs), torch.block_diag(*ups), scale * rank * len(members)
        else:
            (m,) = present
            down, up, alpha = a[m], b[m], scales[m] * a[m].shape[0]
            if kind == "final":  # diffusers drops these alphas: the scale goes into the weights
                up = (swap_scale_shift(up) if m == "norm_out.linear" else up) * scales[m]
                alpha = a[m].shape[0]
        out[f"{kohya}.lora_down.weight"] = down.contiguous()
        out[f"{kohya}.lora_up.weight"] = up.contiguous()
        out[f"{kohya}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out


FLUX1_LINEAR1 = 3 * 3072 + 12288  # the width diffusers' reader splits a single block's linear1 at


def warn_unread(groups: dict[str, tuple[tuple[str, ...], str]], out_features: dict[str, int]) -> None:
    """Say where ``load_lora_weights`` of the installed diffusers will not read the (correct) kohya file back."""
    import warnings

    import diffusers

    unread = [k for k, (members, _) in groups.items() if not members[0].startswith(tuple(BLOCKS))]
    unread += [
        k
        for k, (members, _) in groups.items()
        if k.endswith("_linear1") and sum(out_features[m] for m in members) != FLUX1_LINEAR1
    ]
    if unread:
        warnings.warn(
            f"kohya and ComfyUI read every key; diffusers {diffusers.__version__}'s load_lora_weights cannot read {', '.join(sorted(unread))} "
            "(it drops the embedders' and final layer's keys and splits linear1 at FLUX.1's widths only)",
            stacklevel=3,
        )


def kohya_layout(stack, source: Path) -> dict[str, torch.Tensor]:
    """The kohya state dict of the diffusers LoRA file ``source`` trained on ``stack``'s denoiser."""
    kind = type(stack.unet).__name__
    if stack.denoiser == "unet":
        layers, config = read_lora(source, "unet")
        return unet_to_kohya(layers, lora_scales({k.split(".lora")[0] for k in layers}, config))
    if kind != "FluxTransformer2DModel":
        import diffusers

        raise ArtifactError(
            f"diffusers {diffusers.__version__} reads no kohya file for a {kind} LoRA (its loader skips lora_unet_* keys), so none is written",
            path=source,
            fix="use --format diffusers (diffusers and ComfyUI load it)",
        )
    layers, config = read_lora(source, "transformer")
    linears = stack.unet.named_modules()  # a loaded LoRA wraps each target: its Linear is `<name>.base_layer`
    widths = {n.removesuffix(".base_layer"): m.out_features for n, m in linears if isinstance(m, torch.nn.Linear)}
    modules = {k.split(".lora_")[0] for k in layers}
    warn_unread(flux_groups(modules), widths)
    return flux_to_kohya(layers, lora_scales(modules, config), widths)
