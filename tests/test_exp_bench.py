"""The benchmark harness (numba_flash.bench, experiments/bench_speed.py): smoke run, FLOP formula,
and the per-measurement budget logic (repeats capped, slow runs skipped, failures recorded)."""

import json

import numpy as np
import pytest

from numba_flash import bench
from numba_flash.timing import attention_flops

from helpers import load_experiment

def test_attention_flops_follows_flashattention_convention():
    B, H, N, D = 2, 3, 128, 64
    fwd = 4.0 * B * H * N * N * D  # two matmuls of 2*N*N*D each
    assert attention_flops(B, H, N, N, D, False, "forward") == fwd
    assert attention_flops(B, H, N, N, D, True, "forward") == fwd / 2
    assert attention_flops(B, H, N, N, D, False, "backward") == 2.5 * fwd
    assert attention_flops(B, H, N, N, D, False, "forward_backward") == 3.5 * fwd
    assert attention_flops(B, H, N, N, D, True, "forward_backward") == 3.5 * fwd / 2
    assert attention_flops(1, 1, 16, 48, 8, False) == 4.0 * 16 * 48 * 8  # Nq != Nk


def test_time_interleaved_rotates_the_order_and_reports_the_spread(monkeypatch):
    """Each round times every callable ``repeat`` times, starting one further along the list; the
    summary covers every call and the spread is the largest over the smallest round median."""
    from numba_flash import timing

    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    clock = iter(range(10_000))  # one tick (1 s) per perf_counter call: every call "takes" 1000 ms
    monkeypatch.setattr(timing.backend, "BACKEND", timing.backend.SIMULATOR)
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(clock)))
    out = timing.time_interleaved(fns, rounds=3, repeat=2)
    assert "".join(calls) == "aabbcc" + "bbccaa" + "ccaabb"
    for n in "abc":
        assert out[n]["repeat"] == 6 and out[n]["round_medians"] == [1000.0] * 3 and out[n]["spread"] == 1.0
        assert out[n]["median_ms"] == 1000.0
    with pytest.raises(ValueError, match="rounds and repeat"):
        timing.time_interleaved(fns, rounds=0)


def test_shared_lock_admits_shared_holders_and_keeps_timings_out(tmp_path):
    """timing.shared: any number of holders at once, none while a timing holds timing.exclusive, and
    an exclusive lock waits for every shared one. (flock treats each open file as its own holder, so
    one process stands in for several.)"""
    import fcntl

    from numba_flash import timing

    path = str(tmp_path / "lock")

    def can(kind):
        with open(path, "a") as f:
            try:
                fcntl.flock(f, kind | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(f, fcntl.LOCK_UN)
            return True

    with timing.shared(path):
        assert can(fcntl.LOCK_SH) and not can(fcntl.LOCK_EX)
    with timing.exclusive(path):
        assert not can(fcntl.LOCK_SH) and not can(fcntl.LOCK_EX)
    assert can(fcntl.LOCK_EX)
    with timing.shared(None), timing.exclusive(None):  # no lock file: no-ops
        pass


def test_standard_sweep_shapes():
    shapes = bench.standard_shapes()
    assert len(shapes) == 12
    for s in shapes:
        assert s.batch * s.seqlen == 16384 and s.heads * s.head_dim == 2048
    assert {s.seqlen for s in shapes} == {512, 1024, 2048, 4096, 8192, 16384}
    assert bench.parse_shape("2,4,64,16") == bench.Shape(2, 4, 64, 16)
    with pytest.raises(Exception):
        bench.parse_shape("2,4,64")


def test_smoke_writes_json_md_png(tmp_path, capsys):
    out = tmp_path / "bench"
    assert load_experiment("bench_speed").main(["--smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "numba_flash" in printed and "bench took" in printed

    data = json.loads((out / "bench_speed.json").read_text())
    assert data["environment"]["device"]
    records = data["records"]
    # 2 shapes x 2 causal x 2 passes x 2 implementations, all measured.
    assert len(records) == 16
    assert {r["impl"] for r in records} == {"numba_flash", "cupy_standard"}
    for r in records:
        assert r["status"] == "ok", r
        assert r["ms"] > 0 and r["repeat"] >= 1
        flops = attention_flops(r["batch"], r["heads"], r["seqlen"], r["seqlen"], r["head_dim"], r["causal"], r["pass"])
        assert r["flops"] == flops
        assert r["tflops"] == pytest.approx(flops / (r["ms"] * 1e-3) / 1e12)
        if r["impl"] == "cupy_standard":
            assert r["numba_flash_speedup"] > 0
    host = data["host_overhead"]
    assert host["numba_flash"]["sync_us"] > 0 and host["numba_flash"]["launch_us"] > 0
    if bench.backend.BACKEND != bench.backend.GPU:
        assert "not available" in host["torch_sdpa"]
        assert all("not available" in data["implementations"][n] for n in bench.TORCH_BACKENDS)

    md = (out / "bench_speed.md").read_text()
    assert "## TFLOP/s" in md and "Host overhead" in md and "cupy_standard" in md and "Command:" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out / "bench_speed.png").exists()
    else:
        png = out / "bench_speed.png"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _impl(fn):
    return bench.Impl("fake", "fake", ("float32",), lambda pass_, causal: fn)


def test_budget_caps_repeats_and_skips_slow_runs(monkeypatch):
    calls = []
    t = {"now": 0.0, "single": 0.1}

    def fn(*_):
        calls.append(1)
        t["now"] += t["single"]

    monkeypatch.setattr(bench.backend, "BACKEND", bench.backend.GPU)
    monkeypatch.setattr(bench, "_sync", lambda: None)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: t["now"])
    monkeypatch.setattr(bench, "time_ms", lambda fn_, inputs, warmup, repeat: (
        [fn_(*inputs[0]) for _ in range(repeat)],
        {"median_ms": t["single"] * 1e3, "min_ms": 0, "max_ms": 0, "repeat": repeat})[1])
    budget = bench._Budget(repeat=20, time_budget_s=1.0, max_single_s=5.0)
    key = ("fake", "forward", "float32", 16, False)

    # 0.1 s per run: 2 warm-ups (first call of a kernel variant compiles), 1.0 s / 0.1 s = 10 repeats.
    rec = bench._measure(_impl(fn), fn, [()], flops=1e12, key=key, budget=budget)
    assert rec["status"] == "ok" and rec["repeat"] == 10 and len(calls) == 12
    assert rec["tflops"] == pytest.approx(10.0)
    # Warm key: one warm-up; 0.8 s per run -> at least 2 repeats even past the budget.
    calls.clear()
    t["single"] = 0.8
    rec = bench._measure(_impl(fn), fn, [()], flops=8e12, key=key, budget=budget)
    assert rec["status"] == "ok" and rec["repeat"] == 2 and len(calls) == 3
    # Predicted from the throughput so far (10 TFLOP/s): 100 TFLOP would take 10 s > 5 s: not run.
    calls.clear()
    rec = bench._measure(_impl(fn), fn, [()], flops=1e14, key=key, budget=budget)
    assert rec["status"] == "skipped" and "predicted" in rec["reason"] and not calls
    # No prediction for a new key, but the warm-up itself is over the limit: skipped after it.
    t["single"] = 6.0
    rec = bench._measure(_impl(fn), fn, [()], flops=1e12, key=key[:-1] + (True,), budget=budget)
    assert rec["status"] == "skipped" and "took" in rec["reason"]


def test_failures_are_recorded_not_raised(monkeypatch):
    monkeypatch.setattr(bench.backend, "BACKEND", bench.backend.GPU)
    monkeypatch.setattr(bench, "_sync", lambda: None)

    class OutOfMemoryError(Exception):
        pass

    def oom(*_):
        raise OutOfMemoryError("out of memory allocating 34359738368 bytes")

    def unsupported(*_):
        raise RuntimeError("No available kernel. Aborting execution.")

    budget = bench._Budget(repeat=5, time_budget_s=1.0, max_single_s=5.0)
    rec = bench._measure(_impl(oom), oom, [()], 1e9, ("a",), budget)
    assert rec["status"] == "oom" and "34359738368" in rec["error"]
    rec = bench._measure(_impl(unsupported), unsupported, [()], 1e9, ("b",), budget)
    assert rec["status"] == "error" and "No available kernel" in rec["error"]


def test_speedup_is_baseline_ms_over_ours():
    base = {"pass": "forward", "dtype": "float16", "batch": 1, "heads": 1, "seqlen": 64, "head_dim": 16,
            "causal": False, "status": "ok"}
    records = [{**base, "impl": "numba_flash", "ms": 10.0}, {**base, "impl": "torch_flash", "ms": 0.5},
               {**base, "impl": "torch_math", "status": "oom"}]
    bench.add_speedups(records)
    assert records[1]["numba_flash_speedup"] == pytest.approx(0.05)
    assert "numba_flash_speedup" not in records[0] and "numba_flash_speedup" not in records[2]
    rows, columns = bench.summary_rows(records)
    assert rows[0]["sdpa_math"] == "OOM" and "nf/sdpa_flash" in columns


def test_input_sets_rotate_only_when_they_fit_in_l2(monkeypatch):
    monkeypatch.setattr(bench.backend, "BACKEND", bench.backend.GPU)
    l2 = 50 * 10**6
    assert bench.n_input_sets(bench.Shape(16, 32, 1024, 64), np.float16, l2) == 1  # 4 x 67 MB
    small = bench.Shape(1, 8, 512, 64)  # 4 x 0.5 MB
    assert bench.n_input_sets(small, np.float16, l2) == bench.MAX_INPUT_SETS


def test_sweep_time_budget_skips_what_does_not_fit(monkeypatch):
    monkeypatch.setattr(bench.backend, "BACKEND", bench.backend.GPU)
    monkeypatch.setattr(bench, "_sync", lambda: None)
    budget = bench._Budget(repeat=5, time_budget_s=1.0, max_single_s=50.0)
    key = ("fake",)
    budget.throughput[key] = 1e12  # 1 TFLOP/s seen at a smaller shape
    never = lambda *_: pytest.fail("should not run")  # noqa: E731
    # 4 s per run: at least 12 s, but only 10 s left.
    rec = bench._measure(_impl(never), never, [()], 4e12, key, budget, remaining_s=10.0)
    assert rec["status"] == "skipped" and "time budget" in rec["reason"]
    # Nothing left and no prediction: skipped too.
    rec = bench._measure(_impl(never), never, [()], 4e12, ("other",), budget, remaining_s=-1.0)
    assert rec["status"] == "skipped" and "used up" in rec["reason"]
