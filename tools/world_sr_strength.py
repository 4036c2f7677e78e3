"""Stage two's img2img strength on the world (``render.sr_strength``): does the SR keep what stage one drew?

    python tools/world_sr_strength.py --tables build/world-tables --subject clock-7 --strengths 0,1,0.5,0.3
    python tools/world_sr_strength.py ... --sr-lora build/world-tables/runs/clock-7/prior/sr   # the fine-tuned SR

Input: the 32 px "a [V] <class> <context>" renders of stage one that ``tools/world_tables.py`` made
(``TABLES/renders/SUBJECT/stage1``; every other image, 12 at most). Each goes through the world SR with
diffusers' ``IFImg2ImgSuperResolutionPipeline`` (25 steps, guidance 4, noise level 50; the prompt without
[V] for the pretrained SR, the filled prompt for ``--sr-lora``, as ``cascade-booth render`` does) at each
strength (0: the bilinear upsample alone), and the outputs are read back like ``world score``: world DINO
to the subject's photos, the subject's colour (at 32 px) and pattern (at 128 px).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image
from world_sr_fidelity import sr_pipeline, upsample_all  # a sibling: ``python tools/...`` puts tools/ first on sys.path


def main() -> None:
    from cascade_booth.images import to_tensor
    from cascade_booth.world.readback import Subject, clip_text, dino_to_subject, read_images

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tables", type=Path, required=True)
    p.add_argument("--subject", required=True, help="e.g. clock-7")
    p.add_argument("--strengths", default="0,1,0.5,0.3")
    p.add_argument("--sr-lora", type=Path)
    p.add_argument("--out", type=Path, default=Path("build/world-sr-strength"))
    a = p.parse_args()
    torch.set_num_threads(1)
    photos = a.tables / "subjects" / a.subject
    folder = a.tables / "renders" / a.subject / "stage1" / "personalized"
    sidecars = [(q, json.loads(q.with_suffix(".json").read_text())) for q in sorted(folder.glob("p*.png"))]
    chosen = [(q, m) for q, m in sidecars if m.get("kind") == "instance"][::2][:12]
    pngs = [q for q, _ in chosen]
    prompts = [m["prompt"] if a.sr_lora else clip_text(m) for _, m in chosen]  # the LoRA learnt the identifier
    low = torch.stack([to_tensor(Image.open(q).convert("RGB"), 32) for q in pngs])
    sr = sr_pipeline(a.sr_lora)
    subject = Subject.load(photos)

    def figures(files: list[Path]) -> str:
        reads = read_images(files)
        dino = dino_to_subject({"x": files}, photos)["x"]
        colour = sum(r["colour"] == subject.colour for r in reads) / len(reads)
        pattern = sum(r["pattern"] == subject.pattern for r in reads) / len(reads)
        return f"world DINO {dino:+.3f}  colour {colour:.0%}  pattern {pattern:.0%}"

    print(f"{a.subject} ({subject.colour}, {subject.pattern}), {len(pngs)} images; 32 px input: {figures(pngs)}")
    for strength in (float(x) for x in a.strengths.split(",")):
        out = a.out / f"{a.subject}{'-lora' if a.sr_lora else ''}-{strength:g}"
        files = upsample_all(sr if strength > 0 else None, low, prompts, strength, out)
        print(f"  strength {strength:g}: {figures(files)}", flush=True)


if __name__ == "__main__":
    main()
