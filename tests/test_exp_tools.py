"""The experiment runners: several scripts in one process, and tuning several problems at once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import ON_GPU, load_experiment, to_host

SCRIPT = '''
import sys
def main(argv=None):
    print("{name} says", *(argv or []))
    open({log!r}, "a").write("{name}\\n")
    return {rc}
'''


def _scripts(tmp_path, **rcs):
    log = tmp_path / "order.log"
    for name, rc in rcs.items():
        (tmp_path / f"{name}.py").write_text(SCRIPT.format(name=name, log=str(log), rc=rc))
    return log


def test_in_one_process_runs_scripts_in_order_and_redirects(tmp_path, monkeypatch):
    runner = load_experiment("in_one_process")
    monkeypatch.setattr(runner, "HERE", tmp_path)
    log = _scripts(tmp_path, first=0, second=0)
    out = tmp_path / "printed.txt"
    assert runner.main([f"first --x 1 > {out}", "second"]) == 0
    assert log.read_text().split() == ["first", "second"]
    assert out.read_text().strip() == "first says --x 1"  # its argv, its output in the file


def test_in_one_process_stops_at_the_first_failure(tmp_path, monkeypatch):
    runner = load_experiment("in_one_process")
    monkeypatch.setattr(runner, "HERE", tmp_path)
    log = _scripts(tmp_path, failing=3, after=0)
    assert runner.main(["failing", "after"]) == 3
    assert log.read_text().split() == ["failing"]


def test_with_package_runs_a_script_against_another_copy_of_the_package(tmp_path):
    """experiments/with_package.py PARENT SCRIPT ARGS: PARENT's numba_flash is the one imported, the
    script runs as __main__ with its own argv and can import its sibling scripts; a PARENT without a
    numba_flash folder is refused by name."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "experiments" / "with_package.py"
    (tmp_path / "other" / "numba_flash").mkdir(parents=True)
    (tmp_path / "other" / "numba_flash" / "__init__.py").write_text("VERSION = 'other copy'\n")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "sibling.py").write_text("WORD = 'sibling'\n")
    (tmp_path / "scripts" / "probe.py").write_text(
        "import sys\nimport numba_flash, sibling\n"
        "if __name__ == '__main__':\n    print(numba_flash.VERSION, sibling.WORD, *sys.argv[1:])\n")
    run = subprocess.run([sys.executable, str(tool), str(tmp_path / "other"), str(tmp_path / "scripts" / "probe.py"),
                          "--x", "1"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "other copy sibling --x 1"
    bad = subprocess.run([sys.executable, str(tool), str(tmp_path / "scripts"), str(tmp_path / "scripts" / "probe.py")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "PACKAGE_PARENT" in bad.stderr


def test_tune_parallel_tunes_each_problem_into_its_own_folder(tmp_path):
    tp = load_experiment("tune_parallel")
    rc = tp.main(["--out", str(tmp_path), "--smoke --repeat 1", "--smoke --pass backward --repeat 1"])
    assert rc == 0
    for i, pass_ in enumerate(("forward", "backward")):
        result = json.loads((tmp_path / f"{i:02d}" / f"tune_{pass_}.json").read_text())
        assert result["pass"] == pass_ and result["best"] is not None
        cache = json.loads((tmp_path / f"{i:02d}" / "tuning.json").read_text())
        assert len(cache["entries"]) == 1


def test_fp32_tensor_cores_experiment_arguments_and_summary():
    fp32 = load_experiment("fp32_tensor_cores")
    args = fp32.parse_args(["--shape", "2,4,256,64", "--config", "64,32,2,16", "--causal", "no"])
    assert args.shape == [(2, 4, 256, 64)] and len(args.config) == 1 and args.config[0].block_n == 32
    assert len(fp32.parse_args([]).config) == len(fp32.DEFAULT_CONFIGS)
    assert len(fp32.parse_args([]).bwd_config) == len(fp32.DEFAULT_BWD_CONFIGS)
    assert fp32.parse_args(["--bwd-config", "64,16,2,16"]).bwd_config[0].block_n == 16
    quick = fp32.parse_args(["--defaults-only"])  # only the defaults, unless configs are named
    assert quick.defaults_only and quick.config == [] and quick.bwd_config == []
    assert len(fp32.parse_args(["--defaults-only", "--config", "64,32,2,16"]).config) == 1
    assert not fp32.parse_args([]).defaults_only
    with pytest.raises(SystemExit):
        fp32.parse_args(["--shape", "2,4,256"])
    with pytest.raises(SystemExit):
        fp32.parse_args(["--config", "64,30,2,16"])  # block_n not a multiple of 16
    base = dict(B=2, H=4, N=256, D=64, causal=False)
    rows = [{**base, "pass": "forward", "impl": "numba_flash", "status": "ok", "tflops": 60.0},
            {**base, "pass": "forward", "impl": "numba_flash 64,32,2,16", "status": "ok", "tflops": 70.0},
            {**base, "pass": "forward", "impl": "numba_flash 128,32,2,32", "status": "error: no"},
            {**base, "pass": "forward", "impl": "numba_flash portable", "status": "ok", "tflops": 5.0},
            {**base, "pass": "forward", "impl": "sdpa_efficient", "status": "ok", "tflops": 30.0},
            {**base, "pass": "forward_backward", "impl": "numba_flash", "status": "ok", "tflops": 6.0},
            {**base, "pass": "forward_backward", "impl": "numba_flash bwd 64,16,2,16", "status": "ok", "tflops": 7.0},
            {**base, "pass": "forward_backward", "impl": "numba_flash portable bwd", "status": "ok", "tflops": 2.0},
            {**base, "pass": "forward_backward", "impl": "sdpa_efficient", "status": "ok", "tflops": 24.0},
            {**base, "impl": "error vs float64", "out_ratio": 0.9, "dq_ratio": 1.1, "dk_ratio": 1.0, "dv_ratio": 0.8}]
    (line,) = fp32.summary(rows)
    assert line["fwd ratio"] == 2.0 and line["fwd+bwd ratio"] == 0.25
    assert line["fwd nf best"] == 70.0 and line["best config"] == "64,32,2,16" and line["fwd portable"] == 5.0
    assert line["out err ratio"] == 0.9 and line["dq err ratio"] == 1.1
    assert line["fwd+bwd nf best"] == 7.0 and line["best bwd config"] == "64,16,2,16"
    assert line["fwd+bwd portable bwd"] == 2.0


def test_experiment_converters_round_trip_float16_and_bfloat16_bits():
    """atomic_dq.converters (tc_sweep uses them too): a torch tensor to this backend's array and back,
    bfloat16 as its uint16 bit patterns (the API's bfloat16=True form), bit for bit."""
    torch = pytest.importorskip("torch", reason="the converters take torch tensors (torch is an optional extra)")
    converters = load_experiment("atomic_dq").converters
    # the backend's arrays: NumPy on the simulator, CuPy (device memory) on the GPU
    t = torch.randn(3, 5, dtype=torch.float32, device="cuda" if ON_GPU else "cpu")
    for dtype, bf16 in ((torch.float16, False), (torch.bfloat16, True)):
        x = t.to(dtype)
        to_nf, to_torch = converters(torch, bf16)
        a = to_nf(x)
        assert a.dtype == (np.uint16 if bf16 else np.float16) and a.shape == (3, 5)
        np.testing.assert_array_equal(to_host(a).view(np.int16), x.view(torch.int16).cpu().numpy())
        back = to_torch(a)
        assert back.dtype == dtype and torch.equal(back, x)


def test_fp32_tensor_cores_experiment_without_the_gpu_says_why(capsys):
    from numba_flash import backend

    if backend.BACKEND == backend.GPU:
        pytest.skip("checks the message of a machine without the GPU backend")
    assert load_experiment("fp32_tensor_cores").main(["--out", "/nonexistent/never-written"]) == 0
    assert "needs the GPU backend" in capsys.readouterr().out


def test_atomic_dq_experiment_arguments_summary_and_cpu_exit(capsys):
    exp = load_experiment("atomic_dq")
    args = exp.parse_args(["--shape", "2,4,256,64", "--bwd-config", "64,32,2,16,1", "--causal", "no"])
    assert args.shape == [(2, 4, 256, 64)] and args.dtype == ["float16"]
    assert args.bwd_config[0].atomic_dq and args.bwd_config[0].block_n == 32
    assert exp.label(args.bwd_config[0]) == "64,32,2,16,atomic"
    assert exp.parse_args([]).bwd_config is None  # per head_dim defaults, DEFAULT_BWD_CONFIGS
    assert not exp.parse_args(["--bwd-config", "64,32,2,16,reread"]).bwd_config[0].atomic_dq  # flags by name too
    assert exp.parse_args(["--bwd-config", "64,64,2,16,reread,b3"]).bwd_config[0].min_blocks == 3
    assert exp.parse_args([]).interleave == 0 and exp.parse_args(["--interleave", "4"]).interleave == 4
    for bad in ("64,32,2", "64,32,2,16,fast"):
        with pytest.raises(SystemExit):
            exp.parse_args(["--bwd-config", bad])
    base = dict(B=2, H=4, N=256, D=64, dtype="float16", causal=False, status="ok")
    rows = [{**base, "pass": "backward", "impl": "numba_flash 64,64,2,16", "config": "64,64,2,16", "tflops": 100.0},
            {**base, "pass": "backward", "impl": "numba_flash 64,32,2,16 atomic", "config": "64,32,2,16 atomic",
             "tflops": 80.0},
            {**base, "pass": "backward", "impl": "numba_flash 128,32,2,16 atomic", "config": "128,32,2,16 atomic",
             "tflops": 90.0},
            {**base, "pass": "backward", "impl": "sdpa_flash", "config": None, "tflops": 200.0},
            {**base, "impl": "error vs float64", "dq_atomic": 1e-3}]
    (line,) = exp.summary(rows)
    assert line["deterministic"] == 100.0 and line["atomic best"] == 90.0 and line["atomic config"] == "128,32,2,16 atomic"
    assert line["det / sdpa"] == 0.5 and line["atomic / det"] == 0.9 and line["baseline"] == "sdpa_flash"
    assert exp.parse_args(["--dtype", "float32"]).dtype == ["float32"]
    assert exp.parse_args(["--bwd-config", "64,32,2,16,b3", "--skip-default"]).skip_default
    with pytest.raises(SystemExit):  # nothing left to time
        exp.parse_args(["--skip-default"])
    f32 = [{**r, "dtype": "float32", "impl": "sdpa_efficient" if r["impl"] == "sdpa_flash" else r["impl"]} for r in rows]
    (line,) = exp.summary(f32)  # float32's baseline: SDPA's EFFICIENT backend
    assert line["baseline"] == "sdpa_efficient" and line["det / sdpa"] == 0.5
    if not ON_GPU:  # no GPU: it says why and exits 0
        assert exp.main(["--out", "unused"]) == 0
        assert "needs the GPU backend" in capsys.readouterr().out
        prof = load_experiment("profile_backward")
        assert prof.main(["--config", "64,32,2,16,1"]) == 0


_PTX = """//
.common .global .align 8 .u64 _ZN08NumbaEnv11numba_flash7masking7in_bandB3v{a}B100cwE;
.common .global .align 8 .u64 _ZN08NumbaEnv11numba_flash11tc_backward4lse2B3v{b}B100cwE;
.visible .entry _ZN6cudapy11numba_flash6kernelB2v9B100cwE(
{{
\tmma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {{%f1, %f2, %f3, %f4}}, {{%r1, %r2, %r3, %r4}}, {{%r5, %r6}}, {{%f1, %f2, %f3, %f4}};
\tcall.uni _ZN08numba_flash6helperB3v{b}B100cwE;
\tmov.u64 %rd1, _cudapy_smem_{b};
\t{last}
}}
"""


def test_ptx_identity_ignores_names_and_catches_code(tmp_path, capsys):
    """experiments/ptx_identity.py: the Numba environment globals (any order), mangled-name version
    counters and the shared array's counter may change with a refactor; any instruction that changes
    is a difference."""
    tool = load_experiment("ptx_identity")
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir()
    after.mkdir()
    (before / "k.ptx").write_text(_PTX.format(a=44, b=58, last="ret;"))
    (after / "k.ptx").write_text(_PTX.format(a=51, b=59, last="ret;"))
    assert tool.main(["compare", str(before), str(after)]) == 0
    assert "k.ptx: identical" in capsys.readouterr().out
    (after / "k.ptx").write_text(_PTX.format(a=44, b=58, last="bar.sync 0;\n\tret;"))
    (after / "only_after.ptx").write_text("ret;")
    assert tool.main(["compare", str(before), str(after)]) == 1
    out = capsys.readouterr().out
    assert "k.ptx: DIFFERS in 1 lines" in out and "only_after.ptx: only in" in out
    assert tool.main(["compare", str(tmp_path / "none"), str(tmp_path / "none2")]) == 1
    with pytest.raises(SystemExit):
        tool.main(["dump", str(tmp_path), "--case", "no-such-kernel"])
    assert {c[0] for c in tool.CASES} >= {"dkdv-split-128", "dkdv-tf32-128", "dq-f16-128", "forward-f16-128"}


def test_chain_error_model_grows_with_the_chain_and_checks_its_arguments(tmp_path, capsys):
    """experiments/chain_error_model.py: the model's pieces do what the kernels do (TF32 split exact,
    truncation toward zero), chains of 1 are as accurate as a float32 GEMM, longer chains are worse."""
    model = load_experiment("chain_error_model")
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    big = model.tf32_round(x)
    assert np.all(big.view(np.uint32) & 0x1FFF == 0) and np.array_equal(big + (x - big), x)
    v = np.random.default_rng(2).standard_normal(1000) * 3
    t = model.to_f32_toward_zero(v)
    assert np.all(np.abs(t.astype(np.float64)) <= np.abs(v)) and np.all(np.abs(t - v) < np.abs(v) * 2.0 ** -23)
    rows = model.run([32], [1, 4], queries=64, keys=128)
    assert [r["chain"] for r in rows] == [1, 4] and rows[0]["max err / max|S|"] < 2 ** -21
    assert rows[1]["rms vs chain 1"] > 1.5  # four k-steps' truncations add up
    assert model.main(["--smoke", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "chain_error_model.json").exists()
    with pytest.raises(SystemExit):
        model.main(["--head-dims", "30", "--out", str(tmp_path)])
    assert "--head-dims" in capsys.readouterr().err


def test_compare_chains_picks_the_fastest_variant_within_the_error_margin(tmp_path):
    """experiments/compare_chains.py reads fp32_tensor_cores.py runs and picks the fastest variant whose
    error ratios all stay within the margin: a faster one over the margin loses."""
    tool = load_experiment("compare_chains")

    def run(chain, pv, fwd, err):
        d = tmp_path / "runs" / f"c{chain}p{pv}"
        d.mkdir(parents=True)
        summary = [{"D": 128, "causal": c, "fwd nf (default)": 40.0, "fwd ratio": fwd, "fwd+bwd nf": 30.0,
                    "fwd+bwd ratio": 0.7, "out err ratio": err, "dq err ratio": 0.3, "dk err ratio": 0.3,
                    "dv err ratio": 0.4} for c in (False, True)]
        # forward 10 ms (SDPA 12), forward+backward 40 ms (SDPA 48): backward 30 against 36 ms, ratio 1.2
        rows = [{"D": 128, "causal": c, "pass": p, "impl": i, "ms": ms * (1.2 if i == "sdpa_efficient" else 1.0)}
                for c in (False, True) for p, ms in (("forward", 10.0), ("forward_backward", 40.0))
                for i in ("numba_flash", "sdpa_efficient")]
        (d / "fp32_tensor_cores.json").write_text(json.dumps({"args": {"tf32_chain": chain, "tf32_pv_chain": pv},
                                                              "summary": summary, "rows": rows}))

    run(1, 1, 0.9, 0.6)
    run(2, 1, 1.0, 0.8)
    run(4, 1, 1.1, 1.2)  # fastest, but its error is over the margin
    rows, scores, pick = tool.table(tool.variants(tmp_path / "runs"), 0.9)
    assert (pick["chain"], pick["pv_chain"]) == (2, 1) and len(rows) == 6
    assert [s["admissible"] for s in scores] == [True, True, False]
    assert all(abs(r["bwd vs SDPA eff."] - 1.2) < 1e-12 for r in rows), rows
    assert tool.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "chains.json").read_text())["pick"]["chain"] == 2
    assert (tmp_path / "out" / "chains.png").stat().st_size > 0  # matplotlib is in the test extra
    assert "(chains.png)" in (tmp_path / "out" / "chains.md").read_text()


def test_block_order_model_and_tabulation(tmp_path, capsys):
    """experiments/block_order.py: the scheduling model (greedy list scheduling) and the table of runs.

    Model: with as many slots as (head, batch entry) pairs, longest first gives every slot one block of each
    length, the ideal; by head, a slot takes a whole head, also the ideal (equal sums); with fewer slots than
    blocks of one length the by-head order ends later; without a band (equal blocks) both orders tie. The
    table reads a console log (rich wraps its lines) and a JSON file; without a GPU the script measures
    nothing and says so."""
    tool = load_experiment("block_order")
    assert tool.makespan([3, 3, 2, 2], 2) == 5  # longest first: the ideal, 10 / 2
    assert tool.makespan([3, 2, 2, 3], 2) == 6  # greedy, in order: a long block last ends later
    assert tool.makespan([1, 1, 1, 3], 3) == 4
    even = tool.schedule_model(4, 3, 3, overhead=0.0)
    assert even["by_head_over_ideal"] == even["longest_first_over_ideal"] == 1.0
    assert even["paired_over_ideal"] == 1.0  # rows 0 + 3, 1 + 2: 5 tiles each, two waves of three
    assert tool.schedule_model(5, 1, 3, overhead=0.0)["paired_over_ideal"] == 6 / 5  # 5 + 1, 4 + 2, 3 alone
    m = tool.schedule_model(32, 64, 264)
    assert m["by_head_over_ideal"] > 1.1 > 1.02 > m["longest_first_over_ideal"] >= 1.0
    flat = tool.schedule_model(32, 64, 264, causal=False)
    assert flat["predicted_speedup"] == 1.0
    log = ("float16 B=4 H=16 N=4096 D=128 causal=False\n"
           "  forward   by head 1.708 ms (0.936x sdpa_flash), longest first 1.687 ms \n"
           "(0.947x), speedup 1.012, outputs identical: True, spread 1.063\n"
           "float16 B=4 H=16 N=4096 D=128 causal=True\n"
           "  backward  by head 6.057 ms (0.792x sdpa_flash), longest first 6.270 ms (0.765x), speedup 0.966, "
           "outputs identical: False, spread 1.038\nTraceback ...\n")
    (tmp_path / "a.log").write_text(log)
    (tmp_path / "b.json").write_text(json.dumps({"rows": [{"dtype": "bfloat16", "D": 64, "causal": True,
                                                           "pass_": "forward", "longest_first_speedup": 1.5}]}))
    rows = tool.tabulate([tmp_path / "a.log", tmp_path / "b.json"])
    assert [(r["dtype"], r["causal"], r["pass_"]) for r in rows] == [
        ("float16", True, "backward"), ("bfloat16", True, "forward"), ("float16", False, "forward")]
    assert rows[0]["identical"] is False and rows[0]["by_head_ms"] == 6.057 and rows[0]["sdpa"] == "sdpa_flash"
    assert rows[2]["longest_first_vs_sdpa"] == 0.947 and rows[2]["spread"] == 1.063 and rows[2]["D"] == 128
    assert tool.main(["--tabulate", str(tmp_path / "a.log"), "--out", str(tmp_path / "out")]) == 0
    assert "Re-tabulated" in (tmp_path / "out" / "block_order_all.md").read_text()
    assert tool.main(["--out", str(tmp_path / "gpu")]) == 0  # the model, then no measurement off the GPU
    assert "needs a CUDA GPU" in capsys.readouterr().out and not (tmp_path / "gpu").exists()
    with pytest.raises(SystemExit):
        tool.main(["--seqlen", "3000"])


def test_ptx_mix_counts_the_statements_of_inline_asm_blocks():
    """experiments/ptx_mix.py's counts: one per statement, inside inline asm blocks too (several statements on
    a line, a block's closing brace before the next instruction), without comments, directives and labels;
    the 3xTF32 split by its mask; predicated statements counted."""
    mix = load_experiment("ptx_mix")
    ptx = """
    // mma.sync in a comment
    .reg .f32 %f<8>;
    $L__BB0_1:
    { .reg .b32 %t; add.s32 %t, %r1, 4096; and.b32 %r2, %t, -8192; sub.f32 %f1, %f2, %f3; }
    mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%f1, %f2, %f3, %f4}, {%r1, %r2, %r3, %r4}, {%r5, %r6}, {%f1, %f2, %f3, %f4};
    @%p1 red.global.add.v2.f32 [%rd1], {%f1, %f2};
    $L__BB0_2: ld.shared.f32 %f5, [%r7];
    fma.rn.f32 %f6, %f5, %f5, %f1;
    bar.sync 0;
    ret;
    """
    c = mix.count_classes(ptx)
    assert {k: c[k] for k in ("mma", "split", "f32 add", "f32 mul/fma", "red", "ld.shared", "barrier", "local")} == {
        "mma": 1, "split": 1, "f32 add": 1, "f32 mul/fma": 1, "red": 1, "ld.shared": 1, "barrier": 1, "local": 0}
    assert c["total"] == 9  # add.s32, and.b32, sub.f32, mma, red, ld.shared, fma, bar, ret
    kind, cfg, d, elem = mix.parse_pass("backward:64,16,2,16,atomic:128:tf32")
    assert (kind, cfg.atomic_dq, cfg.block_n, d, elem) == ("backward", True, 16, 128, "tf32")
    assert mix.kernels_of(kind, cfg) == ["dkdv"] and mix.kernels_of("backward", cfg.__class__()) == ["dkdv", "dq"]
    assert mix.parse_pass("forward:128,32,2,32,reread:96")[3] == "f16"
    for bad, why in [("sideways:64,16,2,16:128", "PASS"), ("backward:64,16,2,16:128:fp8", "ELEM"),
                     ("backward:64,16:128", "expected"), ("backward:128,64,2,16,split:128:tf32", "split_d")]:
        with pytest.raises(mix.argparse.ArgumentTypeError, match=why):
            mix.parse_pass(bad)
