"""The versions a run or a report records: cascade-booth, its main libraries, Python."""

from __future__ import annotations

import platform


def versions() -> dict[str, str]:
    import accelerate
    import diffusers
    import peft
    import torch
    import transformers

    from cascade_booth import __version__

    return {
        "cascade_booth": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__, "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }
