"""CLI plumbing shared by the commands: clean errors, progress bars, common options."""

from __future__ import annotations

import functools
import sys

import click

from cascade_booth.errors import BoothError


def friendly(fn):
    """Turn BoothError (and Ctrl-C outside training) into a message and an exit code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BoothError as err:
            report_error(err)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted", fg="red", err=True)
            sys.exit(130)

    return wrapper


def report_error(err: BoothError) -> None:
    """Print ``err`` once per launch: under a launcher every process runs the same command.

    The main process reports everything. Another process stays quiet about bad input (every process
    validates the same flags and files, so the main process says the same) and about the main
    process's own failure; anything else happened to it alone and is printed with its rank.
    """
    from cascade_booth import parallel
    from cascade_booth.errors import InputError, ModelNotFoundError

    rank = parallel.launched_rank()
    if rank == 0:
        click.secho(f"error: {err}", fg="red", err=True)
    elif not isinstance(err, InputError | ModelNotFoundError | parallel.MainProcessFailed):
        click.secho(f"error (process {rank}): {err}", fg="red", err=True)


class TqdmCallbacks:
    """Progress bar with loss for the trainer; each trainer event (resume, skipped update, checkpoint) a line above."""

    def __init__(self, label: str):
        from tqdm.auto import tqdm

        self._tqdm, self.label, self.bar = tqdm, label, None

    def build(self):
        from cascade_booth.trainer import Callbacks

        return Callbacks(on_start=self.start, on_step=self.step, on_event=self.event)

    def start(self, start: int, total: int) -> None:
        from cascade_booth import parallel

        self.bar = self._tqdm(total=total, initial=start, desc=self.label, unit="step", file=sys.stderr,
                              disable=not parallel.is_main())  # one bar for a launch of several processes

    def step(self, step: int, loss: float, lr: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.1e}", refresh=False)  # drawn once, by update
        if self.bar.n + 1 >= self.bar.total:
            self.bar.n += 1  # not drawn: close() draws the end, drawing it here too prints it twice
        else:
            self.bar.update(1)

    def event(self, step: int, message: str) -> None:
        """One line above the bar, from the main process only (every process of a launch sees the same events)."""
        from cascade_booth import parallel

        if parallel.is_main():
            self._tqdm.write(message, file=sys.stderr)  # tqdm clears the bar, prints the line, redraws the bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def class_progress():
    """A ``(done, total)`` hook for class-image generation; its first call (before the first image) starts the bar.

    The bar starts at the images already cached, so its rate counts only the images generated now, timed
    from when generation started; the end is drawn once, by ``close``.
    """
    from tqdm.auto import tqdm

    state = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:  # one bar: ``setdefault`` would build (and print) a new one on every call
            state["bar"] = tqdm(total=total, initial=done, desc="class images", unit="img", file=sys.stderr)
        bar = state["bar"]
        bar.n = done  # set, not update(): the rate stays (done - initial) / elapsed, not a per-call burst
        if done >= total:
            bar.close()
        else:
            bar.refresh()

    return update
