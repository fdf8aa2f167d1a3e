"""Loading is validating: for each bad input, `load_data` (what `mmadapt run` calls) raises iff
`validate_data` (what `mmadapt data validate` calls) reports an error, and its one line names the
file, line and message of the first error the validator lists. Warnings alone stop nothing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from mmadapt.engine import validate as v
from mmadapt.errors import DataError
from mmadapt.protocols import get_modality
from mmadapt.recipe import load_recipe
from tests.image.test_image_data import BRAND, write_case
from tests.reliability.test_data_validate import _tone


def _lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_recipe(tmp_path: Path, modality: str, data: dict, **extra) -> Path:
    raw = {"name": f"agree-{modality}", "modality": modality, "base_model": "x/y", "data": data, "strategies": {}, **extra}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_agree(recipe_path: Path, expect_error: bool) -> list[v.Problem]:
    """load_data raises iff validate_data has an error; the raise names the validator's first error."""
    recipe = load_recipe(recipe_path)
    problems = v.validate_data(recipe)
    errors = [p for p in problems if p.severity == v.ERROR]
    assert bool(errors) == expect_error, "\n".join(map(str, problems))
    if not errors:
        data = get_modality(recipe.modality).load_data(recipe)
        assert data.eval and len(data.fingerprint) == 64
        return problems
    with pytest.raises(DataError) as info:
        get_modality(recipe.modality).load_data(recipe)
    first = errors[0]
    where = f"{first.file}: " + (f"line {first.line}: " if first.line is not None else "")
    text = str(info.value)
    assert text.startswith(where + first.message), (text, first)
    assert "\n" not in text and " — fix: " in text
    return problems


# ---------------------------------------------------------------- text


def _text_data(root: Path) -> dict[str, Path]:
    (root / "kb").mkdir(parents=True)
    _lines(root / "train.jsonl", [
        {"id": "t1", "question": "What port does the gateway use?", "answer": "7443"},
        {"id": "t2", "question": "How much is Pro?", "answer": "$149 a month"},
    ])
    _lines(root / "eval.jsonl", [{"id": "e1", "question": "Which port is the gateway on?", "answer": "7443"}])
    (root / "kb" / "ports.md").write_text("# Ports\n\nThe gateway listens on 7443.\n", encoding="utf-8")
    return {"train": root / "train.jsonl", "eval": root / "eval.jsonl", "knowledge": root / "kb"}


def _kb_jsonl(d: dict, rows: list) -> None:
    d["knowledge"] = _lines(d["train"].parent / "kb.jsonl", rows)


TEXT_CASES: dict[str, tuple[bool, Callable[[dict], None]]] = {  # name -> (an error?, what to break)
    "clean": (False, lambda d: None),
    "invalid JSON": (True, lambda d: d["train"].write_text(d["train"].read_text() + "{not json\n")),
    "not an object": (True, lambda d: d["eval"].write_text(d["eval"].read_text() + "[1, 2]\n")),
    "blank question": (True, lambda d: _lines(d["train"], [{"question": " ", "answer": "x"}, {"question": "q?", "answer": "a"}])),
    "answer not a string": (True, lambda d: _lines(d["eval"], [{"question": "q?", "answer": 5}, {"question": "r?", "answer": "a"}])),
    "empty train answer": (True, lambda d: _lines(d["train"], [{"question": "q?", "answer": ""}, {"question": "r?", "answer": "a"}])),
    "duplicate id": (True, lambda d: _lines(d["train"], [{"id": "a", "question": "q?", "answer": "x"}, {"id": "a", "question": "r?", "answer": "y"}])),
    "every line bad": (True, lambda d: d["train"].write_text("{x\n[1]\n")),
    "empty file": (True, lambda d: d["train"].write_bytes(b"")),
    "blank lines only": (True, lambda d: d["eval"].write_text("\n  \n")),
    "not UTF-8": (True, lambda d: d["eval"].write_bytes(b'{"question": "caf\xe9?", "answer": "x"}\n')),
    "a folder for the train split": (True, lambda d: (d["train"].unlink(), d["train"].mkdir())),
    "empty eval answer (warning)": (False, lambda d: _lines(d["eval"], [{"question": "q?", "answer": ""}])),
    "over max_seq_len (warning)": (False, lambda d: _lines(d["train"], [{"question": "Long " * 40, "answer": "ok"}])),
    "leakage (warning)": (False, lambda d: _lines(d["eval"], [{"question": "what port does the gateway use", "answer": "7443"}])),
    "blank document (warning)": (False, lambda d: (d["knowledge"] / "blank.md").write_text("  \n")),
    "Latin-1 document": (True, lambda d: (d["knowledge"] / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))),
    "no documents": (True, lambda d: (d["knowledge"] / "ports.md").rename(d["knowledge"] / "ports.json")),
    "only blank documents": (True, lambda d: (d["knowledge"] / "ports.md").write_text("\n")),
    "kb line without text": (True, lambda d: _kb_jsonl(d, [{"id": "p1", "text": "a"}, {"id": "p2"}])),
    "kb duplicate id": (True, lambda d: _kb_jsonl(d, [{"id": "p1", "text": "a"}, {"id": "p1", "text": "b"}])),
    "kb empty passage (warning)": (False, lambda d: _kb_jsonl(d, [{"id": "p1", "text": "a"}, {"id": "p2", "text": " "}])),
    "several files at once": (True, lambda d: (
        d["train"].write_text("{x\n"), (d["knowledge"] / "latin1.txt").write_bytes(b"\xe9"), d["eval"].write_bytes(b""))),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_text_loader_and_validator_agree(tmp_path, case):
    expect_error, breakage = TEXT_CASES[case]
    d = _text_data(tmp_path / "data")
    breakage(d)
    path = _write_recipe(tmp_path, "text", {k: str(p) for k, p in d.items()}, train={"max_seq_len": 16})
    assert_agree(path, expect_error)


# ---------------------------------------------------------------- speech


def _speech_data(root: Path) -> dict[str, Path]:
    train, evaluation = root / "train", root / "eval"
    train.mkdir(parents=True)
    evaluation.mkdir()
    sf.write(train / "a.wav", _tone(0.3, 16000), 16000)
    sf.write(train / "b.wav", _tone(0.3, 16000, freq=300), 16000)
    sf.write(evaluation / "c.wav", _tone(0.3, 16000, freq=600), 16000)
    _lines(train / "metadata.jsonl", [
        {"file_name": "a.wav", "transcription": "set the kryon valve", "terms": ["kryon"]},
        {"file_name": "b.wav", "transcription": "open the zentrix port"},
    ])
    _lines(evaluation / "metadata.jsonl", [{"file_name": "c.wav", "transcription": "a fresh clip"}])
    (root / "vocab.txt").write_text("kryon\nzentrix\n")
    return {"train": train, "eval": evaluation, "vocabulary": root / "vocab.txt"}


def _add_clip(folder: Path, name: str, content, transcription: str = "words") -> None:
    if isinstance(content, bytes):
        (folder / name).write_bytes(content)
    elif content is not None:
        samples, rate = content
        sf.write(folder / name, samples, rate)
    with open(folder / "metadata.jsonl", "a") as handle:
        handle.write(json.dumps({"file_name": name, "transcription": transcription}) + "\n")


SPEECH_CASES: dict[str, tuple[bool, Callable[[dict], None]]] = {
    "clean": (False, lambda d: None),
    "stereo 44.1 kHz (warnings)": (False, lambda d: _add_clip(d["train"], "s.wav", (_tone(0.3, 44100, channels=2), 44100))),
    "31 s eval clip (warning)": (False, lambda d: _add_clip(d["eval"], "long.wav", (_tone(31.0, 8000), 8000))),
    "eval clip identical to a train one (warning)": (False, lambda d: _add_clip(d["eval"], "copy.wav", (d["train"] / "a.wav").read_bytes())),
    "31 s train clip": (True, lambda d: _add_clip(d["train"], "long.wav", (_tone(31.0, 8000), 8000))),
    "missing clip": (True, lambda d: _add_clip(d["eval"], "gone.wav", None)),
    "empty clip": (True, lambda d: _add_clip(d["eval"], "empty.wav", b"")),
    "corrupt clip": (True, lambda d: _add_clip(d["eval"], "corrupt.wav", b"RIFF\x00\x00\x00\x00WAVEgarbage" * 4)),
    "blank transcript": (True, lambda d: _add_clip(d["train"], "q.wav", (_tone(0.2, 16000), 16000), "  ")),
    "duplicate file_name": (True, lambda d: _add_clip(d["train"], "a.wav", None)),
    "outside the split folder": (True, lambda d: _add_clip(d["train"], "../eval/c.wav", None)),
    "no file_name": (True, lambda d: d["train"].joinpath("metadata.jsonl").write_text('{"transcription": "x"}\n')),
    "invalid JSON": (True, lambda d: d["eval"].joinpath("metadata.jsonl").write_text("{x\n")),
    "no metadata.jsonl": (True, lambda d: d["train"].joinpath("metadata.jsonl").unlink()),
    "a file for the split folder": (True, lambda d: (shutil.rmtree(d["eval"]), d["eval"].write_text("not a folder"))),
    "vocabulary of comments only": (True, lambda d: d["vocabulary"].write_text("# nothing\n\n")),
    "vocabulary not UTF-8": (True, lambda d: d["vocabulary"].write_bytes(b"caf\xe9\n")),
}


@pytest.mark.parametrize("case", list(SPEECH_CASES))
def test_speech_loader_and_validator_agree(tmp_path, case):
    expect_error, breakage = SPEECH_CASES[case]
    d = _speech_data(tmp_path / "data")
    breakage(d)
    assert_agree(_write_recipe(tmp_path, "speech", {k: str(p) for k, p in d.items()}), expect_error)


def test_speech_nan_samples_are_the_one_validation_only_error(tmp_path):
    """Finding NaN samples decodes every clip in full, which a run does not pay for up front: the
    loader passes the clip (its header is fine) and the run stops when it loads it (load_audio)."""
    d = _speech_data(tmp_path / "data")
    nan = _tone(0.2, 16000)
    nan[10] = np.nan
    sf.write(d["eval"] / "nan.wav", nan, 16000, subtype="FLOAT")
    _add_clip(d["eval"], "nan.wav", None)
    recipe = load_recipe(_write_recipe(tmp_path, "speech", {k: str(p) for k, p in d.items()}))
    problems = v.validate_data(recipe)
    assert [(p.severity, p.line) for p in problems] == [("error", 2)] and "nan.wav: audio holds NaN" in problems[0].message
    assert [e.id for e in get_modality("speech").load_data(recipe).eval] == ["eval/c.wav", "eval/nan.wav"]


# ---------------------------------------------------------------- image


def _image_data(root: Path) -> dict[str, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    for case in ("ok", "grayscale"):
        write_case(images, case)
    _lines(root / "captions.jsonl", [
        {"file_name": "images/ok.png", "caption": "an ok thing, zentrix style"},
        {"file_name": "images/grayscale.png", "caption": "a grey thing, zentrix style"},
    ])
    shutil.copy(BRAND / "palette.json", root / "palette.json")
    _lines(root / "prompts.jsonl", [{"id": "p0", "prompt": "a circle"}, {"id": "p1", "prompt": "two squares"}])
    return {"references": images, "captions": root / "captions.jsonl", "palette": root / "palette.json", "eval": root / "prompts.jsonl"}


def _add_image(d: dict, case: str, caption: bool = True) -> None:
    path = write_case(d["references"], case)
    if caption:
        with open(d["captions"], "a") as handle:
            handle.write(json.dumps({"file_name": f"images/{path.name}", "caption": f"a {case} thing"}) + "\n")


def _add_caption_line(d: dict, row) -> None:
    with open(d["captions"], "a") as handle:
        handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


IMAGE_CASES: dict[str, tuple[bool, Callable[[dict], None]]] = {
    "clean (a grayscale reference: warning)": (False, lambda d: None),
    "transparency, CMYK (warnings)": (False, lambda d: (_add_image(d, "rgba"), _add_image(d, "cmyk"))),
    "an image without a caption (warning)": (False, lambda d: _add_image(d, "large", caption=False)),
    "an empty caption (warning)": (False, lambda d: _lines(d["captions"], [{"file_name": "images/ok.png", "caption": ""}])),
    **{f"{case} reference": (True, lambda d, case=case: _add_image(d, case)) for case in ("corrupt", "garbage", "empty", "tiny", "huge")},
    "a refused reference without a caption": (True, lambda d: _add_image(d, "tiny", caption=False)),
    "the same image twice": (True, lambda d: shutil.copy(d["references"] / "ok.png", d["references"] / "ok-again.png")),
    "captions: invalid JSON": (True, lambda d: _add_caption_line(d, "{x")),
    "captions: no file_name": (True, lambda d: _add_caption_line(d, {"caption": "x"})),
    "captions: duplicate file_name": (True, lambda d: _add_caption_line(d, {"file_name": "images/ok.png", "caption": "x"})),
    "captions: caption not a string": (True, lambda d: d["captions"].write_text(
        json.dumps({"file_name": "images/ok.png", "caption": 3}) + "\n" + json.dumps({"file_name": "images/grayscale.png"}) + "\n")),
    "captions: a file that does not exist": (True, lambda d: _add_caption_line(d, {"file_name": "images/gone.png", "caption": "x"})),
    "captions: a file outside the references": (True, lambda d: _add_caption_line(d, {"file_name": "palette.json", "caption": "x"})),
    "references is a file": (True, lambda d: (shutil.rmtree(d["references"]), d["references"].write_bytes(b"x"))),
    "no images": (True, lambda d: (shutil.rmtree(d["references"]), d["references"].mkdir(), _lines(d["captions"], []))),
    "palette not JSON": (True, lambda d: d["palette"].write_text("{x")),
    "palette empty": (True, lambda d: d["palette"].write_text("[]")),
    "palette not UTF-8": (True, lambda d: d["palette"].write_bytes(b'["#\xe9"]')),
    "palette is a folder": (True, lambda d: (d["palette"].unlink(), d["palette"].mkdir())),
    "palette colour not hex": (True, lambda d: d["palette"].write_text('["#12345"]')),
    "prompts: duplicate id": (True, lambda d: _lines(d["eval"], [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])),
    "prompts: blank prompt": (True, lambda d: _lines(d["eval"], [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": " "}])),
    "prompts: empty file": (True, lambda d: d["eval"].write_bytes(b"")),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_loader_and_validator_agree(tmp_path, case):
    expect_error, breakage = IMAGE_CASES[case]
    d = _image_data(tmp_path / "brand")
    breakage(d)
    assert_agree(_write_recipe(tmp_path, "image", {k: str(p) for k, p in d.items()}), expect_error)
