"""The loss and event logs a stage keeps beside its weights: ``RUN/<stage>/losses.jsonl`` and ``events.jsonl``.

:class:`LossLog` chains itself onto the trainer's callbacks (``LossLog.attach``), so a stage's run folder
tells the loss history of the weights it holds and what happened to the run. It lives apart from
``stages.common`` because it needs only the trainer's callbacks and the run folder's write helpers,
not a stage: a library module, usable by anything that drives ``cascade_booth.trainer.train``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from cascade_booth import parallel
from cascade_booth.diskspace import failed
from cascade_booth.runfolder import WriteError, atomic_path
from cascade_booth.trainer import Callbacks


class LossLog:
    """``RUN/<stage>/losses.jsonl``: one line per optimizer step, ``{"step", "loss", "lr"}``, main process only.

    The loss is the step's mean over all micro-batches and processes (null for a skipped, non-finite
    step). On resume the lines past the restored step are dropped first, so the file always tells the
    history of the weights that were trained. A line the disk has no room for waits in memory and
    goes out with the next one: a full disk stops training at a checkpoint, never for its log.

    ``RUN/<stage>/events.jsonl`` beside it: one line per trainer event, ``{"step", "event"}`` (resume,
    skipped update, checkpoint, this log's disk-full warning), appended across resumes: what happened to the run.
    """

    FILE, EVENTS = "losses.jsonl", "events.jsonl"

    def __init__(self, folder: Path, warn: Callable[[int, str], None] | None = None):
        self.path, self.events = folder / self.FILE, folder / self.EVENTS
        self.pending = b""  # lines not yet in the file (disk full)
        self.warn = warn or _warn

    @classmethod
    def attach(cls, callbacks: Callbacks, folder: Path) -> Callbacks:
        """``callbacks`` with the log chained after its ``on_start`` / ``on_step`` (unchanged off the main process)."""
        if not parallel.is_main():
            return callbacks
        start, step, event = callbacks.on_start, callbacks.on_step, callbacks.on_event

        def on_event(done: int, message: str) -> None:
            log.event(done, message)
            if event:
                event(done, message)

        log = cls(folder, warn=on_event if event else None)  # with a display, the log's warning is an event too

        def on_start(first: int, total: int) -> None:
            log.start(first)
            if start:
                start(first, total)

        def on_step(done: int, loss: float, lr: float) -> None:
            log.step(done, loss, lr)
            if step:
                step(done, loss, lr)

        return dataclasses.replace(callbacks, on_start=on_start, on_step=on_step, on_event=on_event)

    def start(self, first: int) -> None:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [line for line in lines if 0 < _logged_step(line) <= first]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))

    def step(self, done: int, loss: float, lr: float) -> None:
        line = json.dumps({"step": done, "loss": loss if math.isfinite(loss) else None, "lr": lr}) + "\n"
        waiting, self.pending = self.pending, self.pending + line.encode()
        try:
            _append(self.path, self.pending)  # appended per step: a crash loses no finished line
        except WriteError as err:
            if not waiting:  # say it once, not every step
                self.warn(done, f"warning: {err}; the loss log waits in memory, training goes on")
            return
        self.pending = b""

    def event(self, step: int, message: str) -> None:
        line = json.dumps({"step": step, "event": message}) + "\n"
        with contextlib.suppress(WriteError):  # a full disk: the event still reaches the display
            _append(self.events, line.encode())


def _warn(step: int, message: str) -> None:  # noqa: ARG001 - a LossLog without a display: stderr, above any bar
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def _logged_step(line: str) -> int:
    """The step of a loss-log line; 0 for a line that is not one (cut short by a crash)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 0


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` whole or not at all: a full disk must not leave half a line behind."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as err:
        raise WriteError(failed(path, err), err) from None
    size = os.fstat(fd).st_size
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as err:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise WriteError(failed(path, err), err) from None
    finally:
        os.close(fd)
