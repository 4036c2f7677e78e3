"""Former name of ``tools/bench.py`` (stage one only, CPU); kept as an alias: same options, same defaults.

    python tools/bench_cpu.py --diffusers-script /tmp/bench-diffusers/train_dreambooth_lora.py
"""

from __future__ import annotations

from bench import main  # a sibling: ``python tools/bench_cpu.py`` puts tools/ first on sys.path

if __name__ == "__main__":
    main()
