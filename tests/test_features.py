"""Sliding windows, GQA/MQA, dropout from a saved seed and packed varlen batches, in forward and
backward, against the float64 oracle given the same options (and the same dropout mask, drawn by
the NumPy Philox of ``numba_flash.philox``). Bounds as in test_kernels: at most 2x the error of a
naive same-precision implementation with the same options, plus the precision-derived floor."""

import math

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import numba_flash as nf
from numba_flash import BlockConfig, masking, reference as ref
from numba_flash.config import TensorCoreConfig, default_tc_config
from numba_flash.philox import reference_keep_mask

from helpers import (ON_GPU, absolute_magnitudes, backward_config, fit_config, delta_sensitivity, error_bound, max_err, naive_attention,
                     score_magnitude, scale_of, to_device, to_host)
from test_kernels import CONFIGS, GPU_HEAD_DIMS, SPECIAL_SEQ, by_dtype_and_causal, check_lse, note

# (the float64 oracle and the bound helpers run on the CPU: ~1 s per example at the GPU cap)
WORK_CAP = 2**26 if ON_GPU else 4000
MAX_SEQ = 1024 if ON_GPU else 40
GROUPS = [1, 2, 4, 8] if ON_GPU else [1, 2, 3]
DROPOUT_PS = [0.0, 0.1, 0.5, 0.9]


@st.composite
def feature_problems(draw, dtype, causal, max_work=WORK_CAP):
    """A padded-batch problem with a drawn window, GQA group and dropout rate."""
    D = draw(st.sampled_from(GPU_HEAD_DIMS if ON_GPU else [8, 16, 24]))
    seq = st.one_of(st.sampled_from([s for s in SPECIAL_SEQ if s <= MAX_SEQ]), st.integers(1, MAX_SEQ))
    n_q, n_k = draw(seq), draw(seq)
    group = draw(st.sampled_from(GROUPS))
    h_kv = draw(st.integers(1, 2))
    B = draw(st.integers(1, 2))
    while B * h_kv * group * n_q * n_k * D > max_work and max(n_q, n_k) > 1:
        n_q, n_k = max(1, n_q // 2), max(1, n_k // 2)
    side = st.one_of(st.just(-1), st.integers(0, max(n_q, n_k)))
    window = (draw(side), draw(side))
    p = draw(st.sampled_from(DROPOUT_PS))
    seed = draw(st.integers(0, 2**64 - 1))
    config = fit_config(draw(st.sampled_from(CONFIGS)), D, dtype)
    return dict(B=B, H=h_kv * group, H_kv=h_kv, n_q=n_q, n_k=n_k, D=D, dtype=dtype, causal=causal, window=window,
                p=p, seed=seed, config=config, data_seed=draw(st.integers(0, 2**32 - 1)))


def _inputs(rng, B, H, H_kv, n_q, n_k, D, dtype):
    draw = lambda h, n: rng.standard_normal((B, h, n, D)).astype(dtype)  # noqa: E731
    return draw(H, n_q), draw(H_kv, n_k), draw(H_kv, n_k), draw(H, n_q)


def check_against_oracle(q, k, v, do, out, lse, grads, causal, window, p, mask, dtype=None):
    """out, lse, dq, dk, dv of one problem (4-D, host) against the oracle with the same options;
    ``dtype``: the kernels' precision when the host arrays do not say (helpers.BF16)."""
    dtype, D, n_q, n_k = q.dtype if dtype is None else dtype, q.shape[-1], q.shape[2], k.shape[2]
    opts = dict(causal=causal, window_size=window, dropout_p=p, dropout_mask=mask)
    want_out, want_lse = ref.attention_forward(q, k, v, **opts)
    want_grads = ref.attention_backward(do, q, k, v, **opts)
    z = None if p == 0.0 else mask / (1.0 - p)
    scale = scale_of(None, D)
    naive = naive_attention(q, k, v, do, causal, scale, dtype, window, z)
    smag = score_magnitude(np.asarray(q), np.repeat(k, q.shape[1] // k.shape[1], axis=1), scale)
    amag = absolute_magnitudes(q, k, v, do, causal, scale, window, z)
    dsens = delta_sensitivity(q, k, v, do, causal, scale, window, z)
    err = max_err(out, want_out)
    bound = error_bound(max_err(naive[0], want_out), want_out, dtype, n_k + D, smag.max(), amag[0])
    note(f"out error {err:.3e} bound {bound:.3e}")
    assert err <= bound
    check_lse(lse, want_lse, n_k + D, smag)
    group = q.shape[1] // k.shape[1]
    for name, g, w, nv, src, am, ds in zip(("dq", "dk", "dv"), grads, want_grads, naive[1:], (q, k, v), amag[1:],
                                           dsens[1:]):
        assert g.shape == src.shape and g.dtype == src.dtype, name
        err = max_err(g, w)
        # dk, dv of a kv head sum `group` heads' worth of terms
        bound = error_bound(max_err(nv, w), w, dtype, group * (n_q + n_k + D), smag.max(), am, ds)
        note(f"{name} error {err:.3e} bound {bound:.3e}")
        assert err <= bound, name


def feature_case(c):
    rng = np.random.default_rng(c["data_seed"])
    q, k, v, do = _inputs(rng, c["B"], c["H"], c["H_kv"], c["n_q"], c["n_k"], c["D"], c["dtype"])
    kw = dict(causal=c["causal"], window_size=c["window"], dropout_p=c["p"], seed=c["seed"] if c["p"] else None)
    note(repr({key: val for key, val in c.items() if key != "dtype"}))
    dev = [to_device(a) for a in (q, k, v)]
    out, lse = nf.flash_attention(*dev, return_lse=True, config=c["config"], **kw)
    grads = nf.flash_attention_backward(to_device(do), *dev, out, lse, config=backward_config(c["config"]), **kw)
    mask = reference_keep_mask(c["seed"], c["p"], c["B"], c["H"], c["n_q"], c["n_k"]) if c["p"] else None
    check_against_oracle(q, k, v, do, to_host(out), to_host(lse), [to_host(g) for g in grads], c["causal"],
                         c["window"], c["p"], mask)


@by_dtype_and_causal
@given(data=st.data())
def test_features_match_oracle(dtype, causal, data):
    feature_case(data.draw(feature_problems(dtype, causal)))


# ---- packed variable-length batches ---------------------------------------------------------


@st.composite
def varlen_problems(draw, dtype, causal, max_work=WORK_CAP):
    n_seq = draw(st.integers(1, 4))
    length = st.one_of(st.just(0), st.integers(1, MAX_SEQ), st.sampled_from([s for s in SPECIAL_SEQ if s <= MAX_SEQ]))
    lq = [draw(length) for _ in range(n_seq)]
    lk = [draw(length) for _ in range(n_seq)]
    lq[draw(st.integers(0, n_seq - 1))] = max(1, max(lq))  # the packed arrays are never empty
    lk[draw(st.integers(0, n_seq - 1))] = max(1, max(lk))
    c = draw(feature_problems(dtype, causal, max_work))
    scale_down = max(1.0, math.sqrt(sum(a * b for a, b in zip(lq, lk)) * c["H"] * c["D"] / max_work))
    lq = [int(x / scale_down) if x > 1 else x for x in lq]
    lk = [int(x / scale_down) if x > 1 else x for x in lk]
    lq[0], lk[0] = max(lq[0], 1), max(lk[0], 1)
    c.update(lq=lq, lk=lk, extra_q=draw(st.integers(0, 3)), extra_k=draw(st.integers(0, 3)))
    return c


def _offsets(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def varlen_case(c):
    rng = np.random.default_rng(c["data_seed"])
    H, H_kv, D, dtype = c["H"], c["H_kv"], c["D"], c["dtype"]
    cu_q, cu_k = _offsets(c["lq"]), _offsets(c["lk"])
    q = rng.standard_normal((cu_q[-1], H, D)).astype(dtype)
    k = rng.standard_normal((cu_k[-1], H_kv, D)).astype(dtype)
    v = rng.standard_normal((cu_k[-1], H_kv, D)).astype(dtype)
    do = rng.standard_normal(q.shape).astype(dtype)
    # max_seqlen may exceed the longest sequence (it only sizes the grid)
    max_q, max_k = max(c["lq"]) + c["extra_q"], max(c["lk"]) + c["extra_k"]
    kw = dict(causal=c["causal"], window_size=c["window"], dropout_p=c["p"], seed=c["seed"] if c["p"] else None)
    note(repr({key: val for key, val in c.items() if key != "dtype"}))
    dev = [to_device(a) for a in (q, k, v, cu_q, cu_k)]
    out, lse = nf.flash_attention_varlen(*dev, max_q, max_k, return_lse=True, config=c["config"], **kw)
    assert out.shape == q.shape and lse.shape == (H, q.shape[0])
    grads = nf.flash_attention_varlen_backward(to_device(do), *dev[:3], out, lse, *dev[3:], max_q, max_k,
                                               config=backward_config(c["config"]), **kw)
    out, lse, (dq, dk, dv) = to_host(out), to_host(lse), [to_host(g) for g in grads]
    n_seq = len(c["lq"])
    mask = reference_keep_mask(c["seed"], c["p"], n_seq, H, max_q, max_k) if c["p"] else None
    as4 = lambda x, s: x[s].transpose(1, 0, 2)[None]  # noqa: E731  (rows of one sequence -> (1, H, n, D))
    for b in range(n_seq):
        sq, sk = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        nq, nk = c["lq"][b], c["lk"][b]
        if nq == 0:  # keys nobody queries: zero gradients
            assert np.all(dk[sk] == 0) and np.all(dv[sk] == 0)
            continue
        if nk == 0:  # queries with nothing to see: 0, lse = -inf, zero gradient
            assert np.all(out[sq] == 0) and np.all(np.isneginf(lse[:, sq])) and np.all(dq[sq] == 0)
            continue
        m = mask[b:b + 1, :, :nq, :nk] if c["p"] else None
        check_against_oracle(as4(q, sq), as4(k, sk), as4(v, sk), as4(do, sq), as4(out, sq), lse[None, :, sq],
                             [as4(dq, sq), as4(dk, sk), as4(dv, sk)], c["causal"], c["window"], c["p"], m)


@by_dtype_and_causal
@given(data=st.data())
def test_varlen_matches_oracle_sequence_by_sequence(dtype, causal, data):
    varlen_case(data.draw(varlen_problems(dtype, causal, max_work=WORK_CAP // 2)))


def test_varlen_equals_padded_batch_when_lengths_are_equal(rng):
    """Equal lengths: the packed call computes exactly what the padded call does (same kernels)."""
    B, H, N, D = 3, 2, 9, 16
    q = rng.standard_normal((B, H, N, D)).astype(np.float32)
    k, v, do = (rng.standard_normal((B, H, N, D)).astype(np.float32) for _ in range(3))
    kw = dict(causal=True, window_size=(3, -1), dropout_p=0.3, seed=99)
    out, lse = nf.flash_attention(*(to_device(a) for a in (q, k, v)), return_lse=True, **kw)
    pack = lambda x: np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(B * N, H, D))  # noqa: E731
    cu = to_device(_offsets([N] * B))
    pq, pk, pv, pdo = (to_device(pack(a)) for a in (q, k, v, do))
    vout, vlse = nf.flash_attention_varlen(pq, pk, pv, cu, cu, N, N, return_lse=True, **kw)
    np.testing.assert_array_equal(to_host(vout), pack(to_host(out)))
    np.testing.assert_array_equal(to_host(vlse), to_host(lse).transpose(1, 0, 2).reshape(H, B * N))
    grads = nf.flash_attention_backward(*(to_device(a) for a in (do, q, k, v)), out, lse, **kw)
    vgrads = nf.flash_attention_varlen_backward(pdo, pq, pk, pv, vout, vlse, cu, cu, N, N, **kw)
    for g, vg in zip(grads, vgrads):
        np.testing.assert_array_equal(to_host(vg), pack(to_host(g)))


# ---- dropout: the kernels' mask is the specification's, for every configuration and pass ----------


@pytest.mark.parametrize("config", [c for c in CONFIGS if not isinstance(c, TensorCoreConfig)], ids=str)
def test_kernels_drop_exactly_the_reference_mask(rng, config):
    """Read the mask back out of the kernels: with q = 0 every probability is 1/Nk, so with v = I
    the forward gives out[i, j] = Z_ij / Nk; with dO = I the dK/dV kernel gives dV[j, i] = Z_ij / Nk.
    (q = 0 here is a probe, not an accuracy input.)"""
    B, H, n, D, p = 2, 3, 16, 16, 0.4
    seed = int(rng.integers(0, 2**63)) * 2 + 1  # high word non-zero
    q = np.zeros((B, H, n, D), np.float32)
    k = rng.standard_normal((B, H, n, D)).astype(np.float32)
    eye = np.broadcast_to(np.eye(n, D, dtype=np.float32), (B, H, n, D)).copy()
    want = reference_keep_mask(seed, p, B, H, n, n)
    kw = dict(dropout_p=p, seed=seed, config=config)
    out, lse = nf.flash_attention(to_device(q), to_device(k), to_device(eye), return_lse=True, **kw)
    np.testing.assert_array_equal(to_host(out) != 0, want)
    np.testing.assert_allclose(to_host(out)[want], 1.0 / (n * (1 - p)), rtol=1e-6)
    _, _, dv = nf.flash_attention_backward(to_device(eye), to_device(q), to_device(k), to_device(eye), out, lse, **kw)
    np.testing.assert_array_equal(to_host(dv).swapaxes(-1, -2) != 0, want)
    np.testing.assert_array_equal(to_host(nf.dropout_mask(seed, p, B, H, n, n)), want)


def test_no_dropout_is_the_plain_path(rng):
    """dropout_p = 0 (with or without a seed) is bit-identical to no dropout at all."""
    q, k, v, do = _inputs(rng, 1, 2, 1, 13, 11, 16, np.float16)
    dev = [to_device(a) for a in (q, k, v)]
    plain, lse = nf.flash_attention(*dev, return_lse=True)
    for kw in (dict(dropout_p=0.0), dict(dropout_p=0.0, seed=5)):
        out, lse2 = nf.flash_attention(*dev, return_lse=True, **kw)
        np.testing.assert_array_equal(to_host(out), to_host(plain))
        np.testing.assert_array_equal(to_host(lse2), to_host(lse))


def test_dropout_lse_is_that_of_the_undropped_probabilities(rng):
    """Bit for bit, with one kernel config for both calls: on the tensor cores config=None takes
    other tiles with dropout (its random numbers need registers), and other tiles sum lse in
    another order (this test failed for that reason when float32 moved to the tensor cores)."""
    q, k, v, _ = _inputs(rng, 1, 2, 2, 9, 12, 8, np.float32)
    dev = [to_device(a) for a in (q, k, v)]
    cfg = default_tc_config(8, True, "forward", "tf32") if ON_GPU else None
    _, lse = nf.flash_attention(*dev, return_lse=True, config=cfg)
    _, lse_drop = nf.flash_attention(*dev, return_lse=True, dropout_p=0.7, seed=3, config=cfg)
    np.testing.assert_array_equal(to_host(lse_drop), to_host(lse))


def test_different_seeds_drop_differently(rng):
    q, k, v, _ = _inputs(rng, 1, 1, 1, 16, 16, 8, np.float32)
    dev = [to_device(a) for a in (q, k, v)]
    a = to_host(nf.flash_attention(*dev, dropout_p=0.5, seed=1))
    b = to_host(nf.flash_attention(*dev, dropout_p=0.5, seed=2))
    c = to_host(nf.flash_attention(*dev, dropout_p=0.5, seed=1))
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, c)


# ---- windows: equivalences and skipped tiles ---------------------------------------------------


def test_window_equivalences(rng):
    """(-1, -1) is no window and causal is the window (-1, 0): the same band, bit for bit."""
    q, k, v, do = _inputs(rng, 1, 2, 2, 11, 14, 16, np.float32)
    dev = [to_device(a) for a in (q, k, v)]
    plain = to_host(nf.flash_attention(*dev))
    np.testing.assert_array_equal(to_host(nf.flash_attention(*dev, window_size=(-1, -1))), plain)
    causal = to_host(nf.flash_attention(*dev, causal=True))
    np.testing.assert_array_equal(to_host(nf.flash_attention(*dev, window_size=(-1, 0))), causal)
    # causal combined with a right window wider than 0 is still causal
    np.testing.assert_array_equal(to_host(nf.flash_attention(*dev, causal=True, window_size=(-1, 5))), causal)


@given(st.integers(0, 60), st.integers(0, 60), st.integers(-40, 40), st.integers(-1, 50), st.integers(-1, 50),
       st.integers(1, 60), st.integers(1, 60), st.sampled_from([8, 16, 64]))
def test_tile_spans_are_tight(first, count, diag, left, right, n_k, n_q, block):
    """key_span / query_span cover every visible (query, key) pair and start and end on tiles that
    hold one: a tile wholly outside the band is skipped, not loaded and masked."""
    lo, hi = masking.band(False, (left, right))
    q_first, q_last = first, first + count % 8
    keys = [j for j in range(n_k) if any(-lo <= j - i - diag <= hi for i in range(q_first, q_last + 1))]
    start, end = masking.key_span.py_func(q_first, q_last, diag, lo, hi, n_k, block)
    span = [j for j in range(start, end)]
    assert set(keys) <= set(span)
    if keys:
        assert start == keys[0] // block * block and end == keys[-1] + 1
    else:
        assert start >= end
    k_first, k_last = first, first + count % 8
    queries = [i for i in range(n_q) if any(-lo <= j - i - diag <= hi for j in range(k_first, k_last + 1))]
    start, end = masking.query_span.py_func(k_first, k_last, diag, lo, hi, n_q, block)
    assert set(queries) <= set(range(start, end))
    if queries:
        assert start == queries[0] // block * block and end == queries[-1] + 1
    else:
        assert start >= end


@settings(max_examples=500)  # pure Python: the simulator profile's 4 examples are for kernel launches
@example(row=10, c0=0, diag=0, left=-1, right=-1, n_k=20, block=32, causal=False)  # sequence end in the tile
@example(row=40, c0=32, diag=-3, left=5, right=-1, n_k=90, block=16, causal=True)  # both band edges
@given(row=st.integers(0, 80), c0=st.integers(0, 80), diag=st.integers(-40, 40), left=st.integers(-1, 50),
       right=st.integers(-1, 50), n_k=st.integers(1, 90), block=st.sampled_from([16, 32, 64]), causal=st.booleans())
def test_band_bounds_per_row_match_the_band(row, c0, diag, left, right, n_k, block, causal):
    """band_columns / band_queries (the tensor-core kernels' masked tiles: one bound pair per lane row,
    then a compare per element): for every column offset c of the tile, lo <= c < lo + width exactly
    when the (query, key) pair is inside the band and the key inside the sequence."""
    lo_, hi_ = masking.band(causal, (left, right))
    lo, width = masking.band_columns.py_func(row, c0, diag, lo_, hi_, n_k, block)
    for c in range(block):
        want = c0 + c < n_k and -lo_ <= c0 + c - row - diag <= hi_
        assert (lo <= c < lo + width) == want, (c, lo, width)
    key = row  # the same draws, transposed: key ``key`` against queries c0 + c
    lo, width = masking.band_queries.py_func(key, c0, diag, lo_, hi_, n_k, block)
    for c in range(block):
        want = key < n_k and -lo_ <= key - (c0 + c) - diag <= hi_
        assert (lo <= c < lo + width) == want, (c, lo, width)


# ---- GQA ---------------------------------------------------------------------------------------


def test_gqa_equals_repeated_heads(rng):
    """GQA = MHA on k, v repeated per group (outputs bit-identical: same kernel, same order); dk, dv
    are the group sums (checked against the oracle by the property tests, determinism here)."""
    q, k, v, do = _inputs(rng, 2, 4, 2, 10, 12, 16, np.float32)
    dev = [to_device(a) for a in (q, k, v)]
    out, lse = nf.flash_attention(*dev, return_lse=True, causal=True)
    rep = [to_device(np.repeat(a, 2, axis=1)) for a in (k, v)]
    out_rep = nf.flash_attention(dev[0], *rep, causal=True)
    np.testing.assert_array_equal(to_host(out), to_host(out_rep))
    first = [to_host(g) for g in nf.flash_attention_backward(to_device(do), *dev, out, lse, causal=True)]
    again = [to_host(g) for g in nf.flash_attention_backward(to_device(do), *dev, out, lse, causal=True)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert first[1].shape == k.shape and first[2].shape == v.shape


def test_mqa_single_kv_head(rng):
    q, k, v, do = _inputs(rng, 1, 5, 1, 7, 9, 8, np.float32)
    dev = [to_device(a) for a in (q, k, v)]
    out, lse = nf.flash_attention(*dev, return_lse=True)
    grads = nf.flash_attention_backward(to_device(do), *dev, out, lse)
    check_against_oracle(q, k, v, do, to_host(out), to_host(lse), [to_host(g) for g in grads], False, (-1, -1), 0.0,
                         None)


FIXED = [  # corners the draws may miss: MQA with dropout and a one-sided window, empty rows
    dict(B=1, H=4, H_kv=1, n_q=17, n_k=5, D=8, dtype=np.float16, causal=True, window=(2, -1), p=0.5, seed=2**63 + 7,
         config=BlockConfig(8, 8, 16), data_seed=1),
    dict(B=2, H=2, H_kv=2, n_q=3, n_k=20, D=16, dtype=np.float32, causal=False, window=(0, 0), p=0.1, seed=0,
         config=None, data_seed=2),
    dict(B=1, H=3, H_kv=1, n_q=9, n_k=9, D=24, dtype=np.float32, causal=False, window=(-1, 2), p=0.9, seed=12345,
         config=BlockConfig(16, 8, 32), data_seed=3),
]


@pytest.mark.parametrize("c", FIXED, ids=range(len(FIXED)))
def test_fixed_feature_cases(c):
    feature_case(c)
