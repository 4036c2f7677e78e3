"""A *design*: one object of the world (class, shape parameters, body and accent colour, fine pattern).

A design is a pure function of its integer id, so an id is all a label needs to carry. Ids below
``HELD_OUT_START`` are the pretraining space; subject photo sets (``world subject``) come from ids at
or above it, which the pretraining never draws: the personalized object is always new to the model,
as a user's own clock is new to IF.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cascade_booth.world.vocab import ACCENTS, CLASSES, COLOURS, PATTERNS

HELD_OUT_START = 1_000_000
_SALT = 0xD3516


@dataclass(frozen=True)
class Design:
    id: int
    cls: str
    colour: str
    accent: str
    pattern: str
    shape: dict[str, float] = field(default_factory=dict)
    shade: tuple[int, int, int] = (0, 0, 0)  # per-design offset of the body colour: two red vases differ

    def body_rgb(self) -> tuple[int, int, int]:
        return tuple(int(np.clip(c + d, 0, 255)) for c, d in zip(COLOURS[self.colour], self.shade, strict=True))  # type: ignore

    def to_json(self) -> dict:
        return {"design": self.id, "class": self.cls, "colour": self.colour, "accent": self.accent,
                "pattern": self.pattern, "shape": dict(self.shape)}


def _shape(cls: str, rng: np.random.Generator) -> dict[str, float]:
    """Continuous shape parameters (and 0/1 variants) per class; ranges keep silhouettes distinct."""
    u = rng.uniform
    if cls == "clock":
        return {"square": float(rng.integers(2)), "bells": float(rng.integers(2)), "face": u(0.55, 0.7),
                "width": u(0.48, 0.6), "hour": u(0, 12), "minute": u(0, 60), "feet": u(0.03, 0.07)}
    if cls == "vase":
        return {"height": u(0.58, 0.7), "belly": u(0.3, 0.42), "belly_at": u(0.3, 0.55), "neck": u(0.1, 0.17),
                "lip": u(0.14, 0.24), "base": u(0.14, 0.24), "handles": float(rng.integers(2))}
    if cls == "teapot":
        return {"width": u(0.4, 0.5), "height": u(0.28, 0.36), "spout": u(0.14, 0.22), "spout_rise": u(0.08, 0.16),
                "handle": u(0.1, 0.15), "lid": u(0.05, 0.09), "knob": float(rng.integers(2))}
    if cls == "backpack":
        return {"width": u(0.38, 0.48), "height": u(0.52, 0.62), "round": u(0.06, 0.16), "pocket": u(0.35, 0.5),
                "pocket_round": float(rng.integers(2)), "loop": u(0.08, 0.13), "straps": float(rng.integers(2))}
    if cls == "candle":
        return {"width": u(0.16, 0.3), "height": u(0.38, 0.55), "flame": u(0.08, 0.13),
                "holder": float(rng.integers(2)), "drip": float(rng.integers(2))}
    if cls == "bowl":
        return {"width": u(0.6, 0.76), "depth": u(0.22, 0.32), "foot": u(0.03, 0.07), "rim": u(0.06, 0.1),
                "flare": u(0.0, 0.08)}
    raise ValueError(f"unknown class {cls!r}")


def design(design_id: int) -> Design:
    """The design with this id (deterministic); its class is ``CLASSES[id % len(CLASSES)]``."""
    if design_id < 0:
        raise ValueError(f"design id must be >= 0, got {design_id}")
    rng = np.random.default_rng([_SALT, design_id])
    cls = CLASSES[design_id % len(CLASSES)]
    return Design(
        id=design_id, cls=cls, colour=str(rng.choice(list(COLOURS))), accent=str(rng.choice(list(ACCENTS))),
        pattern=str(rng.choice(list(PATTERNS))), shape=_shape(cls, rng),
        shade=tuple(int(v) for v in rng.integers(-14, 15, size=3)),  # type: ignore[arg-type]
    )


def subject_design_id(cls: str, seed: int) -> int:
    """The held-out design of class ``cls`` for subject seed ``seed`` (never drawn by the pretraining)."""
    if cls not in CLASSES:
        raise ValueError(f"unknown class {cls!r}")
    n = len(CLASSES)
    return HELD_OUT_START + seed * n + (CLASSES.index(cls) - HELD_OUT_START) % n  # id % n picks the class


def pretraining_design_id(rng: np.random.Generator) -> int:
    return int(rng.integers(0, HELD_OUT_START))
