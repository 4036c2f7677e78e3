"""The DreamBooth paper's evaluation (Ruiz et al. 2022, section 4.1): DINO, CLIP-I, CLIP-T, PRES, DIV.

Layers: :mod:`metrics` (pure functions on embeddings), :mod:`extractors` (DINO / CLIP wrappers),
:mod:`prompts` (DreamBench prompts and subjects), :mod:`inputs` (finding images and prompts),
:mod:`scoring` and :mod:`runner` (one subject end to end), :mod:`benchmark` (all of DreamBench:
30 subjects x 25 prompts x 4 images), :mod:`distributed` (embedding split across launched
processes), :mod:`paper` (the paper's numbers, metric formatting), :mod:`report` /
:mod:`html_report` (JSON, Markdown, HTML), :mod:`tiny` (random tiny
models for offline tests) and :mod:`cli` (the ``evaluate`` command). Heavy imports (transformers)
happen only when models are loaded.
"""

from cascade_booth.evaluation.metrics import (
    DIV_METRIC,
    clip_i_score,
    clip_t_score,
    cosine_similarity_matrix,
    dino_score,
    diversity,
    pres_score,
    real_images_row,
    self_similarity,
)
from cascade_booth.evaluation.prompts import LIVE_PROMPTS, LIVE_SUBJECTS, OBJECT_PROMPTS, SUBJECTS

__all__ = [
    "DIV_METRIC", "LIVE_PROMPTS", "LIVE_SUBJECTS", "OBJECT_PROMPTS", "SUBJECTS", "clip_i_score",
    "clip_t_score", "cosine_similarity_matrix", "dino_score", "diversity", "pres_score", "real_images_row",
    "self_similarity",
]
