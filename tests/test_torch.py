"""The PyTorch adapter on the GPU: outputs and all three gradients against SDPA's MATH backend in
float64 (and our NumPy oracle, which must agree with it), with the bounds of test_kernels; dropout
through our mask function; no_grad, strided inputs, autocast, streams, errors."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is an optional extra; the adapter tests need it")

from helpers import BF16, ON_GPU  # noqa: E402

if not ON_GPU or not torch.cuda.is_available():
    pytest.skip("numba_flash.torch needs a CUDA GPU (the simulator has no DLPack/CUDA tensors)",
                allow_module_level=True)

import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import numba_flash as nf  # noqa: E402
from numba_flash import reference as ref  # noqa: E402
from numba_flash.philox import reference_keep_mask  # noqa: E402
from numba_flash.torch import draw_seed, scaled_dot_product_attention as nf_sdpa  # noqa: E402

from test_features import check_against_oracle  # noqa: E402

DEV = "cuda"


def _inputs(shape_q, h_kv, n_k, dtype, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, H, n_q, D = shape_q
    mk = lambda h, n: torch.randn(B, h, n, D, generator=g).to(dtype).to(DEV).requires_grad_()  # noqa: E731
    return mk(H, n_q), mk(h_kv, n_k), mk(h_kv, n_k), torch.randn(B, H, n_q, D, generator=g).to(dtype).to(DEV)


def _run(fn, q, k, v, do, **kw):
    out = fn(q, k, v, **kw)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    return out, dq, dk, dv


def _math64(q, k, v, do, **kw):
    with sdpa_kernel(SDPBackend.MATH):
        leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
        return _run(F.scaled_dot_product_attention, *leaves, do.double(), **kw)


def _host(t):
    return t.detach().float().cpu().numpy() if t.dtype == torch.bfloat16 else t.detach().cpu().numpy()


SHAPES = [  # (B, H, Nq, D), H_kv, Nk
    ((2, 4, 128, 64), 4, 128), ((1, 3, 97, 40), 3, 97), ((2, 8, 257, 64), 2, 257), ((1, 4, 64, 128), 1, 64),
    ((2, 2, 1025, 64), 2, 1025), ((1, 2, 33, 16), 2, 65),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("shape,h_kv,n_k", SHAPES, ids=str)
def test_matches_sdpa_math_in_float64(shape, h_kv, n_k, dtype, causal):
    if causal and shape[2] != n_k:
        pytest.skip("SDPA aligns causal top-left, numba_flash bottom-right: compared where they agree (Nq == Nk)")
    q, k, v, do = _inputs(shape, h_kv, n_k, dtype, seed=shape[2] + n_k)
    gqa = h_kv != shape[1]
    out, dq, dk, dv = _run(nf_sdpa, q, k, v, do, is_causal=causal, enable_gqa=gqa)
    want = _math64(q, k, v, do, is_causal=causal, enable_gqa=gqa)
    # our float64 NumPy oracle is the same function as SDPA's MATH backend in float64 ...
    hq, hk, hv, hdo = (_host(t) for t in (q, k, v, do))
    ours64 = [ref.attention_forward(hq, hk, hv, causal=causal)[0], *ref.attention_backward(hdo, hq, hk, hv,
                                                                                          causal=causal)]
    for a, b in zip(ours64, want):
        np.testing.assert_allclose(a, b.detach().cpu().numpy(), rtol=1e-10, atol=1e-12)
    # ... so the kernels' bounds (2x a naive same-precision implementation + floor) apply unchanged
    lse = ref.attention_forward(hq, hk, hv, causal=causal)[1].astype(np.float32)  # lse is checked elsewhere
    check_against_oracle(hq, hk, hv, hdo, _host(out), lse, [_host(g) for g in (dq, dk, dv)], causal, (-1, -1), 0.0,
                         None)
    assert out.dtype == dtype and dq.dtype == dtype and dk.shape == k.shape


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape,h_kv,n_k", SHAPES[:5], ids=str)
def test_bfloat16_matches_sdpa_math_in_float64(shape, h_kv, n_k, causal):
    """bfloat16 runs natively on the tensor-core kernels: bounds of a naive bfloat16 implementation."""
    if causal and shape[2] != n_k:
        pytest.skip("SDPA aligns causal top-left, numba_flash bottom-right: compared where they agree (Nq == Nk)")
    q, k, v, do = _inputs(shape, h_kv, n_k, torch.bfloat16, seed=shape[2] + n_k + 1)
    gqa = h_kv != shape[1]
    out, dq, dk, dv = _run(nf_sdpa, q, k, v, do, is_causal=causal, enable_gqa=gqa)
    assert all(t.dtype == torch.bfloat16 for t in (out, dq, dk, dv))
    hq, hk, hv, hdo = (_host(t) for t in (q, k, v, do))
    lse = ref.attention_forward(hq, hk, hv, causal=causal)[1].astype(np.float32)
    check_against_oracle(hq, hk, hv, hdo, _host(out), lse, [_host(g) for g in (dq, dk, dv)], causal, (-1, -1), 0.0,
                         None, dtype=BF16)


@pytest.mark.parametrize("causal", [False, True])
def test_bfloat16_the_tensor_cores_cannot_read_runs_through_fp32_kernels(causal):
    q, k, v, do = _inputs((2, 4, 130, 64), 2, 130, torch.bfloat16, seed=7)
    # Rows 2 bytes off 16-byte alignment: the tensor-core kernels cannot copy them, the fp32 ones can.
    shifted = [torch.nn.functional.pad(t.detach(), (1, 0))[..., 1:].requires_grad_() for t in (q, k, v)]
    assert shifted[0].data_ptr() % 16 != 0
    out, dq, dk, dv = _run(nf_sdpa, *shifted, do, is_causal=causal, enable_gqa=True)
    want = _math64(q, k, v, do, is_causal=causal, enable_gqa=True)
    assert all(t.dtype == torch.bfloat16 for t in (out, dq, dk, dv))
    for got, w in zip((out, dq, dk, dv), want):
        w = w.detach()
        # fp32 kernels (error ~1e-6 relative) then one rounding to bf16: <= 2^-8 |x| per element
        tol = 2.0**-8 * w.abs() + 1e-4 * w.abs().max()
        assert bool(((got.double() - w).abs() <= tol).all())


def test_dropout_uses_our_mask_and_torch_seed():
    B, H, N, D, p = 2, 3, 77, 32, 0.3
    q, k, v, do = _inputs((B, H, N, D), H, N, torch.float32, seed=1)
    torch.manual_seed(1234)
    seed = draw_seed()
    torch.manual_seed(1234)
    out, dq, dk, dv = _run(nf_sdpa, q, k, v, do, dropout_p=p, is_causal=True)
    torch.manual_seed(1234)
    again = nf_sdpa(q, k, v, dropout_p=p, is_causal=True)
    assert torch.equal(out, again)  # torch.manual_seed makes dropout repeatable
    mask = nf.dropout_mask(seed, p, B, H, N, N).get()  # our mask function, run by the kernels' device code
    np.testing.assert_array_equal(mask, reference_keep_mask(seed, p, B, H, N, N))
    lse = ref.attention_forward(*(_host(t) for t in (q, k, v)), causal=True)[1].astype(np.float32)
    check_against_oracle(*(_host(t) for t in (q, k, v, do)), _host(out), lse, [_host(g) for g in (dq, dk, dv)], True,
                         (-1, -1), p, mask)


def test_saves_only_q_k_v_out_lse():
    q, k, v, _ = _inputs((1, 2, 64, 64), 2, 64, torch.float16, seed=2)
    out = nf_sdpa(q, k, v)
    saved = out.grad_fn.saved_tensors
    assert len(saved) == 5
    assert saved[4].dtype == torch.float32 and saved[4].shape == (1, 2, 64)  # lse: B*H*N, nothing N x N


def test_no_grad_and_inputs_without_grad():
    q, k, v, _ = _inputs((1, 2, 40, 64), 2, 40, torch.float16, seed=3)
    with torch.no_grad():
        a = nf_sdpa(q, k, v)
    assert not a.requires_grad
    b = nf_sdpa(q.detach(), k.detach(), v.detach())
    assert torch.equal(a, b) and not b.requires_grad


def test_non_contiguous_inputs_are_read_in_place():
    B, N, H, D = 2, 50, 4, 64
    g = torch.Generator().manual_seed(4)
    qkv = torch.randn(B, N, 3, H, D, generator=g).half().to(DEV).requires_grad_()
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, N, D) views, as a fused projection gives
    assert not q.is_contiguous()
    out = nf_sdpa(q, k, v, is_causal=True)
    out.float().square().sum().backward()
    grad_strided = qkv.grad.clone()
    qkv.grad = None
    q2, k2, v2 = (t.contiguous() for t in (qkv[:, :, i].transpose(1, 2) for i in range(3)))
    out2 = nf_sdpa(q2, k2, v2, is_causal=True)
    out2.float().square().sum().backward()
    assert torch.equal(out, out2) and torch.equal(grad_strided, qkv.grad)


def test_autocast_runs_in_the_autocast_dtype():
    q, k, v, _ = _inputs((1, 2, 64, 64), 2, 64, torch.float32, seed=5)
    with torch.autocast("cuda", dtype=torch.float16):
        out = nf_sdpa(q, k, v, is_causal=True)
        sdpa_out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert out.dtype == sdpa_out.dtype == torch.float16
    assert torch.equal(out, nf_sdpa(q.half(), k.half(), v.half(), is_causal=True))
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.float32


def test_runs_on_torchs_current_stream():
    q, k, v, do = _inputs((2, 4, 256, 64), 4, 256, torch.float16, seed=6)
    want = _run(nf_sdpa, q, k, v, do, is_causal=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = _run(nf_sdpa, q, k, v, do, is_causal=True)
    torch.cuda.current_stream().wait_stream(side)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_captured_in_a_cuda_graph():
    """torch.cuda.make_graphed_callables captures our forward and backward launches (raw
    cuLaunchKernel on torch's current stream, outputs from torch's allocator): replays on new data
    give what eager calls give, bit for bit (deterministic kernels)."""
    q, k, v, do = _inputs((2, 4, 192, 64), 4, 192, torch.float16, seed=8)
    graphed = torch.cuda.make_graphed_callables(lambda a, b, c: nf_sdpa(a, b, c, is_causal=True), (q, k, v))
    for seed in (9, 10):  # new values in the captured inputs' places: what a training loop does
        q2, k2, v2, do2 = _inputs((2, 4, 192, 64), 4, 192, torch.float16, seed=seed)
        want = _run(nf_sdpa, q2, k2, v2, do2, is_causal=True)
        got = _run(graphed, q2, k2, v2, do2)
        for a, b in zip(got, want):
            assert torch.equal(a, b)


@pytest.mark.parametrize("case,exc,words", [
    ("cpu", TypeError, "query: expected a CUDA tensor"),
    ("float64", TypeError, "dtype torch.float64 is not supported"),
    ("mask", ValueError, "attn_mask: not supported"),
    ("gqa_flag", ValueError, "needs enable_gqa=True"),
    ("ndim", ValueError, "expected 4 dimensions"),
    ("bad_heads", ValueError, "k, v: expected a number of heads that divides"),
])
def test_errors(case, exc, words):
    q, k, v, _ = _inputs((1, 4, 16, 32), 4, 16, torch.float16, seed=8)
    kw = {}
    if case == "cpu":
        q = q.detach().cpu()
    elif case == "float64":
        q, k, v = (t.double() for t in (q, k, v))
    elif case == "mask":
        kw["attn_mask"] = torch.ones(16, 16, dtype=torch.bool, device=DEV)
    elif case == "gqa_flag":
        k, v = k[:, :2], v[:, :2]
    elif case == "ndim":
        q = q[0]
    elif case == "bad_heads":
        k, v = k[:, :3], v[:, :3]
        kw["enable_gqa"] = True
    with pytest.raises(exc, match=words):
        nf_sdpa(q, k, v, **kw)
