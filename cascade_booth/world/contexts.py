"""Backgrounds for the world's contexts, each with its own random variation, drawn at any size.

Every painter takes a PIL drawing surface of ``n`` x ``n`` pixels, the ground line ``g`` (a fraction
of the height) and a numpy generator; everything is in fractions of ``n``, so the same scene draws
the same picture at 32 px and at 256 px.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import ImageDraw

Painter = Callable[[ImageDraw.ImageDraw, int, float, np.random.Generator], None]


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int = 12) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore


def _gradient(draw: ImageDraw.ImageDraw, n: int, y0: float, y1: float, top: tuple, bottom: tuple) -> None:
    rows = max(1, int((y1 - y0) * n))
    for i in range(rows):
        t = i / max(rows - 1, 1)
        colour = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.rectangle((0, int(y0 * n) + i, n, int(y0 * n) + i + 1), fill=colour)


def plain(draw, n, g, rng) -> None:
    base = _jitter((232, 230, 226), rng, 10)
    _gradient(draw, n, 0, g, _jitter(base, rng, 4), base)
    _gradient(draw, n, g, 1, tuple(c - 18 for c in base), tuple(c - 30 for c in base))


def beach(draw, n, g, rng) -> None:
    horizon = g - rng.uniform(0.22, 0.32)
    _gradient(draw, n, 0, horizon, _jitter((120, 180, 235), rng), _jitter((190, 220, 245), rng))
    sea = horizon + rng.uniform(0.08, 0.12)
    _gradient(draw, n, horizon, sea, _jitter((30, 110, 170), rng), _jitter((60, 150, 190), rng))
    _gradient(draw, n, sea, 1, _jitter((235, 215, 165), rng), _jitter((215, 190, 135), rng))
    for _ in range(3):  # foam lines
        y = rng.uniform(sea - 0.01, sea + 0.03) * n
        draw.line((0, y, n, y + rng.uniform(-2, 2)), fill=(245, 245, 240), width=max(1, n // 90))


def jungle(draw, n, g, rng) -> None:
    _gradient(draw, n, 0, 1, _jitter((30, 70, 35), rng), _jitter((20, 45, 20), rng))
    for _ in range(int(rng.integers(3, 6))):  # trunks
        x = rng.uniform(0, 1) * n
        draw.rectangle((x, 0, x + rng.uniform(0.02, 0.05) * n, g * n), fill=_jitter((80, 55, 30), rng, 15))
    for _ in range(int(rng.integers(45, 70))):  # leaves
        x, y = rng.uniform(-0.05, 1.05) * n, rng.uniform(-0.05, 1.0) * n
        rx, ry = rng.uniform(0.03, 0.08) * n, rng.uniform(0.012, 0.03) * n
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=_jitter((50, 130, 50), rng, 35))
    _gradient(draw, n, g + 0.02, 1, _jitter((60, 45, 25), rng), _jitter((40, 30, 15), rng))


def snow(draw, n, g, rng) -> None:
    horizon = g - rng.uniform(0.2, 0.3)
    _gradient(draw, n, 0, horizon, _jitter((170, 185, 200), rng), _jitter((210, 218, 228), rng))
    for _ in range(int(rng.integers(3, 7))):  # distant pines
        x, hgt = rng.uniform(0, 1) * n, rng.uniform(0.1, 0.2) * n
        base = horizon * n
        draw.polygon([(x, base - hgt), (x - hgt * 0.35, base), (x + hgt * 0.35, base)], fill=(70, 95, 85))
    _gradient(draw, n, horizon, 1, (242, 246, 250), _jitter((220, 228, 240), rng, 6))
    for _ in range(int(rng.integers(40, 80))):  # flakes
        x, y, r = rng.uniform(0, 1) * n, rng.uniform(0, 1) * n, rng.uniform(0.003, 0.008) * n
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(252, 252, 255))


def cobblestone(draw, n, g, rng) -> None:
    wall = g - rng.uniform(0.3, 0.4)
    _gradient(draw, n, 0, wall, _jitter((190, 175, 150), rng), _jitter((170, 155, 130), rng))
    draw.rectangle((0, wall * n, n, n), fill=(55, 55, 55))
    rows = int(rng.integers(7, 10))
    y = wall
    for r in range(rows):  # stones grow towards the viewer: perspective
        height = (1 - wall) / rows * (0.6 + 0.8 * r / rows)
        x = -rng.uniform(0, 0.08)
        while x < 1:
            width = rng.uniform(0.07, 0.11) * (0.7 + 0.6 * r / rows)
            gap = 0.006
            draw.rounded_rectangle(((x + gap) * n, (y + gap) * n, (x + width - gap) * n, (y + height - gap) * n),
                                   radius=max(1, int(height * n * 0.3)), fill=_jitter((128, 126, 122), rng, 25))
            x += width
        y += height


def wooden_floor(draw, n, g, rng) -> None:
    floor = g - rng.uniform(0.25, 0.35)
    _gradient(draw, n, 0, floor, _jitter((225, 215, 195), rng), _jitter((205, 195, 175), rng))
    y, plank = floor, rng.uniform(0.06, 0.09)
    base = _jitter((160, 105, 60), rng, 20)
    while y < 1:
        draw.rectangle((0, y * n, n, (y + plank) * n), fill=_jitter(base, rng, 14))
        draw.line((0, y * n, n, y * n), fill=(90, 55, 30), width=max(1, n // 128))
        for _ in range(2):  # butt joints
            x = rng.uniform(0, 1) * n
            draw.line((x, y * n, x, (y + plank) * n), fill=(100, 62, 34), width=max(1, n // 128))
        y += plank
        plank *= 1.15


def city(draw, n, g, rng) -> None:
    ground = g - rng.uniform(0.08, 0.14)
    _gradient(draw, n, 0, ground, _jitter((150, 190, 230), rng), _jitter((215, 225, 235), rng))
    x = -rng.uniform(0, 0.05)
    while x < 1:  # skyline
        w, h = rng.uniform(0.08, 0.16), rng.uniform(0.2, 0.55)
        colour = _jitter((90, 100, 120), rng, 25)
        draw.rectangle((x * n, (ground - h) * n, (x + w) * n, ground * n), fill=colour)
        for wy in np.arange(ground - h + 0.03, ground - 0.03, 0.05):
            for wx in np.arange(x + 0.015, x + w - 0.02, 0.04):
                draw.rectangle((wx * n, wy * n, (wx + 0.015) * n, (wy + 0.02) * n), fill=(230, 215, 120))
        x += w + rng.uniform(0.0, 0.03)
    _gradient(draw, n, ground, 1, _jitter((130, 130, 128), rng), _jitter((100, 100, 98), rng))


PAINTERS: dict[str, Painter] = {"plain": plain, "beach": beach, "jungle": jungle, "snow": snow,
                                "cobblestone": cobblestone, "wooden_floor": wooden_floor, "city": city}
