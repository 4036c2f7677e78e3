"""Why a path the user named cannot be used: the precise reason, never a blanket "not found".

``Path.exists()`` and ``Path.is_dir()`` answer False for every failure (a symlink loop, a broken
link, a permission problem), so a check built on them can only say "not found" and sends the user
looking in the wrong place. ``os.stat`` tells the failures apart.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def path_problem(path: str | os.PathLike, kind: str) -> str | None:
    """None if ``path`` is an existing ``kind`` (``"folder"`` or ``"file"``), else why not, e.g. ``"not found"``."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        return _stat_failure(path, err)
    except ValueError as err:  # e.g. an embedded NUL byte
        return f"not a usable path ({err})"
    if kind == "folder" and not stat.S_ISDIR(mode):
        return "not a folder"
    if kind == "file" and not stat.S_ISREG(mode):
        return "a folder, not a file" if stat.S_ISDIR(mode) else "not a regular file"
    return None


def _stat_failure(path: Path, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "a symlink loop (too many levels of symbolic links)"
    if err.errno == errno.ENOENT and path.is_symlink():
        return f"a broken symlink (it points to {os.readlink(path)}, which does not exist)"
    if err.errno == errno.ENOENT:
        return "not found"
    if err.errno == errno.ENOTDIR:
        return "not found (a folder on its way is a file)"
    if err.errno == errno.EACCES:
        return "not accessible (permission denied)"
    return f"cannot be read ({err.strerror or err})"
