"""SIGINT/SIGTERM handling for long work: subclasses decide what a stop signal does."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager that routes SIGINT/SIGTERM to ``self.on_signal`` and restores the old handlers.

    Outside the main thread Python cannot install handlers; the scope is then a no-op.
    """

    def __init__(self) -> None:
        self._old: dict[int, object] = {}

    def on_signal(self, signum: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        for sig in STOP_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, lambda signum, frame: self.on_signal(signum))
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
