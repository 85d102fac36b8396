"""The public entry points: check the input, pick a configuration, launch the kernels.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape
or value) naming the argument and what was expected, before anything is launched. Inputs are
only read, never written.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

from . import backend
from .backward import delta_kernel, dkdv_kernel, dq_kernel
from .config import BlockConfig, check_head_dim, default_config
from .forward import forward_kernel

SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
# Grid dimensions y and z (heads, batch) are limited to 65535 by CUDA.
_MAX_GRID_YZ = 65535
_DELTA_THREADS = 128

# When true, outputs are filled with NaN before each launch, so an element a kernel forgets to
# write shows up as NaN instead of as plausible leftover memory. The tests turn it on.
POISON_OUTPUTS = os.environ.get("NUMBA_FLASH_POISON", "0") not in ("", "0")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _as_array(name: str, x):
    """Return ``x`` as this backend's array type (CuPy on the GPU, NumPy on the simulator), no copy."""
    if backend.BACKEND == backend.SIMULATOR:
        if hasattr(x, "__cuda_array_interface__"):
            raise TypeError(
                f"{name}: got a CUDA device array ({type(x).__name__}), but numba_flash is running on the "
                "CUDA simulator (no GPU): pass a host numpy.ndarray"
            )
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray on the simulator backend, got {type(x).__name__}")
        # The simulator only transfers contiguous buffers; the GPU kernels index strided arrays directly.
        return np.ascontiguousarray(x)
    cupy = backend.array_module()
    if isinstance(x, cupy.ndarray):
        return x
    if isinstance(x, np.ndarray):
        raise TypeError(
            f"{name}: got a host numpy.ndarray, but the GPU kernels need device arrays: "
            f"use cupy.asarray({name}) (or set NUMBA_FLASH_BACKEND=simulator to run on the CPU)"
        )
    try:
        if hasattr(x, "__cuda_array_interface__"):
            return cupy.asarray(x)  # zero-copy view, e.g. of a numba device array
        if hasattr(x, "__dlpack__"):
            return cupy.from_dlpack(x)  # zero-copy, e.g. a torch CUDA tensor
    except Exception as e:  # e.g. a dtype CuPy cannot represent (bfloat16) or a CPU tensor
        raise TypeError(
            f"{name}: could not view {type(x).__name__} as a CUDA array ({e}); expected a float16 or "
            "float32 CUDA array"
        ) from e
    raise TypeError(
        f"{name}: expected a CUDA device array (CuPy, or an object with __cuda_array_interface__ or "
        f"DLPack), got {type(x).__name__}"
    )


def _check_dtype(name: str, a) -> None:
    if a.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: dtype {a.dtype} is not supported; expected float16 or float32")


def _check_qkv(q, k, v):
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim != 4:
            raise ValueError(f"{name}: expected 4 dimensions (batch, heads, seqlen, head_dim), got shape {a.shape}")
        _check_dtype(name, a)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v: expected one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, n_q, D = q.shape
    for name, a in (("k", k), ("v", v)):
        if a.shape[0] != B or a.shape[1] != H or a.shape[3] != D:
            raise ValueError(
                f"{name}: expected batch, heads and head_dim ({B}, {H}, *, {D}) to match q, got shape {a.shape}"
            )
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k, v: expected the same sequence length, got {k.shape[2]} and {v.shape[2]}")
    for name, a in (("q", q), ("k", k)):
        if 0 in a.shape:
            raise ValueError(f"{name}: every dimension must be at least 1, got shape {a.shape}")
    check_head_dim(D)
    if B > _MAX_GRID_YZ or H > _MAX_GRID_YZ:
        raise ValueError(f"q: batch and heads must each be at most {_MAX_GRID_YZ}, got shape {q.shape}")
    return B, H, n_q, k.shape[2], D


def _check_scale(softmax_scale, head_dim: int):
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
        raise TypeError(f"softmax_scale: expected a positive finite float or None, got {type(softmax_scale).__name__}")
    value = float(softmax_scale)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"softmax_scale: expected a positive finite float or None, got {softmax_scale!r}")
    return value


def _check_causal(causal):
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    return bool(causal)


def _check_config(config, head_dim: int, dtype, pass_: str, causal: bool = False, seqlen: int | None = None) -> BlockConfig:
    if config is None:
        # A config stored by numba_flash.tune for this device and problem wins; without a tuning
        # cache (or an entry for this device) this is default_config, as before.
        from .tune import lookup

        tuned = lookup(head_dim, dtype, causal, seqlen, pass_) if seqlen is not None else None
        return tuned if tuned is not None else default_config(head_dim, np.dtype(dtype), pass_)
    if not isinstance(config, BlockConfig):
        raise TypeError(f"config: expected a numba_flash.BlockConfig or None, got {type(config).__name__}")
    return config.validate(head_dim, pass_)


def _empty(shape, dtype):
    xp = backend.array_module()
    if POISON_OUTPUTS:
        return xp.full(shape, np.nan, dtype=dtype)
    return xp.empty(shape, dtype=dtype)


def _launch(kernel, grid, threads, *args):
    if backend.BACKEND == backend.GPU:
        from numba import cuda

        cupy = backend.array_module()
        # Run on CuPy's current stream, so work stays ordered with the caller's CuPy/torch work.
        stream = cuda.external_stream(cupy.cuda.get_current_stream().ptr)
        kernel[grid, threads, stream](*args)
    else:
        kernel[grid, threads](*args)


def flash_attention(q, k, v, *, causal=False, softmax_scale=None, config=None, return_lse=False):
    """Exact attention ``softmax(scale * q k^T + mask) v`` without materialising the N x N matrix.

    q: (B, H, Nq, D); k, v: (B, H, Nk, D); float16 or float32, all the same dtype; D a multiple of 8
    from 8 to 256. ``causal`` masks key j for query i when ``j > i + Nk - Nq`` (bottom-right
    aligned); a query that sees no key gets 0 and ``lse = -inf``. ``softmax_scale`` defaults to
    ``1/sqrt(D)``. ``config`` is a :class:`BlockConfig` (default: :func:`default_config`).

    Returns ``out`` (like q), or ``(out, lse)`` with ``lse`` float32 (B, H, Nq), the natural-log
    log-sum-exp of each row's scaled scores, when ``return_lse`` is true.
    """
    backend.warn_if_simulated()
    q, k, v = _as_array("q", q), _as_array("k", k), _as_array("v", v)
    B, H, n_q, n_k, D = _check_qkv(q, k, v)
    causal = _check_causal(causal)
    scale = _check_scale(softmax_scale, D)
    cfg = _check_config(config, D, q.dtype, "forward", causal, max(n_q, n_k))

    out = _empty(q.shape, q.dtype)
    lse = _empty((B, H, n_q), np.float32)
    grid = (_cdiv(n_q, cfg.block_m), H, B)
    _launch(forward_kernel(cfg, D, causal), grid, cfg.num_threads, q, k, v, out, lse, np.float32(scale))
    return (out, lse) if return_lse else out


def flash_attention_backward(dout, q, k, v, out, lse, *, causal=False, softmax_scale=None, config=None):
    """Gradients ``(dq, dk, dv)`` of ``sum(dout * out)``, recomputing P from ``lse`` tile by tile.

    ``out`` and ``lse`` are what :func:`flash_attention` returned (``return_lse=True``) for the same
    q, k, v, causal and softmax_scale. Deterministic: no atomics, so repeated calls are bit-identical.
    """
    backend.warn_if_simulated()
    q, k, v = _as_array("q", q), _as_array("k", k), _as_array("v", v)
    dout, out, lse = _as_array("dout", dout), _as_array("out", out), _as_array("lse", lse)
    B, H, n_q, n_k, D = _check_qkv(q, k, v)
    for name, a in (("dout", dout), ("out", out)):
        if a.shape != q.shape:
            raise ValueError(f"{name}: expected the shape of q {q.shape}, got {a.shape}")
        if a.dtype != q.dtype:
            raise TypeError(f"{name}: expected the dtype of q ({q.dtype}), got {a.dtype}")
    if lse.shape != (B, H, n_q):
        raise ValueError(f"lse: expected shape (batch, heads, seqlen_q) = {(B, H, n_q)}, got {lse.shape}")
    if lse.dtype != np.float32:
        raise TypeError(f"lse: expected float32 (as flash_attention returns it), got {lse.dtype}")
    causal = _check_causal(causal)
    scale = _check_scale(softmax_scale, D)
    cfg = _check_config(config, D, q.dtype, "backward", causal, max(n_q, n_k))

    delta = _empty((B, H, n_q), np.float32)
    _launch(delta_kernel(D), (_cdiv(n_q, _DELTA_THREADS), H, B), _DELTA_THREADS, dout, out, delta)
    dq = _empty(q.shape, q.dtype)
    dk = _empty(k.shape, k.dtype)
    dv = _empty(v.shape, v.dtype)
    s = np.float32(scale)
    _launch(dkdv_kernel(cfg, D, causal), (_cdiv(n_k, cfg.block_n), H, B), cfg.num_threads,
            q, k, v, dout, lse, delta, dk, dv, s)
    _launch(dq_kernel(cfg, D, causal), (_cdiv(n_q, cfg.block_m), H, B), cfg.num_threads,
            q, k, v, dout, lse, delta, dq, s)
    return dq, dk, dv
