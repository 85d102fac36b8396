"""The IO model (numba_flash.io_model) against hand counts, the ncu CSV parsing, and smoke runs of
experiments/hbm_traffic.py and experiments/memory_scaling.py."""

from __future__ import annotations

import json

import pytest

from numba_flash import BlockConfig, io_model

from helpers import load_experiment

# ------------------------------------------------------------------ model of our kernels, by hand

def test_forward_single_block_reads_each_tensor_once():
    # N = BLOCK_M = BLOCK_N: one query block, one K/V tile: Q, K, V read once; out and lse written once
    B, H, N, D = 2, 3, 16, 16
    cfg = BlockConfig(16, 16, 64)
    f = io_model.flash_attention(B, H, N, N, D, "float16", config=cfg, backward_config=cfg)["forward"]
    assert f["bytes_read"] == B * H * 3 * N * D * 2
    assert f["bytes_written"] == B * H * (N * D * 2 + N * 4)
    assert f["bytes_read"] == f["bytes_read_compulsory"]
    assert f["flops"] == B * H * 4 * N * N * D
    assert list(f["kernels"]) == ["forward"]


def test_forward_rereads_kv_once_per_query_block():
    B, H, N, D, e = 1, 2, 256, 64, 4
    for bm, bn in ((16, 8), (32, 16), (64, 32)):
        f = io_model.flash_attention(B, H, N, N, D, "float32", config=BlockConfig(bm, bn, bm * 4))["forward"]
        # N d (Q) + (N / BLOCK_M) * 2 N d (K, V per query block), whatever BLOCK_N is
        assert f["bytes_read"] == B * H * e * (N * D + (N // bm) * 2 * N * D)
        assert f["bytes_read_compulsory"] == B * H * e * 3 * N * D
    # the traffic knob of a Q-stationary forward is BLOCK_M, not BLOCK_N
    a = io_model.flash_attention(1, 1, 512, 512, 64, config=BlockConfig(32, 8, 128))["forward"]["bytes"]
    b = io_model.flash_attention(1, 1, 512, 512, 64, config=BlockConfig(32, 32, 128))["forward"]["bytes"]
    c = io_model.flash_attention(1, 1, 512, 512, 64, config=BlockConfig(64, 32, 256))["forward"]["bytes"]
    assert a == b > c


def test_ragged_and_causal_forward():
    D, cfg = 16, BlockConfig(16, 16, 64)
    # N = 20: two query blocks (16 + 4 rows), each loads K, V rows 0..19 (the ragged tile only has 4 rows)
    f = io_model.flash_attention(1, 1, 20, 20, D, "float32", config=cfg)["forward"]
    assert f["bytes_read"] == 4 * (20 * D + 2 * 2 * 20 * D)
    assert f["flops"] == 4 * 16 * 16 * D * 4  # 2 query blocks x 2 tiles, full tiles
    # causal N = 32: query block 0 sees key tile 0 only, block 1 both tiles
    fc = io_model.flash_attention(1, 1, 32, 32, D, "float32", causal=True, config=cfg)["forward"]
    assert fc["bytes_read"] == 4 * (32 * D + 2 * (16 + 32) * D)
    assert io_model.visible_pairs(32, 32, True) == 32 * 33 // 2
    assert io_model.visible_pairs(4, 6, True) == sum(min(6, i + 2 + 1) for i in range(4))
    assert io_model.visible_pairs(6, 4, True) == sum(max(0, min(4, i - 2 + 1)) for i in range(6))


def test_backward_single_block_by_hand():
    B, H, N, D, e = 1, 1, 16, 16, 2
    cfg = BlockConfig(16, 16, 64)
    m = io_model.flash_attention(B, H, N, N, D, "float16", config=cfg, backward_config=cfg)["backward"]
    k = m["kernels"]
    nd = N * D * e
    assert k["delta"]["bytes_read"] == 2 * nd and k["delta"]["bytes_written"] == N * 4
    # dK/dV: K, V, then Q, dO, lse, delta of the one query tile; dK, dV written
    assert k["dkdv"]["bytes_read"] == 4 * nd + 2 * N * 4
    assert k["dkdv"]["bytes_written"] == 2 * nd
    # dQ: Q, dO, lse, delta, then the one K, V tile; dQ written
    assert k["dq"]["bytes_read"] == 4 * nd + 2 * N * 4
    assert k["dq"]["bytes_written"] == nd
    # matrix products: dkdv recomputes QK^T, dO V^T and does P^T dO, dS^T Q; dq recomputes two and does dS K
    assert k["dkdv"]["flops"] == 4 * 2 * N * N * D and k["dq"]["flops"] == 3 * 2 * N * N * D
    fb = io_model.flash_attention(B, H, N, N, D, "float16", config=cfg, backward_config=cfg)["forward_backward"]
    assert set(fb["kernels"]) == {"forward/forward", "backward/delta", "backward/dkdv", "backward/dq"}
    assert fb["bytes"] == sum(v["bytes_read"] + v["bytes_written"] for v in fb["kernels"].values())


def test_dkdv_streams_queries_per_key_block_and_skips_causal_ones():
    N, D, cfg = 64, 16, BlockConfig(16, 16, 64)
    per_row = 2 * D * 4 + 2 * 4  # Q, dO float32 rows + lse, delta
    full = io_model.flash_backward_kernels(1, 1, N, N, D, "float32", False, cfg)["dkdv"]
    assert full["bytes_read"] == 2 * N * D * 4 + (N // 16) * N * per_row
    causal = io_model.flash_backward_kernels(1, 1, N, N, D, "float32", True, cfg)["dkdv"]
    # key block j starts at query tile j: 64 + 48 + 32 + 16 query rows
    assert causal["bytes_read"] == 2 * N * D * 4 + (64 + 48 + 32 + 16) * per_row


# ------------------------------------------------------------------ standard attention, scaling, bounds

def test_standard_grows_as_n_squared_ours_compulsory_linear():
    D = 64
    s1 = io_model.standard_attention(1, 1, 4096, 4096, D)["forward_backward"]["bytes"]
    s2 = io_model.standard_attention(1, 1, 8192, 8192, D)["forward_backward"]["bytes"]
    assert 3.9 < s2 / s1 <= 4.0
    f1 = io_model.flash_attention(1, 1, 4096, 4096, D)["forward_backward"]
    f2 = io_model.flash_attention(1, 1, 8192, 8192, D)["forward_backward"]
    assert f2["bytes_compulsory"] == 2 * f1["bytes_compulsory"]
    assert 3.5 < f2["bytes"] / f1["bytes"] <= 4.0  # no cache: K/V re-reads make it ~N^2 d / BLOCK_M
    assert f1["bytes"] < s1 / 2


def test_standard_flops_and_a_few_ops():
    B, H, N, D = 2, 4, 128, 32
    m = io_model.standard_attention(B, H, N, N, D, "float16")
    assert m["forward"]["flops"] == B * H * 2 * 2 * N * N * D
    assert m["forward_backward"]["flops"] == B * H * 6 * 2 * N * N * D
    ops = m["forward"]["kernels"]
    assert ops["matmul S = Q K^T"]["bytes_written"] == B * H * N * N * 2
    assert ops["astype S float32"]["bytes_written"] == B * H * N * N * 4
    assert "where(mask, S, -inf)" not in ops
    assert "where(mask, S, -inf)" in io_model.standard_attention(B, H, N, N, D, causal=True)["forward"]["kernels"]
    ours = io_model.flash_attention(B, H, N, N, D, config=BlockConfig(32, 32, 128),
                                    backward_config=BlockConfig(32, 32, 128))
    # recomputation: 9 products, not 6 (plus the delta kernel's row dot products)
    assert ours["forward_backward"]["flops"] == B * H * (9 * 2 * N * N * D + 2 * N * D)


def test_paper_bounds():
    b = io_model.paper_bounds(1, 1, 1024, 64, "float16", {"m": 48 * 1024})
    assert b["standard_theta_Nd_plus_N2_bytes"] == (1024 * 64 + 1024**2) * 2
    assert b["flash_theta_N2d2_over_M_bytes[m]"] == pytest.approx(1024**2 * 64**2 / (24 * 1024) * 2)


def test_peak_memory_model():
    B, H, N, D = 1, 2, 256, 64
    rows, s32, s16 = B * H * N * 4, B * H * N * N * 4, B * H * N * N * 2
    qd = B * H * N * D * 2
    # forward: s, s - m and exp(...) alive at once, plus the row max
    assert io_model.peak_memory("standard", "forward", B, H, N, N, D) == 3 * s32 + rows
    # backward: P (fp16) and out kept, dv, then dp, p.astype, dp - delta and their product
    assert io_model.peak_memory("standard", "forward_backward", B, H, N, N, D) == s16 + qd + qd + 4 * s32 + rows
    assert io_model.peak_memory("flash", "forward", B, H, N, N, D) == qd + rows
    assert io_model.peak_memory("flash", "forward_backward", B, H, N, N, D) == 4 * qd + 2 * rows
    with pytest.raises(ValueError):
        io_model.peak_memory("other", "forward", B, H, N, N, D)


# ------------------------------------------------------------------ ncu CSV parsing

def test_parse_ncu_csv_details_and_raw():
    hbm = load_experiment("hbm_traffic")
    head = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
            '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')

    def row(i, name, metric, unit, value):
        return (f'"{i}","1","python","h","{name}","1","7","(1, 1, 1)","(1, 1, 1)","0","9.0",'
                f'"Command line profiler metrics","{metric}","{unit}","{value}"')

    names = ["nf_marker", "numba_flash::forward::forward_kernel::_3clocals_3e::kernel(Array)", "nf_marker",
             "cupy_multiply__float32", "sm90_xmma_gemm", "nf_marker"]
    lines = ["==PROF== Connected to process 1", head]
    for i, n in enumerate(names):
        lines += [row(i, n, "dram__bytes_read.sum", "Mbyte", "1,000.5"), row(i, n, "dram__bytes_write.sum", "byte", "2,048"),
                  row(i, n, "gpu__time_duration.sum", "usecond", "10")]
    lines.append("==PROF== Disconnected")
    kernels = hbm.parse_ncu_csv("\n".join(lines))
    assert [k["id"] for k in kernels] == list(range(6))
    assert kernels[1]["dram_read"] == pytest.approx(1000.5e6) and kernels[1]["dram_write"] == 2048
    assert kernels[1]["time_ms"] == pytest.approx(0.01)
    segs = hbm.split_by_marker(kernels, 2)
    assert [len(s) for s in segs] == [1, 2]
    s = hbm.summarize(segs[0])
    assert s["per_kernel"][0]["kernel"] == "forward" and s["bytes"] == pytest.approx(1000.5e6 + 2048)
    assert hbm.summarize(segs[1], scale=4.0)["dram_write"] == 4 * 2 * 2048
    assert hbm.split_by_marker(kernels, 3) is None

    raw = "\n".join(['"ID","Kernel Name","dram__bytes_read.sum","dram__bytes_write.sum","gpu__time_duration.sum"',
                     '"","","byte","Kbyte","nsecond"', '"0","k","1,234","2","1,500"'])
    (k,) = hbm.parse_ncu_csv(raw)
    assert (k["dram_read"], k["dram_write"], k["time_ms"]) == (1234, 2000, pytest.approx(0.0015))
    assert hbm.parse_ncu_csv("==ERROR== ERR_NVGPUCTRPERM") == []


# ------------------------------------------------------------------ smoke runs of the scripts

def test_hbm_traffic_smoke(tmp_path):
    hbm = load_experiment("hbm_traffic")
    assert hbm.main(["--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "hbm_traffic.json").read_text())
    assert (tmp_path / "hbm_traffic.md").read_text().count("|") > 20
    assert "measured: not available" in data["measured"]["note"]
    left = data["figure2_left"]["rows"]
    assert {r["source"] for r in left} >= {"paper, A100", "model (no cache)", "measured"}
    ours = next(r for r in left if r["implementation"] == "numba_flash" and r["source"] == "model (no cache)")
    assert 0 < ours["hbm_vs_standard"] < 1 and ours["gflops"] > 0
    middle = data["figure2_middle"]["rows"]
    assert len(middle) >= 2 and all(r["runtime_ms"] > 0 and r["model_gb"] > 0 for r in middle)
    import importlib.util as u
    if u.find_spec("matplotlib"):
        assert (tmp_path / "hbm_traffic_block_n.png").stat().st_size > 1000


def test_hbm_traffic_child_mode_runs_cases(tmp_path, capsys):
    # the mode ncu profiles; on the simulator it runs the same cases without the profiler calls
    hbm = load_experiment("hbm_traffic")
    cases = [hbm.make_case("std", "standard", "forward_backward", 1, 1, 16, 16, "float32"),
             hbm.make_case("fl", "flash", "forward", 1, 1, 16, 16, "float32", fcfg=BlockConfig(8, 8, 16))]
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps({"cases": cases}))
    assert hbm.main(["--child", str(spec)]) == 0
    assert "child: ran fl" in capsys.readouterr().out


def test_memory_scaling_smoke(tmp_path):
    mem = load_experiment("memory_scaling")
    assert mem.main(["--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "memory_scaling.json").read_text())
    assert (tmp_path / "memory_scaling.md").exists()
    rows = data["rows"]
    assert len(rows) == 3 * 4 and all(r["peak_bytes"] and r["peak_bytes"] > 0 for r in rows)
    slopes = data["loglog_slopes"]
    assert slopes["standard forward"] > slopes["flash forward"] + 0.5  # O(N^2) against O(N)
    std = [r for r in rows if r["impl"] == "standard"]
    assert all(0.8 < r["peak_bytes"] / r["model_bytes"] < 1.6 for r in std)
    import importlib.util as u
    if u.find_spec("matplotlib"):
        assert (tmp_path / "memory_scaling.png").stat().st_size > 1000
