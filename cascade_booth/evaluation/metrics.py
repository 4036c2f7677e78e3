"""The paper's subject-fidelity, prompt-fidelity, prior-preservation and diversity metrics.

Pure functions on embedding tensors (``[N, D]``, one row per image or prompt); no model code here.
Definitions follow Ruiz et al. 2022 (DreamBooth, arXiv 2208.12242), section 4.1 "Dataset and
Evaluation" and its prior-preservation ablation:

* **DINO**: mean pairwise cosine similarity between the ViT-S/16 DINO embeddings of generated and
  real images (every generated image against every real image).
* **CLIP-I**: the same with CLIP image embeddings.
* **CLIP-T**: mean cosine similarity between a prompt's CLIP text embedding and the CLIP image
  embedding of each image generated from it.
* **PRES**: DINO similarity of samples of the *class* prompt ("a dog") to the subject's real images;
  lower means the model kept the class prior instead of collapsing it onto the subject.
* **DIV**: mean pairwise distance among samples of one prompt, self-pairs excluded. The paper uses
  LPIPS; LPIPS weights are not available here, so we use the substitute named by
  :data:`DIV_METRIC` (``1 - cosine`` of DINO embeddings) and record that name in every report.
* **Real images** row (Table 1: DINO 0.774, CLIP-I 0.885): the same similarity computed among the
  real images of a subject, self-pairs excluded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DIV_METRIC = "1-dino-cosine"
"""Name of the diversity distance we use in place of LPIPS (recorded in reports as ``div_metric``)."""


def _as_matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.ndim == 1:
        x = x.unsqueeze(0)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected embeddings of shape [N, D], got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: no embeddings (N = 0)")
    return x.detach().to(dtype=torch.float64)


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each row to unit L2 norm (rows of zeros stay zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (``b = a`` if omitted).

    Returns a float64 tensor of shape ``[len(a), len(b)]`` with values in [-1, 1].
    """
    a = l2_normalize(_as_matrix(a, "a"))
    b = a if b is None else l2_normalize(_as_matrix(b, "b"))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding sizes differ: {a.shape[1]} vs {b.shape[1]}")
    return (a @ b.T).clamp(-1.0, 1.0)


def paired_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of row ``i`` of ``a`` with row ``i`` of ``b``; a single row broadcasts."""
    a = l2_normalize(_as_matrix(a, "a"))
    b = l2_normalize(_as_matrix(b, "b"))
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ValueError(f"cannot pair {a.shape[0]} rows with {b.shape[0]} rows")
    return (a * b).sum(dim=-1).clamp(-1.0, 1.0)


def mean_pairwise_similarity(generated: torch.Tensor, real: torch.Tensor) -> float:
    """Mean cosine similarity over all (generated, real) pairs (section 4.1)."""
    return float(cosine_similarity_matrix(generated, real).mean())


def per_image_similarity(generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """For each generated image, its mean cosine similarity to the real images (shape ``[N]``).

    The mean of this vector equals :func:`mean_pairwise_similarity`.
    """
    return cosine_similarity_matrix(generated, real).mean(dim=1)


def dino_score(generated: torch.Tensor, real: torch.Tensor) -> float:
    """DINO subject fidelity (section 4.1): mean pairwise cosine of DINO embeddings, generated vs real."""
    return mean_pairwise_similarity(generated, real)


def clip_i_score(generated: torch.Tensor, real: torch.Tensor) -> float:
    """CLIP-I subject fidelity (section 4.1): mean pairwise cosine of CLIP image embeddings."""
    return mean_pairwise_similarity(generated, real)


def clip_t_score(text: torch.Tensor, images: torch.Tensor) -> float:
    """CLIP-T prompt fidelity (section 4.1): mean cosine of each image with its prompt's text embedding.

    ``text`` has one row per image (row ``i`` is the prompt of image ``i``) or a single row shared by
    all images.
    """
    return float(paired_cosine(text, images).mean())


def self_similarity(embeddings: torch.Tensor) -> float:
    """Mean cosine similarity among a set's members, self-pairs (the diagonal) excluded.

    This is the paper's "Real Images" row of Table 1 when applied to a subject's real images.
    Needs at least two rows.
    """
    sim = cosine_similarity_matrix(embeddings)
    n = sim.shape[0]
    if n < 2:
        raise ValueError("self-similarity needs at least two embeddings")
    off_diagonal = sim.sum() - sim.diagonal().sum()
    return float(off_diagonal / (n * (n - 1)))


def real_images_row(dino_real: torch.Tensor, clip_real: torch.Tensor) -> dict[str, float]:
    """Table 1's "Real Images" row for one subject: DINO and CLIP-I among its real images."""
    return {"dino": self_similarity(dino_real), "clip_i": self_similarity(clip_real)}


def pres_score(class_samples: torch.Tensor, real: torch.Tensor) -> float:
    """PRES (prior preservation, lower is better): DINO similarity of class-prompt samples to the subject.

    ``class_samples`` are DINO embeddings of images generated from the class prompt (e.g. "a dog")
    by the fine-tuned model; ``real`` are DINO embeddings of the subject's real images.
    """
    return mean_pairwise_similarity(class_samples, real)


def mean_pairwise_distance(embeddings: torch.Tensor) -> float:
    """Mean ``1 - cosine`` over distinct pairs of one set (self-pairs excluded); needs two rows."""
    return 1.0 - self_similarity(embeddings)


def diversity(groups: Sequence[torch.Tensor]) -> float:
    """DIV: mean over prompts of the mean pairwise distance among that prompt's samples.

    ``groups`` holds one ``[N_p, D]`` DINO embedding tensor per prompt. Groups with fewer than two
    samples have no pairs and are skipped; at least one group must have two or more. The distance is
    :data:`DIV_METRIC` (the paper uses LPIPS, which is not available offline).
    """
    values = [mean_pairwise_distance(g) for g in groups if _as_matrix(g, "group").shape[0] >= 2]
    if not values:
        raise ValueError("diversity needs at least one prompt with two or more samples")
    return sum(values) / len(values)
