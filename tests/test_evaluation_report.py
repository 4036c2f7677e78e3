"""Scoring on hand-built embeddings, the report dict, Markdown, HTML and atomic writes."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from PIL import Image

from cascade_booth.evaluation import report as rep
from cascade_booth.evaluation.html_report import to_html
from cascade_booth.evaluation.scoring import Embeddings, LabelledImage, score

E1, E2, E3 = torch.eye(3)


def _labels(tmp_path: Path) -> list[LabelledImage]:
    specs = [("a [V] dog in the snow", "instance"), ("a [V] dog in the snow", "instance"),
             ("a red [V] dog <b>", "instance"), ("a dog in the snow", "class"), ("a dog in the snow", "class")]
    labels = []
    for i, (template, kind) in enumerate(specs):
        path = tmp_path / f"gen{i}.png"
        Image.new("RGB", (40, 30), (60 * i, 20, 200)).save(path)
        labels.append(LabelledImage(path=path, prompt=template.replace("[V]", "xjy"), template=template,
                                    kind=kind, clip_text=template.replace("[V] ", "")))
    return labels


def _real(tmp_path: Path) -> list[str]:
    paths = []
    for i in range(2):
        path = tmp_path / f"real{i}.jpg"
        Image.new("RGB", (300, 200), (10, 100 + 50 * i, 10)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def report(tmp_path):
    labels = _labels(tmp_path)
    emb = Embeddings(
        gen_dino=torch.stack([E1, E2, E1, E1, E1]), gen_clip=torch.stack([E1, E1, E2, E3, E3]),
        text_clip=torch.stack([E1, E2, E2, E3, E3]),
        real_dino=torch.stack([E1, E1]), real_clip=torch.stack([E1, E2]),
    )
    scores = score(labels, emb)
    scores["real_images"]["paths"] = _real(tmp_path)
    settings = {"class_noun": "dog", "clip_t_text": "prompt-without-identifier", "weird": float("nan")}
    models = {"dino": {"id": "tiny-dino", "class": "ViTModel"},
              "clip": {"id": "tiny-clip", "class": "CLIPModel"}}
    coverage = {"expected_templates": ["a [V] dog in the snow", "a wet [V] dog"],
                "missing_templates": ["a wet [V] dog"], "extra_templates": ["a red [V] dog <b>"]}
    return rep.build_report("dog", scores, settings, models, coverage)


def test_scores_by_hand(report):
    s = report["per_subject"]["dog"]
    # instance DINO rows E1, E2, E1 vs real (E1, E1): 1, 0, 1.
    assert s["dino"] == pytest.approx(2 / 3)
    # instance CLIP rows E1, E1, E2 vs real (E1, E2): 0.5 each.
    assert s["clip_i"] == pytest.approx(0.5)
    # CLIP-T pairs (E1,E1)=1, (E2,E1)=0, (E2,E2)=1; the class image is not counted.
    assert s["clip_t"] == pytest.approx(2 / 3)
    assert s["pres"] == pytest.approx(1.0)  # class images E1, E1 vs real E1s
    # "snow" pair (E1, E2) -> 1; the single "red" image has no pair; class samples (div 0) don't count.
    assert s["div"] == pytest.approx(1.0)
    assert report["real_images"]["dino"] == pytest.approx(1.0)
    assert report["real_images"]["clip_i"] == pytest.approx(0.0)
    assert (s["n_instance_images"], s["n_class_images"], s["n_real_images"]) == (3, 2, 2)
    rows = {(p["kind"], p["template"]): p for p in report["per_prompt"]}
    assert rows[("instance", "a red [V] dog <b>")]["div"] is None
    assert rows[("class", "a dog in the snow")]["n_images"] == 2
    assert rows[("class", "a dog in the snow")]["div"] == pytest.approx(0.0)


def test_report_structure_is_strict_json(report):
    for key in ("schema", "created", "settings", "models", "overall", "real_images", "per_subject",
                "per_prompt", "per_image", "coverage", "paper"):
        assert key in report
    assert report["settings"]["div_metric"] == "1-dino-cosine"
    assert report["settings"]["weird"] is None  # NaN cleaned
    assert report["overall"]["n_subjects"] == 1
    assert report["overall"]["dino"] == pytest.approx(2 / 3)
    assert len(report["per_image"]) == 5 and {"path", "prompt", "template", "kind", "dino", "clip_i",
                                              "clip_t", "subject"} <= set(report["per_image"][0])
    assert [row["method"] for row in report["paper"]["table1"]] == [
        "Real Images", "DreamBooth (Imagen)", "DreamBooth (Stable Diffusion)"]
    text = rep.to_json(report)
    assert json.loads(text) == json.loads(json.dumps(report))
    assert "NaN" not in text


def test_markdown_has_paper_rows_beside_ours(report):
    md = rep.to_markdown(report)
    assert "| Real Images (paper) | 0.774 | 0.885 | – |" in md
    assert "| DreamBooth (Imagen) (paper) | 0.696 | 0.812 | 0.306 |" in md
    assert "| DreamBooth (Stable Diffusion) (paper) | 0.668 | 0.803 | 0.305 |" in md
    assert "| Real Images (ours, 1 subject) | 1.000 | 0.000 | – |" in md
    assert "| cascade-booth (ours) | 0.667 | 0.500 | 0.667 |" in md
    assert "| cascade-booth (ours) | 1.000 | 1.000 |" in md  # PRES / DIV row
    assert "0.493" in md and "0.664" in md and "1-dino-cosine" in md
    assert "a wet [V] dog" in md  # missing prompt listed


def test_html_is_well_formed_and_embeds_every_image(report):
    page = to_html(report)
    assert page.startswith("<!DOCTYPE html>")
    root = ET.fromstring(page.split("\n", 1)[1])  # XHTML-compatible markup parses as XML
    images = root.findall(".//img")
    assert len(images) == 5 + 2  # generated + real
    for img in images:
        prefix, data = img.get("src").split(",", 1)
        assert prefix == "data:image/jpeg;base64"
        thumb = Image.open(io.BytesIO(base64.b64decode(data)))
        assert thumb.format == "JPEG" and max(thumb.size) <= 160
    assert "<b>" not in page and "&lt;b&gt;" in page  # prompt text is escaped
    tables = root.findall(".//table")
    assert any("0.774" in ET.tostring(t, encoding="unicode") for t in tables)


def test_html_marks_missing_images_instead_of_failing(report):
    Path(report["per_image"][0]["path"]).unlink()
    root = ET.fromstring(to_html(report).split("\n", 1)[1])
    assert len(root.findall(".//img")) == 6
    assert "missing: gen0.png" in ET.tostring(root, encoding="unicode")


def test_write_reports_is_atomic_and_complete(report, tmp_path):
    out = tmp_path / "out"
    written = rep.write_reports(report, out)
    assert {p.name for p in written.values()} == {"metrics.json", "report.md", "report.html"}
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "report.html", "report.md"]
    assert json.loads((out / "metrics.json").read_text())["schema"] == rep.SCHEMA
    assert rep.write_reports(report, tmp_path / "nohtml", html=False).keys() == {"json", "markdown"}


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    rep.atomic_write_text(target, "old")
    assert target.read_text() == "old"

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        rep.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


def test_combine_reports_averages_over_subjects(report):
    other = json.loads(json.dumps(report))
    other["per_subject"] = {"cat": {**other["per_subject"]["dog"], "dino": 0.0, "pres": None,
                                    "real_images": {"dino": 0.5, "clip_i": 0.5}}}
    combined = rep.combine_reports([report, other])
    assert list(combined["per_subject"]) == ["dog", "cat"]
    assert combined["overall"]["n_subjects"] == 2
    assert combined["overall"]["dino"] == pytest.approx(1 / 3)
    assert combined["overall"]["pres"] == pytest.approx(1.0)  # missing values are left out of the mean
    assert combined["overall"]["real_images"]["dino"] == pytest.approx(0.75)
    assert "Real Images (ours, 2 subjects)" in rep.to_markdown(combined)
    with pytest.raises(ValueError):
        rep.combine_reports([])


def test_clean_and_fmt():
    assert rep.clean({"a": (1.0, float("inf")), "b": Path("x")}) == {"a": [1.0, None], "b": "x"}
    assert rep.fmt(None) == "–" and rep.fmt(math.nan) == "–" and rep.fmt(0.12345) == "0.123"
