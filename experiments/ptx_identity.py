"""Did a refactor change the code a kernel compiles to? The PTX of the tensor-core kernels, without a GPU.

    python experiments/ptx_identity.py dump DIR [--case NAME ...]    # this checkout's kernels -> DIR/NAME.ptx
    python experiments/ptx_identity.py compare BEFORE AFTER            # exit 1 if any kernel's code differs

Dump once on the old version (``git worktree add ../old REV``, then run this script from there), once on the
new one, then compare. Identical PTX means identical SASS, so a refactor that passes needs no new GPU run.
``compare`` ignores what only names things: Numba's environment globals (``NumbaEnv`` lines, listed in
an arbitrary order), the ``B<n>v<k>B`` version counters in mangled names, which count compiled
functions and shift when a helper moves, and the counter in the dynamic shared array's name
(``_cudapy_smem_<n>``: how many kernels the process compiled before). Each kernel takes 0.5–5 minutes to compile on a CPU (NVVM for
sm_90 through the CUDA 13 wheels; no driver needed).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's numba_flash, uninstalled

# (name, kernel, config text, head_dim, varlen, dropout, elem): the dK/dV kernels of both layouts and the
# other kernels' defaults, in the element kinds they take
CASES = [
    ("dkdv-f16-64", "dkdv", "64,64,2,16,reread,b3", 64, False, False, "f16"),
    ("dkdv-f16-128", "dkdv", "64,32,2,16", 128, False, False, "f16"),
    ("dkdv-split-128", "dkdv", "128,64,2,16,split", 128, False, False, "f16"),
    ("dkdv-split-96-varlen-dropout-bf16", "dkdv", "64,32,2,16,split", 96, True, True, "bf16"),
    ("dkdv-tf32-64", "dkdv", "64,32,2,16", 64, False, False, "tf32"),
    ("dkdv-tf32-128", "dkdv", "64,16,2,16", 128, False, False, "tf32"),
    ("dkdv-atomic-64", "dkdv", "64,32,2,16,atomic", 64, False, False, "f16"),
    ("dkdv-atomic-tf32-128", "dkdv", "64,16,2,16,atomic", 128, False, False, "tf32"),
    ("dkdv-atomic-tf32-40-varlen-dropout", "dkdv", "64,16,2,16,atomic", 40, True, True, "tf32"),
    ("dkdv-f16-128-varlen-dropout", "dkdv", "64,16,2,16", 128, True, True, "f16"),
    ("dq-f16-128", "dq", "128,64,2,16,split", 128, False, False, "f16"),
    ("forward-f16-128", "forward", "256,64,2,32,reread", 128, False, False, "f16"),
    ("forward-tf32-64", "forward", "128,16,2,32", 64, False, False, "tf32"),
    ("forward-tf32-128", "forward", "64,16,2,16,b3", 128, False, False, "tf32"),
    ("dq-tf32-128", "dq", "64,16,2,16", 128, False, False, "tf32"),
]

_NAME_COUNTER = re.compile(r"B\d+v\d+B")
_SMEM_COUNTER = re.compile(r"_cudapy_smem_\d+")


def normalised(ptx: str) -> list[str]:
    """The lines of ``ptx`` that carry code: without Numba's environment globals, with version
    counters in mangled names and the dynamic shared array's counter blanked."""
    return [_SMEM_COUNTER.sub("_cudapy_smem_N", _NAME_COUNTER.sub("BvB", line)) for line in ptx.splitlines()
            if "NumbaEnv" not in line]


def compare(before: Path, after: Path, out=sys.stdout) -> int:
    """Print one line per kernel found in both folders; return how many differ (or are missing)."""
    bad = 0
    names = sorted({p.name for p in before.glob("*.ptx")} | {p.name for p in after.glob("*.ptx")})
    if not names:
        print(f"no .ptx files in {before} or {after}", file=out)
        return 1
    for name in names:
        a, b = before / name, after / name
        if not (a.exists() and b.exists()):
            print(f"{name}: only in {before if a.exists() else after}", file=out)
            bad += 1
            continue
        diff = list(difflib.unified_diff(normalised(a.read_text()), normalised(b.read_text()), lineterm="", n=0))
        changed = sum(1 for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---"))
        print(f"{name}: {'identical' if not changed else f'DIFFERS in {changed} lines'}", file=out)
        bad += bool(changed)
    return bad


def dump(folder: Path, only=None) -> None:
    os.environ.setdefault("NUMBA_FLASH_BACKEND", "gpu")  # compile for sm_90; nothing is launched
    from numba_flash.config import TensorCoreConfig
    from numba_flash.resources import tc_ptx

    folder.mkdir(parents=True, exist_ok=True)
    for name, kernel, text, head_dim, varlen, dropout, elem in CASES:
        if only and name not in only:
            continue
        start = time.perf_counter()
        ptx, _ = tc_ptx(TensorCoreConfig.parse(text), head_dim, varlen, dropout, elem, kernel=kernel)
        (folder / f"{name}.ptx").write_text(ptx)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="write DIR/NAME.ptx for each case")
    d.add_argument("folder", type=Path)
    d.add_argument("--case", action="append", choices=[c[0] for c in CASES], help="only these (repeatable)")
    c = sub.add_parser("compare", help="compare two dumps; exit status 1 if any kernel differs")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "dump":
        dump(args.folder, args.case)
        return 0
    return 1 if compare(args.before, args.after) else 0


if __name__ == "__main__":
    raise SystemExit(main())
