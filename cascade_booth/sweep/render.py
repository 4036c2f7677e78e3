"""Render one sweep point's evaluation images: its ``[V]`` prompts and, for PRES, the class prompts.

The runner renders both in one pass (``RenderRequest.class_prompts``: the class prompts are marked
``kind = "class"``, which is what ``cascade_booth.evaluation`` scores as PRES samples, paper
section 4.1). The new images replace the point's earlier ones only once they are all written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from cascade_booth.runner import RenderRequest, render_run


def render_point(run: Path, templates: list[str], num_images: int, seed: int, *, sr: bool,
                 class_prompts: bool, warn: Callable[[str], None] | None = None, batch_size: int = 4) -> list[Path]:
    """Render ``templates`` (with ``[V]``) into ``RUN/renders``, replacing what was there; returns the PNG paths."""
    out, fresh = run / "renders", run / ".renders-new"
    shutil.rmtree(fresh, ignore_errors=True)  # left by an interrupted render
    request = RenderRequest(run=run, prompts=list(templates), out=fresh, num_images=num_images, seed=seed, sr=sr,
                            batch_size=batch_size, warn=warn, class_prompts=class_prompts)
    written = render_run(request)
    shutil.rmtree(out, ignore_errors=True)  # images of an earlier, different render must not linger
    os.replace(fresh, out)
    return [out / p.name for p in written if p.name != "grid.png"]
