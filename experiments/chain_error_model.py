"""What chaining 3xTF32 k-steps in the tensor cores' accumulator costs in accuracy: a NumPy model.

The float32 kernels multiply as 3xTF32 and add each chain of k-steps' product to their float32 sums outside
the tensor cores (config.TF32_CHAIN k-steps per chain: 2 by default since session 19, 1 before), because the
tensor cores truncate what they add into an accumulator. This models S = Q K^T the way the kernels compute it, for chains of 1, 2, 4, ... k-steps:

* big = x rounded to TF32 (``ptx.split_tf32``), small = x - big, which the mma reads truncated to TF32;
* one m16n8k8 mma: exact products and sum, then truncation toward zero to float32 (the accumulator);
* per k-step three mma (small·big, big·small, big·big) into the chain's sum, which starts from zero;
* at a chain's end one float32 add (round to nearest) into S.

It prints max and rms error of S against float64, relative to max |S|, per chain length and head_dim. The
truncations all lean toward zero, so the error grows about linearly with the chain (not as its square
root). A model, not the hardware: it does not know the tensor cores' internal alignment of the 8 products.

    python experiments/chain_error_model.py --out experiments/results/chain_error_model
    python experiments/chain_error_model.py --smoke --out /tmp/chains
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's numba_flash, uninstalled


def tf32_round(x: np.ndarray) -> np.ndarray:
    """x rounded to TF32 as ``ptx.split_tf32`` does: add half a TF32 ulp to the bits, clear the low 13."""
    i = x.astype(np.float32).view(np.uint32)
    return ((i + np.uint32(4096)) & np.uint32(0xFFFFE000)).view(np.float32)


def tf32_read(x: np.ndarray) -> np.ndarray:
    """What an mma reads of a float32 register as TF32: its top 19 bits."""
    return (x.astype(np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def to_f32_toward_zero(v: np.ndarray) -> np.ndarray:
    r = v.astype(np.float32)
    over = np.abs(r.astype(np.float64)) > np.abs(v)
    r[over] = np.nextafter(r[over], np.float32(0))
    return r


def mma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """c + a b for TF32 a (M x 8) and b (8 x N): exact products and sum, truncated to float32."""
    return to_f32_toward_zero(c.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64))


def scores(q: np.ndarray, k: np.ndarray, chain: int) -> np.ndarray:
    """S = q k^T as the float32 kernels compute it with chains of ``chain`` k-steps (8 columns each)."""
    ksteps = q.shape[1] // 8
    s = np.zeros((q.shape[0], k.shape[0]), np.float32)
    g = s
    for kk in range(ksteps):
        a, b = q[:, 8 * kk:8 * kk + 8], k[:, 8 * kk:8 * kk + 8].T
        a_big, b_big = tf32_round(a), tf32_round(b)
        a_small, b_small = tf32_read(a - a_big), tf32_read(b - b_big)
        if kk % chain == 0:
            g = np.zeros_like(s)
        g = mma(a_small, b_big, g)
        g = mma(a_big, b_small, g)
        g = mma(a_big, b_big, g)
        if (kk + 1) % chain == 0 or kk == ksteps - 1:
            s = (s + g).astype(np.float32)
    return s


def run(head_dims, chains, queries: int, keys: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for d in head_dims:
        q = rng.standard_normal((queries, d)).astype(np.float32)
        k = rng.standard_normal((keys, d)).astype(np.float32)
        exact = q.astype(np.float64) @ k.astype(np.float64).T
        scale = np.abs(exact).max()
        base = None
        for c in chains:
            if c > d // 8:
                continue
            e = np.abs(scores(q, k, c) - exact)
            rms = float(np.sqrt((e ** 2).mean()) / scale)
            base = base or rms
            rows.append({"head_dim": d, "chain": c, "max err / max|S|": float(e.max() / scale),
                         "rms err / max|S|": rms, "rms vs chain 1": rms / base})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--chains", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--queries", type=int, default=512)
    p.add_argument("--keys", type=int, default=2048)
    p.add_argument("--smoke", action="store_true", help="small sizes, seconds")
    p.add_argument("--out", default="experiments/results/chain_error_model")
    args = p.parse_args(argv)
    for name in ("head_dims", "chains"):
        bad = [x for x in getattr(args, name) if x < 1 or (name == "head_dims" and x % 8)]
        if bad:
            p.error(f"--{name.replace('_', '-')}: expected positive values (head_dim a multiple of 8), got {bad}")
    if args.smoke:
        args.queries, args.keys, args.head_dims = 64, 128, [32]
    from numba_flash.results import markdown_table, save

    rows = run(args.head_dims, sorted(set(args.chains)), args.queries, args.keys)
    body = (f"S = Q K^T of {args.queries} x {args.keys} standard normal float32 rows, modelled as the 3xTF32 kernels "
            "compute it (truncating mma accumulation, one float32 add per chain), against float64.\n\n"
            + markdown_table(rows))
    save(args.out, "chain_error_model", {"rows": rows, "args": vars(args)}, body,
         title="3xTF32 k-step chains: modelled error of S")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
