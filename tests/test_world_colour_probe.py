"""tools/world_colour_probe.py: the frozen world UNet's loss per colour word, and renders from spliced T5 states."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers_tools import load_tool

from cascade_booth.cli import main as cli
from cascade_booth.world.vocab import COLOURS

pytestmark = pytest.mark.usefixtures("one_thread")


def test_loss_ranks_a_blue_subjects_own_colour_first(tmp_path: Path) -> None:
    subject = tmp_path / "subject"
    made = CliRunner().invoke(cli, ["world", "subject", "--class", "backpack", "--seed", "3", "--out", str(subject)])
    assert made.exit_code == 0, made.output
    rows = load_tool("world_colour_probe").loss_table(subject, draws=2)
    assert sorted(word for word, _, _ in rows) == sorted(["(none)", *COLOURS])
    assert rows[0][0] == "blue"  # the subject's own colour explains its photos best
    assert rows[-1][2] > 1.5 * rows[0][2]  # and a far colour costs clearly more


def test_pieces_refuses_colours_of_different_lengths(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="different piece counts"):  # "red" is 2 pieces, "orange" 3
        load_tool("world_colour_probe").piece_rates("orange", "red", "teapot", tmp_path, repeats=1)
