"""What issue 5's features cost or save: sliding windows, GQA/MQA, dropout, packed varlen batches.

Five scenarios, each timed forward and forward+backward (CUDA events, ``numba_flash.timing.time_ms``,
median of repeats after warm-up; several input sets rotated when one fits in L2, as in
``numba_flash.bench``), each preceded by one correctness spot check against the float64 oracle:

1. ``window``   full vs ``window_size=(w, w)`` and causal vs causal + ``(w, -1)``: time against the
                exact fraction of (query, key) pairs inside the band. If tiles outside the band are
                skipped, time follows the band ("time ratio / band ratio" near 1); if they were only
                masked, time would stay that of full attention (ratio = 1 / band ratio).
2. ``gqa``      H query heads, H_kv in {H, H/2, H/8, 1}: time and K/V memory; vs torch SDPA with
                ``enable_gqa=True`` (each backend forced with ``sdpa_kernel``) when torch is here.
3. ``dropout``  p = 0 vs p > 0: the cost of regenerating the Philox mask in every pass; vs SDPA's dropout.
4. ``varlen``   a packed batch of mixed lengths (fixed-seed draw) vs the same batch padded to the
                longest sequence through ``flash_attention`` (which computes the padding too); causal too.
5. ``combined`` causal + window + GQA + dropout together, built up one feature at a time from causal.

FLOPs are nominal and count useful work only: 4 * (visible (query, key) pairs) * D per (batch,
head) forward (two matmuls), x3.5 for forward+backward, where visible pairs are counted exactly
(a window's band, a causal triangle N(N+1)/2, each packed sequence's own square). So TFLOP/s of
a padded run or of a run that masks instead of skipping come out low, as they should.

The spot check runs the benchmarked call (same kernels, dtype and options) on a slice of the
scenario's inputs (batch 0, one or two kv heads with their query heads, the first ``--check-seqlen``
positions; varlen: the first three sequences cut to that length, oracle sequence by sequence) and
compares out, lse, dq, dk and dv with ``numba_flash.reference`` in float64, the dropout mask drawn
by ``philox.reference_keep_mask``. It passes when max |err| / max |ref| <= 1e-2 (float16) or 1e-4
(float32); a failure is printed in red and recorded, and our records then say ``checked: false``.

Our kernels are slow (a few TFLOP/s), so every measurement has a time budget (``--budget``,
at least 2 repeats), a single run over ``--max-single`` seconds is skipped, and ``--max-total``
bounds the whole run: each scenario gets a share of what is left, and a measurement predicted
(from the throughput seen so far) not to fit is skipped and recorded with the reason.

    python experiments/bench_features.py --out experiments/results/bench_features   # GPU, ~2-4 min
    python experiments/bench_features.py --smoke --out /tmp/bench_features          # simulator, ~20 s
    python experiments/bench_features.py --shape 2,16,2048,128 --scenario window    # any shape, one scenario
"""

# No ``from __future__ import annotations``: tests load this file without registering it in
# sys.modules, and dataclasses then cannot resolve string annotations.
import argparse
import contextlib
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import numba_flash as nf  # noqa: E402  (chooses GPU or simulator before numba.cuda is imported)
from numba_flash import backend, bench, masking, reference, results  # noqa: E402
from numba_flash.philox import reference_keep_mask  # noqa: E402
from numba_flash.timing import time_ms  # noqa: E402

NAME = "bench_features"
NF = "numba_flash"
SCENARIOS = ("window", "gqa", "dropout", "varlen", "combined")
TITLES = {
    "window": "Sliding window: time vs the fraction of (query, key) pairs in the band",
    "gqa": "GQA / MQA: fewer K/V heads",
    "dropout": "Dropout: regenerating the Philox mask in every pass",
    "varlen": "Varlen: a packed batch of mixed lengths vs the same batch padded",
    "combined": "Combined: causal + window + GQA + dropout",
}
# Shares of --max-total: each scenario gets weight / (sum of weights of those not yet run) of what is left.
WEIGHTS = {"window": 0.35, "gqa": 0.2, "dropout": 0.15, "varlen": 0.2, "combined": 0.1}
PASSES = ("forward", "forward_backward")
PASS_FACTOR = {"forward": 1.0, "forward_backward": 3.5}
SHORT_PASS = {"forward": "fwd", "forward_backward": "fwd+bwd"}
# A fixed dropout seed: the benchmark is reproducible, and the oracle draws the same mask from it.
DROPOUT_SEED = 0x5EED_F1A5_4A77_0005
# Spot-check tolerance: max |kernel - oracle| / max |oracle| over out, lse, dq, dk, dv.
TOLERANCE = {"float16": 1e-2, "float32": 1e-4}
SDPA = {name: name.replace("torch_", "sdpa_") for name in bench.TORCH_BACKENDS}
FLOP_NOTE = ("Nominal FLOPs of the useful work only: 4 * (visible (query, key) pairs) * head_dim per (batch, "
             "query head) for the forward (QK^T and PV), x3.5 for forward+backward. Visible pairs are counted "
             "exactly: inside the window band, the causal triangle (N(N+1)/2, not N^2/2), each packed sequence's "
             "own square; padding and masked-out pairs count nothing. So the same work gets the same FLOPs "
             "whichever way it is computed, and TFLOP/s is useful work per second.")


# --------------------------------------------------------------------------------------------
# Counting


def visible_pairs(n_q: int, n_k: int, causal: bool = False, window_size=(-1, -1)) -> int:
    """Exactly how many (query i, key j) pairs are visible (``reference.visibility_mask``'s rule:
    bottom-right aligned band ``i + diag - left <= j <= i + diag + right``, ``j <= i + diag`` if causal)."""
    left, right = window_size
    i = np.arange(n_q, dtype=np.int64)
    diag = n_k - n_q
    lo = np.zeros(n_q, dtype=np.int64) if left < 0 else np.maximum(0, i + diag - left)
    hi = np.full(n_q, n_k - 1, dtype=np.int64) if right < 0 else np.minimum(n_k - 1, i + diag + right)
    if causal:
        hi = np.minimum(hi, i + diag)
    return int(np.maximum(0, hi - lo + 1).sum())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def tile_fraction(n_q: int, n_k: int, block_m: int, block_n: int, causal: bool, window_size) -> float:
    """Fraction of (query tile, key tile) pairs the forward kernel visits: per query tile, the key
    tiles of the kernels' own ``masking.key_span`` for the kernels' own ``masking.band``."""
    left, right = masking.band(causal, window_size)
    diag, visited = n_k - n_q, 0
    for m0 in range(0, n_q, block_m):
        start, end = masking.key_span.py_func(m0, min(m0 + block_m, n_q) - 1, diag, left, right, n_k, block_n)
        visited += _cdiv(end - start, block_n) if end > start else 0
    return visited / (_cdiv(n_q, block_m) * _cdiv(n_k, block_n))


def attention_flops(B: int, H: int, pairs: int, D: int) -> float:
    """Forward FLOPs of ``pairs`` visible pairs per (batch, query head): two matmuls, 2 FLOPs per MAC."""
    return 4.0 * B * H * pairs * D


def varlen_lengths(total: int, lo: int, hi: int, seed: int) -> list[int]:
    """Sequence lengths drawn uniformly from [lo, hi] (fixed seed) until about ``total`` tokens: draws
    stop before the total is exceeded; a remainder of at least ``lo`` tokens becomes the last sequence."""
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    while True:
        n = int(rng.integers(lo, hi + 1))
        if sum(lengths) + n > total:
            rest = total - sum(lengths)
            if rest >= lo or not lengths:
                lengths.append(max(1, min(rest, hi)))
            return lengths
        lengths.append(n)


# --------------------------------------------------------------------------------------------
# Device arrays


def _xp():
    return backend.array_module()


def _host(a):
    return _xp().asnumpy(a) if backend.BACKEND == backend.GPU else np.asarray(a)


def _device(a):
    return _xp().asarray(a)


class _Random:
    """Standard-normal arrays in ``dtype`` on the device (drawn there on the GPU), never zeros."""

    def __init__(self, seed: int):
        xp = _xp()
        self.rng = xp.random.RandomState(seed) if backend.BACKEND == backend.GPU else np.random.default_rng(seed)

    def normal(self, shape, dtype):
        return self.rng.standard_normal(shape, dtype=np.float32).astype(dtype)


def n_input_sets(set_bytes: int, l2: int) -> int:
    """Several input sets when one fits in L2 (numba_flash.bench's rule), one on the simulator."""
    if backend.BACKEND != backend.GPU or set_bytes >= l2:
        return 1
    return int(min(bench.MAX_INPUT_SETS, math.ceil(2 * l2 / set_bytes)))


def _contiguous(a):
    return _xp().ascontiguousarray(a)


# --------------------------------------------------------------------------------------------
# Implementations: what one timed call does


def _nf_kwargs(causal=False, window_size=(-1, -1), dropout_p=0.0):
    return dict(causal=causal, window_size=tuple(window_size), dropout_p=dropout_p,
                seed=DROPOUT_SEED if dropout_p > 0 else None)


def nf_padded(pass_: str, **options) -> Callable:
    """numba_flash on (q, k, v, dO) in the (B, H, N, D) layout."""
    kw = _nf_kwargs(**options)
    if pass_ == "forward":
        return lambda q, k, v, do: nf.flash_attention(q, k, v, **kw)

    def forward_backward(q, k, v, do):
        out, lse = nf.flash_attention(q, k, v, return_lse=True, **kw)
        return nf.flash_attention_backward(do, q, k, v, out, lse, **kw)

    return forward_backward


def nf_varlen(pass_: str, **options) -> Callable:
    """numba_flash on a packed set (q, k, v, dO, cu_seqlens, max_seqlen)."""
    kw = _nf_kwargs(**options)
    if pass_ == "forward":
        return lambda q, k, v, do, cu, n: nf.flash_attention_varlen(q, k, v, cu, cu, n, n, **kw)

    def forward_backward(q, k, v, do, cu, n):
        out, lse = nf.flash_attention_varlen(q, k, v, cu, cu, n, n, return_lse=True, **kw)
        return nf.flash_attention_varlen_backward(do, q, k, v, out, lse, cu, cu, n, n, **kw)

    return forward_backward


def _torch():
    return bench._torch()


def torch_reason(args) -> str | None:
    """Why SDPA is not compared here, or None when it is."""
    if args.no_torch:
        return "disabled by --no-torch"
    if backend.BACKEND != backend.GPU:
        return "torch SDPA needs the GPU backend (running on the CUDA simulator)"
    if _torch() is None:
        return "torch (>= 2.3, with CUDA) is not installed"
    return None


def sdpa_prepare(q, k, v, do):
    """Zero-copy torch views of one input set; q, k, v become leaves autograd differentiates."""
    torch = _torch()
    tq, tk, tv, tdo = (torch.from_dlpack(a) for a in (q, k, v, do))
    return tuple(t.requires_grad_(True) for t in (tq, tk, tv)) + (tdo,)


def sdpa_fn(pass_: str, causal=False, dropout_p=0.0, gqa=False) -> Callable:
    """``F.scaled_dot_product_attention`` (the backend is forced by :func:`sdpa_context`)."""
    torch = _torch()
    F = torch.nn.functional
    kw = dict(is_causal=causal, dropout_p=dropout_p)
    if gqa:
        kw["enable_gqa"] = True  # torch >= 2.5; an older torch raises TypeError, which is recorded
    if pass_ == "forward":
        def forward(q, k, v, do):
            with torch.no_grad():  # inference: no autograd bookkeeping
                return F.scaled_dot_product_attention(q, k, v, **kw)

        return forward

    def forward_backward(q, k, v, do):
        out = F.scaled_dot_product_attention(q, k, v, **kw)
        return torch.autograd.grad(out, (q, k, v), do)  # same work every repeat, no .grad accumulation

    return forward_backward


def sdpa_context(name: str) -> Callable:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    member = getattr(SDPBackend, bench.TORCH_BACKENDS[name][0])
    return lambda: sdpa_kernel(member)


def _configs(D: int, dtype, causal: bool, seqlen: int, pass_: str):
    """The block configs numba_flash picks with config=None for this problem (informational)."""
    from numba_flash import api

    kernels = ("forward",) if pass_ == "forward" else ("forward", "backward")
    try:
        return {k: str(api._check_config(None, D, np.dtype(dtype), k, causal, seqlen)) for k in kernels}
    except Exception:  # noqa: BLE001 - the private signature may change; informational only
        return None


def _forward_blocks(D: int, dtype, causal: bool, seqlen: int):
    from numba_flash import api

    try:
        cfg = api._check_config(None, D, np.dtype(dtype), "forward", causal, seqlen)
        return cfg.block_m, cfg.block_n
    except Exception:  # noqa: BLE001
        from numba_flash.config import default_config

        cfg = default_config(D, np.dtype(dtype), "forward")
        return cfg.block_m, cfg.block_n


# --------------------------------------------------------------------------------------------
# Correctness spot checks against the float64 oracle


def _rel_err(got, want) -> float:
    """max |got - want| / max |want| over the reference's finite entries; inf where got is not finite
    but want is, or where want is -inf (an lse of a row that sees nothing) and got is not."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    finite = np.isfinite(want)
    if not np.isfinite(got[finite]).all() or not np.array_equal(got[~finite], want[~finite]):
        return math.inf
    if not finite.any():
        return 0.0
    scale = float(np.max(np.abs(want[finite]))) or 1.0
    return float(np.max(np.abs(got[finite] - want[finite]))) / scale


def _oracle(q, k, v, do, causal, window_size, dropout_p, batch_index=0):
    """out, lse, dq, dk, dv of one (B, H, N, D) problem in float64, with the kernels' dropout mask
    (that of batch entries ``batch_index ..``: a varlen sequence b gets batch entry b's mask)."""
    B, H, n_q, _ = q.shape
    mask = None
    if dropout_p > 0:
        mask = reference_keep_mask(DROPOUT_SEED, dropout_p, batch_index + B, H, n_q, k.shape[2])[batch_index:]
    opts = dict(causal=causal, window_size=window_size, dropout_p=dropout_p, dropout_mask=mask)
    out, lse = reference.attention_forward(q, k, v, **opts)
    return (out, lse, *reference.attention_backward(do, q, k, v, **opts))


TENSORS = ("out", "lse", "dq", "dk", "dv")


def check_padded(label: str, q, k, v, do, **options) -> dict:
    """Run the benchmarked call (same kernels, dtype, options) on host slices q, k, v, do and
    compare out, lse, dq, dk, dv with the oracle."""
    dev = [_device(a) for a in (q, k, v, do)]
    kw = _nf_kwargs(**options)
    out, lse = nf.flash_attention(*dev[:3], return_lse=True, **kw)
    grads = nf.flash_attention_backward(dev[3], *dev[:3], out, lse, **kw)
    got = [_host(a) for a in (out, lse, *grads)]
    want = _oracle(q, k, v, do, options.get("causal", False), options.get("window_size", (-1, -1)),
                   options.get("dropout_p", 0.0))
    errs = {name: _rel_err(g, w) for name, g, w in zip(TENSORS, got, want)}
    return {"label": label, "options": _jsonable_options(options), "shape": list(q.shape),
            "kv_shape": list(k.shape), "errors": errs, "max_rel_err": max(errs.values())}


def check_varlen(label: str, q, k, v, do, lengths, **options) -> dict:
    """The packed call on host (total, H, D) arrays, against the oracle sequence by sequence."""
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    n = int(max(lengths))
    kw = _nf_kwargs(**options)
    dev = [_device(a) for a in (q, k, v, do)]
    dcu = _device(cu)
    out, lse = nf.flash_attention_varlen(*dev[:3], dcu, dcu, n, n, return_lse=True, **kw)
    grads = nf.flash_attention_varlen_backward(dev[3], *dev[:3], out, lse, dcu, dcu, n, n, **kw)
    got = [_host(a) for a in (out, lse, *grads)]
    errs = dict.fromkeys(TENSORS, 0.0)
    as4 = lambda a, s, e: a[s:e].transpose(1, 0, 2)[None]  # noqa: E731 - (L, H, D) -> (1, H, L, D)
    for b in range(len(lengths)):
        s, e = int(cu[b]), int(cu[b + 1])
        if e == s:
            continue
        want = _oracle(as4(q, s, e), as4(k, s, e), as4(v, s, e), as4(do, s, e), options.get("causal", False),
                       options.get("window_size", (-1, -1)), options.get("dropout_p", 0.0), batch_index=b)
        mine = [as4(got[0], s, e), got[1][:, s:e][None], *(as4(g, s, e) for g in got[2:])]
        for name, g, w in zip(TENSORS, mine, want):
            errs[name] = max(errs[name], _rel_err(g, w))
    return {"label": label, "options": _jsonable_options(options), "lengths": [int(x) for x in lengths],
            "heads": int(q.shape[1]), "kv_heads": int(k.shape[1]), "errors": errs,
            "max_rel_err": max(errs.values())}


def _jsonable_options(options: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}


def summarize_check(items: list[dict], dtype: str, slice_text: str, seconds: float) -> dict:
    worst = max((c["max_rel_err"] for c in items), default=math.inf)
    tol = TOLERANCE[dtype]
    return {"slice": slice_text, "variants": items, "max_rel_err": worst, "tolerance": tol,
            "ok": bool(worst <= tol), "seconds": seconds}


# --------------------------------------------------------------------------------------------
# Measurement


@dataclass
class Case:
    """One thing to time, in each pass. ``make(pass_)`` returns ``fn(*input_set)``; ``inputs`` names
    the scenario's input sets; ``prepare`` turns a set into fn's arguments once (torch views);
    ``context`` is entered around warm-up and timing (SDPA's forced backend)."""

    label: str
    impl: str
    options: dict
    shape: dict
    flops: float  # useful forward FLOPs
    executed: float  # nominal forward FLOPs of what the implementation computes (predicts its time)
    inputs: str
    make: Callable[[str], Callable]
    prepare: Callable | None = None
    context: Callable = contextlib.nullcontext
    extra: dict = field(default_factory=dict)
    unsupported: str | None = None
    # A baseline the scenario's other numbers are relative to: only the whole run's --max-total skips it,
    # not the scenario's share.
    essential: bool = False


class Runner:
    """Times cases under the budgets and keeps the records; one rich progress bar over all of them."""

    def __init__(self, args, console, total_measurements: int):
        self.args = args
        self.console = console
        self.t0 = time.perf_counter()
        self.max_total = args.max_total if args.max_total and args.max_total > 0 else math.inf
        self.deadline = math.inf
        self.throughput: dict = {}  # (impl, pass) -> nominal FLOP/s seen so far (predicts later runs)
        self.warm: set = set()  # (impl, pass, variant) whose kernels have run once (compiled)
        self.records: list[dict] = []
        self.on_gpu = backend.BACKEND == backend.GPU
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description:<56}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=False)
        self.task = self.progress.add_task("bench_features", total=total_measurements)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def start_scenario(self, name: str, pending: list[str]) -> float:
        """Give scenario ``name`` its share of the time left; returns that share in seconds."""
        left = self.max_total - self.elapsed()
        if math.isinf(left):
            self.deadline = math.inf
            return math.inf
        share = max(0.0, left) * WEIGHTS[name] / sum(WEIGHTS[p] for p in pending)
        self.deadline = time.perf_counter() + share
        return share

    def _remaining(self, essential: bool = False) -> float:
        left = self.max_total - self.elapsed()
        return left if essential else min(left, self.deadline - time.perf_counter())

    def run(self, scenario: str, case: Case, pass_: str, prepared: list[tuple] | None, n_sets: int, dtype: str):
        rec = {"scenario": scenario, "label": case.label, "impl": case.impl, "pass": pass_, "dtype": dtype,
               "options": _jsonable_options(case.options), "shape": case.shape,
               "flops": case.flops * PASS_FACTOR[pass_], "flops_executed": case.executed * PASS_FACTOR[pass_],
               "n_input_sets": n_sets, **case.extra}
        if case.impl == NF and "config" not in rec:
            rec["config"] = _configs(case.shape.get("D"), dtype, case.options.get("causal", False),
                                     case.shape.get("N") or case.shape.get("max_len"), pass_)
        self.progress.update(self.task, description=f"{scenario}: {case.impl} {case.label} {SHORT_PASS[pass_]}"[:56])
        if case.unsupported:
            rec.update(status="unsupported", reason=case.unsupported)
        else:
            rec.update(self._measure(case, pass_, prepared))
        if rec.get("ms"):
            rec["tflops"] = rec["flops"] / (rec["ms"] * 1e-3) / 1e12
        self.records.append(rec)
        self.progress.advance(self.task)
        if rec["status"] in ("error", "oom"):
            bench._free_memory()
        return rec

    @staticmethod
    def _warm_key(case: Case, pass_: str) -> tuple:
        """Calls that share compiled kernels: the same implementation, pass, input layout and dropout on/off."""
        return case.impl, pass_, case.inputs, case.options.get("dropout_p", 0.0) > 0

    def _measure(self, case: Case, pass_: str, prepared) -> dict:
        args = self.args
        key = (case.impl, pass_)
        work = case.executed * PASS_FACTOR[pass_]
        remaining = self._remaining(case.essential)
        share = "the whole run's --max-total" if case.essential else "this scenario's share of --max-total"
        rate = self.throughput.get(key)
        if remaining <= 0:
            return {"status": "skipped", "reason": f"the time budget ({share}) is used up"}
        if rate and self.on_gpu:
            predicted = work / rate
            if predicted > args.max_single:
                return {"status": "skipped", "predicted_s": predicted,
                        "reason": f"one run predicted to take {predicted:.1f} s > --max-single {args.max_single:g} s"}
            cost = predicted * (1 if self._warm_key(case, pass_) in self.warm else 2) + max(
                2 * predicted, min(args.budget, args.repeat * predicted))
            if cost > remaining:
                return {"status": "skipped", "predicted_s": predicted,
                        "reason": f"predicted to take {cost:.1f} s, more than the {remaining:.1f} s left of {share}"}
        fn = case.make(pass_)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with case.context():
                    if self.on_gpu:
                        # The first call of a kernel variant may compile it: warm up twice then; a fast
                        # call gets up to three warm-ups (cheap; settles clocks and allocator caches).
                        first = self._warm_key(case, pass_) not in self.warm
                        warmups, i, single = (2 if first else 1), 0, math.inf
                        while i < warmups or (i < 3 and single < 0.01):
                            t = time.perf_counter()
                            fn(*prepared[i % len(prepared)])
                            bench._sync()
                            single = time.perf_counter() - t
                            i += 1
                        self.warm.add(self._warm_key(case, pass_))
                        if single > args.max_single:
                            return {"status": "skipped", "single_run_s": single,
                                    "reason": f"one run took {single:.1f} s > --max-single {args.max_single:g} s"}
                        repeat = int(min(args.repeat, max(min(2, args.repeat), args.budget / single)))
                        timing = time_ms(fn, prepared, warmup=0, repeat=repeat)
                        bench._sync()
                    else:
                        timing = time_ms(fn, prepared, warmup=0, repeat=args.repeat)
            except Exception as exc:  # noqa: BLE001 - a failure is a result to record
                return {"status": "oom" if bench._is_oom(exc) else "error", "error": bench._error_text(exc, caught)}
        ms = timing["median_ms"]
        if ms > 0:
            self.throughput[key] = work / (ms * 1e-3)
        return {"status": "ok", "ms": ms, "min_ms": timing["min_ms"], "max_ms": timing["max_ms"],
                "repeat": timing["repeat"]}


# --------------------------------------------------------------------------------------------
# Scenarios: each has cases, input sets, a spot check and derived numbers


@dataclass
class Scenario:
    name: str
    cases: list[Case]
    make_inputs: Callable[[], dict]  # input-set name -> list of tuples of device arrays
    check: Callable[[dict], dict]  # given the input sets: the spot check's summary
    derive: Callable[[list[dict]], list[str]]  # adds derived fields to the records; summary lines
    notes: dict = field(default_factory=dict)  # recorded with the scenario (lengths, torch reason, ...)


def _sdpa_cases(args, label, options, shape, flops, inputs, dtype, causal=False, dropout_p=0.0, gqa=False,
                extra=None) -> list[Case]:
    """One case per forced SDPA backend (or none when torch is not compared here)."""
    if torch_reason(args):
        return []
    out = []
    for name, (_, dtypes) in bench.TORCH_BACKENDS.items():
        out.append(Case(label, SDPA[name], options, shape, flops, flops, inputs,
                        lambda p, c=causal, d=dropout_p, g=gqa: sdpa_fn(p, c, d, g), sdpa_prepare,
                        sdpa_context(name), dict(extra or {}),
                        None if dtype in dtypes else f"{name} does not take {dtype}"))
    return out


def _qkv_sets(rnd, B, H, H_kv, N, D, dtype, l2) -> list[tuple]:
    set_bytes = (2 * B * H * N * D + 2 * B * H_kv * N * D) * np.dtype(dtype).itemsize
    return [(rnd.normal((B, H, N, D), dtype), rnd.normal((B, H_kv, N, D), dtype), rnd.normal((B, H_kv, N, D), dtype),
             rnd.normal((B, H, N, D), dtype)) for _ in range(n_input_sets(set_bytes, l2))]


def _slice(s, q_heads, kv_heads, n):
    """Host copies of a slice of one input set: batch 0, the first heads, the first n positions."""
    q, k, v, do = s
    return (_host(q[:1, :q_heads, :n]), _host(k[:1, :kv_heads, :n]), _host(v[:1, :kv_heads, :n]),
            _host(do[:1, :q_heads, :n]))


def _heads(n: int) -> str:
    return "head 0" if n == 1 else f"heads 0-{n - 1}"


def _by(records, **match):
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def _ok(r) -> bool:
    return r is not None and r.get("status") == "ok" and r.get("ms")


def window_scenario(args, ctx) -> Scenario:
    B, H, N, D, dtype = ctx["B"], ctx["H"], ctx["N"], ctx["D"], ctx["dtype"]
    shape = dict(B=B, H=H, H_kv=H, N=N, D=D)
    variants = [("full", False, (-1, -1))] + [(f"window ({w}, {w})", False, (w, w)) for w in args.windows]
    variants += [("causal", True, (-1, -1))] + [(f"causal + window ({w}, -1)", True, (w, -1)) for w in args.windows]
    cases = []
    for label, causal, window in variants:
        pairs = visible_pairs(N, N, causal, window)
        bm, bn = _forward_blocks(D, dtype, causal, N)
        extra = {"causal": causal, "window": list(window), "baseline": "causal" if causal else "full",
                 "visible_pairs": pairs, "band_fraction": pairs / (N * N),
                 "tile_fraction": tile_fraction(N, N, bm, bn, causal, window), "forward_blocks": [bm, bn]}
        opts = dict(causal=causal, window_size=window)
        flops = attention_flops(B, H, pairs, D)
        cases.append(Case(label, NF, opts, shape, flops, flops, "qkv", lambda p, o=opts: nf_padded(p, **o),
                          extra=extra, essential=label == extra["baseline"]))

    def make_inputs():
        return {"qkv": _qkv_sets(ctx["rnd"], B, H, H, N, D, dtype, ctx["l2"])}

    def check(inputs):
        n = min(N, args.check_seqlen)
        w = next((w for w in args.windows if w < n - 1), max(1, n // 4))
        hc = min(H, args.check_heads)
        sl = _slice(inputs["qkv"][0], hc, hc, n)
        t = time.perf_counter()
        items = [check_padded(f"window ({w}, {w})", *sl, causal=False, window_size=(w, w)),
                 check_padded(f"causal + window ({w}, -1)", *sl, causal=True, window_size=(w, -1))]
        return summarize_check(items, dtype, f"batch 0, {_heads(hc)}, first {n} positions",
                               time.perf_counter() - t)

    def derive(records):
        lines = []
        for r in _by(records, impl=NF):
            base = next(iter(_by(records, impl=NF, label=r["baseline"], **{"pass": r["pass"]})), None)
            if _ok(r) and _ok(base):
                r["speedup"] = base["ms"] / r["ms"]
                r["time_ratio"] = r["ms"] / base["ms"]
                r["band_ratio"] = r["band_fraction"] / base["band_fraction"]
                r["time_over_band"] = r["time_ratio"] / r["band_ratio"]
        for pass_ in args.passes:
            for causal in (False, True):
                rs = [r for r in _by(records, impl=NF, causal=causal, **{"pass": pass_})
                      if "time_over_band" in r and r["label"] != r["baseline"]]
                if not rs:
                    continue
                narrow = min(rs, key=lambda r: r["band_fraction"])
                lines.append(
                    f"{SHORT_PASS[pass_]}, {'causal' if causal else 'not causal'}: the narrowest band "
                    f"({narrow['label']}, {narrow['band_fraction']:.3g} of the pairs, "
                    f"{narrow['band_ratio']:.3g} of {narrow['baseline']}'s) takes {narrow['time_ratio']:.3g} of "
                    f"{narrow['baseline']}'s time (speedup {narrow['speedup']:.3g}x); time ratio / band ratio "
                    f"{min(r['time_over_band'] for r in rs):.3g}-{max(r['time_over_band'] for r in rs):.3g} over "
                    f"the windows (1 = time follows the band: skipped tiles; masking alone would give up to "
                    f"{1 / narrow['band_ratio']:.3g}).")
        return lines

    return Scenario("window", cases, make_inputs, check, derive)


def gqa_scenario(args, ctx) -> Scenario:
    B, H, N, D, dtype = ctx["B"], ctx["H"], ctx["N"], ctx["D"], ctx["dtype"]
    # MHA (H_kv = H) always: the other rows are relative to it.
    kv_list = [h for h in dict.fromkeys([H] + (args.kv_heads or [H // 2, H // 8, 1])) if h >= 1 and H % h == 0]
    item = np.dtype(dtype).itemsize
    cases = []
    for h_kv in kv_list:
        group = H // h_kv
        shape = dict(B=B, H=H, H_kv=h_kv, N=N, D=D)
        label = "MHA" if group == 1 else ("MQA" if h_kv == 1 else f"GQA {group}:1")
        label = f"{label} (H_kv={h_kv})"
        extra = {"kv_heads": h_kv, "group": group, "kv_bytes": 2 * B * h_kv * N * D * item,
                 "q_bytes": B * H * N * D * item}
        flops = attention_flops(B, H, N * N, D)
        cases.append(Case(label, NF, {"kv_heads": h_kv}, shape, flops, flops, f"kv{h_kv}",
                          lambda p: nf_padded(p), extra=extra, essential=group == 1))
        cases += _sdpa_cases(args, label, {"kv_heads": h_kv, "enable_gqa": group > 1}, shape, flops, f"kv{h_kv}",
                             dtype, gqa=group > 1, extra=extra)

    def make_inputs():
        rnd, l2 = ctx["rnd"], ctx["l2"]
        sets = {}
        base = _qkv_sets(rnd, B, H, H, N, D, dtype, l2)
        for h_kv in kv_list:
            # The first h_kv heads of the MHA set's k and v, as contiguous arrays of their own size.
            sets[f"kv{h_kv}"] = [(q, _contiguous(k[:, :h_kv]), _contiguous(v[:, :h_kv]), do) for q, k, v, do in base]
        return sets

    def check(inputs):
        n = min(N, args.check_seqlen)
        h_kv = min(kv_list)
        group = H // h_kv
        sl = _slice(inputs[f"kv{h_kv}"][0], group, 1, n)
        t = time.perf_counter()
        items = [check_padded(f"H={group} query heads on 1 kv head", *sl)]
        return summarize_check(items, dtype, f"batch 0, kv head 0 and its {group} query heads, first {n} positions",
                               time.perf_counter() - t)

    def derive(records):
        lines = []
        for r in records:
            mha = next(iter(_by(records, impl=r["impl"], kv_heads=H, **{"pass": r["pass"]})), None)
            if _ok(r) and _ok(mha):
                r["speedup_vs_mha"] = mha["ms"] / r["ms"]
            ours = next(iter(_by(records, impl=NF, kv_heads=r.get("kv_heads"), **{"pass": r["pass"]})), None)
            if r["impl"] != NF and _ok(r) and _ok(ours):
                r["nf_speed_ratio"] = r["ms"] / ours["ms"]
        for pass_ in args.passes:
            rs = [r for r in _by(records, impl=NF, **{"pass": pass_}) if "speedup_vs_mha" in r and r["kv_heads"] != H]
            if not rs:
                continue
            lo, hi = min(r["speedup_vs_mha"] for r in rs), max(r["speedup_vs_mha"] for r in rs)
            verdict = (f"within {100 * max(1 - lo, hi - 1):.0f}% of MHA's time: fewer K/V heads save memory here, "
                       "not time" if 0.9 <= lo and hi <= 1.1 else f"{lo:.3g}-{hi:.3g}x MHA's speed")
            lines.append(f"numba_flash {SHORT_PASS[pass_]}: " + ", ".join(
                f"H_kv={r['kv_heads']} speedup {r['speedup_vs_mha']:.3g}x with K/V {r['kv_bytes'] / 2**20:.4g} MiB"
                for r in rs) + f" (MHA: K/V {2 * B * H * N * D * item / 2**20:.4g} MiB); {verdict}.")
            for impl in dict.fromkeys(r["impl"] for r in _by(records, **{"pass": pass_}) if r["impl"] != NF):
                mine = [r for r in _by(records, impl=impl, **{"pass": pass_}) if "kv_heads" in r]
                parts = [f"H_kv={r['kv_heads']} " + (f"{r['ms']:.3g} ms" if _ok(r) else _status(r)) for r in mine]
                if parts:
                    lines.append(f"{impl} {SHORT_PASS[pass_]}: " + ", ".join(parts) + ".")
        return lines

    return Scenario("gqa", cases, make_inputs, check, derive)


def dropout_scenario(args, ctx) -> Scenario:
    B, H, N, D, dtype = ctx["B"], ctx["H"], ctx["N"], ctx["D"], ctx["dtype"]
    shape = dict(B=B, H=H, H_kv=H, N=N, D=D)
    ps = [0.0] + [p for p in args.dropout_p if p > 0]
    flops = attention_flops(B, H, N * N, D)
    cases = []
    for p in ps:
        label = f"p={p:g}"
        cases.append(Case(label, NF, {"dropout_p": p}, shape, flops, flops, "qkv",
                          lambda pass_, p=p: nf_padded(pass_, dropout_p=p), extra={"dropout_p": p}, essential=p == 0))
        cases += _sdpa_cases(args, label, {"dropout_p": p}, shape, flops, "qkv", dtype, dropout_p=p,
                             extra={"dropout_p": p})

    def make_inputs():
        return {"qkv": _qkv_sets(ctx["rnd"], B, H, H, N, D, dtype, ctx["l2"])}

    def check(inputs):
        n = min(N, args.check_seqlen)
        p = max(ps)
        hc = min(H, args.check_heads)
        sl = _slice(inputs["qkv"][0], hc, hc, n)
        t = time.perf_counter()
        items = [check_padded(f"dropout p={p:g}", *sl, dropout_p=p)]
        return summarize_check(items, dtype, f"batch 0, {_heads(hc)}, first {n} positions (mask from "
                               "philox.reference_keep_mask)", time.perf_counter() - t)

    def derive(records):
        lines = []
        for r in records:
            base = next(iter(_by(records, impl=r["impl"], dropout_p=0.0, **{"pass": r["pass"]})), None)
            if _ok(r) and _ok(base):
                r["dropout_overhead"] = r["ms"] / base["ms"] - 1.0
            ours = next(iter(_by(records, impl=NF, dropout_p=r.get("dropout_p"), **{"pass": r["pass"]})), None)
            if r["impl"] != NF and _ok(r) and _ok(ours):
                r["nf_speed_ratio"] = r["ms"] / ours["ms"]
        for pass_ in args.passes:
            rs = [r for r in _by(records, **{"pass": pass_}) if r.get("dropout_p", 0) > 0 and "dropout_overhead" in r]
            if rs:
                lines.append(f"{SHORT_PASS[pass_]}: time with dropout vs without: " + ", ".join(
                    f"{r['impl']} {r['label']} {100 * r['dropout_overhead']:+.1f}%" for r in rs) + ".")
        return lines

    return Scenario("dropout", cases, make_inputs, check, derive)


def varlen_scenario(args, ctx) -> Scenario:
    H, D, dtype = ctx["H"], ctx["D"], ctx["dtype"]
    lo, hi = args.varlen_min, args.varlen_max or ctx["N"]
    lengths = varlen_lengths(args.varlen_tokens, lo, hi, args.varlen_seed)
    n_seq, total, max_len = len(lengths), int(sum(lengths)), int(max(lengths))
    packed_shape = dict(lengths=lengths, n_seq=n_seq, total_tokens=total, max_len=max_len, H=H, H_kv=H, D=D)
    padded_shape = dict(B=n_seq, H=H, H_kv=H, N=max_len, D=D)
    cases = []
    for causal in (False, True):
        useful = attention_flops(1, H, sum(visible_pairs(n, n, causal) for n in lengths), D)
        padded = attention_flops(n_seq, H, visible_pairs(max_len, max_len, causal), D)
        common = {"causal": causal, "useful_fraction_of_padded": useful / padded}
        cases.append(Case(f"packed{' causal' if causal else ''}", NF, {"causal": causal, "varlen": True},
                          packed_shape, useful, useful, "packed", lambda p, c=causal: nf_varlen(p, causal=c),
                          extra={**common, "layout": "packed"}, essential=True))
        cases.append(Case(f"padded{' causal' if causal else ''}", NF, {"causal": causal, "varlen": False},
                          padded_shape, useful, padded, "padded", lambda p, c=causal: nf_padded(p, causal=c),
                          extra={**common, "layout": "padded"}, essential=True))

    def make_inputs():
        rnd, l2 = ctx["rnd"], ctx["l2"]
        cu = _device(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        n = n_input_sets(4 * total * H * D * np.dtype(dtype).itemsize, l2)
        packed = [tuple(rnd.normal((total, H, D), dtype) for _ in range(4)) + (cu, max_len) for _ in range(n)]
        n = n_input_sets(4 * n_seq * max_len * H * D * np.dtype(dtype).itemsize, l2)
        padded = [tuple(rnd.normal((n_seq, H, max_len, D), dtype) for _ in range(4)) for _ in range(n)]
        return {"packed": packed, "padded": padded}

    def check(inputs):
        n = min(max_len, args.check_seqlen)
        q, k, v, do, _, _ = inputs["packed"][0]
        take = lengths[:3]
        sub = [min(L, n) for L in take]
        starts = np.concatenate([[0], np.cumsum(lengths)])[:len(take)]
        heads = min(H, args.check_heads)
        rows = np.concatenate([np.arange(s, s + L) for s, L in zip(starts, sub)])

        def sl(a):
            return _host(a[:, :heads])[rows]

        t = time.perf_counter()
        items = [check_varlen(f"packed{' causal' if c else ''}, lengths {sub}", sl(q), sl(k), sl(v), sl(do), sub,
                              causal=c) for c in (False, True)]
        return summarize_check(items, dtype, f"the first {len(take)} sequences cut to {n} positions, "
                               f"{_heads(heads)}, oracle sequence by sequence", time.perf_counter() - t)

    def derive(records):
        lines = []
        for r in _by(records, layout="packed"):
            pad = next(iter(_by(records, layout="padded", causal=r["causal"], **{"pass": r["pass"]})), None)
            if _ok(r) and _ok(pad):
                r["padded_over_packed"] = pad["ms"] / r["ms"]
                pad["padded_over_packed"] = r["padded_over_packed"]
                lines.append(f"{SHORT_PASS[r['pass']]}{', causal' if r['causal'] else ''}: packed {r['ms']:.4g} ms "
                             f"vs padded {pad['ms']:.4g} ms (speedup {r['padded_over_packed']:.3g}x); padding makes "
                             f"{1 / r['useful_fraction_of_padded']:.3g}x the useful work, only "
                             f"{100 * r['useful_fraction_of_padded']:.3g}% of the padded run is useful.")
        return lines

    notes = {"lengths": lengths, "n_seq": n_seq, "total_tokens": total, "max_len": max_len,
             "length_draw": f"uniform integers in [{lo}, {hi}], numpy default_rng({args.varlen_seed}), until about "
                            f"{args.varlen_tokens} tokens",
             "padding_note": "flash_attention has no key-padding mask: the padded run attends to the padding as "
                             "well, so it is the cost of padding (an upper bound), not the same outputs"}
    return Scenario("varlen", cases, make_inputs, check, derive, notes)


def combined_scenario(args, ctx) -> Scenario:
    B, H, N, D, dtype = ctx["B"], ctx["H"], ctx["N"], ctx["D"], ctx["dtype"]
    group = max(g for g in range(1, min(args.combined_group, H) + 1) if H % g == 0)
    h_kv, w, p = H // group, args.combined_window, args.combined_p
    window = (w, -1)
    steps = [("causal", dict(causal=True), H),
             (f"+ window ({w}, -1)", dict(causal=True, window_size=window), H),
             (f"+ GQA {group}:1", dict(causal=True, window_size=window), h_kv),
             (f"+ dropout {p:g} (all)", dict(causal=True, window_size=window, dropout_p=p), h_kv)]
    if args.smoke:  # the simulator is slow: the baseline and everything together only
        steps = [steps[0], steps[-1]]
    cases = []
    for label, opts, kvh in steps:
        pairs = visible_pairs(N, N, True, opts.get("window_size", (-1, -1)))
        flops = attention_flops(B, H, pairs, D)
        extra = {"kv_heads": kvh, "band_fraction": pairs / (N * N), "step": len(cases)}
        cases.append(Case(label, NF, {**opts, "kv_heads": kvh}, dict(B=B, H=H, H_kv=kvh, N=N, D=D), flops, flops,
                          "mha" if kvh == H else "gqa", lambda pass_, o=opts: nf_padded(pass_, **o), extra=extra,
                          essential=not cases))

    def make_inputs():
        mha = _qkv_sets(ctx["rnd"], B, H, H, N, D, dtype, ctx["l2"])
        return {"mha": mha, "gqa": [(q, _contiguous(k[:, :h_kv]), _contiguous(v[:, :h_kv]), do)
                                    for q, k, v, do in mha]}

    def check(inputs):
        n = min(N, args.check_seqlen)
        wc = w if w < n - 1 else max(1, n // 4)
        sl = _slice(inputs["gqa"][0], group, 1, n)
        t = time.perf_counter()
        items = [check_padded(f"causal + window ({wc}, -1) + GQA {group}:1 + dropout {p:g}", *sl, causal=True,
                              window_size=(wc, -1), dropout_p=p)]
        return summarize_check(items, dtype, f"batch 0, kv head 0 and its {group} query heads, first {n} positions",
                               time.perf_counter() - t)

    def derive(records):
        lines = []
        for pass_ in args.passes:
            rs = sorted(_by(records, **{"pass": pass_}), key=lambda r: r["step"])
            if not rs or not _ok(rs[0]):
                continue
            for r in rs:
                if _ok(r):
                    r["speedup_vs_causal"] = rs[0]["ms"] / r["ms"]
            if _ok(rs[-1]):
                lines.append(f"{SHORT_PASS[pass_]}: all features together take {rs[-1]['ms']:.4g} ms vs "
                             f"{rs[0]['ms']:.4g} ms for plain causal (speedup {rs[-1]['speedup_vs_causal']:.3g}x) "
                             f"with {rs[-1]['band_fraction'] / rs[0]['band_fraction']:.3g} of its pairs; step by step: "
                             + ", ".join(f"{r['label']} {r['ms']:.4g} ms" for r in rs if _ok(r)) + ".")
        return lines

    return Scenario("combined", cases, make_inputs, check, derive,
                    {"group": group, "kv_heads": h_kv, "window": list(window), "dropout_p": p})


BUILDERS = {"window": window_scenario, "gqa": gqa_scenario, "dropout": dropout_scenario,
            "varlen": varlen_scenario, "combined": combined_scenario}


# --------------------------------------------------------------------------------------------
# Reporting


def _f(x, spec=".3g"):
    return "" if x is None else format(x, spec)


def _status(r) -> str:
    return {"ok": "ok", "skipped": "skipped", "error": "error", "oom": "OOM", "unsupported": "n/a"}[r["status"]]


def _ms(r) -> str:
    return f"{r['ms']:.4g}" if _ok(r) else _status(r)


def _mib(b) -> str:
    return f"{b / 2**20:.4g}"


def scenario_rows(name: str, records: list[dict]) -> tuple[list[dict], list[str]]:
    """Display rows (strings) of one scenario, for the rich table and the Markdown table alike."""
    rows = []
    for r in records:
        row = {"impl": r["impl"].replace("numba_flash", "nf"), "variant": r["label"], "pass": SHORT_PASS[r["pass"]],
               "ms": _ms(r), "TFLOP/s": _f(r.get("tflops"))}
        g = r.get
        if name == "window":
            row.update({"band frac": _f(g("band_fraction")), "tile frac": _f(g("tile_fraction")),
                        "speedup": _f(g("speedup")), "time/band ratio": _f(g("time_over_band"))})
        elif name == "gqa":
            row.update({"H_kv": _f(g("kv_heads"), "d"), "K/V MiB": "" if g("kv_bytes") is None else _mib(g("kv_bytes")),
                        "vs MHA": _f(g("speedup_vs_mha")), "its ms / nf ms": _f(g("nf_speed_ratio"))})
        elif name == "dropout":
            row.update({"p": _f(g("dropout_p"), "g"), "overhead": "" if g("dropout_overhead") is None
                        else f"{100 * g('dropout_overhead'):+.1f}%", "its ms / nf ms": _f(g("nf_speed_ratio"))})
        elif name == "varlen":
            row.update({"GFLOP executed": _f(g("flops_executed", 0) / 1e9, ".4g"),
                        "GFLOP useful": _f(g("flops", 0) / 1e9, ".4g"), "padded/packed time": _f(g("padded_over_packed"))})
        elif name == "combined":
            row.update({"H_kv": _f(g("kv_heads"), "d"), "band frac": _f(g("band_fraction")),
                        "vs causal": _f(g("speedup_vs_causal"))})
        if r["status"] != "ok":
            row["note"] = (r.get("reason") or r.get("error") or "")[:160]
        rows.append(row)
    columns = list(dict.fromkeys(c for row in rows for c in row))
    return rows, columns


def _check_text(check: dict) -> str:
    if not check:
        return "spot check: not run"
    verdict = "OK" if check["ok"] else "FAILED"
    parts = ", ".join(f"{c['label']}: {c['max_rel_err']:.2e}" for c in check["variants"])
    return (f"spot check vs float64 oracle ({check['slice']}): max |err| / max |ref| over out, lse, dq, dk, dv = "
            f"{check['max_rel_err']:.2e} (tolerance {check['tolerance']:g}) {verdict} [{parts}]")


def _torch_note(name: str, why_no_torch: str | None) -> str | None:
    """What the scenario says about SDPA (None where it is compared)."""
    if name in ("gqa", "dropout"):
        return f"not compared: {why_no_torch}" if why_no_torch else None
    return ("not compared: SDPA has no sliding-window or packed-varlen path here (only a dense attn_mask, "
            "which computes every pair, or nested tensors)")


def print_tables(data: dict, console) -> None:
    from rich.table import Table

    for name, sc in data["scenarios"].items():
        records = [r for r in data["records"] if r["scenario"] == name]
        rows, columns = scenario_rows(name, records)
        check = sc.get("check") or {}
        table = Table(title=TITLES[name], caption=_check_text(check), caption_justify="left")
        for c in columns:
            table.add_column(c, justify="left" if c in ("impl", "variant", "pass", "note") else "right",
                             overflow="fold")
        for row in rows:
            table.add_row(*(row.get(c, "") for c in columns))
        console.print(table)
        if check and not check["ok"]:
            console.print(f"[bold red]{name}: the spot check FAILED: these times are of wrong answers[/]")
        for line in sc.get("summary", []):
            console.print(f"  {line}", highlight=False)
        if sc.get("torch"):
            console.print(f"  [yellow]SDPA: {sc['torch']}[/]")


def markdown_body(data: dict, plots: dict) -> str:
    s = data["settings"]
    parts = ["",
             "What each of issue 5's features costs or saves in numba_flash, forward and forward+backward. "
             f"Timing: {data['timing']}. {FLOP_NOTE}",
             "",
             f"Shape B={s['batch']} H={s['heads']} N={s['seqlen']} D={s['head_dim']} {s['dtype']} (varlen: its own "
             f"lengths, below). " + (f"At most {s['repeat']} timed repeats per measurement after warm-up, about "
                                     f"{s['budget_s']:g} s of them (at least 2)" if not data["simulator"] else
                                     f"{s['repeat']} timed run per measurement, no warm-up") +
             f"; the whole run was bounded by --max-total {s['max_total_s']:g} s (0: none) and took "
             f"{data['elapsed_s']:.1f} s. Every record names its shape, options and block configs in the JSON. "
             f"torch SDPA: {data['torch']}.",
             ""]
    if data["simulator"]:
        parts += ["**Simulator run (--smoke): the times are the CPU simulator's wall clock and mean nothing; the "
                  "spot checks and the counts are real.**", ""]
    for name, sc in data["scenarios"].items():
        records = [r for r in data["records"] if r["scenario"] == name]
        rows, columns = scenario_rows(name, records)
        parts += [f"## {TITLES[name]}", "", sc["description"], "", _check_text(sc.get("check")), ""]
        parts += [results.markdown_table([{c: str(v).replace("|", "\\|") for c, v in row.items()} for row in rows],
                                         columns), ""]
        parts += [f"- {line}" for line in sc.get("summary", [])]
        if sc.get("torch"):
            parts.append(f"- SDPA: {sc['torch']}")
        if name in plots:
            parts += ["", plots[name]]
        parts.append("")
    return "\n".join(parts)


DESCRIPTIONS = {
    "window": "Full vs `window_size=(w, w)` and causal vs causal + `(w, -1)`. `band frac`: the exact fraction of "
              "(query, key) pairs inside the band; `tile frac`: the fraction of (query tile, key tile) pairs the "
              "forward kernel visits (its key span per query tile, so whole tiles outside the band are never "
              "loaded). `speedup`: the baseline's (full's or causal's) ms / this ms; `time/band ratio`: (ms / "
              "baseline ms) / (band frac / baseline band frac): 1 when time follows the band (tiles skipped), "
              "1 / band ratio if the kernels only masked.",
    "gqa": "H query heads sharing H_kv K/V heads (query head h reads kv head h // (H / H_kv)); `K/V MiB` is the "
           "memory of k and v (and of dk, dv). `vs MHA`: the same implementation's ms at H_kv = H / this ms. SDPA "
           "gets `enable_gqa=True` when H_kv < H; each SDPA backend is forced with `sdpa_kernel`, and a backend that "
           "refuses is recorded with its error. `its ms / nf ms` < 1: SDPA is faster.",
    "dropout": "The same problem with dropout p = 0 and p > 0 (fixed seed). numba_flash never stores the mask: the "
               "forward, the dK/dV and the dQ kernels each regenerate it from the seed (Philox4x32-10), so its cost "
               "is paid in every pass. `overhead`: ms / ms at p = 0 - 1, per implementation.",
    "varlen": "A packed batch of mixed lengths (`flash_attention_varlen`) vs the same sequences padded to the "
              "longest and run through `flash_attention` (B = number of sequences, N = longest), which computes the "
              "padding too. Both are credited with the same useful FLOPs (each sequence's own pairs), so TFLOP/s is "
              "useful work per second; `GFLOP executed` is what each layout computes nominally.",
    "combined": "Causal attention with the features added one at a time: a causal sliding window, then GQA, then "
                "dropout (the last row has them all). `vs causal`: plain causal MHA's ms / this ms; `band frac`: "
                "fraction of pairs visible.",
}


def plot_window(records: list[dict], path: Path, title: str) -> bool:
    plt = results.pyplot()
    ok = [r for r in records if r["scenario"] == "window" and r["impl"] == NF and _ok(r)]
    if plt is None or not ok:
        return False
    passes = [p for p in PASSES if any(r["pass"] == p for r in ok)]
    fig, axes = plt.subplots(1, len(passes), figsize=(6.2 * len(passes), 4.6), squeeze=False)
    for ax, pass_ in zip(axes[0], passes):
        for causal, colour in ((False, "C0"), (True, "C1")):
            pts = sorted((r["band_fraction"], r["ms"], r) for r in ok if r["pass"] == pass_ and r["causal"] == causal)
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            name = "causal + (w, -1)" if causal else "(w, w)"
            ax.plot(xs, ys, marker="o", color=colour, label=f"{name}: measured")
            base = next((p[2] for p in pts if p[2]["label"] == p[2]["baseline"]), None)
            if base is not None:
                fx = np.linspace(0, base["band_fraction"], 50)
                ax.plot(fx, base["ms"] * fx / base["band_fraction"], linestyle="--", color=colour, alpha=0.6,
                        label=f"{name}: time proportional to the band (skipping)")
                ax.axhline(base["ms"], linestyle=":", color=colour, alpha=0.6,
                           label=f"{name}: {base['label']}'s time (masking only)")
        ax.set_xlabel("fraction of (query, key) pairs inside the band")
        ax.set_ylabel("median ms")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{SHORT_PASS[pass_]}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_overview(records: list[dict], path: Path, title: str) -> bool:
    """Bars of numba_flash's ms per variant for the gqa, dropout, varlen and combined scenarios."""
    plt = results.pyplot()
    names = [n for n in ("gqa", "dropout", "varlen", "combined")
             if any(r["scenario"] == n and r["impl"] == NF and _ok(r) for r in records)]
    if plt is None or not names:
        return False
    fig, axes = plt.subplots(1, len(names), figsize=(4.8 * len(names), 4.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        rs = [r for r in records if r["scenario"] == name and r["impl"] == NF]
        labels = list(dict.fromkeys(r["label"] for r in rs))
        x = np.arange(len(labels))
        for j, pass_ in enumerate(PASSES):
            ys = [next((r["ms"] for r in rs if r["label"] == lab and r["pass"] == pass_ and _ok(r)), 0) for lab in labels]
            ax.bar(x + (j - 0.5) * 0.4, ys, 0.4, label=SHORT_PASS[pass_])
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("median ms")
        ax.set_title(name, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# Command line


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(",", " ").split()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.replace(",", " ").split()]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="experiments/bench_features.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="experiments/results/bench_features", help="folder for JSON, Markdown, PNG")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes, 1 repeat, every scenario end to end (for the simulator; ~20 s there)")
    p.add_argument("--shape", type=bench.parse_shape, metavar="B,H,N,D",
                   help="batch, query heads, seqlen, head_dim (default 4,16,4096,64; smoke 1,2,16,16)")
    p.add_argument("--dtype", choices=("float16", "float32"), help="default float16 (smoke: float32)")
    p.add_argument("--scenario", action="append", choices=SCENARIOS, help="repeatable; default all five")
    p.add_argument("--pass", dest="passes", action="append", choices=PASSES, help="repeatable; default both")
    p.add_argument("--windows", type=_ints, metavar="W,W,...", help="window sizes w (default 128,256,512,1024,2048; smoke 4)")
    p.add_argument("--kv-heads", type=_ints, metavar="H_KV,...", help="K/V head counts for gqa (default H, H/2, H/8, 1)")
    p.add_argument("--dropout-p", type=_floats, metavar="P,...", help="dropout rates besides 0 (default 0.1)")
    p.add_argument("--varlen-tokens", type=int, help="about this many tokens in the packed batch (default 16384)")
    p.add_argument("--varlen-min", type=int, help="shortest sequence (default 128; smoke 3)")
    p.add_argument("--varlen-max", type=int, help="longest sequence (default: the seqlen N)")
    p.add_argument("--varlen-seed", type=int, default=0, help="seed of the length draw (default 0)")
    p.add_argument("--combined-window", type=int, help="left window of the combined scenario (default 1024; smoke 4)")
    p.add_argument("--combined-group", type=int, default=8, help="query heads per kv head there (default 8)")
    p.add_argument("--combined-p", type=float, default=0.1, help="dropout rate there (default 0.1)")
    p.add_argument("--check-seqlen", type=int, help="sequence length of the spot checks' slice (default 512; smoke 8)")
    p.add_argument("--check-heads", type=int,
                   help="query heads of the window/dropout/varlen spot checks (default 2; smoke 1); the GQA and "
                        "combined checks take one kv head with its whole group")
    p.add_argument("--repeat", type=int, help="most timed repeats per measurement (default 20; smoke 1)")
    p.add_argument("--budget", type=float, default=0.4,
                   help="seconds of timed repeats per measurement (at least 2 repeats; default 0.4)")
    p.add_argument("--max-single", type=float, default=10.0,
                   help="skip a measurement whose single run takes longer than this many seconds (default 10)")
    p.add_argument("--max-total", type=float, default=200.0,
                   help="seconds for the whole run; each scenario gets a share of what is left, and measurements "
                        "that would not fit are skipped and recorded (default 200; 0: no limit)")
    p.add_argument("--no-torch", action="store_true", help="do not compare with torch SDPA even when it is here")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    args = p.parse_args(argv)
    if args.smoke:
        defaults = dict(shape=bench.Shape(1, 2, 16, 16), dtype="float32", windows=[4], dropout_p=[0.1],
                        varlen_tokens=12, varlen_min=3, varlen_max=8, combined_window=4, check_seqlen=8,
                        check_heads=1, repeat=1)
    else:
        defaults = dict(shape=bench.Shape(4, 16, 4096, 64), dtype="float16", windows=[128, 256, 512, 1024, 2048],
                        dropout_p=[0.1], varlen_tokens=16384, varlen_min=128, varlen_max=None, combined_window=1024,
                        check_seqlen=512, check_heads=2, repeat=20)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.scenario = list(dict.fromkeys(args.scenario or SCENARIOS))
    args.passes = list(dict.fromkeys(args.passes or PASSES))
    for p_ in args.dropout_p + [args.combined_p]:
        if not 0 <= p_ < 1:
            raise SystemExit(f"dropout rates must lie in [0, 1), got {p_}")
    return args


def main(argv=None) -> int:
    from rich.console import Console

    args = parse_args(argv)
    # Logs are not terminals: give the tables room instead of rich's default 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if backend.BACKEND != backend.GPU and not args.smoke:
        console.print("[yellow]No GPU: running on the CUDA simulator, which is very slow; use --smoke.[/]")
    with warnings.catch_warnings():
        # The spot checks' small grids: Numba's low-occupancy warning says nothing about the timed shapes.
        warnings.filterwarnings("ignore", message=".*Grid size")
        return _main(args, console)


def _main(args, console) -> int:
    on_gpu = backend.BACKEND == backend.GPU
    shape = args.shape
    ctx = {"B": shape.batch, "H": shape.heads, "N": shape.seqlen, "D": shape.head_dim, "dtype": args.dtype,
           "rnd": _Random(args.seed), "l2": bench._l2_bytes()}
    why_no_torch = torch_reason(args)
    torch_text = f"not compared: {why_no_torch}" if why_no_torch else f"compared (torch {_torch().__version__})"
    scenarios = [BUILDERS[name](args, ctx) for name in args.scenario]
    total = sum(len(s.cases) for s in scenarios) * len(args.passes)
    console.print(f"[bold]bench_features[/] on {backend.device_name()}: B={ctx['B']} H={ctx['H']} N={ctx['N']} "
                  f"D={ctx['D']} {args.dtype}, scenarios {args.scenario}, {total} measurements; torch SDPA "
                  f"{torch_text}")
    runner = Runner(args, console, total)
    out_scenarios = {}
    with runner.progress:
        for i, sc in enumerate(scenarios):
            share = runner.start_scenario(sc.name, [s.name for s in scenarios[i:]])
            t_scenario = time.perf_counter()
            runner.progress.update(runner.task, description=f"{sc.name}: inputs and spot check")
            inputs = sc.make_inputs()
            try:
                check = sc.check(inputs)
            except Exception as exc:  # noqa: BLE001 - recorded; the timings are then marked unchecked
                check = {"slice": "", "variants": [], "max_rel_err": math.inf, "tolerance": TOLERANCE[args.dtype],
                         "ok": False, "error": bench._error_text(exc)}
            first = len(runner.records)
            sets = inputs
            prepared_cache: dict = {}
            for case in sc.cases:
                if case.prepare is not None and not case.unsupported:
                    key = ("torch", case.inputs)
                    if key not in prepared_cache:
                        prepared_cache[key] = [case.prepare(*s) for s in sets[case.inputs]]
                    prepared = prepared_cache[key]
                else:
                    prepared = sets[case.inputs]
                for pass_ in args.passes:
                    rec = runner.run(sc.name, case, pass_, prepared, len(sets[case.inputs]), args.dtype)
                    if case.impl == NF:  # the spot check vouches for our kernels' answers
                        rec["checked"] = bool(check.get("ok"))
            records = runner.records[first:]
            if why_no_torch and sc.name in ("gqa", "dropout"):
                for pass_ in args.passes:
                    runner.records.append({"scenario": sc.name, "label": "torch SDPA", "impl": "torch_sdpa",
                                           "pass": pass_, "dtype": args.dtype, "status": "skipped",
                                           "reason": why_no_torch})
            summary = sc.derive(records)
            out_scenarios[sc.name] = {
                "title": TITLES[sc.name], "description": DESCRIPTIONS[sc.name], "check": check,
                "time_share_s": None if math.isinf(share) else share,
                "wall_s": time.perf_counter() - t_scenario, "summary": summary, **sc.notes,
                "torch": _torch_note(sc.name, why_no_torch)}
            del inputs, sets, prepared_cache
            bench._free_memory()
    elapsed = runner.elapsed()
    settings = {"batch": ctx["B"], "heads": ctx["H"], "seqlen": ctx["N"], "head_dim": ctx["D"], "dtype": args.dtype,
                "scenarios": args.scenario, "passes": args.passes, "windows": args.windows,
                "kv_heads": args.kv_heads, "dropout_p": args.dropout_p, "varlen_tokens": args.varlen_tokens,
                "varlen_min": args.varlen_min, "varlen_max": args.varlen_max or ctx["N"],
                "varlen_seed": args.varlen_seed, "combined_window": args.combined_window,
                "combined_group": args.combined_group, "combined_p": args.combined_p,
                "check_seqlen": args.check_seqlen, "repeat": args.repeat, "budget_s": args.budget,
                "max_single_s": args.max_single, "max_total_s": args.max_total, "smoke": args.smoke,
                "seed": args.seed, "dropout_seed": DROPOUT_SEED, "tolerance": TOLERANCE[args.dtype]}
    data = {"settings": settings, "simulator": not on_gpu, "timing": bench._timing_method(),
            "flop_convention": FLOP_NOTE, "torch": torch_text, "elapsed_s": elapsed,
            "scenarios": out_scenarios, "records": runner.records}
    print_tables(data, console)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plots, files = {}, {}
    if not args.no_plot:
        where = f"{backend.device_name()}, B={ctx['B']} H={ctx['H']} N={ctx['N']} D={ctx['D']} {args.dtype}"
        if plot_window(runner.records, out / f"{NAME}_window.png", f"Sliding window: time vs band fraction ({where})"):
            files["window"] = f"{NAME}_window.png"
            plots["window"] = f"![time vs band fraction]({NAME}_window.png)"
        if plot_overview(runner.records, out / f"{NAME}_overview.png", f"numba_flash ms per variant ({where})"):
            files["overview"] = f"{NAME}_overview.png"
            last = [n for n in ("combined", "varlen", "dropout", "gqa", "window") if n in out_scenarios][0]
            plots[last] = plots.get(last, "") + f"\n\n![numba_flash ms per variant]({NAME}_overview.png)"
        if not files:
            console.print("[yellow]no plots: matplotlib is not installed (pip install matplotlib)[/]")
    data["plots"] = files
    json_path, md_path = results.save(out, NAME, data, markdown_body(data, plots),
                                      title="Features: what sliding windows, GQA/MQA, dropout and varlen cost or save")
    console.print(f"wrote {json_path}, {md_path}" + "".join(f", {out / f}" for f in files.values()))
    bad = [n for n, s in out_scenarios.items() if not s["check"].get("ok")]
    if bad:
        console.print(f"[bold red]spot checks FAILED in {bad}: see the tables[/]")
    console.print(f"[bold]bench_features took {elapsed:.1f} s[/] ({len(runner.records)} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
