"""Launch plans (numba_flash.plan) and the API's plan cache: a repeat call skips the checks, so the
cache key must hold everything the checks and choices depend on."""

from __future__ import annotations

import gc
import importlib
import weakref

import numpy as np
import pytest

import numba_flash as nf
from numba_flash import BlockConfig, TensorCoreConfig, api, reference
from numba_flash.plan import Plan, PlanCache

from helpers import ON_GPU, random_qkv, to_device, to_host

tune_mod = importlib.import_module("numba_flash.tune")


def dev(*arrays):
    return [to_device(a) for a in arrays]


def _error(q, k, v, do, out, lse):
    """Worst gap to the float64 oracle over out, dq, dk, dv (float32 inputs)."""
    want_out, want_lse = reference.attention_forward(*(to_host(a) for a in (q, k, v)))
    grads = reference.attention_backward(*(to_host(a) for a in (do, q, k, v)))
    return max(float(np.max(np.abs(to_host(out) - want_out))),
               *(float(np.max(np.abs(to_host(g) - w))) for g, w in zip(nf.flash_attention_backward(
                   do, q, k, v, out, lse), grads)))


def test_a_repeat_call_reuses_the_plan_and_is_right(rng):
    shape = (1, 2, 11, 7, 16)
    first = dev(*random_qkv(rng, *shape, np.float32))
    out, lse = nf.flash_attention(*first[:3], return_lse=True)
    assert _error(*first, out, lse) < 1e-5
    plans = len(api._PLANS)
    key, _ = api._call_key("forward", first[:3], (False, None, (-1, -1), 0.0, True, None, False))
    assert api._PLANS.get(key) is not None
    second = dev(*random_qkv(rng, *shape, np.float32))  # new data, same kind of call: the cached plan
    out2, lse2 = nf.flash_attention(*second[:3], return_lse=True)
    assert len(api._PLANS) == plans
    assert _error(*second, out2, lse2) < 1e-5  # 1e-5: float32 on O(1) values; the oracle test derives bounds
    assert not np.allclose(to_host(out), to_host(out2))


def test_each_kind_of_call_gets_its_own_plan(rng):
    q, k, v, _ = dev(*random_qkv(rng, 1, 1, 9, 9, 16, np.float32))
    nf.flash_attention(q, k, v)
    before = len(api._PLANS)
    for kw in ({"causal": True}, {"window_size": (2, 1)}, {"softmax_scale": 0.5},
               {"dropout_p": 0.25, "seed": 3}, {"config": BlockConfig(8, 8, 16)}):
        nf.flash_attention(q, k, v, **kw)
    q2 = dev(*random_qkv(rng, 1, 1, 10, 9, 16, np.float32))[0]
    nf.flash_attention(q2, k, v)
    assert len(api._PLANS) == before + 6


def test_the_float32_chains_are_part_of_the_plan_key(rng, monkeypatch):
    """config.TF32_CHAIN and TF32_PV_CHAIN pick different float32 kernels: a plan made before they change
    is not reused after (the kernel factories are keyed by them too; tests/test_tc.py)."""
    from numba_flash import config

    q, k, v, _ = dev(*random_qkv(rng, 1, 1, 9, 9, 16, np.float32))
    nf.flash_attention(q, k, v)
    options = (False, None, (-1, -1), 0.0, True, None, False)
    before, _ = api._call_key("forward", (q, k, v), options)
    assert before is not None and api._PLANS.get(before) is not None
    chain, pv_chain = config.TF32_CHAIN, config.TF32_PV_CHAIN
    monkeypatch.setattr(config, "TF32_CHAIN", chain + 1)
    after, _ = api._call_key("forward", (q, k, v), options)
    assert after != before and api._PLANS.get(after) is None
    monkeypatch.setattr(config, "TF32_CHAIN", chain)
    monkeypatch.setattr(config, "TF32_PV_CHAIN", pv_chain + 1)
    assert api._call_key("forward", (q, k, v), options)[0] not in (before, after)


@pytest.mark.parametrize("kw,exc,words", [
    ({"causal": 1}, TypeError, "causal"),
    ({"window_size": (-1.0, -1)}, TypeError, "window_size"),
    ({"window_size": [-1, -1]}, None, None),  # unhashable: takes the checked path, and a list is fine there
    ({"dropout_p": 0.25, "seed": None}, ValueError, "seed"),
    ({"dropout_p": 0.25, "seed": -1}, ValueError, "seed"),
    ({"dropout_p": 0.25, "seed": 1.0}, TypeError, "seed"),
    ({"softmax_scale": float("nan")}, ValueError, "softmax_scale"),
    ({"bfloat16": 0}, TypeError, "bfloat16"),
])
def test_checks_still_run_after_a_good_call_was_cached(rng, kw, exc, words):
    q, k, v, _ = dev(*random_qkv(rng, 1, 1, 6, 6, 8, np.float32))
    good = {"causal": True, "window_size": (-1, -1), "dropout_p": 0.25, "seed": 5, "softmax_scale": 0.3,
            "bfloat16": False}
    nf.flash_attention(q, k, v, **good)  # cached: a key equal (==, hash) to the bad call's but for types
    bad = {**good, **kw}
    if exc is None:
        nf.flash_attention(q, k, v, **bad)
        return
    with pytest.raises(exc, match=words):
        nf.flash_attention(q, k, v, **bad)


def test_dropout_seed_changes_per_call_through_a_cached_plan(rng):
    q, k, v, _ = dev(*random_qkv(rng, 1, 1, 12, 12, 8, np.float32))
    a = to_host(nf.flash_attention(q, k, v, dropout_p=0.5, seed=1))
    b = to_host(nf.flash_attention(q, k, v, dropout_p=0.5, seed=2))
    a_again = to_host(nf.flash_attention(q, k, v, dropout_p=0.5, seed=1))
    np.testing.assert_array_equal(a, a_again)
    assert not np.array_equal(a, b)
    for seed, got in ((1, a), (2, b)):
        mask = to_host(nf.dropout_mask(seed, 0.5, 1, 1, 12, 12))
        want, _ = reference.attention_forward(*(to_host(x) for x in (q, k, v)), dropout_p=0.5, dropout_mask=mask)
        assert np.max(np.abs(got - want)) < 1e-5


def test_plans_do_not_keep_the_callers_arrays(rng):
    if ON_GPU:
        pytest.skip("CuPy arrays are not weak-referenceable; the plan code is shared by both backends")
    q, k, v, do = random_qkv(rng, 1, 1, 5, 5, 8, np.float32)
    out, lse = nf.flash_attention(q, k, v, return_lse=True)
    nf.flash_attention_backward(do, q, k, v, out, lse)
    refs = [weakref.ref(a) for a in (q, k, v, do, out, lse)]
    del q, k, v, do, out, lse
    gc.collect()
    assert all(r() is None for r in refs)


def test_a_changed_tuning_cache_is_seen_by_cached_calls(rng, monkeypatch, tmp_path):
    """A cached plan notices a new tuning-cache entry. On the GPU float32's config=None runs the
    tensor-core kernels, whose tuned configs are TensorCoreConfigs; on the simulator the portable ones."""
    monkeypatch.setenv(tune_mod.CACHE_ENV, str(tmp_path / "tuning.json"))
    D, n = 16, 8
    q, k, v, _ = dev(*random_qkv(rng, 1, 1, n, n, D, np.float32))
    used = []
    if ON_GPU:
        tc_forward = importlib.import_module("numba_flash.tc_forward")
        owner, name, tuned = tc_forward, "tc_forward_kernel", TensorCoreConfig(16, 16, 1)
    else:
        owner, name, tuned = api, "forward_kernel", BlockConfig(8, 8, 64)
    real = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda cfg, *rest: used.append(cfg) or real(cfg, *rest))
    nf.flash_attention(q, k, v)
    assert used and used[-1] != tuned
    tune_mod.store(D, np.float32, False, n, "forward", tuned)
    nf.flash_attention(q, k, v)
    assert used[-1] == tuned


def test_plan_cache_is_bounded():
    cache = PlanCache(limit=3)
    for i in range(10):
        cache.put(i, Plan(()))
    assert len(cache) <= 3 and cache.get(9) is not None


def test_plan_views_give_output_metadata_without_memory():
    plan = Plan([np.zeros((4, 2, 8), np.float16)])
    j = plan.output((4, 2, 8), np.float16)
    packed = api._packed
    out = plan.out(j, packed)
    real = packed(np.empty((4, 2, 8), np.float16))
    assert out.example.shape == real.shape == (1, 2, 4, 8) and out.example.strides == real.strides
    assert plan.inp(0, packed).example.strides == real.strides
    assert plan.inp(0).example.base is not None  # a stand-in over one element, not a copy


@pytest.mark.skipif(not ON_GPU, reason="prepared launches (the GPU path of a plan) need the GPU; the simulator runs "
                                       "plans through numba's launch")
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_gpu_parameter_template_matches_the_arguments(rng, monkeypatch, dtype):
    """The packed template with this call's addresses filled in equals the flattened arguments."""
    from numba_flash import launch

    q, k, v, do = dev(*random_qkv(rng, 1, 2, 33, 17, 64, dtype))
    seen, runs = [], []
    real = launch._Prepared.launch_values
    monkeypatch.setattr(launch._Prepared, "launch_values",
                        lambda self, grid, block, stream, values, shared=0: seen.append((self, list(values)))
                        or real(self, grid, block, stream, values, shared))
    real_execute = api._execute

    def execute(plan, inputs, extras, in_ptrs=None):
        outputs = real_execute(plan, inputs, extras, in_ptrs)
        runs.append((plan, inputs, outputs, extras))
        return outputs

    monkeypatch.setattr(api, "_execute", execute)
    for _ in range(2):  # the first call makes the plans, the second takes them from the cache
        seen.clear(), runs.clear()
        out, lse = nf.flash_attention(q, k, v, causal=True, dropout_p=0.2, seed=7, return_lse=True)
        nf.flash_attention_backward(do, q, k, v, out, lse, causal=True, dropout_p=0.2, seed=7)
        launched = [(run, step, spec) for run in runs for step, spec in zip(run[0]._gpu, run[0].launches)]
        assert len(seen) == len(launched) == 4  # forward; delta, dK/dV, dQ
        for (p, values), ((plan, inputs, outputs, extras), step, spec) in zip(seen, launched):
            assert p is step[0]
            assert values == p.values(plan.arguments(spec[4], inputs, outputs, extras))


@pytest.mark.skipif(not ON_GPU, reason="the driver launch modes exist on the GPU only")
def test_gpu_launch_modes_give_identical_results(rng, monkeypatch):
    """Parameters as one packed buffer (``extra``) or one pointer each: the same launch, bit for
    bit, and the driver takes the packed buffer (no fallback)."""
    from numba_flash import launch

    q, k, v, do = dev(*random_qkv(rng, 1, 2, 70, 45, 64, np.float16))
    got = []
    for buffer in (False, True):
        monkeypatch.setattr(launch, "PARAM_BUFFER", buffer)
        out, lse = nf.flash_attention(q, k, v, causal=True, return_lse=True)
        got.append([to_host(a) for a in (out, lse, *nf.flash_attention_backward(do, q, k, v, out, lse, causal=True))])
    for a, b in zip(*got):
        np.testing.assert_array_equal(a, b)
    assert all(p.by_buffer for p in launch._PREPARED.values())
