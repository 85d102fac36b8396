"""PyTorch adapter: numba_flash in place of ``F.scaled_dot_product_attention``, with autograd.

    from numba_flash.torch import scaled_dot_product_attention as attention
    y = attention(q, k, v, is_causal=True)          # q, k, v: (B, H, N, D) CUDA tensors
    y.sum().backward()                               # our recomputing backward kernels

How it joins PyTorch:

* Zero-copy both ways: q, k, v (strided views included) are read where they lie (the API checks
  them as ``api.DeviceView``: address, shape, strides, what DLPack would carry, and makes a launch
  plan, reused for every later call of the same kind); outputs and gradients are allocated by
  PyTorch's caching allocator, so they are ordinary torch tensors and
  ``torch.cuda.max_memory_allocated`` counts them.
* PyTorch's current CUDA stream: the kernels are launched on it, so they queue behind the
  model's work and nothing synchronises the device.
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
    return api.DeviceView(t.data_ptr(), tuple(t.shape), tuple(st * size for st in t.stride()), _NUMPY_OF[t.dtype], t)


def _key(t: torch.Tensor) -> tuple:
    """What a launch plan depends on of a tensor: shape, strides, dtype, 16-byte alignment."""
    return t.shape, t.stride(), t.dtype, not t.data_ptr() & 15


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # what torch's own generated code calls


def _stream(device) -> int:
    """torch's current CUDA stream on ``device`` as a raw ``CUstream`` (the public route costs ~5 us more)."""
    if _raw_stream is not None:
        return _raw_stream(device.index if device.index is not None else torch.cuda.current_device())
    return torch.cuda.current_stream(device).cuda_stream


def _run(plan, tensors, extras, device) -> list:
    """Run a launch plan on torch's current stream, its outputs allocated by torch's caching allocator."""
    outs = [torch.empty(shape, dtype=_TORCH_OF[dtype], device=device) for shape, dtype in plan.outputs]
    if api.POISON_OUTPUTS:  # as the API does: an element no kernel writes shows up as NaN
        for o in outs:
            o.fill_(float("nan"))
    plan.run_gpu(_stream(device), [t.data_ptr() for t in tensors], [o.data_ptr() for o in outs], extras)
    return outs


class FlashAttentionFunction(torch.autograd.Function):
    """out = flash_attention(q, k, v); backward = flash_attention_backward, recomputing P from lse.

    Each direction runs an API launch plan (``numba_flash.plan``), checked and made by the API on
    the first call of its kind (from :class:`numba_flash.api.DeviceView` views of the tensors) and
    looked up by shapes, strides, dtypes, alignment and options after that: a repeat call costs a
    dictionary lookup, the output allocations and one driver call per kernel.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, dropout_p, seed, window_size):
        bf16 = q.dtype == torch.bfloat16
        options = (causal, scale, window_size, dropout_p, seed is None, None, bf16)
        key = ("torch-forward", q.device, _key(q), _key(k), _key(v), *api.option_key(options))
        plan = api._cached_plan(key)
        if plan is None:
            plan, _ = api._forward(key, _view(q), _view(k), _view(v), causal, scale, window_size, dropout_p, seed,
                                   None, bf16)
        out, lse = _run(plan, (q, k, v), plan.extras(seed), q.device)
        ctx.save_for_backward(q, k, v, out, lse)  # lse: saved, not returned (no gradient to carry for it)
        ctx.options = options, (causal, scale, window_size, dropout_p, seed, bf16)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        if not dout.is_contiguous() and not _tensor_core_ready(dout):
            dout = dout.contiguous()  # e.g. the stride-0 gradient of a sum(): one copy, then the fast kernels
        options, (causal, scale, window_size, dropout_p, seed, bf16) = ctx.options
        tensors = (dout, q, k, v, out, lse)
        key = ("torch-backward", q.device, *map(_key, tensors), *api.option_key(options))
        plan = api._cached_plan(key)
        if plan is None:
            plan, _ = api._backward(key, *map(_view, tensors), causal, scale, window_size, dropout_p, seed, None, bf16)
        _, dq, dk, dv = _run(plan, tensors, plan.extras(seed), q.device)[:4]
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

    autocast = torch.is_autocast_enabled("cuda")
    if autocast:  # SDPA runs in the autocast dtype; so do we
        dtype = torch.get_autocast_dtype("cuda")
        query, key, value = (t.to(dtype) for t in (query, key, value))
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(f"query, key, value: expected one dtype, got {query.dtype}, {key.dtype}, {value.dtype}")

    out_dtype = query.dtype
    if out_dtype == torch.bfloat16 and not _tensor_core_ready(query, key, value):
        # bfloat16 runs on the tensor-core kernels only; elsewhere the fp32 ones, on exact upcasts
        query, key, value = (t.float() for t in (query, key, value))
    args = (query, key, value, bool(is_causal), scale, float(dropout_p), seed, tuple(window_size))
    if autocast:
        with torch.autocast("cuda", enabled=False):
            out = FlashAttentionFunction.apply(*args)
    else:  # the autocast context manager costs host time on every call: only when autocast is on
        out = FlashAttentionFunction.apply(*args)
    return out.to(out_dtype) if out.dtype != out_dtype else out
