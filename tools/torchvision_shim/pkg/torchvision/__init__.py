"""Minimal stand-in for ``torchvision`` (PIL + torch), used ONLY by ``tools/bench_cpu.py``.

There is no CPU torchvision build for the torch installed here, and diffusers'
``examples/dreambooth/train_dreambooth_lora.py`` imports it solely for its image transforms.
The benchmark puts this folder on ``PYTHONPATH`` for the diffusers run only; cascade-booth never
imports it. It implements just the transforms that script uses, with torchvision's semantics for
PIL inputs (Resize of the shorter side, Center/RandomCrop, ToTensor to [0, 1], Normalize).
"""

__version__ = "0.0.0+cascade-booth-bench-shim"

from . import transforms  # noqa: E402,F401
