"""Former name of ``tools/bench.py`` (stage one only, CPU); kept as an alias: same options, same defaults.

    python tools/bench_cpu.py --diffusers-script /tmp/bench-diffusers/train_dreambooth_lora.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.bench import main  # noqa: E402

if __name__ == "__main__":
    main()
