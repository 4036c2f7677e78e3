"""What a sweep is about to do: every point's folders, training and evaluation settings, and the hooks.

Below ``run`` (which plans and runs), ``train`` and ``report`` (which read a plan), so none of them
imports another in a circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_booth.sweep.spec import Point, SweepSpec


def _silent(message: str) -> None:
    pass


@dataclass
class SweepHooks:
    """Progress for a CLI or UI: ``echo`` gets one line per point and phase.

    ``trainer(label)`` returns an object with ``build() -> trainer.Callbacks`` and ``close()``
    (:class:`cascade_booth.clikit.TqdmCallbacks`); ``class_progress()`` a ``(done, total)`` hook.
    """

    echo: Callable[[str], None] = _silent
    trainer: Callable[[str], Any] | None = None
    class_progress: Callable[[], Callable[[int, int], None]] | None = None


@dataclass
class PointPlan:
    point: Point
    folder: Path  # OUT/points/<name>
    stage_one: Path  # OUT/stage-one/<key>
    train: dict[str, Any]  # what the weights depend on: a change is refused
    eval: dict[str, Any]  # how images are rendered and scored: a change re-renders
    recorded: dict[str, Any] = field(default_factory=dict)  # point.json as found

    @property
    def run(self) -> Path:
        return self.folder / "run"

    @property
    def evaluation(self) -> Path:
        return self.folder / "evaluation"

    @property
    def done(self) -> bool:
        rec = self.recorded
        return bool(rec.get("done")) and rec.get("eval") == self.eval and (self.evaluation / "metrics.json").is_file()

    @property
    def status(self) -> str:
        if self.done:
            return "done"
        return "re-evaluate" if self.recorded.get("done") else "partial" if self.recorded else "new"


@dataclass
class SweepPlan:
    spec: SweepSpec
    out: Path
    points: list[PointPlan]
