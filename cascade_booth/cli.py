"""``cascade-booth``: a thin click client over the stages; every user error is one clean message."""

from __future__ import annotations

import copy
import os

import click


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cascade-booth")
def main() -> None:
    """Cascaded DreamBooth for DeepFloyd IF: personalize both stages of the cascade on 3-5 photos."""
    _quiet_libraries()


def _register() -> None:
    from cascade_booth.clikit import friendly
    from cascade_booth.commands import demo, render, train_base, train_sr
    from cascade_booth.evaluation.cli import evaluate
    from cascade_booth.sweep.cli import sweep
    from cascade_booth.world.cli import world

    for cmd in (train_base, train_sr, render, demo, world):
        main.add_command(cmd)
    for library_command in (evaluate, sweep):
        cli_command = copy.copy(library_command)  # the library command keeps raising typed errors
        cli_command.callback = friendly(library_command.callback)  # on the CLI: one message, like every command
        main.add_command(cli_command)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
