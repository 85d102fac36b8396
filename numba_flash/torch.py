"""PyTorch adapter: numba_flash in place of ``F.scaled_dot_product_attention``, with autograd.

    from numba_flash.torch import scaled_dot_product_attention as attention
    y = attention(q, k, v, is_causal=True)          # q, k, v: (B, H, N, D) CUDA tensors
    y.sum().backward()                               # our recomputing backward kernels

How it joins PyTorch:

* Zero-copy both ways: q, k, v (strided views included) are read where they lie;
  outputs and gradients are allocated by PyTorch's caching allocator (``api.allocate_with``), so
  they are ordinary torch tensors and ``torch.cuda.max_memory_allocated`` counts them.
* PyTorch's current CUDA stream: CuPy is pointed at it for the call, so the kernels queue behind
  the model's work and nothing synchronises the device.
* Saved for backward: q, k, v, out and lse (float32, B*H*N), plus the dropout seed, a Python int
  drawn from torch's (CPU) default generator, so ``torch.manual_seed`` makes dropout repeatable.
* dtypes: float16 and float32 run natively. bfloat16 runs through the float32 kernels: inputs
  are upcast (a copy; exact) and the output rounded back to bfloat16; autograd handles the casts.
  Under ``torch.autocast('cuda')`` inputs are cast to the autocast dtype first, as SDPA does.
* GQA as SDPA's ``enable_gqa=True``: k, v with fewer heads, shared by groups of query heads.
* Not supported (clear errors): ``attn_mask`` (use ``is_causal`` or the numba_flash-only
  ``window_size``), CPU tensors, dtypes other than float16/bfloat16/float32.
"""

from __future__ import annotations

import contextlib
import numbers

import numpy as np
import torch

from . import api, backend

__all__ = ["scaled_dot_product_attention", "FlashAttentionFunction", "draw_seed"]

_NUMPY_OF = {torch.float16: np.float16, torch.float32: np.float32}
_TORCH_OF = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}


def draw_seed() -> int:
    """A dropout seed from torch's default generator (repeatable under ``torch.manual_seed``)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64).item())


_STREAMS = {}  # torch stream pointer -> the CuPy ExternalStream on it (made once: it is ~free, but not free)


class _Bridge:
    """CuPy views of torch tensors, on torch's current stream, with torch-owned outputs.

    The views wrap the tensors' memory directly (``cupy.cuda.UnownedMemory``, the tensor kept as
    owner), which is what DLPack does too, minus the exchange protocol's per-call bookkeeping
    (device queries, stream hand-shakes): measurably cheaper for tiny calls.
    """

    def __init__(self, device: torch.device):
        import cupy

        self.cupy = cupy
        self.device = device
        ptr = torch.cuda.current_stream(device).cuda_stream
        if ptr not in _STREAMS:
            _STREAMS[ptr] = cupy.cuda.ExternalStream(ptr, device.index)
        self.stream = _STREAMS[ptr]
        self.made = {}  # id(cupy view) -> (view, the torch tensor that owns its memory)

    def to_cupy(self, t: torch.Tensor):
        cupy = self.cupy
        t = t.detach()
        extent = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) if t.numel() else 0  # elements spanned
        size = t.element_size()
        memory = cupy.cuda.UnownedMemory(t.data_ptr(), extent * size, t, self.device.index)
        return cupy.ndarray(tuple(t.shape), _NUMPY_OF[t.dtype], cupy.cuda.MemoryPointer(memory, 0),
                            strides=tuple(s * size for s in t.stride()))

    def empty(self, shape, dtype):
        t = torch.empty(shape, dtype=_TORCH_OF[np.dtype(dtype)], device=self.device)
        view = self.to_cupy(t)
        self.made[id(view)] = (view, t)
        return view

    def to_torch(self, a) -> torch.Tensor:
        view, t = self.made[id(a)]
        assert view is a
        return t

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self.cupy.cuda.Device(self.device.index))
        self._stack.enter_context(self.stream)  # CuPy's current stream = torch's, for the launches
        self._stack.enter_context(api.allocate_with(self.empty))
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)


class FlashAttentionFunction(torch.autograd.Function):
    """out = flash_attention(q, k, v); backward = flash_attention_backward, recomputing P from lse."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, dropout_p, seed, window_size):
        with _Bridge(q.device) as br:
            out, lse = api.flash_attention(br.to_cupy(q), br.to_cupy(k), br.to_cupy(v), causal=causal,
                                           softmax_scale=scale, dropout_p=dropout_p, seed=seed,
                                           window_size=window_size, return_lse=True)
            out, lse = br.to_torch(out), br.to_torch(lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.options = dict(causal=causal, softmax_scale=scale, dropout_p=dropout_p, seed=seed,
                           window_size=window_size)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        with _Bridge(q.device) as br:
            grads = api.flash_attention_backward(br.to_cupy(dout), br.to_cupy(q), br.to_cupy(k), br.to_cupy(v),
                                                 br.to_cupy(out), br.to_cupy(lse), **ctx.options)
            dq, dk, dv = (br.to_torch(g) for g in grads)
        return dq, dk, dv, None, None, None, None, None


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
    if out_dtype == torch.bfloat16:  # no bf16 kernels yet: the fp32 ones, on exact upcasts
        query, key, value = (t.float() for t in (query, key, value))
    with torch.autocast("cuda", enabled=False):
        out, _ = FlashAttentionFunction.apply(query, key, value, bool(is_causal), scale, float(dropout_p), seed,
                                              tuple(window_size))
    return out.to(out_dtype) if out.dtype != out_dtype else out
