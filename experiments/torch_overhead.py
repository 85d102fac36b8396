"""What the PyTorch adapter adds on top of the kernels: numba_flash.torch vs the CuPy API, same GPU.

For each shape, forward and forward+backward, three ways on the same data:
  direct   numba_flash.flash_attention(_backward) on CuPy views of the tensors (no autograd)
  adapter  numba_flash.torch.scaled_dot_product_attention with torch autograd
  sdpa     torch's F.scaled_dot_product_attention (default backend), for scale
Per call: wall-clock microseconds over a loop of calls with one synchronisation at the end, the
median of 5 such loops (what
a training loop sees: host time when the GPU work is tiny, GPU time when it is not).

    python experiments/torch_overhead.py --out experiments/results/torch_overhead        # GPU + torch
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numba_flash as nf  # noqa: E402
from numba_flash import backend, results  # noqa: E402

SHAPES = [(1, 1, 128, 64), (1, 16, 256, 64), (4, 16, 1024, 64)]


def _per_call_us(fn, n, sync, trials=5):
    """Medians over ``trials`` loops of ``n`` back-to-back calls: (wall us per call, host us per call).

    Wall: the loop plus one synchronisation at the end. Host: the loop alone, the clock stopped
    before the synchronisation (n is far below the launch queue's depth, so the host never waits
    for the GPU): what the Python side costs per call.
    """
    fn()
    fn()
    sync()
    walls, hosts = [], []
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t1 = time.perf_counter()
        sync()
        walls.append((time.perf_counter() - t0) / n * 1e6)
        hosts.append((t1 - t0) / n * 1e6)
    return sorted(walls)[len(walls) // 2], sorted(hosts)[len(hosts) // 2]


def measure(shape, n, torch, cupy):
    import torch.nn.functional as F

    from numba_flash.torch import scaled_dot_product_attention as nf_sdpa

    B, H, N, D = shape
    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.float16) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    cq, ck, cv, cdo = (cupy.from_dlpack(t) for t in (q, k, v, do))
    sync = torch.cuda.synchronize

    def direct_fb():
        out, lse = nf.flash_attention(cq, ck, cv, causal=True, return_lse=True)
        nf.flash_attention_backward(cdo, cq, ck, cv, out, lse, causal=True)

    def fb(f):
        return lambda: torch.autograd.grad(f(*leaves, is_causal=True), leaves, do)

    rows = []
    for pass_, fns in (("forward", {"direct": lambda: nf.flash_attention(cq, ck, cv, causal=True),
                                    "adapter": lambda: nf_sdpa(q, k, v, is_causal=True),
                                    "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)}),
                       ("forward_backward", {"direct": direct_fb, "adapter": fb(nf_sdpa),
                                             "sdpa": fb(F.scaled_dot_product_attention)})):
        both = {name: _per_call_us(fn, n, sync) for name, fn in fns.items()}
        us = {name: w for name, (w, _) in both.items()}
        host = {name: h for name, (_, h) in both.items()}
        rows.append({"shape": f"{B},{H},{N},{D}", "pass": pass_, **{f"{k}_us": v for k, v in us.items()},
                     **{f"{k}_host_us": v for k, v in host.items()},
                     "adapter_minus_direct_us": us["adapter"] - us["direct"],
                     "adapter_over_direct": us["adapter"] / us["direct"],
                     "direct_host_minus_sdpa_host_us": host["direct"] - host["sdpa"]})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/results/torch_overhead")
    parser.add_argument("--calls", type=int, default=200, help="calls per measurement (tiny shapes)")
    args = parser.parse_args(argv)
    try:
        import cupy
        import torch
    except ImportError as e:
        print(f"skipped: needs PyTorch and CuPy ({e})")
        return 0
    if backend.BACKEND != backend.GPU or not torch.cuda.is_available():
        print("skipped: needs a CUDA GPU")
        return 0
    rows = []
    for shape in SHAPES:
        n = max(20, args.calls // (1 + shape[0] * shape[1] * shape[2] ** 2 // 2**22))
        rows += measure(shape, n, torch, cupy)
    cols = ["shape", "pass", "direct_us", "adapter_us", "sdpa_us", "adapter_minus_direct_us", "direct_host_us",
            "adapter_host_us", "sdpa_host_us", "direct_host_minus_sdpa_host_us"]
    table = results.markdown_table(rows, cols)
    print(table)
    md = ("Microseconds per call (wall clock over a loop, one synchronisation at the end), fp16, causal. "
          "`direct`: numba_flash's CuPy API on the same memory; `adapter`: numba_flash.torch with autograd; "
          "`sdpa`: torch's default SDPA backend. `*_host_us`: the same loop timed before the synchronisation "
          "(host time per call).\n\n" + table + "\n")
    results.save(args.out, "torch_overhead", {"rows": rows}, md, title="numba_flash.torch: overhead of the adapter")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
