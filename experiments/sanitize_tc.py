"""A small run of the tensor-core forward for compute-sanitizer (racecheck, memcheck):

    compute-sanitizer --tool racecheck python experiments/sanitize_tc.py
    compute-sanitizer --tool memcheck  python experiments/sanitize_tc.py

Ragged sizes (97 queries, 83 keys: partial tiles on both sides, zero-filled copies), causal and
not, the default config and the one-buffer one, varlen with dropout. Prints the max error.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy  # noqa: E402
import numpy as np  # noqa: E402

import numba_flash as nf  # noqa: E402


def main() -> int:
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, n, 64)).astype(np.float16) for n in (97, 83, 83))
    worst = 0.0
    for config in (None, nf.TensorCoreConfig(16, 16, 1)):
        for causal in (False, True):
            out = nf.flash_attention(*(cupy.asarray(a) for a in (q, k, v)), causal=causal, config=config)
            want = nf.reference.attention_forward(q, k, v, causal=causal)[0]
            worst = max(worst, float(np.abs(cupy.asnumpy(out).astype(np.float64) - want).max()))
    cu = cupy.asarray(np.array([0, 40, 97], np.int32))
    cuk = cupy.asarray(np.array([0, 50, 83], np.int32))
    pq, pk, pv = (cupy.asarray(a[0].transpose(1, 0, 2).copy()) for a in (q, k, v))
    nf.flash_attention_varlen(pq, pk, pv, cu, cuk, 57, 50, causal=True, dropout_p=0.2, seed=7)
    cupy.cuda.get_current_stream().synchronize()
    print(f"max abs error {worst:.3e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
