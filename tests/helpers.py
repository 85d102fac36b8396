"""Shared test helpers: moving arrays, the naive same-precision baseline, precision-derived bounds."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

from numba_flash import backend
from numba_flash.reference import _probabilities as ref_probabilities, bfloat16_bits, default_scale, visibility_mask

ON_GPU = backend.BACKEND == backend.GPU
# Unit roundoff u = 2^-p of each storage precision: |fl(x) - x| <= u |x| for one rounding.
BF16 = "bfloat16"  # NumPy has no bfloat16: the helpers round to it by hand (to_bf16) where a dtype is BF16
UNIT_ROUNDOFF = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float16): 2.0**-11, BF16: 2.0**-8}


def _key(dtype):
    return BF16 if isinstance(dtype, str) and dtype == BF16 else np.dtype(dtype)


def to_bf16(x) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32."""
    return from_bf16_bits(bf16_bits(x))


def bf16_bits(x) -> np.ndarray:
    """The uint16 bit patterns of ``to_bf16(x)`` (what the API's ``bfloat16=True`` takes)."""
    return bfloat16_bits(np.ascontiguousarray(x, np.float32))


def from_bf16_bits(u) -> np.ndarray:
    """float32 values of bfloat16 bit patterns (exact)."""
    return (np.asarray(u).astype(np.uint32) << np.uint32(16)).view(np.float32)


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(name: str):
    """Import ``experiments/<name>.py`` (a script folder, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"exp_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    return to_bf16(x) if _key(dtype) == BF16 else x.astype(dtype).astype(np.float32)


def _group_sum(dx, group):
    """dK, dV of a GQA kv head: the sum over its group of query heads."""
    B, H, N, D = dx.shape
    return dx.reshape(B, H // group, group, N, D).sum(axis=2)


def naive_attention(q, k, v, dout, causal, scale, dtype, window_size=(-1, -1), z=None):
    """Standard attention in the input precision, as a framework would run it.

    Every matrix product accumulates in fp32 and rounds its result to ``dtype`` (what an fp16 GEMM
    does), and so does the softmax. GQA by repeating k, v (dk, dv summed over the group in fp32
    and rounded); ``z`` = dropout keep mask / (1 - p), applied to the rounded probabilities as a
    framework's dropout layer would. Returns (out, dq, dk, dv) as float64 for comparison.
    """
    dtype = _key(dtype)
    group = q.shape[1] // k.shape[1]
    f = lambda a: a.astype(np.float32)  # noqa: E731
    q, dout = f(q), f(dout)
    k, v = f(np.repeat(k, group, axis=1)), f(np.repeat(v, group, axis=1))
    s = _round(np.float32(scale) * (q @ k.swapaxes(-1, -2)), dtype)
    visible = visibility_mask(q.shape[2], k.shape[2], causal, window_size)
    s = np.where(visible, s, -np.inf).astype(np.float32)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isneginf(m), 0, m)
    e = np.exp(s - m)
    tot = e.sum(-1, keepdims=True)
    p = _round(np.where(tot > 0, e / np.where(tot > 0, tot, 1), 0), dtype)
    zf = np.float32(1.0) if z is None else z.astype(np.float32)
    pz = _round(p * zf, dtype)
    out = _round(pz @ v, dtype)
    dv = _round(_group_sum(pz.swapaxes(-1, -2) @ dout, group), dtype)
    dp = _round(dout @ v.swapaxes(-1, -2), dtype) * zf
    delta = (dout * out).sum(-1, keepdims=True)
    ds = _round(p * (dp - delta), dtype)
    dq = _round(np.float32(scale) * (ds @ k), dtype)
    dk = _round(_group_sum(np.float32(scale) * (ds.swapaxes(-1, -2) @ q), group), dtype)
    return tuple(a.astype(np.float64) for a in (out, dq, dk, dv))


def max_err(got, want):
    """Max |got - want| over finite reference entries; inf if got is non-finite where want is finite."""
    got = np.asarray(got, dtype=np.float64)
    finite = np.isfinite(want)
    if not np.isfinite(got[finite]).all():
        return math.inf
    return float(np.max(np.abs(got[finite] - want[finite]), initial=0.0))


def score_magnitude(q, k, scale):
    """Per query row, max_j scale * sum_d |q_id k_jd|: what the rounding error of a score scales with.

    A score is an fp32 dot product; its rounding error is a few u_fp32 times this sum of absolute
    terms (not times |score|, which cancellation can make far smaller). P = exp(score - lse) then
    carries that absolute error as a *relative* error, so it enters every bound below.
    """
    a = np.abs(np.asarray(q, dtype=np.float64))
    b = np.abs(np.asarray(k, dtype=np.float64))
    return scale * (a @ b.swapaxes(-1, -2)).max(-1)


def _upcast_repeated(q, k, v, dout):
    group = q.shape[1] // k.shape[1]
    q, k, v, dout = (np.asarray(a, dtype=np.float64) for a in (q, k, v, dout))
    return q, np.repeat(k, group, axis=1), np.repeat(v, group, axis=1), dout, group


def absolute_magnitudes(q, k, v, dout, causal, scale, window_size=(-1, -1), z=None):
    """Sums of absolute values behind each output, max over elements, in float64: (out, dq, dk, dv).

    A computed sum is accurate relative to the sum of the absolute values of its terms, not to
    the sum itself (|fl(sum a) - sum a| <= gamma_n sum |a|, Higham 4.3); attention's outputs can
    cancel heavily (out = sum_j P_ij v_j; dS = P (dP - delta) with delta ~ dP when P is one-hot).
    GQA: dk, dv sum their group's terms; dropout: P and dP carry z = keep / (1 - p).
    """
    q, k, v, dout, group = _upcast_repeated(q, k, v, dout)
    p, _, _ = ref_probabilities(q, k, causal, scale, window_size)
    z = 1.0 if z is None else z
    pz = p * z
    out = pz @ v
    dp = dout @ v.swapaxes(-1, -2)
    delta = (dout * out).sum(-1, keepdims=True)
    ds_abs = p * (np.abs(dp) * z + np.abs(delta))
    return (float((pz @ np.abs(v)).max()), float(scale * (ds_abs @ np.abs(k)).max()),
            float(scale * _group_sum(ds_abs.swapaxes(-1, -2) @ np.abs(q), group).max()),
            float(_group_sum(pz.swapaxes(-1, -2) @ np.abs(dout), group).max()))


def delta_sensitivity(q, k, v, dout, causal, scale, window_size=(-1, -1), z=None):
    """How far dq and dk move per unit of relative error in ``out``: (0, dq, dk, 0), max over elements.

    The backward receives ``out`` rounded to the input dtype (as FlashAttention's does), so
    delta_i = sum_d dO_id O_id is off by up to u_dtype * sum_d |dO_id O_id|; that error enters
    dS_ij = P_ij (dP_ij - delta_i) and so dq_i by scale * sum_j P_ij |delta err| |k_j| (dk alike).
    It does not shrink when dq cancels, so it is its own term of the bound.
    """
    q, k, v, dout, group = _upcast_repeated(q, k, v, dout)
    p, _, _ = ref_probabilities(q, k, causal, scale, window_size)
    z = 1.0 if z is None else z
    delta_abs = (np.abs(dout) * np.abs((p * z) @ v)).sum(-1, keepdims=True)
    pd = p * delta_abs
    return (0.0, float(scale * (pd @ np.abs(k)).max()),
            float(scale * _group_sum(pd.swapaxes(-1, -2) @ np.abs(q), group).max()), 0.0)


def error_bound(naive_err, ref, dtype, n_terms, score_mag=0.0, abs_mag=0.0, delta_sens=0.0):
    """The kernels' error budget against the float64 reference.

    Criterion from flash-attn's tests: at most 2x the error of the naive same-precision
    implementation, plus a floor for when that error happens to be tiny (it can be 0 when the
    true value is representable). The floor, relative to max |ref|, is
      * one ulp of the output dtype (2 u_dtype): the final rounding, which fp32 noise can push to
        the far side of a rounding midpoint;
      * fp32 accumulation in the kernel: sums of ``n_terms`` products, error growing like
        sqrt(n) u_fp32 for random data (Higham, ch. 3, probabilistic bound), factor 4 headroom;
      * the score rounding ``score_mag`` u_fp32 (see ``score_magnitude``), factor 4 headroom;
    the last two relative to the sum of absolute terms ``abs_mag`` when that is larger than
    max |ref| (see ``absolute_magnitudes``);
      * for dq and dk, the rounding of ``out`` to the input dtype before the backward reads it:
        2 u_dtype times ``delta_sens`` (see ``delta_sensitivity``; factor 2 headroom).
    """
    mag = float(np.max(np.abs(ref[np.isfinite(ref)]), initial=0.0))
    u_out = UNIT_ROUNDOFF[_key(dtype)]
    u32 = UNIT_ROUNDOFF[np.dtype(np.float32)]
    floor = 2.0 * u_out * mag + 4.0 * u32 * (math.sqrt(n_terms) + float(score_mag)) * max(mag, abs_mag, 1e-30)
    floor += 2.0 * u_out * float(delta_sens)
    return 2.0 * naive_err + floor


def scale_of(softmax_scale, D):
    return default_scale(D) if softmax_scale is None else softmax_scale


def fit_config(config, D, dtype):
    """``config`` if it can run both passes' kernels it names at head_dim ``D`` and ``dtype``, else None
    (the default). A TensorCoreConfig is a float16-only choice; see :func:`backward_config`."""
    from numba_flash.config import BlockConfig, TensorCoreConfig

    if isinstance(config, TensorCoreConfig):
        backward = config.rows_per_warp == 16  # backward_config passes it on (split_d: head_dim % 32 == 0)
        ok = not config.problems(D) and not (backward and config.problems(D, "backward"))
        return config if np.dtype(dtype) == np.float16 and ok else None
    if isinstance(config, BlockConfig) and config.problems(D, "backward"):
        return None
    return config


def backward_config(config):
    """The backward pass's config for a test's drawn config: the tensor-core backward takes 16 rows
    per warp only (None, the default, for a forward-only 32-rows-per-warp config)."""
    from numba_flash.config import TensorCoreConfig

    return None if isinstance(config, TensorCoreConfig) and config.rows_per_warp != 16 else config
