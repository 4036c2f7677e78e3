"""Where the shipped presets are, and which of them run offline.

The presets (``configs/*.toml``) and the accelerate configs (``configs/accelerate/``) ship as the
top-level ``configs`` package (``pyproject.toml``), so a wheel carries them as well as the source tree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cascade_booth.errors import InputError
from cascade_booth.paths import path_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Installed beside ``cascade_booth`` (the source tree and a wheel have the same layout), so found by path
# rather than ``importlib.resources.files("configs")``: under
# ``python -m`` / ``accelerate launch -m`` the working folder is first on sys.path, where a user's own
# ``configs`` package would shadow ours.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def offline_presets() -> list[str]:
    """Presets whose models need no hub download (``tiny``, ``world``): what to suggest when offline."""
    found = []
    for name in preset_names():
        try:
            models = tomllib.loads((CONFIG_DIR / f"{name}.toml").read_text(encoding="utf-8")).get("model", {})
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        specs = [models.get(key) for key in ("base", "sr")]  # a missing key is ModelConfig's default: a hub id
        if all(isinstance(spec, str) and spec.count("/") != 1 for spec in specs):  # hub ids are owner/name
            found.append(name)
    return found


def resolve_config_path(name_or_path: str) -> Path:
    """A preset name (``tiny``, ``if-xl``) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = CONFIG_DIR / f"{name_or_path}.toml"
    problem = path_problem(path, "file")
    if problem == "not found":
        raise InputError(f"config '{name_or_path}' not found (presets: {', '.join(preset_names())})")
    if problem:
        raise InputError(f"config {path}: {problem}")
    return path
