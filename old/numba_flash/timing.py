"""Timing that means something: CUDA events around the work, after warm-up, median of repeats.

On the simulator there are no events; the wall clock is used and the numbers only say that the
code ran (the simulator is not a performance model).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Sequence

import numpy as np

from . import backend


def time_ms(fn: Callable[..., object], inputs: Sequence[tuple] | None = None, *, warmup: int = 3,
            repeat: int = 20) -> dict:
    """Median (and min, max) milliseconds of ``fn(*inputs[i])``, cycling through ``inputs``.

    Give several input sets when one fits in L2 (50 MB on an H100), so that repeated calls do not
    just measure the cache. Returns ``{"median_ms", "min_ms", "max_ms", "repeat"}``.
    """
    return _summary(_times_ms(fn, inputs, warmup, repeat))


def _times_ms(fn, inputs, warmup: int, repeat: int) -> list[float]:
    """Milliseconds of each of ``repeat`` calls (CUDA events; the simulator: wall clock, no warm-up)."""
    inputs = list(inputs) if inputs else [()]
    if backend.BACKEND == backend.SIMULATOR:
        times = []
        for i in range(max(1, repeat)):
            t0 = time.perf_counter()
            fn(*inputs[i % len(inputs)])
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    import cupy

    for i in range(warmup):  # compiles, loads modules, creates handles
        fn(*inputs[i % len(inputs)])
    stream = cupy.cuda.get_current_stream()
    stream.synchronize()
    events = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(repeat)]
    for i, (start, stop) in enumerate(events):
        start.record(stream)
        fn(*inputs[i % len(inputs)])
        stop.record(stream)
    events[-1][1].synchronize()
    return [cupy.cuda.get_elapsed_time(a, b) for a, b in events]


def time_interleaved(fns: dict, *, rounds: int = 5, repeat: int = 10, warmup: int = 3) -> dict:
    """Time several callables in turns, for A/B comparisons: ``rounds`` rounds, each timing every
    callable for ``repeat`` calls, the order rotated from round to round, so that a drift of the
    GPU's clocks (power, heat) during the measurement falls on all of them alike. (Timed one after
    the other, the same kernels measured 12 % apart in one process on the H100:
    experiments/results/blocks-2026-11-24/call7.) Returns, per name, :func:`time_ms`'s summary of
    all its calls, plus ``round_medians`` and ``spread`` (largest / smallest round median)."""
    if rounds < 1 or repeat < 1:
        raise ValueError(f"time_interleaved: rounds and repeat must be >= 1, got {rounds}, {repeat}")
    names = list(fns)
    times = {n: [] for n in names}
    medians = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t = _times_ms(fns[n], None, warmup if r == 0 else 1, repeat)
            times[n] += t
            medians[n].append(float(np.median(t)))
    return {n: {**_summary(times[n]), "round_medians": medians[n], "spread": max(medians[n]) / min(medians[n])}
            for n in names}


@contextlib.contextmanager
def _flock(lock_path: str | None, exclusive_: bool):
    if lock_path is None:
        yield
        return
    import fcntl  # POSIX only, and only needed here

    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive_ else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def exclusive(lock_path: str | None):
    """Hold an exclusive lock on the file ``lock_path`` (created if missing) inside the ``with``;
    a no-op for None. Several processes that compile in parallel take turns to time with it, so no
    timing shares the GPU with another's timing, nor (see :func:`shared`) with its other GPU work."""
    return _flock(lock_path, True)


def shared(lock_path: str | None):
    """A shared lock on ``lock_path`` for GPU work that is not timed (a first call that compiles and
    runs, a reference, an error check): any number of processes hold it at once, never while one
    times under :func:`exclusive`. (Measured: without it, 8 processes' untimed runs overlapped the
    timings and SDPA's forward came out at 252-281 TFLOP/s instead of 303.)"""
    return _flock(lock_path, False)


def _summary(times) -> dict:
    t = np.asarray(times, dtype=np.float64)
    return {"median_ms": float(np.median(t)), "min_ms": float(t.min()), "max_ms": float(t.max()), "repeat": int(t.size)}


def attention_flops(batch: int, heads: int, seqlen_q: int, seqlen_k: int, head_dim: int, causal: bool,
                    pass_: str = "forward") -> float:
    """FLOPs as FlashAttention's benchmarks count them: 4·B·H·Nq·Nk·D for the forward (two matmuls),
    halved when causal; the backward is 2.5× the forward, forward+backward 3.5×."""
    f = 4.0 * batch * heads * seqlen_q * seqlen_k * head_dim * (0.5 if causal else 1.0)
    return f * {"forward": 1.0, "backward": 2.5, "forward_backward": 3.5}[pass_]
