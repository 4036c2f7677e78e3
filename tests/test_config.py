from pathlib import Path

import pytest

from cascade_booth.config import CONFIG_DIR, Config, apply_overrides, load_config
from cascade_booth.errors import InputError

SHIPPED = sorted(CONFIG_DIR.glob("*.toml"))


def test_presets_exist():
    assert {p.stem for p in SHIPPED} >= {"tiny", "if-xl", "if-m"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_validates(path: Path):
    cfg = load_config(str(path))
    assert isinstance(cfg, Config)
    assert cfg.base.steps >= 1 and cfg.sr.steps >= 1
    assert load_config(path.stem).to_dict() == cfg.to_dict()  # by name and by path alike


def test_if_presets_use_the_papers_recipe():
    xl = load_config("if-xl")
    assert xl.model.base == "DeepFloyd/IF-I-XL-v1.0" and xl.model.sr == "DeepFloyd/IF-II-L-v1.0"
    assert xl.prior.enabled and xl.prior.weight == 1.0 and xl.base.steps == 1000
    assert load_config("if-m").model.base == "DeepFloyd/IF-I-M-v1.0"


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[base]\nstpes = 3\n")
    with pytest.raises(InputError, match=r"unknown key 'stpes'.*did you mean 'steps'"):
        load_config(str(bad))


def test_unknown_table_and_wrong_type(tmp_path: Path):
    (tmp_path / "a.toml").write_text("[bse]\nsteps = 3\n")
    with pytest.raises(InputError, match="unknown key 'bse'"):
        load_config(str(tmp_path / "a.toml"))
    (tmp_path / "b.toml").write_text("[base]\nsteps = 'many'\n")
    with pytest.raises(InputError, match="'steps': expected int"):
        load_config(str(tmp_path / "b.toml"))


def test_range_checks_and_missing_preset(tmp_path: Path):
    (tmp_path / "c.toml").write_text("[sr]\nnoise_level = 1000\n")
    with pytest.raises(InputError, match="noise_level"):
        load_config(str(tmp_path / "c.toml"))
    with pytest.raises(InputError, match="not found.*presets: .*tiny"):
        load_config("no-such-preset")


def test_cli_overrides_win_over_file_values():
    cfg = load_config("tiny")
    apply_overrides(cfg, "base", steps=9, lr=None)
    assert cfg.base.steps == 9 and cfg.base.lr == load_config("tiny").base.lr
    with pytest.raises(InputError, match="--lora-rank must be >= 1"):  # named by the flag that set it
        apply_overrides(cfg, "base", lora_rank=0)


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_configs_load_and_point_at_shipped_files(path: Path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 2 and cfg.num_machines == 1
    ds_file = (cfg.deepspeed_config or {}).get("deepspeed_config_file")
    if ds_file is not None:  # relative to the repository root, where the README runs it from
        assert (CONFIG_DIR.parent / ds_file).is_file()


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "accelerate").glob("*.json")), ids=lambda p: p.name)
def test_shipped_deepspeed_configs_are_zero2_and_follow_our_flags(path: Path):
    import json

    ds = json.loads(path.read_text())
    assert ds["zero_optimization"]["stage"] == 2  # ZeRO-3 would shard the weights our saving reads whole
    assert ds["gradient_accumulation_steps"] == 1  # the trainer refuses accumulation under DeepSpeed
    assert ds["bf16"]["enabled"] == "auto"  # follows --mixed-precision
