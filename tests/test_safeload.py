"""Tests for safe weight loading: header validation, pickle refusal, atomic saves."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch

from cascade_booth import safeload
from cascade_booth.errors import InputError
from cascade_booth.safeload import load_state_dict, save_state_dict


class _Payload:
    """Unpickling this calls ``open(marker, "w")``, creating the marker file: a code-execution probe."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _tensors() -> dict[str, torch.Tensor]:
    return {
        "unet.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "unet.bias": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "step": torch.tensor(7, dtype=torch.int64),
    }


def _write_raw(
    path: Path, header: bytes | dict[str, object], data: bytes = b"", length: int | None = None
) -> Path:
    """Write a hand-made safetensors file: u64 length prefix, header, data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _load_error(path: Path, allow_pickle: bool = False) -> str:
    with pytest.raises(InputError) as info:
        load_state_dict(path, allow_pickle=allow_pickle)
    message = str(info.value)
    assert str(path) in message
    return message


# --- round trip and atomic save -----------------------------------------------------------


def test_round_trip_with_metadata(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "lora.safetensors"
    original = _tensors()
    save_state_dict(original, path, metadata={"stage": "I", "rank": "4"})
    loaded = load_state_dict(path)
    assert loaded.keys() == original.keys()
    for name, tensor in original.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    header = safeload.validate_safetensors_header(path)
    assert header["__metadata__"] == {"stage": "I", "rank": "4"}
    assert [p.name for p in path.parent.iterdir()] == ["lora.safetensors"]  # no temp files left


def test_save_handles_non_contiguous_and_grad_tensors(tmp_path: Path) -> None:
    weight = torch.randn(4, 6, requires_grad=True)
    path = tmp_path / "w.safetensors"
    save_state_dict({"t": weight.t(), "w": weight}, path)
    loaded = load_state_dict(path)
    assert torch.equal(loaded["t"], weight.detach().t())


def test_save_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_state_dict({"a": torch.zeros(2)}, path)
    save_state_dict({"b": torch.ones(3)}, path)
    assert list(load_state_dict(path)) == ["b"]


def test_failed_save_keeps_old_file_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.safetensors"
    save_state_dict({"a": torch.zeros(2)}, path)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)  # the rename inside runfolder.atomic_path
    with pytest.raises(OSError, match="disk full"):
        save_state_dict({"b": torch.ones(2)}, path)
    monkeypatch.undo()
    assert list(load_state_dict(path)) == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_save_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_state_dict({"a": [1, 2]}, tmp_path / "x.safetensors")  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        save_state_dict({"a": torch.zeros(1)}, tmp_path / "x.safetensors", metadata={"k": 1})  # type: ignore[dict-item]
    assert not list(tmp_path.iterdir())


# --- corrupt safetensors --------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in _load_error(tmp_path / "absent.safetensors")


def test_file_shorter_than_prefix(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    assert "truncated or corrupt safetensors header" in _load_error(path)


def test_oversized_header_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "huge.safetensors", b"{}", length=safeload.MAX_HEADER_BYTES + 1)
    assert "header too large" in _load_error(path)
    path = _write_raw(tmp_path / "max.safetensors", b"{}", length=2**64 - 1)
    assert "header too large" in _load_error(path)


def test_header_longer_than_file(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "cut.safetensors", b'{"a": 1}', length=5000)
    assert "truncated or corrupt safetensors header" in _load_error(path)


def test_header_not_json(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "bad.safetensors", b"{not json!")
    assert "truncated or corrupt safetensors header" in _load_error(path)


def test_header_not_an_object(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "list.safetensors", b"[1, 2, 3]")
    assert "truncated or corrupt safetensors header" in _load_error(path)


def test_offsets_beyond_file(tmp_path: Path) -> None:
    header = {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}
    path = _write_raw(tmp_path / "offsets.safetensors", header, data=b"\x00" * 16)
    message = _load_error(path)
    assert "'w'" in message and "data_offsets" in message


def test_offsets_not_matching_shape(tmp_path: Path) -> None:
    header = {"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 16]}}
    path = _write_raw(tmp_path / "mismatch.safetensors", header, data=b"\x00" * 16)
    assert "'w'" in _load_error(path)


def test_truncated_real_file(tmp_path: Path) -> None:
    path = tmp_path / "real.safetensors"
    save_state_dict({"w": torch.zeros(256)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    assert "data_offsets" in _load_error(path)


def test_pickle_named_safetensors_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "renamed.safetensors"
    torch.save({"w": torch.zeros(2)}, path)
    assert "pickle" in _load_error(path)


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "weights.dat"
    path.write_bytes(b"hello, these are not weights")
    assert "unrecognised" in _load_error(path)


def test_safetensors_content_with_other_suffix_loads(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    save_state_dict({"w": torch.ones(3)}, path)
    assert torch.equal(load_state_dict(path)["w"], torch.ones(3))  # no pickle involved


# --- pickle refusal ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".bin", ".ckpt", ".pt", ".pth"])
def test_pickle_refused_by_default(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"weights{suffix}"
    torch.save({"w": torch.zeros(2)}, path)
    message = _load_error(path)
    assert "--allow-pickle" in message


def test_pickle_allowed_loads_plain_tensors(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    torch.save(_tensors(), path)
    loaded = load_state_dict(path, allow_pickle=True)
    assert all(torch.equal(loaded[k], v) for k, v in _tensors().items())


def test_pickle_allowed_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(_tensors(), path)
    path.write_bytes(path.read_bytes()[:200])
    assert "weights-only loader" in _load_error(path, allow_pickle=True)


def test_pickle_allowed_rejects_non_tensor_entries(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2), "epoch": 3}, path)
    assert "'epoch'" in _load_error(path, allow_pickle=True)


def _payload_files(tmp_path: Path) -> list[tuple[Path, Path]]:
    """A torch zip checkpoint and a raw pickle stream, each carrying a __reduce__ payload."""
    made = []
    for name, writer in (("zip.pt", "torch"), ("raw.bin", "pickle")):
        marker = tmp_path / f"PWNED-{name}"
        path = tmp_path / name
        state = {"evil": _Payload(marker), "w": torch.zeros(2)}
        if writer == "torch":
            torch.save(state, path)
        else:
            path.write_bytes(pickle.dumps(state, protocol=2))
        made.append((path, marker))
    return made


def test_payload_is_live_control(tmp_path: Path) -> None:
    """Control: an unrestricted unpickler really does run the payload, so the tests below mean something."""
    for path, marker in _payload_files(tmp_path):
        if path.suffix == ".pt":
            loaded = torch.load(path, weights_only=False)
        else:
            loaded = pickle.loads(path.read_bytes())
        loaded["evil"].close()
        assert marker.exists()


def test_payload_never_runs_when_refused(tmp_path: Path) -> None:
    for path, marker in _payload_files(tmp_path):
        assert "--allow-pickle" in _load_error(path)
        assert not marker.exists()


def test_payload_never_runs_with_allow_pickle(tmp_path: Path) -> None:
    for path, marker in _payload_files(tmp_path):
        assert "io.open" in _load_error(path, allow_pickle=True)  # refused at the payload itself
        assert not marker.exists()
