"""Vector descriptions of the world's objects: one function per class noun.

Each returns *body* primitives (filled with the body colour and the fine pattern) and *detail*
primitives (drawn on top in a named colour). Coordinates are in object units: x from the object's
centre line, y upwards from the ground, 1.0 = the canvas height at scale 1, so a design has one
silhouette at every image size.
"""

from __future__ import annotations

import math

from cascade_booth.world.design import Design

Prim = tuple  # (kind, points or box, colour name or None, stroke width)


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> tuple:
    return (cx - rx, cy - ry, cx + rx, cy + ry)


def _profile(points: list[tuple[float, float]], steps: int = 10) -> list[tuple[float, float]]:
    """A smooth, left-right symmetric outline through (half-width, height) control points."""
    right = []
    for (w0, h0), (w1, h1) in zip(points, points[1:], strict=False):
        for i in range(steps):
            t = i / steps
            s = (1 - math.cos(math.pi * t)) / 2  # ease in/out: round shoulders, no corners
            right.append((w0 + (w1 - w0) * s, h0 + (h1 - h0) * t))
    right.append(points[-1])
    return right + [(-x, y) for x, y in reversed(right)]


def clock(d: Design) -> tuple[list[Prim], list[Prim]]:
    s = d.shape
    r = s["width"] / 2
    cy = s["feet"] + r
    body: list[Prim] = [("rounded" if s["square"] else "ellipse", _ellipse(0, cy, r, r), None, r * 0.35)]
    details: list[Prim] = []
    if s["bells"]:
        for side in (-1, 1):
            details.append(("ellipse", _ellipse(side * r * 0.62, cy + r * 0.95, r * 0.26, r * 0.2), "accent", 0))
    for side in (-1, 1):  # feet
        details.append(("line", [(side * r * 0.5, cy - r * 0.8), (side * r * 0.7, 0.0)], "charcoal", r * 0.1))
    face = r * s["face"]
    details.append(("rounded" if s["square"] else "ellipse", _ellipse(0, cy, face, face), "face", face * 0.3))
    for angle, length in ((s["hour"] / 12 * 2 * math.pi, 0.55), (s["minute"] / 60 * 2 * math.pi, 0.85)):
        tip = (math.sin(angle) * face * length, cy + math.cos(angle) * face * length)
        details.append(("line", [(0.0, cy), tip], "charcoal", face * 0.09))
    details.append(("ellipse", _ellipse(0, cy, face * 0.08, face * 0.08), "accent", 0))
    return body, details


def vase(d: Design) -> tuple[list[Prim], list[Prim]]:
    s = d.shape
    h = s["height"]
    outline = _profile([(s["base"] / 2, 0.0), (s["belly"] / 2, h * s["belly_at"]), (s["neck"] / 2, h * 0.88),
                        (s["lip"] / 2, h)])
    body: list[Prim] = [("polygon", outline, None, 0)]
    details: list[Prim] = [("ellipse", _ellipse(0, h, s["lip"] / 2, 0.012), "charcoal", 0)]
    if s["handles"]:
        for side in (-1, 1):
            x = side * (s["neck"] / 2 + 0.05)
            body.append(("ring", _ellipse(x, h * 0.75, 0.05, 0.07), None, 0.022))
    return body, details


def teapot(d: Design) -> tuple[list[Prim], list[Prim]]:
    s = d.shape
    w, h = s["width"], s["height"]
    cy = h / 2
    spout_base = (w * 0.42, cy - h * 0.1)
    tip = (w / 2 + s["spout"], cy + s["spout_rise"])
    body: list[Prim] = [
        ("ellipse", _ellipse(0, cy, w / 2, h / 2), None, 0),
        ("polygon", [(spout_base[0], spout_base[1] - 0.04), tip, (tip[0] - 0.015, tip[1] + 0.03),
                     (spout_base[0] - 0.02, spout_base[1] + 0.07)], None, 0),
        ("ring", _ellipse(-w / 2 - s["handle"] * 0.35, cy + 0.01, s["handle"] * 0.7, s["handle"]), None, 0.03),
    ]
    lid_w = w * 0.3
    details: list[Prim] = [("ellipse", _ellipse(0, h * 0.97, lid_w, s["lid"]), "accent", 0)]
    knob = (0, h * 0.97 + s["lid"] + 0.02)
    if s["knob"]:
        details.append(("ellipse", _ellipse(knob[0], knob[1], 0.03, 0.03), "accent", 0))
    else:
        details.append(("polygon", [(-0.02, h * 0.97 + s["lid"] * 0.8), (0.02, h * 0.97 + s["lid"] * 0.8),
                                    (0.0, knob[1] + 0.03)], "accent", 0))
    return body, details


def backpack(d: Design) -> tuple[list[Prim], list[Prim]]:
    s = d.shape
    w, h = s["width"], s["height"]
    body: list[Prim] = [("rounded", (-w / 2, 0.0, w / 2, h), None, s["round"]),
                        ("ring", _ellipse(0, h + s["loop"] * 0.3, s["loop"], s["loop"] * 0.8), None, 0.025)]
    ph = h * s["pocket"]
    pocket = (-w * 0.36, h * 0.06, w * 0.36, h * 0.06 + ph)
    details: list[Prim] = [
        ("outline_rounded" if s["pocket_round"] else "outline_rect", pocket, "accent", 0.012),
        ("line", [(-w * 0.3, h * 0.06 + ph * 0.8), (w * 0.3, h * 0.06 + ph * 0.8)], "accent", 0.01),
    ]
    if s["straps"]:
        for side in (-1, 1):
            details.append(("line", [(side * w * 0.28, h * 0.98), (side * w * 0.44, h * 0.1)], "charcoal", 0.03))
    return body, details


def candle(d: Design) -> tuple[list[Prim], list[Prim]]:
    s = d.shape
    w, h, f = s["width"], s["height"], s["flame"]
    base = 0.04 if s["holder"] else 0.0
    body: list[Prim] = [("rect", (-w / 2, base, w / 2, base + h), None, 0),
                        ("ellipse", _ellipse(0, base + h, w / 2, 0.02), None, 0)]
    details: list[Prim] = []
    if s["holder"]:
        details.append(("ellipse", _ellipse(0, 0.025, w / 2 + 0.08, 0.025), "accent", 0))
    if s["drip"]:
        for x in (-w * 0.3, w * 0.15):
            details.append(("line", [(x, base + h), (x, base + h - 0.07)], "accent", 0.018))
    top = base + h + 0.01
    details += [("line", [(0.0, top), (0.0, top + 0.025)], "charcoal", 0.008),
                ("polygon", _flame(0.0, top + 0.015, f), "flame", 0),
                ("polygon", _flame(0.0, top + 0.02, f * 0.55), "flame_core", 0)]
    return body, details


def _flame(x: float, y: float, size: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(16):
        t = i / 16 * 2 * math.pi
        r = size * 0.35 * (1 - 0.35 * math.sin(t))
        pts.append((x + math.cos(t) * r * 0.8, y + size * 0.35 + math.sin(t) * r * 1.6))
    return pts


def bowl(d: Design) -> tuple[list[Prim], list[Prim]]:
    s = d.shape
    w, depth, foot = s["width"], s["depth"], s["foot"]
    top = foot + depth
    half = [(w / 2 + s["flare"] * 0.3, top)]
    for i in range(1, 13):
        t = i / 12 * math.pi / 2
        half.append((math.cos(t) * w / 2 * (1 - 0.55 * (i / 12) ** 2), top - math.sin(t) * depth))
    outline = half + [(-x, y) for x, y in reversed(half)]
    body: list[Prim] = [("polygon", outline, None, 0), ("rect", (-w * 0.18, 0.0, w * 0.18, foot + 0.01), None, 0)]
    details: list[Prim] = [("ellipse", _ellipse(0, top, w / 2 + s["flare"] * 0.3, s["rim"] / 2), "inside", 0),
                           ("outline_ellipse", _ellipse(0, top, w / 2 + s["flare"] * 0.3, s["rim"] / 2), "accent",
                            0.01)]
    return body, details


SHAPES = {"clock": clock, "vase": vase, "teapot": teapot, "backpack": backpack, "candle": candle, "bowl": bowl}


def primitives(d: Design) -> tuple[list[Prim], list[Prim]]:
    return SHAPES[d.cls](d)
