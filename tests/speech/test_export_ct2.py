"""`mmadapt export --format ct2`: a LoRA version merged and written by ctranslate2's converter as a
CTranslate2 Whisper folder in faster-whisper's layout, whose greedy transcripts equal the transformers
model's, token for token (tiny random Whisper, English-only and multilingual with 128 mels; the
embedded tiny.en on 10 eval clips was checked once by hand, ~250 s here: see the README's CTranslate2
section). faster-whisper loading the folder: tests/speech/test_faster_whisper.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import mmadapt
from mmadapt.cli import main
from mmadapt.modalities.speech.ct2_engine import CT2Whisper
from mmadapt.modalities.speech.predict import Windows, greedy_decode
from mmadapt.protocols import get_modality

pytest.importorskip("ctranslate2")
DATASET = Path(__file__).resolve().parents[2] / "datasets" / "speech-domain"
LAYOUT = {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"}


def eval_clips(n: int) -> list[str]:
    rows = [json.loads(line) for line in (DATASET / "eval" / "metadata.jsonl").read_text().splitlines() if line.strip()]
    return [str(DATASET / "eval" / r["file_name"]) for r in rows[:n]]


def both_greedy(stack, ct2: CT2Whisper, paths: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """(transformers, CTranslate2) greedy tokens of each window under the stack's prefixes and limits."""
    windows = Windows(stack, paths)
    ours, theirs = [], []
    fe = stack.processor.feature_extractor
    for batch in windows.batches:
        states = windows.encode(batch)
        prefixes, limits = windows.task.prefixes(states, batch), [windows.limit(n) for n in batch]
        ours += greedy_decode(stack.model, states, prefixes, limits)
        feats = fe([windows.items[n][1] for n in batch], sampling_rate=16000, return_tensors="np").input_features
        theirs += ct2.generate(ct2.encode(feats), prefixes, limits)
    return ours, theirs


def _export_ct2(version_dir: Path, out: Path) -> dict:
    result = CliRunner().invoke(main, ["export", str(version_dir), str(out), "--format", "ct2"])
    assert result.exit_code == 0, result.output
    assert LAYOUT <= {p.name for p in out.iterdir()}
    assert not list(out.rglob("*.safetensors")), "a CTranslate2 folder, not a transformers one"
    return json.loads((out / "mmadapt" / "export.json").read_text())


def test_lora_version_exports_to_ct2_with_the_same_greedy_transcripts(speech_recipe, tmp_path):
    inference = {"max_new_tokens": 12, "batch_size": 4}
    base = mmadapt.run(mmadapt.load_recipe(speech_recipe({}, name="base", inference=inference)), progress=False)
    tuned = mmadapt.run(
        mmadapt.load_recipe(speech_recipe({"adapter": {"r": 4, "alpha": 8}}, inference=inference)), progress=False
    )
    info = _export_ct2(tuned.version_dir, tmp_path / "ct2")
    assert info["model_format"] == "ct2" and info["merged"] and info["copied"] == []
    preprocessor = json.loads((tmp_path / "ct2" / "preprocessor_config.json").read_text())
    assert preprocessor["feature_size"] == 80 and preprocessor["sampling_rate"] == 16000

    ct2 = CT2Whisper(tmp_path / "ct2")
    assert not ct2.model.is_multilingual and ct2.model.n_mels == 80
    paths = eval_clips(10)
    ours, theirs = both_greedy(mmadapt.load_artifact(tuned.version_dir).stack, ct2, paths)
    assert any(ours) and theirs == ours
    base_ct2_dir = tmp_path / "base-ct2"
    _export_ct2(base.version_dir, base_ct2_dir)
    assert both_greedy(mmadapt.load_artifact(base.version_dir).stack, CT2Whisper(base_ct2_dir), paths)[1] != theirs, (
        "the LoRA is in the exported weights"
    )


def test_multilingual_128_mel_export_keeps_languages(speech_recipe, tmp_path):
    import torch

    from mmadapt.models.ct2_export import write_ct2_whisper
    from tests.fixtures.tiny import tiny_whisper

    torch.set_num_threads(1)
    folder = tiny_whisper(tmp_path / "ml", languages=("en", "fr", "de"), num_mel_bins=128)
    for language in ("fr", "auto"):
        recipe = speech_recipe({}, base_model=str(folder), inference={"max_new_tokens": 10, "language": language})
        stack = get_modality("speech").new_stack(mmadapt.load_recipe(recipe))
        if language == "fr":
            ct2 = CT2Whisper(write_ct2_whisper(stack.model, stack.processor, tmp_path / "ml-ct2"))
            assert ct2.model.n_mels == 128  # (CTranslate2 calls a model multilingual from 51865 tokens on)
        ours, theirs = both_greedy(stack, ct2, eval_clips(2))
        assert any(ours) and theirs == ours, language


def test_ct2_export_refuses_no_merge_in_one_line(speech_recipe, tmp_path):
    version = mmadapt.run(mmadapt.load_recipe(speech_recipe({}, name="plain")), progress=False).version_dir
    result = CliRunner().invoke(main, ["export", str(version), str(tmp_path / "out"), "--format", "ct2", "--no-merge"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "writes a merged model" in result.output and not (tmp_path / "out").exists()
