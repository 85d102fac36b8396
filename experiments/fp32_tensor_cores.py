"""float32 attention on the tensor cores (3xTF32) against SDPA's EFFICIENT backend, same inputs, same GPU.

The speed issue's fp32 target: forward and forward+backward >= 1.0x SDPA's EFFICIENT backend in
float32 (CUTLASS; its float32 kernels multiply as 3xTF32, ``OpMultiplyAddFastF32``), with an error
against float64 no larger than SDPA-efficient's on the same inputs. numba_flash's float32 forward
runs on the tensor cores as 3xTF32 too (:mod:`numba_flash.tc_forward`, ``elem="tf32"``), and so does
its backward (:mod:`numba_flash.tc_backward`); the portable FFMA kernels run beside them for comparison.

Per shape and causal flag:

* forward TFLOP/s of numba_flash (the 3xTF32 default ``default_tc_config(D, elem="tf32")``, each
  ``--config`` TensorCoreConfig, the portable BlockConfig default: float32's ``config=None``) and of
  SDPA EFFICIENT and MATH, CUDA events, median of repeats;
* forward+backward TFLOP/s of numba_flash (3xTF32 forward and backward: the default backward config
  and each ``--bwd-config``; 3xTF32 forward + portable backward) and SDPA EFFICIENT;
* error against float64 (torch's MATH backend in float64, on the first ``--error-batch`` batch
  entries): max |out - ref| / max |ref| of numba_flash's and SDPA-efficient's float32 outputs,
  and of dq, dk, dv for forward+backward; the ratio ours / SDPA's (<= 1 meets the target); the
  portable kernels' errors beside them.

    bash .gpu/env.sh python experiments/fp32_tensor_cores.py --out $OUT/fp32        # H100, ~3 min
    bash .gpu/env.sh python experiments/fp32_tensor_cores.py --defaults-only --shape 4,16,4096,128 --out $OUT/fp32
    python experiments/fp32_tensor_cores.py --shape 2,8,1024,64 --causal no --out /tmp/fp32

Needs the GPU backend and PyTorch with CUDA; elsewhere it says why and exits with status 0.
``--lock FILE``: take this file lock around each timing (several processes compile side by side and
time one at a time).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's numba_flash, uninstalled
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling scripts, however this one is loaded

from atomic_dq import _config  # noqa: E402 - TensorCoreConfig.parse as an argparse type

DEFAULT_SHAPES = ["4,32,4096,64", "4,16,4096,128"]  # B*N = 16k tokens, 2048 hidden: the shapes
DEFAULT_CONFIGS = ["64,64,2,16", "64,32,2,16", "128,32,2,32", "64,64,1,16"]
DEFAULT_BWD_CONFIGS = ["64,16,2,16", "64,32,2,16", "128,32,2,16", "64,32,1,16"]


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        b, h, n, d = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,H,N,D (four integers), got {text!r}") from None
    return b, h, n, d


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", type=_shape, metavar="B,H,N,D", help=f"default {DEFAULT_SHAPES}")
    p.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    p.add_argument("--config", action="append", type=_config, metavar="BM,BN,STAGES,ROWS_PER_WARP[,bK]",
                   help=f"TensorCoreConfigs timed besides the 3xTF32 default (default {DEFAULT_CONFIGS})")
    p.add_argument("--bwd-config", action="append", type=_config, metavar="BM,BN,STAGES,16[,bK]",
                   help=f"TensorCoreConfigs of the backward timed besides its default (default {DEFAULT_BWD_CONFIGS})")
    p.add_argument("--repeat", type=int, default=10, help="timed repeats per measurement")
    p.add_argument("--error-batch", type=int, default=1, help="batch entries checked against float64")
    p.add_argument("--lock", default=None, help="a file to lock around each timing")
    p.add_argument("--defaults-only", action="store_true",
                   help="time and check only the 3xTF32 defaults against SDPA: no extra configs (unless given) and "
                        "no portable FFMA kernels, which take minutes at N = 4096")
    p.add_argument("--no-math", action="store_true",
                   help="do not time SDPA's MATH backend (its float32 N x N matrices take GBs per process)")
    p.add_argument("--chain", type=int, default=None, metavar="K",
                   help="k-steps of S (and dP) chained in the tensor cores per float32 add (config.TF32_CHAIN) for "
                        "this process's kernels")
    p.add_argument("--pv-chain", type=int, default=None, metavar="K",
                   help="the same for the forward's P V over a key tile (config.TF32_PV_CHAIN)")
    p.add_argument("--out", default="experiments/results/fp32_tensor_cores")
    args = p.parse_args(argv)
    for flag, value in (("--chain", args.chain), ("--pv-chain", args.pv_chain)):
        if value is not None and value < 1:
            p.error(f"{flag}: expected a positive number of k-steps, got {value}")
    args.shape = args.shape or [_shape(s) for s in DEFAULT_SHAPES]
    extra, extra_bwd = ([], []) if args.defaults_only else (DEFAULT_CONFIGS, DEFAULT_BWD_CONFIGS)
    args.config = args.config if args.config is not None else [_config(c) for c in extra]
    args.bwd_config = args.bwd_config if args.bwd_config is not None else [_config(c) for c in extra_bwd]
    return args


def rel_err(x, ref) -> float:
    """max |x - ref| / max |ref| (x in float32, ref in float64, both torch tensors)."""
    return float((x.detach().double() - ref).abs().max() / ref.abs().max())


def run(args, torch, console) -> list[dict]:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import numba_flash as nf
    from numba_flash import config as nf_config
    from numba_flash.config import default_config, default_tc_config

    if args.chain is not None:  # read when a kernel is built, so before any build
        nf_config.TF32_CHAIN = args.chain
    if args.pv_chain is not None:
        nf_config.TF32_PV_CHAIN = args.pv_chain
    console.print(f"float32 chains: S, dP {nf_config.TF32_CHAIN} k-steps, P V {nf_config.TF32_PV_CHAIN}")
    from numba_flash.timing import attention_flops, exclusive, shared, time_ms

    def sdpa(backend):
        def fwd(q, k, v, causal):
            with sdpa_kernel(backend), torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        def fwd_bwd(q, k, v, do, causal):
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                return out, torch.autograd.grad(out, (q, k, v), do)

        return fwd, fwd_bwd

    eff_fwd, eff_fwd_bwd = sdpa(SDPBackend.EFFICIENT_ATTENTION)
    math_fwd, _ = sdpa(SDPBackend.MATH)

    def ours_fwd_bwd(q, k, v, do, causal, tc, bwd):  # forward with config tc, backward with bwd
        out, lse = nf.flash_attention(q, k, v, causal=causal, return_lse=True, config=tc)
        return out, nf.flash_attention_backward(do, q, k, v, out, lse, causal=causal, config=bwd)

    def errors(q, k, v, do, causal, tc, tc_bwd, portable, portable_bwd, base):
        """Errors against float64 of our and SDPA-efficient's outputs and gradients on the first
        error-batch entries (same inputs for both)."""
        e = slice(0, args.error_batch)
        q64, k64, v64 = (t[e].double().requires_grad_(True) for t in (q, k, v))
        with sdpa_kernel(SDPBackend.MATH):
            ref = F.scaled_dot_product_attention(q64, k64, v64, is_causal=causal)
            ref_grads = torch.autograd.grad(ref, (q64, k64, v64), do[e].double())
        ref = ref.detach()
        sub = [t[e].contiguous() for t in (q, k, v, do)]
        csub = [nf.backend.array_module().from_dlpack(t) for t in sub]
        ours_out, ours_grads = ours_fwd_bwd(*csub, causal, tc, tc_bwd)
        ours_out, ours_grads = torch.from_dlpack(ours_out), [torch.from_dlpack(g) for g in ours_grads]
        gq, gk, gv = (t.clone().requires_grad_(True) for t in sub[:3])
        eff_out, eff_grads = eff_fwd_bwd(gq, gk, gv, sub[3], causal)
        errs = {"impl": "error vs float64", **base}
        for name, mine, theirs, want in zip(("out", "dq", "dk", "dv"), [ours_out, *ours_grads],
                                            [eff_out, *eff_grads], [ref, *ref_grads]):
            a, b = rel_err(mine, want), rel_err(theirs, want)
            errs[f"{name}_numba_flash"], errs[f"{name}_sdpa_efficient"], errs[f"{name}_ratio"] = a, b, a / b
            console.print(f"  error vs float64 {name}: numba_flash {a:.2e}  sdpa_efficient {b:.2e}  ratio {a / b:.2f}")
        # the portable forward multiplies in plain float32 (FFMA): the error of exact float32 products
        if not args.defaults_only:
            port_out, port_grads = ours_fwd_bwd(*csub, causal, portable, portable_bwd)
            for name, mine, want in zip(("out", "dq", "dk", "dv"), [port_out, *port_grads], [ref, *ref_grads]):
                errs[f"{name}_portable"] = rel_err(torch.from_dlpack(mine), want)
            console.print("  error vs float64, numba_flash portable (FFMA): "
                          + "  ".join(f"{n} {errs[n + '_portable']:.2e}" for n in ("out", "dq", "dk", "dv")))
        del q64, k64, v64, ref, ref_grads
        return errs

    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for (B, H, N, D) in args.shape:
        for causal in {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]:
            q, k, v, do = (torch.randn(B, H, N, D, device="cuda", generator=gen) for _ in range(4))
            cq, ck, cv, cdo = (nf.backend.array_module().from_dlpack(t) for t in (q, k, v, do))
            qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
            fwd_flops = attention_flops(B, H, N, N, D, causal, "forward")
            both_flops = attention_flops(B, H, N, N, D, causal, "forward_backward")
            base = dict(B=B, H=H, N=N, D=D, causal=causal)

            def timed(name, pass_, fn, config=None, flops=None):
                try:
                    with shared(args.lock):  # compile and run once: never during another process's timing
                        fn()
                        torch.cuda.synchronize()
                    with exclusive(args.lock):
                        t = time_ms(fn, repeat=args.repeat)
                except Exception as e:  # e.g. a config that does not fit: recorded, the sweep goes on
                    rows.append({**base, "pass": pass_, "impl": name, "config": config, "status": f"error: {e}"})
                    console.print(f"  {name:28s} {pass_:16s} error: {e}")
                    return None
                tf = (flops or fwd_flops) / (t["median_ms"] * 1e-3) / 1e12
                rows.append({**base, "pass": pass_, "impl": name, "config": config, "status": "ok",
                             "ms": t["median_ms"], "tflops": tf})
                console.print(f"  {name:28s} {pass_:16s} {t['median_ms']:8.3f} ms {tf:7.1f} TFLOP/s")
                return tf

            console.print(f"[bold]B={B} H={H} N={N} D={D} causal={causal}[/bold]")
            tc = default_tc_config(D, False, "forward", "tf32", unmasked=not causal, causal=causal)  # the API's
            tc_bwd = default_tc_config(D, False, "backward", "tf32")
            portable_bwd = default_config(D, np.float32, "backward", simulator=False)
            timed("numba_flash", "forward", lambda: nf.flash_attention(cq, ck, cv, causal=causal, config=tc),
                  config=tc.label())
            for cfg in args.config:
                timed(f"numba_flash {cfg.label()}", "forward",
                      lambda c=cfg: nf.flash_attention(cq, ck, cv, causal=causal, config=c), config=cfg.label())
            portable = default_config(D, np.float32, "forward", simulator=False)
            if not args.defaults_only:
                timed("numba_flash portable", "forward",
                      lambda: nf.flash_attention(cq, ck, cv, causal=causal, config=portable),
                      config=[portable.block_m, portable.block_n, portable.num_threads])
            timed("sdpa_efficient", "forward", lambda: eff_fwd(q, k, v, causal))
            if not args.no_math:
                timed("sdpa_math", "forward", lambda: math_fwd(q, k, v, causal))
            timed("numba_flash", "forward_backward", lambda: ours_fwd_bwd(cq, ck, cv, cdo, causal, tc, tc_bwd),
                  flops=both_flops)
            for cfg in args.bwd_config:
                timed(f"numba_flash bwd {cfg.label()}", "forward_backward",
                      lambda c=cfg: ours_fwd_bwd(cq, ck, cv, cdo, causal, tc, c), flops=both_flops, config=cfg.label())
            if not args.defaults_only:
                timed("numba_flash portable bwd", "forward_backward",
                      lambda: ours_fwd_bwd(cq, ck, cv, cdo, causal, tc, portable_bwd), flops=both_flops)
            timed("sdpa_efficient", "forward_backward", lambda: eff_fwd_bwd(qg, kg, vg, do, causal), flops=both_flops)

            # Under the timing lock: the float64 N x N matrices take GBs, one process at a time.
            with exclusive(args.lock):
                rows.append(errors(q, k, v, do, causal, tc, tc_bwd, portable, portable_bwd, base))
                torch.cuda.empty_cache()
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """One line per (shape, causal): best numba_flash forward, the 3xTF32 default's forward and fwd+bwd, SDPA
    efficient, the ratios, and the error ratios."""
    out = []
    keys = sorted({(r["B"], r["H"], r["N"], r["D"], r["causal"]) for r in rows})
    for key in keys:
        sel = [r for r in rows if (r["B"], r["H"], r["N"], r["D"], r["causal"]) == key]

        def tf(impl, pass_):
            hit = [r for r in sel if r["impl"] == impl and r.get("pass") == pass_ and r["status"] == "ok"]
            return hit[0]["tflops"] if hit else None

        def fastest(pass_):
            hit = [r for r in sel if r["impl"].startswith("numba_flash ") and "portable" not in r["impl"]
                   and r.get("pass") == pass_ and r.get("status") == "ok"]
            return max(hit, key=lambda r: r["tflops"]) if hit else None

        best, best_b = fastest("forward"), fastest("forward_backward")
        eff_f, eff_b = tf("sdpa_efficient", "forward"), tf("sdpa_efficient", "forward_backward")
        ours_f, ours_b = tf("numba_flash", "forward"), tf("numba_flash", "forward_backward")
        err = next((r for r in sel if r["impl"] == "error vs float64"), {})
        out.append({
            "D": key[3], "causal": key[4], "N": key[2], "B,H": f"{key[0]},{key[1]}",
            "fwd nf (default)": ours_f, "fwd nf best": best["tflops"] if best else None,
            "best config": best["impl"].split(" ", 1)[1] if best else "", "fwd portable": tf("numba_flash portable", "forward"),
            "fwd sdpa_eff": eff_f, "fwd ratio": ours_f / eff_f if ours_f and eff_f else None,
            "fwd+bwd nf": ours_b, "fwd+bwd nf best": best_b["tflops"] if best_b else None,
            "best bwd config": best_b["impl"].split(" ", 2)[2] if best_b else "",
            "fwd+bwd portable bwd": tf("numba_flash portable bwd", "forward_backward"),
            "fwd+bwd sdpa_eff": eff_b, "fwd+bwd ratio": ours_b / eff_b if ours_b and eff_b else None,
            "out err ratio": err.get("out_ratio"), "dq err ratio": err.get("dq_ratio"),
            "dk err ratio": err.get("dk_ratio"), "dv err ratio": err.get("dv_ratio"),
        })
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from rich.console import Console

    from numba_flash import config as nf_config
    from numba_flash.bench import torch_for_sdpa
    from numba_flash.results import markdown_table, save

    console = Console()
    torch, why = torch_for_sdpa()
    if torch is None:
        console.print(f"fp32_tensor_cores: {why}; nothing to do")
        return 0
    rows = run(args, torch, console)
    table = summary(rows)
    body = ("TFLOP/s as FlashAttention counts them (4·B·H·N²·D forward, halved when causal, ×3.5 for "
            "forward+backward); ratio = numba_flash / SDPA EFFICIENT (float32, same inputs, same process). "
            "numba_flash's float32 forward and backward: 3xTF32 tensor cores (the default TensorCoreConfigs; `best` is "
            "the fastest of the TensorCoreConfigs tried; `portable bwd`: 3xTF32 forward + the portable FFMA backward). "
            "Error ratio = numba_flash's "
            "max |x - ref| / max |ref| over SDPA-efficient's, ref = float64 MATH on the first batch entries "
            "(<= 1: no larger error).\n\n" + markdown_table(table) + "\n\n## Every measurement\n\n"
            + markdown_table([r for r in rows if r["impl"] != "error vs float64"],
                             ["B", "H", "N", "D", "causal", "pass", "impl", "config", "ms", "tflops", "status"])
            + "\n\n## Errors against float64\n\n"
            + markdown_table([r for r in rows if r["impl"] == "error vs float64"], floatfmt=".3g"))
    paths = save(args.out, "fp32_tensor_cores", {"rows": rows, "summary": table,
                                                 "args": {"shape": args.shape, "causal": args.causal,
                                                          "config": [c.label() for c in args.config],
                                                          "bwd_config": [c.label() for c in args.bwd_config],
                                                          "repeat": args.repeat, "error_batch": args.error_batch,
                                                          "defaults_only": args.defaults_only,
                                                          "tf32_chain": nf_config.TF32_CHAIN,
                                                          "tf32_pv_chain": nf_config.TF32_PV_CHAIN}},
                 body, title=f"float32 on the tensor cores (3xTF32) vs SDPA EFFICIENT (chains: S, dP {nf_config.TF32_CHAIN}; P V {nf_config.TF32_PV_CHAIN})")
    console.print(markdown_table(table))
    console.print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
