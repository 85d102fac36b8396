"""numba_flash.standard (the N x N-in-HBM baseline of the benchmarks) agrees with the float64 oracle."""

import numpy as np
import pytest

from numba_flash import reference, standard
from helpers import random_qkv, to_device, to_host

# fp32 storage, fp32 softmax: errors are a few units of 2^-24 times the sums involved.
RTOL = 2e-5


def _close(got, want, name):
    got = to_host(got).astype(np.float64)
    scale = max(float(np.abs(want).max()), 1.0)
    err = float(np.abs(got - want).max())
    assert err <= RTOL * scale, f"{name}: max |err| {err:.3g} > {RTOL} * {scale:.3g}"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q, n_k", [(24, 24), (8, 24), (24, 8)])  # (24, 8) causal: rows that see no key
def test_standard_forward_backward_match_oracle(rng, causal, n_q, n_k):
    q, k, v, do = random_qkv(rng, 2, 3, n_q, n_k, 16, np.float32)
    scale = 0.3
    out, p = standard.forward(*(to_device(a) for a in (q, k, v)), causal=causal, softmax_scale=scale)
    want_out, want_lse = reference.attention_forward(q, k, v, causal=causal, softmax_scale=scale)
    _close(out, want_out, "out")
    assert p.shape == (2, 3, n_q, n_k) and p.dtype == np.float32
    # The stored probabilities are the oracle's: exp(s - lse) where a key is visible, 0 elsewhere.
    s = scale * (q.astype(np.float64) @ k.astype(np.float64).swapaxes(-1, -2))
    with np.errstate(invalid="ignore"):
        want_p = np.where(np.isfinite(want_lse)[..., None], np.exp(s - want_lse[..., None]), 0.0)
    if causal:
        want_p = np.where(reference.causal_mask(n_q, n_k), want_p, 0.0)
    _close(p, want_p, "p")

    grads = standard.backward(*(to_device(a) for a in (do, q, k, v)), out, p, softmax_scale=scale)
    want = reference.attention_backward(do, q, k, v, causal=causal, softmax_scale=scale)
    for name, g, w in zip(("dq", "dk", "dv"), grads, want):
        assert g.shape == w.shape and g.dtype == np.float32
        _close(g, w, name)


def test_standard_default_scale_and_empty_rows_are_zero(rng):
    q, k, v, do = random_qkv(rng, 1, 1, 12, 4, 8, np.float32)
    out, p = standard.forward(*(to_device(a) for a in (q, k, v)), causal=True)
    want_out, _ = reference.attention_forward(q, k, v, causal=True)  # default scale 1/sqrt(8)
    _close(out, want_out, "out")
    # Query i sees key j when j <= i + (4 - 12): the first 8 rows see nothing.
    assert np.all(to_host(out)[:, :, :8] == 0) and np.all(to_host(p)[:, :, :8] == 0)
    dq, dk, dv = standard.backward(*(to_device(a) for a in (do, q, k, v)), out, p)
    assert np.all(to_host(dq)[:, :, :8] == 0)
    assert all(np.isfinite(to_host(g)).all() for g in (dq, dk, dv))
