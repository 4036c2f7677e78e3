"""The world's renderer, labels, subject sets, vocabulary and CLI (issue 7)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from cascade_booth.cli import main
from cascade_booth.world.design import HELD_OUT_START, design, subject_design_id
from cascade_booth.world.render import Scene, draw_scene
from cascade_booth.world.sampling import dataset_example, subject_examples, subject_in_contexts
from cascade_booth.world.vocab import CLASSES, COLOURS, CONTEXTS, PATTERNS, caption


def test_same_seed_same_image_and_other_seeds_differ():
    a = np.asarray(draw_scene(dataset_example(5, 3).scene, 64))
    b = np.asarray(draw_scene(dataset_example(5, 3).scene, 64))
    c = np.asarray(draw_scene(dataset_example(5, 4).scene, 64))
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 5


def test_labels_agree_with_the_design_and_the_caption():
    for i in range(200):
        ex = dataset_example(0, i)
        labels, d = ex.labels(), design(ex.labels()["design"])
        assert labels["design"] < HELD_OUT_START
        assert (labels["class"], labels["colour"], labels["pattern"]) == (d.cls, d.colour, d.pattern)
        words = ex.caption.split()
        assert words[0] == "a" and d.cls in words
        named_colours = [c for c in COLOURS if c in words]
        assert named_colours in ([], [d.colour])
        for label, phrase in PATTERNS.items():
            if phrase and phrase in ex.caption:
                assert label == d.pattern
        for label, phrase in CONTEXTS.items():
            if phrase and phrase in ex.caption:
                assert label == labels["context"]


def test_captions_leave_attributes_out_so_the_class_prompt_covers_every_colour():
    examples = [dataset_example(1, i) for i in range(600)]
    without_colour = [ex for ex in examples if not any(c in ex.caption.split() for c in COLOURS)]
    assert 0.15 < len(without_colour) / len(examples) < 0.45
    assert {ex.design.colour for ex in without_colour} == set(COLOURS)
    assert {ex.scene.context for ex in examples} == set(CONTEXTS)
    assert {ex.design.cls for ex in examples} == set(CLASSES)


def test_two_designs_of_one_class_differ_in_shape():
    vases = [design(i) for i in range(1, 60, 6)]
    assert all(d.cls == "vase" for d in vases)
    assert len({round(d.shape["belly"], 4) for d in vases}) == len(vases)


def test_drawn_at_each_size_from_the_vector_description():
    scene = dataset_example(2, 7).scene
    small = np.asarray(draw_scene(scene, 32)).astype(float)
    large = np.asarray(draw_scene(scene, 128).resize((32, 32))).astype(float)
    assert np.abs(small - large).mean() < 12  # the same picture...
    assert not np.array_equal(np.asarray(draw_scene(scene, 128).resize((32, 32))), small)  # ...not a resize of it


def _body_patch_std(pattern: str, size: int) -> float:
    base = design(1)  # a vase: a tall body centred in the frame
    from dataclasses import replace

    import cascade_booth.world.render as render

    patched = replace(base, pattern=pattern, colour="blue", accent="white")
    scene = Scene(design=1, context="plain")
    original = render.design
    render.design = lambda _id: patched
    try:
        image = np.asarray(draw_scene(scene, size)).astype(float)
    finally:
        render.design = original
    c = size // 2
    h = max(2, size // 16)
    patch = image[int(size * 0.66) - h:int(size * 0.66) + h, c - h:c + h]
    return float(patch.reshape(-1, 3).std(0).mean())  # spatial variation per channel


@pytest.mark.parametrize("pattern", ["stripes", "dots", "checks"])
def test_fine_patterns_show_at_128_px_and_not_at_32(pattern):
    assert _body_patch_std(pattern, 128) > 3 * _body_patch_std(pattern, 32)
    assert _body_patch_std(pattern, 128) > 3 * _body_patch_std("plain", 128)


def test_subject_photos_are_one_held_out_design_of_the_asked_class():
    for cls in CLASSES:
        examples = subject_examples(cls, seed=4, count=5)
        ids = {ex.design.id for ex in examples}
        assert ids == {subject_design_id(cls, 4)} and min(ids) >= HELD_OUT_START
        assert {ex.design.cls for ex in examples} == {cls}
        assert len({(ex.scene.x, ex.scene.scale) for ex in examples}) == 5  # varied pose and scale
    assert subject_design_id("vase", 4) != subject_design_id("vase", 5)


def test_the_subject_in_new_contexts_is_its_design_in_each_asked_context():
    photos = subject_examples("teapot", 3)
    shown = subject_in_contexts("teapot", 3, ["snow", "beach"], 2)
    assert [e.scene.context for e in shown] == ["snow", "snow", "beach", "beach"]
    assert {e.design.id for e in shown} == {photos[0].design.id}
    assert len({e.scene.background for e in shown}) == 4  # each pose its own variation
    again = subject_in_contexts("teapot", 3, ["snow", "beach"], 2)
    assert np.array_equal(np.asarray(draw_scene(shown[3].scene, 32)), np.asarray(draw_scene(again[3].scene, 32)))


def test_cli_vocab_json():
    result = CliRunner().invoke(main, ["world", "vocab", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"classes", "colours", "patterns", "contexts", "template", "sizes"}
    assert data["template"] == "a {colour} {class} {pattern} {context}"
    assert data["patterns"]["plain"] == "" and data["contexts"]["plain"] == ""
    assert data["sizes"] == {"base": 32, "sr": 128}
    assert len(data["classes"]) >= 6 and len(data["colours"]) >= 8
    assert len(data["patterns"]) >= 4 and len(data["contexts"]) >= 7


def test_cli_dataset_writes_pngs_and_labels(tmp_path):
    out = tmp_path / "data"
    result = CliRunner().invoke(main, ["world", "dataset", "--count", "12", "--seed", "3", "--size", "48",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    from PIL import Image

    for row in rows:
        assert set(row) == {"file", "caption", "class", "colour", "pattern", "context", "design"}
        assert Image.open(out / row["file"]).size == (48, 48)
    assert rows[5]["caption"] == dataset_example(3, 5).caption
    again = CliRunner().invoke(main, ["world", "dataset", "--count", "2", "--out", str(out)])
    assert again.exit_code != 0 and "not an empty folder" in again.output  # never mixed into old files


def test_cli_subject_writes_photos_and_subject_json(tmp_path):
    out = tmp_path / "vase"
    result = CliRunner().invoke(main, ["world", "subject", "--class", "vase", "--seed", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "subject.json").read_text())
    assert meta["class"] == "vase" and meta["design"] == subject_design_id("vase", 2)
    assert {"colour", "pattern", "shape"} <= set(meta)
    from PIL import Image

    photos = sorted(out.glob("*.png"))
    assert len(photos) == 5 and all(Image.open(p).size == (256, 256) for p in photos)
    bad = CliRunner().invoke(main, ["world", "subject", "--class", "spoon", "--seed", "2", "--out", str(out / "x")])
    assert bad.exit_code == 2 and "spoon" in bad.output and "Traceback" not in bad.output


def test_template_fills_to_single_spaced_phrases():
    assert caption("vase") == "a vase"
    assert caption("vase", "red", "dots", "beach") == "a red vase with polka dots on the beach"
    assert not re.search(r"\s{2}", caption("clock", None, "plain", "plain"))


def test_cli_score_names_a_subject_folder_without_subject_json(tmp_path):
    run, photos = tmp_path / "run", tmp_path / "photos"
    run.mkdir()
    photos.mkdir()
    result = CliRunner().invoke(main, ["world", "score", "--run", str(run), "--subject", str(photos)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"--subject {photos}: no subject.json" in result.output


def test_read_back_of_ground_truth_photos_and_context_of_prompts(tmp_path):
    from cascade_booth.world.readback import Subject, context_of, instance_prompts, score_renders

    out = tmp_path / "vase"
    assert CliRunner().invoke(main, ["world", "subject", "--class", "vase", "--seed", "2", "--out", str(out)]
                              ).exit_code == 0
    subject = Subject.load(out)
    photos = sorted(out.glob("*.png"))
    for p in photos:  # the sidecars a render writes: the photos as renders of "a vase" (plain context)
        p.with_suffix(".json").write_text(json.dumps({"prompt": "a vase", "kind": "instance"}))
    figures = score_renders(photos, subject)["instance"]
    assert figures["colour"] == 1.0 and figures["pattern"] == 1.0 and figures["class"] == 1.0
    prompts = instance_prompts("vase")
    assert len(prompts) == len(CONTEXTS) - 1 and prompts[1] == "a [V] vase in the jungle"
    assert [context_of(p) for p in prompts] == [c for c in CONTEXTS if c != "plain"] and context_of("a vase") == "plain"


def test_cli_score_guidance_reaches_the_run_and_the_pretrained_renders(tmp_path, monkeypatch):
    import pytest

    from cascade_booth import runner
    from cascade_booth.world import readback

    class Rendered(Exception):
        pass

    requests = []

    def render_run(request):  # record; stop once both renders are asked for, before any model loads
        requests.append(request)
        if len(requests) == 2:
            raise Rendered
        return []

    monkeypatch.setattr(runner, "render_run", render_run)
    photos = tmp_path / "vase"
    assert CliRunner().invoke(main, ["world", "subject", "--class", "vase", "--seed", "2", "--out", str(photos)]
                              ).exit_code == 0
    result = CliRunner().invoke(main, ["world", "score", "--run", str(tmp_path), "--subject", str(photos),
                                       "--guidance", "9"])
    assert isinstance(result.exception, Rendered)
    assert [(r.run, r.guidance) for r in requests] == [(tmp_path, 9.0), (None, 9.0)]
    requests.clear()
    with pytest.raises(Rendered):
        readback.score_run(tmp_path, photos, tmp_path / "score")
    assert [r.guidance for r in requests] == [None, None]  # the default: each run's own render.guidance


def test_score_named_renders_the_pretrained_cascade_told_the_subjects_colour_and_pattern(tmp_path, monkeypatch):
    from cascade_booth import runner
    from cascade_booth.world import readback

    requests = []
    monkeypatch.setattr(runner, "render_run", lambda request: requests.append(request) or [])
    rates = {"images": 0, "colour": 0.0, "pattern": 0.0, "context": 0.0, "class": 0.0, "dino": 0.0}
    monkeypatch.setattr(readback, "read_back", lambda pngs, subject_dir: {"instance": rates | {"dino": 0.5},
                                                                          "class": dict(rates)})
    photos = tmp_path / "vase"
    assert CliRunner().invoke(main, ["world", "subject", "--class", "vase", "--seed", "2", "--out", str(photos)]
                              ).exit_code == 0
    subject = readback.Subject.load(photos)
    figures = readback.score_run(tmp_path, photos, tmp_path / "score", named=True).figures
    told = requests[2]
    assert told.run is None and len(told.prompts) == len(CONTEXTS) - 1
    assert told.prompts[1] == caption("vase", subject.colour, subject.pattern, "jungle")
    assert figures["named"]["dino"] == 0.5
    assert any(line.strip().startswith(readback.NAMED_LABEL) for line in readback.summary_lines(figures))
    requests.clear()
    assert "named" not in readback.score_run(tmp_path, photos, tmp_path / "score2").figures and len(requests) == 2
