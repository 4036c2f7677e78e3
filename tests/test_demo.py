"""End-to-end smoke test: ``cascade-booth demo`` through the CLI, in-process, offline, on CPU."""

import json

from click.testing import CliRunner
from PIL import Image

from cascade_booth.cli import main


def test_demo_runs_the_whole_cascade(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "random weights" in result.output and "--config if-xl" in result.output
    renders = sorted((tmp_path / "demo" / "renders").glob("*.png"))
    assert renders, result.output
    image = Image.open(renders[0])
    assert image.size == (256, 256)  # stage two ran
    meta = json.loads(renders[0].with_suffix(".json").read_text())
    run = json.loads((tmp_path / "demo" / "run" / "run.json").read_text())
    assert meta["prompt"] == f"a {run['identifier']} clock in the jungle"
    assert run["stages"]["base"]["done"] and run["stages"]["sr"]["done"]
