"""Run one backward per TensorCoreConfig between cudaProfilerStart/Stop, for Nsight Compute.

    ncu --profile-from-start off --section SpeedOfLight --section WarpStateStats \\
        python experiments/profile_backward.py --shape 4,32,4096,64 --config 64,64,2,16,0 --config 64,32,2,16,1

Each config's kernels (delta, dK/dV, dQ or the atomic dQ's conversion) run once untimed first (compile,
warm-up), then once inside the profiled range. float16 inputs (``--dtype float32``: the 3xTF32 kernels),
non-causal unless ``--causal``; without ``--config``, the default backward config of the shape and dtype:

    ncu --profile-from-start off --metrics gpu__time_duration.sum \
        python experiments/profile_backward.py --shape 4,16,4096,128 --dtype float32 --causal
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's numba_flash
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling scripts, however this one is loaded

from atomic_dq import _config, _shape, label  # noqa: E402
from hbm_traffic import _profiler  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=_shape, default=(4, 32, 4096, 64), metavar="B,H,N,D")
    p.add_argument("--config", action="append", type=_config, metavar="BM,BN,STAGES,16[,atomic][,reread]",
                   help="default: the default backward config")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--lock", default=None, help="a file to lock (timing.exclusive) around each profiled call")
    args = p.parse_args(argv)
    args.config = args.config or [None]
    import numpy as np

    import numba_flash as nf
    from numba_flash import backend
    from numba_flash.timing import exclusive, shared

    if backend.BACKEND != backend.GPU:
        print("profile_backward: needs the GPU backend; nothing to do")
        return 0
    xp = backend.array_module()
    rng = np.random.default_rng(0)
    q, k, v, do = (xp.asarray(rng.standard_normal(args.shape).astype(args.dtype)) for _ in range(4))
    out, lse = nf.flash_attention(q, k, v, causal=args.causal, return_lse=True)
    for cfg in args.config:
        with shared(args.lock):
            nf.flash_attention_backward(do, q, k, v, out, lse, causal=args.causal, config=cfg)
            xp.cuda.get_current_stream().synchronize()
        with exclusive(args.lock):
            _profiler(True)
            nf.flash_attention_backward(do, q, k, v, out, lse, causal=args.causal, config=cfg)
            xp.cuda.get_current_stream().synchronize()
            _profiler(False)
        print(f"profiled {'the default' if cfg is None else label(cfg)} ({args.dtype})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
