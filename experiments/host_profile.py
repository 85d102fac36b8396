"""Where the host time of a tiny call goes: cProfile of numba_flash's forward (main thread) and of
the adapter's backward inside PyTorch's autograd thread (cProfile follows one thread, so the
backward is profiled from within). Prints the top functions by own time.

    python experiments/host_profile.py > experiments/results/torch_adapter/host_profile.txt
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def top(prof, n=25):
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(n)
    return s.getvalue()


def main() -> int:
    import cupy
    import torch

    import numba_flash as nf
    from numba_flash import torch as nft

    q = cupy.random.standard_normal((1, 1, 128, 64)).astype(cupy.float16)
    for _ in range(20):
        nf.flash_attention(q, q, q)
    cupy.cuda.get_current_stream().synchronize()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(500):
        nf.flash_attention(q, q, q)
    prof.disable()
    print(f"direct forward: {(time.perf_counter() - t0) / 500 * 1e6:.1f} us per call under the profiler")
    print(top(prof))

    tq = [torch.randn(1, 1, 128, 64, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3)]
    do = torch.randn(1, 1, 128, 64, device="cuda", dtype=torch.float16)
    bprof = cProfile.Profile()
    original = nft.FlashAttentionFunction.backward

    def profiled(ctx, *grads):
        bprof.enable()
        try:
            return original(ctx, *grads)
        finally:
            bprof.disable()

    spent = []

    def timed(ctx, *grads):
        t = time.perf_counter()
        try:
            return original(ctx, *grads)
        finally:
            spent.append(time.perf_counter() - t)

    wrap = {"warm": original, "timed": timed, "measure": profiled}
    for phase in ("warm", "timed", "measure"):
        nft.FlashAttentionFunction.backward = staticmethod(wrap[phase])
        t0 = time.perf_counter()
        for _ in range(100):
            out = nft.scaled_dot_product_attention(*tq)
            torch.autograd.grad(out, tq, do)
        torch.cuda.synchronize()
        print(f"adapter fwd+bwd ({phase}): {(time.perf_counter() - t0) / 100 * 1e6:.1f} us per step")
        if phase == "timed":
            print(f"  of which FlashAttentionFunction.backward (no profiler): {sum(spent) / len(spent) * 1e6:.1f} us")
    t0 = time.perf_counter()
    for _ in range(100):
        with torch.no_grad():
            nft.scaled_dot_product_attention(*tq)
    torch.cuda.synchronize()
    print(f"adapter forward under no_grad: {(time.perf_counter() - t0) / 100 * 1e6:.1f} us per call")
    nft.FlashAttentionFunction.backward = staticmethod(original)
    print("adapter backward, inside the autograd thread:")
    print(top(bprof))

    # The same backward timed when the engine runs it in the calling thread: is our Python slower
    # on the engine's device thread, or is the rest of the step the engine's own hand-off?
    spent.clear()
    nft.FlashAttentionFunction.backward = staticmethod(timed)
    with torch.autograd.set_multithreading_enabled(False):
        t0 = time.perf_counter()
        for _ in range(100):
            torch.autograd.grad(nft.scaled_dot_product_attention(*tq), tq, do)
        torch.cuda.synchronize()
    nft.FlashAttentionFunction.backward = staticmethod(original)
    print(f"adapter fwd+bwd, single-threaded autograd: {(time.perf_counter() - t0) / 100 * 1e6:.1f} us per step")
    print(f"  of which FlashAttentionFunction.backward (calling thread): {sum(spent) / len(spent) * 1e6:.1f} us")

    # The whole step in one thread (the engine runs the backward in the calling thread), so one
    # profile sees all of its Python, torch's included.
    step = cProfile.Profile()
    with torch.autograd.set_multithreading_enabled(False):
        for _ in range(20):
            torch.autograd.grad(nft.scaled_dot_product_attention(*tq), tq, do)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step.enable()
        for _ in range(100):
            torch.autograd.grad(nft.scaled_dot_product_attention(*tq), tq, do)
        step.disable()
        torch.cuda.synchronize()
    print(f"adapter fwd+bwd, single-threaded autograd, under the profiler: "
          f"{(time.perf_counter() - t0) / 100 * 1e6:.1f} us per step")
    print(top(step, 40))
    s = io.StringIO()
    pstats.Stats(step, stream=s).sort_stats("cumulative").print_stats(30)
    print(s.getvalue())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
