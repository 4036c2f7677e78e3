"""tools/world_sr_fidelity.py judges stage two alone: the subject at 32 px in new contexts against its 128 px truth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers_tools import load_tool
from PIL import Image

from cascade_booth.cli import main as cli


def _tool():
    return load_tool("world_sr_fidelity")


@pytest.mark.usefixtures("one_thread")
def test_truth_reads_back_and_every_sr_and_strength_is_a_row(tmp_path: Path) -> None:
    subject = tmp_path / "subject"
    made = CliRunner().invoke(cli, ["world", "subject", "--class", "vase", "--seed", "3", "--out", str(subject)])
    assert made.exit_code == 0, made.output
    out = tmp_path / "out"
    _tool().main(["--subject", str(subject), "--identifier", "zq", "--contexts", "snow,beach", "--per-context", "1",
                  "--strengths", "0,0.1", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["subject"] == {"class": "vase", "colour": "brown", "pattern": "checks"}
    rows = results["rows"]
    assert list(rows) == ["truth", "bilinear", "pretrained, strength 0.1"]
    assert rows["truth"]["pattern"] == 1.0 and rows["truth"]["colour"] == 1.0 and rows["truth"]["mse"] == 0.0
    assert rows["bilinear"]["mse"] > 0.0 and rows["bilinear"]["pattern"] < 1.0  # the upsample blurs the checks away
    assert Image.open(out / "sr-fidelity.png").size == (2 * 128, 3 * 128)
    assert "| truth | 100% | 100% |" in (out / "results.md").read_text()


@pytest.mark.parametrize("args, culprit", [(["--contexts", "moon"], "'moon'"), (["--sr", "ours"], "'ours'"),
                                           (["--sr", "ours=nowhere"], "'ours=nowhere'")])
def test_bad_arguments_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], args, culprit) -> None:
    with pytest.raises(SystemExit):
        _tool().main(["--subject", str(tmp_path), "--identifier", "zq", *args])
    assert culprit in capsys.readouterr().err
