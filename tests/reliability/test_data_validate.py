"""`mmadapt data validate`: every bad input of a dataset is reported at once, with its file and line;
errors exit 2, warnings alone exit 0; nothing is written and nothing crashes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.engine import validate as v
from mmadapt.recipe import load_recipe


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def _find(problems, file_name, line, severity, text):
    hits = [p for p in problems if Path(p.file).name == file_name and p.line == line and p.severity == severity and text in p.message]
    assert hits, f"no {severity} {text!r} at {file_name}:{line} in " + "\n".join(map(str, problems))
    return hits[0]


# ---------------------------------------------------------------- text


# (bad input, file, line, severity, what the report says): the tests assert each row; docs/reliability.md lists them
EXPECTED_TEXT = [
    ("a line that is not JSON", "train.jsonl", 2, "error", "invalid JSON"),
    ("a JSON array instead of an object", "train.jsonl", 3, "error", "expected a JSON object, got list"),
    ("a blank question", "train.jsonl", 4, "error", "'question' must be a non-empty string"),
    ("a number as the answer", "train.jsonl", 5, "error", "'answer' must be a string"),
    ("an empty train answer", "train.jsonl", 6, "error", "empty answer: nothing to train on"),
    ("an id used twice", "train.jsonl", 7, "error", "duplicate id 'a' (first at train.jsonl:1)"),
    ("a question longer than train.max_seq_len", "train.jsonl", 8, "warning", "> train.max_seq_len 16: truncated in training"),
    ("an eval question identical to a train one (case, punctuation ignored)", "eval.jsonl", 1, "warning",
     "train/eval leakage: question identical to train.jsonl:1"),
    ("an empty eval answer", "eval.jsonl", 2, "warning", "empty answer: every metric scores it 0"),
    ("a blank knowledge document", "empty.md", None, "warning", "empty document: adds no passages"),
    ("a Latin-1 knowledge document", "latin1.txt", None, "error", "not UTF-8 text"),
    ("an empty (0 byte) split file", "train.jsonl", None, "error", "the train split is empty (0 bytes)"),
    ("a split of blank lines only", "eval.jsonl", None, "error", "the eval split holds no records"),
]
EXPECTED_SPEECH = [
    ("44.1 kHz audio", "metadata.jsonl", 2, "warning", "stereo44k.wav: 44100 Hz, resampled to 16000 Hz"),
    ("stereo audio", "metadata.jsonl", 2, "warning", "stereo44k.wav: 2 channels, downmixed"),
    ("an audio file that does not exist", "metadata.jsonl", 3, "error", "missing.wav: audio file not found"),
    ("a 0-byte audio file", "metadata.jsonl", 4, "error", "empty.wav: audio file is empty (0 bytes)"),
    ("a corrupt WAV", "metadata.jsonl", 5, "error", "corrupt.wav: cannot decode audio"),
    ("NaN samples", "metadata.jsonl", 6, "error", "nan.wav: audio holds NaN"),
    ("a 31 s train clip", "metadata.jsonl", 7, "error", "long.wav: 31.0 s > 30 s"),
    ("an 8 kHz clip", "metadata.jsonl", 7, "warning", "long.wav: 8000 Hz"),
    ("a blank transcript", "metadata.jsonl", 8, "error", "empty transcription for quiet.wav"),
    ("a file_name used twice", "metadata.jsonl", 9, "error", "duplicate file_name 'ok.wav'"),
    ("a file_name outside the split folder (../)", "metadata.jsonl", 10, "error", "points outside the split folder"),
    ("eval audio byte-identical to a train clip", "metadata.jsonl", 1, "warning", "train/eval leakage: audio (sha256) identical to metadata.jsonl:1"),
    ("a vocabulary of comments only", "vocab.txt", None, "error", "the vocabulary is empty"),
    ("a split folder without metadata.jsonl", "metadata.jsonl", None, "error", "metadata.jsonl not found"),
    ("a file where the split folder should be", "evalfile", None, "error", "an audio split is a folder"),
]


def build_bad_text(tmp_path: Path) -> Path:
    """A text recipe whose data holds one of each bad input of EXPECTED_TEXT (the first 11 rows)."""
    root = tmp_path / "data"
    (root / "kb").mkdir(parents=True)
    _jsonl(root / "train.jsonl", [
        {"id": "a", "question": "What port does the gateway use?", "answer": "7443"},   # 1 ok (leaks into eval)
        "{not json",                                                                      # 2 invalid JSON
        "[1, 2]",                                                                         # 3 not an object
        {"id": "b", "question": "  ", "answer": "x"},                                     # 4 empty question
        {"id": "c", "question": "Price?", "answer": 149},                                 # 5 answer not a string
        {"id": "d", "question": "Who makes it?", "answer": ""},                           # 6 empty train answer
        {"id": "a", "question": "Duplicate id?", "answer": "yes"},                        # 7 duplicate id
        {"id": "e", "question": "Long " * 20, "answer": "ok"},                            # 8 over max_seq_len
    ])
    _jsonl(root / "eval.jsonl", [
        {"id": "x", "question": "what port does the gateway use", "answer": "7443"},     # 1 leakage (normalised)
        {"id": "y", "question": "Something new?", "answer": ""},                          # 2 empty eval answer: warning
    ])
    (root / "kb" / "good.md").write_text("# Ports\n\nThe gateway listens on 7443.\n", encoding="utf-8")
    (root / "kb" / "empty.md").write_text("   \n", encoding="utf-8")
    (root / "kb" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    recipe = {
        "name": "bad-text", "modality": "text", "base_model": "embedded:smollm2-135m-instruct",
        "data": {"train": str(root / "train.jsonl"), "eval": str(root / "eval.jsonl"), "knowledge": str(root / "kb")},
        "strategies": {"prompt": {}}, "train": {"max_seq_len": 16},
    }
    path = tmp_path / "bad-text.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def bad_text(tmp_path):
    return build_bad_text(tmp_path), tmp_path / "data"


def test_text_every_problem_at_once_with_file_and_line(bad_text):
    path, root = bad_text
    problems = v.validate_data(load_recipe(path))
    for _, file, line, severity, text in EXPECTED_TEXT[:11]:
        _find(problems, file, line, severity, text)
    assert len(problems) == 11, "\n".join(map(str, problems))
    assert [p.severity for p in problems] == sorted((p.severity for p in problems), key=lambda s: s != "error")
    assert all("\n" not in p.message for p in problems)


def test_text_clean_data_has_no_problems(make_recipe, write_recipe):
    assert v.validate_data(load_recipe(write_recipe(make_recipe()))) == []


def test_text_empty_and_blank_files(tmp_path, write_recipe):
    (tmp_path / "train.jsonl").write_bytes(b"")
    (tmp_path / "eval.jsonl").write_text("\n  \n")
    raw = {"name": "e", "modality": "text", "base_model": "x/y",
           "data": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "eval.jsonl")}, "strategies": {}}
    problems = v.validate_data(load_recipe(write_recipe(raw)))
    for _, file, line, severity, text in EXPECTED_TEXT[11:]:
        _find(problems, file, line, severity, text)
    assert len(problems) == 2


# ---------------------------------------------------------------- speech


def _tone(seconds, rate, channels=1, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


def build_bad_speech(tmp_path: Path) -> Path:
    """A speech recipe whose data holds one of each bad input of EXPECTED_SPEECH (the first 13 rows)."""
    train, evaluation = tmp_path / "train", tmp_path / "eval"
    train.mkdir()
    evaluation.mkdir()
    sf.write(train / "ok.wav", _tone(0.3, 16000), 16000)
    sf.write(train / "stereo44k.wav", _tone(0.3, 44100, channels=2, freq=300), 44100)
    (train / "empty.wav").write_bytes(b"")
    (train / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage" * 4)
    nan = _tone(0.2, 16000)
    nan[10] = np.nan
    sf.write(train / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(train / "long.wav", _tone(31.0, 8000, freq=200), 8000)
    sf.write(train / "quiet.wav", _tone(0.2, 16000, freq=500), 16000)
    _jsonl(train / "metadata.jsonl", [
        {"file_name": "ok.wav", "transcription": "set the kryon valve"},        # 1 ok (its bytes leak into eval)
        {"file_name": "stereo44k.wav", "transcription": "open the zentrix port"},  # 2 two warnings
        {"file_name": "missing.wav", "transcription": "gone"},                  # 3 missing
        {"file_name": "empty.wav", "transcription": "nothing"},                 # 4 0 bytes
        {"file_name": "corrupt.wav", "transcription": "noise"},                 # 5 undecodable
        {"file_name": "nan.wav", "transcription": "nan"},                       # 6 NaN samples
        {"file_name": "long.wav", "transcription": "a long one"},               # 7 > 30 s in train (+ 8 kHz warning)
        {"file_name": "quiet.wav", "transcription": "   "},                     # 8 empty transcript
        {"file_name": "ok.wav", "transcription": "again"},                      # 9 duplicate file_name
        {"file_name": "../eval/leak.wav", "transcription": "outside"},          # 10 outside the folder
    ])
    (evaluation / "leak.wav").write_bytes((train / "ok.wav").read_bytes())
    sf.write(evaluation / "fresh.wav", _tone(0.3, 16000, freq=880), 16000)
    _jsonl(evaluation / "metadata.jsonl", [
        {"file_name": "leak.wav", "transcription": "set the kryon valve"},      # 1 leakage by audio hash
        {"file_name": "fresh.wav", "transcription": "a fresh clip"},            # 2 ok
    ])
    (tmp_path / "vocab.txt").write_text("# only comments\n\n")
    raw = {"name": "bad-speech", "modality": "speech", "base_model": "embedded:whisper-tiny.en",
           "data": {"train": str(train), "eval": str(evaluation), "vocabulary": str(tmp_path / "vocab.txt")},
           "strategies": {}}
    path = tmp_path / "bad-speech.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def bad_speech(tmp_path):
    return build_bad_speech(tmp_path)


def test_speech_every_problem_at_once_with_file_and_line(bad_speech):
    problems = v.validate_data(load_recipe(bad_speech))
    for _, file, line, severity, text in EXPECTED_SPEECH[:13]:
        _find(problems, file, line, severity, text)
    leak = _find(problems, "metadata.jsonl", 1, "warning", "train/eval leakage")
    assert Path(leak.file).parent.name == "eval"
    assert len(problems) == 13, "\n".join(map(str, problems))


def test_speech_missing_metadata_and_folder(tmp_path, write_recipe):
    (tmp_path / "train").mkdir()
    (tmp_path / "evalfile").write_text("not a folder")
    raw = {"name": "s", "modality": "speech", "base_model": "x/y",
           "data": {"train": str(tmp_path / "train"), "eval": str(tmp_path / "evalfile")}, "strategies": {}}
    problems = v.validate_data(load_recipe(write_recipe(raw)))
    for _, file, line, severity, text in EXPECTED_SPEECH[13:]:
        _find(problems, file, line, severity, text)
    assert len(problems) == 2


# ---------------------------------------------------------------- the CLI


def test_cli_exit_2_with_a_table_of_errors(bad_speech, snapshot):
    before = snapshot(bad_speech.parent)
    result = CliRunner().invoke(main, ["data", "validate", str(bad_speech)])
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["severity", "file", "line", "problem"]
    assert any(line.startswith("error") and "metadata.jsonl" in line and " 5 " in line and "corrupt.wav" in line for line in lines)
    assert lines[-1] == "problems: bad-speech data: 9 errors, 4 warnings"
    assert snapshot(bad_speech.parent) == before  # validation writes nothing


def test_cli_exit_0_with_warnings_only(make_recipe, write_recipe, text_data):
    rows = [json.loads(x) for x in text_data["train"].read_text().splitlines()]
    _jsonl(text_data["eval"], [rows[0]])  # an eval question identical to a train one: leakage warning only
    result = CliRunner().invoke(main, ["data", "validate", str(write_recipe(make_recipe())), "--json"])
    assert result.exit_code == 0, result.output
    found = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(p["severity"], p["line"]) for p in found] == [("warning", 1)]
    assert "train/eval leakage" in found[0]["message"]
