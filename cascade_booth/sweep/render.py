"""Render one sweep point's evaluation images: its ``[V]`` prompts and, for PRES, the class prompts.

The runner (``cascade_booth.runner``) renders ``[V]`` prompts only. PRES (paper section 4.1) needs
samples of the fine-tuned model for the class prompts too ("a clock in the jungle"), so the sweep
plans the render with the runner, appends the class prompts to the same plan (one load of each
stage for both) and marks those images ``kind = "class"`` in their metadata, which is what
``cascade_booth.evaluation`` reads to score them as PRES samples.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from cascade_booth.evaluation.prompts import class_prompt
from cascade_booth.models import cache_dir
from cascade_booth.pngmeta import render_meta, write_renders
from cascade_booth.runner import RenderRequest, plan_render, sample_cascade
from cascade_booth.sampling import to_pil
from cascade_booth.session import device as default_device
from cascade_booth.text import TextEmbeddings


def render_point(run: Path, templates: list[str], num_images: int, seed: int, *, sr: bool,
                 class_prompts: bool, warn: Callable[[str], None] | None = None, batch_size: int = 4) -> list[Path]:
    """Render ``templates`` (with ``[V]``) into ``RUN/renders`` (emptied first); returns the PNG paths."""
    from stages.sr import text_model_path

    request = RenderRequest(run=run, prompts=list(templates), num_images=num_images, seed=seed, sr=sr,
                            batch_size=batch_size, warn=warn)
    plan = plan_render(request)
    for message in plan.warnings:
        if warn is not None:
            warn(message)
    kinds = ["instance"] * len(plan.prompts)
    if class_prompts:
        extra = list(dict.fromkeys(class_prompt(t) for t in templates))
        plan.templates, plan.prompts = plan.templates + extra, plan.prompts + extra
        kinds += ["class"] * len(extra)
    device = default_device()
    texts = TextEmbeddings(text_model_path(plan.meta), cache_dir())
    texts.ensure(plan.prompts + [""], device=device)
    tensors = sample_cascade(plan, texts, device, batch_size)
    images = [to_pil(t) for t in tensors]
    metas = [[{**render_meta(plan, i, j, image), "kind": kinds[i]} for j, image in enumerate(row)]
             for i, row in enumerate(images)]
    shutil.rmtree(plan.out, ignore_errors=True)  # images of an earlier, different render must not linger
    return [p for p in write_renders(plan.out, images, metas) if p.name != "grid.png"]
