"""Prompt files: one prompt a line; blank lines and ``#`` comments are skipped.

Read here for ``render --prompts-file`` and for the evaluation's and sweeps' prompt lists, which
then check the lines their own way (render keeps them as written; evaluation converts conventions).
"""

from __future__ import annotations

from pathlib import Path


def prompt_lines(path: str | Path) -> list[tuple[int, str]]:
    """The prompt lines of ``path`` with their line numbers (from 1), stripped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [(number, line) for number, raw in enumerate(lines, start=1)
            if (line := raw.strip()) and not line.startswith("#")]
