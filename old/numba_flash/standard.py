"""Standard attention, the way a framework runs it without FlashAttention: the N x N matrices live
in HBM. The baseline for speed, memory and HBM traffic (CuPy on a GPU, NumPy on the simulator).

Forward: S = scale Q K^T (written), P = softmax(S) (written, and kept for the backward), O = P V.
Backward, reading the stored P: dV = P^T dO; dP = dO V^T; dS = P (dP - rowsum(dO O)); dQ = scale dS K;
dK = scale dS^T Q. Matmuls in the input dtype (fp32 accumulation in cuBLAS), softmax in fp32.
"""

from __future__ import annotations

import math

import numpy as np

from . import backend


def _xp():
    return backend.array_module()


def _mask(xp, n_q, n_k):
    i = xp.arange(n_q)[:, None]
    j = xp.arange(n_k)[None, :]
    return j <= i + (n_k - n_q)


def forward(q, k, v, *, causal=False, softmax_scale=None):
    """Return ``(out, p)``: the output and the N x N probabilities that a backward would read."""
    xp = _xp()
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    s = xp.matmul(q, k.swapaxes(-1, -2)).astype(np.float32) * np.float32(scale)
    if causal:
        s = xp.where(_mask(xp, q.shape[2], k.shape[2]), s, np.float32(-np.inf))
    m = s.max(axis=-1, keepdims=True)
    m = xp.where(xp.isneginf(m), np.float32(0), m)
    p = xp.exp(s - m)
    del s
    p /= xp.maximum(p.sum(axis=-1, keepdims=True), np.float32(1e-30))
    p = p.astype(q.dtype)
    return xp.matmul(p, v), p


def backward(dout, q, k, v, out, p, *, softmax_scale=None):
    """Gradients from the stored probabilities ``p`` (no recomputation)."""
    xp = _xp()
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    dv = xp.matmul(p.swapaxes(-1, -2), dout)
    dp = xp.matmul(dout, v.swapaxes(-1, -2)).astype(np.float32)
    delta = (dout.astype(np.float32) * out.astype(np.float32)).sum(axis=-1, keepdims=True)
    ds = (p.astype(np.float32) * (dp - delta)).astype(q.dtype)
    del dp
    dq = xp.matmul(ds, k) * q.dtype.type(scale)
    dk = xp.matmul(ds.swapaxes(-1, -2), q) * q.dtype.type(scale)
    return dq, dk, dv
