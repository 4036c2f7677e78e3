"""``evaluate --dreambench``: a fake mini DreamBench, per-subject and combined reports, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cascade_booth.cli import main
from cascade_booth.errors import InputError
from cascade_booth.evaluation import prompts
from cascade_booth.evaluation.benchmark import load_dreambench, select_subjects
from cascade_booth.evaluation.cli import evaluate
from cascade_booth.evaluation.tiny import build_tiny_models

CLASSES = {"clock": "clock", "dog": "dog", "my_mug": "mug"}
GENERATED = {  # subject -> prompts of its generated images (two images each)
    "clock": ["a xjy clock in the jungle", "a xjy clock on the beach", "a clock in the jungle"],
    "dog": ["a qzv dog wearing a red hat", "a qzv dog in the snow", "a dog in the snow"],
}


def listing_text(classes: dict[str, str]) -> str:
    """``prompts_and_classes.txt`` in the format of the official DreamBench file."""
    def block(title: str, items) -> list[str]:
        body = [f"'{p}'.format(unique_token, class_token)," for p in items]
        body[-1] = body[-1].rstrip(",")
        return [title, "", "prompt_list = [", *body, "]", ""]

    lines = ["Classes", "", "subject_name,class", *(f"{n},{c}" for n, c in classes.items()), "", "Prompts", ""]
    lines += block("Object Prompts", prompts.OBJECT_PROMPTS) + block("Live Subject Prompts", prompts.LIVE_PROMPTS)
    return "\n".join(lines)


def image(seed: int, size=(40, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_dreambench(root: Path, classes: dict[str, str] = CLASSES, listing: bool = True) -> Path:
    """A mini DreamBench: the listing and two real photos per subject."""
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(2):
            image(100 * k + i, (48, 40)).save(root / name / f"{i:02d}.jpg")
    if listing:
        (root / "prompts_and_classes.txt").write_text(listing_text(classes), encoding="utf-8")
    return root


def write_generated(folder: Path, prompt_list: list[str], per_prompt: int = 2, seed: int = 0) -> Path:
    """PNGs with ``NAME.json`` sidecars holding the prompt."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, prompt in enumerate(p for p in prompt_list for _ in range(per_prompt)):
        image(seed + k).save(folder / f"{k:03d}.png")
        (folder / f"{k:03d}.json").write_text(json.dumps({"prompt": prompt, "seed": k}))
    return folder


def make_generated(root: Path, subjects=GENERATED) -> Path:
    for k, (name, prompt_list) in enumerate(subjects.items()):
        write_generated(root / name, prompt_list, seed=1000 * k)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


def model_args(tiny) -> list[str]:
    return ["--dino-model", str(tiny["dino"]), "--clip-model", str(tiny["clip"]), "--device", "cpu"]


def test_dreambench_generated_end_to_end(tiny, tmp_path):
    bench, gen, out = make_dreambench(tmp_path / "db"), make_generated(tmp_path / "gen"), tmp_path / "out"
    args = ["--dreambench", str(bench), "--generated", str(gen), "--out", str(out), *model_args(tiny)]
    result = CliRunner().invoke(evaluate, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "1 subject(s) without generated images: my_mug" in result.output
    combined = json.loads((out / "metrics.json").read_text())
    assert list(combined["per_subject"]) == ["clock", "dog"]
    bench_info = combined["benchmark"]
    assert bench_info["selected"] == ["clock", "dog", "my_mug"] and bench_info["evaluated"] == ["clock", "dog"]
    assert list(bench_info["missing"]) == ["my_mug"] and "no folder" in bench_info["missing"]["my_mug"]
    assert bench_info["subjects"]["dog"]["identifier"] == "qzv"
    assert bench_info["subjects"]["dog"]["prompts"] == "dreambench-live"
    assert combined["settings"]["class_nouns_from"].endswith("prompts_and_classes.txt")
    assert "class_noun" not in combined["settings"] and combined["settings"]["processes"] == 1
    subjects = {name: json.loads((out / "subjects" / name / "metrics.json").read_text()) for name in GENERATED}
    assert subjects["dog"]["settings"]["class_noun"] == "dog" and subjects["dog"]["settings"]["live_subject"]
    assert subjects["clock"]["settings"]["prompts"] == "dreambench-object"
    assert len(subjects["clock"]["coverage"]["missing_templates"]) == 23
    for key in ("dino", "clip_i", "clip_t", "pres", "div"):
        mean = sum(s["overall"][key] for s in subjects.values()) / 2
        assert combined["overall"][key] == pytest.approx(mean, abs=1e-9)
    markdown = (out / "report.md").read_text()
    assert "## DreamBench coverage" in markdown and "`my_mug`" in markdown and markdown.count("(paper)") >= 3
    assert "[clock](subjects/clock/report.md)" in markdown
    html = (out / "report.html").read_text()
    assert "<img " not in html and 'href="subjects/dog/report.html"' in html and "my_mug" in html
    assert (out / "subjects" / "dog" / "report.html").read_text().count("<img ") == 6 + 2


def test_dreambench_subject_equals_single_subject_evaluate(tiny, tmp_path):
    bench, gen = make_dreambench(tmp_path / "db"), make_generated(tmp_path / "gen")
    out_all, out_one = tmp_path / "all", tmp_path / "one"
    runner = CliRunner()
    result = runner.invoke(evaluate, ["--dreambench", str(bench), "--generated", str(gen), "--out", str(out_all),
                                      "--subjects", "clock", "--no-html", *model_args(tiny)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    result = runner.invoke(evaluate, ["--generated", str(gen / "clock"), "--subject", str(bench / "clock"),
                                      "--out", str(out_one), "--no-html", *model_args(tiny)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    one = json.loads((out_one / "metrics.json").read_text())
    combined = json.loads((out_all / "metrics.json").read_text())
    sub = json.loads((out_all / "subjects" / "clock" / "metrics.json").read_text())
    assert combined["benchmark"]["selected"] == ["clock"] and combined["benchmark"]["missing"] == {}
    for key in ("dino", "clip_i", "clip_t", "pres", "div"):
        assert sub["overall"][key] == pytest.approx(one["overall"][key], abs=1e-9)
        assert combined["overall"][key] == pytest.approx(one["overall"][key], abs=1e-9)


def test_dreambench_runs_dataset_layout_without_listing(tiny, tmp_path):
    """google/dreambooth keeps the photos under dataset/; without the listing, built-in classes apply."""
    bench = make_dreambench(tmp_path / "repo" / "dataset", {"clock": "clock", "can": "can"}, listing=False)
    runs = tmp_path / "runs"
    write_generated(runs / "clock" / "renders" / "stage2", GENERATED["clock"])
    (runs / "can").mkdir(parents=True)  # a run without renders yet: missing, not an error
    result = CliRunner().invoke(evaluate, ["--dreambench", str(tmp_path / "repo"), "--runs", str(runs),
                                           "--subjects", "can,clock", "--no-html", *model_args(tiny)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    combined = json.loads((runs / "evaluation" / "metrics.json").read_text())
    assert combined["settings"]["class_nouns_from"] == "built-in list"
    assert combined["settings"]["runs"] == str(runs) and combined["benchmark"]["dir"] == str(bench)
    assert combined["benchmark"]["selected"] == ["can", "clock"]
    assert "has no renders/ folder" in combined["benchmark"]["missing"]["can"]
    assert combined["benchmark"]["subjects"]["clock"]["run"] == str(runs / "clock")
    assert (runs / "evaluation" / "subjects" / "clock" / "report.md").is_file()


def test_load_dreambench_and_select_subjects(tmp_path):
    bench = load_dreambench(make_dreambench(tmp_path / "db"))
    assert bench.classes == CLASSES and bench.listing == tmp_path / "db" / "prompts_and_classes.txt"
    templates, source = bench.templates("my_mug")
    assert source == "dreambench-object" and templates[0] == "a [V] mug in the jungle" and len(templates) == 25
    assert select_subjects(bench, None) == list(CLASSES)
    assert select_subjects(bench, " dog, clock ,dog") == ["dog", "clock"]
    with pytest.raises(InputError, match="unknown DreamBench subject.*cat2.*known: clock, dog, my_mug"):
        select_subjects(bench, "dog,cat2")


@pytest.mark.skipif(not (Path(__file__).parents[2] / "shared" / "dreambench").is_dir(),
                    reason="shared DreamBench checkout not present")
def test_load_the_shared_dreambench():
    bench = load_dreambench(Path(__file__).parents[2] / "shared" / "dreambench")
    assert bench.classes == prompts.SUBJECTS
    assert bench.templates("dog8") == (prompts.dreambench_templates("dog"), "dreambench-live")


@pytest.mark.parametrize("case, message", [
    ("missing_dir", r"--dreambench .*nope: not found"),
    ("not_dreambench", r"--dreambench .*empty: not a DreamBench checkout"),
    ("both_sources", r"exactly one of --runs RUNS_DIR or --generated GEN_DIR"),
    ("no_source", r"exactly one of --runs RUNS_DIR or --generated GEN_DIR"),
    ("missing_generated", r"--generated .*nogen: not found"),
    ("no_subject_has_images", r"--generated .*empty: no DreamBench subject has generated images"),
    ("unknown_subject", r"--subjects 'clock,teapot': unknown DreamBench subject\(s\) teapot"),
    ("with_subject", r"--subject, --class-noun cannot be used with --dreambench"),
    ("runs_without_dreambench", r"--runs, --subjects cannot be used without --dreambench"),
    ("no_out", r"--out DIR is needed with --generated \(with --runs"),
])
def test_dreambench_bad_input_is_one_clean_message(tmp_path, case, message):
    bench, gen = make_dreambench(tmp_path / "db"), make_generated(tmp_path / "gen")
    (tmp_path / "empty").mkdir()
    out = ["--out", str(tmp_path / "out")]
    base = ["--dreambench", str(bench), "--generated", str(gen), *out]
    args = {
        "missing_dir": ["--dreambench", str(tmp_path / "nope"), "--generated", str(gen), *out],
        "not_dreambench": ["--dreambench", str(tmp_path / "empty"), "--generated", str(gen), *out],
        "both_sources": [*base, "--runs", str(gen)],
        "no_source": ["--dreambench", str(bench), *out],
        "missing_generated": ["--dreambench", str(bench), "--generated", str(tmp_path / "nogen"), *out],
        "no_subject_has_images": ["--dreambench", str(bench), "--generated", str(tmp_path / "empty"), *out],
        "unknown_subject": [*base, "--subjects", "clock,teapot"],
        "with_subject": [*base, "--subject", str(bench / "clock"), "--class-noun", "clock"],
        "runs_without_dreambench": ["--runs", str(gen), "--subjects", "clock", "--subject", str(bench / "clock")],
        "no_out": base[:4],
    }[case]
    # Models that do not exist: every input error must come before they are loaded.
    models = ["--dino-model", "cascade-booth-test/no-dino", "--clip-model", "cascade-booth-test/no-clip"]
    result = CliRunner().invoke(main, ["evaluate", *args, *models])
    assert result.exit_code == InputError.exit_code, result.output
    assert "Traceback" not in result.output and result.output.startswith("error: ")
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "out").exists()
