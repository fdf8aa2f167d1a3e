import importlib.util
import json
from pathlib import Path

from PIL import Image

from tools import shapes_world as sw

BRAND = Path(__file__).resolve().parents[2] / "datasets" / "brand-style"


def _make_dataset_module():
    spec = importlib.util.spec_from_file_location("make_brand_dataset", BRAND / "make_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_files_are_what_the_script_writes(tmp_path):
    _make_dataset_module().main(["--out", str(tmp_path)])
    shipped = sorted(p.relative_to(BRAND) for p in BRAND.rglob("*") if p.is_file() and p.suffix in {".png", ".jsonl", ".json"})
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert shipped == written
    for rel in written:
        if rel.suffix == ".png":
            assert Image.open(BRAND / rel).tobytes() == Image.open(tmp_path / rel).tobytes(), rel
        else:
            assert (BRAND / rel).read_text() == (tmp_path / rel).read_text(), rel


def test_captions_images_and_prompts():
    rows = [json.loads(line) for line in (BRAND / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 24
    for row in rows:
        image = Image.open(BRAND / row["file_name"])
        assert image.size == (32, 32) and image.mode == "RGB"
        assert row["caption"].endswith("zentrix style")
    prompts = [json.loads(line)["prompt"] for line in (BRAND / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 48 == len(set(prompts))
    banned = {"zentrix", "style", *sw.BRAND_PALETTE, *sw.BASE_PALETTE, "background", *sw.TEXTURES}
    for prompt in prompts:
        assert not banned & set(prompt.replace(",", " ").split()), prompt
    assert {s for s in sw.SHAPES if any(s in p for p in prompts)} == set(sw.SHAPES)
