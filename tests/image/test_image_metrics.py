import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmadapt.errors import DataError
from mmadapt.modalities.image import metrics as ev
from tools import shapes_world as sw


def solid(rgb, size=8):
    return Image.new("RGB", (size, size), tuple(rgb))


def test_rgb_to_lab_reference_values():
    lab = ev.rgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255]], dtype=float))
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.1)
    np.testing.assert_allclose(lab[3], [32.30, 79.19, -107.86], atol=0.1)


def test_palette_adherence_extremes_and_mixture():
    palette = ["#FF6F61", "#1B2A49"]
    assert ev.palette_adherence(solid((255, 111, 97)), palette) == pytest.approx(1.0)
    assert ev.palette_adherence(solid((0, 200, 0)), palette) == pytest.approx(0.0)
    half = np.zeros((4, 4, 3), dtype=np.uint8)
    half[:2] = (27, 42, 73)
    half[2:] = (0, 200, 0)
    assert ev.palette_adherence(half, palette) == pytest.approx(0.5)


def test_palette_adherence_is_linear_in_delta_e():
    palette = [(128, 128, 128)]
    de = float(ev.nearest_palette_delta_e(solid((140, 128, 128)), palette)[0])
    assert 0 < de < 50
    assert ev.palette_adherence(solid((140, 128, 128)), palette) == pytest.approx(1 - de / 50)
    assert ev.palette_adherence(solid((140, 128, 128)), palette, max_delta_e=2 * de) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ev.palette_adherence(solid((1, 2, 3)), palette, max_delta_e=0)


def test_palette_separates_brand_from_base_world():
    palette = list(sw.BRAND_PALETTE.values())
    brand = ev.palette_adherence_scores([im for im, _, _ in sw.render_brand(8, seed=1)], palette)
    base = ev.palette_adherence_scores([im for im, _ in sw.generate(8, seed=1)], palette)
    assert min(brand) > max(base)


def test_load_palette_forms_and_errors(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["#000000", "#FFFFFF"]))
    (tmp_path / "b.json").write_text(json.dumps({"name": "x", "colors": {"navy": "#1B2A49"}}))
    (tmp_path / "c.json").write_text(json.dumps(["#12345"]))
    (tmp_path / "d.json").write_text("{not json")
    assert ev.load_palette(tmp_path / "a.json") == [(0, 0, 0), (255, 255, 255)]
    assert ev.load_palette(tmp_path / "b.json") == [(27, 42, 73)]
    for name in ("c.json", "d.json", "missing.json"):
        with pytest.raises(DataError) as info:
            ev.load_palette(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)


def test_shipped_palette_matches_the_world():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "datasets" / "brand-style" / "palette.json"
    assert ev.load_palette(path) == list(sw.brand_rgb().values())


@pytest.fixture(scope="module")
def tiny_clip():
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from tools.shapes_text import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
        ),
        projection_dim=16,
    )
    return ev.ClipEmbedder.from_transformers(CLIPModel(cfg), tok)


def test_clip_i_properties(tiny_clip):
    imgs = [im for im, _ in sw.generate(4, seed=2)]
    same = ev.clip_i_scores(imgs[:1], imgs[:1], tiny_clip)
    assert same == [pytest.approx(1.0, abs=1e-5)]
    scores = ev.clip_i_scores(imgs, imgs, tiny_clip)
    excl = ev.clip_i_scores(imgs, imgs, tiny_clip, exclude_self=True)
    sims = (tiny_clip.embed_images(imgs) @ tiny_clip.embed_images(imgs).T).numpy()
    np.testing.assert_allclose(scores, sims.mean(1), atol=1e-5)
    np.testing.assert_allclose(excl, (sims.sum(1) - np.diag(sims)) / 3, atol=1e-5)
    assert ev.clip_i(imgs, imgs, tiny_clip) == pytest.approx(float(np.mean(scores)))
    assert all(-1.0 <= s <= 1.0 for s in scores)
    with pytest.raises(ValueError):
        ev.clip_i(imgs, [], tiny_clip)


def test_clip_t_properties(tiny_clip):
    pairs = sw.generate(3, seed=5)
    imgs, caps = [p[0] for p in pairs], [p[1] for p in pairs]
    scores = ev.clip_t_scores(imgs, caps, tiny_clip)
    img_e, txt_e = tiny_clip.embed_images(imgs), tiny_clip.embed_texts(caps)
    np.testing.assert_allclose(scores, (img_e * txt_e).sum(-1).numpy(), atol=1e-5)
    assert torch.allclose(txt_e.norm(dim=-1), torch.ones(3), atol=1e-5)
    acc = ev.clip_t_retrieval_accuracy(imgs, caps, tiny_clip)
    sims = img_e @ txt_e.T
    assert acc == pytest.approx(float((sims.argmax(1) == torch.arange(3)).float().mean()))
    with pytest.raises(ValueError):
        ev.clip_t(imgs, caps[:2], tiny_clip)


def test_open_clip_wrapper_gives_unit_embeddings():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    )
    preprocess = open_clip.image_transform(32, is_train=False)
    tokenizer = open_clip.SimpleTokenizer(context_length=16)
    emb = ev.ClipEmbedder.from_open_clip(model, preprocess, tokenizer)
    imgs = [im for im, _ in sw.generate(2, seed=0)]
    e = emb.embed_images(imgs)
    assert e.shape == (2, 16) and torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert ev.clip_t_scores(imgs, ["a red circle", "two stars"], emb)[0] == pytest.approx(
        float(e[0] @ emb.embed_texts(["a red circle"])[0]), abs=1e-5
    )


def test_contact_sheet(tmp_path):
    imgs = [im for im, _ in sw.generate(5, seed=0)]
    path = ev.contact_sheet(imgs, [f"caption {i}" for i in range(5)], tmp_path / "sub" / "sheet.png", columns=3, scale=2)
    sheet = Image.open(path)
    assert sheet.format == "PNG" and sheet.size == (3 * (64 + 4) + 4, 2 * (64 + 24 + 4) + 4)
    # the first image is pasted unchanged (nearest upscale) at the top-left cell
    np.testing.assert_array_equal(np.asarray(sheet)[4:68:2, 4:68:2], np.asarray(imgs[0]))
    with pytest.raises(ValueError):
        ev.contact_sheet(imgs, ["one"], tmp_path / "x.png")
    with pytest.raises(ValueError):
        ev.contact_sheet([], None, tmp_path / "y.png")


def test_captions_wrap_between_words():
    assert ev.wrap_caption("a red circle in the center of a blue field", 12) == ["a red circle", "in the", "center of a", "blue field"]
    assert ev.wrap_caption("  two\nstars  ", 12) == ["two stars"]
    assert ev.wrap_caption("", 12) == [""]
    # only a word longer than the line on its own is cut
    assert ev.wrap_caption("a supercalifragilistic star", 10) == ["a supercal", "ifragilist", "ic star"]
    assert ev.wrap_caption("a well-known star", 12) == ["a well-known", "star"]  # a hyphen is not a break


def test_contact_sheet_draws_whole_words(tmp_path, monkeypatch):
    from PIL import ImageDraw

    drawn: list[str] = []
    real = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, text, *a, **kw: (drawn.append(text), real(self, xy, text, *a, **kw)))
    imgs = [im for im, _ in sw.generate(1, seed=0)]
    # 32-px images at scale 1: a cell of 32 px holds 8 characters a line, 24 px of caption hold 2 lines
    # (cut by characters, this was "the cent", "er of it")
    ev.contact_sheet(imgs, ["the center of it"], tmp_path / "sheet.png", scale=1)
    assert drawn == ["the", "center"]
