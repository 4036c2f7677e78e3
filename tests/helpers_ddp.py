"""The child side of ``tests/test_ddp.py``, run once per process by ``accelerate launch``.

``python tests/helpers_ddp.py CONFIG SUBJECT FRESH RESUMED`` runs, in one launch (one start-up of
every process instead of three), the real CLI commands the users run:

1. ``train-base`` into ``FRESH`` (class images are generated into a fresh cache, split by rank),
2. ``train-sr`` on ``FRESH``,
3. ``train-base --resume --allow-drift`` on ``RESUMED`` (a one-process run cut back to a checkpoint).

It prints ``RANK r MADE [indices]``: the class images this process sampled.
"""

from __future__ import annotations

import json
import sys


def main(config: str, subject: str, fresh: str, resumed: str) -> None:
    import torch

    from cascade_booth import prior
    from cascade_booth.cli import main as cli

    made: list[int] = []
    sample = prior._sample

    def counting_sample(pipe, prompt, texts, seed, indices, *args):
        made.extend(indices)
        return sample(pipe, prompt, texts, seed, indices, *args)

    prior._sample = counting_sample
    base = ["train-base", "--config", config, "--subject", subject, "--class-noun", "clock"]
    cli([*base, "--run", fresh], standalone_mode=False)
    # One write with its newline: under an unbuffered launcher print() writes text and "\n" separately, and
    # the main process's own output could land between them.
    sys.stdout.write(f"RANK {torch.distributed.get_rank()} MADE {json.dumps(made)}\n")
    sys.stdout.flush()
    cli(["train-sr", "--config", config, "--run", fresh], standalone_mode=False)
    cli([*base, "--run", resumed, "--resume", "--allow-drift"], standalone_mode=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
