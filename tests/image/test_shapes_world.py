import random

import numpy as np
import pytest

from mmadapt.modalities.image.metrics import nearest_palette_delta_e, palette_adherence, rgb_to_lab
from tools import shapes_world as sw


def test_same_seed_same_pixels_and_captions():
    a = sw.generate(6, seed=3)
    b = sw.generate(6, seed=3)
    assert [c for _, c in a] == [c for _, c in b]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for (x, _), (y, _) in zip(a, b))
    c = sw.generate(6, seed=4)
    assert [cap for _, cap in a] != [cap for _, cap in c]


def test_full_caption_grammar():
    scene = sw.Scene(
        shape="triangle", count=2, color="orange", background="teal", texture="diagonal stripes", placement="in a row"
    )
    assert sw.caption(scene) == "two orange triangles in a row on a teal background, diagonal stripes"
    one = sw.Scene(
        shape="cross", count=1, color="red", background="orange", texture="plain", placement="at the top left", size="small"
    )
    assert sw.caption(one) == "one red cross at the top left on an orange background, plain"
    assert sw.content_prompt(scene) == "two triangles in a row"


def test_dropped_captions_keep_count_and_shape():
    rng = random.Random(0)
    scenes = sw.generate_scenes(200, seed=1)
    caps = [sw.caption(s, rng) for s in scenes]
    for scene, cap in zip(scenes, caps):
        assert scene.shape in cap
    assert any("background" not in c for c in caps) and any("background" in c for c in caps)
    assert len(set(caps)) > 150


def test_render_draws_the_named_colours():
    scene = sw.Scene(
        shape="circle", count=1, color="red", background="blue", texture="plain", placement="in the center", size="large"
    )
    img = np.asarray(sw.render(scene, 32))
    assert img.shape == (32, 32, 3)
    assert tuple(img[16, 16]) == sw.BASE_PALETTE["red"]
    assert tuple(img[1, 1]) == sw.BASE_PALETTE["blue"]
    corner = sw.Scene(shape="square", count=1, color="yellow", background="black", placement="at the bottom right", size="small")
    img2 = np.asarray(sw.render(corner, 32))
    assert tuple(img2[22, 22]) == sw.BASE_PALETTE["yellow"] and tuple(img2[9, 9]) == sw.BASE_PALETTE["black"]


@pytest.mark.parametrize("texture", sw.TEXTURES)
def test_textures_differ(texture):
    base = sw.Scene(shape="star", count=1, color="white", background="teal", texture="plain", placement="at the top left")
    textured = sw.render(sw.Scene(**{**base.__dict__, "texture": texture}), 32)
    differs = not np.array_equal(np.asarray(textured), np.asarray(sw.render(base, 32)))
    assert differs == (texture != "plain")


def test_brand_palette_is_reserved():
    brand_lab = rgb_to_lab(np.array(list(sw.brand_rgb().values()), dtype=float))
    base_lab = rgb_to_lab(np.array(list(sw.BASE_PALETTE.values()), dtype=float))
    distances = np.sqrt(((brand_lab[:, None] - base_lab[None]) ** 2).sum(-1))
    assert distances.min() > 20.0
    words = " ".join(sw.caption(s) for s in sw.generate_scenes(300, seed=9))
    for reserved in ["zentrix", *sw.BRAND_PALETTE]:
        assert reserved not in words.split() and reserved not in words


def test_base_images_carry_no_brand_pixels_nor_border():
    for image, _ in sw.generate(60, seed=11):
        arr = np.asarray(image)
        share_on_brand = float((nearest_palette_delta_e(arr, list(sw.BRAND_PALETTE.values())) < 3.0).mean())
        assert share_on_brand < 0.05
        assert not _double_border(arr)


def _double_border(arr: np.ndarray) -> bool:
    """Rows 0-1 and 4-5 from each edge one colour, rows 2-3 another, on all four sides."""
    sides = [arr, arr.transpose(1, 0, 2), arr[::-1], arr[:, ::-1].transpose(1, 0, 2)]
    for a in sides:
        line = a[0, 6:26][0]
        lines = [a[r, 6:26] for r in (0, 1, 4, 5)]
        gap = [a[r, 6:26] for r in (2, 3)]
        if not (all((row == line).all() for row in lines) and all((row != line).any(axis=-1).all() for row in gap)):
            return False
    return True


def test_brand_images_have_the_double_border_and_brand_colours():
    for image, caption, scene in sw.render_brand(12, seed=0):
        arr = np.asarray(image)
        border = sw.brand_rgb()[scene.border_color]
        # two 2-px lines on even pixels (aligned with a 2x latent grid): rows/columns 0-1 and 4-5
        assert (arr[0:2, :] == border).all() and (arr[4:6, 4:28] == border).all()
        assert (arr[:, 0:2] == border).all() and (arr[4:28, 4:6] == border).all()
        assert caption.endswith(sw.BRAND_TOKEN)
        assert not any(name in caption for name in sw.BRAND_PALETTE)
        assert _double_border(arr)
        assert palette_adherence(arr, list(sw.BRAND_PALETTE.values())) > 0.7


def test_hex_to_rgb():
    assert sw.hex_to_rgb("#FF6F61") == (255, 111, 97)
    with pytest.raises(ValueError):
        sw.hex_to_rgb("#FFF")


def test_detail_images_are_brand_naive_colour_and_line_data():
    """The autoencoder's extra data: any colour, 1-px lines, no brand frame nor palette bias."""
    images = [np.asarray(sw.render_detail(random.Random(seed))) for seed in range(200)]
    assert (images[3] == np.asarray(sw.render_detail(random.Random(3)))).all()
    assert all(a.shape == (32, 32, 3) for a in images)
    assert not any(_double_border(a) for a in images)
    # colours spread over the RGB cube: many distinct colours, no more brand-like than uniform noise
    pixels = np.concatenate([a.reshape(-1, 3) for a in images])
    assert len(np.unique(pixels // 32, axis=0)) > 400
    noise = np.random.default_rng(0).integers(0, 256, size=pixels.shape)
    brand = list(sw.BRAND_PALETTE.values())
    near = lambda p: float((nearest_palette_delta_e(p, brand) < 10).mean())  # noqa: E731
    assert near(pixels) < 2 * near(noise) + 0.01
    # 1-px lines: some rows differ from both neighbours along their whole length
    def thin_lines(a):
        rows = a.astype(int)
        return sum(
            bool((np.abs(rows[i] - rows[i - 1]).sum(-1) > 0).all() and (np.abs(rows[i] - rows[i + 1]).sum(-1) > 0).all())
            for i in range(1, 31)
        )
    assert sum(thin_lines(a) + thin_lines(a.transpose(1, 0, 2)) > 0 for a in images) > 40
