"""Where the adapter's host time goes on a tiny problem, and what PyTorch's autograd engine costs
by itself (GPU + torch).

The adapter's forward+backward was measured at ~1 ms per step against ~0.2 ms for the same
kernels called directly; its backward runs in the autograd engine's device thread. To tell the
adapter's own Python from the engine's hand-off, this times, per call (wall clock over a loop,
one synchronisation at the end, median of 5 loops):

* ``direct``: the CuPy API; ``adapter``: numba_flash.torch; ``sdpa``: torch's default SDPA.
* ``identity_fn``: an ``autograd.Function`` that only clones its input (one tiny kernel each way):
  the floor any Python-level autograd Function pays.
* ``*_cuda_graph``: the step through ``torch.cuda.make_graphed_callables`` (launches recorded once,
  replayed per step).
* ``*_single_thread``: the same steps with ``torch.autograd.set_multithreading_enabled(False)``,
  so the backward runs in the calling thread instead of the engine's device thread.
* ``python_loop_*``: a fixed piece of pure Python (summing 2000 ints) timed in the main thread and
  inside a backward (the engine's thread): whether Python itself runs slower there.
* ``*_param_buffer|param_pointers``: the two ways ``numba_flash.launch`` can hand a launch's
  parameters to the driver (``launch.PARAM_BUFFER``).

    bash .gpu/env.sh python experiments/torch_overhead_breakdown.py --out $OUT/breakdown
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from numba_flash import backend, results  # noqa: E402


def _per_call_us(fn, sync, n=200, trials=5):
    for _ in range(3):
        fn()
    sync()
    walls = []
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        walls.append((time.perf_counter() - t0) / n * 1e6)
    return sorted(walls)[trials // 2]


def _python_work():
    t = time.perf_counter()
    sum(range(2000))
    return (time.perf_counter() - t) * 1e6


def measure(shape, torch, cupy):
    import torch.nn.functional as F

    import numba_flash as nf
    from numba_flash.torch import scaled_dot_product_attention as nf_sdpa

    q, k, v, do = (torch.randn(*shape, device="cuda", dtype=torch.float16) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    cq, ck, cv, cdo = (cupy.from_dlpack(t) for t in (q, k, v, do))
    co, cl = nf.flash_attention(cq, ck, cv, causal=True, return_lse=True)
    sync = torch.cuda.synchronize

    inside = []

    class Identity(torch.autograd.Function):
        probe = False  # when set, the backward also times a fixed piece of Python on its thread

        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            if Identity.probe:
                inside.append(_python_work())
            return g

    def step(f):
        return lambda: torch.autograd.grad(f(*leaves, is_causal=True), leaves, do)

    res = {
        "direct_forward": _per_call_us(lambda: nf.flash_attention(cq, ck, cv, causal=True), sync),
        "direct_backward": _per_call_us(lambda: nf.flash_attention_backward(cdo, cq, ck, cv, co, cl, causal=True),
                                        sync),
        "adapter_forward_no_grad": _per_call_us(lambda: nf_sdpa(q, k, v, is_causal=True), sync),
        "sdpa_forward_no_grad": _per_call_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), sync),
        "adapter_fwd_bwd": _per_call_us(step(nf_sdpa), sync),
        "sdpa_fwd_bwd": _per_call_us(step(F.scaled_dot_product_attention), sync),
        "identity_fn_fwd_bwd": _per_call_us(lambda: torch.autograd.grad(Identity.apply(leaves[0]), leaves[0], do),
                                            sync),
    }
    # Under CUDA graphs (torch.cuda.make_graphed_callables): the step replays recorded launches,
    # so neither our Python nor the engine's hand-off is paid per step any more.
    for name, f in (("adapter", nf_sdpa), ("sdpa", F.scaled_dot_product_attention)):
        g = torch.cuda.make_graphed_callables(lambda a, b, c, f=f: f(a, b, c, is_causal=True), tuple(leaves))
        res[f"{name}_fwd_bwd_cuda_graph"] = _per_call_us(lambda: torch.autograd.grad(g(*leaves), leaves, do), sync)
    with torch.autograd.set_multithreading_enabled(False):
        res["adapter_fwd_bwd_single_thread"] = _per_call_us(step(nf_sdpa), sync)
        res["sdpa_fwd_bwd_single_thread"] = _per_call_us(step(F.scaled_dot_product_attention), sync)
        res["identity_fn_fwd_bwd_single_thread"] = _per_call_us(
            lambda: torch.autograd.grad(Identity.apply(leaves[0]), leaves[0], do), sync)
    from numba_flash import launch

    default = launch.PARAM_BUFFER
    for buffer in (False, True):
        launch.PARAM_BUFFER = buffer
        how = "param_buffer" if buffer else "param_pointers"
        res[f"direct_forward_{how}"] = _per_call_us(lambda: nf.flash_attention(cq, ck, cv, causal=True), sync)
        res[f"direct_backward_{how}"] = _per_call_us(
            lambda: nf.flash_attention_backward(cdo, cq, ck, cv, co, cl, causal=True), sync)
    launch.PARAM_BUFFER = default
    main = sorted(_python_work() for _ in range(200))
    Identity.probe = True
    for _ in range(200):
        torch.autograd.grad(Identity.apply(leaves[0]), leaves[0], do)
    Identity.probe = False
    res["python_loop_main_thread"] = main[100]
    res["python_loop_autograd_thread"] = sorted(inside)[len(inside) // 2]
    return [{"shape": ",".join(map(str, shape)), "what": name, "us": us} for name, us in res.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="experiments/results/torch_overhead_breakdown")
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
    rows = measure((1, 1, 128, 64), torch, cupy)
    table = results.markdown_table(rows, ["shape", "what", "us"])
    print(table)
    md = ("Microseconds per call, fp16 causal, wall clock over 200 calls with one synchronisation (median of 5 "
          "loops); `python_loop_*`: one fixed piece of pure Python, median of 200 timings.\n\n" + table + "\n")
    results.save(args.out, "torch_overhead_breakdown", {"rows": rows}, md,
                 title="numba_flash.torch: where a tiny step's host time goes")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
