"""Which keys a query sees: causal, sliding-window and sequence bounds, shared by every kernel.

Query ``i`` sees key ``j`` iff ``-left <= j - i - diag <= right`` with ``diag = Nk - Nq`` (bottom-right
aligned, as flash-attn): ``causal`` is ``right = 0``, a window ``(left, right)`` bounds both sides, and
``-1`` (unbounded) becomes :data:`UNBOUNDED`. The kernels get ``left`` and ``right`` as two runtime
integers, so causal, windowed and full attention share one compiled kernel, and whole tiles outside
the band are skipped by :func:`key_span` / :func:`query_span` rather than masked element by element.
Under a causal band blocks differ in length, so :func:`block_coords` also decides which block owns which
rows (the order in which they start).
"""

from __future__ import annotations

import math

from numba import cuda, float32, int32, uint32

from . import backend

_INLINE = {} if backend.BACKEND == backend.SIMULATOR else {"forceinline": True}

# Larger than any sequence length, small enough that i + diag +/- UNBOUNDED never overflows int64.
UNBOUNDED = 1 << 40
NEG_INF = float32(-math.inf)


def band(causal: bool, window_size) -> tuple[int, int]:
    """``(left, right)`` as the kernels take them: -1 -> UNBOUNDED, causal caps ``right`` at 0."""
    left, right = window_size
    left = UNBOUNDED if left < 0 else left
    right = UNBOUNDED if right < 0 else right
    if causal:
        right = min(right, 0)
    return left, right


@cuda.jit(device=True, **_INLINE)
def padded_sequence(q, k, cu_q, cu_k, b):
    """Sequence ``b`` of a padded (B, H, N, D) batch: (array batch index, q offset, k offset, Nq, Nk)."""
    return b, 0, 0, q.shape[2], k.shape[2]


@cuda.jit(device=True, **_INLINE)
def packed_sequence(q, k, cu_q, cu_k, b):
    """Sequence ``b`` of a packed varlen batch, seen as (1, H, total, D): rows cu[b] .. cu[b+1]."""
    q_off, k_off = cu_q[b], cu_k[b]
    return 0, q_off, k_off, cu_q[b + 1] - q_off, cu_k[b + 1] - k_off


def sequence_bounds(varlen: bool):
    """The device function a kernel compiled for ``varlen`` (or not) uses to find sequence ``b``."""
    return packed_sequence if varlen else padded_sequence


def block_coords(longest_first: bool, reverse: bool):
    """``coords()``: this block's (row block, head, batch entry) in a grid (row blocks, heads, batch entries)
    (TensorCoreConfig.longest_first). Blocks start in the order of their linear index, x fastest. As the
    grid is laid out, row block x of head y, z: under a causal band the heads' blocks start head by head.
    ``longest_first``: the row block is the slowest part of the linear index instead, so every head's
    block of one length starts before any shorter one. ``reverse``: row block ``gridDim.x - 1 - x``
    (query blocks: under a bottom-right band the last ones are the longest)."""
    LONGEST, REVERSE = longest_first, reverse

    def coords():
        x, y, z = cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z
        if LONGEST:
            ny = cuda.gridDim.y
            pairs = ny * cuda.gridDim.z  # (head, batch entry) pairs per row block
            lin = x + cuda.gridDim.x * (y + ny * z)
            x = lin // pairs
            rest = lin - x * pairs
            y = rest % ny
            z = rest // ny
        if REVERSE:
            x = cuda.gridDim.x - 1 - x
        return x, y, z

    return cuda.jit(device=True, **_INLINE)(coords)


@cuda.jit(device=True, **_INLINE)
def visible(row, col, diag, left, right):
    rel = col - row - diag
    return rel >= -left and rel <= right


@cuda.jit(device=True, **_INLINE)
def key_span(q_first, q_last, diag, left, right, n_k, block):
    """Keys ``[start, end)`` any of the queries ``q_first..q_last`` can see, ``start`` tile-aligned."""
    start = max(0, q_first + diag - left)
    end = min(n_k, max(0, q_last + diag + right + 1))
    if start >= end:
        return 0, 0  # nothing visible: an empty loop
    return (start // block) * block, end


@cuda.jit(device=True, **_INLINE)
def query_span(k_first, k_last, diag, left, right, n_q, block):
    """Queries ``[start, end)`` that can see any of the keys ``k_first..k_last``, ``start`` tile-aligned."""
    start = max(0, k_first - diag - right)
    end = min(n_q, max(0, k_last - diag + left + 1))
    if start >= end:
        return 0, 0
    return (start // block) * block, end


@cuda.jit(device=True, **_INLINE)
def band_columns(row, c0, diag, left, right, n_k, block):
    """The keys ``c0 + c`` (``0 <= c < block``) that query ``row`` sees, as ``lo <= c < lo + width``
    (int32, clamped to the tile): a masked tile then tests each element with one unsigned 32-bit
    compare against its compile-time column offset (the tensor-core kernels' masked tiles),
    where a per-element test does 64-bit arithmetic."""
    lo = min(max(row + diag - left - c0, 0), block)
    hi = min(min(row + diag + right, n_k - 1) - c0, block - 1)
    return int32(lo), uint32(max(hi - lo + 1, 0))


@cuda.jit(device=True, **_INLINE)
def band_queries(key, r0, diag, left, right, n_k, block):
    """:func:`band_columns` transposed (the backward's S^T): the queries ``r0 + c`` (``0 <= c < block``)
    that see key ``key`` (none past the sequence's keys), as ``lo <= c < lo + width``."""
    lo = min(max(key - diag - right - r0, 0), block)
    hi = min(key - diag + left - r0, block - 1) if key < n_k else -1
    return int32(lo), uint32(max(hi - lo + 1, 0))


@cuda.jit(device=True, **_INLINE)
def in_band(x, c, lo, width):
    """x, or -inf where column offset ``c`` is outside ``[lo, lo + width)`` (:func:`band_columns`)."""
    return x if uint32(c - lo) < width else NEG_INF
