"""The float64 NumPy oracle: attention written the textbook way, N x N matrix and all.

Everything is upcast to float64 before any arithmetic, so these functions are the yardstick the
kernels are measured against, not a fast path. Layout is (batch, heads, seqlen, head_dim).

Semantics shared with the kernels:

* ``softmax_scale`` defaults to ``1 / sqrt(head_dim)``.
* Masking. With ``diag = Nk - Nq``, query ``i`` sees key ``j`` when all of these hold
  (:func:`visibility_mask`):

  - ``causal``: ``j <= i + diag`` (bottom-right aligned, as in FlashAttention >= 2.1; the usual
    lower triangle when ``Nq == Nk``);
  - ``window_size = (left, right)``, a sliding window around the same diagonal:
    ``j >= i + diag - left`` unless ``left < 0``, and ``j <= i + diag + right`` unless
    ``right < 0``. ``(-1, -1)`` is no window; ``causal`` with ``(left, -1)`` equals ``(left, 0)``.
* A query row that sees no key outputs 0, has ``lse = -inf`` and gets zero gradients.
* Grouped-query / multi-query attention: ``k`` and ``v`` may have ``H_kv`` heads where ``q`` has
  ``H_q``, with ``H_q % H_kv == 0``; query head ``h`` reads kv head ``h // (H_q // H_kv)``. The
  backward returns ``dk`` and ``dv`` with ``H_kv`` heads, each the sum over its group of query
  heads.
* Dropout on the attention probabilities, with ``Z = M / (1 - dropout_p)`` for the boolean keep
  mask ``M`` (B, H_q, Nq, Nk) passed as ``dropout_mask`` (required when ``dropout_p > 0``, ignored
  when it is 0; the kernels' mask is :func:`numba_flash.philox.reference_keep_mask`):

  - forward: ``out = (P * Z) @ V``; ``lse`` is that of the undropped ``P``;
  - backward: ``dV = (P * Z)^T dO``, ``dP = (dO V^T) * Z``, ``delta = rowsum(dO * out)`` (which
    equals ``rowsum(P * dP)``), ``dS = P * (dP - delta)``, ``dQ = scale dS K``,
    ``dK = scale dS^T Q``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .philox import validate_dropout_p

__all__ = [
    "attention_forward",
    "attention_backward",
    "causal_mask",
    "default_scale",
    "visibility_mask",
]

NO_WINDOW = (-1, -1)


def bfloat16_bits(x):
    """The uint16 bit patterns of the bfloat16 values nearest (ties to even) to the float32 array
    ``x`` (NumPy or CuPy: the arithmetic stays on x's device). What ``bfloat16=True`` takes, since
    NumPy and CuPy have no bfloat16 dtype; ``(bits.astype(uint32) << 16).view(float32)`` reads them back."""
    b = x.view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def _window(window_size) -> tuple[int, int]:
    """``window_size`` as two ints, negative meaning unbounded on that side."""
    try:
        left, right = window_size
    except (TypeError, ValueError):
        raise TypeError(f"window_size: expected a pair (left, right) of ints, got {window_size!r}") from None
    for x in (left, right):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
            raise TypeError(f"window_size: expected a pair (left, right) of ints, got {window_size!r}")
    return int(left), int(right)


def visibility_mask(n_q: int, n_k: int, causal: bool = False, window_size=NO_WINDOW) -> np.ndarray:
    """Boolean (n_q, n_k) matrix, True where query i may attend to key j (see the module docstring)."""
    left, right = _window(window_size)
    i = np.arange(n_q)[:, None]
    j = np.arange(n_k)[None, :]
    diag = i + (n_k - n_q)  # the key aligned with query i: bottom-right alignment
    visible = np.ones((n_q, n_k), dtype=bool)
    if left >= 0:
        visible &= j >= diag - left
    if right >= 0:
        visible &= j <= diag + right
    if causal:
        visible &= j <= diag
    return visible


def causal_mask(n_q: int, n_k: int) -> np.ndarray:
    """Boolean (n_q, n_k) matrix, True where query i may attend to key j (bottom-right aligned)."""
    return visibility_mask(n_q, n_k, causal=True)


def _as_f64(name: str, x) -> np.ndarray:
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {a.dtype}")
    if a.ndim != 4:
        raise ValueError(f"{name}: expected 4 dimensions (batch, heads, seqlen, head_dim), got shape {a.shape}")
    return a.astype(np.float64)


def _kv_group(q, k, v) -> int:
    """How many query heads share one kv head; checks that the shapes of q, k, v fit together."""
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"k: expected batch and head_dim of q {q.shape}, got shape {k.shape}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v: expected batch, heads and seqlen of k {k.shape}, got shape {v.shape}")
    h_q, h_kv = q.shape[1], k.shape[1]
    if h_kv == 0 or h_q % h_kv:
        raise ValueError(f"k, v: the {h_kv} kv heads must divide the {h_q} query heads (GQA/MQA)")
    return h_q // h_kv


def _repeat_heads(x, group):
    """(B, H_kv, N, D) -> (B, H_kv * group, N, D), kv head g serving query heads g*group .. g*group+group-1."""
    return x if group == 1 else np.repeat(x, group, axis=1)


def _sum_groups(dx, group):
    """Inverse bookkeeping of ``_repeat_heads`` for gradients: sum each group of query heads."""
    if group == 1:
        return dx
    B, H, N, D = dx.shape
    return dx.reshape(B, H // group, group, N, D).sum(axis=2)


def _probabilities(q, k, causal, softmax_scale, window_size=NO_WINDOW):
    """P = softmax(scale * Q K^T + mask) in float64, with its log-sum-exp; empty rows give P = 0.

    ``k`` may have fewer heads than ``q`` (GQA); they are repeated to match.
    """
    k = _repeat_heads(k, q.shape[1] // k.shape[1])
    scale = default_scale(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    s = scale * (q @ k.swapaxes(-1, -2))
    visible = visibility_mask(q.shape[2], k.shape[2], causal, window_size)
    if not visible.all():
        s = np.where(visible, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    empty = np.isneginf(m)
    m_safe = np.where(empty, 0.0, m)
    e = np.exp(s - m_safe)  # exp(-inf) = 0 for masked entries
    total = e.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(empty, 0.0, e / np.where(empty, 1.0, total))
        lse = np.where(empty, -np.inf, m_safe + np.log(np.where(empty, 1.0, total)))
    return p, lse[..., 0], scale


def _dropout_scale(dropout_p, dropout_mask, shape):
    """Z = M / (1 - p) as float64 of ``shape``, or None when there is no dropout."""
    p = validate_dropout_p(dropout_p)
    if p == 0.0:
        return None
    if dropout_mask is None:
        raise ValueError("dropout_mask: required when dropout_p > 0 (e.g. philox.reference_keep_mask)")
    m = np.asarray(dropout_mask)
    if m.dtype != np.bool_:
        raise TypeError(f"dropout_mask: expected a boolean keep mask, got dtype {m.dtype}")
    if m.shape != shape:
        raise ValueError(f"dropout_mask: expected shape (batch, query heads, seqlen_q, seqlen_k) = {shape}, got {m.shape}")
    return m / (1.0 - p)


def attention_forward(q, k, v, *, causal: bool = False, softmax_scale: float | None = None,
                      window_size=NO_WINDOW, dropout_p: float = 0.0, dropout_mask=None):
    """Return ``(out, lse)`` in float64: ``out = dropout(softmax(scale * q k^T + mask)) v``, ``lse`` (B, H_q, Nq).

    ``lse`` is the log-sum-exp of the scaled, masked scores, before dropout.
    """
    q, k, v = _as_f64("q", q), _as_f64("k", k), _as_f64("v", v)
    group = _kv_group(q, k, v)
    p, lse, _ = _probabilities(q, k, causal, softmax_scale, window_size)
    z = _dropout_scale(dropout_p, dropout_mask, p.shape)
    pz = p if z is None else p * z
    return pz @ _repeat_heads(v, group), lse


def attention_backward(dout, q, k, v, *, causal: bool = False, softmax_scale: float | None = None,
                       window_size=NO_WINDOW, dropout_p: float = 0.0, dropout_mask=None):
    """Return ``(dq, dk, dv)`` in float64, the gradients of ``sum(dout * out)``; dk, dv have k's heads.

    With Z = M / (1 - p) (Z = 1 without dropout) and K, V repeated to the query heads:
    dV = (P Z)^T dO;  dP = (dO V^T) Z;  dS = P * (dP - rowsum(dO * O));  dQ = scale dS K;
    dK = scale dS^T Q; then dK and dV summed over each group of query heads sharing a kv head.
    """
    dout = _as_f64("dout", dout)
    q, k, v = _as_f64("q", q), _as_f64("k", k), _as_f64("v", v)
    group = _kv_group(q, k, v)
    if dout.shape != q.shape[:3] + v.shape[3:]:
        raise ValueError(f"dout: expected the shape of the output {q.shape[:3] + v.shape[3:]}, got {dout.shape}")
    k, v = _repeat_heads(k, group), _repeat_heads(v, group)
    p, _, scale = _probabilities(q, k, causal, softmax_scale, window_size)
    z = _dropout_scale(dropout_p, dropout_mask, p.shape)
    pz = p if z is None else p * z
    out = pz @ v
    dv = pz.swapaxes(-1, -2) @ dout
    dp = dout @ v.swapaxes(-1, -2)
    if z is not None:
        dp = dp * z
    delta = (dout * out).sum(axis=-1, keepdims=True)
    ds = p * (dp - delta)
    dq = scale * (ds @ k)
    dk = scale * (ds.swapaxes(-1, -2) @ q)
    return dq, _sum_groups(dk, group), _sum_groups(dv, group)
