"""User-facing errors: the CLI prints these as one clear message, never a traceback."""

from __future__ import annotations


class BoothError(Exception):
    """Base class for errors caused by the user's input or environment.

    The CLI catches these, prints ``str(err)`` and exits non-zero.
    """

    exit_code = 2


class InputError(BoothError):
    """Bad user input: a file, folder, flag or config value. The message names the culprit."""


class ModelNotFoundError(BoothError):
    """A model id or folder could not be resolved (offline, or missing)."""


class RunError(BoothError):
    """A run folder is missing pieces, locked, or inconsistent with the request."""


class TrainingAborted(BoothError):
    """Training stopped on purpose (interrupt, non-finite loss); a checkpoint was saved if possible."""

    exit_code = 3
