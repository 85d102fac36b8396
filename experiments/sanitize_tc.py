"""A small run of the tensor-core kernels, forward and backward, for compute-sanitizer:

    compute-sanitizer --tool racecheck python experiments/sanitize_tc.py
    compute-sanitizer --tool memcheck --report-api-errors no python experiments/sanitize_tc.py

(Without ``--report-api-errors no`` memcheck counts 34 failed ``cuGetProcAddress`` calls, cuda-python's
driver-symbol probing at start-up: API errors, not device ones.)

Ragged sizes (97 queries, 83 keys: partial tiles on both sides, zero-filled copies), causal and
not, the default config and the one-buffer one, varlen with dropout; the backward (delta, dK/dV,
dQ kernels) on the default config, causal, and varlen with dropout. Prints the max errors.

``--backward-only`` skips the forward variants (the forward still runs to give out and lse).
``--wide-only`` runs only the head_dim-128 unmasked forward default, one block of 8 warps with 64-key
tiles (``default_tc_config(128, unmasked=True)``), at 300 x 517 tokens (a partial query block and key tile).
``--split-only`` runs only the head_dim-128 backward default, whose dK/dV kernel is the split_d one (two warps
per 32 keys, P^T and dS^T through shared memory), at 150 x 200 tokens with GQA (4 query heads, 2 kv heads),
causal and not.
``--float32-only`` runs only the float32 (3xTF32) forward and backward defaults at head_dim 64 and 128, 300 x 280
tokens with GQA (4 query heads, 2 kv heads: 38 query tiles per key block), causal and not: enough tiles for the
dK/dV kernel's second-level sums to be flushed twice (shared slots at 64, dK and dV in global memory at 128);
``--head-dim 64`` or ``--head-dim 128`` after it runs only that one (a process per head_dim, so that each
compiles under the tool within a device call's limit). ``--atomic`` with it: the float32 backward defaults
with ``atomic_dq=True`` instead (dS^T through a float32 shared tile, dQ by ``red.global.add`` into dq).
"""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy  # noqa: E402
import numpy as np  # noqa: E402

import numba_flash as nf  # noqa: E402


def wide() -> int:
    """The head_dim-128 unmasked forward default alone (see the module docstring)."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, n, 128)).astype(np.float16) for n in (300, 517, 517))
    cfg = nf.config.default_tc_config(128, unmasked=True)
    out = nf.flash_attention(*(cupy.asarray(a) for a in (q, k, v)), config=cfg)
    cupy.cuda.get_current_stream().synchronize()
    want = nf.reference.attention_forward(q, k, v)[0]
    print(f"{cfg}: max abs error {float(np.abs(cupy.asnumpy(out).astype(np.float64) - want).max()):.3e}")
    return 0


def _gqa_backward(label: str, rng, dtype, n_q: int, n_k: int, d: int, config=None) -> None:
    """Forward and backward at 4 query heads over 2 kv heads, causal and not; print the max errors."""
    q, do = (rng.standard_normal((1, 4, n_q, d)).astype(dtype) for _ in range(2))
    k, v = (rng.standard_normal((1, 2, n_k, d)).astype(dtype) for _ in range(2))
    dev = [cupy.asarray(a) for a in (q, k, v)]
    for causal in (False, True):
        out, lse = nf.flash_attention(*dev, causal=causal, return_lse=True)
        grads = nf.flash_attention_backward(cupy.asarray(do), *dev, out, lse, causal=causal, config=config)
        want = nf.reference.attention_backward(do, q, k, v, causal=causal)
        errs = [float(np.abs(cupy.asnumpy(g).astype(np.float64) - w).max()) for g, w in zip(grads, want)]
        print(f"{label} causal={causal}: max abs error dq {errs[0]:.3e} dk {errs[1]:.3e} dv {errs[2]:.3e}")


def split() -> int:
    """The head_dim-128 backward default (split_d dK/dV) alone (see the module docstring)."""
    cfg = nf.config.default_tc_config(128, pass_="backward")
    assert cfg.split_d, cfg
    _gqa_backward(str(cfg), np.random.default_rng(0), np.float16, 150, 200, 128, cfg)
    return 0


def float32(head_dims=(64, 128), atomic=False) -> int:
    """The float32 defaults alone, or their backward with atomic dQ (see the module docstring)."""
    rng = np.random.default_rng(0)
    for d in head_dims:
        cfg = None
        if atomic:
            cfg = dataclasses.replace(nf.config.default_tc_config(d, pass_="backward", elem="tf32"), atomic_dq=True)
        _gqa_backward(f"float32 head_dim {d}" + (f" {cfg}" if atomic else ""), rng, np.float32, 300, 280, d, cfg)
    return 0


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--float32-only" in args:
        if "--head-dim" in args:
            d = int(args[args.index("--head-dim") + 1])
            if d not in (64, 128):
                raise SystemExit(f"--head-dim: expected 64 or 128, got {d}")
            return float32((d,), "--atomic" in args)
        return float32(atomic="--atomic" in args)
    if "--wide-only" in args:
        return wide()
    if "--split-only" in args:
        return split()
    backward_only = "--backward-only" in args
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, n, 64)).astype(np.float16) for n in (97, 83, 83))
    do = rng.standard_normal(q.shape).astype(np.float16)
    dq_, dk_, dv_, ddo = (cupy.asarray(a) for a in (q, k, v, do))
    worst = 0.0
    for config in (None,) if backward_only else (None, nf.TensorCoreConfig(16, 16, 1)):
        for causal in (False, True):
            out = nf.flash_attention(dq_, dk_, dv_, causal=causal, config=config)
            want = nf.reference.attention_forward(q, k, v, causal=causal)[0]
            worst = max(worst, float(np.abs(cupy.asnumpy(out).astype(np.float64) - want).max()))
    out, lse = nf.flash_attention(dq_, dk_, dv_, causal=True, return_lse=True)
    grads = nf.flash_attention_backward(ddo, dq_, dk_, dv_, out, lse, causal=True)
    want = nf.reference.attention_backward(do, q, k, v, causal=True)
    worst_grad = max(float(np.abs(cupy.asnumpy(g).astype(np.float64) - w).max()) for g, w in zip(grads, want))
    cu = cupy.asarray(np.array([0, 40, 97], np.int32))
    cuk = cupy.asarray(np.array([0, 50, 83], np.int32))
    pq, pk, pv, pdo = (cupy.asarray(a[0].transpose(1, 0, 2).copy()) for a in (q, k, v, do))
    out, lse = nf.flash_attention_varlen(pq, pk, pv, cu, cuk, 57, 50, causal=True, dropout_p=0.2, seed=7,
                                         return_lse=True)
    nf.flash_attention_varlen_backward(pdo, pq, pk, pv, out, lse, cu, cuk, 57, 50, causal=True, dropout_p=0.2,
                                       seed=7)
    cupy.cuda.get_current_stream().synchronize()
    print(f"max abs error: forward {worst:.3e}, gradients {worst_grad:.3e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
