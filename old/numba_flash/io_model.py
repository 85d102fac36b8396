"""Analytic model of HBM (DRAM) traffic, FLOPs and peak memory of attention.

Two implementations are modelled, each the way *this repository* runs it:

* :func:`standard_attention`: :mod:`numba_flash.standard`, op by op as CuPy executes it. Every
  CuPy op is its own kernel: it reads its operands from HBM and writes its result to HBM (the
  N x N intermediates are far larger than the 50 MB L2 at any interesting size). Matrix products
  are counted as an ideal GEMM would do them: each operand read once, the result written once.
* :func:`flash_attention`: the kernels of :mod:`numba_flash.forward` and :mod:`numba_flash.backward`,
  load by load. The numbers are **DRAM bytes if nothing is cached**: every tile a thread block
  loads is counted, so K and V, which each query block of the forward (and of the dQ kernel)
  streams again, are counted once per query block. On an H100 many of those re-reads hit in the
  50 MB L2, so a measurement (Nsight Compute) lands between ``bytes_read_compulsory`` (every
  tensor read once: a perfect cache) and ``bytes_read`` (no cache at all).

Both follow the FlashAttention paper's analysis (Dao et al. 2022, Theorem 2): standard attention
needs Theta(N d + N^2) HBM accesses, FlashAttention Theta(N^2 d^2 / M) with M the on-chip memory
(shared memory) size; :func:`paper_bounds` gives both with constant 1 for comparison.

FLOPs count 2 per multiply-add of the matrix products *as executed*: full tiles (padding rows and
masked entries of a visited tile included) where the kernel does not skip them, full N x N
products for cuBLAS. Softmax and other elementwise work (O(N^2), not O(N^2 d)) is not counted,
as in FlashAttention's own benchmarks.

All functions are pure arithmetic (no GPU, no arrays of size N^2), so they are cheap at any size.
"""

from __future__ import annotations

import numpy as np

from .config import BlockConfig, default_config

_F32 = 4  # lse, delta and the softmax intermediates of standard attention are float32
_BOOL = 1
_I64 = 8
PASSES = ("forward", "backward", "forward_backward")
# On-chip memory sizes for the paper's Theta(N^2 d^2 / M): what one block of these kernels may use
# (static shared memory), and what one H100 SM has.
SHARED_MEMORY_SIZES = {"static_48KiB": 48 * 1024, "h100_sm_228KiB": 228 * 1024}

NO_CACHE_NOTE = ("model = DRAM bytes if nothing is cached: every tile load of our kernels is counted "
                 "(K/V re-reads that hit in L2 on a real GPU included); standard attention: each CuPy op "
                 "reads its operands and writes its result once")


def _cdiv(a, b):
    return -(-a // b)


def _itemsize(dtype) -> int:
    return np.dtype(dtype).itemsize


def _entry(bytes_read=0, bytes_written=0, flops=0, bytes_read_compulsory=None) -> dict:
    e = {"bytes_read": int(bytes_read), "bytes_written": int(bytes_written), "flops": int(flops)}
    e["bytes_read_compulsory"] = int(bytes_read if bytes_read_compulsory is None else bytes_read_compulsory)
    return e


def _total(kernels: dict) -> dict:
    """Totals of a pass from its per-kernel entries (kept under 'kernels')."""
    out = {k: sum(e[k] for e in kernels.values())
           for k in ("bytes_read", "bytes_written", "flops", "bytes_read_compulsory")}
    out["bytes"] = out["bytes_read"] + out["bytes_written"]
    out["bytes_compulsory"] = out["bytes_read_compulsory"] + out["bytes_written"]
    out["kernels"] = kernels
    return out


def _passes(fwd: dict, bwd: dict, **extra) -> dict:
    fb = {f"forward/{k}": v for k, v in fwd.items()}
    fb.update({f"backward/{k}": v for k, v in bwd.items()})
    return {"forward": _total(fwd), "backward": _total(bwd), "forward_backward": _total(fb), **extra}


def visible_pairs(n_q: int, n_k: int, causal: bool) -> int:
    """Number of (query, key) pairs that attention does not mask (bottom-right causal alignment)."""
    if not causal:
        return n_q * n_k
    diag = n_k - n_q  # query i sees key j iff j <= i + diag
    i = np.arange(n_q, dtype=np.int64)
    return int(np.clip(i + diag + 1, 0, n_k).sum())


# ---------------------------------------------------------------------------------------------
# Standard attention (numba_flash.standard), op by op
# ---------------------------------------------------------------------------------------------

def standard_attention(batch: int, heads: int, n_q: int, n_k: int, head_dim: int, dtype="float16",
                       causal: bool = False) -> dict:
    """HBM bytes and FLOPs of :func:`numba_flash.standard.forward` and ``backward``, one entry per CuPy op.

    Returns ``{'forward', 'backward', 'forward_backward'}``, each with ``bytes_read``,
    ``bytes_written``, ``bytes``, ``flops`` and ``kernels`` (op name -> its entry), plus
    ``'assumptions'``. ``e`` below is the input dtype's size; S, the softmax and dS are float32.
    """
    e = _itemsize(dtype)
    bh = batch * heads
    nn = n_q * n_k  # one N x N matrix, per (batch, head)
    qd, kd = n_q * head_dim, n_k * head_dim
    mm = 2 * nn * head_dim  # FLOPs of one N x N x d product

    def op(read, written, flops=0, per_head=True):
        f = bh if per_head else 1
        return _entry(read * f, written * f, flops * f)

    fwd = {
        "matmul S = Q K^T": op((qd + kd) * e, nn * e, mm),
        "astype S float32": op(nn * e, nn * _F32),
        "multiply S * scale": op(nn * _F32, nn * _F32),
    }
    if causal:  # the mask is built once (it broadcasts over batch and heads), then read per head
        fwd["mask arange, compare"] = op((n_q + n_k) * _I64 + n_q * _I64, (n_q + n_k + n_q) * _I64 + nn * _BOOL,
                                         per_head=False)
        fwd["where(mask, S, -inf)"] = op(nn * _BOOL + nn * _F32, nn * _F32)
    fwd.update({
        "max over keys": op(nn * _F32, n_q * _F32),
        "isneginf, where (row max)": op(n_q * _F32 + n_q * (_BOOL + _F32), n_q * (_BOOL + _F32)),
        "subtract S - max": op(nn * _F32 + n_q * _F32, nn * _F32),
        "exp": op(nn * _F32, nn * _F32),
        "sum over keys": op(nn * _F32, n_q * _F32),
        "maximum(sum, 1e-30)": op(n_q * _F32, n_q * _F32),
        "divide P /= sum": op(nn * _F32 + n_q * _F32, nn * _F32),
        "astype P dtype": op(nn * _F32, nn * e),
        "matmul O = P V": op(nn * e + kd * e, qd * e, mm),
    })
    bwd = {
        "matmul dV = P^T dO": op(nn * e + qd * e, kd * e, mm),
        "matmul dP = dO V^T": op((qd + kd) * e, nn * e, mm),
        "astype dP float32": op(nn * e, nn * _F32),
        "astype dO, O float32": op(2 * qd * e, 2 * qd * _F32),
        "multiply dO * O": op(2 * qd * _F32, qd * _F32),
        "sum -> delta": op(qd * _F32, n_q * _F32),
        "astype P float32": op(nn * e, nn * _F32),
        "subtract dP - delta": op(nn * _F32 + n_q * _F32, nn * _F32),
        "multiply P * (dP - delta)": op(2 * nn * _F32, nn * _F32),
        "astype dS dtype": op(nn * _F32, nn * e),
        "matmul dQ = dS K": op(nn * e + kd * e, qd * e, mm),
        "multiply dQ * scale": op(qd * e, qd * e),
        "matmul dK = dS^T Q": op(nn * e + qd * e, kd * e, mm),
        "multiply dK * scale": op(kd * e, kd * e),
    }
    return _passes(fwd, bwd, assumptions=(
        "standard attention as numba_flash.standard runs it in CuPy: one kernel per op, each reading its "
        "operands and writing its result to HBM once (ideal GEMM tiling; N x N intermediates do not stay "
        "in L2); FLOPs: full N x N x d products, masked or not"))


# ---------------------------------------------------------------------------------------------
# Our kernels (numba_flash.forward, numba_flash.backward), load by load
# ---------------------------------------------------------------------------------------------

def _query_blocks(n_q, n_k, block_m, block_n, causal):
    """Per query block of the forward / dQ kernels: rows it owns and K/V rows it loads."""
    m0 = np.arange(0, n_q, block_m, dtype=np.int64)
    rows = np.minimum(block_m, n_q - m0)
    diag = n_k - n_q
    # forward.py / backward.py: n_end = min(n_k, max(0, m0 + BLOCK_M + diag)) when causal
    n_end = np.minimum(n_k, np.maximum(0, m0 + block_m + diag)) if causal else np.full_like(m0, n_k)
    tiles = _cdiv(n_end, block_n)  # K/V tiles visited; a tile loads only rows < n_k
    kv_rows = np.minimum(n_k, tiles * block_n)
    return rows, tiles, kv_rows


def _key_blocks(n_q, n_k, block_m, block_n, causal):
    """Per key block of the dK/dV kernel: rows it owns, Q tiles it visits and query rows it loads."""
    n0 = np.arange(0, n_k, block_n, dtype=np.int64)
    rows = np.minimum(block_n, n_k - n0)
    diag = n_k - n_q
    # backward.py: m_start = (max(0, n0 - diag) // BLOCK_M) * BLOCK_M when causal
    m_start = (np.maximum(0, n0 - diag) // block_m) * block_m if causal else np.zeros_like(n0)
    m_start = np.minimum(m_start, n_q)
    tiles = _cdiv(n_q - m_start, block_m)
    q_rows = n_q - m_start  # every visited Q tile loads its rows < n_q
    return rows, tiles, q_rows, m_start


def flash_forward_kernels(batch, heads, n_q, n_k, head_dim, dtype, causal, config: BlockConfig) -> dict:
    """{'forward': entry} of forward_kernel: Q tile once, K and V tiles once per query block, out and lse written."""
    e = _itemsize(dtype)
    bh, d = batch * heads, head_dim
    bm, bn = config.block_m, config.block_n
    rows, tiles, kv_rows = _query_blocks(n_q, n_k, bm, bn, causal)
    read = n_q * d * e + 2 * int(kv_rows.sum()) * d * e
    compulsory = n_q * d * e + 2 * int(kv_rows.max(initial=0)) * d * e
    written = n_q * d * e + n_q * _F32  # out, lse
    flops = 4 * bm * bn * d * int(tiles.sum())  # S = Q K^T and P V over full tiles, no mask skipping
    return {"forward": _entry(read * bh, written * bh, flops * bh, compulsory * bh)}


def flash_backward_kernels(batch, heads, n_q, n_k, head_dim, dtype, causal, config: BlockConfig) -> dict:
    """{'delta', 'dkdv', 'dq': entry} of the three backward kernels, in launch order."""
    e = _itemsize(dtype)
    bh, d = batch * heads, head_dim
    bm, bn = config.block_m, config.block_n
    pairs = visible_pairs(n_q, n_k, causal)
    # delta_kernel: dO and O row by row, delta written
    delta = _entry(2 * n_q * d * e * bh, n_q * _F32 * bh, 2 * n_q * d * bh)
    # dkdv_kernel: K, V once; per visited Q tile: Q, dO (dtype) and lse, delta (float32) rows
    k_rows, k_tiles, q_rows, m_start = _key_blocks(n_q, n_k, bm, bn, causal)
    per_q_row = 2 * d * e + 2 * _F32
    read = 2 * n_k * d * e + int(q_rows.sum()) * per_q_row
    compulsory = 2 * n_k * d * e + (n_q - int(m_start.min(initial=n_q))) * per_q_row
    # QK^T and dO V^T only for visible pairs (guarded by `if visible`), P^T dO and dS^T Q over full tiles
    flops = 4 * d * pairs + 4 * bn * bm * d * int(k_tiles.sum())
    dkdv = _entry(read * bh, 2 * n_k * d * e * bh, flops * bh, compulsory * bh)
    # dq_kernel: Q, dO, lse, delta once per query block; K, V tiles streamed; dQ written
    rows, tiles, kv_rows = _query_blocks(n_q, n_k, bm, bn, causal)
    read = n_q * per_q_row + 2 * int(kv_rows.sum()) * d * e
    compulsory = n_q * per_q_row + 2 * int(kv_rows.max(initial=0)) * d * e
    flops = 4 * d * pairs + 2 * bm * bn * d * int(tiles.sum())  # dS K over full tiles
    dq = _entry(read * bh, n_q * d * e * bh, flops * bh, compulsory * bh)
    return {"delta": delta, "dkdv": dkdv, "dq": dq}


def flash_attention(batch: int, heads: int, n_q: int, n_k: int, head_dim: int, dtype="float16",
                    causal: bool = False, config: BlockConfig | None = None,
                    backward_config: BlockConfig | None = None) -> dict:
    """HBM bytes and FLOPs of numba_flash's kernels: forward_kernel; delta, dkdv and dq kernels.

    ``config`` is the forward's BlockConfig and ``backward_config`` the backward's; ``None`` means
    the GPU default (:func:`numba_flash.config.default_config` with ``simulator=False``), since
    this is a model of the GPU. Pass the configs actually run when comparing with a measurement.

    Returns ``{'forward', 'backward', 'forward_backward'}`` (each: ``bytes_read``, ``bytes_written``,
    ``bytes``, ``flops``, ``bytes_read_compulsory``, ``bytes_compulsory`` and per-kernel
    ``kernels``), plus ``'configs'`` and ``'assumptions'``. ``bytes_read`` is DRAM traffic if
    nothing is cached; ``bytes_read_compulsory`` if every tensor were read exactly once.
    """
    fcfg = config or default_config(head_dim, np.dtype(dtype), "forward", simulator=False)
    bcfg = backward_config or default_config(head_dim, np.dtype(dtype), "backward", simulator=False)
    fwd = flash_forward_kernels(batch, heads, n_q, n_k, head_dim, dtype, causal, fcfg)
    bwd = flash_backward_kernels(batch, heads, n_q, n_k, head_dim, dtype, causal, bcfg)
    cfg = lambda c: [c.block_m, c.block_n, c.num_threads]  # noqa: E731
    return _passes(fwd, bwd, configs={"forward": cfg(fcfg), "backward": cfg(bcfg)}, assumptions=(
        "DRAM bytes if nothing is cached: every tile load counted (K/V re-read per query block in the "
        "forward and dQ kernels, Q/dO/lse/delta per key block in the dK/dV kernel); on an H100 many "
        "re-reads hit in the 50 MB L2, so measured traffic lies between bytes_read_compulsory and "
        "bytes_read. FLOPs: matrix products over full visited tiles, recomputation included"))


# ---------------------------------------------------------------------------------------------
# The paper's asymptotic bounds, and peak memory
# ---------------------------------------------------------------------------------------------

def paper_bounds(batch: int, heads: int, n: int, head_dim: int, dtype="float16",
                 shared_memory_bytes: dict | None = None) -> dict:
    """The FlashAttention paper's forward HBM access counts with constant 1, in bytes.

    Standard attention: Theta(N d + N^2); FlashAttention: Theta(N^2 d^2 / M), M the SRAM size in
    elements (here shared memory bytes / element size), valid for d <= M <= N d. Orders of
    magnitude for comparison, not predictions.
    """
    e = _itemsize(dtype)
    bh = batch * heads
    out = {"standard_theta_Nd_plus_N2_bytes": (n * head_dim + n * n) * e * bh}
    for name, m_bytes in (shared_memory_bytes or SHARED_MEMORY_SIZES).items():
        m = m_bytes / e
        m = min(max(m, head_dim), n * head_dim)  # the theorem's range of M
        out[f"flash_theta_N2d2_over_M_bytes[{name}]"] = n * n * head_dim * head_dim / m * e * bh
    return out


def _peak(events) -> int:
    """Peak of a running sum of allocation events (+bytes allocated, -bytes freed)."""
    live = peak = 0
    for delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def peak_memory(impl: str, pass_: str, batch: int, heads: int, n_q: int, n_k: int, head_dim: int,
                dtype="float16", causal: bool = False) -> int:
    """Modelled peak device memory in bytes *above the inputs* (q, k, v, and dout for the backward).

    ``impl`` is 'standard' (the allocations of numba_flash.standard in CuPy, each temporary freed
    as soon as Python drops its last reference; the outputs, including the P kept for the
    backward, stay alive) or 'flash' (the API allocates only out, lse, delta, dq, dk, dv: O(N)).
    ``pass_`` is 'forward' or 'forward_backward'. Allocator rounding (512 B in CuPy), cuBLAS
    workspaces and O(N) row vectors that die within one line are left out.
    """
    if pass_ not in ("forward", "forward_backward"):
        raise ValueError(f"pass_: expected 'forward' or 'forward_backward', got {pass_!r}")
    e = _itemsize(dtype)
    bh = batch * heads
    qd, kd = n_q * head_dim * e * bh, n_k * head_dim * e * bh  # q-shaped / k-shaped, input dtype
    qd32 = n_q * head_dim * _F32 * bh  # q-shaped float32
    rows = n_q * _F32 * bh  # lse, delta, row max: float32 per query row
    if impl == "flash":
        fwd = qd + rows  # out, lse
        return fwd if pass_ == "forward" else fwd + rows + qd + 2 * kd  # + delta, dq, dk, dv
    if impl != "standard":
        raise ValueError(f"impl: expected 'standard' or 'flash', got {impl!r}")
    s_e, s32 = n_q * n_k * e * bh, n_q * n_k * _F32 * bh  # one N x N matrix, input dtype / float32
    mask = n_q * n_k * _BOOL  # built once, broadcast over batch and heads
    ev = [+s_e, +s32, -s_e,  # S = matmul(...).astype(float32): the matmul result dies after astype
          +s32, -s32]  # * scale: a new array; the astype result dies
    if causal:
        ev += [+mask, +s32, -s32, -mask]  # where(mask, s, -inf) replaces s; the mask dies
    ev += [+rows,  # m = s.max(...)
           +s32, +s32, -s32,  # p = exp(s - m): the difference dies after exp
           -s32,  # del s   (p /= sum(p) is in place)
           +s_e, -s32,  # p = p.astype(dtype): the float32 p dies, P (input dtype) is kept
           +qd, -rows]  # out = P V; m dies at return
    fwd_peak = _peak(ev)
    if pass_ == "forward":
        return fwd_peak
    bwd = [s_e + qd,  # P and out, alive from the forward
           +kd,  # dv = P^T dO
           +s_e, +s32, -s_e,  # dp = (dO V^T).astype(float32)
           +qd32, +qd32, +qd32, -2 * qd32, +rows, -qd32,  # delta = (dO.astype * O.astype).sum(-1)
           +s32, +s32, +s32, -2 * s32,  # p.astype(f32) * (dp - delta): both operands die
           +s_e, -s32,  # ds = (...).astype(dtype): the float32 product dies
           -s32,  # del dp
           +qd, +qd, -qd,  # dq = matmul(ds, k) * scale
           +kd, +kd, -kd]  # dk = matmul(ds^T, q) * scale
    return max(fwd_peak, _peak(bwd))
