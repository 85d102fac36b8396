"""The tensor-core kernels (numba_flash.tc_forward, numba_flash.tc_backward): compiled for sm_90
in CI (tensor-core instructions present, nothing in local memory, no spills), checked against the
float64 oracle on the GPU. The numerics of the default path are also covered by the Hypothesis suites
(test_kernels, test_features), which draw TensorCoreConfigs on the GPU."""

import dataclasses
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest
from numba import cuda  # (module level: the simulator swaps the kernels' global cuda)

import numba_flash as nf
from numba_flash import api, config
from numba_flash.config import BlockConfig, TensorCoreConfig, default_tc_config

from helpers import BF16, ON_GPU, bf16_bits, from_bf16_bits, load_experiment, to_bf16, to_device, to_host
from test_compile import _have_toolchain
from test_features import check_against_oracle
from numba_flash.philox import reference_keep_mask

# The defaults (plain and with varlen + dropout) and the smallest config, at three head dims; the head_dim-40
# one with longest_first (its blocks' other order). (The head_dim-128 default, (128, 32, 2, 32, reread_q), is
# compiled on its own: it spills a little.)
_CASES = [(TensorCoreConfig(128, 64, 2, 32), 64, False, False), (TensorCoreConfig(128, 32, 2, 32, reread_q=True), 96, False, False),
          (TensorCoreConfig(64, 32, 2, 16, longest_first=True), 40, True, True),
          (TensorCoreConfig(64, 16, 2, 16), 128, True, True), (TensorCoreConfig(16, 16, 1), 128, True, True)]
# The backward's defaults (plain and with varlen + dropout) and the smallest config; head_dim 40 with
# longest_first. (The head_dim-128 default, split_d, is compiled in its own test. Each case is two compiles
# of 0.5-4 minutes on CI's 2 cores, so the 16-key (64, 32) at head_dim 128, no longer a default, is left to
# the GPU tests.)
_BACKWARD_CASES = [(TensorCoreConfig(64, 64, 2, 16, reread_q=True, min_blocks=3), 64, False, False),
                   (TensorCoreConfig(64, 32, 2, 16, longest_first=True), 40, True, True),
                   (TensorCoreConfig(64, 16, 2, 16), 128, True, True)]
_SCRIPT = r"""
import json, sys, time
from numba_flash.config import TensorCoreConfig
from numba_flash.resources import tc_compile_report
for line in sys.stdin:  # one case per line, one report per line back
    kernel, config, d, varlen, dropout, elem = json.loads(line)
    t = time.perf_counter()
    r = tc_compile_report(TensorCoreConfig(*config), d, varlen, dropout, elem, kernel=kernel)
    print(json.dumps({**r, "compile_s": time.perf_counter() - t}), flush=True)
"""


def _cost(case) -> int:
    """A rough compile cost, to start the longest first: head_dim x owned x streamed rows (float32 twice).
    Measured on CI's machine: 15-30 s for the head_dim-40 and dropout kernels, 140-150 s for the
    head_dim-128 split_d dK/dV and its dQ (128 x 64 tiles)."""
    kernel, cfg, d, _, _, elem = case
    return (2 if elem == "tf32" else 1) * d * cfg.block_m * cfg.block_n


def _compile(cases, max_stack=0, max_spill=0, bounds=None):
    """Compile reports of ``cases`` in one worker subprocess per CPU (up to 4), the costliest first, each
    worker taking the next case when it is free (each kernel takes 15-150 s; a fixed share per worker
    left a CPU idle for minutes). Every report is checked: tensor-core instructions there, no local
    memory in the PTX, at most ``max_stack`` bytes of stack and ``max_spill`` of spills, except where
    ``bounds`` (``{case index: (max_stack, max_spill)}``) says otherwise, and no more registers than the
    launch bound leaves."""
    env = dict(os.environ, NUMBA_FLASH_BACKEND="gpu")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    args = [[kernel, [c.block_m, c.block_n, c.stages, c.rows_per_warp, c.atomic_dq, c.reread_q, c.min_blocks, c.split_d,
             c.longest_first], d, vl,
             dr, elem] for kernel, c, d, vl, dr, elem in cases]
    n = max(1, min(4, os.cpu_count() or 1, len(args)))
    todo = queue.SimpleQueue()
    for i in sorted(range(len(args)), key=lambda i: -_cost(cases[i])):
        todo.put(i)
    reports = [None] * len(args)

    def work(proc):
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                break
            proc.stdin.write(json.dumps(args[i]) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:  # the worker died; its stderr says why
                break
            reports[i] = json.loads(line)
        proc.stdin.close()

    errs = [tempfile.TemporaryFile(mode="w+") for _ in range(n)]  # a file: a full pipe would block the worker
    procs = [subprocess.Popen([sys.executable, "-c", _SCRIPT], env=env, text=True, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=err) for err in errs]
    threads = [threading.Thread(target=work, args=(p,), daemon=True) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=1800)
    hung = any(t.is_alive() for t in threads)
    for p, err in zip(procs, errs):
        if hung:
            p.kill()
        p.wait(timeout=60)
        err.seek(0)
        assert p.returncode == 0 and not hung, err.read()[-4000:]
        err.close()
    assert all(r is not None for r in reports), [i for i, r in enumerate(reports) if r is None]
    assert len(reports) == len(cases)
    if os.environ.get("NUMBA_FLASH_COMPILE_REPORTS"):  # every report, before any check, for bounds (a file)
        with open(os.environ["NUMBA_FLASH_COMPILE_REPORTS"], "a") as f:
            for (kernel, cfg, d, vl, dr, elem), r in zip(cases, reports):
                f.write(json.dumps({"case": f"{kernel} {cfg.label()} D={d} {elem} varlen={vl} dropout={dr}",
                                    "tf32_chain": config.TF32_CHAIN, "tf32_pv_chain": config.TF32_PV_CHAIN,
                                    **{k: r[k] for k in ("registers", "stack", "lmem", "spill_stores", "spill_loads",
                                                         "local_accesses", "mma")}}) + "\n")
    for i, ((kernel, cfg, *_), r) in enumerate(zip(cases, reports)):
        stack, spill = (bounds or {}).get(i, (max_stack, max_spill))
        assert r["ldmatrix"] > 0 and r["cp_async"] > 0 and r["ex2"] > 0, r
        # a string, which pytest prints whole (it cuts a long dict's repr)
        facts = f"case {i}: {kernel} {cfg.label()}: " + ", ".join(
            f"{k} {r[k]}" for k in ("registers", "stack", "lmem", "spill_stores", "spill_loads", "local_accesses"))
        assert r["local_accesses"] == 0 and r["stack"] <= stack and r["lmem"] <= stack, facts
        assert r["spill_stores"] <= spill and r["spill_loads"] <= spill, facts
        assert r["registers"] <= (cfg.max_registers() if cfg.launch_bounds(kernel) else 255), r
        assert r["min_blocks"] == cfg.min_blocks, r
    if os.environ.get("NUMBA_FLASH_COMPILE_TIMES"):  # where CI's minutes go: one line per kernel (pytest -s)
        for (kernel, cfg, d, vl, dr, elem), r in zip(cases, reports):
            print(f"compile {r['compile_s']:6.1f} s  {kernel} {cfg.label()} D={d} {elem} varlen={vl} dropout={dr}")
    return reports


_SAME_SCRIPT = r"""
import json, sys
from numba_flash import compile_speed
from numba_flash.config import TensorCoreConfig
from numba_flash.resources import compile_for, tc_signature
from numba_flash.tc_backward import tc_dkdv_kernel  # installs compile_speed's versions (unless told not to)
sizes, lives, indexed = [], [], []  # what the "both" run compared
if sys.argv[1] == "both":  # run numba-cuda's own beside the linear one, and compare
    from numba.cuda import lowering
    fast, orig = lowering.Lower._find_singly_assigned_variable, compile_speed.originals()["_find_singly_assigned_variable"]
    assert fast is not orig, "not installed"
    def both(self):
        orig(self)
        want = self._singly_assigned_vars
        fast(self)
        assert self._singly_assigned_vars == want, sorted(want ^ self._singly_assigned_vars)[:20]
        sizes.append(len(want))
    lowering.Lower._find_singly_assigned_variable = both
    from numba.cuda.core import analysis, ir_utils
    fast_live, orig_live = analysis.compute_live_map, compile_speed.originals()["compute_live_map"]
    assert fast_live is not orig_live and ir_utils.compute_live_map is fast_live, "not installed"
    def both_live(cfg, blocks, use, defs):
        want = orig_live(cfg, blocks, use, defs)
        got = fast_live(cfg, blocks, use, defs)
        assert got == want, [b for b in want if got.get(b) != want[b]][:5]
        lives.append(sum(map(len, want.values())))
        return got
    analysis.compute_live_map = ir_utils.compute_live_map = both_live
    from numba.cuda.core import ssa
    assert ssa._run_ssa is not compile_speed.originals()["_run_ssa"], "not installed"  # checked by the PTX alone
    fast_index, orig_index = ssa._FixSSAVars._stmt_index, compile_speed.originals()["_stmt_index"]
    assert fast_index is not orig_index, "not installed"
    def both_index(self, defstmt, block, stop=-1):
        want = orig_index(self, defstmt, block, stop)
        got = fast_index(self, defstmt, block, stop)
        assert got == want, (got, want, stop, len(block.body))
        indexed.append(want < len(block.body))
        return got
    ssa._FixSSAVars._stmt_index = both_index
ptx, _ = compile_for(tc_dkdv_kernel(TensorCoreConfig(16, 16, 1), 40, True, True, "f16").py_func, tc_signature("dkdv"))
print(json.dumps({"ptx": ptx, "calls": len(sizes), "found": sum(sizes), "live_calls": len(lives), "live": sum(lives),
                  "index_calls": len(indexed), "index_found": sum(indexed)}))
"""


@pytest.mark.skipif(not _have_toolchain(), reason="needs the CUDA 13 compiler wheels: pip install 'numba-cuda[cu13]'")
def test_compile_speed_patches_change_nothing_but_the_time():
    """numba_flash.compile_speed's versions of five numba-cuda steps against numba-cuda's own, on a
    tensor-core dK/dV kernel (varlen, dropout: the Philox and band helpers too): the same singly-assigned
    variables in every function lowered (they decide which values get no stack slot), and the same PTX
    as a compile without the patches (NUMBA_FLASH_NO_COMPILE_PATCH=1)."""
    env = dict(os.environ, NUMBA_FLASH_BACKEND="gpu")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env.pop("NUMBA_FLASH_NO_COMPILE_PATCH", None)
    runs = {}
    for mode, extra in (("both", {}), ("plain", {"NUMBA_FLASH_NO_COMPILE_PATCH": "1"})):
        proc = subprocess.run([sys.executable, "-c", _SAME_SCRIPT, mode], env={**env, **extra}, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[mode] = json.loads(proc.stdout)
    # compared as experiments/ptx_identity.py compares: Numba's environment globals (their order varies
    # from run to run) left out, version counters in mangled names blanked
    normalised = load_experiment("ptx_identity").normalised
    assert normalised(runs["both"]["ptx"]) == normalised(runs["plain"]["ptx"]), "the patched compile gave different PTX"
    calls, found = runs["both"]["calls"], runs["both"]["found"]
    assert calls >= 3 and found > 1000, (calls, found)  # the kernel and its device functions: thousands of names
    # liveness, compared on every call: the passes that run it, over thousands of (block, variable) pairs
    counts = {k: v for k, v in runs["both"].items() if k != "ptx"}
    assert counts["live_calls"] >= 10 and counts["live"] > 1000, counts
    # statement positions in SSA reconstruction, compared on every call, most of them found
    assert counts["index_found"] > 100, counts


@pytest.mark.skipif(not _have_toolchain(), reason="needs the CUDA 13 compiler wheels: pip install 'numba-cuda[cu13]'")
def test_tensor_core_forward_compiles_to_mma_without_spills():
    cases = [("forward", *case, "f16") for case in _CASES] + [("forward", _CASES[0][0], 64, False, False, "bf16")]
    # The head_dim-64 default, (128, 64, 2, 32), spills 32 bytes (24 of stack) with CI's wheels, f16 and
    # bf16: bounded. It was measured the fastest all the same (310 TFLOP/s against 272 for the spill-free
    # (128, 32, 2, 32); README, caveats). The GPU image's CUDA 13.0 gave the float16 one a 40-byte stack
    # and 36 bytes stored (session 15, call 3; the loads and the bfloat16 twin were not printed, the
    # message being cut): the bound is 40 of stack and 48 of spill, the latter not yet seen on the GPU.
    assert _CASES[0][0] == default_tc_config(64)
    reports = _compile(cases, bounds={0: (40, 48), len(cases) - 1: (40, 48)})
    for (_, cfg, d, _, _, elem), r in zip(cases, reports):
        assert any(".bf16.bf16" in m for m in r["mma_kind"]) == (elem == "bf16"), r
        ksteps, dt, nt, wm = -(-d // 16), d // 8, cfg.block_n // 8, cfg.rows_per_warp // 16
        # Per m-tile, Q K^T: ksteps x nt mma per tile; P V: (block_n / 16) x (head_dim / 8), the
        # padding columns' products being dead code; unrolled, each appears once.
        assert r["mma"] == wm * (ksteps * nt + (cfg.block_n // 16) * dt), r


@pytest.mark.skipif(not _have_toolchain(), reason="needs the CUDA 13 compiler wheels: pip install 'numba-cuda[cu13]'")
def test_reread_q_frees_registers_for_the_head_dim_128_forward_default():
    """reread_q: the same mma and ldmatrix counts (the Q reads move into the key loop), fewer registers;
    that is what lets the head_dim-128 default hold 32 rows per warp. It is the one default that
    spills (20 bytes with CI's wheels; measured 331 TFLOP/s against 250 for the spill-free default it
    replaced, experiments/results/reread-2026-11-24), bounded here. The held/re-read pair is compiled
    at head_dim 64, 17 s each on CI's machine against 2-3 minutes at 128 (its registers: 160 -> 128;
    at 128, 223 -> 176)."""
    held, reread = TensorCoreConfig(64, 32, 2, 16), TensorCoreConfig(64, 32, 2, 16, reread_q=True)
    default = default_tc_config(128)
    assert default == TensorCoreConfig(128, 32, 2, 32, reread_q=True)
    # float16 only: bfloat16 changes the mma and packing instructions, not the structure (its compiles are
    # in the head_dim-64 forward and backward tests). The dQ kernel's Q re-read is in the head_dim-64
    # backward default, compiled there.
    cases = [("forward", c, 64, False, False, "f16") for c in (held, reread)] + [("forward", default, 128, False, False, "f16")]
    # The unmasked default, one block of 8 warps with 64-key tiles, spills: an 80-byte stack, 80 bytes
    # stored and 92 loaded (the tile copies' addresses) with CI's wheels and the GPU image's CUDA 13.0
    # alike; bounded. It was measured the fastest without a band all the same (config.default_tc_config).
    wide = default_tc_config(128, unmasked=True)
    assert wide == TensorCoreConfig(256, 64, 2, 32, reread_q=True)
    cases += [("forward", wide, 128, False, False, "f16")]
    reports = _compile(cases, max_stack=32, max_spill=32, bounds={3: (80, 92)})  # one batch
    a, b = reports[0], reports[1]
    assert a["spill_stores"] == b["spill_stores"] == 0 and a["stack"] == b["stack"] == 0, (a, b)
    assert a["mma"] == b["mma"] and a["ldmatrix"] == b["ldmatrix"], (a, b)
    assert b["registers"] <= a["registers"] - 24, (a, b)  # measured 160 -> 128 with CI's wheels
    assert reports[2]["mma"] == 2 * (8 * 4 + 2 * 16), reports[2]
    assert reports[3]["mma"] == 2 * (8 * 8 + 4 * 16), reports[3]  # 64-key tiles: twice the mma per tile


# float32 forward (3xTF32): the defaults at head_dim 64 and 128, and with varlen + dropout at head_dim 64.
# (The head_dim-128 dropout default, (64, 16, 2, 16), takes 255 registers: no spills with CI's wheels,
# 8 bytes with the GPU image's CUDA 13.0 toolchain; README, caveats.) The head_dim-128 default is
# compiled for 3 blocks per SM (168 registers) and spills 104 bytes: bounded below.
_TF32_CASES = [(TensorCoreConfig(128, 16, 2, 32), 64, False, False),
               (TensorCoreConfig(64, 16, 2, 16, min_blocks=3), 128, False, False),
               (TensorCoreConfig(64, 32, 2, 16), 64, True, True)]


@pytest.mark.skipif(not _have_toolchain(), reason="needs the CUDA 13 compiler wheels: pip install 'numba-cuda[cu13]'")
def test_float32_tensor_core_forward_compiles_to_tf32_mma_without_spills():
    cases = [("forward", *case, "tf32") for case in _TF32_CASES]
    # No spill stores or loads (checked in _compile), but an 8-byte stack frame is allowed: the GPU
    # image's CUDA 13.0 toolchain gave the 255-register defaults one (with no spills), CI's wheels none.
    assert cases[1][1] == default_tc_config(128, elem="tf32")
    for (_, cfg, d, _, _, _), r in zip(cases, _compile(cases, max_stack=8, bounds={1: (128, 128)})):
        assert r["mma_kind"] == ["mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"], r
        assert r["expected_dynamic_smem"] == 4 * (d + 4) * (cfg.block_m + 4 * cfg.block_n), r
        # Three mma per 16 x 8 x 8 product (3xTF32); Q K^T: (head_dim / 8) k-steps x (block_n / 8)
        # n-tiles, P V: (block_n / 8) k-steps x (head_dim / 8) n-tiles.
        nt, kt, wm = cfg.block_n // 8, d // 8, cfg.rows_per_warp // 16
        assert r["mma"] == 3 * 2 * kt * nt * wm, r


_CHAIN_SCRIPT = """
import json, re
from numba_flash.config import TensorCoreConfig
from numba_flash.resources import compile_for, tc_signature
from numba_flash.tc_backward import tc_dkdv_kernel, tc_dq_kernel
from numba_flash.tc_forward import tc_forward_kernel
out = {}
for name, factory in (("forward", tc_forward_kernel), ("dq", tc_dq_kernel), ("dkdv", tc_dkdv_kernel)):
    fn = factory(TensorCoreConfig(64, 16, 2, 16), 32, False, False, "tf32")
    ptx, _ = compile_for(fn.py_func, tc_signature(name, "tf32"), (9, 0), name, fn.targetoptions.get("launch_bounds"))
    out[name] = {"adds": len(re.findall(r"\\badd(?:\\.rn)?\\.f32\\b", ptx)),
                 "mma": len(re.findall(r"\\bmma\\.sync\\.aligned\\.m16n8k8\\b", ptx)),
                 "local": len(re.findall(r"\\b(?:ld|st)\\.local", ptx))}
print(json.dumps(out))
"""


@pytest.mark.skipif(not _have_toolchain(), reason="needs the CUDA 13 compiler wheels: pip install 'numba-cuda[cu13]'")
def test_float32_chains_leave_their_adds_to_the_tensor_cores():
    """config.TF32_CHAIN and TF32_PV_CHAIN (set through their environment variables in a compile
    subprocess): head_dim 32 has 4 k-steps, and a 16-row tile 2. Chaining all of them keeps every mma
    and drops exactly the float32 adds of the chained k-steps."""
    env = dict(os.environ, NUMBA_FLASH_BACKEND="gpu")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    procs = {chains: subprocess.Popen([sys.executable, "-c", _CHAIN_SCRIPT], stdout=subprocess.PIPE, text=True,
                                      env=dict(env, NUMBA_FLASH_TF32_CHAIN=str(chains[0]),
                                               NUMBA_FLASH_TF32_PV_CHAIN=str(chains[1])))
             for chains in ((1, 1), (4, 2))}
    out = {chains: json.loads(p.communicate(timeout=900)[0]) for chains, p in procs.items()}
    one, chained = out[(1, 1)], out[(4, 2)]
    # Per tile and warp (16 rows, 16-row tiles: 2 n-tiles of 8, 4 registers each): S (and dP) over
    # 4 k-steps lose 3 of their 4 adds per n-tile; the products over the tile's 2 k-steps (P V; dQ;
    # dV and dK) lose 1 of 2 per n-tile of their head_dim-wide sums (head_dim 32: 4 n-tiles).
    dropped = {"forward": 3 * 4 * 2 + 1 * 4 * 4, "dq": 2 * 3 * 4 * 2 + 1 * 4 * 4, "dkdv": 2 * 3 * 4 * 2 + 2 * 1 * 4 * 4}
    for name in ("forward", "dq", "dkdv"):
        assert chained[name]["mma"] == one[name]["mma"] > 0, (name, one, chained)
        assert chained[name]["local"] == one[name]["local"] == 0, (name, one, chained)
        assert one[name]["adds"] - chained[name]["adds"] == dropped[name], (name, one, chained)


_KEYED_SCRIPT = """
import json
from numba_flash import config
from numba_flash.config import TensorCoreConfig
from numba_flash.tc_backward import tc_dkdv_kernel, tc_dq_kernel
from numba_flash.tc_forward import tc_forward_kernel
cfg, out = TensorCoreConfig(64, 16, 2, 16), {}
for factory in (tc_forward_kernel, tc_dq_kernel, tc_dkdv_kernel):
    first = factory(cfg, 32, False, False, "tf32")
    again = factory(cfg, 32, False, False, elem="tf32")
    config.TF32_CHAIN += 1
    chained = factory(cfg, 32, False, False, "tf32")
    config.TF32_CHAIN -= 1
    out[factory.__name__] = [first is factory(cfg, 32, False, False, "tf32"), again is first, chained is first]
print(json.dumps(out))
"""


def test_kernel_factories_are_keyed_by_the_float32_chains():
    """The factories cache their kernels, keyed also by config.TF32_CHAIN / TF32_PV_CHAIN as they stand (they
    build the kernels from them): the same kernel while they hold, another after a change, and the first one
    again once they are back. (Factories only build; nothing compiles here. GPU backend: the simulator has no
    forceinline device functions.)"""
    env = dict(os.environ, NUMBA_FLASH_BACKEND="gpu")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    out = json.loads(subprocess.run([sys.executable, "-c", _KEYED_SCRIPT], capture_output=True, text=True, env=env,
                                    check=True, timeout=600).stdout)
    assert out == {name: [True, True, False] for name in ("tc_forward_kernel", "tc_dq_kernel", "tc_dkdv_kernel")}, out


# float32 backward (3xTF32): the defaults at head_dim 64 and 128, and with varlen + dropout (head_dim 40).
_TF32_BACKWARD_CASES = [(TensorCoreConfig(64, 32, 2, 16), 64, False, False),
                        (TensorCoreConfig(64, 16, 2, 16), 128, False, False), (TensorCoreConfig(64, 16, 2, 16), 40, True, True)]


@pytest.mark.skipif(not _have_toolchain(), reason="needs the CUDA 13 compiler wheels: pip install 'numba-cuda[cu13]'")
def test_float32_tensor_core_backward_compiles_to_tf32_mma_without_spills():
    cases = [(kernel, *case, "tf32") for case in _TF32_BACKWARD_CASES for kernel in ("dq", "dkdv")]
    # The one exception, bounded: dkdv at head_dim 128 (dK and dV accumulators: 128 registers) spills. With
    # dV's products before dK's (session 15) the GPU image's CUDA 13.0 gave a 152-byte stack, 248 bytes
    # stored and 268 loaded (304/308 with both in one pass, which was 16 bytes with CI's wheels and slower on
    # the GPU); CI's wheels a 120-byte stack, 168 stored and 180 loaded. With the global second-level sums
    # (session 16: zeroed, then red.global.add) CI's are 96, 188 and 140 (with session 19's default chains,
    # config.TF32_CHAIN = TF32_PV_CHAIN = 2: 96, 200, 144). The chains cost the head_dim-64 kernels their
    # spill-free code, and were measured faster all the same (forward+backward 1.09-1.10x SDPA-efficient's
    # against 0.98x; session 19): dK/dV at head_dim 64 a 24-byte stack, 20 bytes stored and 28 loaded with
    # CI's wheels; dQ at head_dim 64 an 8-byte stack, 4 stored and 4 loaded on the GPU image (none with CI's).
    # Everything else none.
    bounds = {0: (8, 4), 1: (24, 28), 3: (152, 268)}
    assert [(cases[i][0], cases[i][2]) for i in bounds] == [("dq", 64), ("dkdv", 64), ("dkdv", 128)]
    reports = _compile(cases, max_stack=8, bounds=bounds)
    for (kernel, cfg, d, _, _, _), r in zip(cases, reports):
        assert r["mma_kind"] == ["mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"], r
        streamed = 4 * (d + 4) * (2 * cfg.block_m + 2 * cfg.stages * cfg.block_n)
        # dK/dV: lse and delta per stage, and at head_dim <= 64 the two-level sums' slots (dK, dV per thread)
        sums = 4 * d * cfg.num_threads if d <= 64 else 0
        assert r["expected_dynamic_smem"] == streamed + (8 * cfg.stages * cfg.block_n + sums if kernel == "dkdv" else 0), r
        # Three mma per 16 x 8 x 8 product: S and dP (S^T, dP^T): (head_dim / 8) k-steps x (block_n / 8)
        # n-tiles each; dQ += dS K (dK, dV += ...): (block_n / 8) k-steps x (head_dim / 8) n-tiles each.
        kt, nt = d // 8, cfg.block_n // 8
        assert r["mma"] == 3 * (2 * kt * nt + (1 if kernel == "dq" else 2) * nt * kt), r


@pytest.mark.skipif(not _have_toolchain(), reason="needs the CUDA 13 compiler wheels: pip install 'numba-cuda[cu13]'")
def test_tensor_core_backward_compiles_to_mma_without_spills():
    cases = [(kernel, *case, "f16") for case in _BACKWARD_CASES for kernel in ("dq", "dkdv")]
    cases += [(kernel, _BACKWARD_CASES[0][0], 64, False, False, "bf16") for kernel in ("dq", "dkdv")]
    # The head_dim-64 default's dQ kernel is compiled for 3 blocks per SM (min_blocks): at most 168
    # registers (checked in _compile), a spill of at most 16 bytes allowed (12 with CI's wheels in
    # session 10, none since session 11's cheaper masks and copies). Without the bound the same kernel
    # takes at least as many (184-197 in session 10; 168 with CI's wheels since), same instructions.
    assert _BACKWARD_CASES[0][0] == default_tc_config(64, pass_="backward")
    free = TensorCoreConfig(64, 64, 2, 16, reread_q=True)
    cases += [("dq", free, 64, False, False, "f16")]
    reports = _compile(cases, bounds={i: (16, 16) for i, c in enumerate(cases) if c[1].launch_bounds(c[0])})
    bound, unbound = reports[0], reports[-1]
    assert bound["registers"] <= 168 and bound["registers"] <= unbound["registers"], (bound, unbound)
    assert (bound["mma"], bound["ldmatrix"]) == (unbound["mma"], unbound["ldmatrix"]), (bound, unbound)
    for (kernel, cfg, d, _, _, elem), r in zip(cases, reports):
        assert any(".bf16.bf16" in m for m in r["mma_kind"]) == (elem == "bf16"), r
        ksteps, dt, nt = -(-d // 16), d // 8, cfg.block_n // 8
        # Two products over head_dim (S and dP: ksteps x nt each), then one (dQ) or two (dK, dV)
        # over the streamed tile: (block_n / 16) x (head_dim / 8) each.
        assert r["mma"] == 2 * ksteps * nt + (1 if kernel == "dq" else 2) * (cfg.block_n // 16) * dt, r
        assert r["red"] == 0, r


# The atomic-dQ dK/dV kernel: at head_dim 64 and 128, with varlen + dropout at head_dim 40 (a
# 16-column unit half in the row padding), and bfloat16 with 8 warps. (Configs that give a warp many
# units spill: (128, 32) at head_dim 128 36 bytes, (16, 16, 1) 284: README, caveats.)
_ATOMIC_CASES = [(TensorCoreConfig(64, 32, 2, 16, True), 64, False, False, "f16"),
                 (TensorCoreConfig(64, 16, 2, 16, True), 128, False, False, "f16"),
                 (TensorCoreConfig(64, 16, 2, 16, True), 40, True, True, "f16"),
                 (TensorCoreConfig(128, 32, 2, 16, True), 64, False, False, "bf16")]


@pytest.mark.skipif(not _have_toolchain(), reason="needs the CUDA 13 compiler wheels: pip install 'numba-cuda[cu13]'")
def test_atomic_dq_backward_compiles_to_mma_and_vector_atomics_without_spills():
    cases = [("dkdv", cfg, d, vl, dr, elem) for cfg, d, vl, dr, elem in _ATOMIC_CASES]
    # bfloat16 with 8 warps: none with CI's wheels; the GPU image's CUDA 13.0 a 16-byte stack, 12 bytes
    # stored and 12 loaded (session 16, call 1). Bounded.
    for (_, cfg, d, _, _, elem), r in zip(cases, _compile(cases, bounds={3: (16, 12)})):
        assert any(".bf16.bf16" in m for m in r["mma_kind"]) == (elem == "bf16"), r
        ksteps, dt, nt = -(-d // 16), d // 8, cfg.block_n // 8
        # dQ's units: 16 queries x 16 columns (pairs of n-tiles, padding included), spread over the
        # warps; each sums the block's keys (one 16-key k-step per warp) with 2 mma per k-step and
        # adds its two rows per lane with 2 vector atomics each.
        warps, pairs = cfg.warps, -(-d // 16)
        per_warp = -(-(cfg.block_n // 16) * pairs // warps)
        assert r["mma"] == (2 * ksteps * nt + 2 * (cfg.block_n // 16) * dt + per_warp * warps * 2), r
        assert r["red"] == 4 * per_warp, r
        assert r["expected_dynamic_smem"] == (cfg.stages * 8 * cfg.block_n + (2 * -(-d // 16) * 16 + 16) * (
            2 * cfg.block_m + 2 * cfg.stages * cfg.block_n) + cfg.block_m * (2 * cfg.block_n + 16)), r


# The float32 (3xTF32) atomic-dQ dK/dV kernel: the float32 defaults with atomic_dq at head_dim 64 and 128, and
# with varlen + dropout at head_dim 40 (5 n-tiles of dQ over 4 warps: a warp past the last unit); then 128 keys in
# 8 warps at 64 and 128 (2 dQ units per warp instead of 4).
_TF32_ATOMIC_CASES = [(TensorCoreConfig(64, 32, 2, 16, True), 64, False, False),
                      (TensorCoreConfig(64, 16, 2, 16, True), 128, False, False),
                      (TensorCoreConfig(64, 16, 2, 16, True), 40, True, True),
                      (TensorCoreConfig(128, 32, 2, 16, True), 64, False, False),
                      (TensorCoreConfig(128, 16, 2, 16, True), 128, False, False)]


@pytest.mark.skipif(not _have_toolchain(), reason="needs the CUDA 13 compiler wheels: pip install 'numba-cuda[cu13]'")
def test_float32_atomic_dq_compiles_to_tf32_mma_and_vector_atomics():
    """Per query tile, on top of the float32 dK/dV kernel's four products: dQ's units (16 queries x 8 columns
    of the tile's dQ, over the block's keys: block_m / 8 k-steps of 3 mma) spread over the warps, and two
    ``red.global.add.v2.f32`` per unit and lane (its rows g, g + 8). Not yet run on a GPU: the bounds are CI's
    wheels' numbers (session 21). Every extra product spills here: a 368-byte stack, 484 bytes stored and 420
    loaded at head_dim 128 (the two-kernel dK/dV: 96, 200, 144), 216, 212, 240 at 64 (24, 20, 28), 8, 4, 8 at 40;
    the GPU image's CUDA 13.0 spilled far less than CI's wheels on the two-kernel one (16, 16, 24 at 128). With 128
    keys in 8 warps: no spill at 64; 232, 232, 244 at 128. (experiments/ptx_mix.py counts what each pass issues.)"""
    cases = [("dkdv", *case, "tf32") for case in _TF32_ATOMIC_CASES]
    for cfg, d, _, _ in _TF32_ATOMIC_CASES[:2]:
        assert cfg == dataclasses.replace(default_tc_config(d, pass_="backward", elem="tf32"), atomic_dq=True)
    reports = _compile(cases, bounds={0: (216, 240), 1: (368, 484), 2: (8, 8), 4: (232, 244)})
    for (_, cfg, d, _, _, _), r in zip(cases, reports):
        assert r["mma_kind"] == ["mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"], r
        kt, nt = d // 8, cfg.block_n // 8
        units = (cfg.block_n // 16) * kt
        per_warp = -(-units // cfg.warps)
        assert r["mma"] == 3 * (2 * kt * nt + 2 * nt * kt + (cfg.block_m // 8) * per_warp), r
        # the dK, dV sums' second level in global memory above head_dim 64: zeroed, then a red.global.add per
        # flush and in the epilogue, 2 per n-tile and row (dK, dV)
        flushes = 2 * 2 * 2 * kt if d > 64 else 0
        assert r["red"] == 2 * per_warp + flushes, r
        sums = 4 * d * cfg.num_threads if d <= 64 else 0
        assert r["expected_dynamic_smem"] == (8 * cfg.stages * cfg.block_n + 4 * (d + 4) * (
            2 * cfg.block_m + 2 * cfg.stages * cfg.block_n) + sums + cfg.block_m * 4 * (cfg.block_n + 4)), r


# The split_d dK/dV kernel (FlashAttention-2's warp layout): the head_dim-128 default, and with varlen +
# dropout at 96 (smaller tiles: Philox's registers), bfloat16. (Each head_dim-128 compile of it takes
# 2-5 minutes on CI's 2 cores; the GPU tests run it at 64 and 128 in both 16-bit types too.)
_SPLIT_CASES = [(TensorCoreConfig(128, 64, 2, 16, split_d=True), 128, False, False, "f16"),
                (TensorCoreConfig(64, 32, 2, 16, split_d=True), 96, True, True, "bf16")]


@pytest.mark.skipif(not _have_toolchain(), reason="needs the CUDA 13 compiler wheels: pip install 'numba-cuda[cu13]'")
def test_split_d_dkdv_kernel_compiles_to_larger_warp_tiles_without_spills():
    """Per warp and query tile: step 1 (32 keys x block_n / 2 queries of S^T and dP^T) 2 x 2 x
    (head_dim / 16) x (block_n / 16) mma, step 2 (32 keys x head_dim / 2 of dV and dK) 2 x 2 x
    (block_n / 16) x (head_dim / 16); ldmatrix: per k-step of step 1 two of K, two of V and one of Q
    and dO per 16 queries, per k-step of step 2 two of P^T, two of dS^T and one of dO and Q per 16
    columns. At head_dim 128 with (128, 64): 256 mma, 112 ldmatrix (the 16-key kernel: 128 and 80)."""
    cases = [("dkdv", cfg, d, vl, dr, elem) for cfg, d, vl, dr, elem in _SPLIT_CASES]
    # and the default's dQ kernel (which ignores split_d: 8 warps of 16 queries, 64-key tiles). It spills
    # with CI's wheels (48-byte stack, 44 bytes stored, 56 loaded); the GPU image's CUDA 13.0 gave 254
    # registers and no local memory (experiments/results/session14-2026-12-03), then a 48-byte stack, 48
    # bytes stored and 64 loaded (session 16, call 1, after session 15's changes). Bounded.
    default = default_tc_config(128, pass_="backward")
    assert default == _SPLIT_CASES[0][0]
    reports = _compile(cases + [("dq", default, 128, False, False, "f16")], bounds={1: (160, 160), 2: (48, 64)})
    dq = reports.pop()
    assert dq["mma"] == 2 * 8 * (default.block_n // 8) + (default.block_n // 16) * 16 and dq["red"] == 0, dq
    for (_, cfg, d, _, dr, elem), r in zip(cases, reports):
        assert r["split_d"] and any(".bf16.bf16" in m for m in r["mma_kind"]) == (elem == "bf16"), r
        ks, qs = d // 16, cfg.block_n // 16
        assert r["mma"] == 2 * 2 * ks * qs + 2 * 2 * qs * (d // 16), r
        assert r["ldmatrix"] == ks * (4 + 2 * (qs // 2)) + qs * (4 + 2 * (d // 32)), r
        assert r["red"] == 0, r
        assert r["expected_dynamic_smem"] == (cfg.stages * 8 * cfg.block_n + (2 * d + 16) * (
            2 * cfg.block_m + 2 * cfg.stages * cfg.block_n) + 2 * cfg.block_m * (2 * cfg.block_n + 16)), r
    assert reports[0]["mma"] == 256 and reports[0]["ldmatrix"] == 112


def test_tensor_core_config_split_d():
    """split_d: a bool, 'split' in the text form; a 16-bit-only dK/dV layout for multiples of 32
    (block_m, block_n, head_dim), without atomic dQ; P^T and dS^T tiles in the dK/dV kernel's shared
    memory (keys x queries, 16-bit, rows padded by 16 bytes); the dQ kernel's is unchanged."""
    with pytest.raises(ValueError, match="split_d: expected a bool"):
        TensorCoreConfig(128, 64, 2, 16, split_d=1)
    cfg = TensorCoreConfig(128, 64, 2, 16, split_d=True)
    assert cfg.label() == "128,64,2,16,split" and TensorCoreConfig.parse("128,64,2,16,split") == cfg
    assert TensorCoreConfig.parse("128,64,2,16,reread,split,b2").label() == "128,64,2,16,reread,b2,split"
    plain = TensorCoreConfig(128, 64, 2, 16)
    assert cfg.num_threads == plain.num_threads == 256
    assert cfg.backward_shared_bytes(128, "dkdv") == plain.backward_shared_bytes(128, "dkdv") + 2 * 128 * 144
    assert cfg.backward_shared_bytes(128, "dq") == plain.backward_shared_bytes(128, "dq")
    assert cfg.problems(128, "backward") == cfg.problems(64, "backward") == cfg.problems(96, "backward") == []
    assert cfg.problems(40, "forward") == []  # the forward ignores it
    for bad, d, elem, why in [(cfg, 40, "f16", "multiples of 32.*head_dim=40"),
                              (TensorCoreConfig(48, 64, 2, 16, split_d=True), 64, "f16", "block_m=48"),
                              (TensorCoreConfig(64, 48, 2, 16, split_d=True), 64, "f16", "block_n=48"),
                              (TensorCoreConfig(64, 32, 2, 16, split_d=True), 64, "tf32", "float32"),
                              (TensorCoreConfig(64, 32, 2, 16, True, split_d=True), 64, "f16", "no atomic dQ")]:
        with pytest.raises(ValueError, match=why):
            bad.validate(d, "backward", elem)


def test_tensor_core_config_longest_first():
    """longest_first: a bool, 'longest' in the text form, last in the tuner's list form; it changes no
    resource (shared memory, threads, launch bound, problems), only which block owns which rows."""
    with pytest.raises(ValueError, match="longest_first: expected a bool"):
        TensorCoreConfig(64, 32, 2, 16, longest_first=1)
    plain = TensorCoreConfig(128, 64, 2, 16, split_d=True)
    cfg = TensorCoreConfig(128, 64, 2, 16, split_d=True, longest_first=True)
    assert cfg.label() == "128,64,2,16,split,longest" and TensorCoreConfig.parse(cfg.label()) == cfg
    assert TensorCoreConfig.parse("64,32,2,16,longest_first") == TensorCoreConfig(64, 32, longest_first=True)
    assert cfg != plain and cfg.num_threads == plain.num_threads and cfg.launch_bounds() == plain.launch_bounds()
    for d, elem in [(64, "f16"), (128, "f16"), (128, "tf32")]:
        assert cfg.backward_shared_bytes(d, "dkdv", elem) == plain.backward_shared_bytes(d, "dkdv", elem)
        assert cfg.problems(d, "backward", elem) == plain.problems(d, "backward", elem)
    from numba_flash import tune
    for c in (cfg, TensorCoreConfig(64, 32, longest_first=True), TensorCoreConfig(64, 32, 2, 16, reread_q=True)):
        values = tune._config_list(c)
        assert tune._as_config(values) == c and (len(values) == 9) == c.longest_first, values
    with pytest.raises(ValueError, match="unknown flag 'long'.*'longest'"):
        TensorCoreConfig.parse("64,32,2,16,long")


def test_block_coords_visit_every_block_once_longest_first():
    """``block_coords`` (plain device code: the simulator runs it too): over a (5, 3, 2) grid each (row block,
    head, batch entry) comes out exactly once; by default block (x, y, z) owns row block x (reversed:
    gridDim.x - 1 - x); with longest_first the row blocks follow the linear index x + 5 (y + 3 z) slowest,
    so the first 6 blocks to start own row block 0 (reversed: 4), one per (head, batch entry) pair."""
    from numba_flash.masking import block_coords

    nx, ny, nz = 5, 3, 2
    for longest in (False, True):
        for reverse in (False, True):
            coords = block_coords(longest, reverse)

            @cuda.jit
            def where(out):
                x, y, z = coords()
                lin = cuda.blockIdx.x + nx * (cuda.blockIdx.y + ny * cuda.blockIdx.z)
                out[lin, 0], out[lin, 1], out[lin, 2] = x, y, z

            dev = to_device(np.full((nx * ny * nz, 3), -1, np.int64))
            where[(nx, ny, nz), 1](dev)
            out = to_host(dev)
            assert sorted(map(tuple, out)) == [(x, y, z) for x in range(nx) for y in range(ny) for z in range(nz)]
            first = out[:ny * nz, 0]  # the row blocks of the first ny * nz blocks to start
            want = (np.full(ny * nz, nx - 1 if reverse else 0) if longest
                    else (nx - 1 - np.arange(ny * nz) % nx if reverse else np.arange(ny * nz) % nx))
            assert (first == want).all(), (longest, reverse, out)
            if longest:  # then heads fastest, batch entries slowest
                assert [tuple(r[1:]) for r in out[:ny * nz]] == [(y, z) for z in range(nz) for y in range(ny)]
            else:
                assert [tuple(r) for r in out] == [((nx - 1 - x) if reverse else x, y, z)
                                                   for z in range(nz) for y in range(ny) for x in range(nx)]


def test_tensor_core_config_reread_q_and_its_text_form():
    with pytest.raises(ValueError, match="reread_q: expected a bool"):
        TensorCoreConfig(64, 32, 2, 16, False, 1)
    cfg = TensorCoreConfig(128, 32, 2, 32, reread_q=True)
    # Q stays in shared memory either way: the same shared memory, the same checks
    assert cfg.shared_memory_bytes(128) == TensorCoreConfig(128, 32, 2, 32).shared_memory_bytes(128)
    assert cfg.problems(128) == [] and "rows_per_warp=16" in cfg.problems(128, "backward")[0]
    for text, want in [("128,32,2,32,reread", cfg), ("64,32,2,16", TensorCoreConfig(64, 32)),
                       ("64,32,2,16,1", TensorCoreConfig(64, 32, 2, 16, True)),
                       ("64,32,2,16,0,1", TensorCoreConfig(64, 32, 2, 16, reread_q=True)),
                       (" 64, 32, 2, 16, atomic, reread ", TensorCoreConfig(64, 32, 2, 16, True, True))]:
        got = TensorCoreConfig.parse(text)
        assert got == want and TensorCoreConfig.parse(got.label()) == got, text
    assert cfg.label() == "128,32,2,32,reread" and TensorCoreConfig(64, 32).label() == "64,32,2,16"
    for bad, why in [("64,32", "four integers"), ("64,32,2,16,fast", "unknown flag 'fast'"),
                     ("64,32,2,16,0,0,1", "at most two"), ("64,x,2,16", "invalid literal"),
                     ("64,32,3,16", "stages"), ("64,32,2,16,b5", "min_blocks=5"), ("64,32,2,16,b0", "min_blocks")]:
        with pytest.raises(ValueError, match=why):
            TensorCoreConfig.parse(bad)


def test_tensor_core_config_min_blocks():
    """min_blocks: a launch bound on the forward and dQ kernels, in the text form as bK; 3 blocks'
    shared memory must fit in an SM (228 KB, 1 KB reserved per block)."""
    with pytest.raises(ValueError, match="min_blocks: expected a positive int"):
        TensorCoreConfig(64, 32, 2, 16, min_blocks=0)
    with pytest.raises(ValueError, match="min_blocks: expected a positive int"):
        TensorCoreConfig(64, 32, 2, 16, min_blocks=True)
    cfg = TensorCoreConfig(64, 64, 2, 16, reread_q=True, min_blocks=3)
    assert cfg.label() == "64,64,2,16,reread,b3" and TensorCoreConfig.parse("64,64,2,16,reread,b3") == cfg
    assert TensorCoreConfig.parse("64,64,2,16,0,1,B3") == cfg
    assert cfg.launch_bounds("forward") == cfg.launch_bounds("dq") == (128, 3) and cfg.launch_bounds("dkdv") is None
    assert cfg.max_registers() == 168 and TensorCoreConfig(64, 64).max_registers() == 255
    assert TensorCoreConfig(64, 64).launch_bounds("dq") is None
    assert TensorCoreConfig(128, 32, 2, 32, min_blocks=2).max_registers() == 255  # 4 warps x 2: no cap
    # shared memory: (64, 64, 2, 16) at head_dim 64 takes 46 KB forward, 55 KB in dQ (3 fit); at 128,
    # 87 and 104 KB (3 do not)
    assert cfg.problems(64) == [] and cfg.problems(64, "backward") == []
    for pass_ in ("forward", "backward"):
        (why,) = cfg.problems(128, pass_)
        assert "min_blocks=3" in why and "233472" in why
        assert TensorCoreConfig(64, 64, 2, 16, reread_q=True).problems(128, pass_) == []


def test_tensor_core_config_is_checked():
    with pytest.raises(ValueError, match="multiple of 16"):
        TensorCoreConfig(48 + 8, 64)
    with pytest.raises(ValueError, match="stages"):
        TensorCoreConfig(64, 64, 3)
    with pytest.raises(ValueError, match="head_dim must be at most 128"):
        TensorCoreConfig().validate(256)
    with pytest.raises(ValueError, match="backward takes rows_per_warp=16"):
        TensorCoreConfig(128, 32, 2, 32).validate(64, "backward")
    assert TensorCoreConfig(64, 32).validate(128, "backward").num_threads == 128
    # dK/dV: lse and delta (float32) per stage, Q and dO per stage, K and V
    assert TensorCoreConfig(64, 32, 2).backward_shared_bytes(64, "dkdv") == 2 * 8 * 32 + 2 * 72 * (2 * 64 + 4 * 32)
    assert TensorCoreConfig(128, 64, 2).shared_memory_bytes(64) == 2 * 72 * (128 + 4 * 64)
    with pytest.raises(ValueError, match="rows_per_warp"):
        TensorCoreConfig(48, 32, 2, 32)
    assert TensorCoreConfig(128, 32, 2, 32).warps == 4
    # float32 tiles (3xTF32): head_dim + 4 words per row
    assert TensorCoreConfig(64, 64, 2).shared_memory_bytes(64, "tf32") == 4 * 68 * (64 + 4 * 64)
    assert TensorCoreConfig(64, 32, 2).backward_shared_bytes(64, "dq", "tf32") == 4 * 68 * (2 * 64 + 4 * 32)
    assert TensorCoreConfig().problems(64, "forward", "tf32") == TensorCoreConfig().problems(64, "backward", "tf32") == []
    with pytest.raises(ValueError, match="shared memory"):
        TensorCoreConfig(256, 256, 2).validate(128, "forward", "tf32")
    with pytest.raises(ValueError, match="shared memory"):  # 16-bit tiles of this size would fit
        TensorCoreConfig(128, 128, 2).validate(128, "backward", "tf32")
    assert TensorCoreConfig(128, 128, 2).validate(128, "backward", "f16")
    # atomic_dq: a bool; the dK/dV kernel's shared memory grows by a dS^T tile (keys x queries, 16-bit rows
    # padded by 16 bytes; float32 rows by 4 words, after the two-level sums' slots at head_dim <= 64)
    with pytest.raises(ValueError, match="atomic_dq: expected a bool"):
        TensorCoreConfig(64, 32, 2, 16, 1)
    atomic = TensorCoreConfig(64, 32, 2, 16, True)
    assert atomic.backward_shared_bytes(64, "dkdv") == TensorCoreConfig(64, 32).backward_shared_bytes(64, "dkdv") + 64 * 80
    assert atomic.problems(64, "backward") == atomic.problems(64, "forward") == []
    for d in (64, 128):
        plain = TensorCoreConfig(64, 32).backward_shared_bytes(d, "dkdv", "tf32")
        assert atomic.backward_shared_bytes(d, "dkdv", "tf32") == plain + 64 * 4 * (32 + 4)
        assert atomic.validate(d, "backward", "tf32") is atomic
    # the float32 defaults with atomic dQ still leave room for 2 blocks per SM (2 x 227 KB minus 1 KB each)
    for d in (64, 128):
        cfg = dataclasses.replace(default_tc_config(d, pass_="backward", elem="tf32"), atomic_dq=True)
        assert 2 * (cfg.backward_shared_bytes(d, "dkdv", "tf32") + 1024) <= 228 * 1024, (d, cfg)


@pytest.mark.skipif(ON_GPU, reason="checks the simulator's refusal; on the GPU the tensor-core path runs")
def test_tensor_core_config_needs_the_gpu(rng):
    q = rng.standard_normal((1, 1, 8, 16)).astype(np.float16)
    with pytest.raises(ValueError, match="config: a TensorCoreConfig needs the GPU backend"):
        nf.flash_attention(q, q, q, config=TensorCoreConfig())


def test_tensor_core_backward_config_is_checked(rng):
    q = rng.standard_normal((1, 1, 8, 16)).astype(np.float16)
    out, lse = nf.flash_attention(to_device(q), to_device(q), to_device(q), return_lse=True)
    match = "rows_per_warp=16" if ON_GPU else "needs the GPU backend"
    with pytest.raises(ValueError, match=match):
        nf.flash_attention_backward(to_device(q), to_device(q), to_device(q), to_device(q), out, lse,
                                    config=TensorCoreConfig(64, 32, 2, 32))


def _cfg_id(config) -> str:
    """A short test id: "default", or "64x32x2x16" (+ "-atomic" with atomic_dq, "-reread" with reread_q,
    "-b3" with min_blocks=3)."""
    if config is None:
        return "default"
    return (f"{config.block_m}x{config.block_n}x{config.stages}x{config.rows_per_warp}"
            + ("-atomic" if config.atomic_dq else "") + ("-reread" if config.reread_q else "")
            + (f"-b{config.min_blocks}" if config.min_blocks > 1 else ""))


gpu_only = pytest.mark.skipif(not ON_GPU, reason="the tensor-core kernels use inline PTX, which only a GPU runs")


@gpu_only
def test_tensor_core_errors(rng):
    import cupy

    q = cupy.asarray(rng.standard_normal((1, 2, 64, 64)).astype(np.float16))
    q32 = q.astype(np.float32)
    out, lse = nf.flash_attention(q32, q32, q32, return_lse=True, config=TensorCoreConfig())  # 3xTF32 forward
    with pytest.raises(ValueError, match="shared memory"):  # float32 tiles: twice the 16-bit bytes
        nf.flash_attention_backward(q32, q32, q32, q32, out, lse, config=TensorCoreConfig(256, 128, 2))
    with pytest.raises(ValueError, match="take float16 or float32 inputs, got float64"):
        api._pick(TensorCoreConfig(), "forward", 64, np.float64, False, 64, (("q", q),))
    strided = cupy.asarray(rng.standard_normal((1, 2, 64, 128)).astype(np.float16))[..., ::2]
    with pytest.raises(ValueError, match="contiguous last axis"):
        nf.flash_attention(strided, q, q, config=TensorCoreConfig())
    # config=None falls back to the portable kernel for the same input, and agrees with the oracle.
    out = nf.flash_attention(strided, q, q)
    want = nf.reference.attention_forward(to_host(strided), to_host(q), to_host(q))[0]
    assert np.abs(to_host(out).astype(np.float64) - want).max() < 2e-2


@gpu_only
def test_launch_bound_puts_three_dq_blocks_on_an_sm(rng):
    """min_blocks=3 (the head_dim-64 backward default): the driver's occupancy calculator
    (launch.occupancy) gives its dQ kernel 3 blocks per SM at <= 168 registers, the same kernel
    without the bound what its registers allow, the dK/dV kernel (which ignores the bound) 2; the two
    dQ kernels' results differ by at most one float16 rounding (the bound changes register allocation,
    not arithmetic)."""
    from numba_flash import launch

    cfg = default_tc_config(64, pass_="backward")
    assert cfg.min_blocks == 3 and cfg.reread_q
    free = TensorCoreConfig(64, 64, 2, 16, reread_q=True)
    q, k, v, do = (to_device(rng.standard_normal((2, 4, 300, 64)).astype(np.float16)) for _ in range(4))
    out, lse = nf.flash_attention(q, k, v, causal=True, return_lse=True)
    dq_bound = to_host(nf.flash_attention_backward(do, q, k, v, out, lse, causal=True, config=cfg)[0])
    dq_free = to_host(nf.flash_attention_backward(do, q, k, v, out, lse, causal=True, config=free)[0])
    occ = {(r["kernel"], r["config"]): r for r in launch.occupancy()}
    bound, unbound = occ[("tc_dq", cfg.label())], occ[("tc_dq", free.label())]
    assert bound["blocks_per_sm"] == 3 and bound["registers"] <= 168 and bound["warps_per_sm"] == 12, bound
    # Unbound, the compiler picks (session 10: 184-197 registers, 2 blocks; fewer since session 11).
    assert unbound["blocks_per_sm"] == (3 if unbound["registers"] <= 168 else 2), unbound
    assert occ[("tc_dkdv", cfg.label())]["blocks_per_sm"] == 2
    diff = np.abs(dq_bound.astype(np.float64) - dq_free).max()
    assert np.isfinite(dq_bound).all() and diff <= 2.0 ** -10 * np.abs(dq_free).max(), diff


@gpu_only
@pytest.mark.parametrize("shape", [(1, 2, 97, 97, 40), (2, 3, 1025, 1000, 64), (1, 4, 129, 513, 128),
                                   (1, 1, 1, 300, 64), (1, 2, 300, 1, 16)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("config", [None, TensorCoreConfig(16, 16, 1), TensorCoreConfig(64, 32, 2, 16, True),
                                    TensorCoreConfig(16, 16, 1, 16, True), TensorCoreConfig(64, 64, 2, 16, reread_q=True),
                                    TensorCoreConfig(64, 32, 2, 16, reread_q=True, min_blocks=3)],
                         ids=_cfg_id)
def test_tensor_core_kernels_match_oracle_at_odd_sizes(rng, shape, causal, config):
    B, H, n_q, n_k, D = shape
    q, k, v, do = (rng.standard_normal((B, H, n, D)).astype(np.float16) for n in (n_q, n_k, n_k, n_q))
    dev = [to_device(a) for a in (q, k, v)]
    out, lse = nf.flash_attention(*dev, causal=causal, return_lse=True, config=config)
    grads = nf.flash_attention_backward(to_device(do), *dev, out, lse, causal=causal, config=config)
    check_against_oracle(q, k, v, do, to_host(out), to_host(lse), [to_host(g) for g in grads], causal, (-1, -1),
                         0.0, None)


@gpu_only
@pytest.mark.parametrize("shape", [(1, 2, 97, 97, 40), (2, 3, 1025, 1000, 64), (1, 2, 600, 513, 128),
                                   (1, 1, 1, 300, 64), (1, 2, 300, 1, 16)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("config", [None, TensorCoreConfig(16, 16, 1), TensorCoreConfig(128, 16, 2, 32)], ids=_cfg_id)
def test_float32_tensor_core_kernels_match_oracle_at_odd_sizes(rng, shape, causal, config):
    """float32 through the 3xTF32 kernels, forward and backward (config=None: the defaults, one
    m-tile per warp; the smallest config; two m-tiles per warp, forward only: its backward is the
    default), against the float64 oracle with float32's bounds (2x a naive float32 implementation's
    error, plus the floor: 3xTF32's products are within ~2^-21 relative, inside that floor's 4 u32
    sqrt(n) allowance). 1025 and 600 queries are 65 and 38 query tiles of 16 for a dK/dV block: 4 and 2
    flushes of its second-level sums (config.TF32_SUMS_KSTEPS: to shared memory at 64, to dK and dV at 128),
    the later ones adding to the earlier."""
    B, H, n_q, n_k, D = shape
    q, k, v, do = (rng.standard_normal((B, H, n, D)).astype(np.float32) for n in (n_q, n_k, n_k, n_q))
    dev = [to_device(a) for a in (q, k, v)]
    arrays = (("q", dev[0]), ("k", dev[1]), ("v", dev[2]))
    bwd = None if config is not None and config.rows_per_warp != 16 else config
    for pass_, cfg in (("forward", config), ("backward", bwd)):
        assert isinstance(api._pick(cfg, pass_, D, np.float32, causal, n_k, arrays), TensorCoreConfig)
    out, lse = nf.flash_attention(*dev, causal=causal, return_lse=True, config=config)
    grads = nf.flash_attention_backward(to_device(do), *dev, out, lse, causal=causal, config=bwd)
    check_against_oracle(q, k, v, do, to_host(out), to_host(lse), [to_host(g) for g in grads], causal, (-1, -1),
                         0.0, None)


@gpu_only
def test_float32_tensor_core_kernels_agree_with_the_portable_ones(rng):
    """The 3xTF32 kernels (float32's default) against the portable float32 ones (exact float32
    products): both within a few float32 ulps of the oracle, at a training-like size."""
    from numba_flash.config import default_config

    q, k, v, do = (rng.standard_normal((2, 4, 1024, 64)).astype(np.float32) for _ in range(4))
    dev = [to_device(a) for a in (q, k, v)]
    want = nf.reference.attention_forward(q, k, v, causal=True)[0]
    want_grads = nf.reference.attention_backward(do, q, k, v, causal=True)
    runs = {}
    for name, fwd, bwd in (("3xTF32", None, None), ("portable", default_config(64, np.float32, "forward", simulator=False),
                                                    default_config(64, np.float32, "backward", simulator=False))):
        out, lse = nf.flash_attention(*dev, causal=True, return_lse=True, config=fwd)
        grads = nf.flash_attention_backward(to_device(do), *dev, out, lse, causal=True, config=bwd)
        runs[name] = [to_host(x).astype(np.float64) for x in (out, *grads)]
    for i, ref in enumerate((want, *want_grads)):
        e_fast, e_port = (np.abs(runs[n][i] - ref).max() / np.abs(ref).max() for n in ("3xTF32", "portable"))
        # a few float32 ulps each (2^-23 relative = 1.2e-7); a TF32-only kernel would be ~2^-11 = 5e-4 off
        assert e_fast < 4e-6 and e_port < 4e-6, (i, e_fast, e_port)


@gpu_only
@pytest.mark.parametrize("D", [64, 128])
def test_float32_dkdv_two_level_sums_beat_one_float32_sum(rng, D):
    """The float32 dK/dV kernel sums its 8-query k-steps in two levels (config.TF32_SUMS_KSTEPS; the second
    in shared memory at head_dim 64, in dK and dV themselves at 128). Causal, its dK and dV errors against float64 must be below 0.7x those of
    one float32 sum per element, as the kernel summed before, on the same inputs. That sum is modelled
    here in NumPy (each k-step's exact product rounded to float32, then added in order): it leaves out
    the tensor cores' truncation and P's own error, so the one-sum kernel measures above it and fails
    (on the H200, session 15: dK 1.55e-6, dV 1.35e-6 against the new 4.0e-7, 3.8e-7, B = 4, H = 32).
    Causal only: without the mask every P carries its row's lse rounding (lse ~ 8.8 at N = 4096, half an
    ulp 4.8e-7 relative), an error of the same size as the one sum's, which the two levels do not touch
    (measured: dV 6.7e-7 against the model's 7.5e-7 there, and 2.2e-6 for SDPA's EFFICIENT backend).
    Two runs must agree bit for bit: at 128 the flushes are ``red.global.add``s, each lane's to its own
    elements."""
    n = 4096
    q, k, v, do = (rng.standard_normal((1, 1, n, D)).astype(np.float32) for _ in range(4))
    dev = [to_device(a) for a in (q, k, v)]
    out, lse = nf.flash_attention(*dev, causal=True, return_lse=True)
    runs = [[to_host(g)[0, 0] for g in nf.flash_attention_backward(to_device(do), *dev, out, lse, causal=True)]
            for _ in range(2)]
    for a, b in zip(*runs):  # deterministic: each lane's flushes land in program order (no atomics race)
        np.testing.assert_array_equal(a, b)
    _, dk, dv = (g.astype(np.float64) for g in runs[0])
    q64, k64, v64, do64 = (x[0, 0].astype(np.float64) for x in (q, k, v, do))
    scale = 1 / np.sqrt(D)
    s = q64 @ k64.T * scale
    s[np.triu_indices(n, 1)] = -np.inf
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ds = p * (do64 @ v64.T - (do64 * (p @ v64)).sum(1, keepdims=True))
    for name, got, a, b, mult in (("dv", dv, p, do64, 1.0), ("dk", dk, ds, q64, scale)):
        want = a.T @ b * mult
        one_sum = np.zeros((n, D), np.float32)
        a32, b32 = a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
        for i in range(0, n, 8):
            one_sum += (a32[i:i + 8].T @ b32[i:i + 8]).astype(np.float32)
        err = np.abs(got - want).max() / np.abs(want).max()
        err_one = np.abs(one_sum * mult - want).max() / np.abs(want).max()
        assert err <= 0.7 * err_one, (name, err, err_one)


@gpu_only
def test_tensor_core_forward_drops_exactly_the_reference_mask(rng):
    """As test_features' mask read-back, in float16 through the tensor-core forward: q = 0 makes every
    probability 1/Nk, v = I reads Z_ij / (Nk (1 - p)) back out of the output."""
    B, H, n, D, p = 2, 3, 64, 64, 0.4
    seed = int(rng.integers(0, 2**63)) * 2 + 1
    q = np.zeros((B, H, n, D), np.float16)
    k = rng.standard_normal((B, H, n, D)).astype(np.float16)
    eye = np.broadcast_to(np.eye(n, D, dtype=np.float16), (B, H, n, D)).copy()
    want = reference_keep_mask(seed, p, B, H, n, n)
    for config in (None, TensorCoreConfig(16, 16, 1)):
        out = to_host(nf.flash_attention(to_device(q), to_device(k), to_device(eye), dropout_p=p, seed=seed,
                                         config=config))
        np.testing.assert_array_equal(out != 0, want)
        # 1 / (n (1 - p)) = 0.0260416..., P rounded to float16 once: relative error <= 2^-11
        np.testing.assert_allclose(out[want], 1.0 / (n * (1 - p)), rtol=2e-3)
        # float32 through the 3xTF32 forward: the same mask, P carried to ~2^-20
        out32 = to_host(nf.flash_attention(to_device(q.astype(np.float32)), to_device(k.astype(np.float32)),
                                           to_device(eye.astype(np.float32)), dropout_p=p, seed=seed, config=config))
        np.testing.assert_array_equal(out32 != 0, want)
        np.testing.assert_allclose(out32[want], 1.0 / (n * (1 - p)), rtol=1e-5)


@gpu_only
def test_default_forward_is_the_tensor_core_one_and_agrees_with_the_portable_one(rng):
    from numba_flash import api

    q, k, v = (rng.standard_normal((2, 4, 512, 64)).astype(np.float16) for _ in range(3))
    dev = [to_device(a) for a in (q, k, v)]
    arrays = (("q", dev[0]), ("k", dev[1]), ("v", dev[2]))
    assert isinstance(api._pick(None, "forward", 64, np.float16, False, 512, arrays), TensorCoreConfig)
    fast = to_host(nf.flash_attention(*dev, causal=True)).astype(np.float64)
    portable = to_host(nf.flash_attention(*dev, causal=True, config=BlockConfig(64, 16, 256))).astype(np.float64)
    want = nf.reference.attention_forward(q, k, v, causal=True)[0]
    e_fast, e_port = np.abs(fast - want).max(), np.abs(portable - want).max()
    # Both round the output to float16 (|out| < ~4: half an ulp <= 2^-9); the tensor-core one also rounds P.
    assert e_fast < 4e-3 and e_port < 4e-3, (e_fast, e_port)


def test_causal_forward_default_starts_longest_first():
    """Under the causal band the forward's default starts its blocks longest first across heads where that
    measured faster (session 20): 16-bit above head_dim 64, float32 at every head_dim; not 16-bit at 64, not
    with dropout, not the backward, not without the causal flag (a window alone, varlen); the same tiles."""
    for d, elem, want in [(128, "f16", True), (96, "bf16", True), (64, "f16", False), (32, "bf16", False),
                          (64, "tf32", True), (128, "tf32", True), (8, "tf32", True)]:
        plain = default_tc_config(d, elem=elem)
        got = default_tc_config(d, elem=elem, causal=True)
        assert got == dataclasses.replace(plain, longest_first=want) and not plain.longest_first, (d, elem)
        assert default_tc_config(d, True, elem=elem, causal=True) == default_tc_config(d, True, elem=elem)
        assert default_tc_config(d, pass_="backward", elem=elem, causal=True) == default_tc_config(
            d, pass_="backward", elem=elem)
    # (config=None hands the causal flag over: test_head_dim_128_forward_default_by_band_on_the_gpu)


def test_head_dim_128_forward_default_follows_the_band():
    """Above head_dim 64 an unmasked 16-bit forward (no band, no varlen, no dropout) takes one block of
    8 warps with 64-key tiles; a band, dropout, float32 and head_dim <= 64 keep their defaults
    (measured choices: config.default_tc_config). api._unmasked reads the checked band."""
    wide = TensorCoreConfig(256, 64, 2, 32, reread_q=True)
    for d in (72, 128):
        assert default_tc_config(d, unmasked=True) == wide
        assert default_tc_config(d, elem="bf16", unmasked=True) == wide
        assert default_tc_config(d) == TensorCoreConfig(128, 32, 2, 32, reread_q=True)
        assert default_tc_config(d, True, unmasked=True) == default_tc_config(d, True)
        assert default_tc_config(d, elem="tf32", unmasked=True) == default_tc_config(d, elem="tf32")
        assert default_tc_config(d, pass_="backward", unmasked=True) == default_tc_config(d, pass_="backward")
    assert default_tc_config(64, unmasked=True) == default_tc_config(64)
    wide.validate(128, "forward", "f16")  # fits the shared memory of one block
    opts = lambda causal, window: api._options(causal, window, 0.0, None)  # noqa: E731
    assert api._unmasked(opts(False, (-1, -1)))
    assert not api._unmasked(opts(True, (-1, -1)))
    assert not api._unmasked(opts(False, (100, -1))) and not api._unmasked(opts(False, (-1, 0)))


@gpu_only
@pytest.mark.parametrize("causal, window", [(False, (-1, -1)), (True, (-1, -1)), (False, (200, 50))])
def test_head_dim_128_forward_default_by_band_on_the_gpu(rng, monkeypatch, causal, window):
    """config=None at head_dim 128: the wide unmasked config without a band, (128, 32, 2, 32) with one,
    checked against the oracle at an odd size (rows past the last full 256-row block, a ragged key tile)."""
    import numba_flash.tc_forward as tc_forward

    used = []
    real = tc_forward.tc_forward_kernel
    monkeypatch.setattr(tc_forward, "tc_forward_kernel", lambda cfg, *rest: used.append(cfg) or real(cfg, *rest))
    B, H, n_q, n_k, D = 1, 3, 600, 777, 128
    q, k, v, do = (rng.standard_normal((B, H, n, D)).astype(np.float16) for n in (n_q, n_k, n_k, n_q))
    dev = [to_device(a) for a in (q, k, v)]
    out, lse = nf.flash_attention(*dev, causal=causal, window_size=window, return_lse=True)
    unmasked = not causal and window == (-1, -1)
    assert used == [default_tc_config(D, unmasked=unmasked, causal=causal)]
    assert (used[0].block_m == 256) == unmasked and used[0].longest_first == bool(causal)
    grads = nf.flash_attention_backward(to_device(do), *dev, out, lse, causal=causal, window_size=window)
    check_against_oracle(q, k, v, do, to_host(out), to_host(lse), [to_host(g) for g in grads], causal, window,
                         0.0, None)


@gpu_only
def test_default_backward_is_the_tensor_core_one_and_agrees_with_the_portable_one(rng):
    from numba_flash import api

    B, H, H_kv, n, D = 2, 4, 2, 300, 64
    q, do = (rng.standard_normal((B, H, n, D)).astype(np.float16) for _ in range(2))
    k, v = (rng.standard_normal((B, H_kv, n, D)).astype(np.float16) for _ in range(2))
    dev = [to_device(a) for a in (q, k, v)]
    arrays = (("q", dev[0]), ("k", dev[1]), ("v", dev[2]))
    assert isinstance(api._pick(None, "backward", D, np.float16, True, n, arrays), TensorCoreConfig)
    out, lse = nf.flash_attention(*dev, causal=True, return_lse=True)
    fast = nf.flash_attention_backward(to_device(do), *dev, out, lse, causal=True)
    portable = nf.flash_attention_backward(to_device(do), *dev, out, lse, causal=True, config=BlockConfig(32, 16, 128))
    want = nf.reference.attention_backward(do, q, k, v, causal=True)
    for name, f, p_, w in zip(("dq", "dk", "dv"), fast, portable, want):
        e_fast = np.abs(to_host(f).astype(np.float64) - w).max()
        e_port = np.abs(to_host(p_).astype(np.float64) - w).max()
        # The tensor-core kernels round P and dS to float16 before their products (as flash-attn
        # does): allow twice the portable kernels' error (which only rounds the output) plus a floor
        # of a few float16 ulps of the gradient's scale.
        assert e_fast <= 2 * e_port + 8 * 2**-11 * np.abs(w).max(), (name, e_fast, e_port)


def test_bfloat16_errors(rng):
    q = rng.standard_normal((1, 1, 8, 16)).astype(np.float16)
    bits = bf16_bits(q.astype(np.float32))
    with pytest.raises(TypeError, match="bfloat16=True expected uint16"):
        nf.flash_attention(to_device(q), to_device(q), to_device(q), bfloat16=True)
    with pytest.raises(TypeError, match="pass its uint16 bit patterns and bfloat16=True"):
        nf.flash_attention(to_device(bits), to_device(bits), to_device(bits))
    with pytest.raises(TypeError, match="bfloat16: expected a bool"):
        nf.flash_attention(to_device(bits), to_device(bits), to_device(bits), bfloat16="yes")
    with pytest.raises(ValueError, match="bfloat16 runs on the tensor-core kernels only"):
        nf.flash_attention(to_device(bits), to_device(bits), to_device(bits), bfloat16=True,
                           config=BlockConfig(16, 16, 64))
    if not ON_GPU:
        with pytest.raises(ValueError, match="need the GPU backend"):
            nf.flash_attention(bits, bits, bits, bfloat16=True)


@gpu_only
@pytest.mark.parametrize("shape", [(1, 2, 97, 97, 40), (2, 4, 257, 300, 64), (1, 2, 129, 129, 128)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("config", [None, TensorCoreConfig(64, 32, 2, 16, True)], ids=_cfg_id)
def test_bfloat16_kernels_match_oracle(rng, shape, causal, config):
    """bfloat16 in, bfloat16 out (as uint16 bit patterns), against the float64 oracle with the bounds
    of a naive bfloat16 implementation (helpers: rounding to bfloat16, unit roundoff 2^-8)."""
    B, H, n_q, n_k, D = shape
    q, k, v, do = (to_bf16(rng.standard_normal((B, H, n, D)).astype(np.float32)) for n in (n_q, n_k, n_k, n_q))
    dev = [to_device(bf16_bits(a)) for a in (q, k, v)]
    out, lse = nf.flash_attention(*dev, causal=causal, return_lse=True, bfloat16=True, config=config)
    assert out.dtype == np.uint16
    grads = nf.flash_attention_backward(to_device(bf16_bits(do)), *dev, out, lse, causal=causal, bfloat16=True,
                                        config=config)
    check_against_oracle(q, k, v, do, from_bf16_bits(to_host(out)), to_host(lse),
                         [from_bf16_bits(to_host(g)) for g in grads], causal, (-1, -1), 0.0, None, dtype=BF16)


_SPLIT = TensorCoreConfig(128, 64, 2, 16, split_d=True)


@gpu_only
@pytest.mark.parametrize("case", [
    # (B, H, H_kv, n_q, n_k, D), causal, window, dropout p, dtype, config
    ((1, 4, 2, 129, 513, 128), False, (-1, -1), 0.0, np.float16, _SPLIT),  # GQA, ragged tiles
    ((2, 2, 2, 1025, 1000, 128), True, (-1, -1), 0.0, np.float16, _SPLIT),
    ((1, 2, 2, 300, 333, 128), False, (200, 50), 0.0, np.float16, _SPLIT),
    ((1, 2, 1, 257, 300, 64), True, (-1, -1), 0.0, BF16, _SPLIT),
    ((1, 2, 2, 97, 200, 96), False, (-1, -1), 0.1, np.float16, TensorCoreConfig(64, 32, 2, 16, split_d=True)),
    ((1, 1, 1, 1, 300, 128), False, (-1, -1), 0.0, np.float16, _SPLIT),
    ((1, 2, 2, 300, 1, 64), True, (-1, -1), 0.0, np.float16, _SPLIT)], ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}")
def test_split_d_backward_matches_the_oracle(rng, case):
    """The split_d dK/dV kernel against the float64 oracle (dQ from the dQ kernel, the forward as usual):
    GQA, ragged sizes, causal, a window, dropout (the reference mask), bfloat16, a single query, a single key."""
    (B, H, H_kv, n_q, n_k, D), causal, window, p, dtype, config = case
    bf16 = dtype is BF16
    conv = (lambda a: bf16_bits(to_bf16(a))) if bf16 else (lambda a: a.astype(np.float16))
    back = (lambda a: from_bf16_bits(to_host(a))) if bf16 else to_host
    q, do = (conv(rng.standard_normal((B, H, n_q, D)).astype(np.float32)) for _ in range(2))
    k, v = (conv(rng.standard_normal((B, H_kv, n_k, D)).astype(np.float32)) for _ in range(2))
    kw = dict(causal=causal, window_size=window, dropout_p=p, seed=1234 if p else None, bfloat16=bf16)
    dev = [to_device(a) for a in (q, k, v)]
    out, lse = nf.flash_attention(*dev, return_lse=True, **kw)
    grads = nf.flash_attention_backward(to_device(do), *dev, out, lse, config=config, **kw)
    mask = reference_keep_mask(1234, p, B, H, n_q, n_k) if p else None
    host = (lambda a: from_bf16_bits(a)) if bf16 else (lambda a: a)
    check_against_oracle(host(q), host(k), host(v), host(do), back(out), to_host(lse), [back(g) for g in grads],
                         causal, window, p, mask, dtype=dtype)


@gpu_only
@pytest.mark.parametrize("causal", [False, True])
def test_head_dim_128_varlen_backward_default_is_split_d(rng, causal):
    """Packed sequences at head_dim 128, config=None: the backward's default is the split_d dK/dV kernel
    (varlen without dropout keeps it), and every sequence matches the float64 oracle. The lengths give
    ragged query and key tiles, a sequence with no queries (its dK, dV must be zero), one with a single
    query, max_seqlen above the longest query sequence, and GQA (4 query heads on 2 kv heads)."""
    from numba_flash import launch
    from test_features import varlen_case

    want = default_tc_config(128, pass_="backward")
    assert want.split_d, want
    varlen_case(dict(data_seed=int(rng.integers(2**31)), H=4, H_kv=2, D=128, dtype=np.float16, lq=[130, 0, 257, 1],
                     lk=[200, 64, 129, 300], extra_q=3, extra_k=0, causal=causal, window=(-1, -1), p=0.0, seed=None,
                     config=None))
    ran = {r["config"] for r in launch.occupancy() if r["kernel"] == "tc_dkdv"}
    assert want.label() in ran, ran


@gpu_only
@pytest.mark.parametrize("varlen", [False, True], ids=["padded", "varlen"])
@pytest.mark.parametrize("dtype, head_dim", [(np.float16, 128), (np.float16, 64), (np.float32, 128)],
                         ids=["float16-128", "float16-64", "float32-128"])
def test_longest_first_gives_the_same_bits(rng, dtype, head_dim, varlen):
    """longest_first only changes which block owns which rows, and every block sums the same terms in the
    same order, so its outputs must equal the default order's bit for bit: the forward's out and lse and
    the backward's dq, dk, dv, with the API's default configs (at head_dim 128 in 16 bits the split_d dK/dV
    kernel, at 64 the 16-key one with the dQ kernel's launch bound, float32 3xTF32), causal and under a
    window, GQA with a (head, batch entry) count that is no power of two (6 x 2 forward and dQ, 3 x 2 dK/dV),
    ragged sizes; padded, or varlen (two sequences, 97 x 200 and 203 x 317 tokens). Outputs are NaN-poisoned
    under NUMBA_FLASH_POISON=1 (the GPU runs), and every element is checked finite, so a block that the new
    order skipped would fail either way. (padded and varlen are separate cases: each compiles 8 kernels,
    30-70 s apiece on the device's CPUs; the float16-128 case with both took 548 s in session 20.)"""
    B, H, H_kv, n_q, n_k, D = 2, 6, 3, 300, 517, head_dim
    elem = config.tc_elem(dtype)
    q, do = (rng.standard_normal((B, H, n_q, D)).astype(dtype) for _ in range(2))
    k, v = (rng.standard_normal((B, H_kv, n_k, D)).astype(dtype) for _ in range(2))
    if varlen:
        cu_q, cu_k = (to_device(np.array(c, np.int32)) for c in ([0, 97, 300], [0, 200, 517]))
        pq, pk, pv, pdo = (to_device(np.ascontiguousarray(a[0].transpose(1, 0, 2))) for a in (q, k, v, do))

        def both(causal, window, fwd, bwd):
            kw = dict(causal=causal, window_size=window)
            out, lse = nf.flash_attention_varlen(pq, pk, pv, cu_q, cu_k, 203, 317, return_lse=True, config=fwd, **kw)
            return out, lse, *nf.flash_attention_varlen_backward(pdo, pq, pk, pv, out, lse, cu_q, cu_k, 203, 317,
                                                                 config=bwd, **kw)
    else:
        dev = [to_device(a) for a in (q, k, v)]
        ddo = to_device(do)

        def both(causal, window, fwd, bwd):
            out, lse = nf.flash_attention(*dev, causal=causal, window_size=window, return_lse=True, config=fwd)
            return out, lse, *nf.flash_attention_backward(ddo, *dev, out, lse, causal=causal, window_size=window,
                                                          config=bwd)
    for causal, window in [(True, (-1, -1)), (False, (150, 40))]:
        runs = {}
        for longest in (False, True):
            fwd = dataclasses.replace(default_tc_config(D, False, "forward", elem), longest_first=longest)
            bwd = dataclasses.replace(default_tc_config(D, False, "backward", elem), longest_first=longest)
            runs[longest] = [to_host(a) for a in both(causal, window, fwd, bwd)]
        for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), runs[False], runs[True]):
            finite = np.isfinite(a) if name != "lse" else ~np.isnan(a)  # (lse: -inf where a row sees no key)
            assert finite.all() and np.array_equal(a, b), (name, causal, np.argwhere(a != b)[:5])


@gpu_only
@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["float16", "bfloat16"])
def test_atomic_dq_agrees_with_the_deterministic_backward(rng, dtype):
    """The atomic-dQ backward against the two-kernel one with the same tiles, GQA, causal, ragged
    sizes: dK and dV come from the same code in the same order (bit-identical); dQ sums the same
    float32 products in another order (key blocks in arrival order, then one rounding to 16 bits):
    within a 16-bit ulp of max |dq|, plus float32 reordering noise (far below it). Repeated atomic calls
    agree the same way."""
    B, H, H_kv, n_q, n_k, D = 2, 4, 2, 1000, 1200, 64
    bf16 = dtype is BF16
    conv = (lambda a: to_device(bf16_bits(to_bf16(a)))) if bf16 else (lambda a: to_device(a.astype(np.float16)))
    back = (lambda a: from_bf16_bits(to_host(a)).astype(np.float64)) if bf16 else (
        lambda a: to_host(a).astype(np.float64))
    q, do = (rng.standard_normal((B, H, n_q, D)).astype(np.float32) for _ in range(2))
    k, v = (rng.standard_normal((B, H_kv, n_k, D)).astype(np.float32) for _ in range(2))
    dev = [conv(a) for a in (q, k, v)]
    out, lse = nf.flash_attention(*dev, causal=True, return_lse=True, bfloat16=bf16)
    runs = [nf.flash_attention_backward(conv(do), *dev, out, lse, causal=True, bfloat16=bf16, config=cfg)
            for cfg in (TensorCoreConfig(64, 32, 2, 16), TensorCoreConfig(64, 32, 2, 16, True),
                        TensorCoreConfig(64, 32, 2, 16, True))]
    ulp = 2.0 ** (-7 if bf16 else -10)  # spacing of 16-bit values in [1, 2)
    det = [back(g) for g in runs[0]]
    for other in runs[1:]:
        got = [back(g) for g in other]
        np.testing.assert_array_equal(got[1], det[1])
        np.testing.assert_array_equal(got[2], det[2])
        assert np.isfinite(got[0]).all()
        assert np.abs(got[0] - det[0]).max() <= ulp * np.abs(det[0]).max(), np.abs(got[0] - det[0]).max()


@gpu_only
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("layout", ["padded", "varlen", "dropout-window"])
def test_float32_atomic_dq_agrees_with_the_deterministic_backward_and_the_oracle(rng, head_dim, layout):
    """float32 (3xTF32) with atomic dQ, GQA, causal, ragged sizes, outputs poisoned first (NUMBA_FLASH_POISON on
    the GPU runs); padded, varlen, or padded with a sliding window (not causal) and dropout (the dropout defaults'
    smaller tiles, Z regenerated from the seed in both backward kernels and the oracle given the same mask).
    dK and dV come from the same code in the same order as the two-kernel backward (bit-identical).
    dQ sums other float32 terms in another order: per key block a chain of 3xTF32 k-steps, then one float32
    atomic add per key block in arrival order. Each of its n_blocks = ceil(n_k / 64) adds rounds by at most
    half a float32 ulp of the running sum, so against float64 its error may exceed the two-kernel dQ's by about
    n_blocks / 2 ulps of max |dq| (x 4 for partial sums above the final value): atomic error <= 2 x the
    deterministic one + that. Two atomic runs differ by at most twice that rounding."""
    B, H, H_kv, n_q, n_k, D = 2, 4, 2, 1000, 1200, head_dim
    q, do = (rng.standard_normal((B, H, n_q, D)).astype(np.float32) for _ in range(2))
    k, v = (rng.standard_normal((B, H_kv, n_k, D)).astype(np.float32) for _ in range(2))
    dropout = layout == "dropout-window"
    base = default_tc_config(D, dropout, pass_="backward", elem="tf32")
    configs = (base, dataclasses.replace(base, atomic_dq=True), dataclasses.replace(base, atomic_dq=True))
    if layout != "varlen":
        kw = dict(window_size=(300, 40), dropout_p=0.15, seed=7) if dropout else dict(causal=True)
        dev = [to_device(a) for a in (q, k, v)]
        out, lse = nf.flash_attention(*dev, return_lse=True, **kw)
        runs = [[to_host(g).astype(np.float64) for g in nf.flash_attention_backward(
            to_device(do), *dev, out, lse, config=cfg, **kw)] for cfg in configs]
        ref_kw = (dict(window_size=(300, 40), dropout_p=0.15, dropout_mask=reference_keep_mask(7, 0.15, B, H, n_q, n_k))
                  if dropout else kw)
        ref = [r.astype(np.float64) for r in nf.reference.attention_backward(do, q, k, v, **ref_kw)]
    else:  # the batch's two sequences packed: (total, heads, D), cu_seqlens offsets
        pack = lambda a: np.ascontiguousarray(np.concatenate(list(a.transpose(0, 2, 1, 3)), axis=0))
        cu_q = to_device(np.array([0, n_q, 2 * n_q], np.int32))
        cu_k = to_device(np.array([0, n_k, 2 * n_k], np.int32))
        dev = [to_device(pack(a)) for a in (q, k, v)]
        out, lse = nf.flash_attention_varlen(*dev, cu_q, cu_k, n_q, n_k, causal=True, return_lse=True)
        runs = [[to_host(g).astype(np.float64) for g in nf.flash_attention_varlen_backward(
            to_device(pack(do)), *dev, out, lse, cu_q, cu_k, n_q, n_k, causal=True, config=cfg)] for cfg in configs]
        ref = [pack(r).astype(np.float64) for r in nf.reference.attention_backward(do, q, k, v, causal=True)]
    det = runs[0]
    top = np.abs(ref[0]).max()
    rounding = 4 * (-(-n_k // base.block_m) / 2) * 2.0 ** -23 * top
    det_err = np.abs(det[0] - ref[0]).max()
    for got in runs[1:]:
        np.testing.assert_array_equal(got[1], det[1])
        np.testing.assert_array_equal(got[2], det[2])
        assert np.isfinite(got[0]).all()
        err = np.abs(got[0] - ref[0]).max()
        assert err <= 2 * det_err + rounding, (err, det_err, rounding)
    assert np.abs(runs[1][0] - runs[2][0]).max() <= 2 * rounding
