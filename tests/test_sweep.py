"""``cascade-booth sweep``: spec checks, point names, tables, plots, and one tiny sweep end to end (CPU)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cascade_booth.cli import main
from cascade_booth.errors import RunError
from cascade_booth.sweep.plots import SKIPPED, plot_name, write_plots
from cascade_booth.sweep.run import plan_sweep
from cascade_booth.sweep.spec import build_spec, expand, point_name
from cascade_booth.sweep.tables import averages_per_axis, best_per_metric, to_markdown

GRID = '"base.lr" = [1e-4, 2e-4]'


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    from cascade_booth.evaluation.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("eval-models"))


def write_spec(folder: Path, subject: Path, grid: str = GRID, top: str = "", fixed: str = "",
               models: dict | None = None) -> Path:
    """A tiny sweep: 1 step of stage one, 2 class images, one prompt, 2 images per prompt, 2 sampling steps."""
    (folder / "prompts.txt").write_text("a [V] clock on a sweep table\n")
    eval_models = f'dino_model = "{models["dino"]}"\nclip_model = "{models["clip"]}"\n' if models else ""
    spec = folder / "sweep.toml"
    spec.write_text(f'config = "tiny"\nsubject = "{subject}"\nclass_noun = "clock"\nprompts = "prompts.txt"\n'
                    f'images_per_prompt = 2\ndevice = "cpu"\n{eval_models}{top}\n'
                    '[fixed]\n"base.steps" = 1\n"base.checkpoint_every" = 0\n"prior.class_images" = 2\n'
                    f'"prior.sample_steps" = 3\n"render.steps" = 2\n{fixed}\n[grid]\n{grid}\n')
    return spec


def sweep_cli(*args) -> object:
    return CliRunner().invoke(main, ["sweep", *map(str, args)])


# --- spec checks through the CLI: one clear message, nothing written -------------------------------

BAD_SPECS = [
    (dict(grid='"base.lrr" = [1e-4]'), "unknown key 'base.lrr' (did you mean 'base.lr'?)"),
    (dict(grid='"base.lr" = ["fast"]'), "'base.lr': 'fast' is not a float"),
    (dict(grid='"prior.enabled" = ["yes"]'), "'prior.enabled': 'yes' is not a bool (write true or false)"),
    (dict(grid=""), "the grid is empty"),
    (dict(grid='"base.lr" = []'), "'base.lr': empty list"),
    (dict(grid='"base.lr" = 1e-4'), "'base.lr': expected a list"),
    (dict(grid='"base.lr" = [1e-4, 1e-4]'), "listed twice"),
    (dict(grid='"base.lr" = [1e-4, 2.0]'), "sweep point lr=2: [base] lr must be in (0, 1], got 2.0"),
    (dict(grid="base = [1]"), "'base' is a config section: name one of its fields"),
    (dict(top='subjct = "x"'), "unknown key 'subjct' (did you mean 'subject'?)"),
    (dict(top="sr = false", grid='"sr.noise_level" = [50, 100]'), "sweeps 'sr.noise_level' but sr = false"),
    (dict(fixed='class_noun = "dog"'), "put class_noun at the top level"),
    (dict(fixed='"base.lr" = 1e-4'), "'base.lr' is both in [fixed] and in [grid]"),
    (dict(top="images_per_prompt = 0"), "'images_per_prompt' must be at least 1"),
]


@pytest.mark.parametrize(("edit", "message"), BAD_SPECS, ids=[m[:30] for _, m in BAD_SPECS])
def test_bad_specs_are_one_clear_message(tmp_path, clock_subject, edit, message):
    top = edit.get("top", "")
    if "images_per_prompt" in top:  # replace the template's value rather than repeat the key
        spec = write_spec(tmp_path, clock_subject, **{k: v for k, v in edit.items() if k != "top"})
        spec.write_text(spec.read_text().replace("images_per_prompt = 2", top))
    else:
        spec = write_spec(tmp_path, clock_subject, **edit)
    result = sweep_cli("--spec", spec, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_bad_inputs_outside_the_grid(tmp_path, clock_subject):
    spec = write_spec(tmp_path, clock_subject)
    cases = [
        (["--spec", tmp_path / "missing.toml"], "missing.toml: not found"),
        (["--spec", spec, "--grid", "base.lr"], "--grid 'base.lr': expected KEY=VALUE[,VALUE...]"),
        (["--spec", spec, "--subject", tmp_path / "nowhere"], "nowhere"),
        (["--spec", spec, "--prompts", tmp_path / "none.txt"], "none.txt: not found"),
        (["--spec", spec, "--config", "nope"], "config 'nope' not found"),
        (["--grid", "base.lr=1e-4", "--subject", clock_subject], "'class_noun' is needed"),
    ]
    (tmp_path / "broken.toml").write_text("grid = [\n")
    cases.append((["--spec", tmp_path / "broken.toml"], "not valid TOML"))
    for args, message in cases:
        result = sweep_cli(*args, "--out", tmp_path / "out")
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, args
    assert not (tmp_path / "out").exists()


def test_cli_flags_build_the_grid_and_stage_two_shares_stage_one(tmp_path, clock_subject):
    result = sweep_cli("--config", "tiny", "--subject", clock_subject, "--class-noun", "clock", "--grid",
                       "sr.noise_level=50,100", "--grid", "base.lr=1e-4,2e-4", "--set", "base.steps=1",
                       "--out", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "4 point(s), 2 stage-one run(s), stage two on" in result.output
    spec = build_spec({"subject": str(clock_subject), "class_noun": "clock", "config": "tiny",
                       "grid": {"sr": {"noise_level": [50, 100]}, "base.lr": [1e-4, 2e-4]}})
    assert spec.sr and spec.grid == {"sr.noise_level": [50, 100], "base.lr": [1e-4, 2e-4]}
    plan = plan_sweep(spec, tmp_path / "out")
    by_lr = {}
    for pp in plan.points:
        by_lr.setdefault(pp.point.settings["base.lr"], set()).add(pp.stage_one)
    assert all(len(paths) == 1 for paths in by_lr.values()) and len(set.union(*by_lr.values())) == 2
    assert [pp.point.config.sr.noise_level for pp in plan.points] == [50, 50, 100, 100]
    assert not (tmp_path / "out").exists()  # planning writes nothing


# --- point names ------------------------------------------------------------------------------------

def test_point_names_are_stable_and_readable(clock_subject):
    assert point_name({"base.lr": 1e-6, "base.lora_rank": 4, "prior.enabled": True}) == "lr=1e-06_rank=4_prior=on"
    assert point_name({"sr.noise_level": 50, "class_noun": "wall clock", "sr.lr": 1e-6}) == \
        "noise=50_noun=wall-clock_sr_lr=1e-06"
    long = point_name({"class_noun": "x" * 150})
    assert len(long) < 120 and "~" in long and long == point_name({"class_noun": "x" * 150})
    spec = build_spec({"subject": str(clock_subject), "config": "tiny",
                       "grid": {"class_noun": ["wall clock", "wall-clock"], "prior.enabled": [True, False]}})
    names = [p.name for p in expand(spec)]
    assert len(set(names)) == 4 and all("~" in n for n in names)  # look-alike values get a hash
    assert names == [p.name for p in expand(spec)]
    assert [p.class_noun for p in expand(spec)] == ["wall clock", "wall clock", "wall-clock", "wall-clock"]


# --- tables -----------------------------------------------------------------------------------------

def _metrics(dino, clip_i, clip_t, pres, div):
    return {"dino": dino, "clip_i": clip_i, "clip_t": clip_t, "pres": pres, "div": div}


def _point(name, lr, prior, *metrics):
    return {"name": name, "settings": {"base.lr": lr, "prior.enabled": prior}, "metrics": _metrics(*metrics)}


POINTS = [
    _point("a", 1e-6, True, 0.5, 0.7, 0.30, 0.6, 0.2),
    _point("b", 1e-6, False, 0.7, 0.8, 0.28, 0.4, None),
    _point("c", 5e-6, True, 0.6, 0.9, 0.31, 0.5, 0.4),
    _point("d", 5e-6, False, 0.7, 0.6, 0.29, 0.4, 0.1),  # ties b on DINO and PRES: b (first) stays best
]
AXES = {"base.lr": [1e-6, 5e-6, 1e-5], "prior.enabled": [True, False]}


def test_best_per_metric_pres_is_lower_is_better_and_ties_keep_the_first():
    best = best_per_metric(POINTS)
    assert {m: b["point"] for m, b in best.items()} == {"dino": "b", "clip_i": "c", "clip_t": "c", "pres": "b",
                                                         "div": "c"}
    assert best["pres"]["value"] == 0.4 and best["pres"]["settings"] == {"base.lr": 1e-6, "prior.enabled": False}
    assert best_per_metric([{"name": "x", "settings": {}, "metrics": {}}])["dino"] is None


def test_averages_per_swept_value():
    averages = averages_per_axis(POINTS, AXES)
    lr = {row["value"]: row for row in averages["base.lr"]}
    assert lr[1e-6]["n"] == 2 and lr[1e-6]["dino"] == pytest.approx(0.6) and lr[1e-6]["div"] == pytest.approx(0.2)
    assert lr[5e-6]["clip_i"] == pytest.approx(0.75) and lr[5e-6]["div"] == pytest.approx(0.25)
    assert lr[1e-5] == {"value": 1e-5, "n": 0, "dino": None, "clip_i": None, "clip_t": None, "pres": None,
                        "div": None}
    prior = {row["value"]: row for row in averages["prior.enabled"]}
    assert prior[True]["pres"] == pytest.approx(0.55) and prior[False]["pres"] == pytest.approx(0.4)
    assert [row["value"] for row in averages["prior.enabled"]] == [True, False]  # grid order


def _result(plots=None):
    return {"spec": {"subject": "photos", "config": "tiny", "prompts": "dreambench", "sr": False,
                     "fixed": {"base.steps": 400}},
            "axes": AXES, "points": POINTS, "best": best_per_metric(POINTS),
            "averages": averages_per_axis(POINTS, AXES), "images_per_prompt": "4", "stage_one_runs": 4,
            "plots": plots or []}


def test_markdown_tables():
    text = to_markdown(_result(), plots_note=SKIPPED)
    assert "| point | base.lr | prior.enabled | DINO ↑ | CLIP-I ↑ | CLIP-T ↑ | PRES ↓ | DIV ↑ |" in text
    assert "| b | 1e-06 | off | **0.700** | 0.800 | 0.280 | **0.400** | – |" in text
    assert "| PRES ↓ | 0.400 | b |" in text
    assert "### prior.enabled" in text and "| on | 2 | 0.550 | 0.800 | 0.305 | 0.550 | 0.300 |" in text
    assert "| 1e-05 | 0 | – | – | – | – | – |" in text
    assert "Fixed: `base.steps = 400`" in text and "pip install 'cascade-booth[plot]'" in text


def test_plots_are_optional(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "matplotlib", None)  # as if not installed
        assert write_plots(_result(), tmp_path / "plots") == ([], SKIPPED)
    assert not (tmp_path / "plots").exists()
    pytest.importorskip("matplotlib")
    paths, note = write_plots(_result(), tmp_path / "plots")
    assert note is None and len(paths) == 10 and all(p.stat().st_size > 0 for p in paths)
    assert tmp_path / "plots" / plot_name("pres", "prior.enabled") in paths
    assert plot_name("pres", "prior.enabled") == "pres_vs_prior_enabled.png"


# --- one tiny sweep end to end ----------------------------------------------------------------------

def _counting(monkeypatch):
    """Count class-image generations (their progress reports) and embeddings written over an existing file."""
    from cascade_booth import clikit
    from cascade_booth.text import TextEmbeddings

    calls = {"class_images": 0, "encoded": 0, "re_encoded": 0}
    ensure = TextEmbeddings.ensure

    def class_progress():
        def update(done: int, total: int) -> None:
            calls["class_images"] += done >= total  # one generation ends with done == total
        return update

    def watched_ensure(self, prompts, *args, **kwargs):
        before = {p: p.stat().st_mtime_ns for p in self.folder.glob("*.safetensors")}
        ensure(self, prompts, *args, **kwargs)
        after = {p: p.stat().st_mtime_ns for p in self.folder.glob("*.safetensors")}
        calls["encoded"] += len(set(after) - set(before))
        calls["re_encoded"] += sum(after[p] != stamp for p, stamp in before.items())

    monkeypatch.setattr(clikit, "class_progress", class_progress)
    monkeypatch.setattr(TextEmbeddings, "ensure", watched_ensure)
    return calls


@pytest.mark.usefixtures("one_thread")
def test_tiny_sweep_end_to_end_and_resume(tmp_path, clock_subject, tiny_eval, monkeypatch):
    calls = _counting(monkeypatch)
    spec, out = write_spec(tmp_path, clock_subject, models=tiny_eval), tmp_path / "out"
    result = sweep_cli("--spec", spec, "--out", out)
    assert result.exit_code == 0, result.output
    assert "[1/2] lr=0.0001: stage one: training" in result.output and "[2/2] lr=0.0002: evaluating" in result.output
    # Both stage ones use the same prior settings: the class images were generated once, no prompt encoded twice.
    assert calls["class_images"] == 1
    assert calls["encoded"] >= 2 and calls["re_encoded"] == 0  # this test's prompts are new to the cache

    data = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in data["points"]] == ["lr=0.0001", "lr=0.0002"] and data["stage_one_runs"] == 2
    for point in data["points"]:
        assert all(isinstance(point["metrics"][m], float) for m in ("dino", "clip_i", "clip_t", "pres", "div"))
        report = json.loads((out / point["evaluation"]).read_text())
        assert report["overall"]["n_instance_images"] == 2 and report["overall"]["n_class_images"] == 2
    lr = {row["value"]: row for row in data["averages"]["base.lr"]}
    assert lr[1e-4]["dino"] == data["points"][0]["metrics"]["dino"] and lr[2e-4]["n"] == 1
    assert set(data["best"]) == {"dino", "clip_i", "clip_t", "pres", "div"}
    markdown = (out / "sweep.md").read_text()
    assert "## Best point per metric" in markdown and "### base.lr" in markdown and "| lr=0.0002 | 0.0002 |" in markdown

    # Rerun with one evaluation lost: the first point is skipped, the second is only re-rendered and re-scored.
    weights = sorted((out / "stage-one").glob("*/base/pytorch_lora_weights.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in weights]
    (out / "points" / "lr=0.0002" / "evaluation" / "metrics.json").unlink()
    again = sweep_cli("--spec", spec, "--out", out)
    assert again.exit_code == 0, again.output
    assert "[1/2] lr=0.0001: done earlier, skipped" in again.output
    assert "[2/2] lr=0.0002: stage one: reusing" in again.output and "training" not in again.output
    assert [p.stat().st_mtime_ns for p in weights] == stamps
    assert calls["class_images"] == 1 and calls["re_encoded"] == 0
    rerun = json.loads((out / "sweep.json").read_text())
    assert rerun["points"][0]["metrics"] == data["points"][0]["metrics"]

    # Changed training settings are refused for existing points; changed evaluation settings re-render.
    changed = sweep_cli("--spec", spec, "--out", out, "--set", "base.steps=2")
    assert changed.exit_code == 2 and "Traceback" not in changed.output
    assert "point lr=0.0001" in changed.output and "config.base.steps: 1 -> 2" in changed.output
    fewer = sweep_cli("--spec", spec, "--out", out, "--images-per-prompt", "1", "--dry-run")
    assert fewer.exit_code == 0 and "lr=0.0001: re-evaluate" in fewer.output


def test_existing_point_folders_are_checked_against_the_spec(tmp_path, clock_subject):
    spec = build_spec({"subject": str(clock_subject), "class_noun": "clock", "config": "tiny",
                       "grid": {"base.lr": [1e-4]}})
    pp = plan_sweep(spec, tmp_path / "out").points[0]
    assert pp.status == "new"
    recorded = {"train": json.loads(json.dumps(pp.train)), "eval": pp.eval, "stage_one": "older", "done": False}
    del recorded["train"]["config"]["base"]["variance"]  # a field added to the package since: at its default
    pp.folder.mkdir(parents=True)
    (pp.folder / "point.json").write_text(json.dumps(recorded))
    again = plan_sweep(spec, tmp_path / "out").points[0]
    assert again.status == "partial" and again.stage_one == tmp_path / "out" / "stage-one" / "older"
    recorded["train"]["config"]["base"]["variance"] = "fixed"
    (pp.folder / "point.json").write_text(json.dumps(recorded))
    with pytest.raises(RunError, match=r"lr=0.0001 .* other settings:\n  config.base.variance: 'fixed' -> 'learned'"):
        plan_sweep(spec, tmp_path / "out")
    shutil.rmtree(pp.folder)
    assert plan_sweep(spec, tmp_path / "out").points[0].status == "new"
