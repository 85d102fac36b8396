"""Tensor-core groundwork (numba_flash.ptx): the inline-PTX mma compiles for sm_90 on any machine
(NVVM + nvJitLink from the CUDA 13 wheels) and, on a GPU, computes A @ B. The simulator cannot run
inline PTX, so the numerical test is GPU-only."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ON_GPU
from test_compile import _have_toolchain


@pytest.mark.skipif(not _have_toolchain(), reason="needs the CUDA 13 compiler wheels: pip install 'numba-cuda[cu13]'")
def test_warp_mma_compiles_to_tensor_core_ptx_for_sm90():
    env = dict(os.environ, NUMBA_FLASH_BACKEND="gpu")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run([sys.executable, "-m", "numba_flash.ptx"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report["mma_lines"]) == 1
    assert report["mma_lines"][0].startswith("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32")
    assert report["spill_stores"] == report["spill_loads"] == report["lmem"] == report["stack"] == 0


@pytest.mark.skipif(not ON_GPU, reason="inline PTX (mma.sync) runs only on a GPU; the simulator cannot execute it")
def test_warp_mma_computes_a_times_b(rng):
    import cupy

    from numba_flash.ptx import warp_mma_kernel

    a = rng.standard_normal((16, 16)).astype(np.float16)
    b = rng.standard_normal((16, 8)).astype(np.float16)
    c = cupy.full((16, 8), np.nan, dtype=np.float32)
    warp_mma_kernel()[1, 32](cupy.asarray(a), cupy.asarray(b), c)
    want = a.astype(np.float64) @ b.astype(np.float64)
    # fp16 inputs are exact in fp32; 16 fp32 products summed: a few u_fp32 times sum |a_ik b_kj|
    bound = 16 * 2.0**-24 * (np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)))
    assert np.all(np.abs(c.get() - want) <= bound)
