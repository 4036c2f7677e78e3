"""The run folder: ``run.json``, stage outputs, atomic writes, a lock, and complete-only checkpoints.

Layout::

    RUN/run.json                        subject, class noun, identifier, prompts, models, config, versions
    RUN/base/pytorch_lora_weights.safetensors   (or unet/ for a full fine-tune)
    RUN/base/checkpoints/step-N/        COMPLETE marker written last, folder renamed into place
    RUN/sr/...                          the same for stage two
    RUN/.reserved-<stage>               disk space held for the final weights while the stage trains

Nothing half-written is ever visible under its final name: files go through ``atomic_path`` and
checkpoints through a temporary folder that is renamed once its ``COMPLETE`` marker exists. A
training command writes ``run.json`` only once every check passed and training starts, so a
refused command changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cascade_booth.diskspace import WRITE_ERRORS, WriteError, failed
from cascade_booth.errors import RunError

COMPLETE = "COMPLETE"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success fsync and rename it into place.

    Readers see the old file or the new complete one, never a partial one; the folder is fsynced
    after the rename so the new name survives a crash (where the filesystem allows it). With
    ``overwrite=False`` an existing ``final`` is never replaced (not even by a concurrent writer).
    Any write failure becomes a one-line ``WriteError`` naming ``final``.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as err:
        raise WriteError(failed(final, err), err) from None
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the user's usual permissions
    try:
        yield tmp
        _fsync(tmp)
        _publish(tmp, final, overwrite)
    except WriteError:
        raise
    except WRITE_ERRORS as err:
        raise WriteError(failed(final, err), err) from None
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # some filesystems refuse to fsync a folder
        _fsync(final.parent)


def _publish(tmp: Path, final: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # unlike a rename, a link never replaces an existing file
    except FileExistsError:
        raise
    except OSError:  # no hard links on this filesystem: check, then rename
        if final.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final)) from None
        os.replace(tmp, final)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, data: Any, overwrite: bool = True) -> None:
    try:
        with atomic_path(path, overwrite) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    except WriteError as err:
        raise WriteError(f"{err} (the previous version is intact)", err) from None


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


class RunFolder:
    """One personalization run. ``lock()`` keeps a second process from writing into it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._made: list[Path] = []  # the folders lock() created, innermost first

    @property
    def meta_file(self) -> Path:
        return self.path / "run.json"

    def exists(self) -> bool:
        return self.meta_file.is_file()

    def read(self) -> dict[str, Any]:
        if not self.exists():
            raise RunError(f"{self.path}: not a cascade-booth run (no run.json); train stage one first")
        return read_json(self.meta_file)

    def write(self, meta: dict[str, Any]) -> None:
        write_json(self.meta_file, meta)

    def stage_dir(self, stage: str) -> Path:
        return self.path / stage

    def checkpoint_root(self, stage: str) -> Path:
        return self.stage_dir(stage) / "checkpoints"

    def lock(self) -> None:
        """Take the run folder's lock (``.lock``, holding our pid) or refuse if another process has it.

        The lock is an ``flock``: the kernel drops it when the holder exits, however it exits (a killed
        run leaves no stale lock), and a ``RunFolder`` that is garbage-collected releases it too.
        Folders it creates are removed again by ``unlock`` if nothing but the lock was put in them,
        so a refused command leaves no trace.
        """
        made = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise WriteError(failed(self.path / ".lock", err), err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise RunError(
                f"{self.path}: another cascade-booth process{who} is using this run folder; "
                "wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd, self._made = fd, made

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        made, self._made = self._made, []
        try:
            if made and [p.name for p in self.path.iterdir()] == [".lock"]:
                (self.path / ".lock").unlink()  # while still held: no other process can have taken it
            else:
                made = []
        except OSError:  # the folder went away meanwhile: nothing to tidy
            made = []
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        for folder in made:
            with contextlib.suppress(OSError):  # not empty (another process's now): it stays
                folder.rmdir()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.unlock()


def checkpoint_steps(root: Path) -> list[int]:
    """Steps of the complete checkpoints under ``root``, ascending (incomplete ones are ignored)."""
    if not root.is_dir():
        return []
    steps = []
    for child in root.iterdir():
        if child.name.startswith("step-") and (child / COMPLETE).is_file():
            with contextlib.suppress(ValueError):
                steps.append(int(child.name.removeprefix("step-")))
    return sorted(steps)


def _fsync(path: Path) -> None:
    """Flush a file or a folder (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(folder: Path) -> None:
    """Remove ``folder`` by renaming it to a hidden name first, so no half-deleted ``step-N`` is ever seen."""
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def new_checkpoint(
    root: Path, step: int, keep: int, on_write: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """Yield a temporary folder to fill; then mark it complete, rename it to ``step-N``, prune old ones.

    The files are fsynced before the ``COMPLETE`` marker is written and the folder renamed, and older
    checkpoints are deleted only after that, so a crash at any point leaves a complete checkpoint.
    ``on_write`` (fault injection) is called with the marker, then with the renamed folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.", dir=root))
    final = root / f"step-{step}"
    try:
        yield tmp
        for child in tmp.iterdir():
            _fsync(child)
        (tmp / COMPLETE).write_text(str(step))
        _fsync(tmp / COMPLETE)
        _fsync(tmp)
        if on_write:
            on_write(tmp / COMPLETE)
        if final.exists():  # the same step again (e.g. a drifted resume): the old copy goes last
            os.replace(final, root / f".old-{final.name}-{os.getpid()}")
        os.replace(tmp, final)
        _fsync(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if on_write:
        on_write(final)
    for old in checkpoint_steps(root)[:-keep]:
        _discard(root / f"step-{old}")
    for stale in [*root.glob(".step-*"), *root.glob(".old-*"), *root.glob(".trash-*")]:  # killed writers
        shutil.rmtree(stale, ignore_errors=True)
