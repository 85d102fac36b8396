"""The oracle checked against the textbook formula and, for its backward, finite differences."""

import math

import numpy as np
import pytest

from numba_flash import philox
from numba_flash import reference as ref


def sees(i, j, n_q, n_k, causal=False, window=(-1, -1)):
    """Whether query i sees key j, straight from the definition (bottom-right aligned diagonal)."""
    left, right = window
    d = j - (i + n_k - n_q)  # signed distance from the diagonal
    if causal and d > 0:
        return False
    if left >= 0 and d < -left:
        return False
    return not (right >= 0 and d > right)


def textbook(q, k, v, causal, scale, window=(-1, -1), keep=None, dropout_p=0.0):
    """dropout(softmax(scale Q K^T + mask)) V, one row at a time, with Python floats (float64).

    k, v may have fewer heads than q (query head h reads kv head h // group); ``keep`` is the
    dropout keep mask (B, H_q, Nq, Nk).
    """
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    group = H // k.shape[1]
    out = np.zeros((B, H, n_q, v.shape[3]))
    lse = np.full((B, H, n_q), -np.inf)
    for b in range(B):
        for h in range(H):
            g = h // group
            for i in range(n_q):
                keys = [j for j in range(n_k) if sees(i, j, n_q, n_k, causal, window)]
                if not keys:
                    continue
                s = [scale * float(np.dot(q[b, h, i].astype(float), k[b, g, j].astype(float))) for j in keys]
                m = max(s)
                w = [math.exp(x - m) for x in s]
                z = sum(w)
                lse[b, h, i] = m + math.log(z)
                for wj, j in zip(w, keys):
                    factor = 1.0 if keep is None else float(keep[b, h, i, j]) / (1.0 - dropout_p)
                    out[b, h, i] += wj / z * factor * v[b, g, j].astype(float)
    return out, lse


def numeric_gradients(dout, q, k, v, **kw):
    """Central differences of sum(dout * out) with respect to q, k and v."""
    def loss(q, k, v):
        return float(np.sum(dout * ref.attention_forward(q, k, v, **kw)[0]))

    eps = 1e-6  # central differences: truncation O(eps^2), cancellation O(1e-16 / eps)
    grads = []
    for which in range(3):
        args = [q, k, v]
        numeric = np.zeros_like(args[which])
        for idx in np.ndindex(*args[which].shape):
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[which][idx] += eps
            minus[which][idx] -= eps
            numeric[idx] = (loss(*plus) - loss(*minus)) / (2 * eps)
        grads.append(numeric)
    return grads


def assert_gradients(dout, q, k, v, **kw):
    got = ref.attention_backward(dout, q, k, v, **kw)
    for name, g, want in zip("qkv", got, numeric_gradients(dout, q, k, v, **kw)):
        assert g.shape == want.shape, name
        np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-8, err_msg=f"d{name}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q,n_k", [(5, 5), (3, 7), (7, 3), (1, 4)])
def test_forward_matches_textbook(rng, causal, n_q, n_k):
    q, k, v = (rng.standard_normal((2, 2, n, 8)) for n in (n_q, n_k, n_k))
    out, lse = ref.attention_forward(q, k, v, causal=causal, softmax_scale=0.7)
    want_out, want_lse = textbook(q, k, v, causal, 0.7)
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(lse[fin], want_lse[fin], rtol=1e-12)


def test_default_scale_and_empty_rows(rng):
    q, k, v = (rng.standard_normal((1, 1, n, 16)) for n in (6, 2, 2))
    out, lse = ref.attention_forward(q, k, v, causal=True)
    want_out, want_lse = textbook(q, k, v, True, 1 / math.sqrt(16))
    np.testing.assert_allclose(out, want_out, atol=1e-12)
    # rows 0..3 see no key (j <= i + 2 - 6): output 0, lse -inf
    assert np.all(out[0, 0, :4] == 0) and np.all(np.isneginf(lse[0, 0, :4]))
    assert np.all(np.isfinite(lse[0, 0, 4:]))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q,n_k", [(4, 4), (3, 5), (5, 3)])
def test_backward_matches_finite_differences(rng, causal, n_q, n_k):
    D = 4
    q, k, v = (rng.standard_normal((1, 2, n, D)) for n in (n_q, n_k, n_k))
    dout = rng.standard_normal((1, 2, n_q, D))
    assert_gradients(dout, q, k, v, causal=causal, softmax_scale=0.9)


def test_oracle_rejects_integers():
    a = np.ones((1, 1, 2, 8), dtype=np.int32)
    with pytest.raises(TypeError, match="q"):
        ref.attention_forward(a, a, a)


# ---------------------------------------------------------------- sliding windows

WINDOWS = [(-1, -1), (0, 0), (2, -1), (-1, 1), (1, 2), (0, -1), (3, 0), (-5, 1)]
SHAPES = [(5, 5), (3, 7), (7, 3), (1, 4)]


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q,n_k", SHAPES)
def test_visibility_mask_matches_brute_force(causal, window, n_q, n_k):
    got = ref.visibility_mask(n_q, n_k, causal=causal, window_size=window)
    want = np.array([[sees(i, j, n_q, n_k, causal, window) for j in range(n_k)] for i in range(n_q)])
    np.testing.assert_array_equal(got, want)
    # causal + window is the intersection of the two masks
    np.testing.assert_array_equal(
        got, ref.visibility_mask(n_q, n_k, window_size=window) & (ref.causal_mask(n_q, n_k) if causal else True))


@pytest.mark.parametrize("n_q,n_k", SHAPES)
def test_no_window_and_causal_window_equivalences(n_q, n_k):
    assert ref.visibility_mask(n_q, n_k).all()
    causal = ref.causal_mask(n_q, n_k)
    np.testing.assert_array_equal(causal, np.arange(n_k)[None, :] <= np.arange(n_q)[:, None] + n_k - n_q)
    np.testing.assert_array_equal(ref.visibility_mask(n_q, n_k, True), causal)
    np.testing.assert_array_equal(ref.visibility_mask(n_q, n_k, window_size=(-1, 0)), causal)
    np.testing.assert_array_equal(ref.visibility_mask(n_q, n_k, True, (2, -1)), ref.visibility_mask(n_q, n_k, False, (2, 0)))


def test_window_minus_one_is_no_window(rng):
    q, k, v = (rng.standard_normal((2, 2, n, 8)) for n in (4, 6, 6))
    for causal in (False, True):
        a = ref.attention_forward(q, k, v, causal=causal)
        b = ref.attention_forward(q, k, v, causal=causal, window_size=(-1, -1))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("window", [(0, 0), (2, -1), (-1, 1), (1, 2), (3, 0)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q,n_k", [(5, 5), (3, 7), (7, 3)])
def test_window_forward_matches_textbook(rng, causal, window, n_q, n_k):
    q, k, v = (rng.standard_normal((2, 2, n, 8)) for n in (n_q, n_k, n_k))
    out, lse = ref.attention_forward(q, k, v, causal=causal, softmax_scale=0.7, window_size=window)
    want_out, want_lse = textbook(q, k, v, causal, 0.7, window=window)
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(lse[fin], want_lse[fin], rtol=1e-12)


def test_window_empty_rows(rng):
    # window (0, 0) with Nq = 6 > Nk = 3: query i sees only key i - 3, so rows 0..2 see nothing
    q, k, v = (rng.standard_normal((1, 2, n, 4)) for n in (6, 3, 3))
    dout = rng.standard_normal((1, 2, 6, 4))
    out, lse = ref.attention_forward(q, k, v, window_size=(0, 0))
    assert np.all(out[:, :, :3] == 0) and np.all(np.isneginf(lse[:, :, :3]))
    assert np.all(np.isfinite(lse[:, :, 3:]))
    np.testing.assert_allclose(out[:, :, 3:], v, rtol=1e-15)  # one key seen: out is its value
    dq, dk, dv = ref.attention_backward(dout, q, k, v, window_size=(0, 0))
    assert np.all(dq[:, :, :3] == 0)
    np.testing.assert_allclose(dv, dout[:, :, 3:], rtol=1e-15)


@pytest.mark.parametrize("window", [(1, 1), (2, -1), (0, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_window_backward_matches_finite_differences(rng, causal, window):
    q, k, v = (rng.standard_normal((1, 2, n, 3)) for n in (5, 6, 6))
    dout = rng.standard_normal((1, 2, 5, 3))
    assert_gradients(dout, q, k, v, causal=causal, softmax_scale=0.9, window_size=window)


@pytest.mark.parametrize("window", [(1,), (1, 2, 3), 3, (1.0, 2), (True, -1), None])
def test_bad_window(rng, window):
    q = rng.standard_normal((1, 1, 2, 4))
    with pytest.raises(TypeError, match="window_size"):
        ref.attention_forward(q, q, q, window_size=window)


# ---------------------------------------------------------------- GQA / MQA


@pytest.mark.parametrize("h_kv", [1, 2, 3, 6])
def test_gqa_forward_equals_repeated_heads_and_textbook(rng, h_kv):
    h_q, group = 6, 6 // h_kv
    q = rng.standard_normal((2, h_q, 4, 8))
    k, v = (rng.standard_normal((2, h_kv, 5, 8)) for _ in range(2))
    out, lse = ref.attention_forward(q, k, v, causal=True, window_size=(2, -1))
    rep = [np.stack([x[:, h // group] for h in range(h_q)], axis=1) for x in (k, v)]
    want_out, want_lse = ref.attention_forward(q, *rep, causal=True, window_size=(2, -1))
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(lse, want_lse)
    text_out, _ = textbook(q, k, v, True, 1 / math.sqrt(8), window=(2, -1))
    np.testing.assert_allclose(out, text_out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("h_kv", [1, 2, 6])
def test_gqa_backward_sums_the_group(rng, h_kv):
    h_q, group = 6, 6 // h_kv
    q, dout = (rng.standard_normal((2, h_q, 4, 8)) for _ in range(2))
    k, v = (rng.standard_normal((2, h_kv, 5, 8)) for _ in range(2))
    dq, dk, dv = ref.attention_backward(dout, q, k, v, causal=True)
    assert dk.shape == k.shape and dv.shape == v.shape and dq.shape == q.shape
    rep = [np.stack([x[:, h // group] for h in range(h_q)], axis=1) for x in (k, v)]
    dq_r, dk_r, dv_r = ref.attention_backward(dout, q, *rep, causal=True)
    np.testing.assert_array_equal(dq, dq_r)
    for got, full in ((dk, dk_r), (dv, dv_r)):
        for g in range(h_kv):
            want = sum(full[:, h] for h in range(g * group, (g + 1) * group))
            np.testing.assert_allclose(got[:, g], want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (False, (1, 1)), (True, (2, -1))])
def test_gqa_backward_matches_finite_differences(rng, causal, window):
    q, dout = (rng.standard_normal((1, 4, 4, 3)) for _ in range(2))
    k, v = (rng.standard_normal((1, 2, 5, 3)) for _ in range(2))
    assert_gradients(dout, q, k, v, causal=causal, softmax_scale=0.8, window_size=window)


def test_gqa_rejects_bad_head_counts(rng):
    q = rng.standard_normal((1, 6, 3, 4))
    k4 = rng.standard_normal((1, 4, 3, 4))
    with pytest.raises(ValueError, match="k"):
        ref.attention_forward(q, k4, k4)
    with pytest.raises(ValueError, match="k"):
        ref.attention_backward(q, q, k4, k4)
    k2, k3 = rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((1, 3, 3, 4))
    with pytest.raises(ValueError, match="v"):
        ref.attention_forward(q, k2, k3)


# ---------------------------------------------------------------- dropout


def _dropout_case(rng, p, h_q=2, h_kv=2, n_q=4, n_k=5, D=3):
    q, dout = (rng.standard_normal((1, h_q, n_q, D)) for _ in range(2))
    k, v = (rng.standard_normal((1, h_kv, n_k, D)) for _ in range(2))
    mask = philox.reference_keep_mask(philox.new_seed(), p, 1, h_q, n_q, n_k)
    return q, k, v, dout, mask


@pytest.mark.parametrize("p", [0.2, 0.5])
@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (False, (1, 0))])
def test_dropout_forward_matches_textbook(rng, p, causal, window):
    q, k, v, _, mask = _dropout_case(rng, p, h_q=4, h_kv=2, n_q=6, n_k=7, D=8)
    out, lse = ref.attention_forward(q, k, v, causal=causal, window_size=window, dropout_p=p, dropout_mask=mask)
    want_out, want_lse = textbook(q, k, v, causal, 1 / math.sqrt(8), window=window, keep=mask, dropout_p=p)
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    # lse is that of the undropped probabilities
    _, plain_lse = ref.attention_forward(q, k, v, causal=causal, window_size=window)
    np.testing.assert_array_equal(lse, plain_lse)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(lse[fin], want_lse[fin], rtol=1e-12)


def test_dropout_forward_direct_formula(rng):
    p = 0.3
    q, k, v, _, mask = _dropout_case(rng, p, n_q=5, n_k=5, D=4)
    s = (q @ k.swapaxes(-1, -2)) / 2.0
    probs = np.exp(s - s.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    want = (probs * mask / (1 - p)) @ v
    out, _ = ref.attention_forward(q, k, v, dropout_p=p, dropout_mask=mask)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    assert not np.allclose(out, ref.attention_forward(q, k, v)[0])  # the mask did drop something


@pytest.mark.parametrize("p", [0.2, 0.6])
@pytest.mark.parametrize("causal,window,h_kv", [(False, (-1, -1), 2), (True, (-1, -1), 1), (False, (1, 1), 2)])
def test_dropout_backward_matches_finite_differences(rng, p, causal, window, h_kv):
    q, k, v, dout, mask = _dropout_case(rng, p, h_q=2, h_kv=h_kv)
    assert_gradients(dout, q, k, v, causal=causal, softmax_scale=0.9, window_size=window,
                     dropout_p=p, dropout_mask=mask)


def test_dropout_backward_direct_formula(rng):
    p = 0.4
    q, k, v, dout, mask = _dropout_case(rng, p, n_q=5, n_k=5, D=4)
    scale = 0.5
    s = scale * (q @ k.swapaxes(-1, -2))
    probs = np.exp(s - s.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    z = mask / (1 - p)
    dv = (probs * z).swapaxes(-1, -2) @ dout
    dp = (dout @ v.swapaxes(-1, -2)) * z
    ds = probs * (dp - (probs * dp).sum(-1, keepdims=True))  # rowsum(P * dP), not via out
    want = (scale * ds @ k, scale * ds.swapaxes(-1, -2) @ q, dv)
    got = ref.attention_backward(dout, q, k, v, dropout_p=p, dropout_mask=mask)
    for name, g, w in zip("qkv", got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=f"d{name}")


def test_dropout_p_zero_ignores_the_mask(rng):
    q, k, v, dout, _ = _dropout_case(rng, 0.5)
    mask = np.zeros((1, 2, 4, 5), dtype=bool)
    a = ref.attention_forward(q, k, v, dropout_p=0.0, dropout_mask=mask)
    b = ref.attention_forward(q, k, v)
    np.testing.assert_array_equal(a[0], b[0])


def test_dropout_argument_errors(rng):
    q, k, v, dout, mask = _dropout_case(rng, 0.5)
    for f, args in ((ref.attention_forward, (q, k, v)), (ref.attention_backward, (dout, q, k, v))):
        with pytest.raises(ValueError, match="dropout_mask"):
            f(*args, dropout_p=0.5)
        with pytest.raises(ValueError, match="dropout_mask"):
            f(*args, dropout_p=0.5, dropout_mask=mask[:, :1])
        with pytest.raises(TypeError, match="dropout_mask"):
            f(*args, dropout_p=0.5, dropout_mask=mask.astype(np.float64))
        for bad in (1.0, -0.5):
            with pytest.raises(ValueError, match="dropout_p"):
                f(*args, dropout_p=bad, dropout_mask=mask)
