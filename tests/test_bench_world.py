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
