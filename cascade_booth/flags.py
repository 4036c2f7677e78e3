"""The one table from a training command's flag to the config field(s) it sets.

``cascade_booth.commands`` builds the click options of ``train-base`` and ``train-sr`` from it
(the option's type comes from the field's type in ``cascade_booth.config`` and its choices in
``cascade_booth.config_checks``), and turns the values the user gave into ``section.key`` overrides
(:func:`overrides`), which ``config.override`` applies and validates, naming a bad value by its flag
(``--steps must be >= 1``).
A field written ``{stage}.key`` belongs to the command's stage table: ``[base]`` for ``train-base``,
``[sr]`` for ``train-sr``. Plain data: this module imports nothing of the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STAGE = "{stage}"
BOTH = ("base", "sr")


@dataclass(frozen=True)
class Flag:
    """One option: ``decl`` as click reads it (``--steps``, ``--full/--lora``) and the fields it sets."""

    decl: str
    fields: tuple[str, ...]
    help: str = ""
    stages: tuple[str, ...] = BOTH  # the training commands, by stage, that take it

    @property
    def name(self) -> str:
        """How errors name the flag: its first spelling (``--prior/--no-prior`` whole, a switch that sets it)."""
        return self.decl if self.decl.startswith("--prior/") else self.decl.split("/")[0]

    @property
    def param(self) -> str:
        """The click parameter (keyword argument) name."""
        return self.decl.split("/")[0].removeprefix("--").replace("-", "_")

    def help_for(self, stage: str) -> str:
        return self.help.replace(STAGE, stage)

    def targets(self, stage: str) -> tuple[str, ...]:
        """The fields it sets for the command of ``stage``, as ``section.key`` (or ``key`` at the top level)."""
        return tuple(f.replace(STAGE, stage) for f in self.fields)


_OVER = "Overrides [{stage}]"
TABLE: tuple[Flag, ...] = (
    Flag("--model", ("model.base", "model.sr"), "Override both stages' model: hub id, local folder or 'tiny'.",
         stages=("base",)),
    Flag("--model", ("model.sr",), "Override stage two's model: hub id, local folder or 'tiny'.", stages=("sr",)),
    Flag("--steps", (f"{STAGE}.steps",), f"Optimizer steps. {_OVER} steps; --resume may raise it."),
    Flag("--batch-size", (f"{STAGE}.batch_size",), f"{_OVER} batch_size."),
    Flag("--lr", (f"{STAGE}.lr",), f"Learning rate, in (0, 1]. {_OVER} lr."),
    Flag("--lora-rank", (f"{STAGE}.lora_rank",), f"{_OVER} lora_rank."),
    Flag("--lora-text/--no-lora-text", (f"{STAGE}.lora_text",),
         f"LoRA also on the text keys/values (add_k_proj, add_v_proj). {_OVER} lora_text."),
    Flag("--full/--lora", (f"{STAGE}.full",), "Full fine-tune instead of LoRA."),
    Flag("--seed", ("seed",), "Overrides the config's seed (>= 0)."),
    Flag("--checkpoint-every", (f"{STAGE}.checkpoint_every",), f"0: no checkpoints. {_OVER} checkpoint_every."),
    Flag("--mixed-precision", (f"{STAGE}.mixed_precision",)),
    Flag("--compile/--no-compile", (f"{STAGE}.compile",), "torch.compile the UNet."),
    Flag("--optimizer", (f"{STAGE}.optimizer",),
         "adamw-in-backward: update inside backward, bf16 moments (full fine-tunes in less memory)."),
    Flag("--max-grad-norm", (f"{STAGE}.max_grad_norm",), "Clip the global gradient norm (0: no clipping)."),
    Flag("--x0-weight-cap", (f"{STAGE}.x0_weight_cap",),
         f"Weight each sample's loss by min(1/alpha_bar_t, cap): the colours and layout decided at high noise "
         f"learn faster (1: IF's plain loss). {_OVER} x0_weight_cap."),
    Flag("--offset-noise", (f"{STAGE}.offset_noise",),
         f"Add a per-image, per-channel constant of this std to the training noise (0: IF's plain noise; use what "
         f"the model was pretrained with). {_OVER} offset_noise."),
    Flag("--gradient-checkpointing/--no-gradient-checkpointing", (f"{STAGE}.gradient_checkpointing",),
         "Recompute activations in backward: less memory, about 30% slower."),
    Flag("--prior/--no-prior", ("prior.enabled",), "Class-specific prior preservation (default on).",
         stages=("base",)),
    Flag("--prior-weight", ("prior.weight",), "lambda in the prior-preservation loss (default 1).", stages=("base",)),
    Flag("--class-images", ("prior.class_images",), "How many class images to generate/use.", stages=("base",)),
    Flag("--identifier-lr", ("identifier.offset_lr",),
         "Also learn an offset on [V]'s text states at this learning rate (0: the paper's fixed token). "
         "Overrides [identifier] offset_lr.", stages=("base",)),
    Flag("--noise-level", ("sr.noise_level",), "Noise-augmentation level of the 64 px input (0-999).",
         stages=("sr",)),
    Flag("--prompt", ("sr.prompt",), "Training prompt.", stages=("sr",)),
    Flag("--class-images", ("sr.class_images",),
         "Stage two's class prior: this many of stage one's class images, upsampled by the frozen SR, trained beside "
         "the subject with the class prompt and [prior] weight (0: none, the paper's). Overrides [sr] class_images.",
         stages=("sr",)),
    Flag("--class-block", ("sr.class_block",),
         "Compare stage two's class pairs on BxB block means only: keep the frozen SR's colours, not its lack of "
         "fine detail (1: the full loss). Overrides [sr] class_block.", stages=("sr",)),
    Flag("--crop", ("sr.crop",),
         "Train stage two on random CxC windows of each pair (target and conditioning alike; 0: whole images). "
         "Overrides [sr] crop.", stages=("sr",)),
)


def flags_of(stage: str) -> list[Flag]:
    """The config flags of the training command of ``stage``, in ``--help`` order."""
    return [flag for flag in TABLE if stage in flag.stages]


def overrides(stage: str, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``section.key -> value`` overrides of the flags given (None: not given), and the flag of each key."""
    out: dict[str, Any] = {}
    names: dict[str, str] = {}
    for flag in flags_of(stage):
        value = values.get(flag.param)
        if value is None:
            continue
        for target in flag.targets(stage):
            out[target], names[target] = value, flag.name
    return out, names


def flag_name(section: str, key: str) -> str:
    """The flag that stands for ``[section] key`` (``--prior-weight`` for ``prior.weight``), else ``--key``."""
    for flag in TABLE:
        for stage in flag.stages:
            if (f"{section}.{key}" if section else key) in flag.targets(stage):
                return flag.name
    return "--" + key.replace("_", "-")
