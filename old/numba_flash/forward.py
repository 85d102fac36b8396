"""Forward kernel: tiled attention with the online softmax (FlashAttention, Algorithm 1).

NumPy spec of what one thread block computes, for query rows ``m0 : m0 + BLOCK_M`` of one
(batch, head); ``S`` never leaves shared memory and no N x N array exists anywhere::

    m_i = full(BLOCK_M, -inf); l_i = zeros(BLOCK_M); acc = zeros((BLOCK_M, D))
    for n0 in range(n_start, n_end, BLOCK_N):   # only key tiles inside the causal/window band
        S = scale * Q[m0:m0+BLOCK_M] @ K[n0:n0+BLOCK_N].T     # masked entries = -inf
        m_new = maximum(m_i, S.max(1))
        P = exp(S - m_new[:, None])
        alpha = exp(m_i - m_new)                              # rescales what came before
        l_i = alpha * l_i + P.sum(1)
        acc = alpha[:, None] * acc + P @ V[n0:n0+BLOCK_N]
        m_i = m_new
    out = acc / l_i[:, None];  lse = m_i + log(l_i)          # rows that saw no key: 0 and -inf

Options, all in the same kernel: ``left``/``right`` bound the keys a query sees (causal and sliding
windows, :mod:`numba_flash.masking`; tiles outside the band are never loaded); ``group`` query heads
share one K/V head (GQA/MQA: kv head = h // group); ``varlen`` reads sequence ``b`` at offset
``cu_q[b]`` of a packed (1, H, total, D) view; ``DROPOUT`` multiplies P by the keep mask / (1 - p)
before P V (l_i and lse stay those of the undropped P), the mask regenerated from the seed by
:func:`numba_flash.philox.dropout_keep`, a pure function of (seed, b, h, i, j).

Thread layout: thread ``tid`` works on query row ``r = tid // TPR``; the ``TPR`` threads of a row
take keys ``c, c + TPR, ...`` of each tile for the scores and columns ``c, c + TPR, ...`` of the
output, where ``c = tid % TPR``. Their partial row max and row sum meet in shared memory.
"""

from __future__ import annotations

import functools
import math

from numba import cuda
from numba.cuda import float32

from .config import BlockConfig
from .masking import NEG_INF, key_span, sequence_bounds, visible
from .philox import dropout_keep
from .tiles import tile_loaders


@functools.lru_cache(maxsize=None)
def forward_kernel(config: BlockConfig, head_dim: int, varlen: bool = False, dropout: bool = False):
    """Compile-time specialised forward kernel; launch with grid (cdiv(max Nq, BLOCK_M), H, B).

    Signature: ``kernel(q, k, v, out, lse, cu_q, cu_k, scale, group, left, right, seed_lo, seed_hi,
    threshold, drop_scale)`` with q/out (B, H, Nq, D), k/v (B, H // group, Nk, D), lse float32
    (B, H, Nq); with ``varlen`` the batch dimension is 1 and sequence b is rows
    ``cu_q[b]:cu_q[b+1]`` (``cu_k`` for keys). ``scale`` and ``drop_scale`` are float32, the seed
    words and ``threshold`` uint64, the rest integers.
    """
    BLOCK_M, BLOCK_N, D = config.block_m, config.block_n, head_dim
    NUM_THREADS = config.num_threads
    TPR = config.threads_per_row(BLOCK_M)  # threads cooperating on one query row
    KPT = BLOCK_N // TPR  # keys of a tile each thread scores
    CPT = D // TPR  # output columns each thread accumulates
    DROPOUT = dropout
    sequence = sequence_bounds(varlen)
    load_kv, _ = tile_loaders(BLOCK_N, D, NUM_THREADS)
    # Shared-memory shapes must be literal constants, so the +1-word row padding is computed here.
    D_PAD, BLOCK_M_PAD, BLOCK_N_PAD = D + 1, BLOCK_M + 1, BLOCK_N + 1

    @cuda.jit(fastmath=False)
    def kernel(q, k, v, out, lse, cu_q, cu_k, scale, group, left, right, seed_lo, seed_hi, threshold,
               drop_scale):
        # +1 word per row: threads of a warp read different rows at the same column -> no bank conflicts
        sQ = cuda.shared.array((BLOCK_M, D_PAD), float32)
        sK = cuda.shared.array((BLOCK_N, D_PAD), float32)
        sV = cuda.shared.array((BLOCK_N, D_PAD), float32)
        sP = cuda.shared.array((BLOCK_M, BLOCK_N_PAD), float32)
        sMax = cuda.shared.array((BLOCK_M, TPR), float32)
        sSum = cuda.shared.array((BLOCK_M, TPR), float32)
        s = cuda.local.array(KPT, float32)
        acc = cuda.local.array(CPT, float32)

        tid = cuda.threadIdx.x
        r = tid // TPR
        c = tid % TPR
        m0 = cuda.blockIdx.x * BLOCK_M
        h = cuda.blockIdx.y
        b = cuda.blockIdx.z
        hk = h // group  # the K/V head this query head reads (GQA)
        # Where sequence b lives: its own batch entry, or a slice of the packed varlen arrays.
        ab, q_off, k_off, n_q, n_k = sequence(q, k, cu_q, cu_k, b)
        if m0 >= n_q:
            return  # the whole block: this sequence is shorter than the longest one
        row = m0 + r
        diag = n_k - n_q  # bottom-right alignment of the causal / window band

        # Load the Q tile once, scaled, so S = sQ . sK needs no multiply per score.
        for e in range(tid, BLOCK_M * D, NUM_THREADS):
            i = e // D
            d = e % D
            if m0 + i < n_q:
                sQ[i, d] = float32(q[ab, h, q_off + m0 + i, d]) * scale
            else:
                sQ[i, d] = float32(0.0)

        # Only key tiles that some row of this tile can see: causal and window bands skip the rest.
        n_start, n_end = key_span(m0, min(m0 + BLOCK_M, n_q) - 1, diag, left, right, n_k, BLOCK_N)

        m_i = NEG_INF
        l_i = float32(0.0)
        for t in range(CPT):
            acc[t] = float32(0.0)

        for n0 in range(n_start, n_end, BLOCK_N):
            # Stream the next K, V tile into shared memory (ragged last tile padded with zeros).
            load_kv(sK, sV, k, v, ab, hk, k_off + n0, n_k - n0, tid)
            cuda.syncthreads()

            # S = scale Q K^T for this thread's keys; keys outside the sequence or the band score -inf.
            m_part = NEG_INF
            for t in range(KPT):
                j = c + TPR * t
                dot = float32(0.0)
                for d in range(D):
                    dot += sQ[r, d] * sK[j, d]
                col = n0 + j
                if col >= n_k or not visible(row, col, diag, left, right):
                    dot = NEG_INF
                s[t] = dot
                m_part = max(m_part, dot)
            sMax[r, c] = m_part
            cuda.syncthreads()

            # m_new = max(m_i, rowmax S); a row with no visible key yet keeps -inf and
            # exponentiates against 0 instead, so that P = exp(-inf) = 0 rather than NaN.
            m_new = m_i
            for t in range(TPR):
                m_new = max(m_new, sMax[r, t])
            m_ref = m_new if m_new != NEG_INF else float32(0.0)

            # P = exp(S - m_new); l_i sums the undropped P, the P V product sees the dropped one.
            l_part = float32(0.0)
            for t in range(KPT):
                p = float32(math.exp(s[t] - m_ref))
                l_part += p
                if DROPOUT:
                    if dropout_keep(seed_lo, seed_hi, b, h, row, n0 + c + TPR * t, threshold):
                        p = p * drop_scale
                    else:
                        p = float32(0.0)
                sP[r, c + TPR * t] = p
            sSum[r, c] = l_part
            cuda.syncthreads()

            # Rescale what was accumulated against the old max, then add this tile's P V.
            alpha = float32(math.exp(m_i - m_ref))
            l_tile = float32(0.0)
            for t in range(TPR):
                l_tile += sSum[r, t]
            l_i = alpha * l_i + l_tile
            for t in range(CPT):
                d = c + TPR * t
                a = acc[t] * alpha
                for j in range(BLOCK_N):
                    a += sP[r, j] * sV[j, d]
                acc[t] = a
            m_i = m_new
            cuda.syncthreads()  # all reads of sK, sV, sP, sMax, sSum done before the next tile

        # Epilogue: normalise once and write out and lse (natural log) for real rows.
        if row < n_q:
            if l_i > float32(0.0):
                inv_l = float32(1.0) / l_i
                for t in range(CPT):
                    out[ab, h, q_off + row, c + TPR * t] = acc[t] * inv_l
                if c == 0:
                    lse[ab, h, q_off + row] = m_i + float32(math.log(l_i))
            else:
                for t in range(CPT):
                    out[ab, h, q_off + row, c + TPR * t] = float32(0.0)
                if c == 0:
                    lse[ab, h, q_off + row] = NEG_INF

    return kernel
