"""The oracle checked against the textbook formula and, for its backward, finite differences."""

import math

import numpy as np
import pytest

from numba_flash import reference as ref


def textbook(q, k, v, causal, scale):
    """softmax(scale Q K^T + mask) V, one row at a time, with Python floats (float64)."""
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    out = np.zeros((B, H, n_q, D))
    lse = np.full((B, H, n_q), -np.inf)
    for b in range(B):
        for h in range(H):
            for i in range(n_q):
                keys = [j for j in range(n_k) if not causal or j <= i + n_k - n_q]
                if not keys:
                    continue
                s = [scale * float(np.dot(q[b, h, i].astype(float), k[b, h, j].astype(float))) for j in keys]
                m = max(s)
                w = [math.exp(x - m) for x in s]
                z = sum(w)
                lse[b, h, i] = m + math.log(z)
                out[b, h, i] = sum(wj / z * v[b, h, j].astype(float) for wj, j in zip(w, keys))
    return out, lse


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
    grads = ref.attention_backward(dout, q, k, v, causal=causal, softmax_scale=0.9)

    def loss(q, k, v):
        return float(np.sum(dout * ref.attention_forward(q, k, v, causal=causal, softmax_scale=0.9)[0]))

    eps = 1e-6  # central differences: truncation O(eps^2), cancellation O(1e-16 / eps)
    for which, g in enumerate(grads):
        args = [q, k, v]
        numeric = np.zeros_like(args[which])
        for idx in np.ndindex(*args[which].shape):
            plus = [a.copy() for a in args]
            minus = [a.copy() for a in args]
            plus[which][idx] += eps
            minus[which][idx] -= eps
            numeric[idx] = (loss(*plus) - loss(*minus)) / (2 * eps)
        np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-8)


def test_oracle_rejects_integers():
    a = np.ones((1, 1, 2, 8), dtype=np.int32)
    with pytest.raises(TypeError, match="q"):
        ref.attention_forward(a, a, a)
