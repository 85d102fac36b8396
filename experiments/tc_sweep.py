"""Tensor-core forward: block configurations against SDPA's flash and cuDNN backends, one process.

For each (head_dim, causal) at B*N = 16k tokens and 2048 hidden (the speed issue's shapes), every
TensorCoreConfig in the list is checked against SDPA's MATH backend in float32 (max abs error) and
timed with CUDA events (median), beside SDPA FLASH_ATTENTION and CUDNN_ATTENTION on the same
tensors. Prints a table, writes JSON + Markdown. ``--lock FILE``: time under this file lock, so
several sweeps (one per head_dim, say) can compile in parallel and take turns on the GPU.

    python experiments/tc_sweep.py --out experiments/results/tc_sweep
    python experiments/tc_sweep.py --head-dims 128 --configs 64,32,2,16 64,64,2,16,reread
    python experiments/tc_sweep.py --dtype bfloat16 --head-dims 64 --configs 128,64,2,32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling scripts, however this one is loaded

import numba_flash as nf  # noqa: E402
from atomic_dq import _config, converters  # noqa: E402 - TensorCoreConfig.parse as an argparse type
from numba_flash import backend, launch, results  # noqa: E402
from numba_flash.timing import attention_flops, exclusive, shared, time_ms  # noqa: E402

# TensorCoreConfig.parse strings, per head_dim
CONFIGS = {64: ["64,64,2,16", "128,32,2,32", "128,32,2,32,reread", "128,64,2,16"],
           128: ["64,32,2,16", "64,32,2,16,reread", "64,64,2,16", "64,64,2,16,reread"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/results/tc_sweep")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--seqlen", type=int, default=4096)
    parser.add_argument("--configs", nargs="*", default=None, type=_config,
                        help="TensorCoreConfigs: BM,BN,STAGES,ROWS_PER_WARP[,reread][,longest][,bK] ...")
    parser.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    parser.add_argument("--lock", default=None, help="a file to lock around each timing")
    parser.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    args = parser.parse_args(argv)
    if backend.BACKEND != backend.GPU:
        print("skipped: needs a CUDA GPU")
        return 0
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    bf16 = args.dtype == "bfloat16"
    tdt = torch.bfloat16 if bf16 else torch.float16
    as_nf, to_torch = converters(torch, bf16)
    rows = []
    for D in args.head_dims:
        H = 2048 // D
        N = args.seqlen
        B = 16384 // N
        with shared(args.lock):  # untimed GPU work never overlaps another process's timing
            q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=tdt) for _ in range(3))
        cq, ck, cv = (as_nf(t) for t in (q, k, v))
        for causal in {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]:
            flops = attention_flops(B, H, N, N, D, causal, "forward")
            with shared(args.lock), sdpa_kernel(SDPBackend.MATH):
                want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
                torch.cuda.synchronize()
            base = {}
            for name, be in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
                def run(be=be):
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                with exclusive(args.lock):
                    base[name] = time_ms(run, warmup=5, repeat=30)["median_ms"]
                with shared(args.lock):
                    base[name + "_err"] = float((run().float() - want).abs().max())
            for cfg in args.configs or [_config(c) for c in CONFIGS.get(D, CONFIGS[64])]:
                row = {"D": D, "dtype": args.dtype, "causal": causal, "B": B, "H": H, "N": N, "config": cfg.label()}
                try:
                    def fn(cfg=cfg, causal=causal):
                        return nf.flash_attention(cq, ck, cv, causal=causal, config=cfg, bfloat16=bf16)
                    with shared(args.lock):  # compiles, in parallel with other processes
                        err = float((to_torch(fn()).float() - want).abs().max())
                    with exclusive(args.lock):
                        ms = time_ms(fn, warmup=5, repeat=30)["median_ms"]
                    row.update(ms=ms, tflops=flops / ms / 1e9, max_abs_err=err,
                               vs_flash=base["sdpa_flash"] / ms, vs_cudnn=base["sdpa_cudnn"] / ms)
                    occ = [o for o in launch.occupancy() if o["kernel"] == "tc_forward" and o["config"] == cfg.label()]
                    if occ:  # what the launch bound (min_blocks) and the registers allow
                        row.update(registers=occ[-1]["registers"], blocks_per_sm=occ[-1]["blocks_per_sm"])
                except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
                    row.update(error=f"{type(e).__name__}: {e}"[:200])
                row.update(flash_ms=base["sdpa_flash"], flash_tflops=flops / base["sdpa_flash"] / 1e9,
                           flash_err=base["sdpa_flash_err"], cudnn_ms=base["sdpa_cudnn"],
                           cudnn_tflops=flops / base["sdpa_cudnn"] / 1e9)
                rows.append(row)
                print(row, flush=True)
    cols = ["D", "dtype", "causal", "config", "tflops", "vs_flash", "vs_cudnn", "max_abs_err", "registers",
            "blocks_per_sm", "flash_tflops", "flash_err", "cudnn_tflops", "ms", "flash_ms"]
    table = results.markdown_table(rows, cols)
    print(table)
    md = (f"Tensor-core forward, {args.dtype}, B*N = 16384 tokens, H*D = 2048, against SDPA on the same tensors "
          "(CUDA events, median of 30). `vs_flash`/`vs_cudnn`: their time / ours (> 1: we are faster). "
          "Errors: max |out - SDPA MATH in float32|.\n\n" + table + "\n")
    results.save(args.out, "tc_sweep", {"rows": rows}, md, title="Tensor-core forward: block configurations")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
