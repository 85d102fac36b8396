"""Tune several problems at once on one GPU: compile in parallel, time one at a time.

Each tensor-core candidate takes ~20-40 s to compile and well under a second to time, so tuning
problems one after another mostly waits for the compiler. This runs one ``numba-flash tune``
process per problem; each holds an exclusive file lock only while it times (``timing.time_ms``),
so no two timings share the GPU while the compiles overlap.

    python experiments/tune_parallel.py --out experiments/results/tune_tc -- \\
        "--head-dim 64 --pass forward" "--head-dim 128 --pass backward --config 64,32,2,16" ...

Every problem's arguments go to ``python -m numba_flash.tune`` (plus ``--out OUT/<n>`` and a
private ``--cache-file``); the processes' logs land in OUT.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _locked_tune(argv: list[str], lock_path: str) -> int:
    """In a child: ``numba_flash.tune.main(argv)`` with every timing under the lock."""
    sys.path.insert(0, str(ROOT))
    from numba_flash import timing, tune

    real = timing.time_ms

    def time_ms(*args, **kwargs):
        with timing.exclusive(lock_path):
            return real(*args, **kwargs)

    timing.time_ms = time_ms
    return tune.main(argv)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("problems", nargs="*", help="each: the numba-flash tune arguments of one problem, quoted")
    args = parser.parse_args(argv)
    out = Path(args.out)
    lock = str(out / ".timing.lock")
    if args.child is not None:
        return _locked_tune(args.child, lock)
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, problem in enumerate(args.problems):
        sub = out / f"{i:02d}"
        cmd = [sys.executable, __file__, "--out", str(out), "--child", *shlex.split(problem), "--out", str(sub),
               "--cache-file", str(sub / "tuning.json"), "--no-progress"]
        log = open(out / f"{i:02d}.log", "w")
        log.write(" ".join(cmd) + "\n")
        log.flush()
        procs.append((problem, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())))
    failed = 0
    for problem, p in procs:
        rc = p.wait()
        print(f"{'ok' if rc == 0 else f'exit {rc}'}: {problem}")
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
