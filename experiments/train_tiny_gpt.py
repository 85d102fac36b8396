"""A tiny GPT trained with numba_flash's attention and with PyTorch SDPA: do the loss curves agree?

A byte-level (vocabulary 256) pre-LN GPT (learned positional embeddings, untied embeddings; defaults:
6 layers, width 384, 6 heads of 64, sequence 256, batch 32) is trained on a corpus that needs no
download: the standard library's own ``.py`` sources, read from the running Python
(``sysconfig.get_paths()["stdlib"]``, files in sorted path order, site-packages left out, capped at
``--corpus-mb``), the first 95% for training and the last 5% for validation.

Three runs, each with its own rich progress bar:

1. ``sdpa``         ``torch.nn.functional.scaled_dot_product_attention``; init seed s0, data seed s0.
2. ``numba_flash``  ``numba_flash.torch.scaled_dot_product_attention``; the SAME initial weights (the
                    model is built once from the init seed and its state dict copied) and the SAME
                    batch order (batch offsets drawn once from the data seed).
3. ``sdpa_noise``   SDPA again, with a different init seed AND data seed: the run-to-run noise of
                    two SDPA seeds, the yardstick for (1) vs (2).

The attention is a pluggable ``attn_fn(q, k, v, is_causal=True, dropout_p=..., [enable_gqa=True])`` on
(B, H, N, D) tensors; everything else (AdamW, warmup + cosine, fp16 autocast with GradScaler by
default, gradient clipping, the validation batches) is the same code for every run.

Reported per run: final train loss (mean of the last 20 steps), final validation loss, tokens/s
(timed steps only: torch.cuda.synchronize at both ends of each step, the first ``--timing-skip``
steps and the evaluations left out), step time, peak memory (``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats``; CuPy's pool too, in case some numba_flash memory comes from it),
and the attention share of a step (fwd+bwd of ``attn_fn`` alone on the run's shape, CUDA events,
times the number of layers, over the mean step time: an estimate).

Agreement: the train-loss curves are smoothed (trailing mean over ``--smooth`` steps) and compared
over the steps all runs completed: max |numba_flash - sdpa| against max |sdpa_noise - sdpa|, plus
the final validation losses at the last common evaluation step. Verdict line:
"numba_flash vs SDPA differs by X, within/outside the noise of two SDPA seeds Y".

Speed: at the defaults an eager step is bound by host time (Python, autograd, kernel launches), not
by the GPU. Measured on an H100 (``experiments/results/train_tiny_gpt/train_tiny_gpt.md``, README "A real
client"): SDPA 471,483 tokens/s, numba_flash 416,563 (0.88x); the gap is the adapter's extra host time
per layer, most of it PyTorch's price for any Python ``autograd.Function`` (README, "Adapter overhead").

``--cuda-graphs`` takes the host time of the forward and backward out of every run: the model and its
loss are wrapped in one module and passed through ``torch.cuda.make_graphed_callables``, which warms it
up on a side stream, captures its forward and backward, and copies each step's batch into the graph's
static inputs. The optimizer step, GradScaler, gradient clipping and the evaluations (eval mode runs
the eager forward) stay eager; autocast runs with ``cache_enabled=False``, as make_graphed_callables
requires. It needs a CUDA GPU, and refuses ``--attn-dropout > 0``: numba_flash's adapter draws its
dropout seed on the host at each call, so a graph would replay one mask forever (the SDPA runs are
refused too, to stay comparable). The mode is recorded in the JSON (``mode``), the Markdown and the
plot's title.

``--max-minutes`` (default 1.6) caps each run: it stops cleanly and records the steps it did, and
the agreement is computed over the steps every run completed. The kernels are compiled in a warm-up,
and the graphs captured, outside that cap.

    bash .gpu/env.sh python experiments/train_tiny_gpt.py --out $OUT/train                       # H100, ~3 min
    python experiments/train_tiny_gpt.py --out experiments/results/train_tiny_gpt                # GPU, ~3 min
    python experiments/train_tiny_gpt.py --attn-dropout 0.1 --kv-heads 2 --out /tmp/train_gqa    # dropout + GQA
    python experiments/train_tiny_gpt.py --cuda-graphs --out experiments/results/train_tiny_gpt_graphs  # graphed steps
    python experiments/train_tiny_gpt.py --smoke --out /tmp/train_tiny_gpt                       # CPU: seconds, SDPA runs only

Without PyTorch the script prints why and exits with status 0. ``--smoke`` on a machine without a
CUDA GPU trains a tiny model on the CPU with SDPA only (the sdpa and sdpa_noise runs) and records
the numba_flash run as skipped: numba_flash needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import numba_flash  # noqa: E402, F401  (chooses GPU or simulator before numba.cuda is imported)
from numba_flash import backend, results  # noqa: E402

try:  # PyTorch is an optional extra: without it, main() says so and exits cleanly.
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

NAME = "train_tiny_gpt"
SDPA, NF, NOISE = "sdpa", "numba_flash", "sdpa_noise"
RUNS = (SDPA, NF, NOISE)
VOCAB = 256
NO_TORCH = ("PyTorch is not installed: the training experiment needs it (pip install torch); "
            "nothing to do, exiting.")
NO_GPU_NF = "numba_flash needs a CUDA GPU"
DTYPES = ("fp16", "bf16", "fp32")
EAGER, GRAPHS = "eager", "cuda_graphs"  # the training modes, as recorded in the JSON
NO_GPU_GRAPHS = "--cuda-graphs needs a CUDA GPU (CUDA graphs are a CUDA feature); nothing to do, exiting."


def mode_of(args) -> str:
    """The training mode of ``args`` (a namespace without the option, e.g. an older run's, is eager)."""
    return GRAPHS if getattr(args, "cuda_graphs", False) else EAGER


def mode_text(mode: str) -> str:
    """How the Markdown and the plot name a mode."""
    return {EAGER: "eager", GRAPHS: "CUDA graphs"}[mode]


# --------------------------------------------------------------------------------------------
# The corpus: the standard library's Python sources, bytes.
# --------------------------------------------------------------------------------------------

def stdlib_corpus(max_bytes: int) -> tuple[np.ndarray, dict]:
    """The concatenated ``.py`` files of the running Python's standard library as uint8 bytes.

    Files in sorted relative-path order (deterministic for a given Python), anything under a
    site-packages or dist-packages folder left out, each followed by a blank line; cut at
    ``max_bytes``. Returns the bytes and a description (root, files, size, sha256).
    """
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((p for p in root.rglob("*.py")
                    if p.is_file() and not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts)),
                   key=lambda p: p.relative_to(root).as_posix())
    chunks, total, used = [], 0, 0
    for path in files:
        if total >= max_bytes:
            break
        try:
            text = path.read_bytes()
        except OSError:
            continue
        chunks.append(text + b"\n\n")
        total += len(text) + 2
        used += 1
    blob = b"".join(chunks)[:max_bytes]
    if len(blob) < 10_000:
        raise RuntimeError(f"the standard library under {root} gave only {len(blob)} bytes of .py sources")
    info = {"root": str(root), "python": sys.version.split()[0], "files_available": len(files), "files_used": used,
            "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    return np.frombuffer(blob, dtype=np.uint8).copy(), info


def batch_offsets(n_tokens: int, seq: int, batch: int, steps: int, seed: int) -> np.ndarray:
    """(steps, batch) start offsets of training windows, drawn once from ``seed``: every run
    given the same seed sees the same batches in the same order."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_tokens - seq - 1, size=(steps, batch), dtype=np.int64)


# --------------------------------------------------------------------------------------------
# The model: a pre-LN GPT whose attention is a pluggable function.
# --------------------------------------------------------------------------------------------

if torch is not None:

    class CausalSelfAttention(nn.Module):
        def __init__(self, width, heads, kv_heads, attn_dropout):
            super().__init__()
            self.heads, self.kv_heads, self.head_dim = heads, kv_heads, width // heads
            self.attn_dropout = attn_dropout
            self.qkv = nn.Linear(width, (heads + 2 * kv_heads) * self.head_dim)
            self.proj = nn.Linear(heads * self.head_dim, width)
            self.attn_fn = F.scaled_dot_product_attention  # replaced by GPT.set_attention

        def forward(self, x):
            B, N, _ = x.shape
            D = self.head_dim
            q, k, v = self.qkv(x).split([self.heads * D, self.kv_heads * D, self.kv_heads * D], dim=-1)
            q = q.view(B, N, self.heads, D).transpose(1, 2)  # (B, H, N, D)
            k = k.view(B, N, self.kv_heads, D).transpose(1, 2)  # (B, H_kv, N, D)
            v = v.view(B, N, self.kv_heads, D).transpose(1, 2)
            extra = {"enable_gqa": True} if self.kv_heads != self.heads else {}
            p = self.attn_dropout if self.training else 0.0
            y = self.attn_fn(q, k, v, is_causal=True, dropout_p=p, **extra)
            y = y.transpose(1, 2).reshape(B, N, self.heads * D)
            return self.proj(y)

    class Block(nn.Module):
        def __init__(self, width, heads, kv_heads, attn_dropout):
            super().__init__()
            self.ln1 = nn.LayerNorm(width)
            self.attn = CausalSelfAttention(width, heads, kv_heads, attn_dropout)
            self.ln2 = nn.LayerNorm(width)
            self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self, layers, width, heads, kv_heads, seq, attn_dropout=0.0):
            super().__init__()
            self.seq = seq
            self.tok_emb = nn.Embedding(VOCAB, width)
            self.pos_emb = nn.Embedding(seq, width)
            self.blocks = nn.ModuleList(Block(width, heads, kv_heads, attn_dropout) for _ in range(layers))
            self.ln_f = nn.LayerNorm(width)
            self.head = nn.Linear(width, VOCAB, bias=False)
            # GPT-2 initialisation: N(0, 0.02), zero biases, residual projections scaled by 1/sqrt(2 * layers).
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * layers) if name.endswith(("attn.proj.weight", "mlp.2.weight")) else 0.02
                    nn.init.normal_(p, mean=0.0, std=std)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

        def set_attention(self, attn_fn):
            for block in self.blocks:
                block.attn.attn_fn = attn_fn

        def forward(self, idx):
            B, N = idx.shape
            pos = torch.arange(N, device=idx.device)
            x = self.tok_emb(idx) + self.pos_emb(pos)[None]
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln_f(x))

    class LossOf(nn.Module):
        """The model and its training loss as one module: what --cuda-graphs captures, so the
        cross-entropy runs in the graph too (the graph's output is the loss)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x, y):
            return loss_fn(self.model, x, y)


def initial_state(args, seed: int) -> dict:
    """The model's initial weights from ``seed`` (built on the CPU: the same on every device), copied."""
    torch.manual_seed(seed)
    model = GPT(args.layers, args.width, args.heads, args.kv_heads, args.seq, args.attn_dropout)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def n_params(state: dict) -> int:
    return int(sum(v.numel() for v in state.values()))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def amp_dtype(args, device):
    """The autocast dtype, or None for plain fp32."""
    if args.dtype == "fp32":
        return None
    return torch.float16 if args.dtype == "fp16" else torch.bfloat16


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cupy_pool():
    """CuPy's default memory pool when CuPy is here and in use (the GPU backend), else None."""
    if backend.BACKEND != backend.GPU:
        return None
    try:
        import cupy
    except ImportError:
        return None
    return cupy.get_default_memory_pool()


def free_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    pool = _cupy_pool()
    if pool is not None:
        pool.free_all_blocks()


def lr_at(step: int, args) -> float:
    """Multiplier of --lr: linear warmup over --warmup steps, then cosine down to --min-lr-frac."""
    if step < args.warmup:
        return (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def make_optimizer(model, args):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


def make_val_batches(val: np.ndarray, args, device) -> list:
    """Fixed validation windows (their own seed), the same tensors for every run."""
    rng = np.random.default_rng(args.val_seed)
    data = torch.from_numpy(val).to(device)
    ar = torch.arange(args.seq + 1, device=device)
    out = []
    for _ in range(args.val_batches):
        off = torch.from_numpy(rng.integers(0, len(val) - args.seq - 1, size=args.batch, dtype=np.int64)).to(device)
        chunk = data[off[:, None] + ar].long()
        out.append((chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()))
    return out


def _autocast(device, dtype, cache=True):
    """Autocast to ``dtype`` (None: off). ``cache=False`` for CUDA graphs: make_graphed_callables
    refuses autocast's cache of cast weights (a replay must redo the casts after each optimizer step)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def loss_fn(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.float().reshape(-1, VOCAB), y.reshape(-1))


def evaluate(model, val_batches, device, dtype) -> float:
    """Mean loss over the fixed validation batches (eval mode: no dropout), back in train mode after."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x, y in val_batches:
            with _autocast(device, dtype):
                total += float(loss_fn(model, x, y))
    model.train()
    return total / len(val_batches)


def attention_fwd_bwd_ms(attn_fn, args, device, dtype, dropout_p, repeat, graphed=False):
    """Milliseconds of one forward + backward of ``attn_fn`` alone on the training shape (CUDA events,
    mean of ``repeat`` after one untimed call, which also compiles numba_flash's kernels). ``graphed``:
    replayed from a CUDA graph, as a --cuda-graphs step runs it (CUDA only)."""
    B, H, Hkv, N, D = args.batch, args.heads, args.kv_heads, args.seq, args.width // args.heads
    dt = dtype or torch.float32
    q = torch.randn(B, H, N, D, device=device, dtype=dt, requires_grad=True)
    k = torch.randn(B, Hkv, N, D, device=device, dtype=dt, requires_grad=True)
    v = torch.randn(B, Hkv, N, D, device=device, dtype=dt, requires_grad=True)
    dout = torch.randn(B, H, N, D, device=device, dtype=dt)
    extra = {"enable_gqa": True} if Hkv != H else {}

    def call(a, b, c):
        return attn_fn(a, b, c, is_causal=True, dropout_p=dropout_p, **extra)

    if graphed:
        call = torch.cuda.make_graphed_callables(call, (q, k, v))

    def once():
        call(q, k, v).backward(dout)

    once()
    _sync(device)
    if repeat <= 0 or device.type != "cuda":
        return None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        once()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeat


def warm_up(attn_fn, args, device, dtype) -> float:
    """Run ``attn_fn`` once forward + backward with the training dropout and once with p = 0 (the
    evaluation's), so that compiling numba_flash's kernels is not charged to the run; seconds taken."""
    t0 = time.perf_counter()
    for p in sorted({args.attn_dropout, 0.0}):
        attention_fwd_bwd_ms(attn_fn, args, device, dtype, p, repeat=0)
    D, dt = args.width // args.heads, dtype or torch.float32
    with torch.no_grad():  # the evaluation's forward-only path
        q = torch.randn(args.batch, args.heads, args.seq, D, device=device, dtype=dt)
        kv = torch.randn(args.batch, args.kv_heads, args.seq, D, device=device, dtype=dt)
        extra = {"enable_gqa": True} if args.kv_heads != args.heads else {}
        attn_fn(q, kv, kv, is_causal=True, dropout_p=0.0, **extra)
    _sync(device)
    return time.perf_counter() - t0


def train_run(name, attn_fn, state, train_data, offsets, val_batches, run_seed, args, device, progress, console):
    """Train from ``state`` on the batches at ``offsets``; returns the run's record (curves included)."""
    dtype = amp_dtype(args, device)
    rec = {"name": name, "status": "running", "steps_planned": args.steps, "seed": run_seed, "mode": mode_of(args)}
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pool = _cupy_pool()
    torch.manual_seed(run_seed)  # dropout draws (SDPA's and numba_flash's seeds) repeat with the seed
    model = GPT(args.layers, args.width, args.heads, args.kv_heads, args.seq, args.attn_dropout)
    model.load_state_dict(state)
    model.to(device)
    model.set_attention(attn_fn)
    model.train()
    opt = make_optimizer(model, args)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16 and device.type == "cuda"))
    ar = torch.arange(args.seq + 1, device=device)

    def batch(step):
        off = torch.from_numpy(offsets[step]).to(device)
        chunk = train_data[off[:, None] + ar].long()
        return chunk[:, :-1], chunk[:, 1:]

    graphs = mode_of(args) == GRAPHS
    net = LossOf(model)
    if graphs:  # capture forward + loss + backward once; each step copies its batch into the static inputs
        t0 = time.perf_counter()
        sample = tuple(t.contiguous().clone() for t in batch(0))  # valid token ids: the warm-up runs the model
        with _autocast(device, dtype, cache=False):
            net = torch.cuda.make_graphed_callables(net, sample)
        rec["graph_capture_s"] = time.perf_counter() - t0
    losses, val_curve, step_s = [], [], []
    cupy_used_max = 0
    skipped_updates = 0
    limit_s = args.max_minutes * 60 if args.max_minutes and args.max_minutes > 0 else math.inf
    task = progress.add_task(f"{name:<12}", total=args.steps, info="")
    t_start = time.perf_counter()
    step = 0
    stopped_early = False
    for step in range(args.steps):
        if time.perf_counter() - t_start > limit_s:
            stopped_early = True
            break
        if step % args.eval_every == 0:
            val_curve.append([step, evaluate(model, val_batches, device, dtype)])
            if step and not console.is_terminal:  # logs get a line per evaluation (the bars show it on a terminal)
                console.print(f"{name} step {step}: val {val_curve[-1][1]:.4f}, train (last 20) "
                              f"{np.mean(losses[-20:]):.4f}, {1e3 * np.mean(step_s[-args.eval_every:]):.1f} ms/step, "
                              f"{time.perf_counter() - t_start:.0f} s")
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_at(step, args)
        _sync(device)
        t0 = time.perf_counter()
        x, y = batch(step)
        with _autocast(device, dtype, cache=not graphs):
            loss = net(x, y)  # graphs: a replay of the captured forward (the backward replays in .backward())
        if pool is not None:
            cupy_used_max = max(cupy_used_max, pool.used_bytes())  # what the forward holds for the backward
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        scale_before = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(opt)
        scaler.update()
        if scaler.is_enabled() and scaler.get_scale() < scale_before:
            skipped_updates += 1  # inf/nan gradients: GradScaler skipped this update and lowered its scale
        value = loss.item()
        _sync(device)
        step_s.append(time.perf_counter() - t0)
        losses.append(value)
        progress.update(task, advance=1, info=f"loss {value:.3f}")
        if not math.isfinite(value) and args.stop_on_nan:
            console.print(f"[red]{name}: non-finite loss {value} at step {step}; stopping the run[/]")
            break
    steps_done = len(losses)
    if not val_curve or val_curve[-1][0] != steps_done:
        val_curve.append([steps_done, evaluate(model, val_batches, device, dtype)])
    wall = time.perf_counter() - t_start
    skip = min(args.timing_skip, max(0, steps_done - 1))
    timed = step_s[skip:]
    rec.update(
        status="ok" if steps_done == args.steps else ("stopped at --max-minutes" if stopped_early else "stopped: non-finite loss"),
        steps_done=steps_done, stopped_early=stopped_early, wall_s=wall,
        train_loss=losses, val_loss=val_curve,
        final_train_loss=float(np.mean(losses[-20:])) if losses else None,
        final_val_loss=val_curve[-1][1],
        timed_steps=len(timed), step_ms=1e3 * float(np.mean(timed)) if timed else None,
        tokens_per_s=args.batch * args.seq * len(timed) / float(np.sum(timed)) if timed else None,
        skipped_updates=skipped_updates,
        grad_scale_final=scaler.get_scale() if scaler.is_enabled() else None,
        nonfinite_losses=int(np.sum(~np.isfinite(np.asarray(losses, dtype=float)))),
    )
    if device.type == "cuda":
        rec["peak_torch_bytes"] = int(torch.cuda.max_memory_allocated(device))
    if pool is not None:
        rec["cupy_pool_used_max_bytes"] = int(cupy_used_max)
        rec["cupy_pool_total_bytes"] = int(pool.total_bytes())
    if device.type == "cuda" and args.attn_repeat > 0:
        try:
            ms = attention_fwd_bwd_ms(attn_fn, args, device, dtype, args.attn_dropout, args.attn_repeat, graphs)
            rec["attn_fwd_bwd_ms_per_layer"] = ms
            if ms is not None and rec["step_ms"]:
                rec["attn_share"] = ms * args.layers / rec["step_ms"]
        except Exception as exc:  # noqa: BLE001 - optional measurement
            rec["attn_share_error"] = f"{type(exc).__name__}: {exc}"[:300]
    if losses:
        progress.update(task, info=f"train {rec['final_train_loss']:.3f} val {rec['final_val_loss']:.3f}")
    del model, net, opt, scaler  # net holds the graphs and their memory pool
    free_memory(device)
    return rec


# --------------------------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------------------------

def smooth(x, window: int) -> np.ndarray:
    """Trailing mean over ``window`` steps (value i covers steps i .. i + window - 1)."""
    x = np.asarray(x, dtype=float)
    window = max(1, min(window, len(x)))
    c = np.cumsum(np.insert(x, 0, 0.0))
    return (c[window:] - c[:-window]) / window


def curve_gap(a, b, window: int, n: int | None = None) -> dict | None:
    """|smoothed a - smoothed b| over the first ``n`` steps (default: the steps both have)."""
    n = min(len(a), len(b)) if n is None else n
    if n < 2:
        return None
    sa, sb = smooth(a[:n], window), smooth(b[:n], window)
    d = np.abs(sa - sb)
    if not np.all(np.isfinite(d)):
        return {"max": math.inf, "mean": math.inf, "max_second_half": math.inf, "final": math.inf,
                "steps": n, "window": min(window, n), "finite": False}
    return {"max": float(d.max()), "mean": float(d.mean()), "max_second_half": float(d[len(d) // 2:].max()),
            "final": float(d[-1]), "steps": n, "window": min(window, n), "finite": True}


def val_gap(a, b, at_step: int | None = None) -> dict | None:
    """|val a - val b| at the last evaluation step both runs have (at or before ``at_step``)."""
    va, vb = dict((s, l) for s, l in a), dict((s, l) for s, l in b)
    common = sorted(s for s in set(va) & set(vb) if at_step is None or s <= at_step)
    if not common:
        return None
    s = common[-1]
    return {"step": s, "diff": abs(va[s] - vb[s]), "a": va[s], "b": vb[s]}


def agreement(runs: dict, args) -> dict:
    """numba_flash vs SDPA against SDPA vs SDPA with other seeds, over the steps every run finished."""
    ok = {k: r for k, r in runs.items() if r.get("train_loss")}
    out = {"window": args.smooth}
    if SDPA not in ok:
        out["verdict"] = "no sdpa run: nothing to compare"
        return out
    n = min(len(r["train_loss"]) for r in ok.values())
    out["common_steps"] = n
    noise = nf = None
    if NOISE in ok:
        noise = curve_gap(ok[NOISE]["train_loss"], ok[SDPA]["train_loss"], args.smooth, n)
        out["noise_train"] = noise
        out["noise_val"] = val_gap(ok[NOISE]["val_loss"], ok[SDPA]["val_loss"], n)
    if NF in ok:
        nf = curve_gap(ok[NF]["train_loss"], ok[SDPA]["train_loss"], args.smooth, n)
        out["nf_train"] = nf
        out["nf_val"] = val_gap(ok[NF]["val_loss"], ok[SDPA]["val_loss"], n)
    if nf is None:
        why = runs.get(NF, {}).get("reason") or runs.get(NF, {}).get("status") or "not run"
        out["verdict"] = f"numba_flash not compared: {why}" + (
            f"; the noise of two SDPA seeds is {noise['max']:.4f} (max |diff| of the smoothed train loss)" if noise else "")
        out["within_noise"] = None
        return out
    if not nf["finite"]:
        out["within_noise"] = False
        out["verdict"] = "numba_flash vs SDPA: the numba_flash run produced non-finite losses (outside the noise)"
        return out
    if noise is None or not noise["finite"]:
        out["within_noise"] = None
        out["verdict"] = (f"numba_flash vs SDPA differs by {nf['max']:.4f} (max |diff| of the window-{nf['window']} "
                          "mean train loss); no usable sdpa_noise run to compare with")
        return out
    within = nf["max"] <= noise["max"]
    out["within_noise"] = bool(within)
    out["within_noise_second_half"] = bool(nf["max_second_half"] <= noise["max_second_half"])
    nv, sv = out.get("nf_val"), out.get("noise_val")
    if nv and sv:
        out["val_within_noise"] = bool(nv["diff"] <= sv["diff"])
    out["verdict"] = (f"numba_flash vs SDPA differs by {nf['max']:.4f}, {'within' if within else 'outside'} the noise "
                      f"of two SDPA seeds {noise['max']:.4f} (max |diff| of the window-{nf['window']} mean train "
                      f"loss over {n} steps)")
    return out


def agreement_lines(ag: dict) -> list[str]:
    lines = [ag["verdict"]]
    nf, noise = ag.get("nf_train"), ag.get("noise_train")
    if nf and noise and nf["finite"] and noise["finite"]:
        lines.append(f"Second half of training only: numba_flash vs SDPA {nf['max_second_half']:.4f}, SDPA seeds "
                     f"{noise['max_second_half']:.4f}; mean |diff| over all steps: {nf['mean']:.4f} vs {noise['mean']:.4f}; "
                     f"at the last step: {nf['final']:.4f} vs {noise['final']:.4f}.")
    nv, sv = ag.get("nf_val"), ag.get("noise_val")
    if nv and sv:
        lines.append(f"Validation loss at step {nv['step']}: |numba_flash - SDPA| = {nv['diff']:.4f} "
                     f"({nv['a']:.4f} vs {nv['b']:.4f}); |sdpa_noise - SDPA| = {sv['diff']:.4f} "
                     f"({sv['a']:.4f} vs {sv['b']:.4f}): "
                     + ("within" if nv["diff"] <= sv["diff"] else "outside") + " the noise (one pair each: a rough yardstick).")
    elif sv:
        lines.append(f"Validation loss at step {sv['step']}: |sdpa_noise - SDPA| = {sv['diff']:.4f}.")
    return lines


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

def _mib(x):
    return None if x is None else f"{x / 2**20:.1f} MiB"


def _num(x, fmt):
    return None if x is None else format(float(x), fmt)


COLUMNS = ["run", "attention", "init seed", "data seed", "steps", "final train loss", "final val loss",
           "tokens/s", "ms/step", "peak torch mem", "CuPy pool (max used / held)", "attention share", "status"]


def mode_line(args, runs: dict) -> str:
    """The Markdown line saying which mode produced the numbers (and what graph capture cost)."""
    if mode_of(args) == EAGER:
        return "Mode: **eager** (every step runs the model's forward and backward op by op from Python)."
    capture = ", ".join(f"{k} {r['graph_capture_s']:.1f} s" for k, r in runs.items()
                        if r.get("graph_capture_s") is not None)
    return ("Mode: **CUDA graphs**: every run replays the model's forward, loss and backward from a CUDA graph "
            "(`torch.cuda.make_graphed_callables`, autocast without its cache); the optimizer step, GradScaler, "
            "gradient clipping, batch gathering and evaluations run eagerly; the attention share's timing replays "
            "a graph too." + (f" Capture (before each run, not timed): {capture}." if capture else ""))


def table_rows(runs: dict) -> list[dict]:
    rows = []
    for name, r in runs.items():
        cupy = None
        if r.get("cupy_pool_total_bytes") is not None:
            cupy = f"{_mib(r['cupy_pool_used_max_bytes'])} / {_mib(r['cupy_pool_total_bytes'])}"
        rows.append({
            "run": name, "attention": r.get("attention"), "init seed": r.get("init_seed"), "data seed": r.get("data_seed"),
            "steps": f"{r['steps_done']}/{r['steps_planned']}" if "steps_done" in r else None,
            "final train loss": _num(r.get("final_train_loss"), ".4f"), "final val loss": _num(r.get("final_val_loss"), ".4f"),
            "tokens/s": None if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:,.0f}",
            "ms/step": _num(r.get("step_ms"), ".2f"), "peak torch mem": _mib(r.get("peak_torch_bytes")),
            "CuPy pool (max used / held)": cupy,
            "attention share": None if r.get("attn_share") is None else f"{100 * r['attn_share']:.0f}%",
            "status": r.get("status") if r.get("status") != "skipped" else f"skipped: {r.get('reason')}",
        })
    return rows


def plot(runs: dict, args, path: Path, device: str | None = None) -> str | None:
    """Train (smoothed, raw faint) and validation losses of every run on one chart, and the gaps.

    ``device``: the name in the title (default: this machine's; a redraw from a run's JSON passes its own)."""
    plt = results.pyplot()
    if plt is None:
        return "matplotlib is not installed: plot skipped (pip install matplotlib)"
    ok = {k: r for k, r in runs.items() if r.get("train_loss")}
    if not ok:
        return "no run finished a step: nothing to plot"
    # sdpa wide and solid, numba_flash thin and dashed on top of it: both stay visible where they agree.
    colors = {SDPA: "tab:blue", NF: "tab:red", NOISE: "tab:gray"}
    styles = {SDPA: ("-", 2.6, "o"), NF: ("--", 1.2, "x"), NOISE: ("-", 1.4, "s")}
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    ax = axes[0]
    for name, r in ok.items():
        line, width, marker = styles.get(name, ("-", 1.4, "o"))
        loss = np.asarray(r["train_loss"], dtype=float)
        steps = np.arange(len(loss))  # the loss of step i is taken after i updates, like the val loss at step i
        ax.plot(steps, loss, color=colors.get(name), alpha=0.12, linewidth=0.6)
        s = smooth(loss, args.smooth)
        ax.plot(steps[len(steps) - len(s):], s, line, color=colors.get(name), linewidth=width,
                label=f"{name} train (mean of {min(args.smooth, len(loss))} steps)")
        vs = np.asarray(r["val_loss"], dtype=float)
        ax.plot(vs[:, 0], vs[:, 1], marker, linestyle=":", color=colors.get(name), markersize=4, linewidth=0.8,
                label=f"{name} val")
    finite = [v for r in ok.values() for v in r["train_loss"] if math.isfinite(v)]
    if finite:
        lo = min(finite)
        ax.set_ylim(lo - 0.05, min(max(finite), lo + 3.0))
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / byte)")
    ax.set_title("loss", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    if SDPA in ok:
        n = min(len(r["train_loss"]) for r in ok.values())
        for name in (NF, NOISE):
            if name in ok and n >= 2:
                d = np.abs(smooth(ok[name]["train_loss"][:n], args.smooth) - smooth(ok[SDPA]["train_loss"][:n], args.smooth))
                w = min(args.smooth, n)
                ax.plot(np.arange(w - 1, n), d, color=colors[name], label=f"|{name} - sdpa|")
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_title(f"|difference| of the window-{args.smooth} mean train loss", fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.suptitle(f"tiny GPT on the stdlib sources, {mode_text(mode_of(args))}: {args.layers} layers, "
                 f"width {args.width}, {args.heads} heads "
                 f"({args.kv_heads} kv), seq {args.seq}, batch {args.batch}, {args.dtype}, attn dropout {args.attn_dropout}"
                 f" ({device or (backend.device_name() if backend.BACKEND == backend.GPU else 'CPU')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="experiments/results/train_tiny_gpt", help="results folder (JSON, Markdown, PNG)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model, few steps; on a machine without CUDA: CPU, SDPA runs only")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    p.add_argument("--layers", type=int, default=None, help="default 6 (smoke: 2)")
    p.add_argument("--width", type=int, default=None, help="default 384 (smoke: 128)")
    p.add_argument("--heads", type=int, default=None, help="default 6, head_dim = width / heads (smoke: 2)")
    p.add_argument("--kv-heads", type=int, default=None, help="K/V heads for GQA (enable_gqa); default = --heads")
    p.add_argument("--seq", type=int, default=None, help="sequence length, default 256 (smoke: 64)")
    p.add_argument("--batch", type=int, default=None, help="default 32 (smoke: 8)")
    p.add_argument("--steps", type=int, default=None, help="default 2000 (smoke: 40)")
    p.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate, default 6e-4 (smoke: 3e-3)")
    p.add_argument("--warmup", type=int, default=None, help="linear warmup steps, default 100 (smoke: 5)")
    p.add_argument("--min-lr-frac", type=float, default=0.1, help="cosine decays to this fraction of --lr")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--attn-dropout", type=float, default=0.0, help="attention dropout during training (e.g. 0.1)")
    p.add_argument("--dtype", choices=DTYPES, default="fp16",
                   help="fp16: autocast + GradScaler (default); bf16: autocast; fp32: no autocast. CPU: always fp32")
    p.add_argument("--init-seed", type=int, default=0, help="initial weights of sdpa and numba_flash")
    p.add_argument("--data-seed", type=int, default=0, help="batch order (and dropout seed) of sdpa and numba_flash")
    p.add_argument("--noise-init-seed", type=int, default=1, help="initial weights of sdpa_noise")
    p.add_argument("--noise-data-seed", type=int, default=1, help="batch order (and dropout seed) of sdpa_noise")
    p.add_argument("--val-seed", type=int, default=1234, help="the fixed validation windows")
    p.add_argument("--eval-every", type=int, default=None, help="validation loss every N steps, default 100 (smoke: 10)")
    p.add_argument("--val-batches", type=int, default=None, help="validation batches of --batch windows, default 10 (smoke: 2)")
    p.add_argument("--corpus-mb", type=float, default=None, help="cap on the corpus, default 20 MB (smoke: 1)")
    p.add_argument("--smooth", type=int, default=None, help="window of the trailing mean for the agreement, default 50 (smoke: 10)")
    p.add_argument("--timing-skip", type=int, default=None, help="first steps left out of tokens/s, default 10 (smoke: 2)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="per-run wall-clock cap (the run stops cleanly, steps done recorded), default 1.6; 0: none")
    p.add_argument("--attn-repeat", type=int, default=None,
                   help="repeats of the isolated attention timing for the attention share, default 10; 0: skip")
    p.add_argument("--stop-on-nan", action=argparse.BooleanOptionalAction, default=True,
                   help="stop a run at its first non-finite loss")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="every run replays forward + loss + backward from a CUDA graph (make_graphed_callables; "
                        "optimizer, GradScaler, clipping, evaluation eager): tokens/s without eager host time. "
                        "CUDA only. Not with --attn-dropout > 0: numba_flash draws its dropout seed on the host "
                        "per call, so a graph would replay one mask forever; SDPA is refused too, to stay comparable")
    args = p.parse_args(argv)
    if args.smoke:
        defaults = dict(layers=2, width=128, heads=2, seq=64, batch=8, steps=40, lr=3e-3, warmup=5, eval_every=10,
                        val_batches=2, corpus_mb=1.0, smooth=10, timing_skip=2, max_minutes=2.0, attn_repeat=2)
    else:
        defaults = dict(layers=6, width=384, heads=6, seq=256, batch=32, steps=2000, lr=6e-4, warmup=100,
                        eval_every=100, val_batches=10, corpus_mb=20.0, smooth=50, timing_skip=10, max_minutes=1.6,
                        attn_repeat=10)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.kv_heads is None:
        args.kv_heads = args.heads
    if args.width % args.heads:
        p.error(f"--width {args.width} is not a multiple of --heads {args.heads}")
    if args.kv_heads < 1 or args.heads % args.kv_heads:
        p.error(f"--kv-heads {args.kv_heads} must divide --heads {args.heads}")
    if not 0 <= args.attn_dropout < 1:
        p.error("--attn-dropout must lie in [0, 1)")
    if args.cuda_graphs and args.attn_dropout > 0:
        p.error(f"--cuda-graphs cannot train with --attn-dropout {args.attn_dropout:g}: numba_flash draws its dropout "
                "seed on the host at each call, so a graph would replay one dropout mask forever (refused for "
                "SDPA too, so that the runs stay comparable); use --attn-dropout 0 or leave out --cuda-graphs")
    if args.steps < 1 or args.eval_every < 1 or args.val_batches < 1 or args.warmup < 1:
        p.error("--steps, --eval-every, --val-batches and --warmup must be at least 1")
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    bad = [r for r in runs if r not in RUNS]
    if bad or not runs:
        p.error(f"--runs: unknown {bad}; choose from {', '.join(RUNS)}")
    args.runs = [r for r in RUNS if r in runs]
    return args


def numba_flash_unavailable(device) -> str | None:
    """Why the numba_flash run cannot happen here, or None when it can."""
    if device.type != "cuda":
        return NO_GPU_NF
    if backend.BACKEND != backend.GPU:
        return f"{NO_GPU_NF} (numba_flash is on its {backend.BACKEND} backend)"
    return None


def nf_attention():
    """numba_flash's SDPA-compatible function (imported only when it is going to run)."""
    import importlib

    return importlib.import_module("numba_flash.torch").scaled_dot_product_attention


def main(argv=None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    args = parse_args(argv)
    # Logs are not terminals: give the lines room instead of rich's default 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if torch is None:
        console.print(f"[yellow]{NO_TORCH}[/]")
        return 0
    cuda = torch.cuda.is_available()
    if args.cuda_graphs and not cuda:
        console.print(f"[yellow]{NO_GPU_GRAPHS}[/]")
        return 0
    if not cuda and not args.smoke:
        console.print("[yellow]No CUDA GPU visible to PyTorch: the full run needs one (use --smoke for a tiny "
                      "CPU run of the SDPA runs); nothing to do, exiting.[/]")
        return 0
    device = torch.device("cuda" if cuda else "cpu")
    if device.type == "cpu" and args.dtype != "fp32":
        console.print(f"[yellow]CPU run: --dtype {args.dtype} -> fp32[/]")
        args.dtype = "fp32"
    nf_reason = numba_flash_unavailable(device)
    # Numba's low-occupancy note concerns the tiny smoke shapes only.
    warnings.filterwarnings("ignore", message=".*Grid size")
    t_all = time.perf_counter()

    corpus, corpus_info = stdlib_corpus(int(args.corpus_mb * 1e6))
    split = int(len(corpus) * 0.95)
    train_np, val_np = corpus[:split], corpus[split:]
    corpus_info.update(train_bytes=len(train_np), val_bytes=len(val_np))
    train_data = torch.from_numpy(train_np).to(device)
    val_batches = make_val_batches(val_np, args, device)
    dtype = amp_dtype(args, device)
    console.print(f"[bold]{NAME}[/] on {torch.cuda.get_device_name(device) if cuda else 'CPU'} (torch {torch.__version__}): "
                  f"{args.layers} layers, width {args.width}, {args.heads} heads ({args.kv_heads} kv), seq {args.seq}, "
                  f"batch {args.batch}, {args.steps} steps, {args.dtype}, attn dropout {args.attn_dropout}, "
                  f"{mode_text(mode_of(args))}; corpus "
                  f"{corpus_info['files_used']} stdlib files, {corpus_info['bytes'] / 1e6:.1f} MB (Python {corpus_info['python']})")

    specs = {  # name -> (attention, attn_fn or None, init seed, data seed)
        SDPA: ("torch SDPA", F.scaled_dot_product_attention, args.init_seed, args.data_seed),
        NF: ("numba_flash", None, args.init_seed, args.data_seed),
        NOISE: ("torch SDPA", F.scaled_dot_product_attention, args.noise_init_seed, args.noise_data_seed),
    }
    states, runs, warmups = {}, {}, {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        for name in args.runs:
            attention, attn_fn, init_seed, data_seed = specs[name]
            base = {"name": name, "attention": attention, "init_seed": init_seed, "data_seed": data_seed,
                    "steps_planned": args.steps}
            if name == NF and nf_reason:
                runs[name] = dict(base, status="skipped", reason=nf_reason)
                console.print(f"[yellow]{name}: skipped ({nf_reason})[/]")
                continue
            try:
                if name == NF:
                    attn_fn = nf_attention()
                key = ("sdpa" if attn_fn is F.scaled_dot_product_attention else name)
                if key not in warmups:  # compile numba_flash's kernels (and wake SDPA) outside the timed run
                    warmups[key] = warm_up(attn_fn, args, device, dtype)
                if init_seed not in states:
                    states[init_seed] = initial_state(args, init_seed)
                offsets = batch_offsets(len(train_np), args.seq, args.batch, args.steps, data_seed)
                rec = train_run(name, attn_fn, states[init_seed], train_data, offsets, val_batches, data_seed, args,
                                device, progress, console)
                runs[name] = dict(base, warmup_s=warmups[key], **{k: v for k, v in rec.items() if k != "name"})
            except Exception as exc:  # noqa: BLE001 - record the failure, keep the other runs
                tb = traceback.format_exc()
                console.print(f"[red]{name} failed: {type(exc).__name__}: {exc}[/]\n{tb[-3000:]}")
                runs[name] = dict(base, status=f"error: {type(exc).__name__}: {exc}"[:400], traceback=tb[-4000:])
                free_memory(device)
            r = runs[name]
            if r.get("train_loss") and r.get("tokens_per_s"):
                console.print(f"{name}: {r['steps_done']}/{args.steps} steps, final train {r['final_train_loss']:.4f}, "
                              f"val {r['final_val_loss']:.4f}, {r['tokens_per_s']:,.0f} tokens/s, "
                              f"{r['step_ms']:.2f} ms/step, status {r['status']}")

    ag = agreement(runs, args)
    lines = agreement_lines(ag)
    for line in lines:
        console.print(f"[bold]{line}[/]" if line is lines[0] else line)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_note = plot(runs, args, out / f"{NAME}.png")
    if plot_note:
        console.print(f"[yellow]{plot_note}[/]")
    model_info = {"params": n_params(states[next(iter(states))]) if states else None,
                  "layers": args.layers, "width": args.width, "heads": args.heads, "kv_heads": args.kv_heads,
                  "head_dim": args.width // args.heads, "seq": args.seq, "vocab": VOCAB,
                  "embeddings": "untied; learned positional", "norm": "pre-LN", "mlp": "4x GELU"}
    data = {"args": vars(args), "mode": mode_of(args), "device": str(device), "torch": torch.__version__,
            "smoke": args.smoke,
            "corpus": corpus_info, "model": model_info, "runs": runs, "agreement": ag, "verdict": ag["verdict"],
            "wall_s": time.perf_counter() - t_all, "plot": None if plot_note else f"{NAME}.png"}
    rows = table_rows(runs)
    body = [
        "",
        ("**Smoke run: tiny model, few steps; the numbers say nothing about speed.**\n" if args.smoke else ""),
        mode_line(args, runs),
        "",
        f"A byte-level GPT ({model_info['params']:,} parameters: {args.layers} layers, width {args.width}, "
        f"{args.heads} heads of {args.width // args.heads}" + (f", {args.kv_heads} K/V heads (GQA)" if args.kv_heads != args.heads else "")
        + f", sequence {args.seq}, pre-LN, learned positions, untied embeddings) trained for {args.steps} steps of "
        f"{args.batch} x {args.seq} tokens (AdamW, peak lr {args.lr:g}, {args.warmup} warmup steps, cosine to "
        f"{args.min_lr_frac:g}x, weight decay {args.weight_decay:g}, clip {args.grad_clip:g}; {args.dtype}"
        + (" autocast + GradScaler" if args.dtype == "fp16" else " autocast" if args.dtype == "bf16" else "")
        + f"; attention dropout {args.attn_dropout:g}) on the Python {corpus_info['python']} standard library's sources "
        f"({corpus_info['files_used']} .py files in sorted order, {corpus_info['bytes'] / 1e6:.2f} MB, sha256 "
        f"{corpus_info['sha256'][:12]}; first 95% train, last 5% validation: {args.val_batches} fixed batches).",
        "",
        f"`sdpa` and `numba_flash` start from the same weights (init seed {args.init_seed}) and see the same batches "
        f"in the same order (data seed {args.data_seed}); `sdpa_noise` uses init seed {args.noise_init_seed} and data "
        f"seed {args.noise_data_seed}: the difference between two SDPA runs of different seeds is the yardstick.",
        "",
        results.markdown_table(rows, COLUMNS, floatfmt=".4g"),
        "",
        "Columns: `final train loss` mean of the last 20 steps; `final val loss` at the last step; `tokens/s` and "
        f"`ms/step` over the timed steps (torch.cuda.synchronize at both ends of each step; the first "
        f"{args.timing_skip} steps and the evaluations left out); `peak torch mem` torch.cuda.max_memory_allocated "
        "over the run; `CuPy pool` the most CuPy's pool held in use after a forward / what it held at the end "
        "(numba_flash memory that does not come from torch's allocator); `attention share` forward + backward of "
        "the attention alone on the run's shape (CUDA events) times the layers, over ms/step: an estimate. "
        f"Kernel compilation ran in a warm-up before the runs ({', '.join(f'{k} {v:.1f} s' for k, v in warmups.items())}); "
        f"each run was capped at --max-minutes {args.max_minutes:g}.",
        "",
        "## Agreement",
        "",
        *[f"- {line}" for line in lines],
        "",
        f"Metric: trailing mean of the train loss over {args.smooth} steps, |difference| between two runs, maximum "
        "over the steps every run completed (the first window-1 steps have no full window and are not compared).",
        "",
        f"![loss curves]({NAME}.png)" if not plot_note else f"({plot_note})",
    ]
    paths = results.save(out, NAME, data, "\n".join(body),
                         title=f"Tiny GPT: numba_flash vs SDPA loss curves ({mode_text(mode_of(args))})")
    console.print(f"wrote {paths[0]}, {paths[1]}" + ("" if plot_note else f", {out / (NAME + '.png')}"))
    failed = [k for k, r in runs.items() if str(r.get("status", "")).startswith("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
