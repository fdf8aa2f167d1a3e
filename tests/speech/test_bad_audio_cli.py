"""Bad audio through the real CLI (`mmadapt run`, `mmadapt data validate`) on the tiny Whisper:
corrupt and empty files are one line naming the file, exit code 2, no artifact; stereo, 8 kHz and
10-minute files are transcribed (downmixed, resampled, window by window) and reported as warnings.
A recipe vocabulary that is empty or holds a term longer than the prompt budget is one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.modalities.speech.audio import load_audio

FAST = ["--quiet", "--show", "0", "--set", "eval.bootstrap=0", "--set", "eval.latency_samples=0"]


def _eval_folder(tmp_path, speech_recipe, files: dict[str, object]):
    """A recipe over the tiny Whisper whose eval split holds ``files`` (name -> bytes or (samples, rate))."""
    path = speech_recipe({"prompt": {}})
    folder = tmp_path / "data" / "eval"
    rows = []
    for name, content in files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            samples, rate = content
            sf.write(folder / name, samples, rate)
        rows.append({"file_name": name, "transcription": "We moved Kubelyn to HLX-12.", "terms": ["Kubelyn", "HLX-12"]})
    with open(folder / "metadata.jsonl", "a") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def _speech(tmp_path) -> np.ndarray:
    """A real 16 kHz clip (the first eval clip copied by the fixture)."""
    return load_audio(tmp_path / "data" / "eval" / "eval-000.wav")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "audio file is empty (0 bytes)"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 8, "cannot decode audio"),
    ],
    ids=["empty", "corrupt"],
)
def test_run_stops_on_unreadable_audio_with_one_line_and_no_artifact(tmp_path, speech_recipe, content, message):
    recipe = _eval_folder(tmp_path, speech_recipe, {"broken.wav": content})
    result = CliRunner().invoke(main, ["run", str(recipe), *FAST])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    named = [line for line in result.output.splitlines() if "broken.wav" in line]
    assert len(named) == 1 and message in named[0] and "metadata.jsonl: line 3" in named[0], result.output
    assert "Loading weights" not in result.output, "the split is checked before the model loads or anything trains"
    assert not list((tmp_path / "runs").glob("*/v0*")), "a failed run publishes nothing"

    validated = CliRunner().invoke(main, ["data", "validate", str(recipe)])
    assert validated.exit_code == 2 and "Traceback" not in validated.output
    assert any(line.startswith("error") and "broken.wav" in line and message in line for line in validated.output.splitlines())


def test_run_transcribes_stereo_8khz_and_ten_minute_audio(tmp_path, speech_recipe):
    import torch
    import torchaudio.functional as AF

    clip = _speech(tmp_path)
    quiet = np.zeros(16000, dtype=np.float32)
    ten_minutes = np.tile(np.concatenate([clip, quiet]), int(np.ceil(600 * 16000 / (len(clip) + len(quiet)))))[: 600 * 16000]
    eight_k = AF.resample(torch.from_numpy(clip), 16000, 8000).numpy()
    files = {
        "stereo.wav": (np.stack([clip, 0.5 * clip], axis=1), 16000),
        "eight-k.wav": (eight_k, 8000),
        "ten-minutes.flac": (ten_minutes, 16000),
    }
    recipe = _eval_folder(tmp_path, speech_recipe, files)

    validated = CliRunner().invoke(main, ["data", "validate", str(recipe)])
    assert validated.exit_code == 0, validated.output
    warnings = [line for line in validated.output.splitlines() if line.startswith("warning")]
    assert any("stereo.wav: 2 channels, downmixed" in line for line in warnings), warnings
    assert any("eight-k.wav: 8000 Hz, resampled" in line for line in warnings), warnings
    assert any("ten-minutes.flac: 600.0 s, transcribed in 30 s windows" in line for line in warnings), warnings

    result = CliRunner().invoke(
        main, ["run", str(recipe), "--json", "--quiet", "--set", "eval.bootstrap=0", "--set", "eval.latency_samples=0"]
    )
    assert result.exit_code == 0, result.output
    version = next((tmp_path / "runs").glob("*/v0001"))
    rows = {r["id"]: r for r in map(json.loads, (version / "predictions.jsonl").read_text().splitlines())}
    assert {"eval/stereo.wav", "eval/eight-k.wav", "eval/ten-minutes.flac"} <= set(rows)
    for row in rows.values():
        assert isinstance(row["output"], str) and 0.0 <= row["cer"] and row["wer"] >= 0.0
    # 20 windows of 30 s, each decoded (max_new_tokens 8): far more words than one window could give
    assert len(rows["eval/ten-minutes.flac"]["output"].split()) > len(rows["eval/stereo.wav"]["output"].split())


@pytest.mark.parametrize(
    "stack,vocabulary,message",
    [
        ("prompt", "# only a comment\n\n", "the vocabulary is empty"),
        ("prompt", "Zentrix\n" + "word " * 300 + "\nKubelyn\n", "is longer than the prompt budget (200 tokens)"),
        ("retrieval", "Zentrix\n" + "word " * 300 + "\n", "is longer than the prompt budget (200 tokens)"),
    ],
)
def test_bad_recipe_vocabulary_is_one_line_exit_2(speech_recipe, tmp_path, stack, vocabulary, message):
    """A term that alone overflows the prompt could never be prompted: refused, not silently cut (it
    would also drop every term after it from the prompt)."""
    terms = tmp_path / "terms.txt"
    terms.write_text(vocabulary)
    path = speech_recipe({stack: {}}, data={"vocabulary": str(terms)})
    result = CliRunner().invoke(main, ["run", str(path), *FAST])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and message in errors[0] and "terms.txt" in errors[0], result.output
    assert not list((tmp_path / "runs").glob("*/v0*")), "no version written"
