"""Device helpers shared by the kernels: moving tiles between HBM and shared memory.

NumPy spec of ``load_pair(dst_a, dst_b, src_a, src_b, b, h, start, count, tid)``::

    rows = src_a[b, h, start:start + min(count, ROWS)]       # fewer than ROWS at the ragged end
    dst_a[:len(rows), :D] = rows; dst_a[len(rows):, :D] = 0      # the same for b

``start`` is the first row in the array and ``count`` the rows left in this sequence, so one
helper serves padded batches (start = tile offset) and packed varlen batches (start = sequence
offset + tile offset). The block's threads take consecutive elements, so a warp reads consecutive
head_dim columns of a row (coalesced). Zero padding keeps masked rows finite; the kernels mask
them explicitly.
"""

from __future__ import annotations

import functools

from numba import cuda
from numba.cuda import float32

from . import backend

# Inline into the kernels at the NVVM level (the simulator's jit takes no such option).
_INLINE = {} if backend.BACKEND == backend.SIMULATOR else {"forceinline": True}


@functools.lru_cache(maxsize=None)
def tile_loaders(rows: int, head_dim: int, num_threads: int):
    """``(load_pair, load_rows)`` device functions for tiles of ``rows`` rows, compiled per shape."""
    ROWS, D, NUM_THREADS = rows, head_dim, num_threads

    @cuda.jit(device=True, **_INLINE)
    def load_pair(dst_a, dst_b, src_a, src_b, b, h, start, count, tid):
        for e in range(tid, ROWS * D, NUM_THREADS):
            i = e // D
            d = e % D
            if i < count:
                dst_a[i, d] = float32(src_a[b, h, start + i, d])
                dst_b[i, d] = float32(src_b[b, h, start + i, d])
            else:
                dst_a[i, d] = float32(0.0)
                dst_b[i, d] = float32(0.0)

    @cuda.jit(device=True, **_INLINE)
    def load_rows(dst_a, dst_b, src_a, src_b, b, h, start, count, tid, pad_a):
        """Per-row scalars (lse, delta); rows past the end get ``pad_a`` and 0."""
        for i in range(tid, ROWS, NUM_THREADS):
            if i < count:
                dst_a[i] = src_a[b, h, start + i]
                dst_b[i] = src_b[b, h, start + i]
            else:
                dst_a[i] = pad_a
                dst_b[i] = float32(0.0)

    return load_pair, load_rows
