"""Metrics (paper section 4.1) on hand-built embeddings, image preprocessing, DreamBench prompts."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cascade_booth import identifier
from cascade_booth.errors import InputError
from cascade_booth.evaluation import metrics, prompts
from cascade_booth.evaluation.inputs import GeneratedImage
from cascade_booth.evaluation.preprocess import Preprocess, build_preprocess, load_image
from cascade_booth.evaluation.scoring import label_images, match_template

SHARED = Path(__file__).resolve().parents[2] / "shared" / "dreambench" / "prompts_and_classes.txt"
E1, E2, E3 = torch.eye(3)


# --- cosine similarity -------------------------------------------------------------------------

def test_cosine_matrix_identical_orthogonal_opposite():
    sim = metrics.cosine_similarity_matrix(torch.stack([E1, E2]), torch.stack([E1, E2, -E1]))
    expected = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(sim, expected)


def test_cosine_matrix_known_values_and_scale_invariance():
    a = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    b = torch.tensor([[0.0, 5.0], [2.0, 0.0]])
    sim = metrics.cosine_similarity_matrix(a, b)
    r = 1 / math.sqrt(2)
    assert sim.shape == (2, 2)
    assert torch.allclose(sim, torch.tensor([[0.0, 1.0], [r, r]], dtype=torch.float64))


def test_cosine_matrix_rejects_bad_shapes():
    with pytest.raises(ValueError, match="sizes differ"):
        metrics.cosine_similarity_matrix(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        metrics.cosine_similarity_matrix(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="N = 0"):
        metrics.cosine_similarity_matrix(torch.ones(0, 3))


# --- DINO / CLIP-I / CLIP-T / PRES ----------------------------------------------------------------

def test_dino_and_clip_i_are_mean_over_all_generated_real_pairs():
    real = torch.stack([E1, E2])
    assert metrics.dino_score(torch.stack([E1, E1]), torch.stack([E1, E1])) == pytest.approx(1.0)
    assert metrics.dino_score(torch.stack([E3]), real) == pytest.approx(0.0)
    # E1 vs (E1, E2) -> (1 + 0) / 2; (E1 + E2) vs (E1, E2) -> (r + r) / 2.
    gen = torch.stack([E1, E1 + E2])
    expected = (0.5 + 1 / math.sqrt(2)) / 2
    assert metrics.dino_score(gen, real) == pytest.approx(expected)
    assert metrics.clip_i_score(gen, real) == pytest.approx(expected)
    each = metrics.per_image_similarity(gen, real)
    assert each.tolist() == pytest.approx([0.5, 1 / math.sqrt(2)])


def test_clip_t_pairs_each_image_with_its_own_prompt():
    text = torch.stack([E1, E2])
    images = torch.stack([E1, E1])
    # pairs (E1, E1) = 1 and (E2, E1) = 0; an all-pairs mean would also give 0.5, so use 3 rows.
    assert metrics.clip_t_score(text, images) == pytest.approx(0.5)
    text3, images3 = torch.stack([E1, E2, E3]), torch.stack([E1, E2, E3])
    assert metrics.clip_t_score(text3, images3) == pytest.approx(1.0)  # all-pairs mean would be 1/3
    assert metrics.clip_t_score(E1, torch.stack([E1, E2])) == pytest.approx(0.5)  # one prompt broadcasts
    with pytest.raises(ValueError, match="cannot pair"):
        metrics.clip_t_score(torch.stack([E1, E2]), torch.stack([E1, E2, E3]))


def test_pres_is_dino_similarity_of_class_samples_to_subject():
    real = torch.stack([E1, E1])
    assert metrics.pres_score(torch.stack([E1]), real) == pytest.approx(1.0)
    assert metrics.pres_score(torch.stack([E2, E1]), real) == pytest.approx(0.5)


# --- self-similarity, real-images row, diversity --------------------------------------------------

def test_self_similarity_excludes_self_pairs():
    emb = torch.stack([E1, E1, E2])
    # distinct ordered pairs: (0,1)=1, (1,0)=1, the other four 0 -> 2/6. With the diagonal: 5/9.
    assert metrics.self_similarity(emb) == pytest.approx(1 / 3)
    assert metrics.self_similarity(torch.stack([E1, E2])) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least two"):
        metrics.self_similarity(torch.stack([E1]))


def test_real_images_row_uses_both_embeddings():
    row = metrics.real_images_row(torch.stack([E1, E1]), torch.stack([E1, E2]))
    assert row == {"dino": pytest.approx(1.0), "clip_i": pytest.approx(0.0)}


def test_diversity_is_mean_over_prompts_of_pairwise_distance():
    assert metrics.DIV_METRIC == "1-dino-cosine"
    assert metrics.mean_pairwise_distance(torch.stack([E1, E1])) == pytest.approx(0.0)
    assert metrics.mean_pairwise_distance(torch.stack([E1, E2])) == pytest.approx(1.0)
    groups = [torch.stack([E1, E1]), torch.stack([E1, E2]), torch.stack([E3])]  # the single is skipped
    assert metrics.diversity(groups) == pytest.approx(0.5)
    assert metrics.diversity([torch.stack([E1, E1, E2])]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="two or more"):
        metrics.diversity([torch.stack([E1]), torch.stack([E2])])


# --- preprocessing ------------------------------------------------------------------------------

def test_preprocess_resizes_shortest_side_and_center_crops():
    # 30x10 image: left/right thirds black, middle third white -> after resize to 10 high and a 10 px
    # center crop only the white middle remains.
    array = np.zeros((10, 30, 3), dtype=np.uint8)
    array[:, 10:20] = 255
    prep = Preprocess(resize=10, crop=10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                      resample=int(Image.Resampling.NEAREST))
    out = prep([Image.fromarray(array)])
    assert out.shape == (1, 3, 10, 10) and out.dtype == torch.float32
    assert torch.allclose(out, torch.ones_like(out))  # white -> (1 - 0.5) / 0.5


def test_load_image_composites_transparency_on_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)


def test_build_preprocess_reads_processor_config_and_falls_back():
    cfg = {"size": {"shortest_edge": 256}, "image_mean": [0.1, 0.2, 0.3], "image_std": [1, 2, 3]}
    prep = build_preprocess(cfg, 224, (0.5,) * 3, (0.5,) * 3)
    assert (prep.resize, prep.crop, prep.mean, prep.std) == (256, 224, (0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    default = build_preprocess({}, 32, (0.5,) * 3, (0.25,) * 3)
    assert (default.resize, default.crop, default.mean, default.std) == (32, 32, (0.5,) * 3, (0.25,) * 3)
    assert build_preprocess({"size": 16}, 32, (0,) * 3, (1,) * 3).resize == 32  # never smaller than crop


# --- DreamBench prompts ----------------------------------------------------------------------------

def test_dreambench_lists_have_25_prompts_and_30_subjects():
    assert len(prompts.OBJECT_PROMPTS) == len(set(prompts.OBJECT_PROMPTS)) == 25
    assert len(prompts.LIVE_PROMPTS) == len(set(prompts.LIVE_PROMPTS)) == 25
    assert len(set(prompts.OBJECT_PROMPTS) & set(prompts.LIVE_PROMPTS)) == 15
    assert len(prompts.SUBJECTS) == 30
    assert len(prompts.LIVE_SUBJECTS) == 9 and {"cat", "dog8"} <= prompts.LIVE_SUBJECTS


@pytest.mark.skipif(not SHARED.is_file(), reason="shared DreamBench listing not present")
def test_prompts_match_the_shared_dreambench_file():
    text = SHARED.read_text(encoding="utf-8")
    quoted = re.findall(r"^'(.*)'\.format\(unique_token, class_token\),?$", text, flags=re.MULTILINE)
    assert quoted == list(prompts.OBJECT_PROMPTS) + list(prompts.LIVE_PROMPTS)
    parsed = prompts.parse_dreambench_listing(text)
    assert parsed["object"] == list(prompts.OBJECT_PROMPTS)
    assert parsed["live"] == list(prompts.LIVE_PROMPTS)
    assert parsed["subjects"] == prompts.SUBJECTS


def test_templates_pick_the_list_by_class():
    clock = prompts.dreambench_templates("clock")
    assert clock[0] == "a [V] clock in the jungle" and "a [V] clock on top of a mirror" in clock
    dog = prompts.dreambench_templates("dog")
    assert "a [V] dog wearing a santa hat" in dog and "a [V] dog on top of a mirror" not in dog
    assert not prompts.is_live_class("stuffed animal") and prompts.is_live_class("corgi dog")
    assert identifier.class_prompt("a cube shaped [V] dog") == "a cube shaped dog"
    assert identifier.class_prompt(identifier.instance_template("wall clock")) == "a wall clock"
    assert identifier.fill_identifier("a [V] dog", "xjy") == "a xjy dog"
    assert prompts.resolve_prompts("dreambench", "cat")[1] == "dreambench-live"


def test_load_prompts_file_converts_conventions(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# mine\n\na {0} {1} in the snow\n'a red {0} {1}'.format(unique_token, class_token),\n"
                    "a [V] clock on a table\na {0} {1} in the snow\n", encoding="utf-8")
    assert prompts.load_prompts_file(path, "clock") == [
        "a [V] clock in the snow", "a red [V] clock", "a [V] clock on a table"]
    path.write_text("a [V] clock\na clock on a table\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"line 2: 'a clock on a table' has no \[V\]"):
        prompts.load_prompts_file(path, "clock")
    with pytest.raises(InputError, match="missing.txt: not found"):
        prompts.load_prompts_file(tmp_path / "missing.txt", "clock")
    with pytest.raises(InputError, match="class noun"):
        prompts.dreambench_templates("  ")


# --- labelling generated images by prompt -----------------------------------------------------------

def test_match_template_finds_identifier_and_class_prompts():
    templates = prompts.dreambench_templates("dog")
    assert match_template("a XJY dog in the snow", templates) == ("a [V] dog in the snow", "XJY", "instance")
    assert match_template("A dog in the snow.", templates) == ("a [V] dog in the snow", None, "class")
    assert match_template("a dog on the moon", templates) is None


def test_label_images_infers_identifier_and_uses_metadata():
    templates = prompts.dreambench_templates("dog")
    images = [
        GeneratedImage(Path("a.png"), "a xjy dog in the snow"),
        GeneratedImage(Path("b.png"), "a xjy dog on the moon"),  # custom prompt: needs the identifier
        GeneratedImage(Path("c.png"), "a red dog"),
        GeneratedImage(Path("d.png"), "a photo", {"kind": "class", "template": "a [V] dog photo"}),
    ]
    labels, ident = label_images(images, templates)
    assert ident == "xjy"
    assert [(lb.template, lb.kind) for lb in labels] == [
        ("a [V] dog in the snow", "instance"), ("a [V] dog on the moon", "instance"),
        ("a red dog", "class"), ("a dog photo", "class")]
    assert labels[0].clip_text == "a dog in the snow"
