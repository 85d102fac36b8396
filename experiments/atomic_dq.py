"""The backward with dQ by atomic adds (FlashAttention-2's layout) against the two-kernel one and SDPA.

The two-kernel tensor-core backward (``TensorCoreConfig(..., atomic_dq=False)``, deterministic) does 7
matrix products per tile pair: the dK/dV kernel S^T, dP^T, dV, dK; the dQ kernel S, dP again, dQ.
With ``atomic_dq=True`` the dK/dV kernel also writes dS^T to shared memory and adds dS K into a
float32 dQ with ``red.global.add.v2.f32``: 5 products, as FlashAttention-2 does, at the price of
a float32 dQ in HBM, N / block_m atomic adds per dQ element, and dQ's sums in arrival order.

Per shape, dtype and causal flag, in one process on one GPU, CUDA events (median):

* backward-only and forward+backward TFLOP/s of numba_flash with the deterministic default backward
  config and each ``--bwd-config`` (``BM,BN,STAGES,16[,atomic][,reread][,split][,longest][,bK]``,
  ``TensorCoreConfig.parse``), and of SDPA's FLASH_ATTENTION backend (its backward: atomic dQ too);
* error of dq, dk, dv against float64 (torch's MATH backend on the first batch entry), max |x - ref|
  / max |ref|, for the deterministic default, each ``--bwd-config`` and SDPA flash, and the default's
  over SDPA's (``dq_ratio``...: <= 1 meets the speed issue's error target);
* how far two atomic runs' dq differ (max |dq1 - dq2| / max |dq1|): the price of the arrival order;
* every kernel launched, with its registers and resident blocks per SM (``launch.occupancy``).

    bash .gpu/env.sh python experiments/atomic_dq.py --out $OUT/atomic_dq          # H100
    python experiments/atomic_dq.py --shape 2,8,1024,64 --causal no --bwd-config 64,32,2,16,1
    bash .gpu/env.sh python experiments/atomic_dq.py --dtype float32 --shape 4,32,4096,64 --interleave 3 --out $OUT/f32

``--dtype float32`` runs the 3xTF32 backward against SDPA's EFFICIENT backend, since SDPA's flash backend
takes no float32: the issue's float32 target, timed in rotating rounds. Its atomic-dQ configs (session 21)
add scale dS K straight into the float32 dq (no scratch dQ, no conversion kernel):

    bash .gpu/env.sh python experiments/atomic_dq.py --dtype float32 --shape 4,16,4096,128 --interleave 3 \
        --bwd-config 64,16,2,16,atomic --bwd-config 128,16,2,16,atomic

Needs the GPU backend and PyTorch with CUDA; elsewhere it says why and exits with status 0.
``--interleave ROUNDS``: time each pass's configs and SDPA in turns (``timing.time_interleaved``),
ROUNDS rounds of ``--repeat`` calls each, and report each one's spread of round medians: timed one
after the other, the same kernels measured 12 % apart in one process (results/blocks-2026-11-24/call7).
``--lock FILE``: take this file lock around each timing (several processes, e.g. one per head_dim,
then compile side by side and time one at a time).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's numba_flash, uninstalled

DEFAULT_SHAPES = ["4,32,4096,64", "4,16,4096,128"]  # B*N = 16k tokens, 2048 hidden: the shapes
DEFAULT_BWD_CONFIGS = {64: ["64,32,2,16,1", "128,32,2,16,1"], 128: ["64,16,2,16,1", "128,32,2,16,1"]}


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        b, h, n, d = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,H,N,D (four integers), got {text!r}") from None
    return b, h, n, d


def _config(text: str):
    from numba_flash.config import TensorCoreConfig

    try:
        return TensorCoreConfig.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def converters(torch, bf16: bool):
    """``(to_numba_flash, to_torch)``: a torch CUDA tensor as this backend's array and back. bfloat16
    travels as its bit patterns (uint16; CuPy has no bfloat16), the API's ``bfloat16=True`` form."""
    import numba_flash as nf

    xp = nf.backend.array_module()
    if not bf16:
        return xp.from_dlpack, torch.from_dlpack
    return (lambda t: xp.from_dlpack(t.view(torch.int16)).view("uint16"),
            lambda a: torch.from_dlpack(a.view("int16")).view(torch.bfloat16))


def label(cfg) -> str:
    return cfg.label()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", type=_shape, metavar="B,H,N,D", help=f"default {DEFAULT_SHAPES}")
    p.add_argument("--dtype", action="append", choices=("float16", "bfloat16", "float32"),
                   help="default float16; float32 runs the 3xTF32 kernels against SDPA's EFFICIENT backend")
    p.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    p.add_argument("--bwd-config", action="append", type=_config,
                   metavar="BM,BN,STAGES,16[,atomic][,reread][,split][,longest][,bK]",
                   help=f"backward TensorCoreConfigs besides the default (default per head_dim: {DEFAULT_BWD_CONFIGS})")
    p.add_argument("--default-only", action="store_true",
                   help="without --bwd-config: only the default backward config against SDPA (fewer compiles)")
    p.add_argument("--skip-default", action="store_true",
                   help="with --bwd-config: time only those configs against SDPA, not the default (fewer compiles; "
                        "several processes can then time one config each)")
    p.add_argument("--repeat", type=int, default=10, help="timed repeats per measurement")
    p.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                   help="time the configs and SDPA of each pass in turns, ROUNDS rounds of --repeat calls "
                        "(timing.time_interleaved; the rows then carry each one's spread of round medians)")
    p.add_argument("--lock", default=None, help="a file to lock around each timing")
    p.add_argument("--sums-ksteps", type=int, default=None, metavar="K",
                   help="float32: flush the dK/dV kernel's register sums every K k-steps (8 queries each) "
                        "instead of config.TF32_SUMS_KSTEPS; set before any kernel is built, so one value per process")
    p.add_argument("--out", default="experiments/results/atomic_dq")
    args = p.parse_args(argv)
    args.shape = args.shape or [_shape(s) for s in DEFAULT_SHAPES]
    args.dtype = args.dtype or ["float16"]
    if args.skip_default and not args.bwd_config:
        p.error("--skip-default needs at least one --bwd-config")
    if args.sums_ksteps is not None and args.sums_ksteps < 1:
        p.error(f"--sums-ksteps: expected a positive number of k-steps, got {args.sums_ksteps}")
    return args


def run(args, torch, console) -> list[dict]:

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import numba_flash as nf
    from numba_flash.config import default_tc_config, tc_elem
    from numba_flash.timing import attention_flops, exclusive, shared, time_interleaved, time_ms

    def turn():
        return exclusive(args.lock)

    def rel_err(x, ref) -> float:
        return float((x.detach().double() - ref).abs().max() / ref.abs().max())

    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for (B, H, N, D) in args.shape:
        configs = (args.bwd_config if args.bwd_config is not None else []
                   if args.default_only else [_config(c) for c in DEFAULT_BWD_CONFIGS.get(D, [])])
        for dtype in args.dtype:
            bf16 = dtype == "bfloat16"
            tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
            # the baseline: SDPA's FlashAttention-2 backend, which takes no float32; for float32 its
            # EFFICIENT one (CUTLASS, 3xTF32), the speed issue's float32 bar
            backend, sdpa_name = ((SDPBackend.EFFICIENT_ATTENTION, "sdpa_efficient") if dtype == "float32"
                                  else (SDPBackend.FLASH_ATTENTION, "sdpa_flash"))
            for causal in {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]:
                with shared(args.lock):  # untimed GPU work never overlaps another process's timing
                    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=tdt, generator=gen) for _ in range(4))
                    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
                as_nf, to_torch = converters(torch, bf16)
                cq, ck, cv, cdo = (as_nf(t) for t in (q, k, v, do))
                with shared(args.lock):
                    out, lse = nf.flash_attention(cq, ck, cv, causal=causal, return_lse=True, bfloat16=bf16)
                    torch.cuda.synchronize()
                base = dict(B=B, H=H, N=N, D=D, dtype=dtype, causal=causal)
                flops = {p: attention_flops(B, H, N, N, D, causal, p) for p in ("forward", "forward_backward")}
                flops["backward"] = flops["forward_backward"] - flops["forward"]

                def time_pass(pass_, fns, configs=None):
                    """Time ``fns`` (name -> callable) for ``pass_``: each compiled outside the lock, then
                    timed under it, one after the other, or (--interleave) all in rotating rounds. A
                    failure (a config that does not fit) is recorded and the others go on."""
                    configs = configs or {}
                    ok, res = {}, {}
                    for name, fn in fns.items():
                        try:
                            with shared(args.lock):  # compile (in parallel with other processes), run once
                                fn()
                                torch.cuda.synchronize()
                            if not args.interleave:
                                with turn():
                                    res[name] = time_ms(fn, repeat=args.repeat)
                            ok[name] = fn
                        except Exception as e:
                            rows.append({**base, "pass": pass_, "impl": name, "config": configs.get(name),
                                         "status": f"error: {e}"})
                            console.print(f"  {name:28s} {pass_:16s} error: {e}")
                    if args.interleave and ok:
                        with turn():
                            res = time_interleaved(ok, rounds=args.interleave, repeat=args.repeat)
                    for name, t in res.items():
                        tf = flops[pass_] / (t["median_ms"] * 1e-3) / 1e12
                        spread = {k: t[k] for k in ("spread", "round_medians") if k in t}
                        rows.append({**base, "pass": pass_, "impl": name, "config": configs.get(name), "status": "ok",
                                     "ms": t["median_ms"], "tflops": tf, **spread})
                        console.print(f"  {name:28s} {pass_:16s} {t['median_ms']:8.3f} ms {tf:7.1f} TFLOP/s"
                                      + (f"  (round medians spread {t['spread']:.3f})" if spread else ""))

                def ours_bwd(cfg):
                    return nf.flash_attention_backward(cdo, cq, ck, cv, out, lse, causal=causal, config=cfg,
                                                       bfloat16=bf16)

                def ours_both(cfg):
                    o, l_ = nf.flash_attention(cq, ck, cv, causal=causal, return_lse=True, bfloat16=bf16)
                    return nf.flash_attention_backward(cdo, cq, ck, cv, o, l_, causal=causal, config=cfg, bfloat16=bf16)

                def sdpa_both():
                    with sdpa_kernel(backend):
                        o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                        return torch.autograd.grad(o, (qg, kg, vg), do)

                with shared(args.lock), sdpa_kernel(backend):
                    o_s = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
                    torch.cuda.synchronize()

                def sdpa_bwd():
                    return torch.autograd.grad(o_s, (qg, kg, vg), do, retain_graph=True)

                console.print(f"[bold]B={B} H={H} N={N} D={D} {dtype} causal={causal}[/bold]")
                det = default_tc_config(D, False, "backward", tc_elem(cq.dtype))  # the API's choice for these arrays
                timed = ([] if args.skip_default else [det]) + configs
                if args.interleave:
                    names = {f"numba_flash {label(c)}": c for c in timed}
                    labels = {n: label(c) for n, c in names.items()}
                    time_pass("backward", {**{n: (lambda c=c: ours_bwd(c)) for n, c in names.items()},
                                           sdpa_name: sdpa_bwd}, labels)
                    time_pass("forward_backward", {**{n: (lambda c=c: ours_both(c)) for n, c in names.items()},
                                                   sdpa_name: sdpa_both}, labels)
                else:  # in this order, a config given twice timed twice
                    for cfg in timed:
                        name = f"numba_flash {label(cfg)}"
                        time_pass("backward", {name: lambda c=cfg: ours_bwd(c)}, {name: label(cfg)})
                        time_pass("forward_backward", {name: lambda c=cfg: ours_both(c)}, {name: label(cfg)})
                    time_pass("backward", {sdpa_name: sdpa_bwd})
                    time_pass("forward_backward", {sdpa_name: sdpa_both})

                # Errors against float64 on the first batch entry, and the atomic runs' spread.
                with shared(args.lock):  # the error checks run the kernels too
                    e = slice(0, 1)
                    q64, k64, v64 = (t[e].double().requires_grad_(True) for t in (q, k, v))
                    with sdpa_kernel(SDPBackend.MATH):
                        ref = F.scaled_dot_product_attention(q64, k64, v64, is_causal=causal)
                        ref_grads = torch.autograd.grad(ref, (q64, k64, v64), do[e].double())
                    sub = [t[e].contiguous() for t in (q, k, v, do)]
                    csub = [as_nf(t) for t in sub]
                    o1, l1 = nf.flash_attention(*csub[:3], causal=causal, return_lse=True, bfloat16=bf16)
                    errs = {**base, "impl": "error vs float64"}
                    checked = ([] if args.skip_default else [("deterministic", det)]) + [(label(c), c) for c in configs
                                                                                         if c != det]
                    for name, cfg in checked:
                        g = nf.flash_attention_backward(csub[3], *csub[:3], o1, l1, causal=causal, config=cfg, bfloat16=bf16)
                        for n_, mine, want in zip(("dq", "dk", "dv"), g, ref_grads):
                            errs[f"{n_}_{name}"] = rel_err(to_torch(mine), want)
                        if cfg.atomic_dq:
                            g2 = nf.flash_attention_backward(csub[3], *csub[:3], o1, l1, causal=causal, config=cfg,
                                                             bfloat16=bf16)
                            a, b = to_torch(g[0]).double(), to_torch(g2[0]).double()
                            errs[f"dq_{name}_run_to_run"] = float((a - b).abs().max() / a.abs().max())
                    gq, gk, gv = (t.clone().requires_grad_(True) for t in sub[:3])
                    with sdpa_kernel(backend):
                        o_f = F.scaled_dot_product_attention(gq, gk, gv, is_causal=causal)
                        sg = torch.autograd.grad(o_f, (gq, gk, gv), sub[3])
                    for n_, theirs, want in zip(("dq", "dk", "dv"), sg, ref_grads):
                        errs[f"{n_}_{sdpa_name}"] = rel_err(theirs, want)
                        # the default's (or with --skip-default the first config's) over SDPA's
                        errs[f"{n_}_ratio"] = errs[f"{n_}_{checked[0][0]}"] / errs[f"{n_}_{sdpa_name}"]
                    console.print("  errors vs float64: " + "  ".join(f"{k_} {v_:.2e}" for k_, v_ in errs.items()
                                                                      if k_.startswith(("dq_", "dk_", "dv_"))))
                rows.append(errs)
                del q64, k64, v64, ref, ref_grads, o_s
                torch.cuda.empty_cache()
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """One line per (shape, dtype, causal, pass): the deterministic default, the fastest atomic config,
    the SDPA baseline (flash; efficient for float32), and the ratios."""
    out = []
    keys = sorted({(r["D"], r["dtype"], r["causal"], r["pass"]) for r in rows if "pass" in r})
    for D, dtype, causal, pass_ in keys:
        sel = [r for r in rows if (r["D"], r["dtype"], r["causal"], r.get("pass")) == (D, dtype, causal, pass_)
               and r["status"] == "ok"]
        ours = [r for r in sel if r["impl"].startswith("numba_flash")]
        det = next((r for r in ours if "atomic" not in r["impl"]), None)
        atomic = max((r for r in ours if "atomic" in r["impl"]), key=lambda r: r["tflops"], default=None)
        flash = next((r for r in sel if r["impl"] in ("sdpa_flash", "sdpa_efficient")), None)
        f = flash["tflops"] if flash else None
        out.append({"D": D, "dtype": dtype, "causal": causal, "pass": pass_,
                    "deterministic": det["tflops"] if det else None, "det config": det["config"] if det else "",
                    "atomic best": atomic["tflops"] if atomic else None, "atomic config": atomic["config"] if atomic else "",
                    "baseline": flash["impl"] if flash else "", "sdpa": f,
                    "det / sdpa": det["tflops"] / f if det and f else None,
                    "atomic / sdpa": atomic["tflops"] / f if atomic and f else None,
                    "atomic / det": atomic["tflops"] / det["tflops"] if atomic and det else None})
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from rich.console import Console

    from numba_flash.bench import torch_for_sdpa
    from numba_flash.results import markdown_table, save

    console = Console()
    if args.sums_ksteps is not None:
        import numba_flash.tc_backward as tcb

        tcb.TF32_SUMS_KSTEPS = args.sums_ksteps  # read when a dK/dV kernel is built (FLUSH), so before any build
    torch, why = torch_for_sdpa()
    if torch is None:
        console.print(f"atomic_dq: {why}; nothing to do")
        return 0
    rows = run(args, torch, console)
    table = summary(rows)
    from numba_flash import launch

    occupancy = launch.occupancy()  # every kernel launched: registers, and blocks per SM at its launch shape
    console.print(markdown_table(occupancy))
    body = ("TFLOP/s as FlashAttention counts them (4·B·H·N²·D forward, halved when causal; backward = 2.5× "
            "forward, forward+backward 3.5×); numba_flash's forward is its default in every forward+backward. "
            "`deterministic`: the default two-kernel backward config; `atomic best`: the fastest atomic-dQ config "
            "tried; ratios against SDPA in the same process (`baseline`: FLASH_ATTENTION, or EFFICIENT_ATTENTION for "
            "float32).\n\n" + markdown_table(table)
            + "\n\n## Every measurement\n\n"
            + markdown_table([r for r in rows if r["impl"] != "error vs float64"],
                             ["B", "H", "N", "D", "dtype", "causal", "pass", "impl", "config", "ms", "tflops", "spread",
                              "status"])
            + "\n\n## Errors against float64 (max |x - ref| / max |ref|, first batch entry)\n\n"
            + markdown_table([r for r in rows if r["impl"] == "error vs float64"], floatfmt=".3g")
            + "\n\n## Kernels launched: registers and resident blocks per SM (the driver's occupancy calculator)\n\n"
            + markdown_table(occupancy))
    paths = save(args.out, "atomic_dq", {"rows": rows, "summary": table, "occupancy": occupancy,
                                         "args": {"shape": args.shape, "dtype": args.dtype, "causal": args.causal,
                                                  "bwd_config": None if args.bwd_config is None
                                                  else [label(c) for c in args.bwd_config],
                                                  "repeat": args.repeat, "interleave": args.interleave,
                                                  "sums_ksteps": args.sums_ksteps}},
                 body, title="Backward with atomic dQ vs the two-kernel backward vs SDPA")
    console.print(markdown_table(table))
    console.print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
