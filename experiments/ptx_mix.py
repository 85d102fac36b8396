"""What a tensor-core pass asks of each thread, without a GPU: the instruction mix of its kernels' PTX.

    python experiments/ptx_mix.py --pass backward:64,16,2,16:128:tf32 \\
        --pass backward:64,16,2,16,atomic:128:tf32 --out experiments/results/ptx_mix

Each ``--pass PASS:CONFIG:HEAD_DIM[:ELEM]`` (PASS ``forward`` or ``backward``; CONFIG in
``TensorCoreConfig.parse``'s text form; ELEM ``f16``, ``bf16`` or ``tf32``, default ``f16``) is compiled for
sm_90 as ``ptx_identity.py`` does (NVVM through the CUDA 13 wheels, no driver): the forward kernel, or the
backward's dK/dV and dQ kernels (dK/dV alone with ``atomic``). Their PTX statements are counted by class
(``mma``, ``ldmatrix``, shared loads and stores, the 3xTF32 splits, float32 adds, multiplies and FMAs,
``red.global``, ``cp.async``, barriers, local memory) and summed per pass, beside each kernel's registers
and spilled bytes.

The counts are static (each unrolled loop body once, with its prologue and epilogue) and per thread. A
thread's loop trip handles its warp's 16 (or 32) owned rows against ``block_n`` streamed rows, whatever
``block_m``, so ``per 16 streamed`` (total x 16 / block_n) is comparable between configs, and ``vs first``
is that over the first pass's: how the statements to issue move. Static statements are not time: they
say nothing of latency, dependent chains, bank conflicts, atomics' L2 traffic, spills' cost or how many
issue slots an instruction takes. Calibration (session 21): for the 16-bit atomic dQ against the two-kernel
backward it gives 0.96x at head_dim 64 and 0.59x at 128, where the H100 measured 1.14x and 1.12x the
time (session 8's kernels, README); for the float32 atomic dQ 0.76x and 0.72x, not measured yet. A count
to reason with, not a prediction of speed. Each kernel takes 15 s - 5 min to compile on a CPU.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's numba_flash, uninstalled

# class -> the start of a statement (after any predicate); the 3xTF32 split (ptx.split_tf32) is the only
# ``and.b32 ..., -8192``
CLASSES = {
    "mma": r"mma\.sync", "ldmatrix": r"ldmatrix", "ld.shared": r"ld\.shared", "st.shared": r"st\.shared",
    "split": r"and\.b32 .*-8192", "f32 add": r"(?:add|sub)(?:\.r[nzmp])?(?:\.ftz)?\.f32",
    "f32 mul/fma": r"(?:mul|fma)(?:\.r[nzmp])?(?:\.ftz)?\.f32", "red": r"red\.", "cp.async": r"cp\.async\.c[ag]",
    "barrier": r"(?:bar|barrier)\.sync", "local": r"(?:ld|st)\.local",
}
_CLASS_RE = {k: re.compile(r"(?:@!?%p\w+\s+)?" + v) for k, v in CLASSES.items()}
ELEMS = ("f16", "bf16", "tf32")


def statements(ptx: str) -> list[str]:
    """The instructions of ``ptx``, one per statement: comments, directives, labels and the braces of inline
    asm blocks (``{ .reg ...; op; }``, several statements on one line) removed."""
    text = "\n".join(line.split("//")[0] for line in ptx.splitlines())
    out = []
    for chunk in text.split(";"):
        s = chunk.strip().lstrip("{} \t\n")
        s = re.sub(r"^(?:\$?[\w$]+:\s*)+", "", s).strip().lstrip("{} \t\n")
        if s and not s.startswith("."):
            out.append(s)
    return out


def count_classes(ptx: str) -> dict:
    """Statements of ``ptx`` per class (:data:`CLASSES`) and in all (``total``)."""
    body = statements(ptx)
    counts = {k: sum(1 for s in body if r.match(s)) for k, r in _CLASS_RE.items()}
    counts["total"] = len(body)
    return counts


def parse_pass(text: str):
    """``PASS:CONFIG:HEAD_DIM[:ELEM]`` -> (pass, TensorCoreConfig, head_dim, elem)."""
    from numba_flash.config import TensorCoreConfig

    parts = text.split(":")
    if len(parts) not in (3, 4) or parts[0] not in ("forward", "backward"):
        raise argparse.ArgumentTypeError(f"expected PASS:CONFIG:HEAD_DIM[:ELEM] with PASS forward or backward, "
                                         f"got {text!r}")
    try:
        config, head_dim = TensorCoreConfig.parse(parts[1]), int(parts[2])
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    elem = parts[3] if len(parts) == 4 else "f16"
    if elem not in ELEMS:
        raise argparse.ArgumentTypeError(f"{text!r}: ELEM must be one of {ELEMS}, got {elem!r}")
    found = config.problems(head_dim, parts[0], elem)
    if found:
        raise argparse.ArgumentTypeError(f"{text!r}: " + "; ".join(found))
    return parts[0], config, head_dim, elem


def kernels_of(pass_: str, config) -> list[str]:
    if pass_ == "forward":
        return ["forward"]
    return ["dkdv"] if config.atomic_dq else ["dkdv", "dq"]


def mix(pass_: str, config, head_dim: int, elem: str) -> dict:
    """One pass's row: its kernels' class counts summed, and each kernel's registers and spills."""
    from numba_flash.resources import tc_ptx

    row = {"pass": pass_, "config": config.label(), "head_dim": head_dim, "elem": elem,
           **{k: 0 for k in (*CLASSES, "total")}}
    resources = []
    for kernel in kernels_of(pass_, config):
        ptx, res = tc_ptx(config, head_dim, elem=elem, kernel=kernel)
        for k, v in count_classes(ptx).items():
            row[k] += v
        resources.append(f"{kernel} {res['registers']} regs, spill {res['spill_stores']}/{res['spill_loads']}")
    row["kernels"] = "; ".join(resources)
    return row


def main(argv=None) -> int:
    os.environ.setdefault("NUMBA_FLASH_BACKEND", "gpu")  # compile for sm_90; nothing is launched
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pass", dest="passes", action="append", type=parse_pass, required=True,
                   metavar="PASS:CONFIG:HEAD_DIM[:ELEM]")
    p.add_argument("--out", default="experiments/results/ptx_mix")
    args = p.parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        p.error("compiles for sm_90: run without NUMBA_ENABLE_CUDASIM (NUMBA_FLASH_BACKEND=gpu needs no GPU here)")
    from rich.console import Console
    from rich.progress import track

    from numba_flash.results import markdown_table, save

    rows = [mix(*spec) for spec in track(args.passes, description="compiling", console=Console(stderr=True))]
    for r, (_, cfg, _, _) in zip(rows, args.passes):
        r["per 16 streamed"] = round(r["total"] * 16 / cfg.block_n)
    for r in rows:
        r["vs first"] = r["per 16 streamed"] / rows[0]["per 16 streamed"]
    columns = ["pass", "config", "head_dim", "elem", *CLASSES, "total", "per 16 streamed", "vs first", "kernels"]
    table = markdown_table(rows, columns)
    print(table)
    save(args.out, "ptx_mix", {"rows": rows}, "Static PTX statements per thread, summed over each pass's kernels "
         "(experiments/ptx_mix.py; sm_90, this machine's CUDA wheels).\n\n" + table,
         title="Instruction mix of tensor-core passes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
