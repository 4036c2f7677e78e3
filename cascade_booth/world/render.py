"""Draw a scene (a design in a context, with pose and light) at any size from its vector description.

The canvas is drawn at ``SUPERSAMPLE`` x the requested size and box-filtered down, so edges are
anti-aliased and the fine patterns (1-2 px strokes at 128 px) average into a tint at 32 px: at stage
one's size the pattern cannot be read, and stage two must restore it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cascade_booth.world.contexts import PAINTERS
from cascade_booth.world.design import Design, design
from cascade_booth.world.objects import primitives
from cascade_booth.world.vocab import ACCENTS

PATTERN_PX = 128  # pattern strokes are specified in pixels of a 128 px image
DETAIL_COLOURS = {"face": (244, 240, 228), "charcoal": (38, 38, 42), "flame": (250, 150, 30),
                  "flame_core": (255, 232, 120)}


@dataclass(frozen=True)
class Scene:
    design: int
    context: str
    x: float = 0.5        # object centre, fraction of the width
    ground: float = 0.86  # ground line, fraction of the height
    scale: float = 1.0
    flip: bool = False
    light: float = 1.0    # overall brightness
    light_dir: float = 1.0  # +1: lit from the left, -1: from the right
    background: int = 0   # seed of the context's own variation

    def to_json(self) -> dict:
        return asdict(self)


def _supersample(size: int) -> int:
    return 4 if size <= 128 else 2


def _pattern_mask(kind: str, n: int, origin: tuple[float, float], unit: float) -> np.ndarray:
    """Where the accent colour shows on the body (1.0) at canvas size ``n``; ``unit`` = px per 128-px px."""
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32)
    x, y = (xs - origin[0]) / unit, (ys - origin[1]) / unit  # in 128-px pixels, anchored to the object
    if kind == "stripes":
        return (np.mod(y, 5.0) < 1.3).astype(np.float32)
    if kind == "dots":
        row = np.floor(y / 6.0)
        dx = np.mod(x + 3.0 * np.mod(row, 2), 6.0) - 3.0
        dy = np.mod(y, 6.0) - 3.0
        return (dx * dx + dy * dy < 1.25 ** 2).astype(np.float32)
    if kind == "checks":
        return ((np.mod(x, 7.0) < 1.3) | (np.mod(y, 7.0) < 1.3)).astype(np.float32)
    return np.zeros((n, n), np.float32)


class _Canvas:
    """Maps object units (x from centre, y up from ground, 1 = canvas height x scale) to pixels."""

    def __init__(self, n: int, scene: Scene):
        self.n, self.scene = n, scene
        self.k = n * scene.scale

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return (self.scene.x * self.n + x * self.k, self.scene.ground * self.n - y * self.k)

    def box(self, b: tuple) -> tuple[float, float, float, float]:
        (x0, y0), (x1, y1) = self.pt(b[0], b[3]), self.pt(b[2], b[1])
        return (x0, y0, x1, y1)

    def draw(self, surface: ImageDraw.ImageDraw, prim: tuple, fill) -> None:
        kind, geo, _, width = prim
        w = max(1, int(round(width * self.k)))
        if kind == "polygon":
            surface.polygon([self.pt(*p) for p in geo], fill=fill)
        elif kind == "line":
            surface.line([self.pt(*p) for p in geo], fill=fill, width=w)
        elif kind == "ellipse":
            surface.ellipse(self.box(geo), fill=fill)
        elif kind == "rect":
            surface.rectangle(self.box(geo), fill=fill)
        elif kind == "rounded":
            surface.rounded_rectangle(self.box(geo), radius=w, fill=fill)
        elif kind == "ring":
            surface.ellipse(self.box(geo), outline=fill, width=w)
        elif kind == "outline_ellipse":
            surface.ellipse(self.box(geo), outline=fill, width=w)
        elif kind == "outline_rect":
            surface.rectangle(self.box(geo), outline=fill, width=w)
        elif kind == "outline_rounded":
            surface.rounded_rectangle(self.box(geo), radius=max(w * 3, 1), outline=fill, width=w)
        else:
            raise ValueError(f"unknown primitive {kind!r}")


def _detail_rgb(name: str, d: Design) -> tuple[int, int, int]:
    if name == "accent":
        return ACCENTS[d.accent]
    if name == "inside":  # the bowl's inner wall: the body colour in shadow
        return tuple(int(c * 0.7) for c in d.body_rgb())  # type: ignore[return-value]
    return DETAIL_COLOURS[name]


def _draw_object(canvas: _Canvas, d: Design) -> Image.Image:
    """The object alone on a transparent layer: patterned, shaded body, then its details."""
    n = canvas.n
    body, details = primitives(d)
    mask = Image.new("L", (n, n), 0)
    surface = ImageDraw.Draw(mask)
    for prim in body:
        canvas.draw(surface, prim, 255)
    origin = canvas.pt(0.0, 0.0)
    accent = _pattern_mask(d.pattern, n, origin, canvas.k / PATTERN_PX)[..., None]
    rgb = np.asarray(d.body_rgb(), np.float32) * (1 - accent) + np.asarray(ACCENTS[d.accent], np.float32) * accent
    xs = (np.arange(n, dtype=np.float32) - origin[0]) / canvas.k  # shading: lit side brighter, like a cylinder
    shade = 1.0 + 0.16 * np.clip(-xs * canvas.scene.light_dir / 0.3, -1, 1)
    rgb = np.clip(rgb * shade[None, :, None], 0, 255).astype(np.uint8)
    layer = Image.fromarray(rgb, "RGB").convert("RGBA")
    layer.putalpha(mask)
    top = ImageDraw.Draw(layer)
    for prim in details:
        canvas.draw(top, prim, _detail_rgb(prim[2], d) + (255,))
    return layer


def draw_scene(scene: Scene, size: int) -> Image.Image:
    """The scene as an RGB image of ``size`` x ``size`` pixels (deterministic)."""
    n = size * _supersample(size)
    image = Image.new("RGB", (n, n))
    PAINTERS[scene.context](ImageDraw.Draw(image), n, scene.ground, np.random.default_rng([7, scene.background]))
    d = design(scene.design)
    mirrored = Scene(**{**asdict(scene), "x": 1 - scene.x}) if scene.flip else scene
    canvas = _Canvas(n, mirrored)
    layer = _draw_object(canvas, d)
    if scene.flip:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    shadow = Image.new("L", (n, n), 0)
    cx, gy, k = scene.x * n, scene.ground * n, canvas.k
    ImageDraw.Draw(shadow).ellipse((cx - 0.3 * k, gy - 0.025 * k, cx + 0.3 * k, gy + 0.025 * k), fill=90)
    image.paste((20, 20, 20), mask=shadow)
    image.paste(layer, mask=layer)
    if scene.light != 1.0:
        image = Image.fromarray(np.clip(np.asarray(image, np.float32) * scene.light, 0, 255).astype(np.uint8))
    # Low-pass at half an output pixel before decimating: detail finer than the output's Nyquist limit
    # (the patterns at 32 px) becomes a tint instead of a moire that would leak the pattern.
    image = image.filter(ImageFilter.GaussianBlur(radius=0.5 * n / size))
    return image.resize((size, size), Image.Resampling.BOX)
