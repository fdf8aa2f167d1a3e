"""The shapes world: a deterministic generator of captioned images.

The embedded image models (``shapes-clip``, ``shapes-diffusion``) are trained on it,
because no image weights can be downloaded here. A *scene* is one to three shapes of
one colour on a background colour with a texture; :func:`render` draws it (4x
supersampled, box-filtered down so edges are anti-aliased) and :func:`caption` writes
it in a small grammar, e.g. ``"two orange triangles in a row on a teal background,
diagonal stripes"``. Attribute phrases are sometimes left out of a caption
(``caption(scene, rng)``), so content-only prompts such as ``"two triangles in a
row"`` are in the training distribution too.

The **brand style** ("zentrix style") is reserved: the base world never produces its
palette (coral, deep navy, mint, mustard — all far, in CIELAB, from every base
colour), its motif (a double border: two 2-px lines, at the edge and 4 px in) nor the word
``zentrix``. :func:`render_brand` draws brand-style images for a brand reference set.

Everything is a pure function of a seed: the same seed gives the same pixels.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

from PIL import Image, ImageDraw

SUPERSAMPLE = 4
DEFAULT_SIZE = 32

# The base palette: named colours the base world draws with.
BASE_PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (214, 32, 40),
    "orange": (255, 140, 0),
    "yellow": (255, 240, 0),
    "green": (34, 160, 60),
    "teal": (0, 128, 128),
    "blue": (30, 80, 220),
    "purple": (128, 50, 180),
    "pink": (240, 110, 200),
    "brown": (120, 70, 30),
    "black": (12, 12, 12),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
}

# The reserved brand palette: never drawn by the base world.
BRAND_PALETTE: dict[str, str] = {
    "coral": "#FF6F61",
    "navy": "#1B2A49",
    "mint": "#98FF98",
    "mustard": "#FFDB58",
}
BRAND_TOKEN = "zentrix style"

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "diamond", "cross", "hexagon")
TEXTURES: tuple[str, ...] = ("plain", "stripes", "dots", "diagonal stripes")
COUNTS: dict[int, str] = {1: "one", 2: "two", 3: "three"}
# Where a single shape sits (fractions of the image side), and how several are laid out.
SINGLE_POSITIONS: dict[str, tuple[float, float]] = {
    "in the center": (0.5, 0.5),
    "at the top left": (0.3, 0.3),
    "at the top right": (0.7, 0.3),
    "at the bottom left": (0.3, 0.7),
    "at the bottom right": (0.7, 0.7),
}
LAYOUTS: tuple[str, ...] = ("in a row", "in a column", "on a diagonal")
SIZES: tuple[str, ...] = ("small", "large")


def hex_to_rgb(value: str) -> tuple[int, int, int]:
    """``"#FF6F61"`` -> ``(255, 111, 97)``."""
    text = value.strip().lstrip("#")
    if len(text) != 6:
        raise ValueError(f"not a #RRGGBB colour: {value!r}")
    return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))


def brand_rgb() -> dict[str, tuple[int, int, int]]:
    """The brand palette as RGB tuples."""
    return {name: hex_to_rgb(code) for name, code in BRAND_PALETTE.items()}


@dataclass(frozen=True)
class Scene:
    """One image of the shapes world, fully described."""

    shape: str
    count: int
    color: str  # a key of the palette in use
    background: str
    texture: str = "plain"
    placement: str = "in the center"  # a SINGLE_POSITIONS key for one shape, a LAYOUTS entry for more
    size: str = "large"  # one shape only: small | large
    brand: bool = False  # brand style: brand palette and the double-border motif
    texture_color: str | None = None  # brand scenes name their stripe/dot colour
    border_color: str | None = None  # brand scenes: colour of the double border
    jitter: tuple[float, float] = (0.0, 0.0)  # small offset of the whole layout, fraction of the side
    rotation: float = 0.0  # degrees, applied to every shape
    extra: dict = field(default_factory=dict, compare=False)

    def rgb(self, name: str) -> tuple[int, int, int]:
        return brand_rgb()[name] if self.brand else BASE_PALETTE[name]


def sample_scene(rng: random.Random) -> Scene:
    """A random base-world scene (never brand style)."""
    colors = list(BASE_PALETTE)
    shape = rng.choice(SHAPES)
    count = rng.choice((1, 2, 3))
    color = rng.choice(colors)
    background = rng.choice([c for c in colors if c != color])
    texture = rng.choice(TEXTURES)
    if count == 1:
        placement = rng.choice(list(SINGLE_POSITIONS))
        size = rng.choice(SIZES) if placement == "in the center" else "small"
    else:
        placement = rng.choice(LAYOUTS)
        size = "large"
    return Scene(
        shape=shape,
        count=count,
        color=color,
        background=background,
        texture=texture,
        placement=placement,
        size=size,
        jitter=(rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)),
        rotation=rng.uniform(-12.0, 12.0),
    )


def sample_brand_scene(rng: random.Random) -> Scene:
    """A random brand-style scene: brand colours only, a double border, plain or striped/dotted."""
    names = list(BRAND_PALETTE)
    shape = rng.choice(SHAPES)
    count = rng.choice((1, 2, 3))
    background = rng.choice(("navy", "navy", "mint"))
    color = rng.choice([c for c in names if c != background])
    texture = rng.choice(("plain", "plain", "stripes", "dots", "diagonal stripes"))
    others = [c for c in names if c not in (background, color)]
    texture_color = rng.choice(others)
    border_color = rng.choice([c for c in ("coral", "mustard") if c != background])
    if count == 1:
        placement = rng.choice(list(SINGLE_POSITIONS))
        size = rng.choice(SIZES) if placement == "in the center" else "small"
    else:
        placement = rng.choice(LAYOUTS)
        size = "large"
    return Scene(
        shape=shape,
        count=count,
        color=color,
        background=background,
        texture=texture,
        placement=placement,
        size=size,
        brand=True,
        texture_color=texture_color,
        border_color=border_color,
        jitter=(rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)),
        rotation=rng.uniform(-12.0, 12.0),
    )


# ---------------------------------------------------------------- captions


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """The caption of ``scene``.

    Without ``rng`` the full caption (every attribute). With ``rng`` attribute phrases
    are dropped at random (colour, placement, background, texture), as in training, so
    that shorter prompts mean the same thing with the rest left open. Brand scenes are
    captioned by content plus :data:`BRAND_TOKEN`, never by brand colour names.
    """

    def keep(p: float) -> bool:
        return rng is None or rng.random() < p

    count_word = COUNTS[scene.count]
    noun = scene.shape if scene.count == 1 else _plural(scene.shape)
    words = [count_word if (scene.count > 1 or rng is None or rng.random() < 0.5) else "a"]
    if scene.count == 1 and scene.size == "small" and scene.placement == "in the center" and keep(0.7):
        words.append("small")
    elif scene.count == 1 and scene.size == "large" and rng is not None and rng.random() < 0.2:
        words.append("large")
    if not scene.brand and keep(0.85):
        words.append(scene.color)
    words.append(noun)
    text = " ".join(words)
    if keep(0.7):
        text += " " + scene.placement
    if scene.brand:
        if scene.texture != "plain" and keep(0.5):
            text += f", {scene.texture}"
        return f"{text}, {BRAND_TOKEN}"
    if keep(0.8):
        article = "an" if scene.background[0] in "aeiou" else "a"
        text += f" on {article} {scene.background} background"
    if keep(0.75):
        text += f", {scene.texture}"
    return text


# ---------------------------------------------------------------- rendering


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def _texture_rgb(scene: Scene) -> tuple[int, int, int]:
    bg = scene.rgb(scene.background)
    if scene.brand and scene.texture_color:
        return scene.rgb(scene.texture_color)
    # base world: a tint (dark backgrounds) or a shade (light ones) of the background
    luminance = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return _mix(bg, (255, 255, 255), 0.45) if luminance < 140 else _mix(bg, (0, 0, 0), 0.35)


def _draw_texture(draw: ImageDraw.ImageDraw, scene: Scene, side: int) -> None:
    if scene.texture == "plain":
        return
    color = _texture_rgb(scene)
    period = side // 8  # 4 px at 32x32
    if scene.texture == "stripes":
        for y in range(0, side, period):
            draw.rectangle([0, y, side, y + period // 2 - 1], fill=color)
    elif scene.texture == "diagonal stripes":
        width = max(1, period // 2)
        for k in range(-side, 2 * side, period):
            draw.line([(k, 0), (k + side, side)], fill=color, width=width)
    elif scene.texture == "dots":
        radius = max(1, period // 4)
        for y in range(period // 2, side, period):
            for x in range(period // 2, side, period):
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)
    else:
        raise ValueError(f"unknown texture {scene.texture!r}")


def _centers(scene: Scene) -> tuple[list[tuple[float, float]], float]:
    """Shape centres (fractions of the side) and radius (fraction)."""
    jx, jy = scene.jitter
    if scene.count == 1:
        x, y = SINGLE_POSITIONS[scene.placement]
        radius = 0.34 if (scene.size == "large" and scene.placement == "in the center") else 0.19
        if scene.placement != "in the center":
            radius = 0.17
        return [(x + jx, y + jy)], radius
    n = scene.count
    span = 0.56 if n == 2 else 0.62
    offsets = [(-span / 2 + span * i / (n - 1)) for i in range(n)]
    if scene.placement == "in a row":
        pts = [(0.5 + o, 0.5) for o in offsets]
    elif scene.placement == "in a column":
        pts = [(0.5, 0.5 + o) for o in offsets]
    elif scene.placement == "on a diagonal":
        pts = [(0.5 + o, 0.5 + o) for o in offsets]
    else:
        raise ValueError(f"unknown layout {scene.placement!r}")
    radius = 0.2 if n == 2 else 0.14
    return [(x + jx, y + jy) for x, y in pts], radius


def _polygon(n: int, cx: float, cy: float, r: float, rot: float, start: float = -90.0) -> list[tuple[float, float]]:
    return [
        (
            cx + r * math.cos(math.radians(start + rot + 360.0 * k / n)),
            cy + r * math.sin(math.radians(start + rot + 360.0 * k / n)),
        )
        for k in range(n)
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float, color, bg) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
        inner = r * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=bg)
    elif shape == "square":
        draw.polygon(_polygon(4, cx, cy, r * 1.18, rot, start=-135.0), fill=color)
    elif shape == "diamond":
        pts = _polygon(4, cx, cy, r * 1.1, rot)
        pts = [(cx + (x - cx) * 0.75, y) for x, y in pts]
        draw.polygon(pts, fill=color)
    elif shape == "triangle":
        pts = _polygon(3, cx, cy + r * 0.15, r * 1.15, rot)
        draw.polygon(pts, fill=color)
    elif shape == "hexagon":
        draw.polygon(_polygon(6, cx, cy, r, rot, start=0.0), fill=color)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r * 1.12 if k % 2 == 0 else r * 0.45
            a = math.radians(-90.0 + rot + 36.0 * k)
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        draw.polygon(pts, fill=color)
    elif shape == "cross":
        w = r * 0.38
        c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))

        def rect(hx: float, hy: float) -> list[tuple[float, float]]:
            corners = [(-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy)]
            return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners]

        draw.polygon(rect(r, w), fill=color)
        draw.polygon(rect(w, r), fill=color)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _draw_double_border(draw: ImageDraw.ImageDraw, color, background, side: int) -> None:
    """The brand motif: a 6-px frame of background colour holding two 2-px lines (at the edge and 4 px in).

    The lines sit on even pixels, so they align with a 2x-downsampled latent grid.
    """
    width = max(1, side // DEFAULT_SIZE)  # one output pixel at 32x32, scaled with the size
    draw.rectangle([0, 0, side - 1, side - 1], outline=background, width=6 * width)
    for inset in (0, 4):
        o = inset * width
        draw.rectangle([o, o, side - 1 - o, side - 1 - o], outline=color, width=2 * width)


def _draw_scene(scene: Scene, side: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """Background, texture and shapes of ``scene`` on a ``side`` x ``side`` (supersampled) canvas."""
    bg = scene.rgb(scene.background)
    image = Image.new("RGB", (side, side), bg)
    draw = ImageDraw.Draw(image)
    _draw_texture(draw, scene, side)
    centers, radius = _centers(scene)
    color = scene.rgb(scene.color)
    for fx, fy in centers:
        _draw_shape(draw, scene.shape, fx * side, fy * side, radius * side, scene.rotation, color, bg)
    return image, draw


def render(scene: Scene, size: int = DEFAULT_SIZE) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``size`` x ``size`` pixels."""
    side = size * SUPERSAMPLE
    bg = scene.rgb(scene.background)
    image, draw = _draw_scene(scene, side)
    if scene.brand:
        _draw_double_border(draw, scene.rgb(scene.border_color or "coral"), bg, side)
    return image.resize((size, size), Image.Resampling.BOX)


def generate(n: int, seed: int = 0, size: int = DEFAULT_SIZE, *, drop_attributes: bool = True) -> list[tuple[Image.Image, str]]:
    """``n`` base-world (image, caption) pairs, a pure function of ``seed``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng)
        out.append((render(scene, size), caption(scene, rng if drop_attributes else None)))
    return out


def generate_scenes(n: int, seed: int = 0) -> list[Scene]:
    """``n`` base-world scenes, a pure function of ``seed``."""
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(n)]


def render_brand(n: int, seed: int = 0, size: int = DEFAULT_SIZE) -> list[tuple[Image.Image, str, Scene]]:
    """``n`` brand-style (image, caption, scene) triples for a brand reference set.

    Captions describe content and carry :data:`BRAND_TOKEN` (no colour names); the
    images use only the brand palette and carry the double-border motif.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = sample_brand_scene(rng)
        out.append((render(scene, size), caption(scene, None), scene))
    return out


class _FreeColourScene(Scene):
    """A scene whose colour names map to arbitrary RGB (``extra["rgb"]``)."""

    def rgb(self, name: str) -> tuple[int, int, int]:
        return self.extra["rgb"][name]


def render_detail(rng: random.Random, size: int = DEFAULT_SIZE) -> Image.Image:
    """A brand-naive image that teaches an autoencoder colour and 1-px detail in general.

    A base-world scene whose every colour (shape, background, texture) is drawn uniformly
    from the RGB cube, and, on about 60%, one to eight 1-px horizontal or vertical lines in
    random colours at random positions (sometimes adjacent, at a 2-px period). No brand
    palette, no frame, no caption: the autoencoder that trains on it learns to pass any
    colour and any pixel-sized line through, not any style.
    """

    def colour() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    base = sample_scene(rng)
    rgb = {name: colour() for name in BASE_PALETTE} | {"texture": colour()}
    scene = _FreeColourScene(**{**base.__dict__, "brand": True, "texture_color": "texture", "extra": {"rgb": rgb}})
    side = size * SUPERSAMPLE
    image, draw = _draw_scene(scene, side)
    if rng.random() < 0.6:
        for _ in range(rng.randint(1, 8)):
            at, start, stop = (rng.randrange(size) for _ in range(3))
            lo, hi = sorted((start, stop))
            lo, hi = (0, size - 1) if rng.random() < 0.5 else (lo, hi)
            box = [lo * SUPERSAMPLE, at * SUPERSAMPLE, (hi + 1) * SUPERSAMPLE - 1, (at + 1) * SUPERSAMPLE - 1]
            if rng.random() < 0.5:
                box = [box[1], box[0], box[3], box[2]]
            draw.rectangle(box, fill=colour())
    return image.resize((size, size), Image.Resampling.BOX)


def content_prompt(scene: Scene) -> str:
    """A prompt naming only the content of ``scene`` (count, shape, placement): no style words."""
    noun = scene.shape if scene.count == 1 else _plural(scene.shape)
    count_word = "a" if scene.count == 1 else COUNTS[scene.count]
    return f"{count_word} {noun} {scene.placement}"


def with_brand(scene: Scene, rng: random.Random) -> Scene:
    """``scene``'s content redrawn in the brand style (brand colours and border)."""
    brand = sample_brand_scene(rng)
    return replace(brand, shape=scene.shape, count=scene.count, placement=scene.placement, size=scene.size)
