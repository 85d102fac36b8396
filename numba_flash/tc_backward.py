"""Tensor-core backward kernels (GPU only): FlashAttention-2's backward on ``mma.sync`` from Numba.

The same algorithm and NumPy spec as :mod:`numba_flash.backward` (``delta`` from its
``delta_kernel``; P recomputed from ``lse``; dropout's Z regenerated from the seed), with the layout
of :mod:`numba_flash.tc_forward`: each warp owns 16 rows of the gradient it writes and keeps them,
their fragments and the score tile in registers; the other side streams through shared memory
with ``cp.async``, ``STAGES`` buffers deep; ``ldmatrix`` reads every B fragment, and every C
fragment of a product that feeds the next one (P, dS) is rounded to 16 bits in place as its A
fragment (16-bit data). Two kernels, each gradient owned by exactly one block (no atomics: deterministic):

* ``dkdv``: a block owns ``config.block_m`` keys (one warp per 16) and streams query tiles of
  ``config.block_n`` (over every query head of its GQA group, in order). Per tile, transposed so
  that the warp's keys are the rows: S^T = K Q^T and dP^T = V dO^T; P^T = exp2(S^T - lse),
  dS^T = P^T (Z dP^T - delta); then dV += (Z P^T) dO and dK += dS^T Q.
* ``dq``: a block owns ``config.block_m`` queries and streams key tiles of ``config.block_n``:
  S = Q K^T, dP = dO V^T, dS = P (Z dP - delta), dQ += dS K.

With ``config.atomic_dq`` the dkdv kernel also does dQ, as FlashAttention-2 does: dS^T goes to
shared memory and the block's warps add dS K into a float32 dQ with vector atomics (5 products instead
of 7). 16-bit: measured slower on the H100 (README, experiments/results/atomic_dq-2026-11-24); the delta
kernel zeroes a float32 scratch dQ and ``tc_dq_convert_kernel`` scales it into dq. float32 (3xTF32, where
the two products saved cost three mma and the float32 adds each): the blocks add scale dS K straight into
dq, which the delta kernel zeroes.

``lse`` and ``delta`` of a query tile travel with it (4-byte ``cp.async``); a query with
``lse = -inf`` (it saw no key) gets P = 0. Query rows past the sequence are zero-filled (Q, dO,
lse, delta = 0), which makes their dS and their P dO exactly 0 without a mask; key rows past it
are masked (they would reach dQ) and never stored. For head_dim > 64 the dkdv warps read their K
and V fragments from shared memory at each use instead of holding them: dK and dV accumulators
(2 x 64 registers at head_dim 128) leave no room for them.

float32 (``elem="tf32"``): every product is 3xTF32 (:func:`numba_flash.tc_forward.mma_3xtf32`), each
k-step's fragment added to its float32 sums outside the tensor cores (they truncate; or each chain of
config.TF32_CHAIN / TF32_PV_CHAIN k-steps, :func:`numba_flash.tc_forward.mma_3xtf32_chain`), with the
forward's layout tricks: ldmatrix of 32-bit rows for every fragment read row-wise (K, V, Q, dO as
A or B of S^T, dP^T, S, dP); a C fragment (P^T, dS^T, dS) becomes an A fragment by taking its
columns 2t, 2t + 1 as k = t, t + 4, and the B operand's matching rows 2t, 2t + 1 are read with
scalar shared loads (dO, Q in dV, dK += ...; K in dQ += dS K). A fragments read from shared memory
(K, V; Q, dO) are split again at every use: held split, they would take twice the registers.
The dK/dV sums have two levels: every 32 k-steps each lane adds its register sums to its own float32
slots in shared memory (head_dim <= 64) or to its own elements of dK and dV in global memory (above:
zeroed first, then ``red.global.add``s, which one thread's land in program order: still deterministic), and
restarts them, so that no float32 sum rounds ~N/8 times at its full size (config.TF32_SUMS_KSTEPS;
causal dK, dV errors 3-4x smaller at head_dim 64).
"""

from __future__ import annotations

import functools
import math

from numba import cuda
from numba.cuda import float32, uint8, uint32, uint64

from . import config as config_module
from .config import TC_ELEMS, TF32_SUMS_KSTEPS, TensorCoreConfig, tc_ds_row_bytes, tc_row_bytes, tf32_sums_bytes
from .masking import band_columns, band_queries, block_coords, in_band, key_span, query_span, sequence_bounds
from .ptx import (cp_async4, cp_async_commit, cp_async_wait_all, cp_async_wait_one, ex2, f32_from_bits,
                  ld_shared_f32, ldmatrix_x4, ldmatrix_x4_trans, mma_16816_bf16, mma_16816_f16,
                  pack_bf16x2, pack_f16x2, red_add_f32x2, shared_address, split_tf32, st_global_f32x2,
                  st_global_u32, st_shared_f32, st_shared_f32x2, st_shared_u32)
from .tc_forward import (LOG2E, NEG_INF, a_from_c_3xtf32, chain_flags, keep_scale, keyed_by_chains, masked,
                         mma_3xtf32_add, mma_3xtf32_chain, mma_3xtf32_chain_x2, row_address, tc_jit, tile_copier)
from .unroll import static_range, unrolled

POS_INF = float32(math.inf)


@cuda.jit(device=True, forceinline=True)
def lse2(x):
    """lse in base 2 for exp2; -inf (a query that saw no key) -> +inf, so that its P is 0, not NaN."""
    return x * float32(LOG2E) if x != NEG_INF else POS_INF


def _ops(elem: str):
    """(TF32, the 16-bit mma, the 16-bit pack) of ``elem``; float32 ("tf32") kernels take the float16
    ones for their (compile-time dead) 16-bit branches."""
    if elem not in TC_ELEMS:
        raise ValueError(f"elem: expected one of {TC_ELEMS}, got {elem!r}")
    if elem == "bf16":
        return False, mma_16816_bf16, pack_bf16x2
    return elem == "tf32", mma_16816_f16, pack_f16x2


def kv_in_registers(head_dim: int) -> bool:
    """Whether the dkdv warps hold their K and V fragments in registers (else: re-read them)."""
    return head_dim <= 64


@cuda.jit(device=True, forceinline=True)
def from_f16(x):
    return float32(x)


@cuda.jit(device=True, forceinline=True)
def from_bf16(x):
    return f32_from_bits(uint32(x) << uint32(16))


def tile_product_3xtf32(NT: int, DT: int, ROW_B: int, chain: int):
    """``product(a_src, s_b, f_lane, acc, g)``: ``acc += A B`` over one streamed tile's rows in float32 (3xTF32),
    the dK/dV kernel's dV += P^T dO and dK += dS^T Q and the dQ kernel's dQ += dS K.

    ``a_src``: the C fragments of the tile's scores (NT 8-row n-tiles x 4 float32), which become A fragments by
    taking their columns 2t, 2t + 1 as k = t, t + 4 (8 rows per k-step); ``s_b + f_lane``: the lane's word of
    the B operand's first row in shared memory (rows 2t, 2t + 1 of each k-step, ROW_B bytes apart);
    ``acc``: DT n-tiles x 4 float32 sums; ``g``: 4 float32 registers for a running chain.

    ``chain`` (config.TF32_PV_CHAIN) k-steps go through the tensor cores' accumulator per float32 add: all
    of the tile's A fragments first, then per n-tile its k-steps in a row. 1: one k-step's A fragment at a
    time, every product added in float32."""
    FIRST, LAST = chain_flags(NT, chain)
    CHAINED, PT_REGS = chain > 1, 8 * NT

    def product(a_src, s_b, f_lane, acc, g):
        for _ in static_range(1 if CHAINED else 0):
            pall = cuda.local.array(PT_REGS, uint32)
            for j in static_range(NT):
                (pall[8 * j], pall[8 * j + 1], pall[8 * j + 2], pall[8 * j + 3], pall[8 * j + 4], pall[8 * j + 5],
                 pall[8 * j + 6], pall[8 * j + 7]) = a_from_c_3xtf32(a_src[4 * j], a_src[4 * j + 1],
                                                                    a_src[4 * j + 2], a_src[4 * j + 3])
            for dt in static_range(DT):
                for j in static_range(NT):
                    off = uint32(f_lane + 8 * j * ROW_B + 32 * dt)
                    b0, c0 = split_tf32(ld_shared_f32(s_b + off))
                    b1, c1 = split_tf32(ld_shared_f32(s_b + off + uint32(ROW_B)))
                    o = 4 * dt
                    (g[0], g[1], g[2], g[3], acc[o], acc[o + 1], acc[o + 2], acc[o + 3]) = mma_3xtf32_chain(
                        pall[8 * j], pall[8 * j + 1], pall[8 * j + 2], pall[8 * j + 3], pall[8 * j + 4],
                        pall[8 * j + 5], pall[8 * j + 6], pall[8 * j + 7], b0, b1, c0, c1, g[0], g[1], g[2], g[3],
                        acc[o], acc[o + 1], acc[o + 2], acc[o + 3], FIRST[j], LAST[j])
        for j in static_range(0 if CHAINED else NT):
            pa = cuda.local.array(8, uint32)
            (pa[0], pa[1], pa[2], pa[3], pa[4], pa[5], pa[6], pa[7]) = a_from_c_3xtf32(
                a_src[4 * j], a_src[4 * j + 1], a_src[4 * j + 2], a_src[4 * j + 3])
            for dt in static_range(DT):
                off = uint32(f_lane + 8 * j * ROW_B + 32 * dt)
                b0, c0 = split_tf32(ld_shared_f32(s_b + off))
                b1, c1 = split_tf32(ld_shared_f32(s_b + off + uint32(ROW_B)))
                o = 4 * dt
                acc[o], acc[o + 1], acc[o + 2], acc[o + 3] = mma_3xtf32_add(
                    pa[0], pa[1], pa[2], pa[3], pa[4], pa[5], pa[6], pa[7], b0, b1, c0, c1,
                    acc[o], acc[o + 1], acc[o + 2], acc[o + 3])

    return cuda.jit(device=True, inline=True)(unrolled(product, dict(NT=NT, DT=DT, CHAINED=CHAINED, PT_REGS=PT_REGS)))


@functools.lru_cache(maxsize=None)
def tc_delta_kernel(head_dim: int, elem: str = "f16", zero_dq: bool = False):
    """``delta[b, h, i] = sum_d dout[b, h, i, d] * out[b, h, i, d]`` (inputs of ``elem``: 16-bit, or float32).

    Launch with grid (cdiv(Nq, ROWS), H, B) and 128 threads, ``ROWS = tc_delta_rows(head_dim)``.
    A row's 8-element chunks go to consecutive lanes (coalesced reads), reduced with ``shfl.xor``.
    ``zero_dq``: the kernel takes a fourth argument, the float32 dQ of the atomic-dQ backward
    (``dq_acc``, shaped as dout), and zeroes it (it runs before the atomic adds: no extra launch).
    """
    _ops(elem)
    to_f32 = from_bf16 if elem == "bf16" else from_f16  # float32(x): float16 -> float32, float32 as is
    CH = head_dim // 8
    LPR = 1 << (CH - 1).bit_length()  # lanes per row: a power of two >= CH (at most 32)
    ROWS = 128 // LPR

    @cuda.jit(device=True, inline=True)
    def row_dot(dout, out, delta, b, h, r, c):
        acc = float32(0.0)
        if r < out.shape[2] and c < CH:
            for e in range(8):
                acc += to_f32(dout[b, h, r, 8 * c + e]) * to_f32(out[b, h, r, 8 * c + e])
        off = LPR // 2
        while off > 0:
            acc += cuda.shfl_xor_sync(0xFFFFFFFF, acc, off)
            off //= 2
        if c == 0 and r < out.shape[2]:
            delta[b, h, r] = acc

    if not zero_dq:
        @cuda.jit
        def kernel(dout, out, delta):
            tid = cuda.threadIdx.x
            row_dot(dout, out, delta, cuda.blockIdx.z, cuda.blockIdx.y, cuda.blockIdx.x * ROWS + tid // LPR, tid % LPR)

        return kernel

    @cuda.jit
    def kernel_zeroing(dout, out, delta, dq_acc):
        tid = cuda.threadIdx.x
        b, h, r, c = cuda.blockIdx.z, cuda.blockIdx.y, cuda.blockIdx.x * ROWS + tid // LPR, tid % LPR
        row_dot(dout, out, delta, b, h, r, c)
        if r < out.shape[2] and c < CH:
            for e in range(8):
                dq_acc[b, h, r, 8 * c + e] = float32(0.0)

    return kernel_zeroing


def tc_delta_rows(head_dim: int) -> int:
    return 128 // (1 << (head_dim // 8 - 1).bit_length())


@functools.lru_cache(maxsize=None)
def tc_dq_convert_kernel(head_dim: int, elem: str = "f16"):
    """``dq = scale * dq_acc`` in ``elem`` (16-bit): the last step of the atomic-dQ backward.

    Launch as :func:`tc_delta_kernel` (grid (cdiv(Nq, ROWS), H, B), 128 threads); arguments
    ``(dq_acc, dq, scale)``, dq_acc float32 and dq 16-bit, both shaped as q. A lane converts 8
    columns of a row and stores them as 4 packed words."""
    _, _, pack = _ops(elem)
    CH = head_dim // 8
    LPR = 1 << (CH - 1).bit_length()
    ROWS = 128 // LPR

    @cuda.jit
    def kernel(dq_acc, dq, scale):
        tid = cuda.threadIdx.x
        r = cuda.blockIdx.x * ROWS + tid // LPR
        c = tid % LPR
        h = cuda.blockIdx.y
        b = cuda.blockIdx.z
        if r < dq.shape[2] and c < CH:
            at = row_address(dq, b, h, r) + uint64(16 * c)
            for e in range(4):
                st_global_u32(at + uint64(4 * e), pack(dq_acc[b, h, r, 8 * c + 2 * e] * scale,
                                                       dq_acc[b, h, r, 8 * c + 2 * e + 1] * scale))

    return kernel


def query_tile_fetcher(BLOCK_M, NUM_THREADS, SQ, SDO, TILE_BYTES, COUNTERS, load_tile, Q_ITERS, STAGES):
    """The dK/dV kernels' query-tile pipeline, ``(fetch, arrive)``.

    ``fetch(s_base, stage, q, dout, lse, delta, ab, h, row0, rows_left, tid)``: cp.async query tile
    ``row0..`` of head ``h`` (Q, dO at byte offsets ``SQ``, ``SDO`` + ``stage`` tiles, and their lse,
    delta at the start of shared memory, ``stage`` x 8 ``BLOCK_M`` bytes).

    ``arrive(s_base, it, total, q, dout, lse, delta, ab, h, m0, nxt_h, nxt, q_off, n_q, tid)``: at the
    loop's tile ``it`` of ``total`` (head ``h``, first row ``m0``; the next one's ``nxt_h``, ``nxt``),
    start the copy that is due, wait for tile ``it`` and return its ``(sQ, sdO, s_rows)`` addresses."""
    ROWS_BYTES = 2 * BLOCK_M * 4  # lse, delta of one query tile (float32)
    ROW_COPIES = -(-BLOCK_M // NUM_THREADS)  # their 4-byte copies per thread

    @cuda.jit(device=True, inline=True)
    def fetch_row(dst, l_src, d_src, lse, delta, i, rows_left):
        """cp.async query row ``i``'s lse and delta (zeros past ``rows_left``)."""
        ok = i < rows_left
        cp_async4(dst + uint32(4 * i), l_src + uint64(i * lse.strides[2]) if ok else l_src, uint32(4 if ok else 0))
        cp_async4(dst + uint32(4 * (BLOCK_M + i)), d_src + uint64(i * delta.strides[2]) if ok else d_src,
                  uint32(4 if ok else 0))

    @cuda.jit(device=True, inline=True)
    def fetch(s_base, stage, q, dout, lse, delta, ab, h, row0, rows_left, tid):
        """cp.async query tile ``row0..`` of head ``h``: Q, dO and their lse, delta, into ``stage``."""
        sQ = s_base + uint32(SQ + stage * TILE_BYTES)
        load_tile(sQ, row_address(q, ab, h, row0), q.strides[2], rows_left, BLOCK_M, Q_ITERS, tid)
        sdO = s_base + uint32(SDO + stage * TILE_BYTES)
        load_tile(sdO, row_address(dout, ab, h, row0), dout.strides[2], rows_left, BLOCK_M, Q_ITERS, tid)
        l_src = row_address(lse, ab, h, row0)
        d_src = row_address(delta, ab, h, row0)
        dst = s_base + uint32(stage * ROWS_BYTES)
        if COUNTERS:  # a constant count (a range from tid cost ~100 instructions per tile)
            for j in range(ROW_COPIES):
                i = tid + j * NUM_THREADS
                if i >= BLOCK_M:
                    break
                fetch_row(dst, l_src, d_src, lse, delta, i, rows_left)
        else:
            for i in range(tid, BLOCK_M, NUM_THREADS):
                fetch_row(dst, l_src, d_src, lse, delta, i, rows_left)

    @cuda.jit(device=True, inline=True)
    def arrive(s_base, it, total, q, dout, lse, delta, ab, h, m0, nxt_h, nxt, q_off, n_q, tid):
        """Query tile ``it``'s shared addresses, once its copy has landed (see the factory)."""
        stage = it % STAGES if STAGES > 1 else 0
        if STAGES > 1:  # two stages: the next tile is copied while this one is used
            if it + 1 < total:
                fetch(s_base, 1 - stage, q, dout, lse, delta, ab, nxt_h, q_off + nxt, n_q - nxt, tid)
            cp_async_commit()
            cp_async_wait_one()
        else:  # one: the prologue copied tile 0, each later tile is copied at its turn
            if it > 0:
                fetch(s_base, 0, q, dout, lse, delta, ab, h, q_off + m0, n_q - m0, tid)
                cp_async_commit()
            cp_async_wait_all()
        cuda.syncthreads()
        return (s_base + uint32(SQ + stage * TILE_BYTES), s_base + uint32(SDO + stage * TILE_BYTES),
                s_base + uint32(stage * ROWS_BYTES))

    return fetch, arrive


@keyed_by_chains
def tc_dkdv_kernel(config: TensorCoreConfig, head_dim: int, varlen: bool = False, dropout: bool = False,
                   elem: str = "f16"):
    """dK and dV on the tensor cores; launch with grid (cdiv(max Nk, config.block_m), H_kv, B),
    ``config.num_threads`` threads, ``config.backward_shared_bytes(head_dim, "dkdv", elem)`` dynamic
    shared memory. Signature as :func:`numba_flash.backward.dkdv_kernel` (q, k, v, dout, dk, dv of
    ``elem``: 16-bit, or float32 multiplied as 3xTF32) with ``dq_acc`` after dv: with
    ``config.atomic_dq`` the float32 dQ (shaped as q, zeroed beforehand) that each block adds its
    dS K to (16-bit: unscaled, into a scratch array; float32: times ``scale``, into dq itself);
    otherwise unused (any float32 4-D array). With ``config.split_d``: the kernel
    of :mod:`numba_flash.tc_dkdv_split` (FlashAttention-2's warp layout)."""
    if config.split_d:
        from .tc_dkdv_split import tc_dkdv_split_kernel

        return tc_dkdv_split_kernel(config, head_dim, varlen, dropout, elem)
    TF32, mma, pack = _ops(elem)
    BLOCK_N, BLOCK_M, STAGES = config.block_m, config.block_n, config.stages  # owned keys, streamed queries
    NUM_THREADS = config.num_threads
    D = head_dim
    ROW_B = tc_row_bytes(D, elem)  # shared row pitch in bytes
    KSTEPS = (ROW_B - 16) // 32  # k-steps over head_dim (S^T, dP^T): 32 bytes of a row each
    FIRST, LAST = chain_flags(KSTEPS)  # float32: where the k-step chains of S^T and dP^T start and end
    DT = (ROW_B - 16) // (32 if TF32 else 16)  # 8-column n-tiles of dK, dV
    NT = BLOCK_M // 8  # 8-query n-tiles of S^T, dP^T
    S_REGS, O_REGS, P_REGS = NT * 4, DT * 4, NT * 2
    # float32: dV += P^T dO, dK += dS^T Q over a query tile (k-steps chained per config.TF32_PV_CHAIN)
    tile_product = tile_product_3xtf32(NT, DT, ROW_B, config_module.TF32_PV_CHAIN)
    KV_REGS = kv_in_registers(D) and not TF32
    # K, V fragments: all k-steps' (16-bit, head_dim <= 64), else one k-step's (TF32: big and small parts)
    F_REGS = KSTEPS * 4 if KV_REGS else 8
    ROWS_BYTES = 2 * BLOCK_M * 4  # lse, delta of one query tile (float32)
    # 16-bit: the next query tile by counters and lse/delta copies in a constant count, which took the
    # head_dim-64 default's loop from 1503 to 908 instructions (with the band bounds). float32 keeps the
    # division and the range from tid: with the two changes its head_dim-128 kernel spilled 120 bytes
    # (with either alone 144-320; with neither none).
    COUNTERS = not TF32
    KV_BYTES = BLOCK_N * ROW_B
    TILE_BYTES = BLOCK_M * ROW_B
    SK = STAGES * ROWS_BYTES  # byte offsets in shared memory: rows | K | V | Q stages | dO stages
    SQ = SK + 2 * KV_BYTES
    SDO = SQ + STAGES * TILE_BYTES
    # atomic_dq: dS^T (keys x queries, of elem) goes to shared memory at SDS, then the block's warps
    # split dQ's tile (BLOCK_M queries x D) into units of 16 queries x 16 columns (float32: x 8), UPW per
    # warp, each a sum over the block's keys (16-bit: one k-step per warp's 16 keys; float32: 8 keys a k-step).
    ATOMIC = config.atomic_dq
    DS_ROW = tc_ds_row_bytes(BLOCK_M, elem)
    # float32 at head_dim <= 64: two-level dK, dV sums (config.TF32_SUMS_KSTEPS): every FLUSH query tiles
    # each lane adds its register sums to its own float32 slots at SSUM (dV's O_REGS, then dK's, each
    # value's 32 lanes side by side: conflict-free, and no barrier since no lane reads another's) and
    # zeroes them; the epilogue adds the slots back. Above head_dim 64 (slots of 64 KB would cost an SM one
    # of its two blocks) the second level is dK and dV themselves in global memory: the block owns their
    # rows, so each lane zeroes its own elements in the prologue and adds every flush and the epilogue's
    # sums with red.global.add: nothing loaded back, and no first-flush branch. With CI's wheels that spills
    # less than the one-level kernel (96-byte stack, 188 stored, 140 loaded, against 120, 168, 180), where
    # loading back (424 stored) or a store for the first flush (384; 13 % slower on the H200) spilled more.
    # At N = 4096, ~8 flushes of 2 x 32 KB per block.
    SUMS = tf32_sums_bytes(D, NUM_THREADS, elem) > 0
    GSUMS = TF32 and not SUMS
    FLUSH = max(TF32_SUMS_KSTEPS // (BLOCK_M // 8), 1)
    SSUM = SDO + STAGES * TILE_BYTES
    SDS = SSUM + tf32_sums_bytes(D, NUM_THREADS, elem)  # (16-bit: no sums)
    NW = BLOCK_N // 16
    NP = DT if TF32 else DT // 2  # a 16-query row of dQ's units (16-bit: DT is even)
    UNITS = (BLOCK_M // 16) * NP
    UPW = -(-UNITS // NW)
    ACC_REGS = (4 if TF32 else 8) * UPW
    SHARED_A = NP % UPW == 0 and UNITS % NW == 0  # a warp's units lie in one m-tile
    KQ = BLOCK_N // 8  # float32: k-steps of dQ += dS K over the block's keys, chained per config.TF32_PV_CHAIN
    QFIRST, QLAST = chain_flags(KQ, config_module.TF32_PV_CHAIN)
    DROPOUT = dropout
    sequence = sequence_bounds(varlen)
    coords = block_coords(config.longest_first, False)
    load_tile, tile_iters = tile_copier(D, NUM_THREADS, elem)
    KV_ITERS, Q_ITERS = tile_iters(BLOCK_N), tile_iters(BLOCK_M)
    fetch, arrive = query_tile_fetcher(BLOCK_M, NUM_THREADS, SQ, SDO, TILE_BYTES, COUNTERS, load_tile, Q_ITERS, STAGES)

    def kernel(q, k, v, dout, lse, delta, dk, dv, dq_acc, cu_q, cu_k, scale, group, left, right, seed_lo, seed_hi,
               threshold, drop_scale):
        smem = cuda.shared.array(0, uint8)
        s_base = shared_address(smem)
        sK = s_base + uint32(SK)
        sdS = s_base + uint32(SDS)
        sV = sK + uint32(KV_BYTES)
        kf = cuda.local.array(F_REGS, uint32)  # this warp's 16 keys x D of K, V as A fragments
        vf = cuda.local.array(F_REGS, uint32)
        st = cuda.local.array(S_REGS, float32)  # S^T, then P^T: 16 keys x BLOCK_M queries
        dpt = cuda.local.array(S_REGS, float32)  # dP^T, then dS^T
        gst = cuda.local.array(S_REGS, float32)  # float32: the running chains' parts of S^T, dP^T
        gdpt = cuda.local.array(S_REGS, float32)
        pz = cuda.local.array(P_REGS, uint32)  # (Z P^T) rounded to 16 bits: A fragments of dV += . dO
        dst_ = cuda.local.array(P_REGS, uint32)  # dS^T rounded to 16 bits: A fragments of dK += . Q
        dk_acc = cuda.local.array(O_REGS, float32)
        dv_acc = cuda.local.array(O_REGS, float32)

        tid = cuda.threadIdx.x
        warp = tid // 32
        lane = tid % 32
        g = lane // 4
        t = lane % 4
        nb, hk, b = coords()  # (key blocks: the first ones are the longest under a causal band)
        n0 = nb * BLOCK_N
        ab, q_off, k_off, n_q, n_k = sequence(q, k, cu_q, cu_k, b)
        if n0 >= n_k:
            return
        diag = n_k - n_q
        m_start, m_end = query_span(n0, min(n0 + BLOCK_N, n_k) - 1, diag, left, right, n_q, BLOCK_M)
        m_tiles = (m_end - m_start + BLOCK_M - 1) // BLOCK_M
        total = group * m_tiles  # (query head, query tile) pairs, streamed in this order

        # Prologue: K and V of this block with the first query tile.
        load_tile(sK, row_address(k, ab, hk, k_off + n0), k.strides[2], n_k - n0, BLOCK_N, KV_ITERS, tid)
        load_tile(sV, row_address(v, ab, hk, k_off + n0), v.strides[2], n_k - n0, BLOCK_N, KV_ITERS, tid)
        if total > 0:
            fetch(s_base, 0, q, dout, lse, delta, ab, hk * group, q_off + m_start, n_q - m_start, tid)
        cp_async_commit()

        for i in static_range(O_REGS):
            dk_acc[i] = float32(0.0)
            dv_acc[i] = float32(0.0)
        s_sum = s_base + uint32(SSUM + 4 * tid)  # this lane's slot of value 0 (of dV; dK's O_REGS after)
        for i in static_range(2 * O_REGS if SUMS else 0):
            st_shared_f32(s_sum + uint32(4 * NUM_THREADS * i), float32(0.0))
        for r in static_range(2 if GSUMS else 0):  # the global second level starts at zero
            key = n0 + warp * 16 + g + 8 * r
            if key < n_k:
                at_k = row_address(dk, ab, hk, k_off + key) + uint64(8 * t)
                at_v = row_address(dv, ab, hk, k_off + key) + uint64(8 * t)
                for j in static_range(D_TILES):
                    st_global_f32x2(at_k + uint64(32 * j), float32(0.0), float32(0.0))
                    st_global_f32x2(at_v + uint64(32 * j), float32(0.0), float32(0.0))
        qk_scale = scale * float32(LOG2E)
        wkey = n0 + warp * 16  # this warp's first key; lane keys wkey + g (+ 8)
        # This lane's ldmatrix row (byte offsets): of A fragments (K, V), of B fragments (Q, dO), and of
        # transposed 16-bit B fragments (dO, Q in dV, dK += ...); TF32 reads those rows 2t, 2t + 1 itself.
        a_lane = (warp * 16 + (lane % 8) + 8 * ((lane // 8) % 2)) * ROW_B + 16 * (lane // 16)
        b_lane = ((lane % 8) + 8 * (lane // 16)) * ROW_B + 16 * ((lane // 8) % 2)
        t_lane = ((lane % 8) + 8 * ((lane // 8) % 2)) * ROW_B + 16 * (lane // 16)
        f_lane = 2 * t * ROW_B + 4 * g
        ds_lane = ((lane % 8) + 8 * (lane // 16)) * DS_ROW + 16 * ((lane // 8) % 2)  # dS^T read as dS's A
        ds_lane_t = 2 * t * DS_ROW + 4 * g  # float32: its key row 2t, query column g (k = t; 2t + 1 is k = t + 4)

        h = hk * group  # query head and first row of this tile
        m0 = m_start
        for it in range(total):
            # The next tile's: this head's query tiles in turn, then the next head's (counters, not a
            # 64-bit division and remainder by m_tiles per tile).
            if COUNTERS:
                nxt_h, nxt = (h, m0 + BLOCK_M) if m0 + BLOCK_M < m_end else (h + 1, m_start)
            else:
                h = hk * group + it // m_tiles
                m0 = m_start + (it % m_tiles) * BLOCK_M
                nxt = m_start + ((it + 1) % m_tiles) * BLOCK_M
                nxt_h = hk * group + (it + 1) // m_tiles
            sQ, sdO, s_rows = arrive(s_base, it, total, q, dout, lse, delta, ab, h, m0, nxt_h, nxt, q_off, n_q, tid)

            if KV_REGS and it == 0:
                for kk in static_range(KSTEPS):
                    off = uint32(a_lane + kk * 32)
                    kf[4 * kk], kf[4 * kk + 1], kf[4 * kk + 2], kf[4 * kk + 3] = ldmatrix_x4(sK + off)
                    vf[4 * kk], vf[4 * kk + 1], vf[4 * kk + 2], vf[4 * kk + 3] = ldmatrix_x4(sV + off)

            # S^T = K Q^T and dP^T = V dO^T: each ldmatrix of Q / dO gives two 8-query n-tiles.
            for i in static_range(S_REGS):
                st[i] = float32(0.0)
                dpt[i] = float32(0.0)
            for kk in static_range(KSTEPS):
                if KV_REGS:
                    k0, k1, k2, k3 = kf[4 * kk], kf[4 * kk + 1], kf[4 * kk + 2], kf[4 * kk + 3]
                    v0, v1, v2, v3 = vf[4 * kk], vf[4 * kk + 1], vf[4 * kk + 2], vf[4 * kk + 3]
                else:
                    k0, k1, k2, k3 = ldmatrix_x4(sK + uint32(a_lane + kk * 32))
                    v0, v1, v2, v3 = ldmatrix_x4(sV + uint32(a_lane + kk * 32))
                if TF32:  # big parts in f[0:4], small in f[4:8]
                    kf[0], kf[4] = split_tf32(k0)
                    kf[1], kf[5] = split_tf32(k1)
                    kf[2], kf[6] = split_tf32(k2)
                    kf[3], kf[7] = split_tf32(k3)
                    vf[0], vf[4] = split_tf32(v0)
                    vf[1], vf[5] = split_tf32(v1)
                    vf[2], vf[6] = split_tf32(v2)
                    vf[3], vf[7] = split_tf32(v3)
                for jp in static_range(NT // 2):
                    off = uint32(jp * 16 * ROW_B + b_lane + kk * 32)
                    j = 8 * jp
                    b0, b1, b2, b3 = ldmatrix_x4(sQ + off)
                    if TF32:
                        (gst[j], gst[j + 1], gst[j + 2], gst[j + 3], gst[j + 4], gst[j + 5], gst[j + 6], gst[j + 7],
                         st[j], st[j + 1], st[j + 2], st[j + 3], st[j + 4], st[j + 5], st[j + 6],
                         st[j + 7]) = mma_3xtf32_chain_x2(
                            kf[0], kf[1], kf[2], kf[3], kf[4], kf[5], kf[6], kf[7], b0, b1, b2, b3,
                            gst[j], gst[j + 1], gst[j + 2], gst[j + 3], gst[j + 4], gst[j + 5], gst[j + 6], gst[j + 7],
                            st[j], st[j + 1], st[j + 2], st[j + 3], st[j + 4], st[j + 5], st[j + 6],
                            st[j + 7], FIRST[kk], LAST[kk])
                    else:
                        st[j], st[j + 1], st[j + 2], st[j + 3] = mma(k0, k1, k2, k3, b0, b1,
                                                                     st[j], st[j + 1], st[j + 2], st[j + 3])
                        st[j + 4], st[j + 5], st[j + 6], st[j + 7] = mma(
                            k0, k1, k2, k3, b2, b3, st[j + 4], st[j + 5], st[j + 6], st[j + 7])
                    b0, b1, b2, b3 = ldmatrix_x4(sdO + off)
                    if TF32:
                        (gdpt[j], gdpt[j + 1], gdpt[j + 2], gdpt[j + 3], gdpt[j + 4], gdpt[j + 5], gdpt[j + 6], gdpt[j + 7],
                         dpt[j], dpt[j + 1], dpt[j + 2], dpt[j + 3], dpt[j + 4], dpt[j + 5], dpt[j + 6],
                         dpt[j + 7]) = mma_3xtf32_chain_x2(
                            vf[0], vf[1], vf[2], vf[3], vf[4], vf[5], vf[6], vf[7], b0, b1, b2, b3,
                            gdpt[j], gdpt[j + 1], gdpt[j + 2], gdpt[j + 3], gdpt[j + 4], gdpt[j + 5], gdpt[j + 6], gdpt[j + 7],
                            dpt[j], dpt[j + 1], dpt[j + 2], dpt[j + 3], dpt[j + 4], dpt[j + 5], dpt[j + 6],
                            dpt[j + 7], FIRST[kk], LAST[kk])
                    else:
                        dpt[j], dpt[j + 1], dpt[j + 2], dpt[j + 3] = mma(v0, v1, v2, v3, b0, b1,
                                                                         dpt[j], dpt[j + 1], dpt[j + 2], dpt[j + 3])
                        dpt[j + 4], dpt[j + 5], dpt[j + 6], dpt[j + 7] = mma(
                            v0, v1, v2, v3, b2, b3, dpt[j + 4], dpt[j + 5], dpt[j + 6], dpt[j + 7])

            # P^T = exp2(S^T scale log2(e) - lse log2(e)), one FFMA and one ex2 per score; masks only on
            # tiles that cross the band.
            rel_lo = n0 - (m0 + BLOCK_M - 1) - diag
            rel_hi = n0 + BLOCK_N - 1 - m0 - diag
            if n0 + BLOCK_N > n_k or rel_lo < -left or rel_hi > right:  # per key row, as the forward
                for hr in static_range(0 if TF32 else 2):
                    lo, width = band_queries(wkey + g + 8 * hr, m0 + 2 * t, diag, left, right, n_k, BLOCK_M)
                    for j in static_range(NT):
                        for c in static_range(2):
                            st[4 * j + 2 * hr + c] = in_band(st[4 * j + 2 * hr + c], 8 * j + c, lo, width)
                for j in static_range(NT if TF32 else 0):
                    for e in static_range(4):
                        st[4 * j + e] = masked(st[4 * j + e], wkey + g + 8 * (e // 2), m0 + 8 * j + 2 * t + (e % 2),
                                               diag, left, right, n_k)
            for j in static_range(NT):
                for c in static_range(2):  # query column 8j + 2t + c: lanes rows g (e = c), g + 8 (e = c + 2)
                    col = 8 * j + 2 * t + c
                    l2 = lse2(ld_shared_f32(s_rows + uint32(4 * col)))
                    dl = ld_shared_f32(s_rows + uint32(4 * (BLOCK_M + col)))
                    for r in static_range(2):
                        e = 4 * j + 2 * r + c
                        p = ex2(cuda.fma(st[e], qk_scale, -l2))
                        dp = dpt[e]
                        if DROPOUT:
                            z = keep_scale(seed_lo, seed_hi, b, h, m0 + col, wkey + g + 8 * r, threshold, drop_scale)
                            dpt[e] = p * (z * dp - dl)
                            st[e] = p * z
                        else:
                            dpt[e] = p * (dp - dl)
                            st[e] = p

            if ATOMIC and TF32:  # dS^T for dQ below, as the 16-bit one (float32, 2 values per store)
                for j in static_range(NT):
                    for r in static_range(2):
                        st_shared_f32x2(sdS + uint32((warp * 16 + g + 8 * r) * DS_ROW + (8 * j + 2 * t) * 4),
                                        dpt[4 * j + 2 * r], dpt[4 * j + 2 * r + 1])

            # dV += (Z P^T) dO and dK += dS^T Q over this tile's queries (the k dimension here).
            if TF32:
                # 8 queries per k-step (as P in the forward's P V; tile_product_3xtf32).
                # dV's products first, then dK's: one split A fragment live at a time. At head_dim 128 this
                # spilled 248 bytes with the GPU image's CUDA 13.0 against 304 for both in one pass, and ran
                # the causal backward 5.2 % faster (session 15); at 64, 193 registers against 198 (before the
                # two-level sums, which took it to 182).
                tile_product(st, sdO, f_lane, dv_acc, gst)  # dV += P^T dO
                tile_product(dpt, sQ, f_lane, dk_acc, gst)  # dK += dS^T Q
            else:
                for i in static_range(P_REGS):
                    pz[i] = pack(st[2 * i], st[2 * i + 1])
                    dst_[i] = pack(dpt[2 * i], dpt[2 * i + 1])
                if ATOMIC:  # dS^T for dQ below: dst_[2j + r] holds key g + 8r, queries 8j + 2t, + 1
                    for i in static_range(P_REGS):
                        st_shared_u32(sdS + uint32((warp * 16 + g + 8 * (i % 2)) * DS_ROW + (8 * (i // 2) + 2 * t) * 2),
                                      dst_[i])
            for kk in static_range(0 if TF32 else NT // 2):
                for dp_ in static_range(DT // 2):
                    off = uint32(kk * 16 * ROW_B + t_lane + dp_ * 32)
                    b0, b1, b2, b3 = ldmatrix_x4_trans(sdO + off)
                    j = 8 * dp_
                    dv_acc[j], dv_acc[j + 1], dv_acc[j + 2], dv_acc[j + 3] = mma(
                        pz[4 * kk], pz[4 * kk + 1], pz[4 * kk + 2], pz[4 * kk + 3], b0, b1,
                        dv_acc[j], dv_acc[j + 1], dv_acc[j + 2], dv_acc[j + 3])
                    dv_acc[j + 4], dv_acc[j + 5], dv_acc[j + 6], dv_acc[j + 7] = mma(
                        pz[4 * kk], pz[4 * kk + 1], pz[4 * kk + 2], pz[4 * kk + 3], b2, b3,
                        dv_acc[j + 4], dv_acc[j + 5], dv_acc[j + 6], dv_acc[j + 7])
                    b0, b1, b2, b3 = ldmatrix_x4_trans(sQ + off)
                    dk_acc[j], dk_acc[j + 1], dk_acc[j + 2], dk_acc[j + 3] = mma(
                        dst_[4 * kk], dst_[4 * kk + 1], dst_[4 * kk + 2], dst_[4 * kk + 3], b0, b1,
                        dk_acc[j], dk_acc[j + 1], dk_acc[j + 2], dk_acc[j + 3])
                    dk_acc[j + 4], dk_acc[j + 5], dk_acc[j + 6], dk_acc[j + 7] = mma(
                        dst_[4 * kk], dst_[4 * kk + 1], dst_[4 * kk + 2], dst_[4 * kk + 3], b2, b3,
                        dk_acc[j + 4], dk_acc[j + 5], dk_acc[j + 6], dk_acc[j + 7])
            if ATOMIC:
                # dQ[m0:, :] += dS K over this block's keys, A = dS from the dS^T tile that every warp wrote,
                # B = K (as the dQ kernel reads it), each unit's sums added to the float32 dQ with vector atomics.
                # 16-bit: units of 16 x 16, A by ldmatrix.trans, one 16-key k-step per warp's keys, unscaled
                # (scaled when converted, tc_dq_convert_kernel). float32: units of 16 x 8, 3xTF32, A by scalar
                # reads with its key rows 2t, 2t + 1 taken as k = t, t + 4 (conflict-free: tc_ds_row_bytes) to
                # match K's rows 2t, 2t + 1, 8 keys a k-step chained per config.TF32_PV_CHAIN, scaled and added
                # straight into dq (zeroed by the delta kernel). The warp's units advance k-step by k-step
                # together (independent mma chains in flight instead of one unit after another), sharing one A
                # fragment when they share the m-tile. A warp past the last unit (UNITS % NW != 0) recomputes
                # the last one and adds nothing.
                cuda.syncthreads()
                dqa = row_address(dq_acc, ab, h, q_off + m0)
                acc = cuda.local.array(ACC_REGS, float32)
                qg = cuda.local.array(ACC_REGS, float32)  # float32: the running chains
                for e in static_range(ACC_REGS):
                    acc[e] = float32(0.0)
                for kk in static_range(KQ if TF32 else NW):
                    for i in static_range(UPW):
                        u = min(warp * UPW + i, UNITS - 1)
                        if TF32:
                            if i == 0 or not SHARED_A:
                                at = sdS + uint32(ds_lane_t + kk * 8 * DS_ROW + (u // NP) * 64)
                                a0, s0 = split_tf32(ld_shared_f32(at))
                                a1, s1 = split_tf32(ld_shared_f32(at + uint32(32)))
                                a2, s2 = split_tf32(ld_shared_f32(at + uint32(DS_ROW)))
                                a3, s3 = split_tf32(ld_shared_f32(at + uint32(DS_ROW + 32)))
                            off = uint32(f_lane + kk * 8 * ROW_B + (u % NP) * 32)
                            b0, c0 = split_tf32(ld_shared_f32(sK + off))
                            b1, c1 = split_tf32(ld_shared_f32(sK + off + uint32(ROW_B)))
                            o = 4 * i
                            (qg[o], qg[o + 1], qg[o + 2], qg[o + 3], acc[o], acc[o + 1], acc[o + 2],
                             acc[o + 3]) = mma_3xtf32_chain(
                                a0, a1, a2, a3, s0, s1, s2, s3, b0, b1, c0, c1, qg[o], qg[o + 1], qg[o + 2], qg[o + 3],
                                acc[o], acc[o + 1], acc[o + 2], acc[o + 3], QFIRST[kk], QLAST[kk])
                        else:
                            if i == 0 or not SHARED_A:
                                a0, a1, a2, a3 = ldmatrix_x4_trans(
                                    sdS + uint32(kk * 16 * DS_ROW + ds_lane + (u // NP) * 32))
                            b0, b1, b2, b3 = ldmatrix_x4_trans(sK + uint32(kk * 16 * ROW_B + t_lane + (u % NP) * 32))
                            acc[8 * i], acc[8 * i + 1], acc[8 * i + 2], acc[8 * i + 3] = mma(
                                a0, a1, a2, a3, b0, b1, acc[8 * i], acc[8 * i + 1], acc[8 * i + 2], acc[8 * i + 3])
                            acc[8 * i + 4], acc[8 * i + 5], acc[8 * i + 6], acc[8 * i + 7] = mma(
                                a0, a1, a2, a3, b2, b3, acc[8 * i + 4], acc[8 * i + 5], acc[8 * i + 6],
                                acc[8 * i + 7])
                for i in static_range(UPW):
                    u = warp * UPW + i
                    col = (u % NP) * (8 if TF32 else 16)
                    for r in static_range(2):
                        row = (u // NP) * 16 + g + 8 * r
                        if u < UNITS and m0 + row < n_q:
                            at = dqa + uint64(row * dq_acc.strides[2] + (col + 2 * t) * 4)
                            if TF32:
                                red_add_f32x2(at, acc[4 * i + 2 * r] * scale, acc[4 * i + 2 * r + 1] * scale)
                            else:
                                red_add_f32x2(at, acc[8 * i + 2 * r], acc[8 * i + 2 * r + 1])
                                if col + 8 < D:  # the pair's second n-tile may be row padding (D % 16 = 8)
                                    red_add_f32x2(at + uint64(32), acc[8 * i + 4 + 2 * r], acc[8 * i + 5 + 2 * r])
            if SUMS and it % FLUSH == FLUSH - 1:  # the second level of the float32 sums
                for i in static_range(O_REGS):
                    at = s_sum + uint32(4 * NUM_THREADS * i)
                    st_shared_f32(at, ld_shared_f32(at) + dv_acc[i])
                    dv_acc[i] = float32(0.0)
                    at = s_sum + uint32(4 * NUM_THREADS * (O_REGS + i))
                    st_shared_f32(at, ld_shared_f32(at) + dk_acc[i])
                    dk_acc[i] = float32(0.0)
            if GSUMS and it % FLUSH == FLUSH - 1:  # the second level, in dK (scaled) and dV
                for r in static_range(2):
                    key = wkey + g + 8 * r
                    if key < n_k:
                        at_k = row_address(dk, ab, hk, k_off + key) + uint64(8 * t)
                        at_v = row_address(dv, ab, hk, k_off + key) + uint64(8 * t)
                        for j in static_range(D_TILES):  # one thread's adds to one address land in order
                            e = 4 * j + 2 * r
                            red_add_f32x2(at_k + uint64(32 * j), dk_acc[e] * scale, dk_acc[e + 1] * scale)
                            red_add_f32x2(at_v + uint64(32 * j), dv_acc[e], dv_acc[e + 1])
                for i in static_range(O_REGS):
                    dk_acc[i] = float32(0.0)
                    dv_acc[i] = float32(0.0)
            cuda.syncthreads()  # every warp is done with this stage before a copy overwrites it
            if COUNTERS:
                h, m0 = nxt_h, nxt

        cp_async_wait_all()  # nothing in flight at exit (no query tile at all: K, V only)
        for i in static_range(O_REGS if SUMS else 0):
            dv_acc[i] += ld_shared_f32(s_sum + uint32(4 * NUM_THREADS * i))
            dk_acc[i] += ld_shared_f32(s_sum + uint32(4 * NUM_THREADS * (O_REGS + i)))

        # Epilogue: dK (times scale) and dV of this warp's keys, 2 values per store.
        dk_base = row_address(dk, ab, hk, k_off)
        dv_base = row_address(dv, ab, hk, k_off)
        for r in static_range(2):
            key = wkey + g + 8 * r
            if key < n_k:
                for j in static_range(D_TILES):
                    e = 4 * j + 2 * r
                    if TF32:
                        col = (8 * j + 2 * t) * 4
                        at_k = dk_base + uint64(key * dk.strides[2] + col)
                        at_v = dv_base + uint64(key * dv.strides[2] + col)
                        if GSUMS:  # onto the flushed sums
                            red_add_f32x2(at_k, dk_acc[e] * scale, dk_acc[e + 1] * scale)
                            red_add_f32x2(at_v, dv_acc[e], dv_acc[e + 1])
                        else:
                            st_global_f32x2(at_k, dk_acc[e] * scale, dk_acc[e + 1] * scale)
                            st_global_f32x2(at_v, dv_acc[e], dv_acc[e + 1])
                    else:
                        col = (8 * j + 2 * t) * 2
                        st_global_u32(dk_base + uint64(key * dk.strides[2] + col),
                                      pack(dk_acc[e] * scale, dk_acc[e + 1] * scale))
                        st_global_u32(dv_base + uint64(key * dv.strides[2] + col), pack(dv_acc[e], dv_acc[e + 1]))

    constants = dict(KSTEPS=KSTEPS, NT=NT, DT=DT, S_REGS=S_REGS, O_REGS=O_REGS, P_REGS=P_REGS, D_TILES=D // 8,
                     TF32=TF32, ATOMIC=ATOMIC, UPW=UPW, NW=NW, ACC_REGS=ACC_REGS, KQ=KQ, SUMS=SUMS,
                     GSUMS=GSUMS, FLUSH=FLUSH, NUM_THREADS=NUM_THREADS)
    return tc_jit(config, "dkdv")(unrolled(kernel, constants))


@keyed_by_chains
def tc_dq_kernel(config: TensorCoreConfig, head_dim: int, varlen: bool = False, dropout: bool = False,
                 elem: str = "f16"):
    """dQ on the tensor cores; launch with grid (cdiv(max Nq, config.block_m), H, B),
    ``config.num_threads`` threads, ``config.backward_shared_bytes(head_dim, "dq", elem)`` dynamic
    shared memory. Signature as :func:`numba_flash.backward.dq_kernel` (q, k, v, dout, dq of ``elem``)."""
    TF32, mma, pack = _ops(elem)
    BLOCK_M, BLOCK_N, STAGES = config.block_m, config.block_n, config.stages  # owned queries, streamed keys
    NUM_THREADS = config.num_threads
    D = head_dim
    ROW_B = tc_row_bytes(D, elem)
    KSTEPS = (ROW_B - 16) // 32
    FIRST, LAST = chain_flags(KSTEPS)  # float32: where the k-step chains of S and dP start and end
    DT = (ROW_B - 16) // (32 if TF32 else 16)
    NT = BLOCK_N // 8
    # float32: dQ += dS K over a key tile (k-steps chained per config.TF32_PV_CHAIN)
    tile_product = tile_product_3xtf32(NT, DT, ROW_B, config_module.TF32_PV_CHAIN)
    # Q and dO fragments: all k-steps' (16-bit), else one k-step's, re-read from shared memory for
    # every key tile, as the forward does (TF32: big and small parts; 16-bit with config.reread_q)
    REREAD = TF32 or config.reread_q
    F_REGS, S_REGS, O_REGS, P_REGS = (8 if TF32 else 4 if REREAD else KSTEPS * 4), NT * 4, DT * 4, NT * 2
    Q_BYTES = BLOCK_M * ROW_B
    KV_BYTES = BLOCK_N * ROW_B
    SDO = Q_BYTES  # byte offsets: Q | dO | K stages | V stages
    SK = 2 * Q_BYTES
    SV = SK + STAGES * KV_BYTES
    DROPOUT = dropout
    sequence = sequence_bounds(varlen)
    coords = block_coords(config.longest_first, True)
    load_tile, tile_iters = tile_copier(D, NUM_THREADS, elem)
    Q_ITERS, KV_ITERS = tile_iters(BLOCK_M), tile_iters(BLOCK_N)

    def kernel(q, k, v, dout, lse, delta, dq, cu_q, cu_k, scale, group, left, right, seed_lo, seed_hi,
               threshold, drop_scale):
        smem = cuda.shared.array(0, uint8)
        s_base = shared_address(smem)
        sQ = s_base
        sdO = s_base + uint32(SDO)
        qf = cuda.local.array(F_REGS, uint32)  # this warp's 16 queries of Q and dO as A fragments
        dof = cuda.local.array(F_REGS, uint32)
        sacc = cuda.local.array(S_REGS, float32)  # S, then P: 16 queries x BLOCK_N keys
        dpacc = cuda.local.array(S_REGS, float32)  # dP, then dS
        gs = cuda.local.array(S_REGS, float32)  # float32: the running chains' parts of S, dP
        gdp = cuda.local.array(S_REGS, float32)
        ds16 = cuda.local.array(P_REGS, uint32)  # dS rounded to 16 bits: A fragments of dQ += . K
        dq_acc = cuda.local.array(O_REGS, float32)

        tid = cuda.threadIdx.x
        warp = tid // 32
        lane = tid % 32
        g = lane // 4
        t = lane % 4
        mb, h, b = coords()  # longest blocks first (see tc_forward)
        m0 = mb * BLOCK_M
        hk = h // group
        ab, q_off, k_off, n_q, n_k = sequence(q, k, cu_q, cu_k, b)
        if m0 >= n_q:
            return
        diag = n_k - n_q
        n_start, n_end = key_span(m0, min(m0 + BLOCK_M, n_q) - 1, diag, left, right, n_k, BLOCK_N)

        load_tile(sQ, row_address(q, ab, h, q_off + m0), q.strides[2], n_q - m0, BLOCK_M, Q_ITERS, tid)
        load_tile(sdO, row_address(dout, ab, h, q_off + m0), dout.strides[2], n_q - m0, BLOCK_M, Q_ITERS, tid)
        k_src = row_address(k, ab, hk, k_off)
        v_src = row_address(v, ab, hk, k_off)
        ks, vs = k.strides[2], v.strides[2]
        if n_start < n_end:
            load_tile(s_base + uint32(SK), k_src + uint64(n_start * ks), ks, n_k - n_start, BLOCK_N, KV_ITERS, tid)
            load_tile(s_base + uint32(SV), v_src + uint64(n_start * vs), vs, n_k - n_start, BLOCK_N, KV_ITERS, tid)
        cp_async_commit()

        # This lane's two query rows: their lse (base 2) and delta, read once.
        wrow = m0 + warp * 16
        row0 = wrow + g
        row1 = row0 + 8
        l2_0 = lse2(lse[ab, h, q_off + row0]) if row0 < n_q else float32(0.0)
        l2_1 = lse2(lse[ab, h, q_off + row1]) if row1 < n_q else float32(0.0)
        dl_0 = delta[ab, h, q_off + row0] if row0 < n_q else float32(0.0)
        dl_1 = delta[ab, h, q_off + row1] if row1 < n_q else float32(0.0)
        for i in static_range(O_REGS):
            dq_acc[i] = float32(0.0)
        qk_scale = scale * float32(LOG2E)
        # This lane's ldmatrix rows (byte offsets) of A fragments (Q, dO), B fragments (K, V) and
        # transposed 16-bit B fragments (K in dQ += dS K); TF32 reads K's rows 2t, 2t + 1 itself.
        a_lane = (warp * 16 + (lane % 8) + 8 * ((lane // 8) % 2)) * ROW_B + 16 * (lane // 16)
        b_lane = ((lane % 8) + 8 * (lane // 16)) * ROW_B + 16 * ((lane // 8) % 2)
        t_lane = ((lane % 8) + 8 * ((lane // 8) % 2)) * ROW_B + 16 * (lane // 16)
        f_lane = 2 * t * ROW_B + 4 * g

        it = 0
        for n0 in range(n_start, n_end, BLOCK_N):
            stage = it % STAGES if STAGES > 1 else 0
            sK = s_base + uint32(SK + stage * KV_BYTES)
            sV = s_base + uint32(SV + stage * KV_BYTES)
            if STAGES > 1:
                nxt = n0 + BLOCK_N
                if nxt < n_end:
                    load_tile(s_base + uint32(SK + (1 - stage) * KV_BYTES), k_src + uint64(nxt * ks), ks, n_k - nxt,
                              BLOCK_N, KV_ITERS, tid)
                    load_tile(s_base + uint32(SV + (1 - stage) * KV_BYTES), v_src + uint64(nxt * vs), vs, n_k - nxt,
                              BLOCK_N, KV_ITERS, tid)
                cp_async_commit()
                cp_async_wait_one()
            else:
                if it > 0:
                    load_tile(sK, k_src + uint64(n0 * ks), ks, n_k - n0, BLOCK_N, KV_ITERS, tid)
                    load_tile(sV, v_src + uint64(n0 * vs), vs, n_k - n0, BLOCK_N, KV_ITERS, tid)
                    cp_async_commit()
                cp_async_wait_all()
            cuda.syncthreads()

            if not REREAD and it == 0:
                for kk in static_range(KSTEPS):
                    off = uint32(a_lane + kk * 32)
                    qf[4 * kk], qf[4 * kk + 1], qf[4 * kk + 2], qf[4 * kk + 3] = ldmatrix_x4(sQ + off)
                    dof[4 * kk], dof[4 * kk + 1], dof[4 * kk + 2], dof[4 * kk + 3] = ldmatrix_x4(sdO + off)

            # S = Q K^T and dP = dO V^T.
            for i in static_range(S_REGS):
                sacc[i] = float32(0.0)
                dpacc[i] = float32(0.0)
            for kk in static_range(KSTEPS):
                if TF32:  # this k-step's Q and dO fragments, split (big parts in [0:4], small in [4:8])
                    a0, a1, a2, a3 = ldmatrix_x4(sQ + uint32(a_lane + kk * 32))
                    qf[0], qf[4] = split_tf32(a0)
                    qf[1], qf[5] = split_tf32(a1)
                    qf[2], qf[6] = split_tf32(a2)
                    qf[3], qf[7] = split_tf32(a3)
                    a0, a1, a2, a3 = ldmatrix_x4(sdO + uint32(a_lane + kk * 32))
                    dof[0], dof[4] = split_tf32(a0)
                    dof[1], dof[5] = split_tf32(a1)
                    dof[2], dof[6] = split_tf32(a2)
                    dof[3], dof[7] = split_tf32(a3)
                elif REREAD:  # this k-step's 16-bit Q and dO fragments
                    qf[0], qf[1], qf[2], qf[3] = ldmatrix_x4(sQ + uint32(a_lane + kk * 32))
                    dof[0], dof[1], dof[2], dof[3] = ldmatrix_x4(sdO + uint32(a_lane + kk * 32))
                for jp in static_range(NT // 2):
                    off = uint32(jp * 16 * ROW_B + b_lane + kk * 32)
                    j = 8 * jp
                    qa = 0 if REREAD else 4 * kk
                    b0, b1, b2, b3 = ldmatrix_x4(sK + off)
                    if TF32:
                        (gs[j], gs[j + 1], gs[j + 2], gs[j + 3], gs[j + 4], gs[j + 5], gs[j + 6], gs[j + 7],
                         sacc[j], sacc[j + 1], sacc[j + 2], sacc[j + 3], sacc[j + 4], sacc[j + 5], sacc[j + 6],
                         sacc[j + 7]) = mma_3xtf32_chain_x2(
                            qf[0], qf[1], qf[2], qf[3], qf[4], qf[5], qf[6], qf[7], b0, b1, b2, b3,
                            gs[j], gs[j + 1], gs[j + 2], gs[j + 3], gs[j + 4], gs[j + 5], gs[j + 6], gs[j + 7],
                            sacc[j], sacc[j + 1], sacc[j + 2], sacc[j + 3], sacc[j + 4], sacc[j + 5], sacc[j + 6],
                            sacc[j + 7], FIRST[kk], LAST[kk])
                    else:
                        sacc[j], sacc[j + 1], sacc[j + 2], sacc[j + 3] = mma(
                            qf[qa], qf[qa + 1], qf[qa + 2], qf[qa + 3], b0, b1, sacc[j], sacc[j + 1], sacc[j + 2],
                            sacc[j + 3])
                        sacc[j + 4], sacc[j + 5], sacc[j + 6], sacc[j + 7] = mma(
                            qf[qa], qf[qa + 1], qf[qa + 2], qf[qa + 3], b2, b3, sacc[j + 4], sacc[j + 5], sacc[j + 6],
                            sacc[j + 7])
                    b0, b1, b2, b3 = ldmatrix_x4(sV + off)
                    if TF32:
                        (gdp[j], gdp[j + 1], gdp[j + 2], gdp[j + 3], gdp[j + 4], gdp[j + 5], gdp[j + 6], gdp[j + 7],
                         dpacc[j], dpacc[j + 1], dpacc[j + 2], dpacc[j + 3], dpacc[j + 4], dpacc[j + 5], dpacc[j + 6],
                         dpacc[j + 7]) = mma_3xtf32_chain_x2(
                            dof[0], dof[1], dof[2], dof[3], dof[4], dof[5], dof[6], dof[7], b0, b1, b2, b3,
                            gdp[j], gdp[j + 1], gdp[j + 2], gdp[j + 3], gdp[j + 4], gdp[j + 5], gdp[j + 6], gdp[j + 7],
                            dpacc[j], dpacc[j + 1], dpacc[j + 2], dpacc[j + 3], dpacc[j + 4], dpacc[j + 5], dpacc[j + 6],
                            dpacc[j + 7], FIRST[kk], LAST[kk])
                    else:
                        dpacc[j], dpacc[j + 1], dpacc[j + 2], dpacc[j + 3] = mma(
                            dof[qa], dof[qa + 1], dof[qa + 2], dof[qa + 3], b0, b1, dpacc[j], dpacc[j + 1],
                            dpacc[j + 2], dpacc[j + 3])
                        dpacc[j + 4], dpacc[j + 5], dpacc[j + 6], dpacc[j + 7] = mma(
                            dof[qa], dof[qa + 1], dof[qa + 2], dof[qa + 3], b2, b3, dpacc[j + 4], dpacc[j + 5],
                            dpacc[j + 6], dpacc[j + 7])

            rel_lo = n0 - (m0 + BLOCK_M - 1) - diag
            rel_hi = n0 + BLOCK_N - 1 - m0 - diag
            if n0 + BLOCK_N > n_k or rel_lo < -left or rel_hi > right:  # per row, as the forward
                for hr in static_range(0 if TF32 else 2):
                    lo, width = band_columns(row0 + 8 * hr, n0 + 2 * t, diag, left, right, n_k, BLOCK_N)
                    for j in static_range(NT):
                        for c in static_range(2):
                            sacc[4 * j + 2 * hr + c] = in_band(sacc[4 * j + 2 * hr + c], 8 * j + c, lo, width)
                for j in static_range(NT if TF32 else 0):
                    for e in static_range(4):
                        sacc[4 * j + e] = masked(sacc[4 * j + e], n0 + 8 * j + 2 * t + (e % 2), row0 + 8 * (e // 2),
                                                 diag, left, right, n_k)
            # dS = P (Z dP - delta), P = exp2(S scale log2(e) - lse log2(e)) (lse, delta: this lane's rows g, g + 8)
            for j in static_range(NT):
                for e in static_range(4):
                    i = 4 * j + e
                    p = ex2(cuda.fma(sacc[i], qk_scale, -(l2_0 if e < 2 else l2_1)))
                    dp = dpacc[i]
                    if DROPOUT:
                        dp *= keep_scale(seed_lo, seed_hi, b, h, row0 + 8 * (e // 2), n0 + 8 * j + 2 * t + (e % 2),
                                         threshold, drop_scale)
                    dpacc[i] = p * (dp - (dl_0 if e < 2 else dl_1))

            # dQ += dS K over this tile's keys.
            if TF32:  # 8 keys per k-step, C fragment keys 2t, 2t + 1 as k = t, t + 4 (see dkdv)
                tile_product(dpacc, sK, f_lane, dq_acc, gs)
            else:
                for i in static_range(P_REGS):
                    ds16[i] = pack(dpacc[2 * i], dpacc[2 * i + 1])
            for kk in static_range(0 if TF32 else NT // 2):
                for dp_ in static_range(DT // 2):
                    b0, b1, b2, b3 = ldmatrix_x4_trans(sK + uint32(kk * 16 * ROW_B + t_lane + dp_ * 32))
                    j = 8 * dp_
                    dq_acc[j], dq_acc[j + 1], dq_acc[j + 2], dq_acc[j + 3] = mma(
                        ds16[4 * kk], ds16[4 * kk + 1], ds16[4 * kk + 2], ds16[4 * kk + 3], b0, b1,
                        dq_acc[j], dq_acc[j + 1], dq_acc[j + 2], dq_acc[j + 3])
                    dq_acc[j + 4], dq_acc[j + 5], dq_acc[j + 6], dq_acc[j + 7] = mma(
                        ds16[4 * kk], ds16[4 * kk + 1], ds16[4 * kk + 2], ds16[4 * kk + 3], b2, b3,
                        dq_acc[j + 4], dq_acc[j + 5], dq_acc[j + 6], dq_acc[j + 7])
            it += 1
            cuda.syncthreads()

        cp_async_wait_all()

        dq_base = row_address(dq, ab, h, q_off)
        for r in static_range(2):
            row = row0 + 8 * r
            if row < n_q:
                for j in static_range(D_TILES):
                    e = 4 * j + 2 * r
                    if TF32:
                        st_global_f32x2(dq_base + uint64(row * dq.strides[2] + (8 * j + 2 * t) * 4),
                                        dq_acc[e] * scale, dq_acc[e + 1] * scale)
                    else:
                        st_global_u32(dq_base + uint64(row * dq.strides[2] + (8 * j + 2 * t) * 2),
                                      pack(dq_acc[e] * scale, dq_acc[e + 1] * scale))

    constants = dict(KSTEPS=KSTEPS, NT=NT, DT=DT, S_REGS=S_REGS, O_REGS=O_REGS, P_REGS=P_REGS, D_TILES=D // 8,
                     TF32=TF32, REREAD=REREAD)
    return tc_jit(config, "dq")(unrolled(kernel, constants))
