"""tools/bench_world.py splits a child's wall time and peak memory into parts by its timestamped output."""

from __future__ import annotations

from helpers_tools import load_tool


def _tool():
    return load_tool("bench_world")


def test_parts_follow_the_output_lines_and_take_each_parts_peak_memory():
    lines = [(1.0, "loading"), (2.0, "class images:   0%"), (5.0, "class images: 100%"), (6.0, "embedding"),
             (7.0, "stage one:   0%"), (9.5, "stage one: 100%"), (9.8, "saved")]
    samples = [(0.5, 100.0), (3.0, 400.0), (6.5, 250.0), (8.0, 300.0), (9.9, 120.0)]
    parts = _tool().split_parts(lines, samples, wall=10.0)
    assert list(parts) == ["before class images", "class images", "before steps", "steps", "end (saving, exit)"]
    assert [parts[k]["s"] for k in parts] == [2.0, 3.0, 2.0, 2.5, 0.5]
    assert [parts[k]["peak_mib"] for k in parts] == [100.0, 400.0, 250.0, 300.0, 120.0]
    assert sum(p["s"] for p in parts.values()) == 10.0


def test_diffusers_progress_lines_are_recognised():
    lines = [(1.0, "Generating class images: 50%"), (3.0, "Generating class images: 100%"), (4.0, "Steps:  10%"),
             (8.0, "Steps: 100%")]
    parts = _tool().split_parts(lines, [], wall=9.0)
    assert parts["class images"]["s"] == 2.0 and parts["steps"]["s"] == 4.0


def test_diffusers_equal_trains_the_world_presets_settings_and_checkpoints_only_when_asked(monkeypatch):
    import argparse
    from pathlib import Path

    from cascade_booth.config import load_config

    tool, preset = _tool(), load_config("world")
    a = argparse.Namespace(cls="clock", smoke=False, diffusers_script=Path("train_dreambooth_lora.py"),
                           diffusers_full_script=Path("train_dreambooth.py"))

    def flag(cmd: list[str], name: str) -> str:
        return cmd[cmd.index(name) + 1]

    s1, s2 = tool.equal_commands(a, Path("photos"), Path("work"), "a zq clock")
    assert flag(s1, "--max_train_steps") == str(preset.base.steps) and flag(s2, "--max_train_steps") == str(
        preset.sr.steps)
    assert float(flag(s1, "--learning_rate")) == preset.base.lr and flag(s1, "--rank") == str(preset.base.lora_rank)
    assert flag(s1, "--num_class_images") == str(preset.prior.class_images) and "--with_prior_preservation" in s1
    assert flag(s1, "--checkpointing_steps") == "1000000"  # the bench: no intermediate checkpoints
    curve, _ = tool.equal_commands(a, Path("photos"), Path("work"), "a zq clock", checkpointing=100)
    assert flag(curve, "--checkpointing_steps") == "100"
    # stage two: their full fine-tuning script when the preset fine-tunes stage two fully, else their LoRA one
    assert float(flag(s2, "--learning_rate")) == preset.sr.lr and "train_dreambooth.py" in s2
    assert "--rank" not in s2 and "--class_labels_conditioning" in s2
    preset.sr.full = False
    monkeypatch.setattr(tool, "load_config", lambda name: preset)
    _, lora = tool.equal_commands(a, Path("photos"), Path("work"), "a zq clock")
    assert "train_dreambooth_lora.py" in lora and flag(lora, "--rank") == str(preset.sr.lora_rank)


def test_diffusers_equal_trains_each_stage_in_the_precision_the_preset_resolves_to(monkeypatch):
    import argparse
    from pathlib import Path

    import torch

    tool = _tool()
    a = argparse.Namespace(cls="clock", smoke=False, diffusers_script=Path("train_dreambooth_lora.py"),
                           diffusers_full_script=Path("train_dreambooth.py"))
    for bf16_units, stage_two in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda units=bf16_units: {"avx512_bf16": units})
        s1, s2 = tool.equal_commands(a, Path("photos"), Path("work"), "a zq clock")
        assert s1[s1.index("--mixed_precision") + 1] == "no"  # the world preset's stage one is fp32
        assert s2[s2.index("--mixed_precision") + 1] == stage_two


def test_the_curves_diffusers_stage_one_is_built_whatever_stage_two_the_preset_trains():
    """bench_world_curve builds only their stage one; a full-fine-tune stage two in the preset must not break it."""
    import argparse
    from pathlib import Path

    from cascade_booth.config import load_config

    curve = load_tool("bench_world_curve")
    assert load_config("world").sr.full  # the case that broke: their stage two would need train_dreambooth.py
    a = argparse.Namespace(diffusers_script=Path("train_dreambooth_lora.py"), every=100, steps=300)
    s1 = curve.their_stage_one(a, "clock", "zq", Path("photos"), Path("work"))
    assert "train_dreambooth_lora.py" in s1 and s1[s1.index("--checkpointing_steps") + 1] == "100"
    assert s1[s1.index("--max_train_steps") + 1] == "300" and s1[s1.index("--instance_prompt") + 1] == "a zq clock"


def test_the_ground_truth_column_is_the_subject_in_each_asked_context_and_reads_back_as_such(tmp_path):
    """The bench's ceiling column: the world renderer's own drawing of the subject in every non-plain context. It
    must read back as the subject (its colour and pattern) in the asked context, else it is no ceiling."""
    from cascade_booth.world.cli import write_subject_photos
    from cascade_booth.world.readback import read_back, rendered_pngs

    report = load_tool("world_tables_report")
    photos = tmp_path / "photos"
    photos.mkdir()
    write_subject_photos(photos, "clock", 7, 3)
    folder = report.draw_truth(tmp_path / "truth", "clock", 7, per_context=1, size=128)
    pngs = rendered_pngs(sorted((folder / "personalized").glob("*.png")))
    assert len(pngs) == 6  # one per non-plain context
    read = read_back(pngs, photos)["instance"]
    assert (read["colour"], read["pattern"], read["context"]) == (1.0, 1.0, 1.0)
