"""Run a third-party script with the ``torchvision`` stand-in importable, used ONLY by ``tools/bench_cpu.py``.

``python launch.py SCRIPT ARGS...``. transformers and diffusers decide "is torchvision installed?"
by looking for the module (and then import parts of it this stand-in lacks); on this machine the
true answer is no, so the launcher lets them settle that answer first (transformers caches it,
diffusers stores it at import), and only then puts the stand-in on ``sys.path`` for the script's
own ``from torchvision import transforms``.
"""

import runpy
import sys
from pathlib import Path

import diffusers.utils.import_utils as diffusers_imports
from transformers.utils import import_utils as transformers_imports

if transformers_imports.is_torchvision_available() or diffusers_imports.is_torchvision_available():
    raise SystemExit("a real torchvision is installed: run the script without this launcher")

sys.path.insert(0, str(Path(__file__).resolve().parent / "pkg"))
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
