"""The one way the package opens weight files, and atomic saving of them.

Every weight file goes through here: flat tensor files (LoRA adapters, checkpoints, cached
embeddings) through :func:`load_state_dict`, model and pipeline folders (our models, the
evaluators, the upscaler) through :func:`load_pretrained`. Either way every ``.safetensors``
header is validated first, so a truncated, corrupt or hostile file is one :class:`InputError`
naming the file instead of a library traceback or a huge allocation, and whatever else the
libraries raise while reading is turned into one line naming what was loaded.

Pickle-based checkpoints (``.bin``, ``.ckpt``, ``.pt``, ``.pth``) can run arbitrary code when
unpickled, so they are refused unless the user opts in (``--allow-pickle``, carried by the training request to
:func:`pickles`, or ``CASCADE_BOOTH_ALLOW_PICKLE=1``); even then flat files are read with
``torch.load(weights_only=True)``, whose restricted unpickler never calls arbitrary globals.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cascade_booth.errors import InputError, ModelNotFoundError
from cascade_booth.runfolder import atomic_path

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Largest safetensors JSON header accepted (100 MB); real headers are kilobytes."""

PICKLE_SUFFIXES: frozenset[str] = frozenset({".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle"})

# What the libraries raise for a damaged or unloadable file (safetensors' own error is no OSError).
LOAD_ERRORS = (OSError, SafetensorError, ValueError, RuntimeError, EOFError, KeyError)

_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}


class LoadError(ModelNotFoundError):
    """A model, pipeline or tokenizer could not be loaded; ``reason`` is the library's first line."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


_OPTED_IN: list[bool] = []  # the --allow-pickle of each ``pickles`` block in progress, innermost last


@contextlib.contextmanager
def pickles(allowed: bool) -> Iterator[None]:
    """Within the block, pickled weights load if ``allowed`` (a training request's ``allow_pickle``)."""
    _OPTED_IN.append(allowed)
    try:
        yield
    finally:
        _OPTED_IN.pop()


def pickles_allowed() -> bool:
    """Pickled weights (.bin/.ckpt/.pt) can run code when loaded: refused unless the user opted in.

    Opting in is ``--allow-pickle`` (the stage runs in ``pickles(True)``) or ``CASCADE_BOOTH_ALLOW_PICKLE=1``.
    """
    if _OPTED_IN and _OPTED_IN[-1]:
        return True
    return os.environ.get("CASCADE_BOOTH_ALLOW_PICKLE", "0").lower() in ("1", "true", "yes")


def load_state_dict(path: Path, allow_pickle: bool | None = None) -> dict[str, torch.Tensor]:
    """Load a flat ``name -> tensor`` mapping from a safetensors (or, opted in, pickle) file.

    The format is decided by content first (a valid-looking safetensors header wins, whatever
    the suffix), then by suffix. Tensors are loaded on the CPU. ``allow_pickle`` defaults to
    the user's ``--allow-pickle``.

    Raises:
        InputError: the file is missing, corrupt, truncated, of an unknown format, or a
            pickle file while pickles are not allowed. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    head = _read_head(path)
    if _looks_like_safetensors(head) or path.suffix.lower() == ".safetensors":
        return _load_safetensors(path)
    if path.suffix.lower() in PICKLE_SUFFIXES or _looks_like_pickle(head):
        return _load_pickle(path, pickles_allowed() if allow_pickle is None else allow_pickle)
    raise InputError(f"{path}: unrecognised weights format (expected a .safetensors file)")


def load_pretrained(cls, source: str | Path, *, safetensors_only: bool | None = None, **kwargs):
    """``cls.from_pretrained(source, **kwargs)`` for a model, a pipeline or a tokenizer, checked first.

    A local folder's safetensors files (its own, and its components' except those passed as None)
    are validated before the library reads any of them. ``safetensors_only`` (default: unless
    --allow-pickle) adds ``use_safetensors=True``; False keeps the library's own choice (tokenizers,
    which have no weights; the evaluators). Whatever the library raises becomes one
    :class:`LoadError` naming ``source`` (with the pickle files, when only those exist).
    """
    folder = Path(source).expanduser()
    local = folder.is_dir()
    if local:
        check_weight_folder(folder, skip={name for name, value in kwargs.items() if value is None})
    only = not pickles_allowed() if safetensors_only is None else safetensors_only
    try:
        return cls.from_pretrained(source, **({"use_safetensors": True} if only else {}), **kwargs)
    except LOAD_ERRORS as err:
        reason = _first_line(err)
        pickles = _pickle_files(folder) if local and only else []
        if pickles:
            raise LoadError(
                f"{source}: has only pickled weights ({', '.join(pickles)}), which can execute code when loaded. "
                "Convert them to safetensors, or pass --allow-pickle if you trust the source.", reason
            ) from None
        raise LoadError(f"{source}: cannot load {cls.__name__}: {reason}", reason) from None


def check_weight_folder(folder: Path, skip: Collection[str] = ()) -> None:
    """Validate the header of every safetensors file in ``folder`` and its component folders (not ``skip``)."""
    folder = Path(folder)
    own = list(folder.glob("*.safetensors"))
    parts = [p for p in folder.glob("*/*.safetensors") if p.parent.name not in skip]
    for path in sorted(own + parts):
        try:
            validate_safetensors_header(path)
        except OSError as err:
            raise InputError(f"cannot read weights file {path}: {err.strerror or err}") from None


def save_state_dict(
    tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Atomically write ``tensors`` to ``path`` as safetensors.

    Data goes to a temporary file in the same folder, is fsynced, then renamed over
    ``path`` with :func:`os.replace`, so readers see either the old or the new complete
    file, never a partial one. The parent folder is created if needed.
    """
    path = Path(path)
    for name, value in tensors.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise TypeError(f"expected str -> torch.Tensor, got {type(name).__name__} -> "
                            f"{type(value).__name__} for {name!r}")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str)
                                        for k, v in metadata.items()):
        raise TypeError("safetensors metadata must map str -> str")
    prepared = {name: value.detach().contiguous() for name, value in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(prepared, str(tmp), metadata=dict(metadata) if metadata is not None else None)


def validate_safetensors_header(path: Path) -> dict[str, object]:
    """Check a safetensors file's header against its size; return the parsed header.

    Checks: the file has the 8-byte length prefix, the header length is at most
    :data:`MAX_HEADER_BYTES` and fits in the file, the header is a JSON object, and every
    tensor's ``data_offsets`` lie inside the data section and match its dtype and shape.
    """
    path = Path(path)
    file_size = path.stat().st_size
    if file_size < 8:
        raise InputError(f"{path}: truncated or corrupt safetensors header (file is {file_size} bytes)")
    with path.open("rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        if header_len > MAX_HEADER_BYTES:
            raise InputError(f"{path}: safetensors header too large ({header_len:,} bytes, "
                             f"limit {MAX_HEADER_BYTES:,}); the file is corrupt or not safetensors"
                             f"{_pickle_hint(path)}")
        if header_len > file_size - 8:
            raise InputError(f"{path}: truncated or corrupt safetensors header (header claims "
                             f"{header_len:,} bytes, file has {file_size - 8:,} after the prefix)"
                             f"{_pickle_hint(path)}")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: truncated or corrupt safetensors header (invalid JSON: {exc})"
                         f"{_pickle_hint(path)}") from exc
    if not isinstance(header, dict):
        raise InputError(f"{path}: truncated or corrupt safetensors header (not a JSON object)")
    data_size = file_size - 8 - header_len
    for name, info in header.items():
        if name != "__metadata__":
            _check_tensor_entry(path, name, info, data_size)
    return header


def _check_tensor_entry(path: Path, name: str, info: object, data_size: int) -> None:
    """Validate one tensor entry of a safetensors header."""
    prefix = f"{path}: truncated or corrupt safetensors file: tensor {name!r}"
    if not isinstance(info, dict):
        raise InputError(f"{prefix} has no valid header entry")
    offsets, shape = info.get("data_offsets"), info.get("shape")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise InputError(f"{prefix} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise InputError(f"{prefix} has data_offsets [{begin}, {end}] outside the file's "
                         f"{data_size:,}-byte data section")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise InputError(f"{prefix} has invalid shape {shape!r}")
    itemsize = _DTYPE_BYTES.get(str(info.get("dtype")))
    if itemsize is not None:
        numel = 1
        for dim in shape:
            numel *= dim
        if numel * itemsize != end - begin:
            raise InputError(f"{prefix} needs {numel * itemsize:,} bytes but its offsets span "
                             f"{end - begin:,}")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Validate the header, then let safetensors load the tensors onto the CPU."""
    validate_safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: corrupt safetensors file ({exc})") from exc


def _load_pickle(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Refuse a pickle checkpoint, or read it with torch's weights-only unpickler."""
    if not allow_pickle:
        raise InputError(
            f"{path} is a pickle-based checkpoint; pickle files can run arbitrary code when loaded, "
            "so they are refused. Convert it to .safetensors, or pass --allow-pickle to read it "
            "with torch's restricted weights-only loader."
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for refused or damaged pickles
        raise InputError(f"{path}: refused or unreadable by torch's weights-only loader "
                         f"(it may contain code or non-tensor objects): {_short_torch_error(exc)}") from exc
    if not isinstance(loaded, Mapping):
        raise InputError(f"{path}: expected a mapping of names to tensors, got {type(loaded).__name__}")
    for name, value in loaded.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise InputError(f"{path}: expected a flat mapping of names to tensors, but entry "
                             f"{name!r} is a {type(value).__name__}")
    return dict(loaded)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _pickle_files(folder: Path) -> list[str]:
    """Pickled weight files in a model folder or its component folders, relative to ``folder``."""
    found = [p for ext in sorted(PICKLE_SUFFIXES) for p in (*folder.glob(f"*{ext}"), *folder.glob(f"*/*{ext}"))]
    return sorted(str(p.relative_to(folder)) for p in found)


def _short_torch_error(exc: BaseException) -> str:
    """The essential line of torch's long weights-only error (drop its advice to disable it)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = text.strip().splitlines() or [type(exc).__name__]
    return lines[0].split(" Please use", 1)[0][:300]


def _read_head(path: Path, size: int = 16) -> bytes:
    """First ``size`` bytes of a file, or an InputError naming it."""
    try:
        with path.open("rb") as handle:
            return handle.read(size)
    except OSError as exc:
        raise InputError(f"cannot read weights file {path}: {exc.strerror or exc}") from exc


def _looks_like_safetensors(head: bytes) -> bool:
    """True if the first bytes are a plausible safetensors length prefix and JSON start."""
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") >= 2


def _looks_like_pickle(head: bytes) -> bool:
    """True for torch zip checkpoints and raw pickle streams (protocol 2+)."""
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _pickle_hint(path: Path) -> str:
    """A hint appended to header errors when the file is actually a pickle checkpoint."""
    if _looks_like_pickle(_read_head(path)):
        return " (this looks like a pickle-based PyTorch checkpoint, not safetensors)"
    return ""
