"""Run several experiment scripts in one Python process, so each tensor-core kernel compiles once
(~20-40 s a variant) instead of once per script.

    python experiments/in_one_process.py "torch_overhead --out OUT/overhead" \\
        "host_profile > OUT/host_profile.txt" "train_tiny_gpt --out OUT/train --max-minutes 1.6"

Each item: a script name in experiments/ and its arguments; ``> FILE`` sends what it prints to
FILE. Scripts run in order; the first failure stops the run (its exit code is returned).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(name: str):
    """``experiments/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(item: str) -> int:
    words = shlex.split(item)
    target = None
    if ">" in words:
        at = words.index(">")
        words, target = words[:at], words[at + 1]
    name, argv = words[0], words[1:]
    main = load(name).main
    takes_argv = bool(inspect.signature(main).parameters)
    with (open(target, "w") if target else contextlib.nullcontext()) as f:
        with contextlib.redirect_stdout(f) if f else contextlib.nullcontext():
            rc = main(argv) if takes_argv else main()
    return rc or 0


def main(argv=None) -> int:
    items = sys.argv[1:] if argv is None else argv
    t0 = time.perf_counter()
    for item in items:
        rc = run(item)
        print(f"{item}: exit {rc} at {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            return rc
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
