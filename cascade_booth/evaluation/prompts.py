"""DreamBench prompts and subjects (Ruiz et al. 2022, section 4.1), and user prompt files.

DreamBench has 30 subjects (21 objects, 9 live subjects: the cats and dogs) and 25 prompts per
subject; objects and live subjects share 10 recontextualization and 5 property-modification prompts
and differ in 10 (objects: backgrounds and surfaces; live subjects: accessories and outfits).

The paper's lists are written ``'a {0} {1} in the jungle'.format(unique_token, class_token)``. Our
convention is a template with the class noun filled in and ``[V]`` for the identifier:
``"a [V] clock in the jungle"``. The class prompt (for prior preservation and PRES) is the template
with ``[V]`` removed: ``"a clock in the jungle"``.
"""

from __future__ import annotations

import re
from pathlib import Path

from cascade_booth.errors import InputError
from cascade_booth.identifier import PLACEHOLDER
from cascade_booth.paths import path_problem
from cascade_booth.promptfile import prompt_lines

V = PLACEHOLDER

_SHARED = (
    "a {0} {1} in the jungle",
    "a {0} {1} in the snow",
    "a {0} {1} on the beach",
    "a {0} {1} on a cobblestone street",
    "a {0} {1} on top of pink fabric",
    "a {0} {1} on top of a wooden floor",
    "a {0} {1} with a city in the background",
    "a {0} {1} with a mountain in the background",
    "a {0} {1} with a blue house in the background",
    "a {0} {1} on top of a purple rug in a forest",
)
_PROPERTIES = (
    "a red {0} {1}",
    "a purple {0} {1}",
    "a shiny {0} {1}",
    "a wet {0} {1}",
    "a cube shaped {0} {1}",
)

OBJECT_PROMPTS: tuple[str, ...] = _SHARED + (
    "a {0} {1} with a wheat field in the background",
    "a {0} {1} with a tree and autumn leaves in the background",
    "a {0} {1} with the Eiffel Tower in the background",
    "a {0} {1} floating on top of water",
    "a {0} {1} floating in an ocean of milk",
    "a {0} {1} on top of green grass with sunflowers around it",
    "a {0} {1} on top of a mirror",
    "a {0} {1} on top of the sidewalk in a crowded street",
    "a {0} {1} on top of a dirt road",
    "a {0} {1} on top of a white rug",
) + _PROPERTIES
"""DreamBench's 25 object prompts, verbatim (``{0}`` = identifier, ``{1}`` = class noun)."""

LIVE_PROMPTS: tuple[str, ...] = _SHARED + (
    "a {0} {1} wearing a red hat",
    "a {0} {1} wearing a santa hat",
    "a {0} {1} wearing a rainbow scarf",
    "a {0} {1} wearing a black top hat and a monocle",
    "a {0} {1} in a chef outfit",
    "a {0} {1} in a firefighter outfit",
    "a {0} {1} in a police outfit",
    "a {0} {1} wearing pink glasses",
    "a {0} {1} wearing a yellow shirt",
    "a {0} {1} in a purple wizard outfit",
) + _PROPERTIES
"""DreamBench's 25 live-subject prompts, verbatim."""

SUBJECTS: dict[str, str] = {
    "backpack": "backpack", "backpack_dog": "backpack", "bear_plushie": "stuffed animal",
    "berry_bowl": "bowl", "can": "can", "candle": "candle", "cat": "cat", "cat2": "cat",
    "clock": "clock", "colorful_sneaker": "sneaker", "dog": "dog", "dog2": "dog", "dog3": "dog",
    "dog5": "dog", "dog6": "dog", "dog7": "dog", "dog8": "dog", "duck_toy": "toy",
    "fancy_boot": "boot", "grey_sloth_plushie": "stuffed animal", "monster_toy": "toy",
    "pink_sunglasses": "glasses", "poop_emoji": "toy", "rc_car": "toy", "red_cartoon": "cartoon",
    "robot_toy": "toy", "shiny_sneaker": "sneaker", "teapot": "teapot", "vase": "vase",
    "wolf_plushie": "stuffed animal",
}
"""DreamBench's 30 subjects (folder name -> class noun)."""

LIVE_SUBJECTS: frozenset[str] = frozenset(name for name, noun in SUBJECTS.items() if noun in ("cat", "dog"))
"""The 9 live subjects (cats and dogs); the other 21 are objects."""

LIVE_CLASS_NOUNS: frozenset[str] = frozenset(
    "cat dog kitten puppy pet bird parrot horse pony rabbit bunny hamster fox lion tiger monkey cow "
    "sheep goat pig chicken person man woman boy girl child baby".split()
)
"""Class nouns treated as live subjects (accessory/outfit prompts) outside DreamBench.

"animal", "bear" and "duck" are left out on purpose: DreamBench's "stuffed animal", a teddy bear or a
duck toy are objects.
"""


def is_live_class(class_noun: str) -> bool:
    """True for class nouns of live subjects (the last word is checked: "corgi dog" is live)."""
    words = class_noun.lower().split()
    return bool(words) and words[-1] in LIVE_CLASS_NOUNS


def dreambench_templates(class_noun: str, live: bool | None = None) -> list[str]:
    """The 25 DreamBench prompts for a class, as ``[V]`` templates ("a [V] dog in the snow").

    ``live`` picks the list; by default it follows :func:`is_live_class`.
    """
    noun = _check_noun(class_noun)
    if live is None:
        live = is_live_class(noun)
    return [p.format(V, noun) for p in (LIVE_PROMPTS if live else OBJECT_PROMPTS)]


def to_template(line: str, class_noun: str) -> str:
    """Convert one prompt in DreamBench (``{0} {1}``) or our (``[V] noun``) convention to a template."""
    text = line.strip()
    match = re.match(r"""^(['"])(.*)\1\s*\.format\(.*\)\s*,?$""", text)
    if match:
        text = match.group(2)
    for placeholder in ("{1}", "{class}", "{class_noun}", "[class noun]", "[class]"):
        text = text.replace(placeholder, class_noun)
    text = text.replace("{0}", V).replace("{}", V)
    return re.sub(r"\s+", " ", text).strip()


def _check_noun(class_noun: str) -> str:
    noun = (class_noun or "").strip()
    if not noun:
        raise InputError("a class noun is needed (e.g. --class-noun dog)")
    return noun


def load_prompts_file(path: str | Path, class_noun: str) -> list[str]:
    """Read a user prompt file: one prompt per line, each with ``[V]`` (or ``{0}``) for the identifier.

    Blank lines and ``#`` comments are skipped, as are the ``prompt_list = [`` / ``]`` lines of a
    DreamBench-style listing. Lines are converted with :func:`to_template`; duplicates are dropped.
    """
    path = Path(path)
    noun = _check_noun(class_noun)
    if problem := path_problem(path, "file"):
        raise InputError(f"prompts file {path}: {problem} (use --prompts dreambench or a text file)")
    templates: list[str] = []
    for number, line in prompt_lines(path):
        if line == "]" or re.match(r"^\w+\s*=\s*\[$", line):
            continue
        template = to_template(line, noun)
        if V not in template:
            raise InputError(f"prompts file {path}, line {number}: {line!r} has no [V] "
                             "(or {0}) placeholder for the identifier")
        if template not in templates:
            templates.append(template)
    if not templates:
        raise InputError(f"prompts file {path}: no prompts found")
    return templates


def resolve_prompts(spec: str, class_noun: str, live: bool | None = None) -> tuple[list[str], str]:
    """``"dreambench"`` or a file path -> (templates, description of the source for reports)."""
    if spec.strip().lower() == "dreambench":
        noun = _check_noun(class_noun)
        is_live = is_live_class(noun) if live is None else live
        return dreambench_templates(noun, is_live), f"dreambench-{'live' if is_live else 'object'}"
    return load_prompts_file(spec, class_noun), str(Path(spec))


def parse_dreambench_listing(text: str) -> dict:
    """Parse the official ``prompts_and_classes.txt``: subjects, object prompts and live prompts.

    Returns ``{"subjects": {name: class}, "object": [...], "live": [...]}`` with prompts in the
    verbatim ``{0} {1}`` form.
    """
    subjects: dict[str, str] = {}
    lists: dict[str, list[str]] = {"object": [], "live": []}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        lowered = line.lower()
        if lowered.startswith("object prompts"):
            current = "object"
        elif lowered.startswith("live subject prompts"):
            current = "live"
        elif match := re.match(r"""^(['"])(.*)\1\s*\.format\(""", line):
            if current is not None:
                lists[current].append(match.group(2))
        elif current is None and re.match(r"^[\w]+,[\w ]+$", line) and line != "subject_name,class":
            name, noun = line.split(",", 1)
            subjects[name] = noun.strip()
    return {"subjects": subjects, **lists}
