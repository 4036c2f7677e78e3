"""The world's vocabulary: class nouns, colours, patterns, contexts and the one caption template.

Contexts are DreamBench prompt phrases (Ruiz et al. 2022, appendix prompt list) so that the prompts
users write for IF read the same here. ``plain`` (a light backdrop, like most subject photos) and the
``plain`` pattern have the empty phrase.
"""

from __future__ import annotations

import re

CLASSES = ("clock", "vase", "teapot", "backpack", "candle", "bowl")

# Body colours: saturated, far apart in hue or lightness, none of them the light backdrop's colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 38, 38),
    "orange": (240, 128, 24),
    "yellow": (238, 206, 40),
    "green": (46, 150, 60),
    "blue": (38, 78, 205),
    "purple": (128, 56, 172),
    "pink": (240, 120, 176),
    "brown": (118, 72, 38),
}

# Accents are near-neutral so that a fine pattern, averaged away at stage one's size, keeps the body's hue.
ACCENTS: dict[str, tuple[int, int, int]] = {
    "white": (246, 246, 240),
    "cream": (236, 222, 188),
    "charcoal": (40, 40, 44),
    "silver": (176, 180, 188),
}

PATTERNS: dict[str, str] = {
    "plain": "",
    "stripes": "with stripes",
    "dots": "with polka dots",
    "checks": "with a checkered pattern",
}

CONTEXTS: dict[str, str] = {
    "plain": "",
    "beach": "on the beach",
    "jungle": "in the jungle",
    "snow": "in the snow",
    "cobblestone": "on a cobblestone street",
    "wooden_floor": "on top of a wooden floor",
    "city": "with a city in the background",
}

TEMPLATE = "a {colour} {class} {pattern} {context}"
SIZES = {"base": 32, "sr": 128}


def caption(cls: str, colour: str | None = None, pattern: str | None = None, context: str | None = None) -> str:
    """Fill the template; a ``None`` attribute is left out, as real captions leave things out."""
    text = TEMPLATE.format(
        colour=colour or "", pattern=PATTERNS[pattern] if pattern else "",
        context=CONTEXTS[context] if context else "", **{"class": cls},
    )
    return re.sub(r"\s+", " ", text).strip()


def vocab() -> dict:
    """What ``cascade-booth world vocab --json`` prints."""
    return {
        "classes": list(CLASSES), "colours": list(COLOURS), "patterns": dict(PATTERNS),
        "contexts": dict(CONTEXTS), "template": TEMPLATE, "sizes": dict(SIZES),
    }
