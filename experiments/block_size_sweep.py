"""Heat maps of forward TFLOP/s and modelled HBM bytes over (BLOCK_M, BLOCK_N).

For each shape every (BLOCK_M, BLOCK_N) cell is checked against the float64 oracle and timed with
numba_flash.tune (which does the checking, timing and budget); a cell shows the best of the
threads-per-row choices tried for it. Cells whose tiles cannot run at that head_dim (shared
memory, uneven split of rows) are blank. The HBM bytes are modelled, not measured: with
numba_flash.io_model when it is present (every tile load counted, i.e. no L2 hits), else the
simple estimate Q + O + lse + cdiv(Nq, BLOCK_M) * (K + V).

Configs are tried in two rounds so that a short budget still fills the map: first one config per
cell (the threads-per-row whose block is closest to --target-threads threads), then the others.

    python experiments/block_size_sweep.py --out experiments/results/block_size_sweep   # GPU, ~2 min
    python experiments/block_size_sweep.py --smoke --out /tmp/sweep                      # simulator, seconds
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from numba_flash import backend  # noqa: E402  (chooses GPU or simulator first)
from numba_flash.config import BlockConfig  # noqa: E402
from numba_flash.results import pyplot  # noqa: E402
from numba_flash.tune import BLOCK_SIZES, enumerate_configs, tune  # noqa: E402

# Forward, fp16, not causal. D=64 at N=2048 is the bench sweep's 16k-token shape; D=128 at
# N=4096 has half the configs (shared memory) and twice the per-call time.
GPU_SHAPES = (dict(batch=4, heads=16, seqlen=2048, head_dim=64), dict(batch=2, heads=16, seqlen=4096, head_dim=128))
SMOKE_SHAPES = (dict(batch=1, heads=1, seqlen=16, head_dim=16), dict(batch=1, heads=1, seqlen=16, head_dim=8))


def _cdiv(a, b):
    return -(-a // b)


def hbm_model(batch, heads, n_q, n_k, head_dim, dtype, causal, config) -> tuple[dict, str]:
    """Modelled forward HBM bytes of ``config``: ({'bytes', 'bytes_compulsory'}, model name)."""
    try:
        from numba_flash import io_model
    except ImportError:
        io_model = None
    if io_model is not None and hasattr(io_model, "flash_forward_kernels"):
        e = io_model.flash_forward_kernels(batch, heads, n_q, n_k, head_dim, dtype, causal, config)["forward"]
        return ({"bytes": e["bytes_read"] + e["bytes_written"],
                 "bytes_compulsory": e["bytes_read_compulsory"] + e["bytes_written"]},
                "numba_flash.io_model forward (every tile load counted: no L2 hits)")
    # The simple estimate: Q read and O, lse written once; K and V read once per query block.
    el = np.dtype(dtype).itemsize
    bh = batch * heads
    q = o = bh * n_q * head_dim * el
    kv = 2 * bh * n_k * head_dim * el
    total = q + o + bh * n_q * 4 + _cdiv(n_q, config.block_m) * kv
    return {"bytes": total, "bytes_compulsory": q + o + bh * n_q * 4 + kv}, \
        "simple estimate Q + O + lse + cdiv(Nq, BLOCK_M) * (K + V)"


def ordered_configs(head_dim: int, block_sizes, target_threads: int, rounds: int):
    """Candidate configs, round 1 (one per cell) first, and the cells that cannot run at all."""
    first, rest, blank = [], [], []
    legal = enumerate_configs(head_dim, "forward", block_sizes=block_sizes)
    for bm in block_sizes:
        for bn in block_sizes:
            fits = [c for c in legal if (c.block_m, c.block_n) == (bm, bn)]
            if not fits:
                blank.append((bm, bn))
                continue
            fits.sort(key=lambda c: (abs(math.log2(c.num_threads / target_threads)), -c.num_threads))
            first.append(fits[0])
            rest.extend(fits[1:])
    return (first + rest if rounds > 1 else first), blank


def sweep_shape(shape: dict, dtype: str, block_sizes, target_threads: int, rounds: int, budget_s: float,
                repeat: int, progress: bool) -> dict:
    b, h, n, d = shape["batch"], shape["heads"], shape["seqlen"], shape["head_dim"]
    configs, blank = ordered_configs(d, block_sizes, target_threads, rounds)
    result = tune(b, h, n, n, d, dtype=dtype, causal=False, pass_="forward", budget_s=budget_s, configs=configs,
                  cache=False, progress=progress, show=False, repeat=repeat)
    cells, model_name = [], None
    for bm in block_sizes:
        for bn in block_sizes:
            trials = [t for t in result.trials if (t.config.block_m, t.config.block_n) == (bm, bn)]
            ok = sorted((t for t in trials if t.status == "ok"), key=lambda t: t.median_ms)
            cell = {"block_m": bm, "block_n": bn, "tflops": None, "median_ms": None, "num_threads": None,
                    "model_bytes": None, "model_bytes_compulsory": None,
                    "tried": [{"num_threads": t.config.num_threads, "status": t.status, "median_ms": t.median_ms,
                               "tflops": t.tflops, "max_rel_err": t.max_rel_err, "reason": t.reason} for t in trials]}
            if (bm, bn) in blank:
                cell["status"] = "does not fit"
            elif ok:
                best = ok[0]
                cell.update(status="ok", tflops=best.tflops, median_ms=best.median_ms,
                            num_threads=best.config.num_threads)
            elif any(t.status == "failed" for t in trials):
                cell["status"] = "failed"
            elif any(t.status == "skipped" for t in trials) and not any(t.status == "not run" for t in trials):
                cell["status"] = "skipped"
            else:
                cell["status"] = "not run (budget)"
            if cell["status"] != "does not fit":
                cfg = BlockConfig(bm, bn, trials[0].config.num_threads) if trials else None
                if cfg is not None:
                    model, model_name = hbm_model(b, h, n, n, d, dtype, False, cfg)
                    cell["model_bytes"], cell["model_bytes_compulsory"] = model["bytes"], model["bytes_compulsory"]
            cells.append(cell)
    return {"shape": {**shape, "dtype": dtype, "causal": False, "pass": "forward"}, "block_sizes": list(block_sizes),
            "cells": cells, "hbm_model": model_name, "budget_s": budget_s, "elapsed_s": result.elapsed_s,
            "counts": result.counts(), "best": None if result.best is None else
            [result.best.block_m, result.best.block_n, result.best.num_threads],
            "default": [result.default.block_m, result.default.block_n, result.default.num_threads],
            "trials": result.rows()}


def _grid(rec: dict, field: str) -> np.ndarray:
    bs = rec["block_sizes"]
    g = np.full((len(bs), len(bs)), np.nan)
    for c in rec["cells"]:
        if c[field] is not None:
            g[bs.index(c["block_m"]), bs.index(c["block_n"])] = c[field]
    return g


def _label(shape: dict) -> str:
    return f"B={shape['batch']} H={shape['heads']} N={shape['seqlen']} D={shape['head_dim']} {shape['dtype']}"


def _cell_text(c: dict) -> str:
    if c["status"] == "ok":
        return f"{c['tflops']:.3g} ({c['num_threads']})"
    return {"does not fit": "", "failed": "FAILED", "skipped": "skipped", "not run (budget)": "n/r"}[c["status"]]


def grid_markdown(rec: dict) -> str:
    bs = rec["block_sizes"]
    by = {(c["block_m"], c["block_n"]): c for c in rec["cells"]}
    lines = ["TFLOP/s (best num_threads) by BLOCK_M (rows) x BLOCK_N (columns); blank: does not fit; "
             "n/r: not run within the budget", "",
             "| BLOCK_M \\ BLOCK_N | " + " | ".join(map(str, bs)) + " |", "|---" * (len(bs) + 1) + "|"]
    for bm in bs:
        lines.append(f"| **{bm}** | " + " | ".join(_cell_text(by[(bm, bn)]) for bn in bs) + " |")
    lines += ["", f"Modelled HBM MB ({rec['hbm_model']})", "",
              "| BLOCK_M \\ BLOCK_N | " + " | ".join(map(str, bs)) + " |", "|---" * (len(bs) + 1) + "|"]
    for bm in bs:
        row = []
        for bn in bs:
            v = by[(bm, bn)]["model_bytes"]
            row.append("" if v is None else f"{v / 1e6:.4g}")
        lines.append(f"| **{bm}** | " + " | ".join(row) + " |")
    return "\n".join(lines)


def print_grid(console, rec: dict) -> None:
    from rich.table import Table

    bs = rec["block_sizes"]
    by = {(c["block_m"], c["block_n"]): c for c in rec["cells"]}
    t = Table(title=f"forward TFLOP/s (best num_threads), {_label(rec['shape'])} on {backend.device_name()}")
    t.add_column("BM \\ BN", justify="right")
    for bn in bs:
        t.add_column(str(bn), justify="right")
    for bm in bs:
        t.add_row(str(bm), *(_cell_text(by[(bm, bn)]) for bn in bs))
    console.print(t)
    console.print(f"best {rec['best']} (default {rec['default']}); {rec['counts']}; "
                  f"modelled HBM bytes: {rec['hbm_model']}")


def plot(rec: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        print("matplotlib is not installed: no heat map PNG (pip install matplotlib)")
        return False
    bs = rec["block_sizes"]
    by = {(c["block_m"], c["block_n"]): c for c in rec["cells"]}
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
    panels = ((_grid(rec, "tflops"), "forward TFLOP/s (best num_threads)", "viridis", "{:.3g}"),
              (_grid(rec, "model_bytes") / 1e6, "modelled HBM MB", "magma_r", "{:.4g}"))
    for ax, (g, title, cmap, fmt) in zip(axes, panels):
        masked = np.ma.masked_invalid(g)
        im = ax.imshow(masked, cmap=cmap, origin="upper")
        fig.colorbar(im, ax=ax, shrink=0.85)
        ax.set_xticks(range(len(bs)), [str(b) for b in bs])
        ax.set_yticks(range(len(bs)), [str(b) for b in bs])
        ax.set_xlabel("BLOCK_N")
        ax.set_ylabel("BLOCK_M")
        ax.set_title(title, fontsize=10)
        for i, bm in enumerate(bs):
            for j, bn in enumerate(bs):
                c = by[(bm, bn)]
                color = "black"  # on the blank (masked) background
                if np.isfinite(g[i, j]):
                    txt = fmt.format(g[i, j])
                    r, gr, bl, _ = im.cmap(im.norm(g[i, j]))
                    color = "black" if 0.299 * r + 0.587 * gr + 0.114 * bl > 0.5 else "white"
                    if "TFLOP" in title:
                        txt += f"\n{c['num_threads']} thr"
                elif c["status"] in ("failed", "not run (budget)", "skipped"):
                    txt = _cell_text(c)
                else:
                    continue
                ax.text(j, i, txt, ha="center", va="center", fontsize=7, color=color)
    fig.suptitle(f"{_label(rec['shape'])}, forward, on {backend.device_name()}\n"
                 f"HBM: {rec['hbm_model']}", fontsize=9)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/results/block_size_sweep")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the simulator, one config per cell")
    parser.add_argument("--budget-per-shape", type=float, default=45.0, help="seconds of checking+timing per shape")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per config (after one warm-up)")
    parser.add_argument("--target-threads", type=int, default=256,
                        help="round 1 tries, per cell, the threads-per-row giving the block closest to this")
    parser.add_argument("--rounds", type=int, choices=(1, 2), default=2,
                        help="1: one config per cell; 2: then the other threads-per-row choices")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from rich.console import Console

    from numba_flash.results import save

    console = Console()
    if args.smoke:
        shapes, block_sizes = SMOKE_SHAPES, (8, 16)
        args.target_threads, args.rounds, args.repeat = 32, 1, 1
        args.budget_per_shape = min(args.budget_per_shape, 20.0)
    else:
        shapes, block_sizes = GPU_SHAPES, BLOCK_SIZES
        if backend.BACKEND != backend.GPU:
            console.print("[yellow]no GPU: the full sweep would take hours on the simulator; use --smoke[/yellow]")
            return 2
    dtype = "float16"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="numba_flash is running its CUDA kernels under")
        for shape in shapes:
            console.print(f"[bold]{_label({**shape, 'dtype': dtype})}[/bold]: forward, budget {args.budget_per_shape:.0f} s")
            rec = sweep_shape(shape, dtype, block_sizes, args.target_threads, args.rounds, args.budget_per_shape,
                              args.repeat, not args.no_progress)
            print_grid(console, rec)
            name = f"block_size_sweep_D{shape['head_dim']}_N{shape['seqlen']}.png"
            if plot(rec, out / name):
                rec["png"] = name
                console.print(f"wrote {out / name}")
            records.append(rec)

    body = ["Forward pass, not causal; each cell is the best of the num_threads tried for that (BLOCK_M, BLOCK_N), "
            "checked against the float64 oracle before timing (CUDA events, median of "
            f"{args.repeat} after one warm-up). TFLOP/s count 4·B·H·N²·D.", ""]
    if backend.BACKEND == backend.SIMULATOR:
        body += ["**Simulator run (smoke test): the times only show that the code ran.**", ""]
    for rec in records:
        body += [f"## {_label(rec['shape'])}", "",
                 f"best {rec['best']}, default {rec['default']}; trials: {rec['counts']}; "
                 f"{rec['elapsed_s']:.0f} s of a {rec['budget_s']:.0f} s budget", "", grid_markdown(rec), ""]
        if rec.get("png"):
            body += [f"![{_label(rec['shape'])}]({rec['png']})", ""]
    json_path, md_path = save(out, "block_size_sweep", {"shapes": records}, "\n".join(body),
                              title="Block-size sweep: forward TFLOP/s and modelled HBM bytes over (BLOCK_M, BLOCK_N)")
    console.print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
