"""Launch plans: what one API call allocates and launches, worked out once per kind of call.

A call's checks, its configuration choice, its grid and the kernels' flattened parameters depend
only on the *kind* of call: shapes, strides, dtypes, 16-byte alignment and the options. The API
builds a :class:`Plan` the first time it sees a kind of call and keeps it (``cached``); a repeat
call only allocates its outputs, fills in the addresses (and the dropout seed words) and launches.
That takes the host time of a tiny forward call from ~64 us to ~20 us (experiments/results).

A plan refers to its operands by position: ``inp(i)`` is the caller's i-th array, ``out(j)`` the
j-th array the plan allocates, ``extra(j)`` the j-th per-call scalar. Each may be seen through a
view function (the packed varlen layout's ``(1, H, total, D)`` view), so the kernel parameters,
which hold shapes and strides, are those of the view; only addresses change between calls.

On the simulator, ``run`` launches through numba with the same views (same code path, tested in CI);
on the GPU, through ``numba_flash.launch``'s prepared launches with a packed parameter template.
"""

from __future__ import annotations

import math
import threading

import numpy as np

_INPUT, _OUTPUT, _EXTRA = 0, 1, 2


def _same(x):
    return x


def _stand_in(a):
    """An array with ``a``'s dtype, shape and strides and no memory of its own (scalars as they are)."""
    if getattr(a, "ndim", 0) == 0:
        return a
    return np.lib.stride_tricks.as_strided(np.empty(1, a.dtype), tuple(a.shape), tuple(a.strides), writeable=False)


def _example(shape, dtype, view):
    """A stand-in with the shape and strides a C-contiguous ``(shape, dtype)`` array has through
    ``view`` (no memory: all elements alias one, only the metadata is read)."""
    dtype = np.dtype(dtype)
    strides, step = [], dtype.itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    base = np.lib.stride_tricks.as_strided(np.empty(1, dtype), tuple(shape), tuple(reversed(strides)),
                                           writeable=False)
    return view(base)


class Operand:
    """A placeholder for an array (or scalar) that changes from call to call."""

    __slots__ = ("kind", "index", "view", "example")

    def __init__(self, kind, index, view, example):
        self.kind, self.index, self.view, self.example = kind, index, view, example


class Plan:
    """Outputs to allocate and kernels to launch for one kind of call.

    ``inputs``: example arrays of the call (their metadata types the kernel parameters);
    ``extras(*first)``: the per-call scalars (dropout seed words) of the call arguments ``first``
    (later calls: ``plan.extras(...)`` with theirs). Build with :meth:`output` and
    :meth:`launch`; run with :meth:`run` (simulator, arrays) or :meth:`run_gpu` (addresses).
    """

    def __init__(self, inputs, extras=None, first=()):
        self._inputs = tuple(_stand_in(a) for a in inputs)  # metadata only: the caller's memory is not kept
        self.extras = extras if extras is not None else (lambda *_: ())
        self._extras = tuple(self.extras(*first))
        self.outputs = []  # (shape, numpy dtype) of each array the plan allocates
        self.launches = []  # (kernel, grid, threads, shared, args)
        self.tuning = False  # what the config choice depended on (the API's cache checks it)
        self._gpu = None
        self._lock = threading.Lock()

    def inp(self, i: int, view=_same) -> Operand:
        return Operand(_INPUT, i, view, view(self._inputs[i]))

    def out(self, j: int, view=_same) -> Operand:
        shape, dtype = self.outputs[j]
        return Operand(_OUTPUT, j, view, _example(shape, dtype, view))

    def extra(self, j: int) -> Operand:
        return Operand(_EXTRA, j, _same, self._extras[j])

    def output(self, shape, dtype) -> int:
        """Declare an array the plan allocates; returns its index for :meth:`out`."""
        self.outputs.append((tuple(int(n) for n in shape), np.dtype(dtype)))
        return len(self.outputs) - 1

    def launch(self, kernel, grid, threads: int, *args, shared: int = 0) -> None:
        self.launches.append((kernel, tuple(int(g) for g in grid), int(threads), int(shared), args))

    # ---- simulator (and any backend): numba's own launch on real arrays

    def arguments(self, args, inputs, outputs, extras):
        """The launch arguments with every operand replaced by this call's array (through its view)."""
        pools = (inputs, outputs, extras)
        return [a.view(pools[a.kind][a.index]) if isinstance(a, Operand) else a for a in args]

    def run(self, launch, inputs, outputs, extras=()) -> None:
        """Launch every kernel with ``launch(kernel, grid, threads, *args, shared=)`` on these arrays."""
        for kernel, grid, threads, shared, args in self.launches:
            launch(kernel, grid, threads, *self.arguments(args, inputs, outputs, extras), shared=shared)

    # ---- GPU: prepared launches, parameters packed from a template

    def _prepare_gpu(self):
        """Per launch: the prepared kernel, the flattened parameter values with the addresses and
        extras left as slots, and where each slot goes."""
        from .launch import prepared

        steps = []
        for kernel, grid, threads, shared, args in self.launches:
            examples = [a.example if isinstance(a, Operand) else a for a in args]
            p = prepared(kernel, examples)
            if shared > p.max_shared:
                p.set_max_shared(shared)
            values, slots = [], []
            for a, ex in zip(args, examples):
                if getattr(ex, "ndim", 0) > 0:
                    values += (0, 0, math.prod(ex.shape), ex.dtype.itemsize)
                    if isinstance(a, Operand):
                        slots.append((len(values), a.kind, a.index))
                        values.append(0)
                    else:  # a constant array (the padded layout's unused offsets): its address is fixed
                        from .launch import _pointer

                        values.append(_pointer(ex))
                    values += (*ex.shape, *ex.strides)
                elif isinstance(a, Operand):
                    slots.append((len(values), a.kind, a.index))
                    values.append(ex)
                else:
                    values.append(a)
            steps.append((p, grid, threads, shared, values, tuple(slots)))
        return steps

    def run_gpu(self, stream: int, in_ptrs, out_ptrs, extras=()) -> None:
        """Launch every kernel on the raw ``CUstream`` ``stream``: ``in_ptrs``/``out_ptrs`` are the
        device addresses of this call's inputs and outputs."""
        steps = self._gpu
        if steps is None:
            with self._lock:
                if self._gpu is None:
                    self._gpu = self._prepare_gpu()
                steps = self._gpu
        pools = (in_ptrs, out_ptrs, extras)
        for p, grid, threads, shared, template, slots in steps:
            values = template.copy()
            for pos, kind, index in slots:
                values[pos] = pools[kind][index]
            p.launch_values(grid, threads, stream, values, shared)


class PlanCache:
    """Plans by call key, bounded (a workload with ever-new shapes must not grow it forever)."""

    def __init__(self, limit: int = 512):
        self.limit = limit
        self._plans: dict = {}

    def get(self, key):
        return self._plans.get(key)

    def put(self, key, plan: Plan) -> Plan:
        if len(self._plans) >= self.limit:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def __len__(self) -> int:
        return len(self._plans)
