"""The API layer: every kind of bad input gets a clear error; inputs are never modified."""

import re

import numpy as np
import pytest

import numba_flash as nf
from numba_flash import BlockConfig, api, backend
from numba_flash.config import STATIC_SHARED_LIMIT, default_config
from numba_flash.forward import forward_kernel

from helpers import ON_GPU, random_qkv, to_device, to_host


def dev(*arrays):
    return [to_device(a) for a in arrays]


@pytest.fixture
def qkv(rng):
    q, k, v, do = random_qkv(rng, 1, 2, 5, 6, 16, np.float32)
    return dev(q, k, v, do)


def fwd_bwd_args(q, k, v, do):
    out, lse = nf.flash_attention(q, k, v, return_lse=True)
    return out, lse


BAD_FORWARD = [
    # (what to change, exception, words the message must contain)
    ("q_ndim", ValueError, "q: expected 4 dimensions"),
    ("k_batch", ValueError, "k: expected batch and head_dim to match q"),
    ("v_heads", ValueError, "k, v: expected the same shape"),
    ("k_head_dim", ValueError, "k: expected batch and head_dim to match q"),
    ("kv_len", ValueError, "k, v: expected the same shape"),
    ("gqa_heads", ValueError, "k, v: expected a number of heads that divides q's 2"),
    ("window_int", TypeError, "window_size: expected a pair"),
    ("window_float", TypeError, "window_size: expected a pair"),
    ("window_below_minus_one", ValueError, "window_size: expected each side >= 0, or -1"),
    ("dropout_one", ValueError, "dropout_p: expected a number in [0, 1)"),
    ("dropout_str", TypeError, "dropout_p: expected a real number"),
    ("dropout_no_seed", ValueError, "seed: dropout_p > 0 needs a seed"),
    ("seed_negative", ValueError, "seed: expected an int in [0, 2**64)"),
    ("seed_too_big", ValueError, "seed: expected an int in [0, 2**64)"),
    ("seed_float", TypeError, "seed: expected an int"),
    ("mixed_dtype", TypeError, "q, k, v: expected one dtype"),
    ("float64", TypeError, "float64 is not supported; expected float16 or float32"),
    ("int32", TypeError, "int32 is not supported"),
    ("head_dim_12", ValueError, "head_dim: expected a multiple of 8"),
    ("head_dim_264", ValueError, "head_dim: expected a multiple of 8"),
    ("zero_len", ValueError, "every dimension must be at least 1"),
    ("zero_batch", ValueError, "every dimension must be at least 1"),
    ("scale_zero", ValueError, "softmax_scale"),
    ("scale_negative", ValueError, "softmax_scale"),
    ("scale_nan", ValueError, "softmax_scale"),
    ("scale_inf", ValueError, "softmax_scale"),
    ("scale_str", TypeError, "softmax_scale"),
    ("causal_str", TypeError, "causal: expected a bool"),
    ("config_tuple", TypeError, "config: expected a numba_flash.BlockConfig"),
    ("config_too_big", ValueError, "shared memory"),
    ("wrong_place", TypeError, "q:"),
]


def make_bad(case, rng):
    q, k, v, _ = random_qkv(rng, 1, 2, 5, 6, 16, np.float32)
    kw = {}
    if case == "q_ndim":
        q = q[0]
    elif case == "k_batch":
        k = np.concatenate([k, k])
    elif case == "v_heads":
        v = v[:, :1]
    elif case == "k_head_dim":
        k = np.concatenate([k, k], axis=3)
    elif case == "kv_len":
        v = v[:, :, :4]
    elif case == "mixed_dtype":
        k = k.astype(np.float16)
    elif case == "float64":
        q, k, v = (a.astype(np.float64) for a in (q, k, v))
    elif case == "int32":
        q, k, v = (a.astype(np.int32) for a in (q, k, v))
    elif case.startswith("head_dim"):
        d = int(case.rsplit("_", 1)[1])
        q, k, v = (rng.standard_normal((1, 1, 3, d)).astype(np.float32) for _ in range(3))
    elif case == "zero_len":
        k, v = k[:, :, :0], v[:, :, :0]
    elif case == "zero_batch":
        q, k, v = q[:0], k[:0], v[:0]
    elif case.startswith("scale_"):
        kw["softmax_scale"] = {"scale_zero": 0.0, "scale_negative": -1.0, "scale_nan": float("nan"),
                               "scale_inf": float("inf"), "scale_str": "0.5"}[case]
    elif case == "causal_str":
        kw["causal"] = "yes"
    elif case == "gqa_heads":
        k, v = (np.concatenate([a, a[:, :1]], axis=1) for a in (k, v))
    elif case.startswith("window_"):
        kw["window_size"] = {"window_int": 3, "window_float": (1.5, 0), "window_below_minus_one": (-2, 0)}[case]
    elif case.startswith("dropout_") or case.startswith("seed_"):
        kw["dropout_p"] = {"dropout_one": 1.0, "dropout_str": "0.1"}.get(case, 0.1)
        kw["seed"] = {"seed_negative": -1, "seed_too_big": 2**64, "seed_float": 1.0, "dropout_no_seed": None}.get(case, 1)
    elif case == "config_tuple":
        kw["config"] = (32, 32, 128)
    elif case == "config_too_big":
        q, k, v = (rng.standard_normal((1, 1, 3, 256)).astype(np.float32) for _ in range(3))
        kw["config"] = BlockConfig(64, 64, 256)
    if case == "wrong_place":
        # the other backend's array type: host arrays on a GPU, a device-array look-alike on the simulator
        return (q, k, v) if ON_GPU else (_FakeDeviceArray(q), k, v), kw
    return dev(q, k, v), kw


class _FakeDeviceArray:
    def __init__(self, a):
        self.a = a

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.a.shape, "typestr": self.a.dtype.str, "data": (0, False), "version": 3}


@pytest.mark.parametrize("case,exc,words", BAD_FORWARD, ids=[c[0] for c in BAD_FORWARD])
def test_forward_rejects_bad_input(rng, case, exc, words):
    args, kw = make_bad(case, rng)
    with pytest.raises(exc, match=re.escape(words)):
        nf.flash_attention(*args, **kw)


BAD_BACKWARD = [
    ("dout_shape", ValueError, "dout: expected the shape of q"),
    ("dout_dtype", TypeError, "dout: expected the dtype of q"),
    ("out_shape", ValueError, "out: expected the shape of q"),
    ("lse_shape", ValueError, "lse: expected shape"),
    ("lse_dtype", TypeError, "lse: expected float32"),
    ("k_heads", ValueError, "k, v: expected a number of heads that divides"),
    ("dropout_no_seed", ValueError, "seed: dropout_p > 0 needs a seed"),
    ("config_bad_threads", ValueError, "num_threads"),
]


@pytest.mark.parametrize("case,exc,words", BAD_BACKWARD, ids=[c[0] for c in BAD_BACKWARD])
def test_backward_rejects_bad_input(rng, case, exc, words):
    q, k, v, do = random_qkv(rng, 1, 2, 5, 6, 16, np.float32)
    out, lse = nf.flash_attention(*dev(q, k, v), return_lse=True)
    out, lse = to_host(out), to_host(lse)
    kw = {}
    if case == "dout_shape":
        do = do[:, :, :3]
    elif case == "dout_dtype":
        do = do.astype(np.float16)
    elif case == "out_shape":
        out = out[:, :1]
    elif case == "lse_shape":
        lse = lse[..., None]
    elif case == "lse_dtype":
        lse = lse.astype(np.float16)
    elif case == "k_heads":
        k, v = (np.concatenate([a, a[:, :1]], axis=1) for a in (k, v))
    elif case == "dropout_no_seed":
        kw["dropout_p"] = 0.5
    elif case == "config_bad_threads":
        # fine for the forward pass (16 threads = 8 rows x 2), but 16 is not block_n=32 x 1/2/4/8
        kw["config"] = BlockConfig(8, 32, 16)
    with pytest.raises(exc, match=words):
        nf.flash_attention_backward(*dev(do, q, k, v, out, lse), **kw)


def _packed_problem(rng, lengths=(3, 0, 5)):
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    q, k, v = (rng.standard_normal((int(cu[-1]), 2, 8)).astype(np.float32) for _ in range(3))
    return q, k, v, cu, max(lengths)


BAD_VARLEN = [
    ("q_4d", ValueError, "q: expected 3 dimensions (total_seqlen, heads, head_dim)"),
    ("cu_int64", TypeError, "cu_seqlens_q: expected dtype int32"),
    ("cu_list", TypeError, "cu_seqlens_k:"),
    ("cu_2d", ValueError, "cu_seqlens_q: expected a 1-D array"),
    ("cu_start", ValueError, "cu_seqlens_q: expected the first offset to be 0"),
    ("cu_decreasing", ValueError, "cu_seqlens_k: offsets must not decrease"),
    ("cu_total", ValueError, "cu_seqlens_q: the last offset must equal the packed length 8"),
    ("cu_count", ValueError, "cu_seqlens_q, cu_seqlens_k: expected the same number of sequences"),
    ("max_small", ValueError, "max_seqlen_q: got 4, but the longest sequence has 5"),
    ("max_float", TypeError, "max_seqlen_k: expected an int"),
    ("gqa_heads", ValueError, "k, v: expected a number of heads that divides"),
]


@pytest.mark.parametrize("case,exc,words", BAD_VARLEN, ids=[c[0] for c in BAD_VARLEN])
def test_varlen_rejects_bad_input(rng, case, exc, words):
    q, k, v, cu, longest = _packed_problem(rng)
    cu_q, cu_k, max_q, max_k = cu, cu.copy(), longest, longest
    if case == "q_4d":
        q = q[None]
    elif case == "cu_int64":
        cu_q = cu_q.astype(np.int64)
    elif case == "cu_list":
        cu_k = [0, 3, 3, 8]
    elif case == "cu_2d":
        cu_q = cu_q[None]
    elif case == "cu_start":
        cu_q = cu_q + 1
    elif case == "cu_decreasing":
        cu_k = np.array([0, 6, 3, 8], np.int32)
    elif case == "cu_total":
        cu_q = np.array([0, 3, 3, 7], np.int32)
    elif case == "cu_count":
        cu_k = np.array([0, 8], np.int32)
    elif case == "max_small":
        max_q = 4
    elif case == "max_float":
        max_k = 5.0
    elif case == "gqa_heads":
        k, v = (np.concatenate([a, a[:, :1]], axis=1) for a in (k, v))
    args = dev(q, k, v) + [to_device(c) if isinstance(c, np.ndarray) else c for c in (cu_q, cu_k)]
    with pytest.raises(exc, match=re.escape(words)):
        nf.flash_attention_varlen(*args, max_q, max_k)


def test_varlen_backward_checks_lse_and_keeps_inputs(rng):
    q, k, v, cu, longest = _packed_problem(rng)
    args = dev(q, k, v, cu, cu)
    before = [to_host(a).copy() for a in args]
    out, lse = nf.flash_attention_varlen(*args, longest, longest, return_lse=True, causal=True)
    with pytest.raises(ValueError, match=r"lse: expected shape \(heads, total_q\)"):
        nf.flash_attention_varlen_backward(args[0], *args[:3], out, lse[:, :-1], *args[3:], longest, longest)
    nf.flash_attention_varlen_backward(args[0], *args[:3], out, lse, *args[3:], longest, longest, causal=True)
    for a, b in zip(args, before):
        np.testing.assert_array_equal(to_host(a), b)


def test_inputs_are_not_modified(rng):
    host = random_qkv(rng, 2, 2, 9, 7, 16, np.float16)
    arrays = dev(*host)
    before = [to_host(a).copy() for a in arrays]
    q, k, v, do = arrays
    out, lse = nf.flash_attention(q, k, v, causal=True, return_lse=True)
    out_before, lse_before = to_host(out).copy(), to_host(lse).copy()
    nf.flash_attention_backward(do, q, k, v, out, lse, causal=True)
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(to_host(a), b)
    np.testing.assert_array_equal(to_host(out), out_before)
    np.testing.assert_array_equal(to_host(lse), lse_before)


def test_non_contiguous_inputs_work(rng):
    # (B, N, H, D) storage seen as (B, H, N, D), as a model's fused QKV projection produces it;
    # k, v also every other row of a longer sequence.
    B, N, H, D = 2, 9, 3, 16
    packed = rng.standard_normal((B, N, 3, H, D)).astype(np.float32)
    long_kv = rng.standard_normal((2, B, H, 2 * N, D)).astype(np.float32)
    d_packed, d_long = dev(packed, long_kv)
    q = d_packed[:, :, 0].transpose(0, 2, 1, 3)
    k, v = d_long[0][:, :, ::2], d_long[1][:, :, ::2]
    assert not q.flags.c_contiguous and not k.flags.c_contiguous
    do = to_device(rng.standard_normal((B, H, N, D)).astype(np.float32))
    out, lse = nf.flash_attention(q, k, v, return_lse=True)
    grads = nf.flash_attention_backward(do, q, k, v, out, lse)
    contiguous = [to_device(np.ascontiguousarray(to_host(a))) for a in (q, k, v)]
    out_c, lse_c = nf.flash_attention(*contiguous, return_lse=True)
    grads_c = nf.flash_attention_backward(do, *contiguous, out_c, lse_c)
    np.testing.assert_array_equal(to_host(out), to_host(out_c))
    for g, gc in zip(grads, grads_c):
        np.testing.assert_array_equal(to_host(g), to_host(gc))


def test_no_n_by_n_buffer_is_allocated(rng, monkeypatch):
    """Every array the API allocates is O(N*D) or O(N), never Nq x Nk."""
    shapes = []
    real_empty = api._empty
    monkeypatch.setattr(api, "_empty", lambda shape, dtype: shapes.append(tuple(shape)) or real_empty(shape, dtype))
    n_q, n_k = 40, 48
    q, k, v, do = dev(*random_qkv(rng, 1, 1, n_q, n_k, 8, np.float32))
    out, lse = nf.flash_attention(q, k, v, return_lse=True)
    nf.flash_attention_backward(do, q, k, v, out, lse)
    assert shapes and all(int(np.prod(s)) < n_q * n_k for s in shapes), shapes


def test_block_config_validation():
    with pytest.raises(ValueError, match="block_m: expected a positive int"):
        BlockConfig(0, 32, 128)
    with pytest.raises(ValueError, match="num_threads"):
        BlockConfig(32, 32, 100)
    with pytest.raises(ValueError, match="at most 1024"):
        BlockConfig(32, 32, 2048)
    with pytest.raises(ValueError, match="must be a multiple of 4"):
        BlockConfig(32, 6, 128)  # 4 threads per row cannot split 6 keys
    with pytest.raises(ValueError, match="reduce block_m or block_n"):
        BlockConfig(64, 64, 256).validate(128)
    with pytest.raises(ValueError, match="head_dim"):
        BlockConfig(8, 8, 64).validate(12)
    cfg = BlockConfig(16, 16, 64)
    with pytest.raises(Exception):
        cfg.block_m = 8  # frozen
    assert cfg.BLOCK_M == 16 and cfg.BLOCK_N == 16
    assert cfg.shared_memory_bytes(64, "forward") == 4 * (16 * 65 * 3 + 16 * 17 + 2 * 16 * 4)


@pytest.mark.parametrize("pass_", ["forward", "backward"])
@pytest.mark.parametrize("simulator", [False, True])
def test_default_configs_fit_every_head_dim(pass_, simulator):
    for D in range(8, 257, 8):
        cfg = default_config(D, np.float32, pass_, simulator)
        assert cfg.validate(D, pass_) is cfg
        kernels = ("forward",) if pass_ == "forward" else ("dq", "dkdv")
        assert all(cfg.shared_memory_bytes(D, kern) <= STATIC_SHARED_LIMIT for kern in kernels)


def test_kernels_are_compiled_once_per_configuration():
    cfg = BlockConfig(8, 8, 16)
    assert forward_kernel(cfg, 16, True) is forward_kernel(BlockConfig(8, 8, 16), 16, True)
    assert forward_kernel(cfg, 16, True) is not forward_kernel(cfg, 16, False)


def test_simulator_warns_once():
    if ON_GPU:
        pytest.skip("the warning is only given on the simulator backend")
    backend._warned = False
    with pytest.warns(RuntimeWarning, match="simulator"):
        backend.warn_if_simulated()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend.warn_if_simulated()  # second call: silent


def test_backend_environment_variable_is_checked(monkeypatch):
    monkeypatch.setenv("NUMBA_FLASH_BACKEND", "tpu")
    with pytest.raises(ValueError, match="NUMBA_FLASH_BACKEND"):
        backend._choose()
    monkeypatch.setenv("NUMBA_FLASH_BACKEND", "gpu" if ON_GPU else "simulator")
    assert backend._choose() == backend.BACKEND
