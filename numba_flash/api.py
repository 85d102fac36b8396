"""The public entry points: check the input, pick a configuration, launch the kernels.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape
or value) naming the argument and what was expected, before anything is launched. Inputs are
only read, never written.
"""

from __future__ import annotations

import functools
import math
import numbers
import os

import numpy as np

from . import backend
from . import config as config_module
from .backward import delta_kernel, dkdv_kernel, dq_kernel
from .config import BlockConfig, TensorCoreConfig, check_head_dim, default_config, default_tc_config, tc_elem
from .forward import forward_kernel
from .launch import _pointer
from .masking import UNBOUNDED, band
from .philox import dropout_kernel_args, keep_threshold, validate_dropout_p, validate_seed
from .plan import Plan, PlanCache, _same

SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
# Grid dimensions y and z (heads, batch) are limited to 65535 by CUDA.
_MAX_GRID_YZ = 65535
_DELTA_THREADS = 128

# When true, outputs are filled with NaN before each launch, so an element a kernel forgets to
# write shows up as NaN instead of as plausible leftover memory. The tests turn it on.
POISON_OUTPUTS = os.environ.get("NUMBA_FLASH_POISON", "0") not in ("", "0")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class DeviceView:
    """The least a kernel launch needs of a device array: address, shape, byte strides, dtype.

    What adapters hand the API instead of a CuPy array (numba_flash.torch wraps torch tensors in
    these: building a ``cupy.ndarray`` costs ~25 us of host time per tensor). ``owner`` keeps the
    memory alive."""

    __slots__ = ("ptr", "shape", "strides", "dtype", "owner")

    def __init__(self, ptr: int, shape: tuple, strides: tuple, dtype, owner=None):
        self.ptr, self.shape, self.strides, self.dtype = ptr, shape, strides, np.dtype(dtype)
        self.owner = owner

    ndim = property(lambda self: len(self.shape))
    itemsize = property(lambda self: self.dtype.itemsize)
    size = property(lambda self: math.prod(self.shape))

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "strides": self.strides, "typestr": self.dtype.str, "data": (self.ptr, False),
                "version": 3}


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
        return x  # _launch hands the simulator views, so strided arrays work as on the GPU
    cupy = backend.array_module()
    if isinstance(x, (cupy.ndarray, DeviceView)):
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


_BF16_BITS = np.dtype(np.uint16)  # bfloat16 travels as its bit patterns (CuPy and NumPy have no bfloat16)


def _check_dtype(name: str, a, bf16: bool = False) -> None:
    if bf16:
        if a.dtype != _BF16_BITS:
            raise TypeError(f"{name}: with bfloat16=True expected uint16 arrays of bfloat16 bit patterns, got dtype "
                            f"{a.dtype}")
    elif a.dtype not in SUPPORTED_DTYPES:
        hint = " (bfloat16 data: pass its uint16 bit patterns and bfloat16=True)" if a.dtype == _BF16_BITS else ""
        raise TypeError(f"{name}: dtype {a.dtype} is not supported; expected float16 or float32{hint}")


def _check_heads(q_heads: int, kv_heads: int, shape_k) -> int:
    """The GQA group size: how many query heads share one K/V head."""
    if kv_heads < 1 or q_heads % kv_heads != 0:
        raise ValueError(
            f"k, v: expected a number of heads that divides q's {q_heads} (GQA/MQA: each group of query heads "
            f"shares one key/value head), got shape {shape_k}"
        )
    return q_heads // kv_heads


def _check_qkv(q, k, v, ndim=4, what="(batch, heads, seqlen, head_dim)", bf16=False):
    """Shapes, dtypes and head counts of q, k, v; returns the GQA group size."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim != ndim:
            raise ValueError(f"{name}: expected {ndim} dimensions {what}, got shape {a.shape}")
        _check_dtype(name, a, bf16)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v: expected one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, a in (("q", q), ("k", k)):
        if 0 in a.shape:
            raise ValueError(f"{name}: every dimension must be at least 1, got shape {a.shape}")
    D, h_axis = q.shape[-1], 1  # heads: axis 1 of (B, H, N, D) and of (total, H, D)
    if k.shape[-1] != D or (ndim == 4 and k.shape[0] != q.shape[0]):
        lead = "batch and head_dim" if ndim == 4 else "head_dim"
        raise ValueError(f"k: expected {lead} to match q {q.shape}, got shape {k.shape}")
    if k.shape != v.shape:
        raise ValueError(f"k, v: expected the same shape, got {k.shape} and {v.shape}")
    check_head_dim(D)
    group = _check_heads(q.shape[h_axis], k.shape[h_axis], k.shape)
    if q.shape[0] > _MAX_GRID_YZ or q.shape[h_axis] > _MAX_GRID_YZ:
        raise ValueError(f"q: batch and heads must each be at most {_MAX_GRID_YZ}, got shape {q.shape}")
    return group


def _check_window(window_size) -> tuple[int, int]:
    try:
        left, right = window_size
    except (TypeError, ValueError):
        raise TypeError(f"window_size: expected a pair (left, right) of ints, got {window_size!r}") from None
    for x in (left, right):
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise TypeError(f"window_size: expected a pair (left, right) of ints, got {window_size!r}")
        if x < -1:
            raise ValueError(f"window_size: expected each side >= 0, or -1 for unbounded, got {window_size!r}")
    return int(left), int(right)


def _check_dropout(dropout_p, seed):
    """Validated ``(p, seed)``; p > 0 needs a seed, so the backward can regenerate the same mask."""
    p = validate_dropout_p(dropout_p)
    if p > 0.0 and seed is None:
        raise ValueError(
            "seed: dropout_p > 0 needs a seed (a Python int in [0, 2**64)) so that the backward pass can "
            "regenerate the same mask; pass e.g. seed=numba_flash.new_seed() and give the same seed to "
            "flash_attention_backward"
        )
    return p, (validate_seed(seed) if p > 0.0 else 0)


def _check_scale(softmax_scale, head_dim: int):
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
        raise TypeError(f"softmax_scale: expected a positive finite float or None, got {type(softmax_scale).__name__}")
    value = float(softmax_scale)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"softmax_scale: expected a positive finite float or None, got {softmax_scale!r}")
    return value


def _check_bool(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return bool(value)


def _check_causal(causal):
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    return bool(causal)


def _tc_problem(arrays) -> str | None:
    """Why the tensor-core kernels cannot read these arrays (None when they can): they copy 16-byte
    chunks of rows, so the last axis must be contiguous and rows 16-byte aligned."""
    for name, a in arrays:
        if a.strides[-1] != a.itemsize:
            return f"{name}: the tensor-core kernels need a contiguous last axis, got strides {a.strides}"
        if _pointer(a) % 16 or any(st % 16 for n, st in zip(a.shape[:-1], a.strides[:-1]) if n > 1):
            return f"{name}: the tensor-core kernels need 16-byte aligned rows, got strides {a.strides}"
    return None


def _pick(config, pass_, head_dim, dtype, causal, seqlen, arrays, dropout=False, unmasked=False):
    """The config of ``pass_``: a TensorCoreConfig (GPU, layout fits; float16, bfloat16, and float32
    as 3xTF32) or a BlockConfig (portable).

    ``config=None`` takes the tensor-core kernels wherever they can run: without dropout the
    TensorCoreConfig :mod:`numba_flash.tune` stored for this problem (float16's entry serves
    bfloat16 too: same kernels, same instruction shapes; float32 has its own), else (and always
    with dropout: tuned configs are timed without it, and its random numbers need registers)
    ``default_tc_config`` (``unmasked``: no band and no varlen; ``causal``; see there). Elsewhere the tuned
    BlockConfig, else ``default_config``. A TensorCoreConfig or a BlockConfig forces that kernel (an
    error, saying why, if the tensor-core one cannot run).
    """
    elem = tc_elem(dtype)

    def tc_choice():
        if not dropout and seqlen is not None:
            from .tune import lookup

            tuned = lookup(head_dim, np.float32 if elem == "tf32" else np.float16, causal, seqlen, pass_,
                           kind="tensor_core")
            if isinstance(tuned, TensorCoreConfig) and not tuned.problems(head_dim, pass_, elem):
                return tuned
        return default_tc_config(head_dim, dropout, pass_, elem, unmasked, bool(causal))

    if np.dtype(dtype) == _BF16_BITS:  # bfloat16: the tensor-core kernels are the only ones
        if config is not None and not isinstance(config, TensorCoreConfig):
            raise ValueError(f"config: bfloat16 runs on the tensor-core kernels only; pass a TensorCoreConfig or None, "
                             f"got {config!r}")
        if backend.BACKEND != backend.GPU:
            raise ValueError("bfloat16: runs on the tensor-core kernels only, which need the GPU backend")
        config = config if config is not None else tc_choice()
        why = _tc_problem(arrays) or "; ".join(config.problems(head_dim, pass_, elem))
        if why:
            raise ValueError(f"bfloat16: the tensor-core kernels cannot run this problem: {why}")
        return config.validate(head_dim, pass_, elem)
    if isinstance(config, TensorCoreConfig):
        if backend.BACKEND != backend.GPU:
            raise ValueError("config: a TensorCoreConfig needs the GPU backend (inline PTX: the CUDA simulator "
                             "cannot run it); pass a BlockConfig or None")
        if np.dtype(dtype) not in (np.float16, np.float32):
            raise ValueError(f"config: the tensor-core kernels take float16 or float32 inputs, got {np.dtype(dtype)}; "
                             "pass a BlockConfig or None")
        why = _tc_problem(arrays)
        if why:
            raise ValueError(f"config: {why}")
        return config.validate(head_dim, pass_, elem)
    if config is None and backend.BACKEND == backend.GPU and np.dtype(dtype) in (np.float16, np.float32):
        fast = tc_choice()
        if not fast.problems(head_dim, pass_, elem) and _tc_problem(arrays) is None:
            return fast
    return _check_config(config, head_dim, dtype, pass_, causal, seqlen)


def _check_config(config, head_dim: int, dtype, pass_: str, causal: bool = False, seqlen: int | None = None) -> BlockConfig:
    if config is None:
        # A config stored by numba_flash.tune for this device and problem wins; without a tuning
        # cache (or an entry for this device) this is default_config, as before.
        from .tune import lookup

        tuned = lookup(head_dim, dtype, causal, seqlen, pass_) if seqlen is not None else None
        return tuned if tuned is not None else default_config(head_dim, np.dtype(dtype), pass_)
    if not isinstance(config, BlockConfig):
        raise TypeError(f"config: expected a numba_flash.BlockConfig, TensorCoreConfig or None, got "
                        f"{type(config).__name__}")
    return config.validate(head_dim, pass_)


def _empty(shape, dtype):
    """An output array of this backend (CuPy's memory pool on the GPU); NaN-filled under POISON_OUTPUTS."""
    xp = backend.array_module()
    if POISON_OUTPUTS:  # NaN; for bfloat16 bit patterns (uint16), a bfloat16 NaN's bits
        return xp.full(shape, 0x7FC0 if np.dtype(dtype) == _BF16_BITS else np.nan, dtype=dtype)
    return xp.empty(shape, dtype=dtype)


def _launch(kernel, grid, threads, *args, shared=0):
    """Numba's own launch, for the simulator (on the GPU, plans launch through numba_flash.launch)."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    # Wrapped, the simulator indexes the NumPy memory itself (views included) instead of copying.
    kernel[grid, threads](*(FakeCUDAArray(a) if isinstance(a, np.ndarray) else a for a in args))


_PLACEHOLDERS = {}


def _placeholder(shape, dtype):
    """A small zero array of this backend for a kernel argument the call does not use (made once)."""
    key = (backend.BACKEND, shape, np.dtype(dtype))
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = backend.array_module().zeros(shape, dtype=dtype)
    return _PLACEHOLDERS[key]


def _no_offsets():
    """A one-element int32 array for the kernels' unused ``cu_q``/``cu_k`` in the padded layout."""
    return _placeholder((1,), np.int32)


def _options(causal, window_size, dropout_p, seed):
    """Checked options: ``(p, seed, band)`` with the band ``(left, right)`` as the kernels take it."""
    left, right = band(_check_causal(causal), _check_window(window_size))
    p, seed = _check_dropout(dropout_p, seed)
    # int64 explicitly: the simulator's NumPy would keep int32 offsets + UNBOUNDED in int32 and overflow.
    return p, seed, (np.int64(left), np.int64(right))


def _unmasked(opts) -> bool:
    """Whether the band of checked ``opts`` (:func:`_options`) leaves every key visible to every query."""
    return all(bound >= UNBOUNDED for bound in opts[2])


def _seed_words(p: float, seed) -> tuple:
    """The per-call kernel arguments with dropout: the seed's two Philox key words."""
    return dropout_kernel_args(seed, p)[:2]


def _new_plan(inputs, p: float, seed) -> Plan:
    """A plan whose per-call extras are the dropout seed words, when there is dropout (without, the
    words are constant zeros in the template and a call has no extras to work out)."""
    return Plan(inputs, functools.partial(_seed_words, p), (seed,)) if p > 0.0 else Plan(inputs)


def _tail(plan: Plan, p: float, band_args) -> tuple:
    """Runtime kernel arguments shared by every pass: band, then the dropout words (seed per call)."""
    words = (plan.extra(0), plan.extra(1)) if p > 0.0 else (np.uint64(0), np.uint64(0))
    return (*band_args, *words, np.uint64(keep_threshold(p)), np.float32(1.0 / (1.0 - p)))


def _forward_plan(inputs, n_seq, max_q, varlen, group, scale, cfg, opts, lse_shape, view) -> Plan:
    """The forward's plan; inputs ``(q, k, v)`` (+ ``cu_q, cu_k`` when varlen); outputs out, lse."""
    p, seed, band_args = opts
    q = inputs[0]
    plan = _new_plan(inputs, p, seed)
    out, lse = plan.output(q.shape, q.dtype), plan.output(lse_shape, np.float32)
    H, D = view(q).shape[1], q.shape[-1]
    grid = (_cdiv(max_q, cfg.block_m), H, n_seq)
    if isinstance(cfg, TensorCoreConfig):
        from .tc_forward import tc_forward_kernel  # GPU only: inline PTX

        elem = tc_elem(q.dtype)
        kernel, shared = tc_forward_kernel(cfg, D, varlen, p > 0.0, elem), cfg.shared_memory_bytes(D, elem)
    else:
        kernel, shared = forward_kernel(cfg, D, varlen, p > 0.0), 0
    cu = (plan.inp(3), plan.inp(4)) if varlen else (_no_offsets(), _no_offsets())
    plan.launch(kernel, grid, cfg.num_threads, plan.inp(0, view), plan.inp(1, view), plan.inp(2, view),
                plan.out(out, view), plan.out(lse, view), *cu, np.float32(scale), group, *_tail(plan, p, band_args),
                shared=shared)
    return plan


def _backward_plan(inputs, n_seq, max_q, max_k, varlen, group, scale, cfg, opts, view) -> Plan:
    """The backward's plan; inputs ``(dout, q, k, v, out, lse)`` (+ ``cu_q, cu_k``); outputs delta
    (the rows' dout . out, a scratch array), dq, dk, dv, and with ``atomic_dq`` on 16-bit data the
    float32 dQ the dK/dV kernel adds into (scratch, zeroed by the delta kernel, scaled into dq at the
    end; float32 dq is itself that dQ: zeroed, and added into already scaled)."""
    p, seed, band_args = opts
    dout, q, k, v, out, lse = inputs[:6]
    plan = _new_plan(inputs, p, seed)
    D = q.shape[-1]
    qv, kv = view(q), view(k)
    H, H_kv, B = qv.shape[1], kv.shape[1], qv.shape[0]
    delta = plan.output(lse.shape, np.float32)
    dq, dk, dv = plan.output(q.shape, q.dtype), plan.output(k.shape, k.dtype), plan.output(v.shape, v.dtype)
    tc = isinstance(cfg, TensorCoreConfig)
    atomic = tc and cfg.atomic_dq
    into_dq = atomic and tc_elem(q.dtype) == "tf32"  # float32: dq itself is the float32 dQ the atomics add into
    dout_, q_, k_, v_, out_, lse_ = (plan.inp(i, view) for i in range(6))
    dropout = p > 0.0
    if tc:
        # GPU only (inline PTX)
        from .tc_backward import (tc_delta_kernel, tc_delta_rows, tc_dkdv_kernel, tc_dq_convert_kernel,
                                  tc_dq_kernel)

        # dK/dV blocks own block_m keys, dQ blocks block_m queries (TensorCoreConfig's docstring). The
        # dK/dV kernel takes a float32 dQ to add into (a placeholder without atomic_dq).
        elem = tc_elem(q.dtype)
        dq_acc = (plan.out(dq, view) if into_dq else plan.out(plan.output(q.shape, np.float32), view) if atomic
                  else _placeholder((1, 1, 1, 1), np.float32))
        row_grid = (_cdiv(qv.shape[2], tc_delta_rows(D)), H, B)
        plan.launch(tc_delta_kernel(D, elem, atomic), row_grid, 128, dout_, out_, plan.out(delta, view),
                    *((dq_acc,) if atomic else ()))
        dkdv, dkdv_grid = tc_dkdv_kernel(cfg, D, varlen, dropout, elem), (_cdiv(max_k, cfg.block_m), H_kv, n_seq)
        dqk = None if atomic else tc_dq_kernel(cfg, D, varlen, dropout, elem)
        shared = cfg.backward_shared_bytes(D, "dkdv", elem), cfg.backward_shared_bytes(D, "dq", elem)
    else:
        plan.launch(delta_kernel(D), (_cdiv(qv.shape[2], _DELTA_THREADS), H, B), _DELTA_THREADS, dout_, out_,
                    plan.out(delta, view))
        dkdv, dkdv_grid = dkdv_kernel(cfg, D, varlen, dropout), (_cdiv(max_k, cfg.block_n), H_kv, n_seq)
        dqk = dq_kernel(cfg, D, varlen, dropout)
        shared = 0, 0
    common = (q_, k_, v_, dout_, lse_, plan.out(delta, view))
    cu = (plan.inp(6), plan.inp(7)) if varlen else (_no_offsets(), _no_offsets())
    tail = (np.float32(scale), group, *_tail(plan, p, band_args))
    plan.launch(dkdv, dkdv_grid, cfg.num_threads, *common, plan.out(dk, view), plan.out(dv, view),
                *((dq_acc,) if tc else ()), *cu, *tail, shared=shared[0])
    if atomic and not into_dq:  # dq = scale * dq_acc, in q's dtype
        plan.launch(tc_dq_convert_kernel(D, elem), row_grid, 128, dq_acc, plan.out(dq, view), np.float32(scale))
    else:
        plan.launch(dqk, (_cdiv(max_q, cfg.block_m), H, n_seq), cfg.num_threads, *common, plan.out(dq, view), *cu,
                    *tail, shared=shared[1])
    return plan


def _execute(plan: Plan, inputs, extras, in_ptrs=None) -> list:
    """Allocate the plan's outputs and launch its kernels on ``inputs`` (at ``in_ptrs`` if known);
    returns the outputs."""
    outputs = [_empty(shape, dtype) for shape, dtype in plan.outputs]
    _launch_plan(plan, inputs, outputs, extras, in_ptrs)
    return outputs


def _launch_plan(plan: Plan, inputs, outputs, extras, in_ptrs=None) -> None:
    if backend.BACKEND == backend.GPU:
        # On CuPy's current stream, so work stays ordered with the caller's CuPy work (the PyTorch
        # adapter runs plans on torch's stream itself)
        stream = backend.array_module().cuda.get_current_stream().ptr
        if in_ptrs is None:
            in_ptrs = [_pointer(a) for a in inputs]
        plan.run_gpu(stream, in_ptrs, [_pointer(a) for a in outputs], extras)
    else:
        plan.run(_launch, inputs, outputs, extras)


# ---- the plan cache: a repeat call skips the checks and the configuration choice

_PLANS = PlanCache()
_FAST_TYPES: dict = {}


def _fast_types() -> tuple:
    """The array types a call key can describe: those ``_as_array`` passes through unchanged."""
    types = _FAST_TYPES.get(backend.BACKEND)
    if types is None:
        types = _FAST_TYPES[backend.BACKEND] = (
            (np.ndarray,) if backend.BACKEND == backend.SIMULATOR else (backend.array_module().ndarray, DeviceView))
    return types


def _call_key(pass_, arrays, options):
    """Everything a call's checks and choices depend on, and the arrays' addresses on the GPU
    (``(None, None)``: this call cannot be keyed).

    Arrays by type, shape, strides, dtype and whether all are 16-byte aligned (the tensor-core
    kernels' condition); options by type and value (``causal=1`` must still fail its check); the float32
    chains (config.TF32_CHAIN, TF32_PV_CHAIN), which pick the float32 kernels."""
    types = _fast_types()
    if not all(type(a) in types for a in arrays):
        return None, None
    ptrs, aligned = None, True
    if backend.BACKEND == backend.GPU:  # the fast types: DeviceView, or CuPy's ndarray
        ptrs = [a.ptr if type(a) is DeviceView else a.data.ptr for a in arrays]
        aligned = not any(p & 15 for p in ptrs)
    key = (pass_, backend.BACKEND, aligned, config_module.TF32_CHAIN, config_module.TF32_PV_CHAIN,
           *((type(a), a.shape, a.strides, a.dtype) for a in arrays), *option_key(options))
    try:
        hash(key)
    except TypeError:  # an unhashable option (a list for window_size): take the checked path
        return None, None
    return key, ptrs


def option_key(options) -> tuple:
    """Options as a cache key: by value and type, a tuple's items' types too (``(-1.0, -1)`` is not a
    window, though it equals ``(-1, -1)``)."""
    return (options, tuple(map(type, options)),
            tuple(tuple(map(type, o)) for o in options if type(o) is tuple))


def _cached_plan(key):
    plan = _PLANS.get(key) if key is not None else None
    if plan is not None and plan.tuning is not False:
        from .tune import state

        if plan.tuning != state():  # the tuning cache changed since: choose again
            return None
    return plan


def _keep(key, plan: Plan, config, cfg) -> Plan:
    """Cache ``plan`` under ``key``, noting whether its config came from the tuning cache: every
    ``config=None`` choice (a tuned BlockConfig or TensorCoreConfig, or the default one without an
    entry) may change with it, so such plans carry ``tune.state()`` and are remade when it changes.
    ``cfg`` (the config chosen) does not matter for that today."""
    plan.tuning = False
    if config is None:
        from .tune import state

        plan.tuning = state()
    if key is not None:
        _PLANS.put(key, plan)
    return plan


def flash_attention(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), dropout_p=0.0, seed=None,
                    config=None, return_lse=False, bfloat16=False):
    """Exact attention ``softmax(scale * q k^T + mask) v`` without materialising the N x N matrix.

    q: (B, H, Nq, D); k, v: (B, H_kv, Nk, D) with H_kv dividing H (GQA/MQA: query head h reads
    kv head h // (H / H_kv)); float16 or float32, all the same dtype; D a multiple of 8 from 8 to
    256. Query i sees key j iff ``i + Nk - Nq - left <= j <= i + Nk - Nq + right`` for
    ``window_size=(left, right)`` (-1: unbounded), and ``j <= i + Nk - Nq`` if ``causal``
    (bottom-right aligned); a query that sees no key gets 0 and ``lse = -inf``. ``softmax_scale``
    defaults to ``1/sqrt(D)``. ``dropout_p`` > 0 drops probabilities with the mask
    :func:`numba_flash.dropout_mask` draws from ``seed`` (required then: the backward regenerates
    the mask from it); ``lse`` stays that of the undropped probabilities. ``config``: None picks
    the tensor-core kernel on a GPU (float16; float32 as 3xTF32; contiguous last axis, 16-byte
    aligned rows, head_dim <= 128) and the portable kernel otherwise; a :class:`TensorCoreConfig` or a
    :class:`BlockConfig` forces that kernel. ``bfloat16=True``: q, k, v are uint16 arrays holding
    bfloat16 bit patterns (CuPy has no bfloat16 dtype; ``torch_tensor.view(torch.int16)`` or
    ``ml_dtypes`` arrays viewed as uint16 give them); ``out`` comes back the same way. bfloat16 runs
    on the tensor-core kernels only (GPU, head_dim <= 128, contiguous 16-byte aligned rows).

    Returns ``out`` (like q), or ``(out, lse)`` with ``lse`` float32 (B, H, Nq), the natural-log
    log-sum-exp of each row's scaled scores, when ``return_lse`` is true.
    """
    key, ptrs = _call_key("forward", (q, k, v), (causal, softmax_scale, window_size, dropout_p, seed is None,
                                                   config, bfloat16))
    plan, arrays = _forward(key, q, k, v, causal, softmax_scale, window_size, dropout_p, seed, config, bfloat16)
    out, lse = _execute(plan, arrays, plan.extras(seed), ptrs)
    return (out, lse) if return_lse else out


def _forward(key, q, k, v, causal, softmax_scale, window_size, dropout_p, seed, config, bfloat16):
    """The plan of a forward call and the arrays it runs on: from the cache, or checked and made
    (and cached under ``key`` unless it is None)."""
    plan = _cached_plan(key)
    if plan is not None:
        return plan, (q, k, v)
    backend.warn_if_simulated()
    q, k, v = _as_array("q", q), _as_array("k", k), _as_array("v", v)
    group = _check_qkv(q, k, v, bf16=_check_bool("bfloat16", bfloat16))
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    opts = _options(causal, window_size, dropout_p, seed)
    scale = _check_scale(softmax_scale, D)
    cfg = _pick(config, "forward", D, q.dtype, bool(causal), max(n_q, n_k), (("q", q), ("k", k), ("v", v)),
                opts[0] > 0.0, unmasked=_unmasked(opts))
    plan = _forward_plan((q, k, v), B, n_q, False, group, scale, cfg, opts, (B, H, n_q), _same)
    return _keep(key, plan, config, cfg), (q, k, v)


def _check_saved(dout, out, lse, q, lse_shape, lse_what):
    for name, a in (("dout", dout), ("out", out)):
        if a.shape != q.shape:
            raise ValueError(f"{name}: expected the shape of q {q.shape}, got {a.shape}")
        if a.dtype != q.dtype:
            raise TypeError(f"{name}: expected the dtype of q ({q.dtype}), got {a.dtype}")
    if lse.shape != lse_shape:
        raise ValueError(f"lse: expected shape {lse_what} = {lse_shape}, got {lse.shape}")
    if lse.dtype != np.float32:
        raise TypeError(f"lse: expected float32 (as flash_attention returns it), got {lse.dtype}")


def flash_attention_backward(dout, q, k, v, out, lse, *, causal=False, softmax_scale=None, window_size=(-1, -1),
                             dropout_p=0.0, seed=None, config=None, bfloat16=False):
    """Gradients ``(dq, dk, dv)`` of ``sum(dout * out)``, recomputing P from ``lse`` tile by tile.

    ``out`` and ``lse`` are what :func:`flash_attention` returned (``return_lse=True``) for the same
    q, k, v and the same options (causal, softmax_scale, window_size, dropout_p, seed): the dropout
    mask is regenerated from ``seed``, never stored. With GQA, dk and dv have k's H_kv heads, summed
    over each group of query heads. Deterministic: no atomics, so repeated calls are bit-identical
    (except with ``config=TensorCoreConfig(..., atomic_dq=True)``: dq by atomic adds, its last bits
    may differ from call to call).
    ``bfloat16=True`` as in :func:`flash_attention` (dout, out too; gradients come back as uint16).
    """
    key, ptrs = _call_key("backward", (dout, q, k, v, out, lse), (causal, softmax_scale, window_size, dropout_p,
                                                                   seed is None, config, bfloat16))
    plan, arrays = _backward(key, dout, q, k, v, out, lse, causal, softmax_scale, window_size, dropout_p, seed,
                             config, bfloat16)
    _, dq, dk, dv = _execute(plan, arrays, plan.extras(seed), ptrs)[:4]
    return dq, dk, dv


def _backward(key, dout, q, k, v, out, lse, causal, softmax_scale, window_size, dropout_p, seed, config, bfloat16):
    """As :func:`_forward`, for the backward (outputs: delta, dq, dk, dv)."""
    plan = _cached_plan(key)
    if plan is not None:
        return plan, (dout, q, k, v, out, lse)
    backend.warn_if_simulated()
    q, k, v = _as_array("q", q), _as_array("k", k), _as_array("v", v)
    dout, out, lse = _as_array("dout", dout), _as_array("out", out), _as_array("lse", lse)
    group = _check_qkv(q, k, v, bf16=_check_bool("bfloat16", bfloat16))
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    _check_saved(dout, out, lse, q, (B, H, n_q), "(batch, heads, seqlen_q)")
    opts = _options(causal, window_size, dropout_p, seed)
    scale = _check_scale(softmax_scale, D)
    cfg = _pick(config, "backward", D, q.dtype, bool(causal), max(n_q, n_k),
                (("q", q), ("k", k), ("v", v), ("dout", dout), ("out", out)), opts[0] > 0.0)
    arrays = (dout, q, k, v, out, lse)
    plan = _backward_plan(arrays, B, n_q, n_k, False, group, scale, cfg, opts, _same)
    return _keep(key, plan, config, cfg), arrays


# ---- packed variable-length batches ------------------------------------------------------------


def _packed(x):
    """(total, H, D) -> the kernels' (1, H, total, D) view; (H, total) lse -> (1, H, total). No copy."""
    return x[None].transpose(0, 2, 1, 3) if x.ndim == 3 else x[None]


def _check_offsets(cu_q, cu_k, max_seqlen_q, max_seqlen_k, total_q, total_k):
    """cu_seqlens must be int32, start at 0, never decrease and end at the packed totals."""
    xp = backend.array_module()
    host = {}
    for name, cu, total in (("cu_seqlens_q", cu_q, total_q), ("cu_seqlens_k", cu_k, total_k)):
        if not hasattr(cu, "dtype") or not hasattr(cu, "ndim"):
            raise TypeError(f"{name}: expected an int32 array of batch + 1 offsets, got {type(cu).__name__}")
        if cu.dtype != np.int32:
            raise TypeError(f"{name}: expected dtype int32, got {cu.dtype}")
        if cu.ndim != 1 or cu.shape[0] < 2:
            raise ValueError(f"{name}: expected a 1-D array of batch + 1 >= 2 offsets, got shape {cu.shape}")
        c = np.asarray(cu.get() if xp is not np and hasattr(cu, "get") else cu).astype(np.int64)
        if c[0] != 0:
            raise ValueError(f"{name}: expected the first offset to be 0, got {c[0]}")
        if np.any(np.diff(c) < 0):
            at = int(np.argmax(np.diff(c) < 0))
            raise ValueError(f"{name}: offsets must not decrease, but {name}[{at + 1}] = {c[at + 1]} < {c[at]}")
        if c[-1] != total:
            raise ValueError(f"{name}: the last offset must equal the packed length {total}, got {c[-1]}")
        host[name] = c
    if host["cu_seqlens_q"].shape != host["cu_seqlens_k"].shape:
        raise ValueError(f"cu_seqlens_q, cu_seqlens_k: expected the same number of sequences, got "
                         f"{host['cu_seqlens_q'].shape[0] - 1} and {host['cu_seqlens_k'].shape[0] - 1}")
    for name, given, cu in (("max_seqlen_q", max_seqlen_q, host["cu_seqlens_q"]),
                            ("max_seqlen_k", max_seqlen_k, host["cu_seqlens_k"])):
        longest = int(np.diff(cu).max())
        if isinstance(given, bool) or not isinstance(given, numbers.Integral):
            raise TypeError(f"{name}: expected an int, got {type(given).__name__}")
        if given < max(longest, 1):
            raise ValueError(f"{name}: got {given}, but the longest sequence has {longest} (and it must be >= 1)")
    return host["cu_seqlens_q"].shape[0] - 1


def _varlen_common(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    q, k, v = _as_array("q", q), _as_array("k", k), _as_array("v", v)
    cu_q, cu_k = _as_array("cu_seqlens_q", cu_seqlens_q), _as_array("cu_seqlens_k", cu_seqlens_k)
    group = _check_qkv(q, k, v, ndim=3, what="(total_seqlen, heads, head_dim)")
    n_seq = _check_offsets(cu_q, cu_k, max_seqlen_q, max_seqlen_k, q.shape[0], k.shape[0])
    if n_seq > _MAX_GRID_YZ:
        raise ValueError(f"cu_seqlens_q: at most {_MAX_GRID_YZ} sequences, got {n_seq}")
    return q, k, v, cu_q, cu_k, n_seq, group


def flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False,
                           softmax_scale=None, window_size=(-1, -1), dropout_p=0.0, seed=None, config=None,
                           return_lse=False):
    """:func:`flash_attention` on a packed batch of sequences of different lengths, without padding.

    q: (total_q, H, D); k, v: (total_k, H_kv, D); sequence b is rows ``cu_seqlens_q[b] :
    cu_seqlens_q[b + 1]`` of q and ``cu_seqlens_k[b] : cu_seqlens_k[b + 1]`` of k and v (int32
    offsets, starting at 0, ending at the totals; empty sequences allowed). ``max_seqlen_q/_k`` are
    at least the longest lengths (they size the grid). Causal and window bands align each
    sequence's own bottom-right corner; the dropout mask of sequence b is that of batch entry b.
    Returns ``out`` (total_q, H, D), or ``(out, lse)`` with ``lse`` float32 (H, total_q).
    """
    backend.warn_if_simulated()
    q, k, v, cu_q, cu_k, n_seq, group = _varlen_common(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                       max_seqlen_k)
    T, H, D = q.shape
    opts = _options(causal, window_size, dropout_p, seed)
    scale = _check_scale(softmax_scale, D)
    cfg = _pick(config, "forward", D, q.dtype, bool(causal), max(max_seqlen_q, max_seqlen_k),
                (("q", q), ("k", k), ("v", v)), opts[0] > 0.0)
    # not cached: the offsets' values, which the checks read, change from call to call
    inputs = (q, k, v, cu_q, cu_k)
    plan = _forward_plan(inputs, n_seq, max_seqlen_q, True, group, scale, cfg, opts, (H, T), _packed)
    out, lse = _execute(plan, inputs, plan.extras(seed))
    return (out, lse) if return_lse else out


def flash_attention_varlen_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                    *, causal=False, softmax_scale=None, window_size=(-1, -1), dropout_p=0.0,
                                    seed=None, config=None):
    """Gradients ``(dq, dk, dv)`` for :func:`flash_attention_varlen`, in its packed layout."""
    backend.warn_if_simulated()
    q, k, v, cu_q, cu_k, n_seq, group = _varlen_common(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                       max_seqlen_k)
    dout, out, lse = _as_array("dout", dout), _as_array("out", out), _as_array("lse", lse)
    T, H, D = q.shape
    _check_saved(dout, out, lse, q, (H, T), "(heads, total_q)")
    opts = _options(causal, window_size, dropout_p, seed)
    scale = _check_scale(softmax_scale, D)
    cfg = _pick(config, "backward", D, q.dtype, bool(causal), max(max_seqlen_q, max_seqlen_k),
                (("q", q), ("k", k), ("v", v), ("dout", dout), ("out", out)), opts[0] > 0.0)
    inputs = (dout, q, k, v, out, lse, cu_q, cu_k)
    plan = _backward_plan(inputs, n_seq, max_seqlen_q, max_seqlen_k, True, group, scale, cfg, opts, _packed)
    _, dq, dk, dv = _execute(plan, inputs, plan.extras(seed))[:4]
    return dq, dk, dv
