"""Every output folder is checked for writability before any work starts.

Commands that write (train-base, train-sr, render, evaluate, sweep, demo) call :func:`check_writable`
on each folder they will write into, and on the shared cache, first: a read-only filesystem, a full
quota or a path through a regular file is then one line naming the folder, not a traceback after
minutes of work. Permission bits cannot tell (root ignores them; a read-only mount refuses root
too), so a probe file is created and removed. A folder that does not exist yet is probed in its
nearest existing parent, which is where it would be created: a refused command creates nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from cascade_booth.errors import InputError


def check_writable(path: Path, what: str) -> None:
    """Raise an InputError naming ``what`` and ``path`` unless files can be created there."""
    path = Path(path).expanduser()
    target = path
    while not target.exists() and target.parent != target:
        target = target.parent
    if not target.is_dir():
        reason = "it exists and is not a folder" if target == path else f"{target} is not a folder"
        raise InputError(f"{what} {path}: cannot write there ({reason})")
    probe = target / f".cascade-booth-write-test-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        where = "" if target == path else f" (tried in {target}, where it would be created)"
        raise InputError(f"{what} {path}: cannot write there: {err.strerror or err}{where}; "
                         "choose a writable folder") from None
    probe.unlink(missing_ok=True)


def check_cache() -> None:
    """The shared cache (models, class images, text embeddings) must be writable too."""
    from cascade_booth.models import cache_dir

    check_writable(cache_dir(), "cache folder (set CASCADE_BOOTH_CACHE to move it)")
