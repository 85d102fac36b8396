"""Dropout's random numbers: Philox4x32-10 (Random123), in NumPy and as a Numba device function.

FlashAttention never stores the dropout mask: the forward and the backward kernels each recompute
it from a seed, so both must draw exactly the same bits for the same element, wherever that
element falls in their tiling. A counter-based generator gives that: the random word for an
element is a pure function of (seed, element coordinates), with no state carried between threads.

Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) maps a
128-bit counter (c0, c1, c2, c3) and a 64-bit key (k0, k1), all uint32 words, to four uint32
words by ten rounds of::

    hi0, lo0 = mulhilo32(0xD2511F53, c0);  hi1, lo1 = mulhilo32(0xCD9E8D57, c2)
    (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)

with the key bumped, ``k0 += 0x9E3779B9; k1 += 0xBB67AE85`` (mod 2**32), between rounds.

The dropout specification (the kernels and the oracle both follow it):

* ``seed`` is a Python int in ``[0, 2**64)``; the key is ``(seed & 0xFFFFFFFF, seed >> 32)``.
* ``keep_threshold(p) = int((1.0 - p) * 2**32)``, for ``0 <= p < 1``. It is ``2**32`` (keep all)
  for ``p = 0``, and 0 (drop all) only for ``p > 1 - 2**-32``, where ``1 - p`` rounds below 2**-32.
* Element (b, h, i, j), with b the batch index, h the *query* head, i the query position and j the
  key position, is kept iff ``word[j % 4] < keep_threshold(p)``, where
  ``word = Philox4x32-10(counter=(j // 4, i, h, b), key)``, each counter word taken mod 2**32.
  So four consecutive keys share one Philox call, which a kernel can exploit.

The device functions compute in uint64 holding 32-bit values, because Numba has no 32x32->64
multiply-high for uint32 that also runs on the simulator, and a product of two values below 2**32
fits in uint64 exactly. ptxas turns these products into IMAD.WIDE.U32: on an H100 the mask kernel
ran within 5% of a libdevice.umulhi version (which the simulator cannot run). Every operand is
kept uint64 on purpose: Numba types uint64 combined with a signed int64 (a plain integer literal,
say) as float64, which would silently lose bits.
"""

from __future__ import annotations

import math
import numbers
import secrets

import numba
import numpy as np
from numba import cuda

from . import backend

__all__ = [
    "dropout_keep",
    "dropout_kernel_args",
    "dropout_mask",
    "keep_threshold",
    "new_seed",
    "philox4x32_10",
    "philox_round10",
    "reference_keep_mask",
    "seed_key",
    "validate_dropout_p",
    "validate_seed",
]

M0, M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # key bumps (golden ratio, sqrt(3) - 1)
ROUNDS = 10

# uint64 constants for the device code (see the module docstring on why never a plain literal).
_MASK = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)
_M0, _M1 = np.uint64(M0), np.uint64(M1)
_W0, _W1 = np.uint64(W0), np.uint64(W1)
_LOW2 = np.uint64(3)
_U0, _U1, _U2 = np.uint64(0), np.uint64(1), np.uint64(2)

# Inline into the kernels at the NVVM level (the simulator's jit takes no such option).
_INLINE = {} if backend.BACKEND == backend.SIMULATOR else {"forceinline": True}

_THREADS = 128  # threads per block of the mask kernel


# ---------------------------------------------------------------- argument checks, host helpers


def validate_seed(seed) -> int:
    """Return ``seed`` as a Python int; TypeError unless an integer (not a bool), ValueError unless in [0, 2**64)."""
    # bool is an int subclass, but True as a seed is far more likely a mistake than a choice.
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed: expected an int in [0, 2**64), got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed: expected an int in [0, 2**64), got {seed}")
    return seed


def validate_dropout_p(dropout_p) -> float:
    """Return ``dropout_p`` as a float; TypeError unless a real number (not a bool), ValueError unless in [0, 1)."""
    if isinstance(dropout_p, (bool, np.bool_)) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p: expected a real number in [0, 1), got {type(dropout_p).__name__}")
    p = float(dropout_p)
    if not 0.0 <= p < 1.0:  # also rejects NaN
        raise ValueError(f"dropout_p: expected a number in [0, 1), got {dropout_p!r}")
    return p


def _validate_size(name: str, n) -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name}: expected a positive int, got {n}")
    return int(n)


def new_seed() -> int:
    """A fresh random seed in [0, 2**64) from the OS's entropy source."""
    return secrets.randbits(64)


def seed_key(seed) -> tuple[int, int]:
    """The Philox key ``(k0, k1) = (low 32 bits, high 32 bits)`` of ``seed``."""
    seed = validate_seed(seed)
    return seed & 0xFFFFFFFF, seed >> 32


def keep_threshold(dropout_p) -> int:
    """``int((1 - p) * 2**32)``: a random uint32 word below it keeps its element."""
    return int((1.0 - validate_dropout_p(dropout_p)) * 2**32)


def dropout_kernel_args(seed, dropout_p) -> tuple[np.uint64, np.uint64, np.uint64]:
    """``(seed_lo, seed_hi, threshold)`` as np.uint64, ready to pass to a kernel calling :func:`dropout_keep`."""
    k0, k1 = seed_key(seed)
    return np.uint64(k0), np.uint64(k1), np.uint64(keep_threshold(dropout_p))


# ---------------------------------------------------------------- NumPy


def _uint32_words(name: str, x, width: int) -> np.ndarray:
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name}: expected an integer array, got dtype {a.dtype}")
    if a.ndim == 0 or a.shape[-1] != width:
        raise ValueError(f"{name}: expected a last dimension of {width} words, got shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() > 0xFFFFFFFF):
        raise ValueError(f"{name}: words must lie in [0, 2**32)")
    return a.astype(np.uint64)


def philox4x32_10(counter, key) -> np.ndarray:
    """Philox4x32-10 of ``counter`` (..., 4) under ``key`` (..., 2, broadcastable); uint32 (..., 4).

    Vectorised over the leading dimensions; the 32x32->64 products are done in uint64.
    """
    c = _uint32_words("counter", counter, 4)
    k = _uint32_words("key", key, 2)
    shape = np.broadcast_shapes(c.shape[:-1], k.shape[:-1])
    c0, c1, c2, c3 = (np.broadcast_to(c[..., n], shape) for n in range(4))
    k0, k1 = (np.broadcast_to(k[..., n], shape) for n in range(2))
    mask, shift = np.uint64(0xFFFFFFFF), np.uint64(32)
    m0, m1 = np.uint64(M0), np.uint64(M1)
    for r in range(ROUNDS):
        if r:
            k0 = (k0 + np.uint64(W0)) & mask
            k1 = (k1 + np.uint64(W1)) & mask
        p0 = m0 * c0
        p1 = m1 * c2
        c0, c1, c2, c3 = (p1 >> shift) ^ c1 ^ k0, p1 & mask, (p0 >> shift) ^ c3 ^ k1, p0 & mask
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def reference_keep_mask(seed, dropout_p, batch, heads, seqlen_q, seqlen_k) -> np.ndarray:
    """The dropout keep mask of the specification, in NumPy: bool (batch, heads, seqlen_q, seqlen_k)."""
    seed = validate_seed(seed)
    threshold = keep_threshold(dropout_p)
    B, H, n_q, n_k = (_validate_size(name, n) for name, n in
                      (("batch", batch), ("heads", heads), ("seqlen_q", seqlen_q), ("seqlen_k", seqlen_k)))
    groups = -(-n_k // 4)  # one Philox call covers keys 4g .. 4g+3
    counter = np.empty((B, H, n_q, groups, 4), dtype=np.uint64)
    counter[..., 0] = (np.arange(groups, dtype=np.uint64) & 0xFFFFFFFF)[None, None, None, :]
    counter[..., 1] = (np.arange(n_q, dtype=np.uint64) & 0xFFFFFFFF)[None, None, :, None]
    counter[..., 2] = (np.arange(H, dtype=np.uint64) & 0xFFFFFFFF)[None, :, None, None]
    counter[..., 3] = (np.arange(B, dtype=np.uint64) & 0xFFFFFFFF)[:, None, None, None]
    key = np.array(seed_key(seed), dtype=np.uint64)
    # Word j % 4 of call j // 4 sits at flat index j of the last two axes.
    words = philox4x32_10(counter, key).reshape(B, H, n_q, groups * 4)[..., :n_k]
    return words < threshold


# ---------------------------------------------------------------- device functions


@cuda.jit(device=True, **_INLINE)
def _round(c0, c1, c2, c3, k0, k1):
    """One Philox round; operands are uint64 holding 32-bit values."""
    p0 = _M0 * c0
    p1 = _M1 * c2
    return (p1 >> _SHIFT) ^ c1 ^ k0, p1 & _MASK, (p0 >> _SHIFT) ^ c3 ^ k1, p0 & _MASK


@cuda.jit(device=True, **_INLINE)
def philox_round10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of counter (c0..c3) under key (k0, k1): a 4-tuple of uint64 holding uint32 words.

    Arguments may be any integer type holding values in [0, 2**32).
    """
    x0, x1, x2, x3 = numba.uint64(c0), numba.uint64(c1), numba.uint64(c2), numba.uint64(c3)
    key0, key1 = numba.uint64(k0), numba.uint64(k1)
    x0, x1, x2, x3 = _round(x0, x1, x2, x3, key0, key1)
    for _ in range(ROUNDS - 1):
        key0 = (key0 + _W0) & _MASK
        key1 = (key1 + _W1) & _MASK
        x0, x1, x2, x3 = _round(x0, x1, x2, x3, key0, key1)
    return x0, x1, x2, x3


@cuda.jit(device=True, **_INLINE)
def dropout_keep(seed_lo, seed_hi, b, h, i, j, threshold):
    """True if element (b, h, i, j) survives dropout (see the module docstring).

    ``seed_lo``, ``seed_hi`` and ``threshold`` come from :func:`dropout_kernel_args` (np.uint64);
    b, h, i, j are non-negative ints of any width.
    """
    jj = numba.uint64(j)
    x0, x1, x2, x3 = philox_round10(
        (jj >> _U2) & _MASK, numba.uint64(i) & _MASK, numba.uint64(h) & _MASK, numba.uint64(b) & _MASK,
        seed_lo, seed_hi,
    )
    lane = jj & _LOW2
    if lane == _U0:
        word = x0
    elif lane == _U1:
        word = x1
    elif lane == _U2:
        word = x2
    else:
        word = x3
    return word < numba.uint64(threshold)


@cuda.jit
def _mask_kernel(out, seed_lo, seed_hi, threshold):
    """out[b, h, i, j] = dropout_keep(...); grid (cdiv(Nq * Nk, _THREADS), H, B)."""
    h = cuda.blockIdx.y
    b = cuda.blockIdx.z
    n_k = out.shape[3]
    e = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if e < out.shape[2] * n_k:
        i = e // n_k
        j = e - i * n_k
        out[b, h, i, j] = dropout_keep(seed_lo, seed_hi, b, h, i, j, threshold)


def dropout_mask(seed, dropout_p, batch, heads, seqlen_q, seqlen_k):
    """The keep mask the kernels use, computed by :func:`dropout_keep` on the current backend.

    Returns a bool array (batch, heads, seqlen_q, seqlen_k): CuPy on the GPU, NumPy on the
    simulator. Equal to :func:`reference_keep_mask` (which the tests check).
    """
    seed_lo, seed_hi, threshold = dropout_kernel_args(seed, dropout_p)
    B, H, n_q, n_k = (_validate_size(name, n) for name, n in
                      (("batch", batch), ("heads", heads), ("seqlen_q", seqlen_q), ("seqlen_k", seqlen_k)))
    if H > 65535 or B > 65535:
        raise ValueError(f"batch, heads: at most 65535 each (CUDA grid limit), got {B}, {H}")
    out = backend.array_module().zeros((B, H, n_q, n_k), dtype=np.bool_)
    grid = (math.ceil(n_q * n_k / _THREADS), H, B)
    if backend.BACKEND == backend.GPU:
        cupy = backend.array_module()
        # CuPy's current stream, so the mask is ordered with the caller's CuPy/torch work.
        stream = cuda.external_stream(cupy.cuda.get_current_stream().ptr)
        _mask_kernel[grid, _THREADS, stream](out, seed_lo, seed_hi, threshold)
    else:
        _mask_kernel[grid, _THREADS](out, seed_lo, seed_hi, threshold)
    return out
