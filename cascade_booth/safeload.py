"""Safe loading and atomic saving of weight files.

``.safetensors`` files are loaded after their header has been validated here (so a
truncated or hostile file gives a clear :class:`InputError` instead of a crash or a huge
allocation). Pickle-based checkpoints (``.bin``, ``.ckpt``, ``.pt``, ``.pth``) can run
arbitrary code when unpickled, so they are refused unless the caller opts in with
``allow_pickle=True`` (the CLI's ``--allow-pickle``); even then they are read with
``torch.load(weights_only=True)``, whose restricted unpickler never calls arbitrary
globals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cascade_booth.errors import InputError
from cascade_booth.runfolder import atomic_path

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Largest safetensors JSON header accepted (100 MB); real headers are kilobytes."""

PICKLE_SUFFIXES: frozenset[str] = frozenset({".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle"})

_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}


def load_state_dict(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load a flat ``name -> tensor`` mapping from a safetensors (or, opted in, pickle) file.

    The format is decided by content first (a valid-looking safetensors header wins, whatever
    the suffix), then by suffix. Tensors are loaded on the CPU.

    Raises:
        InputError: the file is missing, corrupt, truncated, of an unknown format, or a
            pickle file while ``allow_pickle`` is False. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    head = _read_head(path)
    if _looks_like_safetensors(head) or path.suffix.lower() == ".safetensors":
        return _load_safetensors(path)
    if path.suffix.lower() in PICKLE_SUFFIXES or _looks_like_pickle(head):
        return _load_pickle(path, allow_pickle)
    raise InputError(f"{path}: unrecognised weights format (expected a .safetensors file)")


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
