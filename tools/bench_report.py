"""Markdown tables for ``tools/bench.py`` results.

    python tools/bench_report.py RESULTS.json [MORE.json ...]

reprints them; several files (e.g. from split GPU calls, ``--sections stage1`` then ``--sections stage2
gen``) are merged section by section, later files winning, with the last file's settings and machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DIFFUSERS_PREFIX = "diffusers"


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b in (None, 0) else f"{a / b:.2f}x"


def _peak(row: dict | None) -> float | None:
    """The memory that limits the tool: GPU reserved on CUDA, else host max RSS."""
    if row is None:
        return None
    return row["peak_gpu_reserved_mib"] if row.get("peak_gpu_reserved_mib") is not None else row["peak_rss_mib"]


def _stage_cells(row: dict | None) -> list[float | None]:
    if row is None:
        return [None] * 4
    return [row["step_wall_s"] * 1e3, row["step_cpu_s"] * 1e3, row["startup_wall_s"], _peak(row)]


def _by_tool(res: dict, section: str) -> dict[str, dict]:
    return {r["tool"]: r for r in res["sections"].get(section, {}).get("rows", [])}


def _gen_for(res: dict, tool: str) -> dict | None:
    """The equal-steps generation row of ``tool`` (cascade-booth rows share cascade-booth's)."""
    for r in res["sections"].get("gen", {}).get("rows", []):
        if tool.startswith(DIFFUSERS_PREFIX) and r["tool"].startswith(DIFFUSERS_PREFIX):
            return r
        if tool.startswith("cascade-booth") and r["tool"].startswith("cascade-booth (="):
            return r
    return None


def main_table(res: dict) -> str:
    s1, s2 = _by_tool(res, "stage1"), _by_tool(res, "stage2")
    names = list(dict.fromkeys([*s1, *s2]))
    if not names:
        return ""
    mem = "GPU MiB" if res.get("settings", {}).get("device") == "cuda" else "RSS MiB"
    head = ["tool", "S1 ms/step", "S1 CPU ms/step", "S1 start-up s", f"S1 peak {mem}", "S2 ms/step",
            "S2 CPU ms/step", "S2 start-up s", f"S2 peak {mem}", "class img/s (equal steps)"]
    cells = {n: _stage_cells(s1.get(n)) + _stage_cells(s2.get(n))
             + [(_gen_for(res, n) or {}).get("images_per_s")] for n in names}
    digits = [0, 0, 1, 0, 0, 0, 1, 0, 3]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(_num(v, d) for v, d in zip(cells[n], digits, strict=True)) + " |")
    ref = next((n for n in names if n.startswith(DIFFUSERS_PREFIX)), None)
    for n in names:
        if ref and n != ref:
            ratios = [_ratio(a, b) for a, b in zip(cells[n], cells[ref], strict=True)]
            lines.append(f"| ratio {n} / diffusers | " + " | ".join(ratios) + " |")
    return "\n".join(lines + ["", NOTES])


NOTES = """S1 = stage one (64 px, 1 instance + 1 class sample per step), S2 = stage two (SR, 1 sample per step).
ms/step = (t(N2) - t(N1)) / (N2 - N1), start-up = t(N1) - N1 * step. diffusers trains epsilon only;
cascade-booth's variance=learned adds IF's VLB term. In S2 the UNet input differs with equal shapes:
cascade-booth [noisy target, upsampled noise-augmented 64 px photo] with the augmentation level as class
label, diffusers [noisy target, the same noisy target] with the diffusion timestep as class label."""


def gen_table(res: dict) -> str:
    rows = res["sections"].get("gen", {}).get("rows", [])
    if not rows:
        return ""
    mem = "GPU MiB" if res.get("settings", {}).get("device") == "cuda" else "RSS MiB"
    lines = [f"| class-image generation | sampler | steps | images (batch) | gen s | gen CPU s | images/s "
             f"| sample-evals/s | peak {mem} |", "| --- | --- |" + " ---: |" * 7]
    for r in rows:
        lines.append(f"| {r['tool']} | {r['sampler']} | {r['steps']} | {r['images']} ({r['batch']}) "
                     f"| {r['gen_wall_s']:.1f} | {r['gen_cpu_s']:.1f} | {r['images_per_s']:.3f} "
                     f"| {r['sample_evals_per_s']:.1f} | {_num(_peak(r))} |")
    ref = next((r for r in rows if r["tool"].startswith(DIFFUSERS_PREFIX)), None)
    if ref:
        lines.append("")
        for r in rows:
            if r is not ref:
                lines.append(f"- {r['tool']}: images/s {_ratio(r['images_per_s'], ref['images_per_s'])} diffusers', "
                             f"sample-evals/s {_ratio(r['sample_evals_per_s'], ref['sample_evals_per_s'])}")
    return "\n".join(lines)


def context(res: dict) -> str:
    f, st = res.get("fixtures", {}), res.get("settings", {})
    secs = res["sections"]
    steps = {k: v.get("steps") for k, v in secs.items() if "steps" in v}
    lines = [
        f"settings: device {st.get('device')}, precision {st.get('precision')}, threads {st.get('threads')}, "
        f"stage one {f.get('unet')} ({f.get('unet_params', 0) / 1e6:.1f}M) at 64 px, "
        f"stage two {f.get('sr_unet')} ({f.get('sr_unet_params', 0) / 1e6:.1f}M) at {st.get('sr_resolution')} px, "
        f"step counts {steps}, repeats {[v.get('repeats') for v in secs.values()]}"
        + (" -- SMOKE RUN: tiny settings, not a measurement" if st.get("smoke") else ""),
        f"machine: {res.get('machine')}",
        f"versions: {res.get('versions')}",
    ]
    loads = [r[k] for s in secs.values() for row in s.get("rows", []) for runs in _all_runs(row)
             for r in runs for k in ("load1_before", "load1_after")]
    if loads:
        lines.append(f"1-minute load average during the timed runs: {min(loads):.1f}-{max(loads):.1f}")
    return "\n".join(lines)


def _all_runs(row: dict) -> list[list[dict]]:
    return list(row.get("runs", {}).values())


def tables(res: dict) -> str:
    parts = [main_table(res), gen_table(res), context(res)]
    return "\n\n".join(p for p in parts if p)


def merge(results: list[dict]) -> dict:
    out: dict = {"sections": {}}
    for res in results:
        out.update({k: v for k, v in res.items() if k != "sections"})
        out["sections"].update(res.get("sections", {}))
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(tables(merge([json.loads(Path(f).read_text()) for f in sys.argv[1:]])))
