"""Write failures in one line, and disk space: what a write needs, what is free, and a reservation.

Every write the package makes that fails (disk full, quota, read-only, permissions) becomes a
``WriteError`` naming the file, and for a full disk what the write needs and what is free. A stage
reserves the space of its final weights before it trains (``reserve``) and frees it just before it
writes them, so a disk that fills up during training cannot cost the trained weights.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError

from cascade_booth.errors import RunError

# What a failed write can raise: safetensors reports its I/O errors as SafetensorError, not OSError.
WRITE_ERRORS = (OSError, SafetensorError)
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
SLACK = 64 << 10  # a config file and JSON beside a weights file
HEADER = 256  # bytes of a safetensors header per tensor (name, dtype, shape, offsets), generously


class WriteError(RunError, OSError):
    """A file could not be written; nothing half-written is left under its name.

    Also an ``OSError`` carrying the cause's ``errno`` and ``strerror``, so callers that handle a
    failed write as an OSError keep working.
    """

    def __init__(self, message: str, cause: BaseException | None = None):
        OSError.__init__(self, message)
        self.errno = error_number(cause) if cause is not None else None
        self.strerror = reason(cause) if cause is not None else None

    def __str__(self) -> str:
        return str(self.args[0])


def error_number(err: BaseException) -> int | None:
    """The OS error number of a failed write, also the one inside a SafetensorError's message."""
    if isinstance(err, OSError) and err.errno:
        return err.errno
    found = re.search(r"os error (\d+)", str(err))
    return int(found.group(1)) if found else None


def reason(err: BaseException) -> str:
    """Why a write failed, in the OS's words ("No space left on device")."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    code = error_number(err)
    return os.strerror(code) if code else str(err)


def free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem of ``path`` (or of its nearest existing parent); None if unknown."""
    for folder in (Path(path), *Path(path).parents):
        if folder.is_dir():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def size_text(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"


def space_note(folder: Path, needed: int | None = None) -> str:
    """'it needs about 12.0 MiB free in FOLDER (3.1 MiB free now)', or only what is free."""
    free = free_bytes(folder)
    have = "unknown space" if free is None else size_text(free)
    if needed is None:
        return f"{have} free in {folder}"
    return f"it needs about {size_text(needed)} free in {folder} ({have} free now)"


def failed(path: Path, err: BaseException, needed: int | None = None) -> str:
    """'cannot write PATH: REASON' and, when the disk is full, the space it needs and the space free."""
    text = f"cannot write {path}: {reason(err)}"
    if error_number(err) in NO_SPACE:
        text += f"; {space_note(Path(path).parent, needed)}"
    return text


def file_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """About the size of a safetensors file of ``tensors`` with the files written beside it."""
    tensors = list(tensors)
    return sum(t.numel() * t.element_size() + HEADER for t in tensors) + SLACK


def allocate(fd: int, nbytes: int) -> None:
    """Give the file ``fd`` ``nbytes`` of real disk blocks at once (Linux ``fallocate``).

    Not ``os.posix_fallocate``: where the filesystem cannot allocate ahead (NFS, some FUSE) glibc
    emulates it by writing every block, which for the weights of a full fine-tune takes minutes.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError):  # not Linux
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP)) from None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    if fallocate(fd, 0, 0, nbytes) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def reserve(path: Path, nbytes: int, what: str) -> None:
    """Hold ``nbytes`` of real disk blocks in the file ``path`` until ``release``, or refuse now.

    Where the filesystem cannot allocate ahead, at least the free space is checked.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            allocate(fd, nbytes)
        finally:
            os.close(fd)
    except OSError as err:
        release(path)
        code = error_number(err)
        if code in NO_SPACE:
            raise _not_enough(path, nbytes, what) from None
        if code not in {errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}:
            raise WriteError(failed(path, err), err) from None
        free = free_bytes(path.parent)  # this filesystem cannot allocate ahead: check at least
        if free is not None and free < nbytes:
            raise _not_enough(path, nbytes, what) from None


def _not_enough(path: Path, nbytes: int, what: str) -> WriteError:
    return WriteError(f"{path.parent}: not enough free space for {what}: {space_note(path.parent, nbytes)}; "
                      "free some space or choose another --run folder")


def release(path: Path) -> None:
    with contextlib.suppress(OSError):
        Path(path).unlink(missing_ok=True)
