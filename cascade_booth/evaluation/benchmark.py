"""DreamBench, the paper's benchmark (Ruiz et al. 2022, section 4.1): 30 subjects x 25 prompts x 4 images.

A DreamBench checkout holds ``prompts_and_classes.txt`` and one folder of real photos per subject,
either directly in DIR (``DIR/dog/``) or under ``DIR/dataset/`` as in the google/dreambooth repository.
Class nouns and the object / live prompt lists come from ``prompts_and_classes.txt``; without it (or
where it lists none) the built-in copies in :mod:`cascade_booth.evaluation.prompts` are used.

Generated images come from ``RUNS/<subject>/`` (cascade-booth run folders, their ``renders/``) or
``GEN/<subject>/*.png`` (prompts in metadata). Subjects without generated images are reported as
missing, not failed; the combined report averages over the evaluated subjects, as the paper averages
over its 30.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cascade_booth.errors import InputError
from cascade_booth.evaluation.inputs import GeneratedImage, discover_generated, discover_run, list_subject_images
from cascade_booth.evaluation.prompts import (
    LIVE_PROMPTS,
    OBJECT_PROMPTS,
    SUBJECTS,
    is_live_class,
    parse_dreambench_listing,
    to_template,
)
from cascade_booth.evaluation.report import combine_reports
from cascade_booth.evaluation.runner import evaluate_subject
from cascade_booth.paths import path_problem

LISTING = "prompts_and_classes.txt"
SUBJECT_SETTINGS = ("subject", "subject_dir", "class_noun", "identifier", "live_subject", "n_generated",
                    "skipped_files", "run", "generated", "prompts")
"""Per-subject settings; the combined report keeps them under ``benchmark.subjects`` instead."""


@dataclass(frozen=True)
class DreamBench:
    """A DreamBench checkout: where the real photos are, each subject's class noun, the prompt lists."""

    root: Path
    classes: dict[str, str]
    object_prompts: tuple[str, ...] = OBJECT_PROMPTS
    live_prompts: tuple[str, ...] = LIVE_PROMPTS
    listing: Path | None = None

    def real_dir(self, subject: str) -> Path:
        return self.root / subject

    def templates(self, subject: str) -> tuple[list[str], str]:
        """The subject's 25 ``[V]`` templates and their source ("dreambench-live", ...)."""
        noun = self.classes[subject]
        live = is_live_class(noun)
        raw = self.live_prompts if live else self.object_prompts
        source = f"dreambench-{'live' if live else 'object'}"
        if raw != (LIVE_PROMPTS if live else OBJECT_PROMPTS):
            source += f" ({self.listing})"
        return [to_template(p, noun) for p in raw], source


def _root(path: Path) -> Path | None:
    for root in (path, path / "dataset"):
        if (root / LISTING).is_file() or any((root / name).is_dir() for name in SUBJECTS):
            return root
    return None


def load_dreambench(path: str | Path) -> DreamBench:
    """Read a DreamBench checkout; InputError naming DIR when it is missing or not DreamBench."""
    path = Path(path)
    if problem := path_problem(path, "folder"):
        raise InputError(f"--dreambench {path}: {problem}")
    root = _root(path)
    if root is None:
        raise InputError(f"--dreambench {path}: not a DreamBench checkout (expected {LISTING} and one folder "
                         f"of photos per subject, e.g. {path / 'dog'}/ or {path / 'dataset' / 'dog'}/)")
    listing = root / LISTING if (root / LISTING).is_file() else None
    parsed = parse_dreambench_listing(listing.read_text(encoding="utf-8")) if listing else {}
    bench = DreamBench(root=root, classes=parsed.get("subjects") or dict(SUBJECTS),
                       object_prompts=tuple(parsed.get("object") or OBJECT_PROMPTS),
                       live_prompts=tuple(parsed.get("live") or LIVE_PROMPTS), listing=listing)
    if not any(bench.real_dir(name).is_dir() for name in bench.classes):
        raise InputError(f"--dreambench {path}: none of its {len(bench.classes)} subjects has a folder of "
                         f"photos in {root}")
    return bench


def select_subjects(bench: DreamBench, spec: str | None) -> list[str]:
    """All subjects, or those of ``--subjects a,b,c`` (in the order given); unknown names are errors."""
    if spec is None or not spec.strip():
        return list(bench.classes)
    names = list(dict.fromkeys(name.strip() for name in spec.split(",") if name.strip()))
    unknown = [name for name in names if name not in bench.classes]
    if unknown or not names:
        raise InputError(f"--subjects {spec!r}: unknown DreamBench subject(s) {', '.join(unknown) or '(none given)'}"
                         f" (known: {', '.join(bench.classes)})")
    return names


@dataclass
class SubjectInput:
    """One subject's generated images and where they came from."""

    name: str
    images: list[GeneratedImage]
    skipped: list[Path] = field(default_factory=list)
    source: dict = field(default_factory=dict)


def _discover(name: str, runs: Path | None, generated: Path | None) -> SubjectInput | str:
    """The subject's images, or why there are none (a reason for the report's missing list)."""
    folder = (runs if runs is not None else generated) / name
    if not folder.is_dir():
        return f"no folder {folder}"
    try:
        if runs is not None:
            images, skipped = discover_run(folder)
            return SubjectInput(name, images, skipped, {"run": str(folder), "generated": str(folder / "renders")})
        images, skipped = discover_generated(folder)
        return SubjectInput(name, images, skipped, {"generated": str(folder)})
    except InputError as err:
        return str(err)


def discover_benchmark(bench: DreamBench, subjects: Sequence[str], runs: str | Path | None = None,
                       generated: str | Path | None = None) -> tuple[list[SubjectInput], dict[str, str]]:
    """Subjects with generated images (and real photos), and ``{subject: reason}`` for the others.

    Exactly one of ``runs`` (``RUNS/<subject>/`` run folders) and ``generated`` (``GEN/<subject>/``)
    is given. InputError when that folder is missing or no subject has images.
    """
    if (runs is None) == (generated is None):
        raise InputError("--dreambench needs exactly one of --runs RUNS_DIR or --generated GEN_DIR")
    option, top = ("--runs", Path(runs)) if runs is not None else ("--generated", Path(generated))
    if problem := path_problem(top, "folder"):
        raise InputError(f"{option} {top}: {problem}")
    found, missing = [], {}
    for name in subjects:
        try:
            list_subject_images(bench.real_dir(name))
        except InputError as err:
            missing[name] = f"no real photos ({err})"
            continue
        result = _discover(name, Path(runs) if runs is not None else None,
                           Path(generated) if generated is not None else None)
        if isinstance(result, str):
            missing[name] = result
        else:
            found.append(result)
    if not found:
        reasons = "; ".join(f"{name}: {why}" for name, why in list(missing.items())[:5])
        raise InputError(f"{option} {top}: no DreamBench subject has generated images "
                         f"(expected {top}/<subject>/, e.g. {top / subjects[0]}/). {reasons}")
    return found, missing


def evaluate_benchmark(bench: DreamBench, inputs: Sequence[SubjectInput], dino, clip, *,
                       prompts: str = "dreambench", identifier: str | None = None, batch_size: int = 16,
                       settings: dict | None = None,
                       on_subject: Callable[[str, dict], None] | None = None) -> list[dict]:
    """One report per subject (extractors loaded once by the caller); ``on_subject`` sees each as done."""
    reports = []
    for item in inputs:
        templates, source = bench.templates(item.name)
        if prompts.strip().lower() != "dreambench":
            templates, source = None, prompts  # a prompts file, resolved per subject by evaluate_subject
        extra = {**(settings or {}), **item.source, "dreambench": str(bench.root),
                 "skipped_files": [str(p) for p in item.skipped]}
        report = evaluate_subject(item.images, bench.real_dir(item.name), dino, clip,
                                  class_noun=bench.classes[item.name], prompts=source, identifier=identifier,
                                  batch_size=batch_size, subject_name=item.name, settings=extra,
                                  templates=templates)
        reports.append(report)
        if on_subject is not None:
            on_subject(item.name, report)
    return reports


def benchmark_report(bench: DreamBench, reports: Sequence[dict], selected: Sequence[str],
                     missing: dict[str, str], settings: dict | None = None) -> dict:
    """The combined report: per-subject rows, overall means over subjects, coverage of DreamBench."""
    combined = combine_reports(reports)
    shared = {k: v for k, v in combined["settings"].items() if k not in SUBJECT_SETTINGS}
    combined["settings"] = {**shared, "benchmark": "dreambench", "dreambench": str(bench.root),
                            "class_nouns_from": str(bench.listing or "built-in list"), **(settings or {})}
    keys = ("class_noun", "identifier", "prompts", "n_generated", "run", "generated")
    per_subject = {report["settings"]["subject"]: {
        key: report["settings"][key] for key in keys if report["settings"].get(key) is not None
    } | {"report": f"subjects/{report['settings']['subject']}/metrics.json"} for report in reports}
    combined["benchmark"] = {
        "name": "DreamBench", "dir": str(bench.root), "n_subjects": len(bench.classes),
        "selected": list(selected), "evaluated": list(per_subject), "missing": dict(missing),
        "subjects": per_subject,
    }
    return combined
