"""Run an experiment script against another copy of the package, for A/B timings of two versions on one GPU.

    mkdir -p ab/base && git archive <rev> numba_flash | tar -x -C ab/base   # the other version (ab/ is ignored:
                                                                            # name it in the device tool's carry)
    python experiments/with_package.py ab/base experiments/tc_sweep.py --head-dims 64 ...

puts ``ab/base`` (which holds a ``numba_flash`` folder) first on ``sys.path`` and runs the script as
``__main__``, its own folder on the path too (scripts import each other). Two such processes, one per
version, sharing a ``--lock`` file, compile side by side and time one at a time, each against SDPA in
its own process.
"""

import os
import runpy
import sys

if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: with_package.py PACKAGE_PARENT SCRIPT [ARGS...]")
    parent, script = os.path.abspath(sys.argv[1]), sys.argv[2]
    if not os.path.isdir(os.path.join(parent, "numba_flash")):
        raise SystemExit(f"PACKAGE_PARENT: expected a folder holding numba_flash/, got {parent!r}")
    sys.path[:0] = [parent, os.path.dirname(os.path.abspath(script))]
    sys.argv = [script] + sys.argv[3:]
    import numba_flash

    print(f"numba_flash from {os.path.dirname(numba_flash.__file__)}", flush=True)
    runpy.run_path(script, run_name="__main__")
