"""Image data: every kind of bad reference image gets a clear result (converted with a warning) or a
one-line error naming the file (and its captions.jsonl line); image recipe keys are strict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mmadapt.engine.validate import validate_data
from mmadapt.errors import DataError, RecipeError
from mmadapt.modalities.image.data import read_image, read_prompts, read_references
from mmadapt.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
BRAND = ROOT / "datasets" / "brand-style"


def _rgb(size=(32, 32), colour=(255, 111, 97)) -> Image.Image:
    return Image.new("RGB", size, colour)


def write_case(folder: Path, case: str) -> Path:
    """One reference file of kind ``case`` in ``folder``; returns its path."""
    path = folder / f"{case}.png"
    if case == "ok":
        _rgb().save(path)
    elif case == "corrupt":
        noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # header survives, pixel data truncated
    elif case == "garbage":
        path.write_bytes(b"this is not an image at all" * 10)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "tiny":
        _rgb((4, 4)).save(path)
    elif case == "huge":
        Image.new("L", (9000, 8)).save(path)  # 9000 px a side: refused before decoding
    elif case == "grayscale":
        Image.new("L", (32, 32), 128).save(path)
    elif case == "gray16":
        Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)).save(path)
    elif case == "cmyk":
        path = folder / f"{case}.jpg"
        Image.new("CMYK", (32, 32), (0, 120, 120, 0)).save(path, format="JPEG")
    elif case == "rgba":
        im = Image.new("RGBA", (32, 32), (27, 42, 73, 255))
        im.putpixel((0, 0), (0, 0, 0, 0))
        im.save(path)
    elif case == "palette_alpha":
        im = Image.new("P", (32, 32), 1)
        im.putpalette([0, 0, 0, 255, 219, 88] + [0] * 762)
        im.info["transparency"] = 0
        im.putpixel((3, 3), 0)
        im.save(path, transparency=0)
    elif case == "large":
        _rgb((256, 256)).save(path)
    else:  # pragma: no cover
        raise ValueError(case)
    return path


CONVERTED = {  # case -> words the warning must hold; the image comes back RGB at the asked size
    "grayscale": "grayscale image converted to RGB",
    "gray16": "16-bit grayscale image converted to RGB",
    "cmyk": "CMYK image converted to RGB",
    "rgba": "RGBA with transparency: composited over white",
    "palette_alpha": "P with transparency: composited over white",
    "large": "256x256 downscaled to 32x32",
}
REFUSED = {  # case -> words of the one-line error
    "corrupt": "corrupt or truncated image",
    "garbage": "not an image or corrupt",
    "empty": "empty image file (0 bytes)",
    "tiny": "image is 4x4; references need at least 8 px a side",
    "huge": "image is 9000x8; the limit is 8192 px a side",
}


@pytest.mark.parametrize("case", sorted(CONVERTED))
def test_convertible_images_come_back_rgb_with_a_note(tmp_path, case):
    image, notes = read_image(write_case(tmp_path, case), (32, 32))
    assert image.mode == "RGB" and image.size == (32, 32)
    assert notes == [CONVERTED[case]]


def test_transparency_is_composited_over_white_and_plain_rgb_has_no_note(tmp_path):
    image, _ = read_image(write_case(tmp_path, "rgba"))
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((5, 5)) == (27, 42, 73)
    assert read_image(write_case(tmp_path, "ok"), (32, 32))[1] == []
    gray16, _ = read_image(write_case(tmp_path, "gray16"))
    assert gray16.getpixel((0, 0)) == (156, 156, 156)  # 40000 / 65535 * 255, not clipped to white


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unusable_images_are_one_line_errors_naming_the_file(tmp_path, case):
    path = write_case(tmp_path, case)
    with pytest.raises(DataError) as info:
        read_image(path, (32, 32))
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: ") and REFUSED[case] in text and "fix:" in text


def _dataset(tmp_path: Path, cases: list[str], caption_all: bool = True) -> dict[str, Path]:
    root = tmp_path / "brand"
    images = root / "images"
    images.mkdir(parents=True)
    paths = [write_case(images, c) for c in cases]
    lines = [{"file_name": f"images/{p.name}", "caption": f"a {p.stem} thing, zentrix style"} for p in paths]
    if not caption_all:
        lines = lines[:-1]
    (root / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    shutil.copy(BRAND / "palette.json", root / "palette.json")
    (root / "prompts.jsonl").write_text('{"id": "p0", "prompt": "a circle"}\n{"id": "p1", "prompt": "two squares"}\n')
    return {"root": root, "images": images, "captions": root / "captions.jsonl"}


def _recipe(tmp_path: Path, data: dict[str, Path], **data_extra) -> Path:
    raw = {
        "name": "img",
        "modality": "image",
        "base_model": "embedded:shapes-diffusion",
        "data": {
            "references": str(data["images"]),
            "captions": str(data["captions"]),
            "palette": str(data["root"] / "palette.json"),
            "eval": str(data["root"] / "prompts.jsonl"),
            **data_extra,
        },
        "strategies": {"prompt": {"template": "{prompt}, zentrix style"}},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_validate_reports_every_image_with_its_captions_line(tmp_path):
    cases = ["ok", "corrupt", "empty", "tiny", "huge", "grayscale", "cmyk", "rgba", "palette_alpha"]
    data = _dataset(tmp_path, cases, caption_all=False)  # palette_alpha has no caption line
    problems = validate_data(load_recipe(_recipe(tmp_path, data)))
    found = {(p.severity, p.line, p.message.split(":")[0]) for p in problems}
    captions = str(data["captions"])
    for n, case in enumerate(cases, start=1):
        name = write_case.__name__ and (f"{case}.jpg" if case == "cmyk" else f"{case}.png")
        if case in REFUSED:
            assert ("error", n, name) in found, (case, problems)
        elif case in CONVERTED and case != "palette_alpha":
            assert ("warning", n, name) in found, (case, problems)
    by_file = {p.file: p for p in problems if p.file.endswith("palette_alpha.png")}
    assert len(by_file) == 1  # reported against the image itself (no captions line): converted + auto-captioned
    assert any("auto-captioned" in p.message for p in problems if p.file.endswith("palette_alpha.png"))
    assert all(p.file == captions for p in problems if p.line is not None)
    assert not any(p.severity == "error" and p.message.startswith("ok.png") for p in problems)


def test_validate_cli_exits_2_on_bad_images_and_0_on_warnings(tmp_path, capsys):
    from click.testing import CliRunner

    from mmadapt.cli import main

    bad = _recipe(tmp_path, _dataset(tmp_path, ["ok", "corrupt"]))
    result = CliRunner().invoke(main, ["data", "validate", str(bad)])
    assert result.exit_code == 2 and "corrupt.png" in result.output and "corrupt or truncated" in result.output
    other = tmp_path / "second"
    other.mkdir()
    warn = _recipe(other, _dataset(other, ["ok", "grayscale"]))
    result = CliRunner().invoke(main, ["data", "validate", str(warn)])
    assert result.exit_code == 0 and "converted to RGB" in result.output


def test_loader_lists_every_bad_reference_in_one_line(tmp_path):
    data = _dataset(tmp_path, ["ok", "corrupt", "tiny", "cmyk"])
    with pytest.raises(DataError) as info:
        read_references(data["images"], data["captions"], None)
    text = str(info.value)
    assert text.startswith(f"{data['captions']}: ") and "\n" not in text
    assert "line 2: corrupt.png: corrupt or truncated" in text and "line 3: tiny.png: image is 4x4" in text
    assert "cmyk" not in text  # converted, not refused
    good = _dataset(tmp_path / "g", ["ok", "cmyk", "rgba"], caption_all=False)
    refs = read_references(good["images"], good["captions"], None)
    assert [r.id for r in refs] == ["cmyk.jpg", "ok.png", "rgba.png"]
    assert [r.caption is None for r in refs] == [False, False, True] and all(r.image.mode == "RGB" for r in refs)


def test_captions_and_prompts_errors_name_the_line(tmp_path):
    data = _dataset(tmp_path, ["ok"])
    data["captions"].write_text('{"file_name": "images/ok.png", "caption": "x"}\nnot json\n{"file_name": "images/gone.png"}\n')
    problems = validate_data(load_recipe(_recipe(tmp_path, data)))
    errors = {(p.line, p.message.split(" (")[0]) for p in problems if p.severity == "error"}
    assert (2, "invalid JSON") in errors and (3, "images/gone.png does not exist") in errors
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n{"id": "b"}\n')
    with pytest.raises(DataError, match=r"line 2: duplicate id 'a' \(first at p.jsonl:1\); line 3: 'prompt' must be a non-empty string"):
        read_prompts(prompts)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"data": {"references": "x", "eval": "y", "refs": "z"}}, "data.refs: unknown key"),
        ({"inference": {"step": 3}}, "inference.step: unknown key (did you mean 'steps'?)"),
        ({"inference": {"guidance_scale": -1}}, "inference.guidance_scale: Input should be greater than or equal to 0"),
        (
            {"strategies": {"prompt": {"template": "zentrix style"}}},
            "strategies.prompt.template: Value error, template must contain {prompt}",
        ),
        (
            {"strategies": {"retrieval": {"strength": 1.5}}},
            "strategies.retrieval.strength: Input should be less than or equal to 1",
        ),
        ({"strategies": {"adapter": {"rank": 4}}}, "strategies.adapter.rank: unknown key"),
        ({"strategies": {"adapter": {"train": {"lr": 0}}}}, "strategies.adapter.train.lr: Input should be greater than 0"),
        ({"strategies": {"full": {"r": 4}}}, "strategies.full.r: unknown key"),
        (
            {"data": {"references": "x", "eval": "y", "evaluator": {"clipp": "a"}}},
            "data.evaluator.clipp: unknown key (did you mean 'clip'?)",
        ),
        ({"eval": {"metrics": ["clip_score"]}}, "eval.metrics[0]: unknown metric 'clip_score'"),
    ],
)
def test_image_recipe_keys_are_strict(tmp_path, override, message):
    data = _dataset(tmp_path, ["ok"])
    raw = yaml.safe_load(_recipe(tmp_path, data).read_text())
    for key, value in override.items():
        if key == "data":
            value = {**raw["data"], **value}
        raw[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_shipped_recipe_and_data_validate_clean():
    recipe = load_recipe(ROOT / "recipes" / "image" / "brand-style.yaml")
    assert recipe.modality == "image" and recipe.compare.stacks[0] == "base"
    assert validate_data(recipe) == []
