"""PyTorch adapter: numba_flash in place of ``F.scaled_dot_product_attention``, with autograd.

    from numba_flash.torch import scaled_dot_product_attention as attention
    y = attention(q, k, v, is_causal=True)          # q, k, v: (B, H, N, D) CUDA tensors
    y.sum().backward()                               # our recomputing backward kernels

How it joins PyTorch:

* Zero-copy both ways: q, k, v (strided views included) are read where they lie (passed to the
  API as ``api.DeviceView``: address, shape, strides, as DLPack would carry them); outputs and
  gradients are allocated by PyTorch's caching allocator, so they are ordinary torch tensors and
  ``torch.cuda.max_memory_allocated`` counts them.
* PyTorch's current CUDA stream: the kernels are launched on it (``api.launch_on``), so they
  queue behind the model's work and nothing synchronises the device.
* Saved for backward: q, k, v, out and lse (float32, B*H*N), plus the dropout seed, a Python int
  drawn from torch's (CPU) default generator, so ``torch.manual_seed`` makes dropout repeatable.
* dtypes: float16, bfloat16 and float32 run natively (16-bit ones on the tensor-core kernels).
  bfloat16 inputs the tensor-core kernels cannot read (head_dim > 128, rows not 16-byte aligned)
  run through the float32 kernels on exact upcasts, the output rounded back to bfloat16.
  Under ``torch.autocast('cuda')`` inputs are cast to the autocast dtype first, as SDPA does.
* GQA as SDPA's ``enable_gqa=True``: k, v with fewer heads, shared by groups of query heads.
* Not supported (clear errors): ``attn_mask`` (use ``is_causal`` or the numba_flash-only
  ``window_size``), CPU tensors, dtypes other than float16/bfloat16/float32.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from . import api, backend
from .config import TC_MAX_HEAD_DIM

__all__ = ["scaled_dot_product_attention", "FlashAttentionFunction", "draw_seed"]

_NUMPY_OF = {torch.float16: np.float16, torch.float32: np.float32, torch.bfloat16: np.uint16}
_TORCH_OF = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
             np.dtype(np.uint16): torch.bfloat16}


def draw_seed() -> int:
    """A dropout seed from torch's default generator (repeatable under ``torch.manual_seed``)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64).item())


def _view(t: torch.Tensor) -> api.DeviceView:
    """The API's view of a CUDA tensor: its address, shape, byte strides and dtype (no copy;
    bfloat16 as uint16 bit patterns, the API's ``bfloat16=True`` form)."""
    size = t.element_size()
    return api.DeviceView(t.data_ptr(), tuple(t.shape), tuple(st * size for st in t.stride()), _NUMPY_OF[t.dtype],
                          t, t.fill_)


class _Bridge:
    """Calls into the API on torch's current stream, with torch-owned outputs.

    Tensors go in as :class:`numba_flash.api.DeviceView` (address, shape, strides: what DLPack
    exchanges, minus the protocol's per-call bookkeeping and CuPy's array construction, ~25 us of
    host time per tensor); outputs are ``torch.empty`` (PyTorch's caching allocator, so torch's
    memory statistics count them); kernels are launched on ``torch.cuda.current_stream()``.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.made = {}  # id(view) -> the torch tensor that owns its memory
        self._ctx = api.launch_on(torch.cuda.current_stream(device).cuda_stream, self.empty)

    to_view = staticmethod(_view)

    def empty(self, shape, dtype):
        t = torch.empty(shape, dtype=_TORCH_OF[np.dtype(dtype)], device=self.device)
        view = _view(t)
        self.made[id(view)] = t
        return view

    def to_torch(self, a) -> torch.Tensor:
        return self.made[id(a)]

    def __enter__(self):
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


class FlashAttentionFunction(torch.autograd.Function):
    """out = flash_attention(q, k, v); backward = flash_attention_backward, recomputing P from lse."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, dropout_p, seed, window_size):
        bf16 = q.dtype == torch.bfloat16
        with _Bridge(q.device) as br:
            out, lse = api.flash_attention(br.to_view(q), br.to_view(k), br.to_view(v), causal=causal,
                                           softmax_scale=scale, dropout_p=dropout_p, seed=seed,
                                           window_size=window_size, return_lse=True, bfloat16=bf16)
            out, lse = br.to_torch(out), br.to_torch(lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.options = dict(causal=causal, softmax_scale=scale, dropout_p=dropout_p, seed=seed,
                           window_size=window_size, bfloat16=bf16)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if not _tensor_core_ready(dout):  # e.g. the stride-0 gradient of a sum(): one copy, then fast kernels
            dout = dout.contiguous()
        with _Bridge(q.device) as br:
            grads = api.flash_attention_backward(br.to_view(dout), br.to_view(q), br.to_view(k), br.to_view(v),
                                                 br.to_view(out), br.to_view(lse), **ctx.options)
            dq, dk, dv = (br.to_torch(g) for g in grads)
        return dq, dk, dv, None, None, None, None, None


def _tensor_core_ready(*tensors) -> bool:
    """Whether the tensor-core kernels can read these tensors (the API's own layout check, and
    head_dim <= 128)."""
    return (all(t.shape[-1] <= TC_MAX_HEAD_DIM for t in tensors)
            and api._tc_problem([("tensor", _view(t)) for t in tensors]) is None)


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda":
        raise TypeError(f"{name}: expected a CUDA tensor, got one on {t.device} (numba_flash's kernels run on the GPU)")
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"{name}: dtype {t.dtype} is not supported; expected float16, bfloat16 or float32")
    if t.dim() != 4:
        raise ValueError(f"{name}: expected 4 dimensions (batch, heads, seqlen, head_dim), got shape {tuple(t.shape)}")


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, window_size=(-1, -1), seed=None):
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention`` on CUDA tensors (B, H, N, D).

    Same arguments and semantics (causal is aligned to the bottom-right corner when Nq != Nk, as in
    FlashAttention; SDPA aligns it top-left). Extras: ``window_size`` (sliding window, as in
    :func:`numba_flash.flash_attention`) and ``seed`` (dropout seed; default: drawn from torch's
    generator on each call with ``dropout_p > 0``).
    """
    if attn_mask is not None:
        raise ValueError("attn_mask: not supported by numba_flash; use is_causal=True or window_size=(left, right)")
    for name, t in (("query", query), ("key", key), ("value", value)):
        _check_tensor(name, t)
    if not (query.device == key.device == value.device):
        raise ValueError(f"query, key, value: expected one device, got {query.device}, {key.device}, {value.device}")
    if backend.BACKEND != backend.GPU:
        raise RuntimeError("numba_flash.torch needs numba_flash's GPU backend (it is running on the simulator)")
    if key.shape[1] != query.shape[1] and not enable_gqa:
        raise ValueError(f"key, value: {key.shape[1]} heads for {query.shape[1]} query heads needs enable_gqa=True "
                         "(as in torch's scaled_dot_product_attention)")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p: expected a float in [0, 1), got {type(dropout_p).__name__}")
    if dropout_p > 0.0 and seed is None:
        seed = draw_seed()

    if torch.is_autocast_enabled("cuda"):  # SDPA runs in the autocast dtype; so do we
        dtype = torch.get_autocast_dtype("cuda")
        query, key, value = (t.to(dtype) for t in (query, key, value))
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(f"query, key, value: expected one dtype, got {query.dtype}, {key.dtype}, {value.dtype}")

    out_dtype = query.dtype
    if out_dtype == torch.bfloat16 and not _tensor_core_ready(query, key, value):
        # bfloat16 runs on the tensor-core kernels only; elsewhere the fp32 ones, on exact upcasts
        query, key, value = (t.float() for t in (query, key, value))
    with torch.autocast("cuda", enabled=False):
        out, _ = FlashAttentionFunction.apply(query, key, value, bool(is_causal), scale, float(dropout_p), seed,
                                              tuple(window_size))
    return out.to(out_dtype) if out.dtype != out_dtype else out
