"""experiments/bench_features.py: its --smoke run times every scenario end to end, spot-checks each
against the float64 oracle and writes complete results; its exact counts (visible pairs, tiles,
varlen lengths) are right."""

import importlib.util
import json
import math

import numpy as np
import pytest

from numba_flash import reference

from helpers import ON_GPU, load_experiment


@pytest.fixture(scope="module")
def bench_features():
    return load_experiment("bench_features")


@pytest.fixture(scope="module")
def smoke(bench_features, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_features")
    # No time budget: on a GPU the first calls compile kernels (minutes under load), and the default
    # --max-total then skips scenarios, which the checks below need measured
    assert bench_features.main(["--smoke", "--max-total", "0", "--out", str(out)]) == 0
    return out, json.loads((out / "bench_features.json").read_text())


@pytest.mark.parametrize("n_q, n_k", [(7, 7), (5, 9), (9, 5), (1, 4)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [(-1, -1), (0, 0), (2, -1), (-1, 1), (3, 2), (20, 20)])
def test_visible_pairs_match_the_oracle_mask(bench_features, n_q, n_k, causal, window):
    want = int(reference.visibility_mask(n_q, n_k, causal, window).sum())
    assert bench_features.visible_pairs(n_q, n_k, causal, window) == want


def test_tile_fraction(bench_features):
    f = bench_features.tile_fraction
    assert f(64, 64, 16, 16, False, (-1, -1)) == 1.0
    assert f(64, 64, 16, 16, True, (-1, -1)) == 10 / 16  # the lower triangle of 4 x 4 tiles
    # a (0, 0) window: only the diagonal tiles
    assert f(64, 64, 16, 16, False, (0, 0)) == 4 / 16
    # every visible pair lies in a visited tile
    for window in [(5, 5), (17, -1), (-1, 3)]:
        mask = reference.visibility_mask(64, 64, True, window)
        tiles = mask.reshape(4, 16, 4, 16).any(axis=(1, 3))
        assert f(64, 64, 16, 16, True, window) >= tiles.mean()


def test_varlen_lengths(bench_features):
    lengths = bench_features.varlen_lengths(16384, 128, 4096, 0)
    assert lengths == bench_features.varlen_lengths(16384, 128, 4096, 0)  # fixed seed
    assert all(128 <= n <= 4096 for n in lengths)
    assert 16384 - 128 < sum(lengths) <= 16384


def test_smoke_run(bench_features, smoke):
    out, data = smoke
    assert data["environment"]["device"]
    assert set(data["scenarios"]) == set(bench_features.SCENARIOS)
    records = data["records"]
    for name, sc in data["scenarios"].items():
        check = sc["check"]
        assert check["ok"], (name, check)
        assert check["variants"] and check["max_rel_err"] <= check["tolerance"] <= 1e-2
        for variant in check["variants"]:
            assert set(variant["errors"]) == {"out", "lse", "dq", "dk", "dv"}
            assert all(math.isfinite(e) and e < 1e-4 for e in variant["errors"].values()), variant  # float32
        ours = [r for r in records if r["scenario"] == name and r["impl"] == "numba_flash"]
        assert {r["pass"] for r in ours} == {"forward", "forward_backward"}, name
        for r in ours:
            assert r["status"] == "ok", r
            assert math.isfinite(r["ms"]) and r["ms"] > 0 and r["tflops"] > 0, r
            assert r["flops"] > 0 and r["flops_executed"] >= r["flops"] and r["checked"], r
            if r["pass"] == "forward_backward":
                assert r["flops"] == pytest.approx(3.5 * next(
                    x["flops"] for x in ours if x["label"] == r["label"] and x["pass"] == "forward"))
        assert sc["summary"], name
    md = (out / "bench_features.md").read_text()
    for title in bench_features.TITLES.values():
        assert f"## {title}" in md
    assert "spot check vs float64 oracle" in md and "OK" in md and "FAILED" not in md
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "bench_features_window.png").stat().st_size > 0
        assert (out / "bench_features_overview.png").stat().st_size > 0
        assert "bench_features_window.png" in md


def test_smoke_scenarios(smoke):
    _, data = smoke
    records = data["records"]
    N = data["settings"]["seqlen"]
    # window: exact band fractions, each window compared with its baseline
    win = [r for r in records if r["scenario"] == "window"]
    full = next(r for r in win if r["label"] == "full")
    assert full["band_fraction"] == 1.0 and full["flops"] == 4.0 * full["shape"]["B"] * full["shape"]["H"] * N * N * 16
    for r in win:
        want = reference.visibility_mask(N, N, r["causal"], tuple(r["window"])).mean()
        assert r["band_fraction"] == pytest.approx(want)
        assert math.isfinite(r["time_over_band"]) and r["speedup"] > 0
    # gqa: K/V memory shrinks with the kv heads; torch is compared or skipped with a reason
    gqa = [r for r in records if r["scenario"] == "gqa" and r["impl"] == "numba_flash"]
    assert len({r["kv_heads"] for r in gqa}) >= 2
    for r in gqa:
        assert r["kv_bytes"] == 2 * r["shape"]["B"] * r["kv_heads"] * N * 16 * 4
    sdpa = [r for r in records if r["scenario"] in ("gqa", "dropout") and r["impl"] != "numba_flash"]
    assert sdpa
    if not ON_GPU:
        assert all(r["status"] == "skipped" and r["reason"] for r in sdpa)
        assert "not compared" in data["torch"]
    # dropout: p = 0 and p > 0, overhead relative to p = 0
    drop = [r for r in records if r["scenario"] == "dropout" and r["impl"] == "numba_flash"]
    assert {r["dropout_p"] for r in drop} == {0.0, 0.1}
    assert all("dropout_overhead" in r for r in drop)
    # varlen: 2-3 short packed sequences vs padded, the same useful FLOPs, padding executes more
    sc = data["scenarios"]["varlen"]
    assert 2 <= sc["n_seq"] <= 3 and sum(sc["lengths"]) == sc["total_tokens"]
    var = [r for r in records if r["scenario"] == "varlen"]
    assert {(r["layout"], r["causal"]) for r in var} == {(a, c) for a in ("packed", "padded") for c in (False, True)}
    for r in var:
        pairs = sum(int(reference.visibility_mask(n, n, r["causal"]).sum()) for n in sc["lengths"])
        assert r["flops"] == pytest.approx(
            4.0 * 2 * 16 * pairs * (1 if r["pass"] == "forward" else 3.5))  # H=2, D=16
        assert r["padded_over_packed"] > 0
        if r["layout"] == "padded":
            assert r["flops_executed"] > r["flops"]
    # combined: every feature in the last row
    comb = [r for r in records if r["scenario"] == "combined"]
    last = max(comb, key=lambda r: r["step"])
    assert last["options"]["causal"] and last["options"]["dropout_p"] > 0
    assert last["options"]["window_size"][0] >= 0 and last["kv_heads"] < last["shape"]["H"]
    assert all("speedup_vs_causal" in r for r in comb)
    assert np.isfinite([r["ms"] for r in comb]).all()
