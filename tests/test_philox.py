"""Philox4x32-10 and the dropout mask: known answers, device == NumPy, and the statistics of the mask.

The device tests run on whichever backend the session uses; on the simulator their shapes stay
tiny (Philox is ~100 operations a thread, at microseconds each).
"""

import math

import numpy as np
import pytest
from numba import cuda

from numba_flash import philox
from numba_flash.philox import dropout_keep, philox_round10

from helpers import to_device, to_host

# Known answers of Philox4x32-10 from Random123's kat_vectors: (counter, key, result).
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@cuda.jit
def _philox_kernel(counters, keys, out):
    n = cuda.grid(1)
    if n < counters.shape[0]:
        w0, w1, w2, w3 = philox_round10(counters[n, 0], counters[n, 1], counters[n, 2], counters[n, 3],
                                        keys[n, 0], keys[n, 1])
        out[n, 0] = w0
        out[n, 1] = w1
        out[n, 2] = w2
        out[n, 3] = w3


@cuda.jit
def _keep_kernel(coords, seed_lo, seed_hi, threshold, out):
    """out[n] = dropout_keep at coords[n] = (b, h, i, j), int64 coordinates (may exceed 2**32)."""
    n = cuda.grid(1)
    if n < coords.shape[0]:
        out[n] = dropout_keep(seed_lo, seed_hi, coords[n, 0], coords[n, 1], coords[n, 2], coords[n, 3], threshold)


def _spec_keep(seed, p, b, h, i, j):
    """The dropout specification for one element, written out with scalar Python ints."""
    wrap = 0xFFFFFFFF
    counter = np.array([(j // 4) & wrap, i & wrap, h & wrap, b & wrap], dtype=np.uint32)
    key = np.array([seed & wrap, seed >> 32], dtype=np.uint32)
    word = int(philox.philox4x32_10(counter, key)[j % 4])
    return word < int((1.0 - p) * 2**32)


# ---------------------------------------------------------------- Philox itself


@pytest.mark.parametrize("counter,key,want", KNOWN_ANSWERS)
def test_numpy_known_answers(counter, key, want):
    got = philox.philox4x32_10(np.array(counter, dtype=np.uint32), np.array(key, dtype=np.uint32))
    assert got.dtype == np.uint32
    assert [int(x) for x in got] == list(want)


def test_device_known_answers():
    counters = np.array([c for c, _, _ in KNOWN_ANSWERS], dtype=np.uint32)  # uint32 in: any int type works
    keys = np.array([k for _, k, _ in KNOWN_ANSWERS], dtype=np.uint64)
    out = to_device(np.zeros((len(KNOWN_ANSWERS), 4), dtype=np.uint64))
    _philox_kernel[1, 32](to_device(counters), to_device(keys), out)
    np.testing.assert_array_equal(to_host(out), np.array([w for _, _, w in KNOWN_ANSWERS], dtype=np.uint64))


def test_numpy_philox_vectorises_and_broadcasts(rng):
    counters = rng.integers(0, 2**32, size=(3, 5, 4), dtype=np.uint64).astype(np.uint32)
    key = rng.integers(0, 2**32, size=2, dtype=np.uint64).astype(np.uint32)
    got = philox.philox4x32_10(counters, key)
    assert got.shape == (3, 5, 4)
    for idx in np.ndindex(3, 5):
        np.testing.assert_array_equal(got[idx], philox.philox4x32_10(counters[idx], key))
    # A different key changes every word (each equal with probability 2**-32).
    assert np.all(got != philox.philox4x32_10(counters, key ^ np.uint32(1)))


def test_numpy_philox_rejects_bad_words():
    with pytest.raises(ValueError, match="counter"):
        philox.philox4x32_10(np.array([0, 0, 0, 2**32]), np.array([0, 0]))
    with pytest.raises(ValueError, match="key"):
        philox.philox4x32_10(np.zeros(4, dtype=np.uint32), np.zeros(3, dtype=np.uint32))
    with pytest.raises(TypeError, match="counter"):
        philox.philox4x32_10(np.zeros(4), np.zeros(2, dtype=np.uint32))


# ---------------------------------------------------------------- the mask: device == NumPy == spec


def test_reference_mask_follows_the_spec_element_by_element(rng):
    seed = philox.new_seed() | (1 << 63)  # both key words in use
    shape = (2, 3, 4, 9)
    p = 0.4
    mask = philox.reference_keep_mask(seed, p, *shape)
    assert mask.shape == shape and mask.dtype == np.bool_
    for b, h, i, j in np.ndindex(*shape):
        assert mask[b, h, i, j] == _spec_keep(seed, p, b, h, i, j), (b, h, i, j)


def test_device_keep_matches_spec_at_large_coordinates(rng):
    """dropout_keep with int64 coordinates, some past 2**32 (where the counter words wrap)."""
    seed = philox.new_seed()
    p = 0.5
    coords = rng.integers(0, 2**33, size=(24, 4), dtype=np.int64)
    coords[:4] = [[0, 0, 0, 0], [1, 2, 3, 4], [2**32 + 1, 2, 3, 4], [1, 2, 3, 4 + 2**34]]
    out = to_device(np.zeros(len(coords), dtype=np.bool_))
    _keep_kernel[1, 32](to_device(coords), *philox.dropout_kernel_args(seed, p), out)
    got = to_host(out)
    want = [_spec_keep(seed, p, *map(int, c)) for c in coords]
    np.testing.assert_array_equal(got, want)
    # The counters wrap mod 2**32, so these coordinates name the same element.
    assert got[1] == got[2] == got[3]


@pytest.mark.parametrize("shape,seed,p", [
    ((2, 3, 5, 7), 2**32 + 12345, 0.5),
    ((1, 1, 1, 1), 7, 0.3),
    ((1, 2, 3, 4), 2**64 - 1, 0.9),
    ((2, 1, 9, 5), None, 0.1),
])
def test_device_mask_equals_reference(shape, seed, p):
    seed = philox.new_seed() if seed is None else seed
    got = philox.dropout_mask(seed, p, *shape)
    assert got.shape == shape and got.dtype == np.bool_
    np.testing.assert_array_equal(to_host(got), philox.reference_keep_mask(seed, p, *shape))


def test_threshold_boundary():
    """A word equal to the threshold drops its element; one below it keeps it (strict <)."""
    seed = philox.new_seed()
    word = int(philox.philox4x32_10(np.zeros(4, dtype=np.uint32), np.array(philox.seed_key(seed), dtype=np.uint32))[0])
    assert word > 0  # fails with probability 2**-32
    # Element (0, 0, 0, 0) draws word 0 of counter (0, 0, 0, 0). These p are exact in float64.
    p_drop, p_keep = 1.0 - word / 2**32, 1.0 - (word + 1) / 2**32
    assert philox.keep_threshold(p_drop) == word and philox.keep_threshold(p_keep) == word + 1
    for p, kept in ((p_drop, False), (p_keep, True)):
        assert philox.reference_keep_mask(seed, p, 1, 1, 1, 1)[0, 0, 0, 0] == kept
        assert to_host(philox.dropout_mask(seed, p, 1, 1, 1, 1))[0, 0, 0, 0] == kept


def test_p_zero_keeps_everything():
    seed = philox.new_seed()
    assert philox.keep_threshold(0.0) == 2**32
    assert philox.reference_keep_mask(seed, 0.0, 2, 3, 17, 33).all()
    assert to_host(philox.dropout_mask(seed, 0.0, 1, 2, 3, 5)).all()


# ---------------------------------------------------------------- statistics of the mask


def _large_mask(seed, p):
    return philox.reference_keep_mask(seed, p, 4, 8, 64, 128)  # 262144 elements


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_within_binomial_bounds(p):
    mask = _large_mask(philox.new_seed(), p)
    n = mask.size
    kept = int(mask.sum())
    assert abs(kept - n * (1 - p)) <= 5 * math.sqrt(n * p * (1 - p)), (kept, n, p)


def _corr(a, b):
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1]), a.size


@pytest.mark.parametrize("axis,name", [(0, "batch"), (1, "head"), (2, "query row"), (3, "key position")])
def test_neighbours_are_uncorrelated(axis, name):
    """Adjacent elements along each axis (adjacent keys mostly share one Philox call) look independent."""
    mask = _large_mask(philox.new_seed(), 0.5)
    n = mask.shape[axis]
    r, count = _corr(np.take(mask, range(n - 1), axis=axis), np.take(mask, range(1, n), axis=axis))
    assert abs(r) < 5 / math.sqrt(count), (name, r)


def test_adjacent_seeds_are_uncorrelated():
    seed = philox.new_seed() % (2**64 - 1)
    r, count = _corr(_large_mask(seed, 0.5), _large_mask(seed + 1, 0.5))
    assert abs(r) < 5 / math.sqrt(count), r


def test_seed_words_both_matter():
    """Seeds differing only in the high key word give different masks."""
    lo = philox.new_seed() & 0xFFFFFFFF
    a = philox.reference_keep_mask(lo, 0.5, 1, 2, 8, 16)
    b = philox.reference_keep_mask(lo | (1 << 32), 0.5, 1, 2, 8, 16)
    assert philox.seed_key(lo | (1 << 32)) == (lo, 1)
    assert (a != b).any()


# ---------------------------------------------------------------- host helpers and validation


def test_thresholds_and_kernel_args():
    assert philox.keep_threshold(0.5) == 2**31
    assert philox.keep_threshold(0.75) == 2**30
    lo, hi, t = philox.dropout_kernel_args(2**40 + 7, 0.5)
    assert (lo, hi, t) == (7, 2**8, 2**31)
    assert all(isinstance(x, np.uint64) for x in (lo, hi, t))


def test_new_seed():
    seeds = {philox.new_seed() for _ in range(8)}
    assert len(seeds) == 8  # equal 64-bit draws: probability ~2**-59
    assert all(isinstance(s, int) and 0 <= s < 2**64 for s in seeds)
    assert philox.validate_seed(np.uint64(2**64 - 1)) == 2**64 - 1


@pytest.mark.parametrize("seed,error", [
    (True, TypeError), (1.0, TypeError), ("3", TypeError), (None, TypeError),
    (-1, ValueError), (2**64, ValueError),
])
def test_bad_seed(seed, error):
    with pytest.raises(error, match="seed"):
        philox.validate_seed(seed)
    with pytest.raises(error, match="seed"):
        philox.reference_keep_mask(seed, 0.5, 1, 1, 1, 1)
    with pytest.raises(error, match="seed"):
        philox.dropout_mask(seed, 0.5, 1, 1, 1, 1)


@pytest.mark.parametrize("p,error", [
    (1.0, ValueError), (-0.1, ValueError), (float("nan"), ValueError), (1.5, ValueError),
    (True, TypeError), ("0.5", TypeError), (None, TypeError),
])
def test_bad_dropout_p(p, error):
    with pytest.raises(error, match="dropout_p"):
        philox.validate_dropout_p(p)
    with pytest.raises(error, match="dropout_p"):
        philox.keep_threshold(p)
    with pytest.raises(error, match="dropout_p"):
        philox.dropout_mask(1, p, 1, 1, 1, 1)


@pytest.mark.parametrize("which", ["batch", "heads", "seqlen_q", "seqlen_k"])
@pytest.mark.parametrize("value,error", [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)])
def test_bad_sizes(which, value, error):
    sizes = dict(batch=1, heads=1, seqlen_q=1, seqlen_k=1)
    sizes[which] = value
    with pytest.raises(error, match=which):
        philox.dropout_mask(1, 0.5, **sizes)
    with pytest.raises(error, match=which):
        philox.reference_keep_mask(1, 0.5, **sizes)
