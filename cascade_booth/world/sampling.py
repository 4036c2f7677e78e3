"""Random scenes and captions: the pretraining distribution and the held-out subject photo sets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascade_booth.world.design import Design, design, pretraining_design_id, subject_design_id
from cascade_booth.world.render import Scene
from cascade_booth.world.vocab import CONTEXTS, caption

# How often a caption leaves an attribute out. The left-out attribute is then spread over all its
# values under the pretrained model: "a vase on the beach" covers every colour, which is the class
# prior that prior preservation must keep.
DROP = {"colour": 0.3, "pattern": 0.3, "context": 0.1}


@dataclass(frozen=True)
class Example:
    scene: Scene
    design: Design
    caption: str

    def labels(self) -> dict:
        return {"caption": self.caption, "class": self.design.cls, "colour": self.design.colour,
                "pattern": self.design.pattern, "context": self.scene.context, "design": self.design.id}


def _pose(rng: np.random.Generator, context: str, design_id: int) -> Scene:
    """Modest jitter: the object stays near the centre at a steady scale, as the budget can learn."""
    return Scene(
        design=design_id, context=context, x=float(rng.uniform(0.45, 0.55)), ground=float(rng.uniform(0.84, 0.88)),
        scale=float(rng.uniform(0.92, 1.06)), flip=bool(rng.integers(2)), light=float(rng.uniform(0.92, 1.06)),
        light_dir=float(rng.choice([-1.0, 1.0])), background=int(rng.integers(2**31)),
    )


def dataset_example(seed: int, index: int) -> Example:
    """Example ``index`` of the pretraining stream for ``seed``: a pretraining design in a random context."""
    rng = np.random.default_rng([seed, index])
    d = design(pretraining_design_id(rng))
    context = str(rng.choice(list(CONTEXTS)))
    scene = _pose(rng, context, d.id)
    keep = {k: rng.uniform() >= p for k, p in DROP.items()}
    text = caption(d.cls, d.colour if keep["colour"] else None, d.pattern if keep["pattern"] else None,
                   context if keep["context"] else None)
    return Example(scene=scene, design=d, caption=text)


def subject_examples(cls: str, seed: int, count: int = 5) -> list[Example]:
    """The photo set of one held-out design: varied pose and scale, mostly plain backdrops."""
    d = design(subject_design_id(cls, seed))
    rng = np.random.default_rng([0x5B1EC7, seed, count])
    out = []
    for i in range(count):
        context = "wooden_floor" if i == count - 1 else "plain"  # one simple real-world backdrop, like DreamBench
        scene = _pose(rng, context, d.id)
        varied = {"scale": float(rng.uniform(0.9, 1.08)), "x": float(rng.uniform(0.44, 0.56))}
        scene = Scene(**{**scene.to_json(), **varied})
        out.append(Example(scene=scene, design=d, caption=caption(d.cls, d.colour, d.pattern, context)))
    return out


def subject_in_contexts(cls: str, seed: int, contexts: list[str], per_context: int) -> list[Example]:
    """The held-out subject of ``subject_examples(cls, seed)`` drawn in each of ``contexts`` (``per_context``
    poses each): the ground truth of "a [V] <class> <context>", which no photo set shows."""
    d = design(subject_design_id(cls, seed))
    rng = np.random.default_rng([0xC0DE7, seed, per_context])
    return [Example(scene=_pose(rng, ctx, d.id), design=d, caption=caption(d.cls, d.colour, d.pattern, ctx))
            for ctx in contexts for _ in range(per_context)]
