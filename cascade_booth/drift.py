"""Which setting changes refuse a resume: the one place that decides it, for both stages and for sweeps.

A run (``run.json``) or a sweep point (``point.json``) records the settings its weights were trained
with. Resuming with other *learning* settings would continue training a different model, so it is
refused (``--allow-drift`` overrides) with a list of what changed. *Operational* settings (how often
to checkpoint or validate) change nothing learned and are free to change; ``steps`` may grow.
A setting added to the package after a run was recorded counts as its default, which is how the run
was trained: updating cascade-booth must not turn a resume into drift.
"""

from __future__ import annotations

from typing import Any

from cascade_booth.config import Config
from cascade_booth.errors import RunError

# Settings that change how a run is operated, not what it learns: free to change on resume.
OPERATIONAL = frozenset({"checkpoint_every", "keep_checkpoints", "validation_every", "max_bad_steps"})
# What a run's weights depend on besides its stage's config table (top-level keys of run.json).
RUN_KEYS = ("seed", "identifier", "class_noun", "subject_files", "models")


def diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key.sub: old -> new`` for every leaf that differs (nested dicts are compared key by key)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(set(old) | set(new))
                for line in diff(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def with_new_defaults(old: Any, new: Any, defaults: Any) -> Any:
    """``old`` plus the keys only ``new`` has (config fields added to the package since) at their defaults."""
    if not (isinstance(old, dict) and isinstance(new, dict) and isinstance(defaults, dict)):
        return old
    out = dict(old)
    for key in new:
        if key in out:
            out[key] = with_new_defaults(out[key], new[key], defaults.get(key))
        elif key in defaults and not isinstance(defaults[key], dict):
            out[key] = defaults[key]
    return out


def learning_settings(meta: dict[str, Any], stage: str) -> dict[str, Any]:
    """What ``stage``'s weights depend on, from a run.json-shaped dict (``stage_settings`` for stage two)."""
    config, defaults = meta.get("config", {}), Config().to_dict()
    recorded = {**defaults[stage], **(config.get(stage) or {})}
    # steps may grow on resume (check_resume); a full fine-tune has no LoRA rank or targets
    unused = OPERATIONAL | {"steps"} | ({"lora_rank", "lora_text"} if recorded.get("full") else set())
    out = {k: meta.get(k) for k in RUN_KEYS} | {"config": {k: v for k, v in recorded.items() if k not in unused}}
    if stage == "base":  # the class images are part of stage one's training data, when the prior is on
        prior = {**defaults["prior"], **(config.get("prior") or {})}
        out["prior"] = prior if prior["enabled"] else {"enabled": False}
        identifier = {**defaults["identifier"], **(config.get("identifier") or {})}
        out["identifier_offset_lr"] = identifier["offset_lr"]  # what [V]'s learned offset trains at (0: none)
    if stage == "sr" and recorded.get("class_images"):  # stage two's class prior trains at [prior] weight
        out["prior_weight"] = {**defaults["prior"], **(config.get("prior") or {})}["weight"]
    return out


def stage_settings(record: dict[str, Any], stage: str) -> dict[str, Any]:
    """A stage record of run.json (``stages.sr``: seed, model, photos, its config table and prior weight) in
    run.json's shape."""
    config = {stage: record.get("config")} | ({"prior": {"weight": record["prior_weight"]}}
                                              if "prior_weight" in record else {})
    return {"seed": record.get("seed"), "models": {stage: record.get("model")},
            "subject_files": record.get("subject_files"), "config": config}


def check_resume(meta: dict[str, Any], fresh: dict[str, Any], stage: str, allow: bool, trained: int = 0) -> None:
    """Refuse to resume with a different seed, training config, prior, identifier or subject photos.

    ``steps`` may be raised: the learning-rate schedule (warmup, then constant) does not depend on it,
    so a run resumed to more steps equals one trained that long from the start. It may not fall below
    ``trained``, the newest checkpoint's step: no flag can take those steps back.
    """
    steps = {**Config().to_dict()[stage], **((fresh.get("config") or {}).get(stage) or {})}["steps"]
    if steps < trained:
        raise RunError(f"--resume --steps {steps}: this run is already trained to step {trained}; "
                       f"pass --steps {trained} or more")
    lines = diff(learning_settings(meta, stage), learning_settings(fresh, stage))
    if lines and not allow:
        raise RunError(
            "--resume with settings that differ from the run's:\n" + "\n".join(f"  {line}" for line in lines)
            + "\nResume with the original settings, or pass --allow-drift to continue anyway."
        )


def subject_drift(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    """The subject photos (file name -> sha256) removed, added or changed since they were recorded."""
    lines = [f"  removed: {n}" for n in sorted(set(recorded) - set(now))]
    lines += [f"  added: {n}" for n in sorted(set(now) - set(recorded))]
    lines += [f"  changed: {n}" for n in sorted(set(now) & set(recorded)) if now[n] != recorded[n]]
    return lines


def sweep_learning(config: dict[str, Any], sr: bool) -> dict[str, Any]:
    """A sweep point's config (``Config.to_dict()``) less what its weights do not depend on."""
    data = dict(config)
    for section in ("base", "sr"):
        data[section] = {k: v for k, v in data[section].items() if k not in OPERATIONAL}
    data.pop("render")
    if not sr:
        data.pop("sr")
    return data


def point_drift(recorded: dict[str, Any], train: dict[str, Any]) -> list[str]:
    """What changed between a sweep point's recorded training settings and the spec's (empty: it may continue)."""
    recorded = dict(recorded)
    recorded["config"] = with_new_defaults(recorded.get("config"), train["config"], Config().to_dict())
    return [] if recorded == train else diff(recorded, train)
