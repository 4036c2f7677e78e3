"""``mixed_precision = "auto"``: bf16 where the device does bf16 in hardware, fp32 elsewhere, decided once
(``devices.compute_precision``) and honoured by the trainer."""

from __future__ import annotations

import pytest
import torch
from helpers_reliability import config, env, same, train, weights  # noqa: F401  (env: a fixture)

from cascade_booth.devices import compute_precision, native_bf16


def _cpu_with(monkeypatch, **flags: bool) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, **flags})


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16", "bf16"])
def test_auto_is_bf16_on_a_cpu_with_bf16_units(monkeypatch, flag):
    _cpu_with(monkeypatch, **{flag: True})
    assert native_bf16("cpu")
    assert compute_precision("auto", "cpu") == "bf16"


def test_auto_is_fp32_on_a_cpu_without_them_and_explicit_settings_pass_through(monkeypatch):
    _cpu_with(monkeypatch, avx512_bf16=False)
    assert not native_bf16("cpu")
    assert compute_precision("auto", "cpu") == "no"
    assert [compute_precision(s, "cpu") for s in ("no", "bf16", "fp16")] == ["no", "bf16", "fp16"]


def test_the_trainer_trains_auto_in_the_precision_it_resolves_to(tmp_path, env, monkeypatch):  # noqa: F811
    def trained(name: str, precision: str) -> dict[str, torch.Tensor]:
        train(tmp_path / name, config(mixed_precision=precision))
        return weights(tmp_path / name)

    fp32, bf16 = trained("no", "no"), trained("bf16", "bf16")
    assert not same(fp32, bf16)  # the tiny run tells the two precisions apart
    _cpu_with(monkeypatch, avx512_bf16=True)
    assert same(trained("auto-bf16", "auto"), bf16)
    _cpu_with(monkeypatch)
    assert same(trained("auto-no", "auto"), fp32)
