"""Speed of numba_flash against standard attention (CuPy) and PyTorch SDPA (each backend forced).

    python experiments/bench_speed.py --out experiments/results/bench_speed          # the standard sweep (GPU)
    python experiments/bench_speed.py --smoke --out /tmp/bench                      # tiny, on the simulator
    python experiments/bench_speed.py --shape 4,16,2048,64 --pass forward           # any shape

The logic (and the options) live in ``numba_flash.bench`` so that ``numba-flash bench`` is the same
command; this file is a thin wrapper that also works from a clean checkout without installing.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's numba_flash, uninstalled

from numba_flash.bench import main as _main  # noqa: E402


def main(argv=None):
    return _main(argv, prog="experiments/bench_speed.py")


if __name__ == "__main__":
    raise SystemExit(main())
