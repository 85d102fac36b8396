"""Block order (``TensorCoreConfig.longest_first``): the default config against itself with the longest blocks
first across heads, and SDPA, in one process.

The GPU starts blocks in the order of their linear index (x fastest). Our grids are (row blocks, heads,
batch entries): under a causal band each head's longest blocks start first, but head after head, so the
last wave mixes the last heads' long blocks with short ones and SMs idle at the end. ``longest_first``
makes the row block the slowest part of the index. Two halves:

* the model (no GPU): greedy list scheduling of the blocks, work proportional to the key (or query) tiles
  each visits, on ``SMs x resident blocks`` slots; makespan of each order over the ideal (total / slots);
* the measurement (GPU): per dtype, head_dim and causal flag, at B*N = 16k tokens and 2048 hidden (the
  speed issue's shapes), forward and backward of the API's default config with and without
  ``longest_first`` and SDPA (FLASH_ATTENTION for 16-bit, EFFICIENT for float32) timed in rotating rounds
  (``timing.time_interleaved``); the two orders' outputs compared bit for bit (each block does the same
  sums whichever order it starts in); the kernels' resident blocks per SM (``launch.occupancy``). The JSON and
  Markdown are rewritten after every row, so a run cut off keeps what it measured (session 20's were cut while
  compiling and left only their logs: ``--tabulate`` reads those).

    python experiments/block_order.py --model-only
    bash .gpu/env.sh python experiments/block_order.py --out $OUT/block_order --dtype float16 --head-dims 128
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's numba_flash, uninstalled
sys.path.insert(0, str(Path(__file__).resolve().parent))

SMS = 132  # H100 SXM


def makespan(works: list[float], slots: int) -> float:
    """Greedy list scheduling: each block, in order, goes to the slot that frees first."""
    heap = [0.0] * slots
    end = 0.0
    for w in works:
        t = heapq.heappop(heap) + w
        end = max(end, t)
        heapq.heappush(heap, t)
    return end


def schedule_model(row_blocks: int, pairs: int, slots: int, causal: bool = True, overhead: float = 0.5) -> dict:
    """Both orders' makespans over the ideal for ``row_blocks`` blocks per (head, batch entry) ``pairs``,
    longest first within a head: under a causal band block i visits ``row_blocks - i`` tiles of the other
    side (plus ``overhead`` tiles' worth of prologue and epilogue), else ``row_blocks``.

    ``paired_over_ideal``: an order not built, for comparison: each block takes row blocks i and
    ``row_blocks - 1 - i`` of one head in turn (equal work per block), in head order, so a head's blocks still
    run side by side (what the default order keeps for L2 and longest first gives up)."""
    work = [(row_blocks - i if causal else row_blocks) + overhead for i in range(row_blocks)]
    by_head = [w for _ in range(pairs) for w in work]
    longest = [w for w in work for _ in range(pairs)]
    half = [work[i] + (work[row_blocks - 1 - i] if row_blocks - 1 - i != i else 0) for i in range((row_blocks + 1) // 2)]
    paired = [w for _ in range(pairs) for w in half]
    ideal = sum(by_head) / slots
    a, b = makespan(by_head, slots), makespan(longest, slots)
    return {"row_blocks": row_blocks, "pairs": pairs, "slots": slots, "causal": causal,
            "by_head_over_ideal": a / ideal, "longest_first_over_ideal": b / ideal, "predicted_speedup": a / b,
            "paired_over_ideal": makespan(paired, slots) / ideal}


def model_rows(seqlen: int = 4096, tokens: int = 16384, hidden: int = 2048) -> list[dict]:
    """The model at the speed issue's shapes for the defaults' row blocks (64, 128, 256) and 1-3 blocks per SM."""
    rows = []
    for d in (64, 128):
        pairs = tokens // seqlen * (hidden // d)
        for block in (64, 128, 256):
            for per_sm in (1, 2, 3):
                rows.append({"D": d, "block": block, "blocks_per_sm": per_sm,
                             **schedule_model(seqlen // block, pairs, SMS * per_sm)})
    return rows


_HEAD = re.compile(r"(\w+) B=(\d+) H=(\d+) N=(\d+) D=(\d+) causal=(True|False)")
_LINE = re.compile(r"(forward|backward)\s+by head ([\d.]+) ms \(([\d.]+)x (\w+)\), longest first ([\d.]+) ms\s*"
                   r"\(([\d.]+)x\), speedup ([\d.]+), outputs identical: (True|False), spread ([\d.]+)")


def rows_from_log(text: str) -> list[dict]:
    """The measured rows a run printed (its console log), for runs cut off before they saved their JSON;
    rich may wrap a row's line, so the text is read with line breaks as spaces."""
    rows = []
    flat = " ".join(text.splitlines())
    heads = [(m.start(), m) for m in _HEAD.finditer(flat)]
    for m in _LINE.finditer(flat):
        before = [h for pos, h in heads if pos < m.start()]
        if not before:
            continue
        dtype, B, H, N, D, causal = before[-1].groups()
        head = dict(dtype=dtype, B=int(B), H=int(H), N=int(N), D=int(D), causal=causal == "True")
        pass_, by, by_r, sdpa, lf, lf_r, speed, same, spread = m.groups()
        rows.append({**head, "pass_": pass_, "by_head_ms": float(by), "longest_first_ms": float(lf), "sdpa": sdpa,
                     "by_head_vs_sdpa": float(by_r), "longest_first_vs_sdpa": float(lf_r),
                     "longest_first_speedup": float(speed), "identical": same == "True", "spread": float(spread)})
    return rows


def tabulate(paths: list[Path]) -> list[dict]:
    """Rows of block_order.json files and of console logs (``rows_from_log``), each with its source."""
    rows = []
    for path in paths:
        if path.suffix == ".json":
            found = json.loads(path.read_text())["rows"]
        else:
            found = rows_from_log(path.read_text())
        rows += [{**r, "source": str(path)} for r in found]
    return sorted(rows, key=lambda r: (r["pass_"], not r["causal"], r["D"], r["dtype"]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="experiments/results/block_order")
    p.add_argument("--dtype", action="append", choices=("float16", "bfloat16", "float32"), help="default float16")
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--seqlen", type=int, default=4096)
    p.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    p.add_argument("--passes", nargs="+", choices=("forward", "backward"), default=["forward", "backward"])
    p.add_argument("--rounds", type=int, default=3, help="rotating rounds (timing.time_interleaved)")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per round")
    p.add_argument("--lock", default=None, help="a file to lock around each timing")
    p.add_argument("--model-only", action="store_true", help="print the scheduling model and exit (no GPU)")
    p.add_argument("--tabulate", nargs="+", type=Path, metavar="FILE",
                   help="no measurement: one table of these block_order.json files and console logs, into --out")
    p.add_argument("--forward-config", action="append", default=[], metavar="BM,BN,STAGES,RPW[,flags]",
                   help="another forward config to time beside the two (TensorCoreConfig.parse; repeatable)")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ["float16"]
    from numba_flash.config import TensorCoreConfig
    try:
        args.forward_config = [TensorCoreConfig.parse(c) for c in args.forward_config]
    except ValueError as e:
        p.error(f"--forward-config: {e}")
    for name in ("rounds", "repeat", "seqlen"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: expected a positive integer, got {getattr(args, name)}")
    if 16384 % args.seqlen:
        p.error(f"--seqlen: expected a divisor of 16384 (B x N = 16k tokens), got {args.seqlen}")
    return args


def measure(args, torch, console, on_row=None) -> list[dict]:
    """The measured rows; ``on_row(rows)`` after each (the script saves them: a run cut off keeps what it had)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import numba_flash as nf
    from atomic_dq import converters
    from numba_flash import launch
    from numba_flash.config import default_tc_config, tc_elem
    from numba_flash.timing import attention_flops, exclusive, shared, time_interleaved

    xp = nf.backend.array_module()
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    N = args.seqlen
    for dtype in args.dtype:
        bf16 = dtype == "bfloat16"
        tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
        backend, sdpa_name = ((SDPBackend.EFFICIENT_ATTENTION, "sdpa_efficient") if dtype == "float32"
                              else (SDPBackend.FLASH_ATTENTION, "sdpa_flash"))
        for D in args.head_dims:
            B, H = 16384 // N, 2048 // D
            for causal in {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]:
                with shared(args.lock):
                    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=tdt, generator=gen) for _ in range(4))
                    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
                as_nf, _ = converters(torch, bf16)
                cq, ck, cv, cdo = (as_nf(t) for t in (q, k, v, do))
                elem = tc_elem(cq.dtype)  # (bfloat16 travels as uint16: "bf16")
                console.print(f"[bold]{dtype} B={B} H={H} N={N} D={D} causal={causal}[/bold]")
                for pass_ in args.passes:
                    api_choice = default_tc_config(D, False, pass_, elem, unmasked=not causal, causal=causal)
                    cfg = dataclasses.replace(api_choice, longest_first=False)
                    lf = dataclasses.replace(cfg, longest_first=True)
                    base = dict(dtype=dtype, B=B, H=H, N=N, D=D, causal=causal, pass_=pass_, config=cfg.label(),
                                default=api_choice.label())
                    if pass_ == "forward":
                        def ours(c):
                            return nf.flash_attention(cq, ck, cv, causal=causal, config=c, return_lse=True,
                                                      bfloat16=bf16)

                        def sdpa():
                            with sdpa_kernel(backend):
                                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    else:
                        with shared(args.lock):  # the backward's saved out and lse
                            out, lse = nf.flash_attention(cq, ck, cv, causal=causal, return_lse=True, bfloat16=bf16)

                        def ours(c):
                            return nf.flash_attention_backward(cdo, cq, ck, cv, out, lse, causal=causal, config=c,
                                                               bfloat16=bf16)

                        with shared(args.lock), sdpa_kernel(backend):
                            o_s = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)

                        def sdpa():
                            return torch.autograd.grad(o_s, (qg, kg, vg), do, retain_graph=True)
                    with shared(args.lock):  # compile both, and compare their outputs bit for bit
                        a, b = ours(cfg), ours(lf)
                        torch.cuda.synchronize()
                        same = all(bool(xp.array_equal(x, y)) for x, y in zip(a, b))
                        blocks = {r["kernel"]: r["blocks_per_sm"] for r in launch.occupancy()
                                  if r["config"] in (cfg.label(), lf.label())}
                    fns = {"by_head": lambda: ours(cfg), "longest_first": lambda: ours(lf), sdpa_name: sdpa}
                    others = [c for c in (args.forward_config if pass_ == "forward" else [])
                              if c not in (cfg, lf) and not c.problems(D, pass_, elem)]
                    with shared(args.lock):
                        for c in others:  # compiled outside the timing
                            ours(c)
                    fns.update({c.label(): (lambda c=c: ours(c)) for c in others})
                    with exclusive(args.lock):
                        t = time_interleaved(fns, rounds=args.rounds, repeat=args.repeat)
                    flops = attention_flops(B, H, N, N, D, causal, "forward" if pass_ == "forward" else "backward")
                    ms = {name: t[name]["median_ms"] for name in fns}
                    row = {**base, **{f"{n}_ms": m for n, m in ms.items()},
                           **{f"{n}_tflops": flops / (m * 1e-3) / 1e12 for n, m in ms.items()},
                           "by_head_vs_sdpa": ms[sdpa_name] / ms["by_head"],
                           "longest_first_vs_sdpa": ms[sdpa_name] / ms["longest_first"],
                           "longest_first_speedup": ms["by_head"] / ms["longest_first"],
                           "spread": max(t[n]["spread"] for n in fns), "identical": same,
                           "blocks_per_sm": blocks,
                           "others_vs_sdpa": {c.label(): ms[sdpa_name] / ms[c.label()] for c in others}}
                    rows.append(row)
                    if on_row is not None:
                        on_row(rows)
                    console.print(f"  {pass_:9s} by head {ms['by_head']:.3f} ms ({row['by_head_vs_sdpa']:.3f}x "
                                  f"{sdpa_name}), longest first {ms['longest_first']:.3f} ms "
                                  f"({row['longest_first_vs_sdpa']:.3f}x), speedup {row['longest_first_speedup']:.3f}, "
                                  f"outputs identical: {same}, spread {row['spread']:.3f}"
                                  + "".join(f", {n} {r:.3f}x" for n, r in row["others_vs_sdpa"].items()))
                    if not same:
                        console.print("  [red]the two orders' outputs differ[/red]")
                del q, k, v, do, qg, kg, vg, cq, ck, cv, cdo
                torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    from rich.console import Console

    from numba_flash import backend, results

    console = Console()
    if args.tabulate:
        rows = tabulate(args.tabulate)
        cols = ["dtype", "D", "causal", "pass_", "by_head_vs_sdpa", "longest_first_vs_sdpa", "longest_first_speedup",
                "spread", "identical", "source"]
        body = ("Re-tabulated: the header's device is the machine that made this table; each row's source "
                "(its run's log or JSON, and that call's gpu.txt) says where it was measured.\n\n"
                + results.markdown_table(rows, cols))
        paths = results.save(args.out, "block_order_all", {"args": {k: str(v) for k, v in vars(args).items()},
                                                           "rows": rows}, body,
                             title="Block order: the runs' rows in one table")
        console.print(body)
        console.print(f"wrote {paths[0]} and {paths[1]}")
        return 0
    model = model_rows(args.seqlen)
    console.print(results.markdown_table(model, ["D", "block", "blocks_per_sm", "row_blocks", "pairs", "slots",
                                                 "by_head_over_ideal", "longest_first_over_ideal",
                                                 "predicted_speedup", "paired_over_ideal"]))
    if args.model_only:
        return 0
    if backend.BACKEND != backend.GPU:
        print("skipped the measurement: needs a CUDA GPU (--model-only prints the model alone)")
        return 0
    try:
        import torch
    except ImportError:
        print("skipped the measurement: needs PyTorch for SDPA")
        return 0
    cols = ["dtype", "D", "causal", "pass_", "config", "by_head_vs_sdpa", "longest_first_vs_sdpa",
            "longest_first_speedup", "spread", "identical", "blocks_per_sm", "others_vs_sdpa"]

    def save(rows):  # after every row
        body = ("## Measured\n\n" + results.markdown_table(rows, cols) + "\n\n## Model (greedy list scheduling)\n\n"
                + results.markdown_table(model))
        return results.save(args.out, "block_order", {"args": vars(args), "rows": rows, "model": model}, body,
                            title="Block order: longest first across heads against by head")

    rows = measure(args, torch, console, on_row=save)
    paths = save(rows)
    console.print(f"wrote {paths[0]} and {paths[1]}")
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
