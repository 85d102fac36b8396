"""Benchmark harness: numba_flash against standard attention and PyTorch SDPA, same process, same GPU.

Every implementation runs on the *same* device arrays (CuPy arrays, shared with torch through
DLPack without a copy), is timed with CUDA events after warm-up (``numba_flash.timing.time_ms``,
median of repeats) and is credited with the same nominal FLOPs (``timing.attention_flops``,
FlashAttention's benchmark convention), so TFLOP/s compare like with like.

Implementations (each present only when it can run here):

* ``numba_flash``: our kernels (forward; forward+backward = ``flash_attention(return_lse=True)``
  then ``flash_attention_backward``).
* ``cupy_standard``: ``numba_flash.standard``, the N x N matrices in HBM (NumPy on the simulator).
* ``torch_flash``, ``torch_efficient``, ``torch_cudnn``, ``torch_math``: ``F.scaled_dot_product_attention``
  with one backend forced by ``torch.nn.attention.sdpa_kernel``, in the dtypes that backend accepts.

Our kernels are slow (a few TFLOP/s), so the repeat count of each measurement is capped by a time
budget (at least 2 repeats), and a measurement whose single run is predicted or found to exceed
``max_single_s`` is skipped and recorded as such. An implementation that raises (unsupported shape,
out of memory) is recorded with its error string; the sweep goes on.

Library entry points: :func:`run`, :func:`host_overhead`, :func:`standard_shapes`, :func:`main`
(the ``numba-flash bench`` command and ``experiments/bench_speed.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from . import backend
from .reference import bfloat16_bits
from .results import pyplot
from .timing import attention_flops, time_ms

PASSES = ("forward", "forward_backward")
# The standard sweep of FlashAttention's benchmarks: 16k tokens per batch, hidden size 2048.
TOTAL_TOKENS = 16384
HIDDEN = 2048
STANDARD_SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
STANDARD_HEAD_DIMS = (64, 128)
SMOKE_SHAPES = ((1, 1, 16, 16), (1, 1, 32, 16))
HOST_OVERHEAD_SHAPE = (1, 1, 128, 64)
# H100 L2 is 50 MB; used when the device does not report its own.
DEFAULT_L2_BYTES = 50 * 10**6
MAX_INPUT_SETS = 8

TORCH_BACKENDS = {  # impl name -> (SDPBackend member, dtypes it accepts among the ones we compare)
    "torch_flash": ("FLASH_ATTENTION", ("float16", "bfloat16")),
    "torch_efficient": ("EFFICIENT_ATTENTION", ("float16", "bfloat16", "float32")),
    "torch_cudnn": ("CUDNN_ATTENTION", ("float16", "bfloat16")),
    "torch_math": ("MATH", ("float16", "bfloat16", "float32")),
}
DTYPES = ("float16", "bfloat16", "float32")


def array_dtype(dtype) -> np.dtype:
    """The device arrays' dtype for a benchmark dtype: bfloat16 travels as uint16 bit patterns
    (CuPy has no bfloat16; numba_flash takes them with ``bfloat16=True``, torch views them)."""
    return np.dtype(np.uint16) if str(dtype) == "bfloat16" else np.dtype(dtype)
IMPL_NAMES = ("numba_flash", "cupy_standard", *TORCH_BACKENDS)


# --------------------------------------------------------------------------------------------
# Shapes


@dataclass(frozen=True)
class Shape:
    """(batch, heads, seqlen, head_dim); queries and keys have the same length."""

    batch: int
    heads: int
    seqlen: int
    head_dim: int

    def __str__(self):
        return f"B={self.batch} H={self.heads} N={self.seqlen} D={self.head_dim}"


def standard_shapes(seqlens: Iterable[int] = STANDARD_SEQLENS, head_dims: Iterable[int] = STANDARD_HEAD_DIMS,
                    total_tokens: int = TOTAL_TOKENS, hidden: int = HIDDEN) -> list[Shape]:
    """FlashAttention's sweep: batch = total_tokens // seqlen, heads = hidden // head_dim."""
    return [Shape(max(1, total_tokens // n), hidden // d, n, d) for d in head_dims for n in seqlens]


def parse_shape(text: str) -> Shape:
    """``"B,H,N,D"`` -> :class:`Shape` (argparse type)."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected B,H,N,D (four positive ints), got {text!r}")
    return Shape(*parts)


# --------------------------------------------------------------------------------------------
# Implementations


@dataclass
class Impl:
    """One way to compute attention.

    ``prepare(q, k, v, do)`` turns one input set (this backend's arrays) into what ``fn`` takes,
    once, outside the timed region (e.g. zero-copy torch views). ``make(pass_, causal)`` returns
    ``fn(*prepared)``. ``context()`` is entered around warm-up and timing (torch's backend choice).
    """

    name: str
    description: str
    dtypes: tuple[str, ...]
    make: Callable[[str, bool], Callable]
    prepare: Callable = None  # default: the arrays as they are
    context: Callable = contextlib.nullcontext

    def __post_init__(self):
        if self.prepare is None:
            self.prepare = lambda *arrays: arrays


def _numba_flash_impl() -> Impl:
    from . import api

    def make(pass_, causal):
        if pass_ == "forward":
            return lambda q, k, v, do: api.flash_attention(q, k, v, causal=causal, bfloat16=q.dtype == np.uint16)

        def forward_backward(q, k, v, do):
            bf16 = q.dtype == np.uint16
            out, lse = api.flash_attention(q, k, v, causal=causal, return_lse=True, bfloat16=bf16)
            return api.flash_attention_backward(do, q, k, v, out, lse, causal=causal, bfloat16=bf16)

        return forward_backward

    return Impl("numba_flash", "numba_flash kernels (this package)", DTYPES, make)


def _numba_flash_configs(shape: Shape, dtype, causal: bool, pass_: str) -> dict | None:
    """The block configurations numba_flash picks for this problem with ``config=None`` (the default,
    or a tuned one from the tuning cache), so that a result says what it measured; None if unknown."""
    from . import api

    kernels = ("forward",) if pass_ == "forward" else ("forward", "backward")
    try:
        return {k: str(api._pick(None, k, shape.head_dim, array_dtype(dtype), causal, shape.seqlen, (),
                                 unmasked=not causal)) for k in kernels}
    except Exception:  # noqa: BLE001 - informational only; the API's private signature may change
        return None


def _standard_impl() -> Impl:
    from . import standard

    def make(pass_, causal):
        if pass_ == "forward":
            return lambda q, k, v, do: standard.forward(q, k, v, causal=causal)

        def forward_backward(q, k, v, do):
            out, p = standard.forward(q, k, v, causal=causal)
            return standard.backward(do, q, k, v, out, p)

        return forward_backward

    lib = "NumPy" if backend.BACKEND == backend.SIMULATOR else "CuPy"
    return Impl("cupy_standard", f"standard attention in {lib}, N x N matrices in HBM", ("float16", "float32"), make)


def torch_for_sdpa():
    """``(torch, None)`` when SDPA can be a baseline here: the GPU backend, torch >= 2.3 importable and
    seeing a CUDA device; else ``(None, why)``, a phrase the experiments print before "nothing to do"."""
    if backend.BACKEND != backend.GPU:
        return None, "needs the GPU backend (the tensor-core kernels use inline PTX)"
    try:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: F401 - torch >= 2.3
    except ImportError:
        return None, "needs PyTorch >= 2.3 (SDPA is the baseline)"
    if not torch.cuda.is_available():
        return None, "PyTorch sees no CUDA device"
    return torch, None


def _torch():
    """torch, when it is importable and can use this GPU (and only on the GPU backend); else None."""
    return torch_for_sdpa()[0]


def _torch_impl(name: str) -> Impl:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    member, dtypes = TORCH_BACKENDS[name]
    sdp_backend = getattr(SDPBackend, member)

    def prepare(q, k, v, do):
        # Zero-copy views of the CuPy arrays; q, k, v become leaves that autograd differentiates.
        tq, tk, tv, tdo = (torch.from_dlpack(a) for a in (q, k, v, do))
        if q.dtype == np.uint16:  # bfloat16 bit patterns
            tq, tk, tv, tdo = (t.view(torch.bfloat16) for t in (tq, tk, tv, tdo))
        return tuple(t.requires_grad_(True) for t in (tq, tk, tv)) + (tdo,)

    def make(pass_, causal):
        if pass_ == "forward":
            def forward(q, k, v, do):
                with torch.no_grad():  # inference: no autograd bookkeeping, no saved tensors
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

            return forward

        def forward_backward(q, k, v, do):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            # The same work as out.backward(do), but returns the gradients instead of accumulating
            # into .grad, so every repeat does the same work (no extra add kernels after the first).
            return torch.autograd.grad(out, (q, k, v), do)

        return forward_backward

    return Impl(name, f"torch SDPA, backend forced to {member}", dtypes, make, prepare,
                lambda: sdpa_kernel(sdp_backend))


def available_implementations() -> tuple[dict[str, Impl], dict[str, str]]:
    """``(available, unavailable)``: name -> :class:`Impl`, and name -> reason it is not here."""
    impls = {"numba_flash": _numba_flash_impl(), "cupy_standard": _standard_impl()}
    missing = {}
    if backend.BACKEND != backend.GPU:
        reason = "not available: needs the GPU backend (running on the CUDA simulator)"
    else:
        reason = "not available: torch (>= 2.3, with CUDA) is not installed"
    torch = _torch()
    for name in TORCH_BACKENDS:
        if torch is None:
            missing[name] = reason
        else:
            impls[name] = _torch_impl(name)
    return impls, missing


# --------------------------------------------------------------------------------------------
# Device helpers


def _sync():
    """Wait for all queued device work (CuPy, numba and torch all queue on the legacy default stream)."""
    if backend.BACKEND == backend.GPU:
        import cupy

        cupy.cuda.runtime.deviceSynchronize()


def _free_memory():
    """Give cached blocks back to the driver, so the next implementation (CuPy's pool vs torch's
    caching allocator) can use all of the GPU's memory."""
    if backend.BACKEND != backend.GPU:
        return
    import cupy

    _sync()
    cupy.get_default_memory_pool().free_all_blocks()
    torch = _torch()
    if torch is not None:
        torch.cuda.empty_cache()


def _l2_bytes() -> int:
    if backend.BACKEND != backend.GPU:
        return DEFAULT_L2_BYTES
    try:
        import cupy

        return int(cupy.cuda.Device().attributes["L2CacheSize"]) or DEFAULT_L2_BYTES
    except Exception:  # pragma: no cover - depends on the CuPy version
        return DEFAULT_L2_BYTES


def n_input_sets(shape: Shape, dtype, l2_bytes: int | None = None) -> int:
    """How many input sets to rotate through: several when one set (q, k, v, dO) fits in L2, so
    that repeated calls do not just re-read a warm cache; one on the simulator."""
    if backend.BACKEND != backend.GPU:
        return 1
    l2 = l2_bytes or _l2_bytes()
    set_bytes = 4 * shape.batch * shape.heads * shape.seqlen * shape.head_dim * array_dtype(dtype).itemsize
    if set_bytes >= l2:
        return 1
    return int(min(MAX_INPUT_SETS, math.ceil(2 * l2 / set_bytes)))


def make_inputs(shape: Shape, dtype, n_sets: int = 1, seed: int = 0) -> list[tuple]:
    """``n_sets`` tuples (q, k, v, dO) of standard-normal values (never zeros) on the device."""
    xp = backend.array_module()
    # CuPy's RandomState draws float32 on the device directly (no host round trip).
    rng = xp.random.RandomState(seed) if backend.BACKEND == backend.GPU else np.random.default_rng(seed)
    dims = (shape.batch, shape.heads, shape.seqlen, shape.head_dim)
    if str(dtype) == "bfloat16":
        return [tuple(bfloat16_bits(rng.standard_normal(dims, dtype=np.float32)) for _ in range(4))
                for _ in range(n_sets)]
    return [tuple(rng.standard_normal(dims, dtype=np.float32).astype(dtype) for _ in range(4))
            for _ in range(n_sets)]


def _error_text(exc: BaseException, caught: Sequence[warnings.WarningMessage] = ()) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    # torch explains in warnings why a forced SDPA backend cannot run; keep the reasons.
    reasons = [str(w.message).strip() for w in caught if "ernel" in str(w.message) or "not" in str(w.message)]
    if reasons:
        text += "; " + "; ".join(dict.fromkeys(reasons))
    text = " ".join(text.split())
    return text if len(text) <= 600 else text[:597] + "..."


def _is_oom(exc: BaseException) -> bool:
    return "OutOfMemory" in type(exc).__name__ or "out of memory" in str(exc).lower()


# --------------------------------------------------------------------------------------------
# The sweep


@dataclass
class _Budget:
    repeat: int
    time_budget_s: float
    max_single_s: float
    # Throughput seen so far per (impl, pass, dtype, head_dim, causal), FLOP per second: predicts how
    # long the next (larger) shape's single run will take, before running it.
    throughput: dict = field(default_factory=dict)
    # Keys whose kernels have run once (compiled): their first warm-up no longer includes compilation.
    warm: set = field(default_factory=set)


def _measure(impl: Impl, fn, prepared: list[tuple], flops: float, key: tuple, budget: _Budget,
             remaining_s: float = math.inf) -> dict:
    """Warm up, choose the repeat count from the budget, time; a dict of result fields.

    ``remaining_s``: what is left of the whole sweep's time; a measurement predicted not to fit is skipped.
    """
    rate = budget.throughput.get(key)
    if rate:
        predicted = flops / rate
        if predicted > budget.max_single_s:
            return {"status": "skipped", "predicted_s": predicted,
                    "reason": f"one run predicted to take {predicted:.1f} s > max_single_s={budget.max_single_s:g} s "
                              f"(from the throughput at a smaller shape)"}
        # One warm-up and at least two repeats, or the repeat budget.
        cost = max(3 * predicted, predicted + budget.time_budget_s)
        if cost > remaining_s:
            return {"status": "skipped", "predicted_s": predicted,
                    "reason": f"predicted to take {cost:.1f} s, more than the {max(remaining_s, 0):.1f} s left "
                              "of the sweep's time budget (max_total_s)"}
    elif remaining_s <= 0:
        return {"status": "skipped", "reason": "the sweep's time budget (max_total_s) was used up"}
    on_gpu = backend.BACKEND == backend.GPU
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with impl.context():
                single = None
                if on_gpu:
                    # The first call of a kernel variant includes its compilation: warm up twice then.
                    # A fast call gets a third warm-up (cheap; settles clocks and allocator caches).
                    warmups = 1 if key in budget.warm else 2
                    i = 0
                    while i < warmups or (i < 3 and single < 0.01):
                        t0 = time.perf_counter()
                        fn(*prepared[i % len(prepared)])
                        _sync()
                        single = time.perf_counter() - t0
                        i += 1
                    budget.warm.add(key)
                    if single > budget.max_single_s:
                        return {"status": "skipped", "single_run_s": single,
                                "reason": f"one run took {single:.1f} s > max_single_s={budget.max_single_s:g} s"}
                    repeat = int(min(budget.repeat, max(min(2, budget.repeat), budget.time_budget_s / single)))
                else:
                    repeat = budget.repeat  # the simulator: no compilation to warm up, wall clock only
                timing = time_ms(fn, prepared, warmup=0, repeat=repeat)
                _sync()
        except Exception as exc:  # noqa: BLE001 - any failure is a result to record
            return {"status": "oom" if _is_oom(exc) else "error", "error": _error_text(exc, caught)}
    ms = timing["median_ms"]
    if ms > 0:
        budget.throughput[key] = flops / (ms * 1e-3)
    return {"status": "ok", "ms": ms, "min_ms": timing["min_ms"], "max_ms": timing["max_ms"],
            "repeat": timing["repeat"], "tflops": flops / (ms * 1e-3) / 1e12 if ms > 0 else None}


def run(shapes: Sequence[Shape | tuple], impls: Sequence[str] | None = None, passes: Sequence[str] = PASSES,
        dtypes: Sequence[str] | str = ("float16",), causals: Sequence[bool] | bool = (False, True),
        repeat: int = 20, time_budget_s: float = 0.5, *, max_single_s: float = 10.0,
        max_total_s: float | None = None, seed: int = 0, show_progress: bool = False, console=None) -> list[dict]:
    """Time every (dtype, shape, causal, pass, implementation); return one record (dict) per measurement.

    ``impls``: names from :data:`IMPL_NAMES` (default: all available; unavailable ones are left out,
    see :func:`available_implementations`). ``repeat``: the most timed repeats per measurement;
    ``time_budget_s``: the timed repeats of one measurement stop at about this many seconds (at
    least 2 repeats); ``max_single_s``: skip a measurement whose single run would take longer;
    ``max_total_s``: bounds the wall time of the whole sweep: a measurement predicted (from the
    throughput at a smaller shape) not to fit in what is left is skipped, and once the time is
    used up all remaining ones are (recorded as such; cheap baselines of a shape still run when
    only our slow kernel's measurement would not fit).

    A record has ``impl, pass, dtype, batch, heads, seqlen, head_dim, causal, flops, n_input_sets,
    status`` (``ok``, ``error``, ``oom``, ``skipped``, ``unsupported``) and, when ok, ``ms`` (median),
    ``min_ms, max_ms, repeat, tflops``; else ``error`` or ``reason``. Records of baselines also get
    ``numba_flash_speedup`` (baseline ms / numba_flash ms; below 1 means numba_flash is slower).
    """
    shapes = [s if isinstance(s, Shape) else Shape(*s) for s in shapes]
    dtypes = [np.dtype(d).name for d in ([dtypes] if isinstance(dtypes, str) else dtypes)]
    causals = [causals] if isinstance(causals, bool) else list(causals)
    for p in passes:
        if p not in PASSES:
            raise ValueError(f"pass {p!r}: expected one of {PASSES}")
    available, _ = available_implementations()
    names = [n for n in (impls or IMPL_NAMES) if n in available]
    unknown = [n for n in (impls or ()) if n not in IMPL_NAMES]
    if unknown:
        raise ValueError(f"unknown implementation(s) {unknown}: expected some of {IMPL_NAMES}")
    # Small problems first: the throughput measured there predicts the time of the larger ones.
    shapes = sorted(shapes, key=lambda s: (s.head_dim, s.batch * s.heads * s.seqlen**2, s.seqlen))
    budget = _Budget(repeat, time_budget_s, max_single_s)
    l2 = _l2_bytes()
    total = len(dtypes) * len(shapes) * len(causals) * len(passes) * len(names)
    records: list[dict] = []
    t_start = time.perf_counter()

    progress = None
    if show_progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("{task.description:<60}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, transient=False)
        task = progress.add_task("bench", total=total)
        progress.start()
    try:
        for dtype in dtypes:
            for shape in shapes:
                sets = n_input_sets(shape, dtype, l2)
                inputs = make_inputs(shape, dtype, sets, seed)
                for name in names:
                    impl = available[name]
                    prepared = [impl.prepare(*s) for s in inputs] if dtype in impl.dtypes else None
                    for causal in causals:
                        for pass_ in passes:
                            flops = attention_flops(shape.batch, shape.heads, shape.seqlen, shape.seqlen,
                                                    shape.head_dim, causal, pass_)
                            rec = {"impl": name, "pass": pass_, "dtype": dtype, "batch": shape.batch,
                                   "heads": shape.heads, "seqlen": shape.seqlen, "head_dim": shape.head_dim,
                                   "causal": causal, "flops": flops, "n_input_sets": sets}
                            if progress is not None:
                                progress.update(task, description=f"{name} {pass_} {dtype} {shape} "
                                                                  f"{'causal' if causal else ''}")
                            if prepared is None:
                                rec.update(status="unsupported", reason=f"{name} does not take {dtype}")
                            else:
                                if name == "numba_flash":
                                    rec["config"] = _numba_flash_configs(shape, dtype, causal, pass_)
                                key = (name, pass_, dtype, shape.head_dim, causal)
                                remaining = (math.inf if max_total_s is None
                                             else max_total_s - (time.perf_counter() - t_start))
                                rec.update(_measure(impl, impl.make(pass_, causal), prepared, flops, key, budget,
                                                    remaining))
                            records.append(rec)
                            if progress is not None:
                                progress.advance(task)
                            if rec["status"] in ("oom", "error"):
                                _free_memory()
                    del prepared
                    _free_memory()  # CuPy's pool and torch's cache hold memory the other cannot use
                del inputs
                _free_memory()
    finally:
        if progress is not None:
            progress.stop()
    add_speedups(records)
    return records


def _key(r: dict) -> tuple:
    return (r["pass"], r["dtype"], r["batch"], r["heads"], r["seqlen"], r["head_dim"], r["causal"])


def add_speedups(records: list[dict]) -> None:
    """Set ``numba_flash_speedup`` = baseline ms / numba_flash ms on each baseline record where both ran."""
    ours = {_key(r): r["ms"] for r in records if r["impl"] == "numba_flash" and r["status"] == "ok"}
    for r in records:
        if r["impl"] != "numba_flash" and r["status"] == "ok" and _key(r) in ours:
            r["numba_flash_speedup"] = r["ms"] / ours[_key(r)]


# --------------------------------------------------------------------------------------------
# Host overhead


def host_overhead(shape: Shape | tuple = HOST_OVERHEAD_SHAPE, dtype="float16", repeat: int = 500,
                  warmup: int = 20) -> dict:
    """Wall-clock microseconds of one forward call on a tiny problem, numba_flash vs torch SDPA
    (default backend), where launch overhead and not the GPU dominates.

    ``sync_us``: ``time.perf_counter`` around the call followed by a stream synchronize (what a
    caller waits for); ``launch_us``: around the call only (the host's cost to queue the work; the
    synchronize then happens outside the timed region). Medians over ``repeat`` calls after ``warmup``.
    """
    shape = shape if isinstance(shape, Shape) else Shape(*shape)
    dtype = np.dtype(dtype)
    q, k, v, _ = make_inputs(shape, dtype, 1, seed=1)[0]
    result = {"shape": [shape.batch, shape.heads, shape.seqlen, shape.head_dim], "dtype": dtype.name,
              "repeat": repeat, "warmup": warmup}

    def measure(call, sync):
        for _ in range(warmup):
            call()
        sync()
        with_sync, launch = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            call()
            sync()
            with_sync.append(time.perf_counter() - t0)
        for _ in range(repeat):
            t0 = time.perf_counter()
            call()
            launch.append(time.perf_counter() - t0)
            sync()  # outside the timed region: the queue stays empty for the next call
        return {"sync_us": float(np.median(with_sync) * 1e6), "launch_us": float(np.median(launch) * 1e6),
                "sync_us_min": float(np.min(with_sync) * 1e6)}

    from . import api

    if backend.BACKEND == backend.GPU:
        import cupy

        stream_sync = lambda: cupy.cuda.get_current_stream().synchronize()  # noqa: E731
    else:
        stream_sync = lambda: None  # noqa: E731 - the simulator runs synchronously

    result["numba_flash"] = measure(lambda: api.flash_attention(q, k, v), stream_sync)
    torch = _torch()
    if torch is None:
        result["torch_sdpa"] = "not available" + (" (simulator)" if backend.BACKEND != backend.GPU else
                                                  " (torch not installed)")
    else:
        import torch.nn.functional as F

        tq, tk, tv = (torch.from_dlpack(a) for a in (q, k, v))

        def sdpa():
            with torch.no_grad():
                F.scaled_dot_product_attention(tq, tk, tv)

        try:
            result["torch_sdpa"] = measure(sdpa, torch.cuda.current_stream().synchronize)
        except Exception as exc:  # noqa: BLE001
            result["torch_sdpa"] = _error_text(exc)
    return result


# --------------------------------------------------------------------------------------------
# Reporting


def _timing_method() -> str:
    if backend.BACKEND == backend.GPU:
        return "CUDA events, median of repeats after warm-up"
    return "wall clock on the CUDA simulator (says only that the code ran; not a speed measurement)"


def _short(name: str) -> str:
    return name.replace("torch_", "sdpa_")


def _fmt(x, spec=".3g"):
    return "" if x is None else format(x, spec)


def _status_text(r: dict) -> str:
    return {"oom": "OOM", "error": "error", "skipped": "skipped", "unsupported": "n/a"}.get(r["status"], r["status"])


def summary_rows(records: list[dict]) -> tuple[list[dict], list[str]]:
    """Wide rows, one per (pass, dtype, shape, causal), TFLOP/s per implementation."""
    impls = list(dict.fromkeys(r["impl"] for r in records))
    rows: dict[tuple, dict] = {}
    for r in records:
        row = rows.setdefault(_key(r), {"pass": r["pass"], "dtype": r["dtype"], "D": r["head_dim"],
                                        "causal": r["causal"], "N": r["seqlen"], "B": r["batch"], "H": r["heads"]})
        row[_short(r["impl"])] = r.get("tflops") if r["status"] == "ok" else _status_text(r)
        if "numba_flash_speedup" in r:
            row[f"nf/{_short(r['impl'])}"] = r["numba_flash_speedup"]
    columns = ["pass", "dtype", "D", "causal", "N", "B", "H", *map(_short, impls)]
    columns += [f"nf/{_short(n)}" for n in impls if n != "numba_flash" and "numba_flash" in impls]
    order = sorted(rows.values(), key=lambda x: (x["pass"], x["dtype"], x["D"], x["causal"], x["N"], x["B"]))
    return order, columns


def print_table(records: list[dict], console=None) -> None:
    """One rich table per (pass, dtype): a row per shape, a column per implementation."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    impls = list(dict.fromkeys(r["impl"] for r in records))
    groups: dict[tuple, dict] = {}
    for r in records:
        groups.setdefault((r["pass"], r["dtype"]), {}).setdefault(
            (r["head_dim"], r["causal"], r["seqlen"], r["batch"], r["heads"]), {})[r["impl"]] = r
    for (pass_, dtype), shapes in groups.items():
        how = "CUDA events" if backend.BACKEND == backend.GPU else "simulator wall clock, not a speed measurement"
        table = Table(title=f"{pass_} {dtype}: TFLOP/s and median ms ({how})",
                      caption="'nf x': numba_flash speed relative to that column (its ms / numba_flash ms; "
                              "< 1: numba_flash is slower)")
        for col in ("D", "causal", "N", "B", "H"):
            table.add_column(col, justify="right")
        for name in impls:
            table.add_column(_short(name), justify="right")
        for (d, causal, n, b, h), by_impl in sorted(shapes.items()):
            cells = []
            for name in impls:
                r = by_impl.get(name)
                if r is None:
                    cells.append("")
                elif r["status"] != "ok":
                    cells.append(f"[yellow]{_status_text(r)}[/yellow]")
                else:
                    text = f"{r['tflops']:.3g} TF/s\n{r['ms']:.3g} ms"
                    if "numba_flash_speedup" in r:
                        text += f"\n[cyan]nf {r['numba_flash_speedup']:.3g}x[/cyan]"
                    cells.append(text)
            table.add_row(str(d), "yes" if causal else "no", str(n), str(b), str(h), *cells)
        console.print(table)
    notes = [r for r in records if r["status"] in ("error", "oom", "skipped")]
    for r in notes:
        console.print(f"[yellow]{r['impl']} {r['pass']} {r['dtype']} N={r['seqlen']} D={r['head_dim']} "
                      f"causal={r['causal']}: {_status_text(r)}[/yellow] {r.get('error') or r.get('reason')}",
                      highlight=False)


def print_host_overhead(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    b, h, n, d = result["shape"]
    table = Table(title=f"host overhead of one forward call, B={b} H={h} N={n} D={d} {result['dtype']} "
                        f"(median of {result['repeat']} after {result['warmup']} warm-up)")
    table.add_column("implementation")
    table.add_column("call + stream sync (us)", justify="right")
    table.add_column("call only, launch (us)", justify="right")
    for name in ("numba_flash", "torch_sdpa"):
        v = result.get(name)
        if isinstance(v, dict):
            table.add_row(name, f"{v['sync_us']:.1f}", f"{v['launch_us']:.1f}")
        else:
            table.add_row(name, str(v), "")
    console.print(table)


def host_overhead_markdown(result: dict) -> str:
    from .results import markdown_table

    rows = []
    for name in ("numba_flash", "torch_sdpa"):
        v = result.get(name)
        if isinstance(v, dict):
            rows.append({"implementation": name, "call + sync (us)": v["sync_us"], "launch only (us)": v["launch_us"]})
        else:
            rows.append({"implementation": name, "call + sync (us)": str(v)})
    b, h, n, d = result["shape"]
    return (f"Host overhead of one forward call at B={b} H={h} N={n} D={d} {result['dtype']}, median of "
            f"{result['repeat']} calls after {result['warmup']} warm-up (time.perf_counter; 'call + sync' "
            "waits for the stream, 'launch only' does not):\n\n"
            + markdown_table(rows, ["implementation", "call + sync (us)", "launch only (us)"], floatfmt=".1f"))


def markdown_body(records, host, implementations, elapsed_s, settings) -> str:
    from .results import markdown_table

    rows, columns = summary_rows(records)
    records = sorted(records, key=lambda r: (r["pass"], r["dtype"], r["head_dim"], r["causal"], r["seqlen"],
                                             r["batch"], IMPL_NAMES.index(r["impl"])))
    detail = [{**{k: r.get(k) for k in ("pass", "dtype", "head_dim", "causal", "seqlen", "batch", "heads", "impl")},
               "status": _status_text(r), "ms": r.get("ms"), "TFLOP/s": r.get("tflops"),
               "nf speedup": r.get("numba_flash_speedup"), "repeat": r.get("repeat"),
               # A '|' would end the Markdown cell early.
               "note": (r.get("error") or r.get("reason") or "").replace("|", "\\|")} for r in records]
    impl_lines = "\n".join(f"- `{name}`: {desc}" for name, desc in implementations.items())
    parts = [
        "Nominal FLOPs as FlashAttention's benchmarks count them: 4·B·H·N²·D for the forward, halved when "
        f"causal, ×3.5 for forward+backward. Time: {_timing_method()}, on the same device arrays for every "
        "implementation. `nf/x`: numba_flash speed relative to x (x's ms / numba_flash ms; below 1 means "
        "numba_flash is slower).",
        f"Sweep settings: {settings}. Wall time of the sweep: {elapsed_s:.1f} s.",
        "## Implementations\n\n" + impl_lines,
        "## TFLOP/s\n\n" + markdown_table(rows, columns),
        "## Host overhead\n\n" + host_overhead_markdown(host) if host else "",
        "## All measurements\n\n" + markdown_table(detail, list(detail[0]) if detail else None),
    ]
    # Starts with a blank line: results.save puts the body right under its header lines.
    return "\n" + "\n\n".join(p for p in parts if p) + "\n"


def plot(records: list[dict], path) -> bool:
    """TFLOP/s vs seqlen, a line per implementation, a subplot per (dtype, head_dim, causal) x pass.
    Returns False (and writes nothing) when matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return False
    import matplotlib.ticker
    ok = [r for r in records if r["status"] == "ok" and r["tflops"]]
    rows = sorted({(r["dtype"], r["head_dim"], r["causal"]) for r in ok})
    cols = [p for p in PASSES if any(r["pass"] == p for r in ok)]
    if not rows or not cols:
        return False
    impls = list(dict.fromkeys(r["impl"] for r in records))
    # One colour per implementation in every subplot, whichever implementations a subplot has.
    colours = {name: f"C{i}" for i, name in enumerate(IMPL_NAMES)}
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(6 * len(cols), 3.6 * len(rows)), squeeze=False)
    for i, (dtype, d, causal) in enumerate(rows):
        for j, pass_ in enumerate(cols):
            ax = axes[i][j]
            for name in impls:
                pts = sorted((r["seqlen"], r["tflops"]) for r in ok if r["impl"] == name and r["pass"] == pass_
                             and (r["dtype"], r["head_dim"], r["causal"]) == (dtype, d, causal))
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=_short(name), color=colours.get(name))
            seqlens = sorted({r["seqlen"] for r in ok if (r["dtype"], r["head_dim"], r["causal"]) == (dtype, d, causal)})
            ax.set_xscale("log", base=2)
            ax.set_xticks(seqlens, [str(n) for n in seqlens])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # only the measured lengths
            ax.set_yscale("log")
            ax.set_title(f"{pass_}, head_dim {d}, {'causal' if causal else 'not causal'}, {dtype}", fontsize=10)
            ax.set_xlabel("sequence length")
            ax.set_ylabel("TFLOP/s")
            ax.grid(True, which="both", alpha=0.3)
    # One legend for the figure (per-subplot legends hide the lines), every implementation that ran.
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.suptitle(f"numba_flash vs baselines on {backend.device_name()} (TFLOP/s, log scale)")
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(6, len(handles)),
               bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_figheight()), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# Command line


def build_parser(prog: str = "numba-flash bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Time numba_flash against standard attention (CuPy) and PyTorch SDPA (each backend forced): "
                    "forward and forward+backward, ms and TFLOP/s. Default: FlashAttention's standard sweep "
                    f"(batch*seqlen = {TOTAL_TOKENS}, heads*head_dim = {HIDDEN}, head_dim 64 and 128, seqlen "
                    f"{STANDARD_SEQLENS[0]}..{STANDARD_SEQLENS[-1]}, causal and not).")
    p.add_argument("--out", default="experiments/results/bench_speed", help="output folder (JSON, Markdown, PNG)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes, float32, numba_flash and cupy_standard only, 1 repeat (runs on the simulator)")
    p.add_argument("--shape", action="append", type=parse_shape, metavar="B,H,N,D",
                   help="time this shape instead of the standard sweep (repeatable)")
    p.add_argument("--dtype", action="append", choices=DTYPES,
                   help="repeatable; default float16 (float32 on the simulator)")
    p.add_argument("--impl", action="append", choices=IMPL_NAMES, help="repeatable; default all available")
    p.add_argument("--pass", dest="passes", action="append", choices=PASSES, help="repeatable; default both")
    p.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    p.add_argument("--repeat", type=int, default=None, help="most timed repeats per measurement (default 20)")
    p.add_argument("--budget", type=float, default=0.5,
                   help="seconds of timed repeats per measurement (at least 2 repeats; default 0.5)")
    p.add_argument("--max-single", type=float, default=10.0,
                   help="skip a measurement whose single run would take longer than this many seconds (default 10)")
    p.add_argument("--max-total", type=float, default=210.0,
                   help="after this many seconds of sweeping, skip (and record) the remaining measurements "
                        "(default 210; 0: no limit)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-host-overhead", action="store_true", help="skip the tiny-shape host overhead measurement")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None, prog: str = "numba-flash bench") -> int:
    from rich.console import Console

    from . import results

    args = build_parser(prog).parse_args(argv)
    console = Console()
    if not console.is_terminal:  # captured to a file: rich would wrap the wide tables at 80 columns
        console = Console(width=200)
    on_gpu = backend.BACKEND == backend.GPU
    if args.smoke:
        shapes = [Shape(*s) for s in SMOKE_SHAPES] if not args.shape else args.shape
        dtypes = args.dtype or ["float32"]
        impls = args.impl or ["numba_flash", "cupy_standard"]
        repeat = args.repeat or 1
        host_shape, host_dtype, host_repeat, host_warmup = (1, 1, 16, 16), "float32", 3, 1
    else:
        shapes = args.shape or standard_shapes()
        dtypes = args.dtype or (["float16"] if on_gpu else ["float32"])
        impls = args.impl
        repeat = args.repeat or 20
        host_shape, host_dtype, host_repeat, host_warmup = HOST_OVERHEAD_SHAPE, "float16", 500, 20
        if not on_gpu:
            console.print("[yellow]No GPU: running on the CUDA simulator, which is very slow; use --smoke "
                          "or tiny --shape values.[/yellow]")
    causals = {"both": [False, True], "yes": [True], "no": [False]}[args.causal]
    passes = args.passes or list(PASSES)

    available, missing = available_implementations()
    implementations = {n: available[n].description for n in available if impls is None or n in impls}
    implementations.update(missing)  # recorded even when not selected: says what this machine lacks
    console.print(f"[bold]numba_flash bench[/bold] on {backend.device_name()}: {len(shapes)} shape(s), "
                  f"dtypes {dtypes}, passes {passes}, causal {causals}")
    for name, why in missing.items():
        if impls is None or name in impls:
            console.print(f"  {name}: {why}")

    t0 = time.perf_counter()
    records = run(shapes, impls, passes, dtypes, causals, repeat, args.budget, max_single_s=args.max_single,
                  max_total_s=args.max_total or None, seed=args.seed, show_progress=True, console=console)
    host = None
    if not args.no_host_overhead:
        host = host_overhead(host_shape, host_dtype, host_repeat, host_warmup)
    elapsed = time.perf_counter() - t0

    print_table(records, console)
    if host:
        print_host_overhead(host, console)
    settings = {"shapes": [[s.batch, s.heads, s.seqlen, s.head_dim] for s in shapes], "dtypes": dtypes,
                "passes": passes, "causal": causals, "impls": list(implementations), "repeat": repeat,
                "time_budget_s": args.budget, "max_single_s": args.max_single, "max_total_s": args.max_total,
                "smoke": args.smoke, "timing": _timing_method()}
    data = {"settings": settings, "implementations": implementations, "elapsed_s": elapsed,
            "host_overhead": host, "records": records}
    short_settings = (f"at most {repeat} timed repeats, capped at {args.budget:g} s per measurement "
                      f"(but at least {min(2, repeat)}); a measurement whose single run takes over "
                      f"{args.max_single:g} s is skipped; the sweep stops measuring after {args.max_total:g} s")
    json_path, md_path = results.save(args.out, "bench_speed", data,
                                      markdown_body(records, host, implementations, elapsed, short_settings),
                                      title="Speed: numba_flash vs standard attention and PyTorch SDPA")
    console.print(f"wrote {json_path} and {md_path}")
    if not args.no_plot:
        from pathlib import Path

        png = Path(args.out) / "bench_speed.png"
        if plot(records, png):
            console.print(f"wrote {png}")
        else:
            console.print("[yellow]no plot: matplotlib is not installed (pip install matplotlib)[/yellow]")
    console.print(f"[bold]bench took {elapsed:.1f} s[/bold] ({len(records)} measurements)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
