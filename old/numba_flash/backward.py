"""Backward kernels: recompute P from the saved lse instead of storing it (FlashAttention-2 style).

NumPy spec, for one (batch, head)::

    delta = (dO * O).sum(-1)                                  # delta_kernel
    for each key tile j, and each query tile i that can see it:   # dkdv_kernel, grid over j
        S = scale * Q_i @ K_j.T;  P = exp(S - lse_i[:, None])     # masked entries: P = 0
        dV_j += P.T @ dO_i
        dP = dO_i @ V_j.T;  dS = P * (dP - delta_i[:, None])
        dK_j += scale * dS.T @ Q_i
    for each query tile i, and each key tile j it can see:        # dq_kernel, grid over i
        (S, P, dP, dS as above)
        dQ_i += scale * dS @ K_j

Options as in the forward kernel (:mod:`numba_flash.forward`): the band ``left``/``right`` skips
query/key tiles outside it; with GQA the dK/dV block of kv head ``hk`` loops over its ``group``
query heads in order, so the group sum is deterministic too; with dropout (Z = keep / (1 - p),
regenerated from the seed), dV_j += (P*Z).T @ dO_i and dS = P * (Z * dP - delta), where delta =
rowsum(dO * O) still equals rowsum(P * Z * dP).

Each of dQ, dK, dV is owned by exactly one thread block, which sums its contributions in a fixed
order: no atomics, so the same inputs always give bit-identical gradients. The price is that S and
P are recomputed twice (once per kernel); the N x N matrices never exist in HBM.
"""

from __future__ import annotations

import functools
import math

from numba import cuda
from numba.cuda import float32

from .config import BlockConfig
from .forward import NEG_INF
from .masking import key_span, query_span, sequence_bounds, visible
from .philox import dropout_keep
from .tiles import tile_loaders


@functools.lru_cache(maxsize=None)
def delta_kernel(head_dim: int):
    """``delta[b, h, i] = sum_d dout[b, h, i, d] * out[b, h, i, d]``, one thread per row.

    Launch with grid (cdiv(Nq, 128), H, B) and 128 threads (varlen: the packed (1, H, total) view).
    """
    D = head_dim

    @cuda.jit
    def kernel(dout, out, delta):
        i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        h = cuda.blockIdx.y
        b = cuda.blockIdx.z
        if i < out.shape[2]:
            acc = float32(0.0)
            for d in range(D):
                acc += float32(dout[b, h, i, d]) * float32(out[b, h, i, d])
            delta[b, h, i] = acc

    return kernel


@functools.lru_cache(maxsize=None)
def dkdv_kernel(config: BlockConfig, head_dim: int, varlen: bool = False, dropout: bool = False):
    """dK and dV for one key tile per block; launch with grid (cdiv(max Nk, BLOCK_N), H_kv, B).

    Signature: ``kernel(q, k, v, dout, lse, delta, dk, dv, cu_q, cu_k, scale, group, left, right,
    seed_lo, seed_hi, threshold, drop_scale)``. Thread ``tid`` owns key row ``r = tid // TPR`` of the
    tile; the TPR threads of that row split the queries of each Q tile and the head_dim columns of
    dK, dV.
    """
    BLOCK_M, BLOCK_N, D = config.block_m, config.block_n, head_dim
    NUM_THREADS = config.num_threads
    TPR = config.threads_per_row(BLOCK_N)
    QPT = BLOCK_M // TPR  # queries of a Q tile each thread scores
    CPT = D // TPR  # dK, dV columns each thread accumulates
    DROPOUT = dropout
    sequence = sequence_bounds(varlen)
    load_kv, _ = tile_loaders(BLOCK_N, D, NUM_THREADS)
    load_qdo, load_rows = tile_loaders(BLOCK_M, D, NUM_THREADS)
    # Shared-memory shapes must be literal constants, so the +1-word row padding is computed here.
    D_PAD, BLOCK_M_PAD, BLOCK_N_PAD = D + 1, BLOCK_M + 1, BLOCK_N + 1

    @cuda.jit
    def kernel(q, k, v, dout, lse, delta, dk, dv, cu_q, cu_k, scale, group, left, right, seed_lo, seed_hi,
               threshold, drop_scale):
        sK = cuda.shared.array((BLOCK_N, D_PAD), float32)
        sV = cuda.shared.array((BLOCK_N, D_PAD), float32)
        sQ = cuda.shared.array((BLOCK_M, D_PAD), float32)
        sdO = cuda.shared.array((BLOCK_M, D_PAD), float32)
        sPt = cuda.shared.array((BLOCK_N, BLOCK_M_PAD), float32)
        sdSt = cuda.shared.array((BLOCK_N, BLOCK_M_PAD), float32)
        sL = cuda.shared.array(BLOCK_M, float32)
        sDelta = cuda.shared.array(BLOCK_M, float32)
        acc_dk = cuda.local.array(CPT, float32)
        acc_dv = cuda.local.array(CPT, float32)

        tid = cuda.threadIdx.x
        r = tid // TPR
        c = tid % TPR
        n0 = cuda.blockIdx.x * BLOCK_N
        hk = cuda.blockIdx.y  # a K/V head: its dK, dV sum over the group of query heads reading it
        b = cuda.blockIdx.z
        ab, q_off, k_off, n_q, n_k = sequence(q, k, cu_q, cu_k, b)
        if n0 >= n_k:
            return  # the whole block: this sequence has fewer keys than the longest one
        key = n0 + r
        diag = n_k - n_q

        # K_j and V_j stay in shared memory for the whole pass over the queries.
        load_kv(sK, sV, k, v, ab, hk, k_off + n0, n_k - n0, tid)
        for t in range(CPT):
            acc_dk[t] = float32(0.0)
            acc_dv[t] = float32(0.0)

        # Only the Q tiles whose rows can see some key of this tile (causal / window band).
        m_start, m_end = query_span(n0, min(n0 + BLOCK_N, n_k) - 1, diag, left, right, n_q, BLOCK_M)

        for g in range(group):
            h = hk * group + g
            for m0 in range(m_start, m_end, BLOCK_M):
                load_qdo(sQ, sdO, q, dout, ab, h, q_off + m0, n_q - m0, tid)
                load_rows(sL, sDelta, lse, delta, ab, h, q_off + m0, n_q - m0, tid, NEG_INF)
                cuda.syncthreads()

                # Recompute P^T and dS^T for this thread's (key, query) pairs.
                for t in range(QPT):
                    i = c + TPR * t
                    l_row = sL[i]
                    p = float32(0.0)
                    ds = float32(0.0)
                    # lse = -inf: a row that saw no key (or a padding row)
                    if key < n_k and l_row != NEG_INF and visible(m0 + i, key, diag, left, right):
                        qk = float32(0.0)
                        dp = float32(0.0)
                        for d in range(D):
                            qk += sQ[i, d] * sK[r, d]
                            dp += sdO[i, d] * sV[r, d]
                        p = float32(math.exp(qk * scale - l_row))
                        if DROPOUT:  # dV sees the dropped P; dS = P (Z dP - delta)
                            if dropout_keep(seed_lo, seed_hi, b, h, m0 + i, key, threshold):
                                dp = dp * drop_scale
                                ds = p * (dp - sDelta[i])
                                p = p * drop_scale
                            else:
                                ds = -p * sDelta[i]
                                p = float32(0.0)
                        else:
                            ds = p * (dp - sDelta[i])
                    sPt[r, i] = p
                    sdSt[r, i] = ds
                cuda.syncthreads()

                # dV_j += P^T dO_i;  dK_j += dS^T Q_i  (scale applied once at the end)
                for t in range(CPT):
                    d = c + TPR * t
                    a_dv = acc_dv[t]
                    a_dk = acc_dk[t]
                    for i in range(BLOCK_M):
                        a_dv += sPt[r, i] * sdO[i, d]
                        a_dk += sdSt[r, i] * sQ[i, d]
                    acc_dv[t] = a_dv
                    acc_dk[t] = a_dk
                cuda.syncthreads()  # before the next Q tile overwrites sQ, sdO, sPt, sdSt

        if key < n_k:
            for t in range(CPT):
                d = c + TPR * t
                dk[ab, hk, k_off + key, d] = acc_dk[t] * scale
                dv[ab, hk, k_off + key, d] = acc_dv[t]

    return kernel


@functools.lru_cache(maxsize=None)
def dq_kernel(config: BlockConfig, head_dim: int, varlen: bool = False, dropout: bool = False):
    """dQ for one query tile per block; launch with grid (cdiv(max Nq, BLOCK_M), H, B).

    Signature: ``kernel(q, k, v, dout, lse, delta, dq, cu_q, cu_k, scale, group, left, right,
    seed_lo, seed_hi, threshold, drop_scale)``. Thread layout as in the forward kernel: query row
    ``tid // TPR``, keys and columns split among the row's TPR threads.
    """
    BLOCK_M, BLOCK_N, D = config.block_m, config.block_n, head_dim
    NUM_THREADS = config.num_threads
    TPR = config.threads_per_row(BLOCK_M)
    KPT = BLOCK_N // TPR
    CPT = D // TPR
    DROPOUT = dropout
    sequence = sequence_bounds(varlen)
    load_qdo, load_rows = tile_loaders(BLOCK_M, D, NUM_THREADS)
    load_kv, _ = tile_loaders(BLOCK_N, D, NUM_THREADS)
    # Shared-memory shapes must be literal constants, so the +1-word row padding is computed here.
    D_PAD, BLOCK_M_PAD, BLOCK_N_PAD = D + 1, BLOCK_M + 1, BLOCK_N + 1

    @cuda.jit
    def kernel(q, k, v, dout, lse, delta, dq, cu_q, cu_k, scale, group, left, right, seed_lo, seed_hi,
               threshold, drop_scale):
        sQ = cuda.shared.array((BLOCK_M, D_PAD), float32)
        sdO = cuda.shared.array((BLOCK_M, D_PAD), float32)
        sK = cuda.shared.array((BLOCK_N, D_PAD), float32)
        sV = cuda.shared.array((BLOCK_N, D_PAD), float32)
        sdS = cuda.shared.array((BLOCK_M, BLOCK_N_PAD), float32)
        sL = cuda.shared.array(BLOCK_M, float32)
        sDelta = cuda.shared.array(BLOCK_M, float32)
        acc = cuda.local.array(CPT, float32)

        tid = cuda.threadIdx.x
        r = tid // TPR
        c = tid % TPR
        m0 = cuda.blockIdx.x * BLOCK_M
        h = cuda.blockIdx.y
        b = cuda.blockIdx.z
        hk = h // group
        ab, q_off, k_off, n_q, n_k = sequence(q, k, cu_q, cu_k, b)
        if m0 >= n_q:
            return
        row = m0 + r
        diag = n_k - n_q

        load_qdo(sQ, sdO, q, dout, ab, h, q_off + m0, n_q - m0, tid)
        load_rows(sL, sDelta, lse, delta, ab, h, q_off + m0, n_q - m0, tid, NEG_INF)
        for t in range(CPT):
            acc[t] = float32(0.0)

        n_start, n_end = key_span(m0, min(m0 + BLOCK_M, n_q) - 1, diag, left, right, n_k, BLOCK_N)

        for n0 in range(n_start, n_end, BLOCK_N):
            load_kv(sK, sV, k, v, ab, hk, k_off + n0, n_k - n0, tid)
            cuda.syncthreads()

            l_row = sL[r]
            d_row = sDelta[r]
            for t in range(KPT):
                j = c + TPR * t
                col = n0 + j
                ds = float32(0.0)
                if col < n_k and l_row != NEG_INF and visible(row, col, diag, left, right):
                    qk = float32(0.0)
                    dp = float32(0.0)
                    for d in range(D):
                        qk += sQ[r, d] * sK[j, d]
                        dp += sdO[r, d] * sV[j, d]
                    p = float32(math.exp(qk * scale - l_row))
                    if DROPOUT:
                        if dropout_keep(seed_lo, seed_hi, b, h, row, col, threshold):
                            dp = dp * drop_scale
                        else:
                            dp = float32(0.0)
                    ds = p * (dp - d_row)
                sdS[r, j] = ds
            cuda.syncthreads()

            # dQ_i += dS K_j  (scale applied once at the end)
            for t in range(CPT):
                d = c + TPR * t
                a = acc[t]
                for j in range(BLOCK_N):
                    a += sdS[r, j] * sK[j, d]
                acc[t] = a
            cuda.syncthreads()

        if row < n_q:
            for t in range(CPT):
                dq[ab, h, q_off + row, c + TPR * t] = acc[t] * scale

    return kernel
