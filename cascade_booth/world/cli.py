"""``cascade-booth world``: the world's vocabulary, datasets, held-out subject photo sets and models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cascade_booth.clikit import friendly
from cascade_booth.errors import InputError
from cascade_booth.world.vocab import CLASSES

SUBJECT_SIZE = 256  # photos at twice stage two's 128 px: downsampled like real photos


def _out_folder(out: Path) -> Path:
    """A new or empty folder: never mix a dataset or photo set into files that are already there."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not an empty folder; pick a new --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{out}: cannot create the folder ({err.strerror})") from None
    return out


def _write_json(path: Path, data) -> None:
    from cascade_booth.runfolder import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


@click.group("world")
def world() -> None:
    """The procedural world: DreamBench-like objects in DreamBench-like contexts, and its models."""


@world.command("vocab")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (classes, colours, patterns, contexts, template).")
@friendly
def vocab_cmd(as_json: bool) -> None:
    """The words of the world and the caption template that prompts follow."""
    from cascade_booth.world.vocab import vocab

    data = vocab()
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    click.echo(f"template: {data['template']}")
    for key in ("classes", "colours"):
        click.echo(f"{key}: {', '.join(data[key])}")
    for key in ("patterns", "contexts"):
        click.echo(f"{key}: " + ", ".join(f"{k} ({v or 'no phrase'})" for k, v in data[key].items()))
    click.echo(f"sizes: stage one {data['sizes']['base']} px, stage two {data['sizes']['sr']} px")


@world.command("dataset")
@click.option("--count", type=click.IntRange(min=1), required=True, help="How many images.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--size", type=click.IntRange(min=8, max=1024), default=32, show_default=True, help="Image size (px).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="New or empty folder.")
@friendly
def dataset_cmd(count: int, seed: int, size: int, out: Path) -> None:
    """PNGs of the pretraining distribution and OUT/labels.jsonl (file, caption, class, colour, ...)."""
    from tqdm.auto import tqdm

    from cascade_booth.world.render import draw_scene
    from cascade_booth.world.sampling import dataset_example

    out = _out_folder(out)
    width = len(str(count - 1))
    with open(out / "labels.jsonl", "w") as labels:
        for i in tqdm(range(count), desc="world images", unit="img", file=sys.stderr):
            ex = dataset_example(seed, i)
            name = f"{i:0{width}d}.png"
            draw_scene(ex.scene, size).save(out / name)
            labels.write(json.dumps({"file": name, **ex.labels()}) + "\n")
    click.echo(f"wrote {count} images and labels.jsonl to {out}")


@world.command("subject")
@click.option("--class", "cls", type=click.Choice(CLASSES), required=True, help="The subject's class noun.")
@click.option("--seed", type=click.IntRange(min=0), required=True, help="Which held-out design of the class.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="New or empty folder.")
@click.option("--count", type=click.IntRange(min=3, max=8), default=5, show_default=True, help="How many photos.")
@friendly
def subject_cmd(cls: str, seed: int, out: Path, count: int) -> None:
    """A DreamBench-like photo set of ONE design the pretraining never drew, with OUT/subject.json."""
    click.echo(f"wrote {write_subject_photos(_out_folder(out), cls, seed, count)}")


def write_subject_photos(out: Path, cls: str, seed: int, count: int) -> str:
    """``count`` photos of held-out design ``seed`` of ``cls`` and ``subject.json`` in ``out``; says what they show."""
    from cascade_booth.world.render import draw_scene
    from cascade_booth.world.sampling import subject_examples

    examples = subject_examples(cls, seed, count)
    for i, ex in enumerate(examples):
        draw_scene(ex.scene, SUBJECT_SIZE).save(out / f"{i:02d}.png")
    d = examples[0].design
    _write_json(out / "subject.json", {**d.to_json(), "seed": seed, "size": SUBJECT_SIZE,
                                       "photos": [ex.scene.to_json() for ex in examples]})
    return f"{count} photos of the {d.colour} {cls} ({d.pattern}, design {d.id}) to {out}"


@world.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly
def models_cmd(as_json: bool) -> None:
    """Where the shipped world models are (open them with plain diffusers / transformers)."""
    from cascade_booth.world.cascade import SHIPPED

    names = ("base", "sr", "dino", "clip")
    data = {name: str(SHIPPED / name) if (SHIPPED / name).is_dir() else None for name in names}
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    for name, path in data.items():
        click.echo(f"{name}: {path or 'not shipped yet (tools/pretrain_world.py)'}")


@world.command("score")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="A world run folder (train-base --config world).")
@click.option("--subject", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="The `world subject` folder the run was trained on (its subject.json).")
@click.option("--out", type=click.Path(path_type=Path), help="Where the renders go. [default: RUN/score]")
@click.option("--num-images", type=click.IntRange(min=1, max=64), default=4, show_default=True,
              help="Renders per prompt.")
@click.option("--sr/--no-sr", default=True, show_default=True, help="Read back the 128 px cascade or stage one.")
@click.option("--sr-strength", type=click.FloatRange(0, 1, min_open=True),
              help="Stage two's img2img strength (default: the run's render.sr_strength).")
@click.option("--guidance", type=click.FloatRange(min=0),
              help="Stage one's guidance, for the run and the pretrained cascade (default: the run's render.guidance).")
@click.option("--named", is_flag=True,
              help="Also render the pretrained cascade told the subject's colour and pattern in words: the "
                   "reference for the [V] rates.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly
def score_cmd(run_dir: Path, subject: Path, out: Path | None, num_images: int, sr: bool, sr_strength: float | None,
              guidance: float | None, named: bool, as_json: bool) -> None:
    """Read back a world run: the subject's colour / pattern in "a [V] <class> <context>" renders (every
    non-plain context), the context obeyed, and the class prompts' drift against the pretrained cascade."""
    from cascade_booth.world.readback import score_run, summary_lines

    if not (subject / "subject.json").is_file():
        raise InputError(f"--subject {subject}: no subject.json (make the photos with `cascade-booth world subject`)")
    figures = score_run(run_dir, subject, out or run_dir / "score", sr=sr, num_images=num_images,
                        sr_strength=sr_strength, guidance=guidance, named=named).figures
    if as_json:
        click.echo(json.dumps(figures, indent=1))
        return
    click.echo("\n".join(summary_lines(figures)))
