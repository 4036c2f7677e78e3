"""Run one tool of ``tools/bench.py`` in this process and record its peak CUDA memory when it exits.

    python tools/bench_launch.py [--torchvision-shim] (-m MODULE | SCRIPT) ARGS...

Both tools go through this launcher, so both are measured the same way: at interpreter exit (``atexit``,
which also runs after ``sys.exit``), the process's ``torch.cuda.max_memory_allocated()`` and
``max_memory_reserved()`` are written as JSON to ``$BENCH_STATS_FILE`` if the tool used CUDA (an empty
object otherwise). The caching allocator's reserved peak is what the process held from the GPU, less
the CUDA context. Host memory (max RSS) is taken by the benchmark itself from ``os.wait4``.

``--torchvision-shim`` runs SCRIPT through ``tools/torchvision_shim/launch.py`` (diffusers' script on a
machine without torchvision); ``-m cascade_booth.cli`` runs cascade-booth's CLI as its console script does.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
from pathlib import Path


def _record() -> None:
    path = os.environ.get("BENCH_STATS_FILE")
    if not path:
        return
    torch = sys.modules.get("torch")
    stats: dict = {}
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        stats = dict(cuda_max_allocated=torch.cuda.max_memory_allocated(),
                     cuda_max_reserved=torch.cuda.max_memory_reserved(),
                     cuda_device=torch.cuda.get_device_name())
    Path(path).write_text(json.dumps(stats))


def main() -> None:
    atexit.register(_record)
    args = sys.argv[1:]
    shim = args[:1] == ["--torchvision-shim"]
    args = args[1:] if shim else args
    if not args:
        raise SystemExit(__doc__)
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        sys.path[0] = os.getcwd()
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        return
    sys.path[0] = str(Path(args[0]).resolve().parent)  # as ``python SCRIPT`` would set it
    if shim:  # the shim's launcher takes SCRIPT ARGS... and runs SCRIPT itself
        args = [str(Path(__file__).resolve().parent / "torchvision_shim" / "launch.py"), *args]
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    main()
