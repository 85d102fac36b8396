"""The kernels compile for the H100 (sm_90) and fit: no register spills, the shared memory that
BlockConfig predicts. Runs without a GPU: NVVM and nvJitLink come from the CUDA 13 wheels."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest


def _have_toolchain():
    return importlib.util.find_spec("cuda.bindings.nvjitlink") is not None and (
        importlib.util.find_spec("nvidia") is not None or os.path.isdir("/usr/local/cuda/nvvm")
    )


@pytest.mark.skipif(not _have_toolchain(), reason="needs the CUDA 13 compiler wheels: pip install 'numba-cuda[cu13]'")
def test_kernels_compile_for_sm90_without_spills():
    env = dict(os.environ, NUMBA_FLASH_BACKEND="gpu")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    cmd = [sys.executable, "-m", "numba_flash.resources", "--json", "--head-dims", "16", "40", "128", "256"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    # per head dim and dtype: forward, dq, dkdv in two variants (plain, varlen+dropout) + delta
    assert len(reports) == 4 * 2 * (3 * 2 + 1)
    for r in reports:
        where = f"{r['kernel']} D={r['head_dim']} {r['dtype']} config={r['config']}"
        assert r["arch"] == "sm_90"
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, where
        assert r["registers"] <= 255, where
        if r["kernel"] != "delta":
            # sm_90 reserves 1 KiB of shared memory per block for the system on top of ours
            assert r["expected_smem"] <= r["smem"] <= r["expected_smem"] + 1024, where
            assert r["barriers"] >= 1, where
