"""The float64 NumPy oracle: attention written the textbook way, N x N matrix and all.

Everything is upcast to float64 before any arithmetic, so these functions are the yardstick the
kernels are measured against, not a fast path. Layout is (batch, heads, seqlen, head_dim).

Semantics shared with the kernels:

* ``softmax_scale`` defaults to ``1 / sqrt(head_dim)``.
* ``causal``: query ``i`` sees key ``j`` when ``j <= i + (Nk - Nq)`` (bottom-right aligned, as in
  FlashAttention >= 2.1; the usual lower triangle when ``Nq == Nk``).
* A query row that sees no key outputs 0, has ``lse = -inf`` and gets zero gradients.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["attention_forward", "attention_backward", "causal_mask", "default_scale"]


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def causal_mask(n_q: int, n_k: int) -> np.ndarray:
    """Boolean (n_q, n_k) matrix, True where query i may attend to key j (bottom-right aligned)."""
    i = np.arange(n_q)[:, None]
    j = np.arange(n_k)[None, :]
    return j <= i + (n_k - n_q)


def _as_f64(name: str, x) -> np.ndarray:
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {a.dtype}")
    if a.ndim != 4:
        raise ValueError(f"{name}: expected 4 dimensions (batch, heads, seqlen, head_dim), got shape {a.shape}")
    return a.astype(np.float64)


def _probabilities(q, k, causal, softmax_scale):
    """P = softmax(scale * Q K^T + mask) in float64, with its log-sum-exp; empty rows give P = 0."""
    scale = default_scale(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    s = scale * (q @ k.swapaxes(-1, -2))
    if causal:
        s = np.where(causal_mask(q.shape[2], k.shape[2]), s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    empty = np.isneginf(m)
    m_safe = np.where(empty, 0.0, m)
    e = np.exp(s - m_safe)  # exp(-inf) = 0 for masked entries
    total = e.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(empty, 0.0, e / np.where(empty, 1.0, total))
        lse = np.where(empty, -np.inf, m_safe + np.log(np.where(empty, 1.0, total)))
    return p, lse[..., 0], scale


def attention_forward(q, k, v, *, causal: bool = False, softmax_scale: float | None = None):
    """Return ``(out, lse)`` in float64: ``out = softmax(scale * q k^T + mask) v``, ``lse`` (B, H, Nq)."""
    q, k, v = _as_f64("q", q), _as_f64("k", k), _as_f64("v", v)
    p, lse, _ = _probabilities(q, k, causal, softmax_scale)
    return p @ v, lse


def attention_backward(dout, q, k, v, *, causal: bool = False, softmax_scale: float | None = None):
    """Return ``(dq, dk, dv)`` in float64, the gradients of ``sum(dout * out)``.

    dV = P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(dO * O));  dQ = scale dS K;  dK = scale dS^T Q.
    """
    dout = _as_f64("dout", dout)
    q, k, v = _as_f64("q", q), _as_f64("k", k), _as_f64("v", v)
    p, _, scale = _probabilities(q, k, causal, softmax_scale)
    out = p @ v
    dv = p.swapaxes(-1, -2) @ dout
    dp = dout @ v.swapaxes(-1, -2)
    delta = (dout * out).sum(axis=-1, keepdims=True)
    ds = p * (dp - delta)
    dq = scale * (ds @ k)
    dk = scale * (ds.swapaxes(-1, -2) @ q)
    return dq, dk, dv
