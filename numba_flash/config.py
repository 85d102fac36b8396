"""Block configurations: how the kernels tile the problem, and whether a tiling fits the device.

A thread block owns ``block_m`` query rows (forward and dQ kernels) or ``block_n`` key rows
(dK/dV kernel). ``num_threads`` threads share those rows equally, so each row is handled by
``threads_per_row = num_threads // rows`` threads that split its keys and its head_dim columns.
Partial row maxima and sums meet in shared memory (no warp shuffles), which keeps the same code
runnable on Numba's CUDA simulator.

All tiles are fp32 in *static* shared memory, each row padded by one word so that threads of
one warp reading different rows hit different banks. Static shared memory is capped at 48 KiB
per block on every CUDA GPU, which is what bounds the tile sizes here.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

import numpy as np

# Static shared memory per block, the same on every CUDA device (larger needs dynamic shared
# memory and a per-kernel attribute, which these portable kernels do not use).
STATIC_SHARED_LIMIT = 48 * 1024
MAX_THREADS_PER_BLOCK = 1024
HEAD_DIMS = tuple(range(8, 257, 8))
_FLOAT32_BYTES = 4
PASSES = ("forward", "backward")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """Tile sizes and thread count of the attention kernels.

    ``block_m``: query rows per tile; ``block_n``: key/value rows per tile; ``num_threads``: threads
    per block. ``num_threads`` must be ``block_m`` (forward, dQ) and ``block_n`` (dK/dV, backward
    only) times 1, 2, 4 or 8 threads per row, and those threads split the other block evenly.
    """

    block_m: int = 32
    block_n: int = 32
    num_threads: int = 128

    def __post_init__(self):
        for name in ("block_m", "block_n", "num_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"BlockConfig.{name}: expected a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.num_threads > MAX_THREADS_PER_BLOCK:
            raise ValueError(
                f"BlockConfig.num_threads={self.num_threads}: at most {MAX_THREADS_PER_BLOCK} threads per block"
            )
        self._check_rows("block_m", self.block_m, "block_n", self.block_n)

    @property
    def BLOCK_M(self) -> int:  # noqa: N802 - the paper's name
        return self.block_m

    @property
    def BLOCK_N(self) -> int:  # noqa: N802 - the paper's name
        return self.block_n

    def threads_per_row(self, rows: int) -> int:
        return self.num_threads // rows

    def _check_rows(self, rows_name, rows, other_name, other):
        tpr, rem = divmod(self.num_threads, rows)
        if rem or tpr not in (1, 2, 4, 8):
            raise ValueError(
                f"BlockConfig(num_threads={self.num_threads}, {rows_name}={rows}): num_threads must be "
                f"{rows_name} times 1, 2, 4 or 8 (threads per row); try num_threads={rows * min(8, max(1, tpr))}"
            )
        if other % tpr:
            raise ValueError(
                f"BlockConfig({rows_name}={rows}, {other_name}={other}, num_threads={self.num_threads}): "
                f"the {tpr} threads of a row split the {other_name} keys/queries evenly, so {other_name} "
                f"must be a multiple of {tpr}"
            )

    def shared_memory_bytes(self, head_dim: int, kernel: str) -> int:
        """Static shared memory one block of ``kernel`` ('forward', 'dq' or 'dkdv') needs."""
        bm, bn, d = self.block_m, self.block_n, head_dim
        if kernel == "forward":  # Q, K, V tiles, P tile, partial row max and sum
            words = bm * (d + 1) + 2 * bn * (d + 1) + bm * (bn + 1) + 2 * bm * self.threads_per_row(bm)
        elif kernel == "dq":  # Q, dO, K, V tiles, dS tile, lse and delta of the rows
            words = 2 * bm * (d + 1) + 2 * bn * (d + 1) + bm * (bn + 1) + 2 * bm
        elif kernel == "dkdv":  # K, V, Q, dO tiles, P^T and dS^T tiles, lse and delta
            words = 2 * bn * (d + 1) + 2 * bm * (d + 1) + 2 * bn * (bm + 1) + 2 * bm
        else:
            raise ValueError(f"kernel: expected 'forward', 'dq' or 'dkdv', got {kernel!r}")
        return words * _FLOAT32_BYTES

    def problems(self, head_dim: int, pass_: str = "forward", shared_limit: int = STATIC_SHARED_LIMIT) -> list[str]:
        """What stops this config from running ``pass_`` at ``head_dim`` (empty when it can)."""
        out = []
        tpr = self.threads_per_row(self.block_m)
        if head_dim % tpr:
            out.append(f"its {tpr} threads per query row split head_dim={head_dim} evenly only if it is a multiple of {tpr}")
        kernels = ("forward",) if pass_ == "forward" else ("dq", "dkdv")
        if pass_ == "backward":
            try:
                self._check_rows("block_n", self.block_n, "block_m", self.block_m)
            except ValueError as e:
                out.append(f"for the backward pass, {e}")
            else:
                tpr_n = self.threads_per_row(self.block_n)
                if head_dim % tpr_n:
                    out.append(f"its {tpr_n} threads per key row split head_dim={head_dim} evenly only if it is a multiple of {tpr_n}")
        for kernel in kernels:
            need = self.shared_memory_bytes(head_dim, kernel)
            if need > shared_limit:
                out.append(
                    f"it needs {need} bytes of shared memory for the {kernel} kernel at head_dim={head_dim}, "
                    f"but a block may use {shared_limit}: reduce block_m or block_n"
                )
        return out

    def validate(self, head_dim: int, pass_: str = "forward", shared_limit: int = STATIC_SHARED_LIMIT) -> "BlockConfig":
        """Raise ValueError, saying what to change, unless this config can run ``pass_`` at ``head_dim``."""
        check_head_dim(head_dim)
        if pass_ not in PASSES:
            raise ValueError(f"pass_: expected one of {PASSES}, got {pass_!r}")
        found = self.problems(head_dim, pass_, shared_limit)
        if found:
            hint = _first_fitting(head_dim, pass_, _GPU_CANDIDATES, shared_limit)
            raise ValueError(
                f"config={self} cannot run the {pass_} pass: " + "; ".join(found)
                + (f" (for example {hint} fits)" if hint else "")
            )
        return self


def _first_fitting(head_dim, pass_, candidates, shared_limit=STATIC_SHARED_LIMIT):
    for cfg in candidates:
        if not cfg.problems(head_dim, pass_, shared_limit):
            return cfg
    return None


def check_head_dim(head_dim: int) -> None:
    if head_dim not in HEAD_DIMS:
        raise ValueError(
            f"head_dim: expected a multiple of 8 from {HEAD_DIMS[0]} to {HEAD_DIMS[-1]}, got {head_dim}"
        )


# Tried in order; the first that fits the pass is the default. Larger BLOCK_M re-reads K and V
# fewer times; BLOCK_N of 8-16 keeps each thread's scores in registers. On the H100 the forward
# sweep (experiments/results/block_size_sweep) measured (64, 8|16, 256) at 4.1-4.2 TFLOP/s and
# (64, 32, 256) at 2.2 (D=64, fp16, N=2048): BLOCK_N = 32 with 4 threads per row is 2x slower.
_GPU_CANDIDATES = (
    BlockConfig(64, 16, 256),
    BlockConfig(32, 16, 128),
    BlockConfig(16, 16, 64),
    BlockConfig(16, 8, 64),
    BlockConfig(8, 8, 32),
)
# The simulator runs one Python thread per CUDA thread and tests use sequences of a few dozen
# tokens, so small tiles waste less work on masked padding.
_SIMULATOR_CANDIDATES = (BlockConfig(8, 8, 16), BlockConfig(8, 8, 32))


@functools.lru_cache(maxsize=None)
def default_config(head_dim: int, dtype=np.float32, pass_: str = "forward", simulator: bool | None = None) -> BlockConfig:
    """The config used when ``config=None``: the largest candidate whose tiles fit in shared memory.

    ``dtype`` is part of the key because the tiles are fp32 for every input dtype today; faster
    kernels that keep fp16 tiles will choose differently.
    """
    check_head_dim(head_dim)
    if simulator is None:
        from .backend import BACKEND, SIMULATOR

        simulator = BACKEND == SIMULATOR
    cfg = _first_fitting(head_dim, pass_, _SIMULATOR_CANDIDATES if simulator else _GPU_CANDIDATES)
    if cfg is not None:
        return cfg
    raise ValueError(f"no block configuration fits head_dim={head_dim} for the {pass_} pass")  # pragma: no cover


# ---- the tensor-core kernels (numba_flash.tc_forward) ------------------------------------------

MAX_DYNAMIC_SHARED = 227 * 1024  # per block on sm_90, after raising the kernel's limit above 48 KB
SM_SHARED = 228 * 1024  # per SM on sm_90, of which the runtime reserves 1 KB per resident block
SM_REGISTERS = 65536  # 32-bit registers per SM on sm_90
TC_MAX_HEAD_DIM = 128


TC_ELEMS = ("f16", "bf16", "tf32")


def tc_elem(dtype) -> str:
    """What the tensor-core kernels read from arrays of ``dtype``: ``"bf16"`` for uint16 (bfloat16 bit
    patterns), ``"tf32"`` for float32 (multiplied as 3xTF32), else ``"f16"``."""
    return {np.dtype(np.uint16): "bf16", np.dtype(np.float32): "tf32"}.get(np.dtype(dtype), "f16")


def tc_row_halves(head_dim: int) -> int:
    """16-bit words per shared-memory row: head_dim rounded up to 16 (whole mma k-steps), + 8 words
    (16 bytes) of padding so that the 8 rows one ldmatrix reads fall in different banks."""
    return -(-head_dim // 16) * 16 + 8


def tc_ds_row_bytes(queries: int, elem: str = "f16") -> int:
    """Bytes per shared row of the atomic-dQ backward's dS^T tile (a key's ``queries`` values): 16-bit,
    + 16 bytes, so that the 8 rows an ldmatrix reads and the 8 rows a warp's stores hit fall in
    different banks. float32 (``"tf32"``): + 4 words, so that ``queries + 4`` words is 4 more than a
    multiple of 16 and the 32 scalar reads of a dS A fragment (key rows 2t, 2t + 1, query columns g,
    g + 8) fall in 32 different banks."""
    return 4 * queries + 16 if elem == "tf32" else 2 * queries + 16


# float32 (3xTF32) dK/dV at head_dim <= TF32_SUMS_MAX_D: two-level sums. A lane's dK and dV sums in
# registers take TF32_SUMS_KSTEPS k-steps (8 queries each), then go into its own float32 slots in shared
# memory and restart from zero. One float32 sum over a 4096-query column rounds ~512 times at the size
# of the whole sum; this way ~16 times, and the register sums stay small (their rounding is relative to
# them). Modelled in NumPy, dV's error vs float64 went from 1.2e-6 to 2.2e-7 (causal, N = 4096): the
# single sum was why the causal dK and dV errors were 1.1-2.4x SDPA-efficient's. Above head_dim 64 the
# slots would cost an SM one of its two blocks: the second level there is dK and dV in global memory.
TF32_SUMS_MAX_D = 64
TF32_SUMS_KSTEPS = 32

# float32 (3xTF32) scores S = Q K^T (and the backward's S, dP): k-steps of the head_dim contraction chained
# in the tensor cores' accumulator before one float32 add into the scores. The tensor cores truncate
# what they add into an accumulator, so each chained k-step adds a truncation relative to the partial
# sum; float32 adds round to nearest. 1 = every k-step's product from zero, then a float32 add (4 adds
# per 3 mma). Chaining all of head_dim 128's 16 k-steps ran the forward 20 % faster but put its output
# error at 2.2-2.7x SDPA-efficient's (session 7, fp32_tensor_cores-2026-11-24/call3_defaults).
# TF32_PV_CHAIN: the same for the products over a streamed tile's rows (8 per k-step; a 16-row tile has 2):
# the forward's O += P V, the backward's dV += P^T dO, dK += dS^T Q and dQ += dS K. Read when a kernel is
# built; the environment variables NUMBA_FLASH_TF32_CHAIN and NUMBA_FLASH_TF32_PV_CHAIN set them for a whole
# process (test workers included), for experiments.
# Defaults 2 and 2, measured on the H100 (session 19, experiments/results/session19-2026-12-07): against
# 1 and 1, the head_dim-128 forward 1.06-1.08x SDPA-efficient instead of 0.77, forward+backward at
# head_dim 64 1.09-1.10x instead of 0.98, every error (out, dQ, dK, dV) at most 0.85x SDPA-efficient's.
# 4 and 2 was faster still (forward 1.09-1.12x) but one error reached 0.96x; 8 put errors above SDPA's.
TF32_CHAIN = int(os.environ.get("NUMBA_FLASH_TF32_CHAIN", "") or 2)
TF32_PV_CHAIN = int(os.environ.get("NUMBA_FLASH_TF32_PV_CHAIN", "") or 2)


def tf32_sums_bytes(head_dim: int, num_threads: int, elem: str) -> int:
    """Shared bytes of the float32 dK/dV kernel's second-level sums: each thread's dK and dV values
    (head_dim / 2 each, float32); 0 where there are none (16-bit data, head_dim above 64)."""
    return 4 * head_dim * num_threads if elem == "tf32" and head_dim <= TF32_SUMS_MAX_D else 0


def tc_row_bytes(head_dim: int, elem: str = "f16") -> int:
    """Bytes per shared-memory row of a tile of ``elem`` values. 16-bit: :func:`tc_row_halves`.
    float32 (``"tf32"``, read as TF32): head_dim (a multiple of 8: whole m16n8k8 k-steps) + 4 words,
    which puts the 8 rows of an ldmatrix in different banks and, since 2 (head_dim + 4) is an odd
    multiple of 8 words, the 32 scalar reads of a P V fragment (rows 2t, 2t + 1, columns g) too."""
    if elem == "tf32":
        return 4 * (head_dim + 4)
    return 2 * tc_row_halves(head_dim)


@dataclasses.dataclass(frozen=True)
class TensorCoreConfig:
    """Tiles of the tensor-core kernels (GPU only; 16-bit, and float32 as 3xTF32), :mod:`numba_flash.tc_forward` and
    :mod:`numba_flash.tc_backward`.

    In every kernel a block owns ``block_m`` rows of the output it writes, ``rows_per_warp`` (16
    or 32) of them per warp, so ``block_m / rows_per_warp`` warps, and streams tiles of
    ``block_n`` rows of the other side through shared memory, ``stages`` buffers deep (2: the next
    tile's copy overlaps this tile's math). Forward and dQ: ``block_m`` queries, ``block_n`` keys
    per tile; dK/dV: ``block_m`` keys, ``block_n`` queries per tile. With 32 rows per warp (forward
    only) every fragment read from shared memory feeds two mma instead of one (half the
    shared-memory traffic per flop) at the price of twice the accumulator registers.

    ``atomic_dq`` (backward): the dK/dV kernel also adds each tile's dS K into a float32 dQ with
    atomic adds, as FlashAttention-2 does, instead of a separate dQ kernel that recomputes S and dP:
    5 matrix products instead of 7, but dQ's sums then run in whatever order the blocks reach them,
    so repeated calls may differ in dQ's last bits (dK and dV stay deterministic). 16-bit data: into
    a float32 scratch dQ, rounded into dq by a last kernel; float32 (3xTF32, where each product costs
    three mma and the float32 adds) straight into dq. The forward ignores it.

    ``reread_q`` (forward and dQ kernels, 16-bit data): read the owned queries' fragments (Q, and dO
    in dQ) from shared memory again for every key tile, as FlashAttention-2 does, instead of holding
    them in registers for the whole loop. That frees 4 registers per k-step and m-tile (32 per 16
    rows at head_dim 128, 64 in dQ) for larger tiles, for one more ``ldmatrix`` per k-step and tile.
    float32 (3xTF32) always re-reads (its fragments are split per tile anyway).

    ``split_d`` (dK/dV kernel, 16-bit data): FlashAttention-2's layout. Two warps share 32 keys; in
    each query tile they first compute the scores for half of its queries each (a 32 x block_n / 2
    tile of S^T and dP^T), put P^T and dS^T in shared memory, and then each accumulates half of
    head_dim of the 32 keys' dK and dV. Larger warp tiles than 16 keys x head_dim: about 30 % fewer
    shared-memory reads per mma at head_dim 128, for two more barriers per tile and the P^T, dS^T
    tiles in shared memory. block_m and block_n must be multiples of 32 and head_dim of 32. The dQ
    and forward kernels ignore it.

    ``min_blocks`` (forward and dQ kernels): compile for this many resident blocks per SM (a launch
    bound: the compiler caps registers at 65536 / (min_blocks x num_threads), spilling if it must).
    1 leaves the compiler free (it takes up to 255, which with 4 warps allows 2 blocks). The dK/dV
    kernel ignores it: its dK and dV accumulators need the registers (capped at 168 it spills 288
    bytes).

    ``longest_first`` (every kernel): the order in which blocks start. The GPU hands out blocks in
    the order of their linear index (x fastest). By default block x of head y, batch entry z owns
    row block x, so under a causal band each head's longest blocks start first, but head after head:
    the last wave holds the last heads' long blocks beside everyone's short ones, and SMs sit idle
    at the end. With ``longest_first`` the row block is the slowest part of the linear index
    (reversed where the longest blocks come last): all heads' longest blocks start first, then the
    next longest, a longest-processing-time-first schedule. A model of greedy block scheduling
    (32 row blocks x 64 heads on 264 block slots, work per block proportional to its key tiles)
    puts the default's finish 15 % above the ideal and this order's 1 % (see
    ``experiments/block_order.py``). Fewer blocks of one head run at once, though, so fewer share
    its K/V tiles in L2. Same sums in every block: the outputs are bit for bit the same."""

    block_m: int = 64
    block_n: int = 64
    stages: int = 2
    rows_per_warp: int = 16
    atomic_dq: bool = False
    reread_q: bool = False
    min_blocks: int = 1
    split_d: bool = False
    longest_first: bool = False

    def __post_init__(self):
        for name in ("atomic_dq", "reread_q", "split_d", "longest_first"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"TensorCoreConfig.{name}: expected a bool, got {value!r}")
            object.__setattr__(self, name, bool(value))
        for name in ("block_m", "block_n", "stages", "rows_per_warp", "min_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"TensorCoreConfig.{name}: expected a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.block_m % 16 or not 16 <= self.block_m <= 256:
            raise ValueError(f"TensorCoreConfig.block_m={self.block_m}: expected a multiple of 16 (one warp per 16 "
                             "query rows) from 16 to 256")
        if self.block_n % 16 or not 16 <= self.block_n <= 256:
            raise ValueError(f"TensorCoreConfig.block_n={self.block_n}: expected a multiple of 16 from 16 to 256")
        if self.stages not in (1, 2):
            raise ValueError(f"TensorCoreConfig.stages={self.stages}: expected 1 or 2")
        if self.rows_per_warp not in (16, 32) or self.block_m % self.rows_per_warp:
            raise ValueError(f"TensorCoreConfig.rows_per_warp={self.rows_per_warp}: expected 16 or 32, dividing "
                             f"block_m={self.block_m}")
        if self.min_blocks > 4:
            raise ValueError(f"TensorCoreConfig.min_blocks={self.min_blocks}: expected 1 to 4 (4 blocks of 4 warps "
                             "leave 128 registers per thread)")

    @property
    def warps(self) -> int:
        return self.block_m // self.rows_per_warp

    @property
    def num_threads(self) -> int:
        return 32 * self.warps

    def launch_bounds(self, kernel: str = "forward"):
        """``cuda.jit``'s ``launch_bounds`` for ``kernel`` ("forward", "dq" or "dkdv"): ``(num_threads,
        min_blocks)`` where ``min_blocks`` asks for more than one block per SM, else None."""
        return (self.num_threads, self.min_blocks) if self.min_blocks > 1 and kernel != "dkdv" else None

    def max_registers(self) -> int:
        """Registers per thread the launch bound leaves (255 without one)."""
        return min(255, SM_REGISTERS // (self.min_blocks * self.num_threads) // 8 * 8)

    def shared_memory_bytes(self, head_dim: int, elem: str = "f16") -> int:
        """Dynamic shared memory of the forward kernel: Q and ``stages`` K and V tiles of ``elem``."""
        return tc_row_bytes(head_dim, elem) * (self.block_m + 2 * self.stages * self.block_n)

    def backward_shared_bytes(self, head_dim: int, kernel: str, elem: str = "f16") -> int:
        """Dynamic shared memory of the backward kernel ``kernel`` ("dq" or "dkdv") on ``elem`` data."""
        row = tc_row_bytes(head_dim, elem)
        if kernel == "dq":  # Q, dO | K, V stages
            return row * (2 * self.block_m + 2 * self.stages * self.block_n)
        # lse, delta (float32) and Q, dO of each stage | K, V | with atomic_dq: a dS^T tile of elem (16-bit,
        # or float32); with split_d: 16-bit P^T and dS^T tiles; float32 at head_dim <= 64: the second-level
        # dK, dV sums
        tiles = 2 if self.split_d else 1 if self.atomic_dq else 0
        return (self.stages * 8 * self.block_n + row * (2 * self.block_m + 2 * self.stages * self.block_n)
                + tiles * self.block_m * tc_ds_row_bytes(self.block_n, elem)
                + tf32_sums_bytes(head_dim, self.num_threads, elem))

    def problems(self, head_dim: int, pass_: str = "forward", elem: str = "f16") -> list[str]:
        """What stops this config from running the tensor-core ``pass_`` at ``head_dim`` on ``elem``
        data (empty when it can)."""
        out = []
        if head_dim > TC_MAX_HEAD_DIM:
            out.append(f"the tensor-core kernels keep a 16 x head_dim accumulator per warp in registers, so "
                       f"head_dim must be at most {TC_MAX_HEAD_DIM}, got {head_dim}")
        if pass_ == "backward" and self.rows_per_warp != 16:
            out.append(f"the tensor-core backward takes rows_per_warp=16, got {self.rows_per_warp}")
        if pass_ == "backward" and self.split_d:
            if elem == "tf32":
                out.append("split_d: the float32 (3xTF32) backward has no split_d layout; pass split_d=False")
            if self.atomic_dq:
                out.append("split_d: the split_d dK/dV kernel has no atomic dQ; pass atomic_dq=False")
            if self.block_m % 32 or self.block_n % 32 or head_dim % 32:
                out.append(f"split_d: two warps share 32 keys and split head_dim and the query tile in halves of "
                           f"whole 16-row k-steps, so block_m, block_n and head_dim must be multiples of 32, got "
                           f"block_m={self.block_m}, block_n={self.block_n}, head_dim={head_dim}")
        need = (self.shared_memory_bytes(head_dim, elem) if pass_ == "forward"
                else max(self.backward_shared_bytes(head_dim, k, elem) for k in ("dq", "dkdv")))
        if need > MAX_DYNAMIC_SHARED:
            out.append(f"it needs {need} bytes of shared memory at head_dim={head_dim}, but a block may use "
                       f"{MAX_DYNAMIC_SHARED}: reduce block_m, block_n or stages")
        if self.min_blocks > 1:
            own = need if pass_ == "forward" else self.backward_shared_bytes(head_dim, "dq", elem)  # the bound kernel's
            if self.min_blocks * (own + 1024) > SM_SHARED:
                out.append(f"min_blocks={self.min_blocks}: {self.min_blocks} blocks of {own} bytes of shared memory "
                           f"(+1 KB each) do not fit in an SM's {SM_SHARED}")
        return out

    @classmethod
    def parse(cls, text: str) -> "TensorCoreConfig":
        """A config from ``"BM,BN,STAGES,ROWS_PER_WARP"`` followed by the flags that are on, by name
        (``"64,64,2,16,reread"``) or as 0/1 in field order (``"64,32,2,16,1"``: atomic_dq), and
        ``bK`` for ``min_blocks=K`` (``"64,32,2,16,reread,b3"``), as the experiment scripts take them
        on the command line; :meth:`label` writes it back."""
        items = [x.strip() for x in str(text).split(",") if x.strip()]
        flags = {"atomic": "atomic_dq", "atomic_dq": "atomic_dq", "reread": "reread_q", "reread_q": "reread_q",
                 "split": "split_d", "split_d": "split_d", "longest": "longest_first",
                 "longest_first": "longest_first"}
        try:
            if len(items) < 4:
                raise ValueError("four integers first")
            fields = [int(x) for x in items[:4]]
            named = {}
            for i, x in enumerate(items[4:]):
                if x in ("0", "1"):
                    if i > 1:
                        raise ValueError(f"at most two 0/1 flags (atomic_dq, reread_q), got {len(items) - 4}")
                    named[("atomic_dq", "reread_q")[i]] = x == "1"
                elif x.lower() in flags:
                    named[flags[x.lower()]] = True
                elif re.fullmatch(r"b\d+", x.lower()):
                    named["min_blocks"] = int(x[1:])
                else:
                    raise ValueError(f"unknown flag {x!r} (expected 'atomic', 'reread', 'split', 'longest', 'bK' "
                                     "or 0/1)")
            return cls(*fields, **named)
        except ValueError as e:
            raise ValueError(f"TensorCoreConfig {text!r}: expected BM,BN,STAGES,ROWS_PER_WARP[,atomic][,reread][,split]"
                             f"[,longest][,bK]: "
                             f"{e}") from None

    def label(self) -> str:
        """``"BM,BN,STAGES,ROWS_PER_WARP"`` plus the flags that are on (:meth:`parse` reads it)."""
        return ",".join([str(self.block_m), str(self.block_n), str(self.stages), str(self.rows_per_warp)]
                        + (["atomic"] if self.atomic_dq else []) + (["reread"] if self.reread_q else [])
                        + ([f"b{self.min_blocks}"] if self.min_blocks > 1 else []) + (["split"] if self.split_d else [])
                        + (["longest"] if self.longest_first else []))

    def validate(self, head_dim: int, pass_: str = "forward", elem: str = "f16") -> "TensorCoreConfig":
        check_head_dim(head_dim)
        found = self.problems(head_dim, pass_, elem)
        if found:
            raise ValueError(f"config={self} cannot run the {pass_} pass: " + "; ".join(found))
        return self


def default_tc_config(head_dim: int, dropout: bool = False, pass_: str = "forward", elem: str = "f16",
                      unmasked: bool = False, causal: bool = False) -> TensorCoreConfig:
    """The tensor-core config used when ``config=None`` on the GPU: the fastest one measured
    (experiments/results/tc_sweep, reread-2026-11-24, session11-2026-11-25; N = 4096, float16). At D = 64
    (128, 64, 2, 32): 310 TFLOP/s (causal 290) against 272 (249) for (128, 32, 2, 32) on an H200, once
    the exponent's scale went into an FFMA and the masks and tile copies got cheaper; before those,
    on the H100, (128, 32, 2, 32) ran 288 against 257 with Q re-read and 254 for (64, 64, 2, 16). Above
    64, (128, 32, 2, 32) with Q re-read per key tile (``reread_q``) ran 331 (causal 282) against 250
    (234) for the spill-free (64, 32, 2, 16) it replaced and 281 (255) for (64, 64, 2, 16): 32 rows
    per warp halve the shared-memory reads per mma, and only re-reading Q leaves them the registers
    (it spills 20 bytes; with Q held, 304). ``unmasked`` (every query sees every key: no causal or
    window band, no varlen) takes one block of 8 warps per SM there, (256, 64, 2, 32, reread): 341
    against 321 TFLOP/s fp16 (0.99x against 0.93x of SDPA flash), 338 against 328 bf16, on the H100
    in session 12 (experiments/results/session12-2026-11-25): K and V tiles twice as long, shared by
    twice the warps. Under a causal band it ran slower (269 against 280): larger diagonal tiles and
    coarser blocks, so masked problems keep (128, 32, 2, 32). Dropout's Philox rounds need registers:
    16 rows per warp, smaller tiles.
    Backward (both kernels): 64 owned rows; streamed tiles of 64 at head_dim <= 64, else 32 (the dK
    and dV accumulators take 128 registers at head_dim 128), halved with dropout. At head_dim <= 64
    without dropout the dQ kernel re-reads Q and dO and is compiled for 3 blocks per SM
    (``min_blocks=3``, 168 registers, 8-12 bytes of spill): backward 197 against 191 TFLOP/s (causal
    185 against 178; faster in every comparison, though by less than the run-to-run spread of one
    process; experiments/results/blocks-2026-11-24). At head_dim 128 the same was slower (198
    against 208). float32 (3xTF32) forward above head_dim 64: (64, 16, 2, 16) for 3 blocks per SM, 43
    against 40 TFLOP/s for (64, 32, 2, 16) (whose shared memory allows 2).
    ``causal``: the forward without dropout starts its blocks longest first across heads (``longest_first``)
    at head_dim > 64 and in float32, where that measured faster under the causal band (session 20, H200,
    experiments/results/session20-2026-12-07: 16-bit head_dim 128 0.914x -> 0.983-0.989x of SDPA flash,
    float32 1.03x at 128 and 1.07x at 64 over the default order); 16-bit at head_dim 64 measured 3-4 %
    slower (fewer blocks of one head at a time share its K and V in L2), and so did every unmasked pass
    (1-13 %). The backward keeps the default order (not measured under the causal band)."""
    if pass_ == "forward" and causal and not dropout and (head_dim > 64 or elem == "tf32"):
        return dataclasses.replace(default_tc_config(head_dim, dropout, pass_, elem, unmasked), longest_first=True)
    if pass_ == "backward":
        if elem == "tf32":  # float32 tiles hold twice the bytes, 3xTF32 needs split fragments: half the streamed rows
            return TensorCoreConfig(64, 32 if head_dim <= 64 and not dropout else 16, 2, 16)
        if head_dim <= 64 and not dropout:
            return TensorCoreConfig(64, 64, 2, 16, reread_q=True, min_blocks=3)
        if not dropout and head_dim == 128:  # split_d measured at 128 only (session 13/14); 96 keeps the 16-key layout
            return TensorCoreConfig(128, 64, 2, 16, split_d=True)
        return TensorCoreConfig(64, (64 if head_dim <= 64 else 32) // (2 if dropout else 1), 2, 16)
    if elem == "tf32":  # float32 (3xTF32) forward: experiments/results/fp32_tensor_cores, H100, N = 4096, D = 64:
        # (128, 16, 2, 32) 57 TFLOP/s, (128, 32, 2, 32) 61 but spills, (64, 32, 2, 16) 47, (64, 64, 2, 16) 44
        if dropout:
            return TensorCoreConfig(64, 32 if head_dim <= 64 else 16, 2, 16)
        return TensorCoreConfig(128, 16, 2, 32) if head_dim <= 64 else TensorCoreConfig(64, 16, 2, 16, min_blocks=3)
    if dropout:
        return TensorCoreConfig(64, 32, 2, 16) if head_dim <= 64 else TensorCoreConfig(64, 16, 2, 16)
    if head_dim <= 64:
        return TensorCoreConfig(128, 64, 2, 32)
    if unmasked:
        return TensorCoreConfig(256, 64, 2, 32, reread_q=True)
    return TensorCoreConfig(128, 32, 2, 32, reread_q=True)
