"""``cascade-booth sweep``: train, render and evaluate every point of a settings grid.

Layers: :mod:`spec` (the TOML spec and CLI ``--grid`` flags, validated up front, expanded into
points), :mod:`render` (instance and class prompts of one point, PNGs the evaluation reads),
:mod:`run` (orchestration: shared stage ones, resume, one extractor load), :mod:`tables`
(best point per metric, averages per swept value, ``sweep.json`` / ``sweep.md``), :mod:`plots`
(optional matplotlib figures) and :mod:`cli` (the click command).
"""

from cascade_booth.sweep.spec import Point, SweepSpec, build_spec, expand, load_spec

__all__ = ["Point", "SweepSpec", "build_spec", "expand", "load_spec"]
