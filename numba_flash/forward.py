"""Forward kernel: tiled attention with the online softmax (FlashAttention, Algorithm 1).

NumPy spec of what one thread block computes, for query rows ``m0 : m0 + BLOCK_M`` of one
(batch, head); ``S`` never leaves shared memory and no N x N array exists anywhere::

    m_i = full(BLOCK_M, -inf); l_i = zeros(BLOCK_M); acc = zeros((BLOCK_M, D))
    for n0 in range(0, n_end, BLOCK_N):                      # n_end < Nk when causal
        S = scale * Q[m0:m0+BLOCK_M] @ K[n0:n0+BLOCK_N].T     # masked entries = -inf
        m_new = maximum(m_i, S.max(1))
        P = exp(S - m_new[:, None])
        alpha = exp(m_i - m_new)                              # rescales what came before
        l_i = alpha * l_i + P.sum(1)
        acc = alpha[:, None] * acc + P @ V[n0:n0+BLOCK_N]
        m_i = m_new
    out = acc / l_i[:, None];  lse = m_i + log(l_i)          # rows that saw no key: 0 and -inf

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
from .tiles import tile_loaders

NEG_INF = float32(-math.inf)


@functools.lru_cache(maxsize=None)
def forward_kernel(config: BlockConfig, head_dim: int, causal: bool):
    """Compile-time specialised forward kernel; launch with grid (cdiv(Nq, BLOCK_M), H, B).

    Signature: ``kernel(q, k, v, out, lse, scale)`` with q/out (B, H, Nq, D), k/v (B, H, Nk, D),
    lse float32 (B, H, Nq) and ``scale`` a float32.
    """
    BLOCK_M, BLOCK_N, D = config.block_m, config.block_n, head_dim
    NUM_THREADS = config.num_threads
    TPR = config.threads_per_row(BLOCK_M)  # threads cooperating on one query row
    KPT = BLOCK_N // TPR  # keys of a tile each thread scores
    CPT = D // TPR  # output columns each thread accumulates
    CAUSAL = causal
    load_kv, _ = tile_loaders(BLOCK_N, D, NUM_THREADS)
    # Shared-memory shapes must be literal constants, so the +1-word row padding is computed here.
    D_PAD, BLOCK_M_PAD, BLOCK_N_PAD = D + 1, BLOCK_M + 1, BLOCK_N + 1

    @cuda.jit(fastmath=False)
    def kernel(q, k, v, out, lse, scale):
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
        n_q = q.shape[2]
        n_k = k.shape[2]
        row = m0 + r
        diag = n_k - n_q  # causal: query i sees key j iff j <= i + diag

        # Load the Q tile once, scaled, so S = sQ . sK needs no multiply per score.
        for e in range(tid, BLOCK_M * D, NUM_THREADS):
            i = e // D
            d = e % D
            if m0 + i < n_q:
                sQ[i, d] = float32(q[b, h, m0 + i, d]) * scale
            else:
                sQ[i, d] = float32(0.0)

        n_end = n_k
        if CAUSAL:  # keys past the last row's diagonal are invisible to the whole tile: skip them
            n_end = min(n_k, max(0, m0 + BLOCK_M + diag))

        m_i = NEG_INF
        l_i = float32(0.0)
        for t in range(CPT):
            acc[t] = float32(0.0)

        for n0 in range(0, n_end, BLOCK_N):
            # Stream the next K, V tile into shared memory (ragged last tile padded with zeros).
            load_kv(sK, sV, k, v, b, h, n0, tid)
            cuda.syncthreads()

            # S = scale Q K^T for this thread's keys; masked keys score -inf.
            m_part = NEG_INF
            for t in range(KPT):
                j = c + TPR * t
                dot = float32(0.0)
                for d in range(D):
                    dot += sQ[r, d] * sK[j, d]
                col = n0 + j
                if col >= n_k or (CAUSAL and col > row + diag):
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

            # P = exp(S - m_new), kept in shared memory for the P V product.
            l_part = float32(0.0)
            for t in range(KPT):
                p = float32(math.exp(s[t] - m_ref))
                sP[r, c + TPR * t] = p
                l_part += p
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
                    out[b, h, row, c + TPR * t] = acc[t] * inv_l
                if c == 0:
                    lse[b, h, row] = m_i + float32(math.log(l_i))
            else:
                for t in range(CPT):
                    out[b, h, row, c + TPR * t] = float32(0.0)
                if c == 0:
                    lse[b, h, row] = NEG_INF

    return kernel
