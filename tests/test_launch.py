"""The prepared launch (numba_flash.launch) packs each kernel's parameters where the compiled
kernel expects them: checked against the ``.param`` list of the PTX that numba-cuda generates for
the same signature (runs anywhere the CUDA 13 compiler wheels are installed; the GPU suite then
runs every kernel through this launcher)."""

import json
import os
import re
import struct
import subprocess
import sys

import pytest

from test_compile import _have_toolchain

_SCRIPT = r"""
import json, numpy as np
from numba import types
from numba_flash import launch
from numba_flash.backward import delta_kernel, dkdv_kernel
from numba_flash.config import BlockConfig
from numba_flash.forward import forward_kernel
from numba_flash.resources import compile_for

cfg = BlockConfig(16, 16, 32)
h4 = np.empty((1, 2, 3, 8), np.float16); f3 = np.empty((1, 2, 3), np.float32); cu = np.empty(2, np.int32)
opts = (cu, cu, np.float32(1), 2, np.int64(-1), np.int64(0), np.uint64(1), np.uint64(2), np.uint64(3), np.float32(1))
cases = {"forward": (forward_kernel(cfg, 8, False, True), (h4, h4, h4, h4, f3) + opts),
         "dkdv": (dkdv_kernel(cfg, 8, True, False), (h4, h4, h4, h4, f3, f3, h4, h4) + opts),
         "delta": (delta_kernel(8), (h4, h4, f3))}
out = {}
for name, (k, args) in cases.items():
    sig = tuple(launch._numba_type(a) for a in args)
    ptx, _ = compile_for(k.py_func, sig, (9, 0), name)
    fmt, offsets = launch.param_layout(sig)
    out[name] = {"ptx": ptx, "fmt": fmt, "offsets": offsets}
print(json.dumps(out))
"""

_PARAM = re.compile(r"\.param\s+\.(?:align\s+\d+\s+)?\.?([busf])(\d+)\s+\w+")


@pytest.mark.skipif(not _have_toolchain(), reason="needs the CUDA 13 compiler wheels: pip install 'numba-cuda[cu13]'")
def test_parameter_layout_matches_the_compiled_kernels():
    env = dict(os.environ, NUMBA_FLASH_BACKEND="gpu")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name, r in json.loads(proc.stdout.strip().splitlines()[-1]).items():
        entry = r["ptx"].split(".entry", 1)[1].split(")", 1)[0]
        params = _PARAM.findall(entry)
        # PTX: each parameter at the next multiple of its own size, as ``struct``'s native mode does.
        offset, want = 0, []
        for _, bits in params:
            size = int(bits) // 8
            offset = -(-offset // size) * size
            want.append((offset, size))
            offset += size
        codes = r["fmt"][1:]
        got = list(zip(r["offsets"], (struct.calcsize(c) for c in codes)))
        assert len(params) == len(codes), (name, len(params), len(codes))
        assert got == want, name
        kinds = {"f": "f", "d": "f", "q": "bsu", "Q": "bsu", "i": "bsu", "I": "bsu", "P": "bsu", "?": "bsu"}
        assert all(kind in kinds[c] for (kind, _), c in zip(params, codes)), name
