"""dK and dV in FlashAttention-2's warp layout (GPU only, 16-bit data): ``TensorCoreConfig.split_d``.

The algorithm, its NumPy spec and the signature are those of :func:`numba_flash.tc_backward.tc_dkdv_kernel`
(a block owns ``config.block_m`` keys and streams query tiles of ``config.block_n`` over its GQA
group). What changes is who computes what. There, a warp owns 16 keys and all of head_dim, so every
Q and dO fragment it reads feeds 16 keys' worth of mma; at head_dim 128 its dK and dV take 128
registers, which leaves no room for more keys, and the kernel reads 80 ``ldmatrix.x4`` per 128 mma:
shared memory, not the tensor cores, sets its pace. Here two warps share 32 keys, and each query
tile is two steps:

1. Scores. Warp ``2w + s`` computes S^T = K Q^T and dP^T = V dO^T for keys ``32w..32w+31`` and
   the query half ``s`` of the tile (a 32 x block_n/2 tile: each K, V, Q, dO fragment feeds two
   mma), then P^T = exp2(S^T scale log2(e) - lse log2(e)) and dS^T = P^T (Z dP^T - delta), and
   stores both, rounded to 16 bits, in shared memory. Barrier.
2. Gradients. Warp ``2w + s`` adds (Z P^T) dO and dS^T Q over the whole tile into half ``s`` of
   head_dim of its 32 keys' dV and dK (32 x head_dim/2 each: the same 128 accumulator registers at
   head_dim 128), reading P^T and dS^T back as A fragments.

Per warp and 64-query tile at head_dim 128: 112 ``ldmatrix.x4`` and 32 shared stores per 256 mma,
against 160 per 256 in the 16-key layout.
"""

from __future__ import annotations

import functools

from numba import cuda
from numba.cuda import float32, uint8, uint32, uint64

from .config import TensorCoreConfig, tc_ds_row_bytes, tc_row_bytes
from .masking import band_queries, block_coords, in_band, query_span, sequence_bounds
from .ptx import (cp_async_commit, cp_async_wait_all, ex2, ld_shared_f32, ldmatrix_x4,
                  ldmatrix_x4_trans, shared_address, st_global_u32, st_shared_u32)
from .tc_backward import _ops, lse2, query_tile_fetcher
from .tc_forward import LOG2E, keep_scale, row_address, tc_jit, tile_copier
from .unroll import static_range, unrolled


@functools.lru_cache(maxsize=None)
def tc_dkdv_split_kernel(config: TensorCoreConfig, head_dim: int, varlen: bool = False, dropout: bool = False,
                         elem: str = "f16"):
    """The ``split_d`` dK/dV kernel; launched and called exactly as :func:`numba_flash.tc_backward.tc_dkdv_kernel`
    (``dq_acc`` unused)."""
    TF32, mma, pack = _ops(elem)
    found = config.problems(head_dim, "backward", elem)
    if TF32 or not config.split_d or found:
        raise ValueError(f"tc_dkdv_split_kernel: config={config} at head_dim={head_dim}, elem={elem!r}: "
                         + "; ".join(found or ["expected split_d=True and 16-bit data"]))
    BLOCK_N, BLOCK_M, STAGES = config.block_m, config.block_n, config.stages  # owned keys, streamed queries
    NUM_THREADS = config.num_threads
    D = head_dim
    ROW_B = tc_row_bytes(D, elem)
    KSTEPS = D // 16  # k-steps of S^T, dP^T over head_dim
    QSTEPS = BLOCK_M // 16  # k-steps of dV, dK over the tile's queries
    QH, DH = BLOCK_M // 2, D // 2  # a warp's queries in step 1, its head_dim columns in step 2
    NTQ, NTD = QH // 8, DH // 8  # their 8-wide n-tiles
    S_REGS, O_REGS = 2 * NTQ * 4, 2 * NTD * 4  # two 16-key m-tiles each
    P_ROW = tc_ds_row_bytes(BLOCK_M)  # shared row of P^T, dS^T: a key's queries, 16-bit
    ROWS_BYTES = 2 * BLOCK_M * 4
    KV_BYTES = BLOCK_N * ROW_B
    TILE_BYTES = BLOCK_M * ROW_B
    SK = STAGES * ROWS_BYTES  # byte offsets: rows | K | V | Q stages | dO stages | P^T | dS^T
    SQ = SK + 2 * KV_BYTES
    SDO = SQ + STAGES * TILE_BYTES
    SP = SDO + STAGES * TILE_BYTES
    SDS = SP + BLOCK_N * P_ROW
    DROPOUT = dropout
    sequence = sequence_bounds(varlen)
    coords = block_coords(config.longest_first, False)
    load_tile, tile_iters = tile_copier(D, NUM_THREADS, elem)
    KV_ITERS, Q_ITERS = tile_iters(BLOCK_N), tile_iters(BLOCK_M)
    fetch, arrive = query_tile_fetcher(BLOCK_M, NUM_THREADS, SQ, SDO, TILE_BYTES, True, load_tile, Q_ITERS, STAGES)

    def kernel(q, k, v, dout, lse, delta, dk, dv, dq_acc, cu_q, cu_k, scale, group, left, right, seed_lo, seed_hi,
               threshold, drop_scale):
        smem = cuda.shared.array(0, uint8)
        s_base = shared_address(smem)
        sK = s_base + uint32(SK)
        sV = sK + uint32(KV_BYTES)
        sP = s_base + uint32(SP)
        sdS = s_base + uint32(SDS)
        st = cuda.local.array(S_REGS, float32)  # step 1: S^T, then P^T (32 keys x QH queries)
        dpt = cuda.local.array(S_REGS, float32)  # dP^T, then dS^T
        dk_acc = cuda.local.array(O_REGS, float32)  # step 2: 32 keys x DH columns
        dv_acc = cuda.local.array(O_REGS, float32)

        tid = cuda.threadIdx.x
        warp = tid // 32
        lane = tid % 32
        g = lane // 4
        t = lane % 4
        pair = warp // 2  # the warp pair's 32 keys
        half = warp % 2  # its query half (step 1) and head_dim half (step 2)
        nb, hk, b = coords()  # (key blocks: the first ones are the longest under a causal band)
        n0 = nb * BLOCK_N
        ab, q_off, k_off, n_q, n_k = sequence(q, k, cu_q, cu_k, b)
        if n0 >= n_k:
            return
        diag = n_k - n_q
        m_start, m_end = query_span(n0, min(n0 + BLOCK_N, n_k) - 1, diag, left, right, n_q, BLOCK_M)
        m_tiles = (m_end - m_start + BLOCK_M - 1) // BLOCK_M
        total = group * m_tiles

        load_tile(sK, row_address(k, ab, hk, k_off + n0), k.strides[2], n_k - n0, BLOCK_N, KV_ITERS, tid)
        load_tile(sV, row_address(v, ab, hk, k_off + n0), v.strides[2], n_k - n0, BLOCK_N, KV_ITERS, tid)
        if total > 0:
            fetch(s_base, 0, q, dout, lse, delta, ab, hk * group, q_off + m_start, n_q - m_start, tid)
        cp_async_commit()

        for i in static_range(O_REGS):
            dk_acc[i] = float32(0.0)
            dv_acc[i] = float32(0.0)
        qk_scale = scale * float32(LOG2E)
        wkey = n0 + pair * 32  # the pair's first key; this lane's keys wkey + 16 mt + g (+ 8)
        q_half = half * QH  # step 1: the warp's first query of the tile
        # ldmatrix rows (byte offsets) of this lane: A fragments of the pair's keys (K, V; P^T, dS^T),
        # B fragments of the warp's queries (Q, dO), transposed B fragments of its head_dim half (dO, Q)
        a_row = pair * 32 + (lane % 8) + 8 * ((lane // 8) % 2)
        a_lane = a_row * ROW_B + 16 * (lane // 16)
        p_lane = a_row * P_ROW + 16 * (lane // 16)
        b_lane = (q_half + (lane % 8) + 8 * (lane // 16)) * ROW_B + 16 * ((lane // 8) % 2)
        t_lane = ((lane % 8) + 8 * ((lane // 8) % 2)) * ROW_B + 16 * (lane // 16) + 2 * half * DH
        s_lane = (pair * 32 + g) * P_ROW + (q_half + 2 * t) * 2  # this lane's C-fragment word of P^T, dS^T

        h = hk * group
        m0 = m_start
        for it in range(total):
            nxt_h, nxt = (h, m0 + BLOCK_M) if m0 + BLOCK_M < m_end else (h + 1, m_start)
            sQ, sdO, s_rows = arrive(s_base, it, total, q, dout, lse, delta, ab, h, m0, nxt_h, nxt, q_off, n_q, tid)

            # Step 1: S^T = K Q^T and dP^T = V dO^T for the pair's 32 keys and this warp's query half.
            for i in static_range(S_REGS):
                st[i] = float32(0.0)
                dpt[i] = float32(0.0)
            for kk in static_range(KSTEPS):  # each Q, dO fragment feeds both 16-key m-tiles
                kf = cuda.local.array(8, uint32)
                vf = cuda.local.array(8, uint32)
                for mt in static_range(2):
                    kf[4 * mt], kf[4 * mt + 1], kf[4 * mt + 2], kf[4 * mt + 3] = ldmatrix_x4(
                        sK + uint32(a_lane + mt * 16 * ROW_B + kk * 32))
                    vf[4 * mt], vf[4 * mt + 1], vf[4 * mt + 2], vf[4 * mt + 3] = ldmatrix_x4(
                        sV + uint32(a_lane + mt * 16 * ROW_B + kk * 32))
                for jp in static_range(NTQ // 2):
                    off = uint32(b_lane + jp * 16 * ROW_B + kk * 32)
                    b0, b1, b2, b3 = ldmatrix_x4(sQ + off)
                    for mt in static_range(2):
                        j = (mt * NTQ + 2 * jp) * 4
                        a = 4 * mt
                        st[j], st[j + 1], st[j + 2], st[j + 3] = mma(
                            kf[a], kf[a + 1], kf[a + 2], kf[a + 3], b0, b1, st[j], st[j + 1], st[j + 2], st[j + 3])
                        st[j + 4], st[j + 5], st[j + 6], st[j + 7] = mma(
                            kf[a], kf[a + 1], kf[a + 2], kf[a + 3], b2, b3, st[j + 4], st[j + 5], st[j + 6], st[j + 7])
                    b0, b1, b2, b3 = ldmatrix_x4(sdO + off)
                    for mt in static_range(2):
                        j = (mt * NTQ + 2 * jp) * 4
                        a = 4 * mt
                        dpt[j], dpt[j + 1], dpt[j + 2], dpt[j + 3] = mma(
                            vf[a], vf[a + 1], vf[a + 2], vf[a + 3], b0, b1, dpt[j], dpt[j + 1], dpt[j + 2], dpt[j + 3])
                        dpt[j + 4], dpt[j + 5], dpt[j + 6], dpt[j + 7] = mma(
                            vf[a], vf[a + 1], vf[a + 2], vf[a + 3], b2, b3,
                            dpt[j + 4], dpt[j + 5], dpt[j + 6], dpt[j + 7])

            # The band: masks only on tiles that cross it (per key row, as tc_dkdv_kernel).
            rel_lo = n0 - (m0 + BLOCK_M - 1) - diag
            rel_hi = n0 + BLOCK_N - 1 - m0 - diag
            if n0 + BLOCK_N > n_k or rel_lo < -left or rel_hi > right:
                for mt in static_range(2):
                    for hr in static_range(2):
                        lo, width = band_queries(wkey + 16 * mt + g + 8 * hr, m0 + q_half + 2 * t, diag, left, right,
                                                 n_k, QH)
                        for j in static_range(NTQ):
                            for c in static_range(2):
                                e = (mt * NTQ + j) * 4 + 2 * hr + c
                                st[e] = in_band(st[e], 8 * j + c, lo, width)
            # P^T and dS^T (lse, delta per query column), stored rounded to 16 bits: dropout's Z goes
            # into the P^T of dV += (Z P^T) dO; dS^T = P^T (Z dP^T - delta).
            for j in static_range(NTQ):
                for c in static_range(2):
                    col = q_half + 8 * j + 2 * t + c
                    l2 = lse2(ld_shared_f32(s_rows + uint32(4 * col)))
                    dl = ld_shared_f32(s_rows + uint32(4 * (BLOCK_M + col)))
                    for mt in static_range(2):
                        for r in static_range(2):
                            e = (mt * NTQ + j) * 4 + 2 * r + c
                            p = ex2(cuda.fma(st[e], qk_scale, -l2))
                            dp = dpt[e]
                            if DROPOUT:
                                z = keep_scale(seed_lo, seed_hi, b, h, m0 + col, wkey + 16 * mt + g + 8 * r,
                                               threshold, drop_scale)
                                dpt[e] = p * (z * dp - dl)
                                st[e] = p * z
                            else:
                                dpt[e] = p * (dp - dl)
                                st[e] = p
            for mt in static_range(2):
                for j in static_range(NTQ):
                    for r in static_range(2):
                        e = (mt * NTQ + j) * 4 + 2 * r
                        at = uint32(s_lane + (16 * mt + 8 * r) * P_ROW + 16 * j)
                        st_shared_u32(sP + at, pack(st[e], st[e + 1]))
                        st_shared_u32(sdS + at, pack(dpt[e], dpt[e + 1]))
            cuda.syncthreads()

            # Step 2: dV += (Z P^T) dO and dK += dS^T Q over the tile's queries, this warp's head_dim half.
            for kk in static_range(QSTEPS):  # each dO, Q fragment feeds both 16-key m-tiles
                pf = cuda.local.array(8, uint32)
                df = cuda.local.array(8, uint32)
                for mt in static_range(2):
                    at = uint32(p_lane + mt * 16 * P_ROW + kk * 32)
                    pf[4 * mt], pf[4 * mt + 1], pf[4 * mt + 2], pf[4 * mt + 3] = ldmatrix_x4(sP + at)
                    df[4 * mt], df[4 * mt + 1], df[4 * mt + 2], df[4 * mt + 3] = ldmatrix_x4(sdS + at)
                for dp_ in static_range(NTD // 2):
                    off = uint32(kk * 16 * ROW_B + t_lane + dp_ * 32)
                    b0, b1, b2, b3 = ldmatrix_x4_trans(sdO + off)
                    for mt in static_range(2):
                        j = (mt * NTD + 2 * dp_) * 4
                        a = 4 * mt
                        dv_acc[j], dv_acc[j + 1], dv_acc[j + 2], dv_acc[j + 3] = mma(
                            pf[a], pf[a + 1], pf[a + 2], pf[a + 3], b0, b1,
                            dv_acc[j], dv_acc[j + 1], dv_acc[j + 2], dv_acc[j + 3])
                        dv_acc[j + 4], dv_acc[j + 5], dv_acc[j + 6], dv_acc[j + 7] = mma(
                            pf[a], pf[a + 1], pf[a + 2], pf[a + 3], b2, b3,
                            dv_acc[j + 4], dv_acc[j + 5], dv_acc[j + 6], dv_acc[j + 7])
                    b0, b1, b2, b3 = ldmatrix_x4_trans(sQ + off)
                    for mt in static_range(2):
                        j = (mt * NTD + 2 * dp_) * 4
                        a = 4 * mt
                        dk_acc[j], dk_acc[j + 1], dk_acc[j + 2], dk_acc[j + 3] = mma(
                            df[a], df[a + 1], df[a + 2], df[a + 3], b0, b1,
                            dk_acc[j], dk_acc[j + 1], dk_acc[j + 2], dk_acc[j + 3])
                        dk_acc[j + 4], dk_acc[j + 5], dk_acc[j + 6], dk_acc[j + 7] = mma(
                            df[a], df[a + 1], df[a + 2], df[a + 3], b2, b3,
                            dk_acc[j + 4], dk_acc[j + 5], dk_acc[j + 6], dk_acc[j + 7])
            cuda.syncthreads()  # every warp is done with this stage and P^T, dS^T before they are overwritten
            h, m0 = nxt_h, nxt

        cp_async_wait_all()

        # Epilogue: dK (times scale) and dV of the pair's keys, this warp's head_dim half.
        dk_base = row_address(dk, ab, hk, k_off)
        dv_base = row_address(dv, ab, hk, k_off)
        for mt in static_range(2):
            for r in static_range(2):
                key = wkey + 16 * mt + g + 8 * r
                if key < n_k:
                    for j in static_range(NTD):
                        e = (mt * NTD + j) * 4 + 2 * r
                        col = (half * DH + 8 * j + 2 * t) * 2
                        st_global_u32(dk_base + uint64(key * dk.strides[2] + col),
                                      pack(dk_acc[e] * scale, dk_acc[e + 1] * scale))
                        st_global_u32(dv_base + uint64(key * dv.strides[2] + col), pack(dv_acc[e], dv_acc[e + 1]))

    constants = dict(KSTEPS=KSTEPS, QSTEPS=QSTEPS, NTQ=NTQ, NTD=NTD, S_REGS=S_REGS, O_REGS=O_REGS)
    return tc_jit(config, "dkdv")(unrolled(kernel, constants))
