"""Shared test helpers: moving arrays, the naive same-precision baseline, precision-derived bounds."""

from __future__ import annotations

import math

import numpy as np

from numba_flash import backend
from numba_flash.reference import causal_mask, default_scale

ON_GPU = backend.BACKEND == backend.GPU
# Unit roundoff u = 2^-p of each storage precision: |fl(x) - x| <= u |x| for one rounding.
UNIT_ROUNDOFF = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float16): 2.0**-11}


def to_device(a):
    return backend.array_module().asarray(a)


def to_host(a):
    return backend.array_module().asnumpy(a) if ON_GPU else np.asarray(a)


def random_qkv(rng, B, H, n_q, n_k, D, dtype):
    """Standard-normal q, k, v and an upstream gradient, never zeros, in ``dtype`` on the host."""
    def draw(n):
        return rng.standard_normal((B, H, n, D)).astype(dtype)
    return draw(n_q), draw(n_k), draw(n_k), draw(n_q)


def _round(x, dtype):
    return x.astype(dtype).astype(np.float32)


def naive_attention(q, k, v, dout, causal, scale, dtype):
    """Standard attention in the input precision, as a framework would run it.

    Every matrix product accumulates in fp32 and rounds its result to ``dtype`` (what an fp16 GEMM
    does), and so does the softmax. Returns (out, dq, dk, dv) as float64 for comparison.
    """
    dtype = np.dtype(dtype)
    f = lambda a: a.astype(np.float32)  # noqa: E731
    q, k, v, dout = f(q), f(k), f(v), f(dout)
    s = _round(np.float32(scale) * (q @ k.swapaxes(-1, -2)), dtype)
    if causal:
        s = np.where(causal_mask(q.shape[2], k.shape[2]), s, -np.inf).astype(np.float32)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isneginf(m), 0, m)
    e = np.exp(s - m)
    tot = e.sum(-1, keepdims=True)
    p = _round(np.where(tot > 0, e / np.where(tot > 0, tot, 1), 0), dtype)
    out = _round(p @ v, dtype)
    dv = _round(p.swapaxes(-1, -2) @ dout, dtype)
    dp = _round(dout @ v.swapaxes(-1, -2), dtype)
    delta = (dout * out).sum(-1, keepdims=True)
    ds = _round(p * (dp - delta), dtype)
    dq = _round(np.float32(scale) * (ds @ k), dtype)
    dk = _round(np.float32(scale) * (ds.swapaxes(-1, -2) @ q), dtype)
    return tuple(a.astype(np.float64) for a in (out, dq, dk, dv))


def max_err(got, want):
    """Max |got - want| over finite reference entries; inf if got is non-finite where want is finite."""
    got = np.asarray(got, dtype=np.float64)
    finite = np.isfinite(want)
    if not np.isfinite(got[finite]).all():
        return math.inf
    return float(np.max(np.abs(got[finite] - want[finite]), initial=0.0))


def error_bound(naive_err, ref, dtype, n_terms):
    """The kernels' error budget against the float64 reference.

    Criterion from flash-attn's tests: at most 2x the error of the naive same-precision
    implementation, plus a floor for when that error happens to be tiny. The floor is one
    rounding of the output to ``dtype`` (u_dtype |ref|) plus the fp32 accumulation inside the
    kernel: sums of ``n_terms`` products have a rounding error that grows like sqrt(n) u_fp32 for
    random data (Higham, ch. 3, probabilistic bound), taken with a factor 4 of headroom.
    """
    mag = float(np.max(np.abs(ref[np.isfinite(ref)]), initial=0.0))
    u_out = UNIT_ROUNDOFF[np.dtype(dtype)]
    u32 = UNIT_ROUNDOFF[np.dtype(np.float32)]
    floor = (u_out + 4.0 * math.sqrt(n_terms) * u32) * max(mag, 1e-30)
    return 2.0 * naive_err + floor


def scale_of(softmax_scale, D):
    return default_scale(D) if softmax_scale is None else softmax_scale
