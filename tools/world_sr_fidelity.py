"""Stage two alone on the subject: does a fine-tuned SR restore *that* subject's fine pattern in new contexts?

    python tools/world_sr_fidelity.py --subject build/bench-world/subject --identifier dwf \\
        --sr cascade-booth=build/bench-world/cascade-booth/run/sr \\
        --sr diffusers=build/bench-world/diffusers-equal/sr --out build/world-sr-fidelity

The paper's Imagen variant fine-tunes the super-resolution model on the subject so that its fine details
survive (Ruiz et al. 2022, section 4.4 / appendix). On the world the subject's design can be drawn in any
context, so stage two can be judged apart from stage one: the subject drawn at 32 px in every context
(poses the photo set never showed) is the input, the same scene drawn at 128 px is the truth. Each SR
(pretrained, and each ``--sr NAME=DIR`` stage-two folder: LoRA or full fine-tune) upsamples every input with
diffusers' ``IFImg2ImgSuperResolutionPipeline`` (the world preset's 25 steps, guidance 4, noise level 50) at each
``--strengths`` (0: the bilinear upsample alone). A fine-tuned SR gets "a <identifier> <class> <context>",
the pretrained one the prompt without the identifier. Read back: the subject's pattern (at 128 px) and
colour, world DINO to the subject's photos, and the mean squared error to the 128 px truth.
Writes OUT/results.md, OUT/results.json and OUT/sr-fidelity.png (rows: truth, bilinear, then each SR).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

MODELS = Path(__file__).resolve().parents[1] / "cascade_booth" / "world" / "models"
LORA_FILE = "pytorch_lora_weights.safetensors"


def world_sr(unet: Path | None = None, lora: Path | None = None):
    """The world SR as diffusers' img2img SR pipeline (the shipped folder is an IFSuperResolutionPipeline; its
    img2img sibling takes the same components), with a fully fine-tuned ``unet`` folder or a ``lora`` folder."""
    from diffusers import IFImg2ImgSuperResolutionPipeline, IFSuperResolutionPipeline, UNet2DConditionModel

    parts = IFSuperResolutionPipeline.from_pretrained(MODELS / "sr").components
    if unet is not None:
        parts["unet"] = UNet2DConditionModel.from_pretrained(unet)
    sr = IFImg2ImgSuperResolutionPipeline(**parts)
    if lora is not None:
        sr.load_lora_weights(str(lora), weight_name=LORA_FILE)
    sr.set_progress_bar_config(disable=True)
    return sr


def sr_pipeline(stage: Path | None):
    """The world SR with a cascade-booth stage-two folder's weights if given: its fully fine-tuned ``unet/`` or
    its LoRA file."""
    if stage is None:
        return world_sr()
    return world_sr(unet=stage / "unet") if (stage / "unet").is_dir() else world_sr(lora=stage)


def _is_stage(folder: Path) -> bool:
    return (folder / LORA_FILE).is_file() or (folder / "unet" / "config.json").is_file()


def upsample_all(sr, low: torch.Tensor, prompts: list[str], strength: float, out: Path) -> list[Path]:
    """Each 32 px input through pipeline ``sr`` at one strength (``sr`` None: bilinear), as PNGs in ``out``;
    seed i for input i."""
    from cascade_booth.sampling import to_pil

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, prompt in enumerate(prompts):
        up = F.interpolate(low[i:i + 1], (128, 128), mode="bilinear", align_corners=True)
        if sr is None:
            image = to_pil(up)[0]
        else:
            image = sr(image=low[i:i + 1], original_image=up, strength=strength, prompt=prompt, num_inference_steps=25,
                       guidance_scale=4.0, noise_level=50, generator=torch.Generator().manual_seed(i)).images[0]
        files.append(out / f"{i:02d}.png")
        image.save(files[-1])
    return files


def figures(files: list[Path], truth: torch.Tensor, subject_dir: Path, subject) -> dict:
    from PIL import Image

    from cascade_booth.images import to_tensor
    from cascade_booth.world.readback import dino_to_subject, read_images

    reads = read_images(files)
    images = torch.stack([to_tensor(Image.open(f).convert("RGB"), 128) for f in files])
    return {"images": len(files),
            "pattern": sum(r["pattern"] == subject.pattern for r in reads) / len(reads),
            "colour": sum(r["colour"] == subject.colour for r in reads) / len(reads),
            "dino": dino_to_subject({"x": files}, subject_dir)["x"],
            "mse": float(((images - truth) ** 2).mean())}


def main(argv: list[str] | None = None) -> None:
    from cascade_booth.images import to_tensor
    from cascade_booth.world.readback import Subject
    from cascade_booth.world.render import draw_scene
    from cascade_booth.world.sampling import subject_in_contexts
    from cascade_booth.world.vocab import CONTEXTS, caption

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subject", type=Path, required=True, help="a `world subject` folder")
    p.add_argument("--identifier", required=True, help="the [V] the fine-tuned SRs were trained with")
    p.add_argument("--sr", action="append", default=[], help="NAME=DIR, a stage-two folder (repeatable)")
    p.add_argument("--strengths", default="1,0.3")
    p.add_argument("--per-context", type=int, default=2)
    p.add_argument("--contexts", help="comma-separated context labels (default: all, plain included)")
    p.add_argument("--out", type=Path, default=Path("build/world-sr-fidelity"))
    a = p.parse_args(argv)
    contexts = a.contexts.split(",") if a.contexts else list(CONTEXTS)
    if unknown := [c for c in contexts if c not in CONTEXTS]:
        p.error(f"unknown context(s) {unknown}; the world has {list(CONTEXTS)}")
    if bad := [s for s in a.sr if "=" not in s or not _is_stage(Path(s.split("=", 1)[1]))]:
        p.error(f"--sr {bad[0]!r}: give NAME=DIR, DIR holding a stage-two {LORA_FILE} or unet/ folder")
    if not (a.subject / "subject.json").is_file():
        p.error(f"{a.subject} has no subject.json: make one with `cascade-booth world subject`")
    torch.set_num_threads(1)
    meta = json.loads((a.subject / "subject.json").read_text())
    subject = Subject.load(a.subject)
    examples = subject_in_contexts(meta["class"], meta["seed"], contexts, a.per_context)
    low = torch.stack([to_tensor(draw_scene(e.scene, 32), 32) for e in examples])
    truth_images = [draw_scene(e.scene, 128) for e in examples]
    truth = torch.stack([to_tensor(im, 128) for im in truth_images])
    truth_dir = a.out / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(truth_images):
        im.save(truth_dir / f"{i:02d}.png")
    srs = [("pretrained", None)] + [(s.split("=", 1)[0], Path(s.split("=", 1)[1])) for s in a.sr]
    pipelines = {name: sr_pipeline(lora) for name, lora in srs}  # loaded once, used at every strength
    rows = {"truth": figures(sorted(truth_dir.glob("*.png")), truth, a.subject, subject)}
    pictures = [sorted(truth_dir.glob("*.png"))]
    for strength in (float(x) for x in a.strengths.split(",")):
        for name, lora in srs if strength > 0 else [("bilinear", None)]:
            ident = f"{a.identifier} " if lora is not None else ""
            prompts = [caption(f"{ident}{meta['class']}", None, None, e.scene.context) for e in examples]
            sr = pipelines[name] if strength > 0 else None
            files = upsample_all(sr, low, prompts, strength, a.out / f"{name}-{strength:g}")
            key = name if strength == 0 else f"{name}, strength {strength:g}"
            rows[key] = figures(files, truth, a.subject, subject)
            pictures.append(files)
            print(key, json.dumps(rows[key]), flush=True)
    command = "python tools/world_sr_fidelity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(a.out, {"command": command, "inputs": len(examples), "per_context": a.per_context,
                         "subject": {"class": subject.cls, "colour": subject.colour, "pattern": subject.pattern},
                         "rows": rows}, pictures)


def write_report(out: Path, results: dict, pictures: list[list[Path]]) -> None:
    """OUT/results.json, OUT/results.md (the table) and OUT/sr-fidelity.png (one row of images per table row)."""
    from PIL import Image

    from cascade_booth.pngmeta import grid

    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    s = results["subject"]
    lines = [f"Made by `{results['command']}`.", "",
             f"Subject: {s['colour']} {s['class']} with {s['pattern']}; {results['inputs']} inputs (every context "
             f"x {results['per_context']} poses, drawn at 32 px; truth at 128 px).", "",
             "| stage two | subject's pattern | subject's colour | world DINO to the photos | MSE to the truth |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {r['pattern']:.0%} | {r['colour']:.0%} | {r['dino']:.3f} | {r['mse']:.4f} |"
              for k, r in results["rows"].items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    grid([[Image.open(f).convert("RGB") for f in files] for files in pictures], pad=0).save(out / "sr-fidelity.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
