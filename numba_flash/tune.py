"""Block-size tuning: find the fastest correct kernel configuration for a problem, and remember it.

Two kinds of configuration are tuned (``kind=``):

* ``"block"``: a :class:`~numba_flash.config.BlockConfig` ``(block_m, block_n, num_threads)`` of the
  portable kernels (every dtype, GPU and simulator). Candidates: block sizes 8..128 by 1, 2, 4 or
  8 threads per row, those that fit in 48 KiB of static shared memory.
* ``"tensor_core"``: a :class:`~numba_flash.config.TensorCoreConfig` ``(block_m, block_n, stages,
  rows_per_warp)`` of the tensor-core kernels (GPU only, float16, head_dim <= 128). Candidates:
  block_m in (32, 64, 128, 256), block_n in (16, 32, 64, 128), stages in (1, 2), rows_per_warp in (16,
  32), at most 8 warps, less those whose ``problems`` say they cannot run (dynamic shared memory; the
  backward takes rows_per_warp=16 only). The default, tried first, is
  :func:`~numba_flash.config.default_tc_config` (``unmasked`` when not causal).

:func:`tune`'s ``kind=None`` tunes the kernels ``config=None`` would run: ``"tensor_core"`` on the
GPU backend with float16 and head_dim <= 128, else ``"block"`` (and, when ``configs`` are given,
the kind of those configs).

From a notebook::

    import numba_flash.tune as nft
    result = nft.tune(4, 16, 2048, 2048, 64, dtype="float16", pass_="forward", budget_s=60)
    result.best            # a TensorCoreConfig on the GPU, now stored in the tuning cache
    nft.lookup(64, "float16", False, 2048, "forward", kind="tensor_core")   # what config=None will use

From the shell: ``python -m numba_flash.tune --seqlen 2048 --head-dim 64 --budget 60`` (``--kind
block`` tunes the portable kernels on the GPU too).

What :func:`tune` does, per candidate configuration:

1. skip it when it cannot run (``problems``: shared memory, how threads split rows, ...);
2. run it on a reduced problem (one batch and head, at most ``check_seqlen`` tokens) and compare
   with the float64 oracle (:mod:`numba_flash.reference`); a wrong answer marks it *failed* and it
   is never timed or ranked. A launch the SM cannot hold (too many registers for the block,
   ``CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES``) marks it *skipped*;
3. time it on the full problem with :func:`numba_flash.timing.time_ms` (CUDA events, median),
   until ``budget_s`` is spent.

The best one is stored per (device name, head_dim, dtype, causal, seqlen bucket, pass, kind) in a
small JSON file, ``~/.cache/numba_flash/tuning.json`` (``NUMBA_FLASH_TUNING_CACHE=PATH`` moves it,
``NUMBA_FLASH_TUNING_CACHE=off`` disables it). The seqlen bucket is the power of two at or above
``max(seqlen_q, seqlen_k)``. Tensor-core entries have ``|tensor_core`` appended to their key (and
``"kind": "tensor_core"``, ``"config": [block_m, block_n, stages, rows_per_warp]``, followed by
``atomic_dq, reread_q`` when either is on, min_blocks > 1, split_d or longest_first, then ``min_blocks`` when
> 1, split_d or longest_first, then ``split_d`` when it or longest_first is on, then ``longest_first`` when
on), so a tuned
BlockConfig and a tuned TensorCoreConfig coexist for the same problem; entries without a
``"kind"`` are BlockConfigs (files written before tensor-core tuning still load).

``flash_attention(..., config=None)`` asks :func:`lookup` first and falls back to the defaults when
there is no entry for this device, so without a cache file nothing changes: on the GPU with
float16 (and bfloat16, which reads the float16 tensor-core entry: same kernels, same instruction
shapes) and *without dropout* it takes the tuned TensorCoreConfig, else
:func:`~numba_flash.config.default_tc_config` (tuned configs are timed without dropout, and
dropout's random numbers need registers); the portable kernels take the tuned BlockConfig, else
:func:`~numba_flash.config.default_config`. Entries are keyed by device name, so tuning under the
simulator never affects GPU runs (and the other way round).

This module imports only the standard library, NumPy and the config at import time: the API
calls :func:`lookup` on every ``config=None`` call that makes a launch plan, and :func:`state`
on every call that reuses one.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from .config import (MAX_THREADS_PER_BLOCK, PASSES, TC_MAX_HEAD_DIM, BlockConfig, TensorCoreConfig,
                     check_head_dim, default_config, default_tc_config, tc_elem)

__all__ = ["tune", "lookup", "store", "clear_cache", "cache_path", "cache_entries", "enumerate_configs",
           "seqlen_bucket", "state", "TuneResult", "Trial", "main", "KINDS"]

CACHE_ENV = "NUMBA_FLASH_TUNING_CACHE"
_DISABLED = ("off", "none", "0", "false", "no")
_CACHE_VERSION = 1
KINDS = ("block", "tensor_core")
BLOCK_SIZES = (8, 16, 32, 64, 128)
THREADS_PER_ROW = (1, 2, 4, 8)
# The tensor-core candidates: every combination, less those TensorCoreConfig.problems rules out.
TC_BLOCK_M = (32, 64, 128, 256)  # 256 only with 32 rows per warp (TC_MAX_WARPS)
TC_BLOCK_N = (16, 32, 64, 128)
TC_STAGES = (1, 2)
TC_ROWS_PER_WARP = (16, 32)
TC_ATOMIC_DQ = (False, True)  # backward only: dQ by atomic adds from the dK/dV kernel (TensorCoreConfig)
TC_REREAD_Q = (False, True)  # forward and dQ kernels: Q fragments re-read per key tile (not with atomic dQ)
# forward and dQ kernels: compiled for this many blocks per SM; 3 only where it changes something and
# leaves 168 registers: 4-warp blocks (255 registers allow 2), and not with atomic dQ (no dQ kernel)
TC_MIN_BLOCKS = (1, 3)
# backward only: the dK/dV kernel in FlashAttention-2's warp layout (not with atomic dQ; problems() keeps
# it to 16-bit data and multiples of 32)
TC_SPLIT_D = (False, True)
# every kernel: the blocks' start order, longest first across heads (TensorCoreConfig.longest_first)
TC_LONGEST_FIRST = (False, True)
# A TensorCoreConfig as a list: its four tile sizes, then its flags in field order (cache entries, tuples)
_TC_LENGTHS = tuple(range(4, len(dataclasses.fields(TensorCoreConfig)) + 1))
# At most 8 warps per block: 16 warps of these kernels' 200-255 registers exceed an SM's 64K registers.
TC_MAX_WARPS = 8
# A config passes the oracle check when max|got - ref| <= RTOL * max|ref| for every output. The
# kernels compute in fp32; the budget covers the final rounding to the storage dtype (fp16: 2^-11)
# with margin, and fp32 accumulation over up to a few thousand keys. A broken tiling (a skipped
# tile, a wrong mask, a race) is off by O(1) relative to max|ref|, far above these.
RTOL = {"float16": 1e-2, "float32": 2e-4}
# CUDA driver error codes: 701 is "this block needs more registers than the SM has" (not
# sticky); any other launch error may have destroyed the context, so tuning stops.
_OUT_OF_RESOURCES = 701


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------

def cache_path() -> Path | None:
    """Where the tuning cache lives, or None when ``NUMBA_FLASH_TUNING_CACHE`` disables it."""
    path = _path_str()
    return None if path is None else Path(path)


def _path_str() -> str | None:
    # Memoised on the variables it depends on: every config=None call asks.
    return _path_for(os.environ.get(CACHE_ENV, ""), os.environ.get("HOME", ""))


@functools.lru_cache(maxsize=16)
def _path_for(env: str, home: str) -> str | None:
    env = env.strip()
    if env.lower() in _DISABLED:
        return None
    if env:
        return str(Path(env).expanduser())
    return str(Path.home() / ".cache" / "numba_flash" / "tuning.json")


def seqlen_bucket(seqlen: int) -> int:
    """The power of two at or above ``seqlen``: the tuned config for 2048 serves 1025..2048."""
    seqlen = max(1, int(seqlen))
    return 1 << (seqlen - 1).bit_length()


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


@functools.lru_cache(maxsize=1024)
def _key(device: str, head_dim: int, dtype, causal: bool, seqlen: int, pass_: str, kind: str = "block") -> str:
    return (f"{device}|head_dim={int(head_dim)}|{_dtype_name(dtype)}|causal={bool(causal)}"
            f"|seqlen<={seqlen_bucket(seqlen)}|{pass_}" + ("|tensor_core" if kind == "tensor_core" else ""))


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    return kind


def _kind_of(config) -> str:
    """'tensor_core' for a TensorCoreConfig, 'block' for a BlockConfig."""
    if isinstance(config, TensorCoreConfig):
        return "tensor_core"
    if isinstance(config, BlockConfig):
        return "block"
    raise TypeError(f"config: expected a BlockConfig or a TensorCoreConfig, got {type(config).__name__}")


def _config_list(config) -> list:
    if isinstance(config, TensorCoreConfig):
        last = config.split_d or config.longest_first
        more = config.min_blocks > 1 or last  # a later flag needs the earlier ones written out
        flags = (([config.atomic_dq, config.reread_q] if config.atomic_dq or config.reread_q or more else [])
                 + ([config.min_blocks] if more else []) + ([config.split_d] if last else [])
                 + ([True] if config.longest_first else []))
        return [config.block_m, config.block_n, config.stages, config.rows_per_warp, *flags]
    return [config.block_m, config.block_n, config.num_threads]


_device_names: dict = {}


def _current_device_name() -> str:
    """The name the cache is keyed by; memoised per CUDA device so a lookup costs no driver call."""
    from . import backend

    if backend.BACKEND == backend.SIMULATOR:
        return backend.device_name()
    import cupy

    index = cupy.cuda.runtime.getDevice()
    if index not in _device_names:
        _device_names[index] = backend.device_name()
    return _device_names[index]


# path -> ((mtime_ns, size), raw entries, {key: config}); re-read when the file changes.
_loaded: dict = {}
_warned_paths: set = set()


def _read(path: Path) -> dict:
    """The raw entries of the cache file at ``path`` ({} when missing or unreadable; warns once)."""
    try:
        data = json.loads(path.read_text())
        entries = data.get("entries", {})
        if not isinstance(entries, dict):
            raise ValueError("'entries' is not an object")
        return entries
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as e:
        if str(path) not in _warned_paths:
            _warned_paths.add(str(path))
            warnings.warn(f"numba_flash tuning cache {path} is unreadable ({e}); ignoring it "
                          f"(numba_flash.tune.clear_cache() removes it)", RuntimeWarning, stacklevel=3)
        return {}


def _parse(entries: dict) -> dict:
    """{key: config} for the entries that still describe a runnable config; others dropped.

    An entry's ``"kind"`` says which class (none: a BlockConfig, as in files written before the
    tensor-core kernels were tuned); its key must agree (``|tensor_core`` at the end, or not)."""
    out = {}
    for key, entry in entries.items():
        try:
            kind, values = entry.get("kind", "block"), list(entry["config"])
            if kind == "tensor_core" and len(values) in _TC_LENGTHS and key.endswith("|tensor_core"):
                cfg = TensorCoreConfig(*values)
            elif kind == "block" and len(values) == 3 and not key.endswith("|tensor_core"):
                cfg = BlockConfig(*values)
            else:
                continue
            if cfg.problems(int(entry["head_dim"]), entry["pass"]):
                continue
        except (KeyError, TypeError, ValueError):
            continue  # hand-edited or from another version: never let it break a call
        out[key] = cfg
    return out


def _load(path):
    """(raw entries, parsed configs) of the cache at ``path``, or None when there is no file."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # the common case: no cache, and this is all a config=None call pays
    sig = (st.st_mtime_ns, st.st_size)
    hit = _loaded.get(str(path))
    if hit is None or hit[0] != sig:
        entries = _read(Path(path))
        hit = (sig, entries, _parse(entries))
        _loaded[str(path)] = hit
    return hit[1], hit[2]


# (monotonic time, path, state) of the last state() that stat'ed the file; None: ask again.
_STATE_TTL_S = 1.0
_state_memo = None


def state():
    """What a config=None choice depends on: the cache file's path and its (mtime, size), or None
    when the cache is disabled. The API keeps launch plans made by config=None calls while this
    stays the same, and asks on every such call, so the answer is memoised for up to
    ``_STATE_TTL_S`` = 1 second (per cache path): :func:`store` and :func:`clear_cache` in this
    process reset the memo, so their changes are seen at once; a change another process makes to
    the file is seen within a second."""
    global _state_memo
    path = _path_str()
    if path is None:
        return None
    now = time.monotonic()
    memo = _state_memo
    if memo is not None and memo[1] == path and now - memo[0] < _STATE_TTL_S:
        return memo[2]
    try:
        st = os.stat(path)
        value = path, (st.st_mtime_ns, st.st_size)
    except OSError:
        value = path, None
    _state_memo = (now, path, value)
    return value


def _forget_state() -> None:
    global _state_memo
    _state_memo = None


def lookup(head_dim: int, dtype, causal: bool, seqlen: int, pass_: str = "forward", *,
           device: str | None = None, kind: str = "block"):
    """The tuned config of ``kind`` for this problem on this device, or None when none was stored.

    ``kind``: "block" (a BlockConfig of the portable kernels) or "tensor_core" (a TensorCoreConfig,
    stored under the key with ``|tensor_core`` appended). ``seqlen`` is ``max(seqlen_q, seqlen_k)``;
    ``device`` defaults to the current device's name. Never raises for a missing, unreadable or
    stale cache: it returns None and the caller falls back to the default config (an unknown
    ``kind`` is a ValueError).
    """
    if kind not in KINDS:
        _check_kind(kind)
    path = _path_str()
    if path is None:
        return None
    loaded = _load(path)
    if loaded is None:
        return None
    _, configs = loaded
    if not configs:
        return None
    try:
        name = device if device is not None else _current_device_name()
        cfg = configs.get(_key(name, head_dim, dtype, causal, seqlen, pass_, kind))
    except Exception:  # pragma: no cover - e.g. no current device; the default is always safe
        return None
    want = TensorCoreConfig if kind == "tensor_core" else BlockConfig
    return cfg if isinstance(cfg, want) else None


def store(head_dim: int, dtype, causal: bool, seqlen: int, pass_: str, config, *,
          device: str | None = None, info: dict | None = None) -> Path | None:
    """Record ``config`` (a BlockConfig or a TensorCoreConfig: the kind follows its type) as the
    tuned choice for this key; returns the file (None when disabled)."""
    if pass_ not in PASSES:
        raise ValueError(f"pass_: expected one of {PASSES}, got {pass_!r}")
    kind = _kind_of(config)
    config.validate(head_dim, pass_)
    path = cache_path()
    if path is None:
        return None
    name = device if device is not None else _current_device_name()
    loaded = _load(path)
    entries = dict(loaded[0]) if loaded else {}
    entries[_key(name, head_dim, dtype, causal, seqlen, pass_, kind)] = {
        **(info or {}), "device": name, "head_dim": int(head_dim), "dtype": _dtype_name(dtype),
        "causal": bool(causal), "seqlen_bucket": seqlen_bucket(seqlen), "pass": pass_, "kind": kind,
        "config": _config_list(config),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write a temporary file and rename it, so a concurrent reader never sees half a file.
    fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump({"version": _CACHE_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    _loaded.pop(str(path), None)
    _forget_state()
    return path


def cache_entries() -> dict:
    """All raw entries of the cache file ({} when there is none)."""
    path = cache_path()
    loaded = _load(path) if path is not None else None
    return dict(loaded[0]) if loaded else {}


def clear_cache() -> bool:
    """Delete the tuning cache file; True when there was one."""
    path = cache_path()
    if path is None:
        return False
    _loaded.pop(str(path), None)
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    finally:
        _forget_state()


# --------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------

def _all_configs(block_sizes=BLOCK_SIZES, threads_per_row=THREADS_PER_ROW):
    """Every BlockConfig the constructor accepts: rows x threads-per-row threads, <= 1024."""
    out = []
    for bm in block_sizes:
        for bn in block_sizes:
            for tpr in threads_per_row:
                if bm * tpr > MAX_THREADS_PER_BLOCK:
                    continue
                try:
                    out.append(BlockConfig(bm, bn, bm * tpr))
                except ValueError:  # the row's threads do not split block_n evenly
                    continue
    return out


def _all_tc_configs(pass_: str = "forward"):
    """Every TensorCoreConfig of the candidate grid (TC_BLOCK_M x TC_BLOCK_N x TC_STAGES x
    TC_ROWS_PER_WARP x TC_REREAD_Q x TC_MIN_BLOCKS x TC_LONGEST_FIRST, and for the backward x TC_ATOMIC_DQ x
    TC_SPLIT_D,
    where reread_q and min_blocks only go with the dQ kernel, not with atomic dQ, split_d not with
    atomic dQ either, and min_blocks > 1 only with 4 warps) the constructor accepts (rows_per_warp must
    divide block_m), of at most TC_MAX_WARPS warps."""
    out = []
    backward = pass_ == "backward"
    flags = [(a, r, b, s, lf) for a in (TC_ATOMIC_DQ if backward else (False,)) for r in TC_REREAD_Q
             for b in TC_MIN_BLOCKS for s in (TC_SPLIT_D if backward else (False,)) for lf in TC_LONGEST_FIRST
             if not (a and (r or b > 1 or s))]
    for bm, bn, stages, rpw, (atomic, reread, blocks, split, lf) in itertools.product(
            TC_BLOCK_M, TC_BLOCK_N, TC_STAGES, TC_ROWS_PER_WARP, flags):
        if (blocks > 1 and bm // rpw != 4) or bm // rpw > TC_MAX_WARPS:
            continue
        try:
            out.append(TensorCoreConfig(bm, bn, stages, rpw, atomic, reread, blocks, split, lf))
        except ValueError:  # pragma: no cover - every rows_per_warp divides every block_m here
            continue
    return out


NO_BAND_NO_REORDER = ("longest_first: without the causal band every block is as long as the next, so there is "
                      "nothing to reorder (session 20: 1-13 % slower, fewer blocks of a head share L2)")


def _without_reorders(candidates: list, skipped: list, causal: bool) -> tuple[list, list]:
    """The grid :func:`tune` times: without the causal band, the ``longest_first`` candidates go to ``skipped``
    with :data:`NO_BAND_NO_REORDER` (half the tensor-core grid, none of it faster); BlockConfigs as they are."""
    if causal:
        return candidates, skipped
    reorders = [c for c in candidates if getattr(c, "longest_first", False)]
    return ([c for c in candidates if not getattr(c, "longest_first", False)],
            skipped + [(c, [NO_BAND_NO_REORDER]) for c in reorders])


def enumerate_configs(head_dim: int, pass_: str = "forward", *, kind: str = "block", block_sizes=BLOCK_SIZES,
                      threads_per_row=THREADS_PER_ROW, with_skipped: bool = False, elem: str = "f16"):
    """The configs of ``kind`` that can run ``pass_`` at ``head_dim``.

    ``kind="block"`` (the default): BlockConfigs that fit in shared memory and split evenly. For the
    backward pass both kernels (dK/dV over key rows, dQ over query rows) use the config, so it
    must fit both. ``kind="tensor_core"``: TensorCoreConfigs of the grid TC_BLOCK_M x TC_BLOCK_N x
    TC_STAGES x TC_ROWS_PER_WARP x TC_LONGEST_FIRST (x TC_ATOMIC_DQ x TC_SPLIT_D for the backward; ``block_sizes`` and
    ``threads_per_row`` do not apply) that pass
    ``TensorCoreConfig.problems``: dynamic shared memory, rows_per_warp=16 for the backward, head_dim
    <= 128 (so none at larger head_dim). These can be listed anywhere; only the GPU runs them.
    With ``with_skipped=True`` returns ``(ok, [(config, reasons), ...])``.
    Register limits are only known after compiling for a device; :func:`tune` checks those.
    """
    check_head_dim(head_dim)
    if pass_ not in PASSES:
        raise ValueError(f"pass_: expected one of {PASSES}, got {pass_!r}")
    _check_kind(kind)
    ok, skipped = [], []
    for cfg in (_all_tc_configs(pass_) if kind == "tensor_core" else _all_configs(block_sizes, threads_per_row)):
        why = _problems(cfg, head_dim, pass_, elem)
        (skipped.append((cfg, why)) if why else ok.append(cfg))
    return (ok, skipped) if with_skipped else ok


def _problems(cfg, head_dim: int, pass_: str, elem: str = "f16") -> list[str]:
    """``cfg.problems`` for either kind: a TensorCoreConfig's depend on the element kind it reads."""
    if isinstance(cfg, TensorCoreConfig):
        return cfg.problems(head_dim, pass_, elem)
    return cfg.problems(head_dim, pass_)


def _heuristic_order(configs):
    """Most promising first, so a short budget still sees good candidates: 128-256 threads (enough
    warps per block without starving registers), then larger tiles (more reuse of each load)."""
    def score(c):
        return (abs(math.log2(c.num_threads / 192)), -(c.block_m * c.block_n), -c.block_m)
    return sorted(configs, key=score)


def _tc_heuristic_order(configs):
    """Tensor-core candidates, most promising first: two stages (the next tile's copy overlaps the
    math), 4 warps per block (the default's; 2 or 8 next), block_n of 32, then 64 (16 wastes the
    mma's width, 128 costs registers), then larger block_m (fewer K/V re-reads)."""
    def score(c):
        return (c.stages != 2, abs(math.log2(c.warps / 4)), abs(math.log2(c.block_n / 40)), -c.block_m)
    return sorted(configs, key=score)


def _as_config(c):
    """A BlockConfig or TensorCoreConfig as is; a 3-tuple ``(block_m, block_n, num_threads)`` as a
    BlockConfig; a 4-tuple ``(block_m, block_n, stages, rows_per_warp)`` (or 5, with ``atomic_dq``,
    6, with ``atomic_dq, reread_q``, 7, with ``atomic_dq, reread_q, min_blocks``, 8, with ``split_d``, or 9,
    with ``longest_first`` last) as a TensorCoreConfig."""
    if isinstance(c, (BlockConfig, TensorCoreConfig)):
        return c
    try:
        values = tuple(c)
    except TypeError:
        raise TypeError(f"config: expected a BlockConfig, a TensorCoreConfig or a tuple of 3 or 4 ints, "
                        f"got {c!r}") from None
    if len(values) == 3:
        return BlockConfig(*values)
    if len(values) in _TC_LENGTHS:
        return TensorCoreConfig(*values)
    raise ValueError(f"config: expected (block_m, block_n, num_threads) for a BlockConfig or (block_m, block_n, "
                     f"stages, rows_per_warp[, atomic_dq[, reread_q[, min_blocks[, split_d[, longest_first]]]]]) for a "
                     f"TensorCoreConfig, "
                     f"got {c!r}")


def _config_of_text(text: str):
    """``--config``'s text: three integers for a BlockConfig, else :meth:`TensorCoreConfig.parse` (four
    integers, then the flags ``atomic``, ``reread``, ``split``, ``bK``)."""
    items = [x.strip() for x in text.split(",")]
    if len(items) == 3:
        try:
            return BlockConfig(*(int(x) for x in items))
        except ValueError as e:
            raise ValueError(f"BlockConfig {text!r}: expected BM,BN,THREADS (three integers): {e}") from None
    return TensorCoreConfig.parse(text)


# --------------------------------------------------------------------------------------------
# Running and checking one config
# --------------------------------------------------------------------------------------------

def _randn(xp, rng, shape, dtype):
    """Standard-normal values (never zeros) in ``dtype``, on the backend's device."""
    if xp is np:
        return rng.standard_normal(shape).astype(dtype)
    return xp.random.standard_normal(shape, dtype=np.float32).astype(dtype)


def _max_rel_err(got, ref) -> float:
    """max|got - ref| / max|ref| over the entries where ``ref`` is finite; inf when ``got`` is not
    finite there or differs where ``ref`` is infinite (empty causal rows have lse = -inf)."""
    got = np.asarray(got, dtype=np.float64)
    finite = np.isfinite(ref)
    if not np.isfinite(got[finite]).all() or not np.array_equal(got[~finite], ref[~finite]):
        return math.inf
    if not finite.any():
        return 0.0
    scale = max(float(np.max(np.abs(ref[finite]))), 1e-30)
    return float(np.max(np.abs(got[finite] - ref[finite]))) / scale


class _Problem:
    """The inputs of one tuning problem: full-size device inputs to time, and a reduced problem
    (one batch and head, at most ``check_seqlen`` tokens) with its float64 oracle answer."""

    def __init__(self, batch, heads, seqlen_q, seqlen_k, head_dim, dtype, causal, pass_, *,
                 check_seqlen=1024, seed=0, input_sets=None):
        from . import backend, reference

        self.shape = (batch, heads, seqlen_q, seqlen_k, head_dim)
        self.dtype, self.causal, self.pass_ = np.dtype(dtype), bool(causal), pass_
        xp = backend.array_module()
        rng = np.random.default_rng(seed)
        if xp is not np:
            xp.random.seed(seed)

        # The reduced problem for the oracle check. Its arrays are contiguous like the full ones,
        # so the check compiles the very specialisation that is timed (no second compile).
        cq, ck = min(seqlen_q, check_seqlen), min(seqlen_k, check_seqlen)
        host = [rng.standard_normal((1, 1, n, head_dim)).astype(self.dtype) for n in (cq, ck, ck, cq)]
        self.check_inputs = [xp.asarray(a) for a in host]
        q, k, v, do = host
        ref_out, ref_lse = reference.attention_forward(q, k, v, causal=causal)
        if pass_ == "forward":
            self.check_ref = (ref_out, ref_lse)
        else:
            # The backward is checked on the oracle's own out and lse, so only it is under test.
            self.check_extra = (xp.asarray(ref_out.astype(self.dtype)), xp.asarray(ref_lse.astype(np.float32)))
            self.check_ref = reference.attention_backward(do, q, k, v, causal=causal)

        # Full-size inputs. Two sets when one fits in an H100's 50 MB L2 twice over, so repeats
        # do not just measure the cache.
        one_set = (2 * seqlen_q + 2 * seqlen_k) * batch * heads * head_dim * self.dtype.itemsize
        n_sets = input_sets or (2 if one_set < 64 * 2**20 else 1)
        self.inputs = []
        for _ in range(n_sets):
            q, k, v, do = (_randn(xp, rng, (batch, heads, n, head_dim), self.dtype)
                           for n in (seqlen_q, seqlen_k, seqlen_k, seqlen_q))
            if pass_ == "forward":
                self.inputs.append((q, k, v))
            else:
                from .api import flash_attention

                fwd_cfg = default_config(head_dim, self.dtype, "forward")
                out, lse = flash_attention(q, k, v, causal=causal, config=fwd_cfg, return_lse=True)
                self.inputs.append((do, q, k, v, out, lse))

    def compute(self, config, which: str = "check"):
        """Run ``config`` on the reduced problem; return its outputs as host arrays."""
        from . import backend
        from .api import flash_attention, flash_attention_backward

        q, k, v, do = self.check_inputs
        if self.pass_ == "forward":
            outs = flash_attention(q, k, v, causal=self.causal, config=config, return_lse=True)
        else:
            out, lse = self.check_extra
            outs = flash_attention_backward(do, q, k, v, out, lse, causal=self.causal, config=config)
        xp = backend.array_module()
        return tuple(np.asarray(xp.asnumpy(o)) if xp is not np else np.asarray(o) for o in outs)

    def check(self, config) -> float:
        """The largest relative error of ``config``'s outputs against the float64 oracle."""
        got = self.compute(config)
        return max(_max_rel_err(g, r) for g, r in zip(got, self.check_ref))

    def timed_fn(self, config):
        """``(fn, inputs)`` for :func:`numba_flash.timing.time_ms` on the full problem."""
        from .api import flash_attention, flash_attention_backward

        causal = self.causal
        if self.pass_ == "forward":
            return (lambda q, k, v: flash_attention(q, k, v, causal=causal, config=config)), self.inputs
        return (lambda do, q, k, v, out, lse: flash_attention_backward(
            do, q, k, v, out, lse, causal=causal, config=config)), self.inputs


def _kernels_of(config, head_dim, causal, pass_):
    """The kernels (Numba dispatchers) that ``config`` runs ``pass_`` with, as the API makes them."""
    # causal is a runtime argument of the kernels now (their band): one compiled kernel serves both.
    if isinstance(config, TensorCoreConfig):
        # GPU only (inline PTX: these modules import only there). The arguments are the API's,
        # positionally (dense, so varlen False; no dropout; float16), so the lru_cache hands back
        # the very dispatchers the check and the timing compiled.
        if pass_ == "forward":
            from .tc_forward import tc_forward_kernel

            return [tc_forward_kernel(config, head_dim, False, False, "f16")]
        from .tc_backward import tc_dkdv_kernel, tc_dq_kernel

        return [tc_dkdv_kernel(config, head_dim, False, False, "f16"),
                tc_dq_kernel(config, head_dim, False, False, "f16")]
    from .backward import dkdv_kernel, dq_kernel
    from .forward import forward_kernel

    if pass_ == "forward":
        return [forward_kernel(config, head_dim)]
    return [dkdv_kernel(config, head_dim), dq_kernel(config, head_dim)]


def _resources(config, head_dim, causal, pass_):
    """(registers per thread, max threads per block) over the compiled kernels; (None, None) on
    the simulator or when Numba cannot tell."""
    regs, max_threads = [], []
    try:
        for disp in _kernels_of(config, head_dim, causal, pass_):
            r, m = disp.get_regs_per_thread(), disp.get_max_threads_per_block()
            regs += list(r.values()) if isinstance(r, dict) else [r]
            max_threads += list(m.values()) if isinstance(m, dict) else [m]
    except Exception:
        return None, None
    return (max(regs) if regs else None), (min(max_threads) if max_threads else None)


def _is_out_of_resources(exc) -> bool:
    return getattr(exc, "code", None) == _OUT_OF_RESOURCES or "OUT_OF_RESOURCES" in str(exc)


def _device_usable() -> bool:
    """After a failed launch: is the CUDA context still usable (not a sticky error)?"""
    from . import backend

    if backend.BACKEND != backend.GPU:
        return True
    try:
        import cupy

        cupy.cuda.runtime.deviceSynchronize()
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Trial:
    """What happened to one config: ``status`` is 'ok' (checked and timed), 'failed' (wrong result
    or error: never ranked), 'skipped' (cannot run here) or 'not run' (budget spent)."""

    config: BlockConfig | TensorCoreConfig
    status: str = "not run"
    reason: str = ""
    max_rel_err: float | None = None
    median_ms: float | None = None
    min_ms: float | None = None
    repeat: int | None = None
    tflops: float | None = None
    registers: int | None = None
    seconds: float = 0.0

    def row(self, head_dim: int, pass_: str, elem: str = "f16") -> dict:
        """The trial as a flat dict: ``threads_per_row`` is None for a TensorCoreConfig, ``stages``
        and ``rows_per_warp`` None for a BlockConfig; ``smem_kib`` the most any of its kernels uses."""
        c = self.config
        kernels = ("forward",) if pass_ == "forward" else ("dq", "dkdv")
        if isinstance(c, TensorCoreConfig):
            smem = (c.shared_memory_bytes(head_dim, elem) if pass_ == "forward"
                    else max(c.backward_shared_bytes(head_dim, k, elem) for k in kernels))
            tpr, stages, rpw, atomic, reread, blocks, split, lf = (None, c.stages, c.rows_per_warp, c.atomic_dq,
                                                                   c.reread_q, c.min_blocks, c.split_d, c.longest_first)
        else:
            smem = max(c.shared_memory_bytes(head_dim, k) for k in kernels)
            tpr, stages, rpw, atomic, reread, blocks, split, lf = c.threads_per_row(c.block_m), *[None] * 7
        return {"kind": _kind_of(c), "block_m": c.block_m, "block_n": c.block_n, "num_threads": c.num_threads,
                "threads_per_row": tpr, "stages": stages, "rows_per_warp": rpw, "atomic_dq": atomic, "reread_q": reread,
                "min_blocks": blocks, "split_d": split, "longest_first": lf, "smem_kib": smem / 1024,
                "registers": self.registers, "median_ms": self.median_ms, "min_ms": self.min_ms,
                "repeat": self.repeat, "tflops": self.tflops, "max_rel_err": self.max_rel_err,
                "status": self.status, "reason": self.reason}


@dataclasses.dataclass
class TuneResult:
    """The outcome of :func:`tune`: ``best`` (None when nothing passed), every trial, the cache key,
    and the ``kind`` tuned ("block": BlockConfigs; "tensor_core": TensorCoreConfigs)."""

    device: str
    shape: dict
    pass_: str
    best: BlockConfig | TensorCoreConfig | None
    default: BlockConfig | TensorCoreConfig
    trials: list
    key: str
    cache_file: str | None
    stored: bool
    elapsed_s: float
    budget_s: float
    kind: str = "block"
    elem: str = "f16"  # what the tensor-core kernels read: "tf32" for float32

    @property
    def ranked(self) -> list:
        return sorted((t for t in self.trials if t.status == "ok"), key=lambda t: t.median_ms)

    def trial(self, config) -> Trial | None:
        config = _as_config(config)
        return next((t for t in self.trials if t.config == config), None)

    def speedup_vs_default(self) -> float | None:
        d, r = self.trial(self.default), self.ranked
        if d is None or d.status != "ok" or not r:
            return None
        return d.median_ms / r[0].median_ms

    def rows(self) -> list[dict]:
        d = self.shape["head_dim"]
        return [t.row(d, self.pass_, self.elem) for t in self.ranked] + [
            t.row(d, self.pass_, self.elem) for t in self.trials if t.status != "ok"]

    def counts(self) -> dict:
        out: dict = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    def to_dict(self) -> dict:
        return {"device": self.device, "shape": self.shape, "pass": self.pass_, "kind": self.kind,
                "best": None if self.best is None else dataclasses.asdict(self.best),
                "default": dataclasses.asdict(self.default), "speedup_vs_default": self.speedup_vs_default(),
                "key": self.key, "cache_file": self.cache_file, "stored": self.stored,
                "elapsed_s": self.elapsed_s, "budget_s": self.budget_s, "counts": self.counts(),
                "trials": self.rows()}

    def table(self, top: int | None = 10):
        """A rich Table: the ranked configs (best first), then the failed ones."""
        from rich.table import Table

        s = self.shape
        tc = self.kind == "tensor_core"
        title = (f"{self.pass_} B={s['batch']} H={s['heads']} Nq={s['seqlen_q']} Nk={s['seqlen_k']} "
                 f"D={s['head_dim']} {s['dtype']}{' causal' if s['causal'] else ''} on {self.device}"
                 f"{' (tensor-core kernels)' if tc else ''}")
        t = Table(title=title)
        atomic_col = tc and self.pass_ == "backward"  # dQ: by atomic adds, or its own kernel; dK/dV's warp layout
        shape_cols = ((("stages", "rows/warp", "Q", "blk/SM", "order") + (("dQ", "dK/dV") if atomic_col else ())) if tc
                      else ("thr/row",))
        for col in ("#", "BM", "BN", "thr", *shape_cols, "smem KiB", "regs", "ms", "TFLOP/s", "vs default",
                    "max err", "status"):
            t.add_column(col, justify="right" if col not in ("status",) else "left")

        def head(r):
            cells = (r["stages"], r["rows_per_warp"]) if tc else (r["threads_per_row"],)
            # Q fragments: per key tile, or held; the launch bound (blocks per SM asked for); the blocks' order
            q = ("re-read" if r["reread_q"] else "regs", _fmt(r.get("min_blocks") or 1, "d"),
                 "longest" if r.get("longest_first") else "by head") if tc else ()
            dq = (("atomic" if r["atomic_dq"] else "kernel", "split" if r.get("split_d") else "16 keys") if atomic_col
                  else ())
            return (str(r["block_m"]), str(r["block_n"]), str(r["num_threads"]), *(_fmt(x, "d") for x in cells), *q, *dq,
                    f"{r['smem_kib']:.1f}", _fmt(r["registers"], "d"))

        default = self.trial(self.default)
        base = default.median_ms if default is not None and default.status == "ok" else None
        ranked = self.ranked
        for i, tr in enumerate(ranked[:top] if top else ranked):
            r = tr.row(s["head_dim"], self.pass_, self.elem)
            mark = " (default)" if tr.config == self.default else ""
            t.add_row(str(i + 1), *head(r), f"{tr.median_ms:.4g}", _fmt(tr.tflops, ".3g"),
                      f"{base / tr.median_ms:.2f}x" if base else "", _fmt(tr.max_rel_err, ".1e"), "ok" + mark)
        for tr in self.trials:
            if tr.status == "failed":
                r = tr.row(s["head_dim"], self.pass_, self.elem)
                t.add_row("-", *head(r), "", "", "", _fmt(tr.max_rel_err, ".1e"), f"[red]FAILED[/red]: {tr.reason}")
        return t

    def summary(self) -> str:
        c = self.counts()
        parts = [f"{c.get('ok', 0)} timed", f"{c.get('failed', 0)} failed the oracle check or errored",
                 f"{c.get('skipped', 0)} skipped (do not fit)", f"{c.get('not run', 0)} not run (budget)"]
        lines = [", ".join(parts) + f" in {self.elapsed_s:.1f} s of a {self.budget_s:.0f} s budget."]
        if self.shape.get("backend") == "simulator":
            lines.append("(simulator: times only show that the code ran; the ranking means nothing)")
        if self.best is not None:
            sp = self.speedup_vs_default()
            lines.append(f"best: {self.best}" + (f", {sp:.2f}x the default {self.default}" if sp else ""))
        else:
            lines.append("no config passed the check; nothing stored")
        if self.stored:
            lines.append(f"stored in {self.cache_file} under {self.key!r}: flash_attention(config=None) uses it")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"TuneResult(best={self.best}, {self.counts()}, key={self.key!r})"


def _fmt(x, spec):
    return "" if x is None else format(x, spec)


# --------------------------------------------------------------------------------------------
# tune()
# --------------------------------------------------------------------------------------------

def _tc_dtype(dtype) -> bool:
    """Whether the tensor-core kernels take ``dtype`` for ``pass_``: float16 (its config also serves
    bfloat16) and float32 (3xTF32), both passes."""
    return dtype in (np.float16, np.float32)


def _resolve_kind(kind, configs, head_dim: int, dtype, pass_: str = "forward") -> str:
    """The kind :func:`tune` tunes: ``kind`` when given; else that of ``configs`` (all one kind);
    else "tensor_core" on the GPU backend where config=None runs those kernels (float16, and float32 as
    3xTF32, at head_dim <= TC_MAX_HEAD_DIM), "block" otherwise. Raises ValueError when
    the tensor-core kernels cannot run here (the simulator, another dtype) or ``configs`` mix
    kinds or disagree with ``kind``."""
    from . import backend

    dtype = np.dtype(dtype)
    if kind is not None:
        _check_kind(kind)
    kinds = {_kind_of(c) for c in configs} if configs is not None else set()
    if len(kinds) > 1:
        raise ValueError("configs: BlockConfigs and TensorCoreConfigs (3- and 4-tuples) mixed; tune one kind at a time")
    if kind is None:
        if kinds:
            kind = kinds.pop()
        elif backend.BACKEND == backend.GPU and _tc_dtype(dtype) and head_dim <= TC_MAX_HEAD_DIM:
            kind = "tensor_core"
        else:
            kind = "block"
    elif kinds and kinds != {kind}:
        wanted = "TensorCoreConfigs" if kind == "tensor_core" else "BlockConfigs"
        raise ValueError(f"configs: kind={kind!r} tunes {wanted}, got {kinds.pop()} configs")
    if kind == "tensor_core":
        if not _tc_dtype(dtype):
            raise ValueError(f"kind='tensor_core': the tensor-core kernels take float16 (the tuned config also serves "
                             f"bfloat16) and float32 (3xTF32); got dtype={dtype.name} for the {pass_} pass; use "
                             "kind='block'")
        if backend.BACKEND != backend.GPU:
            raise ValueError(f"kind='tensor_core': the tensor-core kernels need the GPU backend (inline PTX: the CUDA "
                             f"simulator cannot run them; this is the {backend.BACKEND} backend); use kind='block'")
    return kind


def _label(config) -> str:
    if isinstance(config, TensorCoreConfig):
        return f"{config.block_m}x{config.block_n} s{config.stages} r{config.rows_per_warp}"
    return f"{config.block_m}x{config.block_n}/{config.num_threads}"


def tune(batch: int, heads: int, seqlen_q: int, seqlen_k: int | None = None, head_dim: int = 64,
         dtype="float16", causal: bool = False, pass_: str = "forward", budget_s: float = 60.0,
         configs=None, cache: bool = True, progress: bool = True, *, show: bool = True, top: int | None = 10,
         check_seqlen: int = 1024, repeat: int | None = None, seed: int = 0, kind: str | None = None) -> TuneResult:
    """Check and time the candidate configs for one problem; rank them; store the best.

    ``kind``: "block" (BlockConfigs of the portable kernels) or "tensor_core" (TensorCoreConfigs of
    the tensor-core kernels: GPU backend and float16 only, else ValueError). None: the kind of
    ``configs`` when given, else "tensor_core" on the GPU with float16 and head_dim <= 128 (what
    ``config=None`` runs there), "block" otherwise.
    ``configs``: the candidates (BlockConfigs, TensorCoreConfigs, ``(block_m, block_n, num_threads)``
    or ``(block_m, block_n, stages, rows_per_warp)`` tuples; one kind), tried in the given order;
    default: :func:`enumerate_configs` of ``kind``, the cached and the default config first
    (:func:`~numba_flash.config.default_config`, or :func:`~numba_flash.config.default_tc_config`
    without dropout), then the most promising. ``budget_s`` bounds the time spent checking and
    timing (past it, configs are still tried until one has passed and been timed, so there is
    always a result). ``cache``: read the cached config as a candidate and store the winner (a
    TensorCoreConfig under the ``|tensor_core`` key). ``progress``: show a progress bar; ``show``:
    print the ranked table (``top`` rows). ``repeat``: timed calls per config (default: about 0.3 s
    worth, 3 to 20).
    """
    from . import backend
    from .timing import attention_flops, time_ms

    seqlen_k = seqlen_q if seqlen_k is None else seqlen_k
    check_head_dim(head_dim)
    if pass_ not in PASSES:
        raise ValueError(f"pass_: expected one of {PASSES}, got {pass_!r}")
    dtype = np.dtype(dtype)
    if configs is not None:
        configs = [_as_config(c) for c in configs]
    kind = _resolve_kind(kind, configs, head_dim, dtype, pass_)
    elem = tc_elem(dtype)
    t_start = time.perf_counter()
    seqlen = max(seqlen_q, seqlen_k)
    device = _current_device_name()
    if kind == "tensor_core":
        default = default_tc_config(head_dim, False, pass_, elem, unmasked=not causal, causal=causal)  # config=None's
    else:
        default = default_config(head_dim, dtype, pass_)
    cached = lookup(head_dim, dtype, causal, seqlen, pass_, kind=kind) if cache else None

    if configs is None:
        candidates, skipped = enumerate_configs(head_dim, pass_, kind=kind, with_skipped=True, elem=elem)
        candidates, skipped = _without_reorders(candidates, skipped, causal)
        front = [c for c in (cached, default) if c is not None and not _problems(c, head_dim, pass_, elem)]
        order = _tc_heuristic_order if kind == "tensor_core" else _heuristic_order
        candidates = front + [c for c in order(candidates) if c not in front]
        trials = [Trial(c) for c in candidates]
        trials += [Trial(c, "skipped", "; ".join(why)) for c, why in skipped if c not in front]
    else:
        trials = []
        for c in configs:
            if any(t.config == c for t in trials):
                continue
            why = _problems(c, head_dim, pass_, elem)
            trials.append(Trial(c, "skipped", "; ".join(why)) if why else Trial(c))
    runnable = [t for t in trials if t.status == "not run"]

    problem = _Problem(batch, heads, seqlen_q, seqlen_k, head_dim, dtype, causal, pass_,
                       check_seqlen=check_seqlen, seed=seed)
    flops = attention_flops(batch, heads, seqlen_q, seqlen_k, head_dim, causal, pass_)
    tol = RTOL[dtype.name]
    t_loop = time.perf_counter()
    spent: list[float] = []

    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TextColumn("{task.fields[note]}"), transient=False)
        bar.start()
        task = bar.add_task(f"tuning {pass_}", total=len(runnable), note="")
    try:
        context_lost = False
        for t in runnable:
            elapsed = time.perf_counter() - t_loop
            estimate = float(np.mean(spent)) if spent else 0.0
            # Stay within the budget once one config has been timed, so there is always a result.
            have_one = any(x.status == "ok" for x in runnable)
            if context_lost or (have_one and elapsed + estimate > budget_s):
                t.reason = "CUDA context lost after a failed launch" if context_lost else "budget spent"
                continue
            if bar is not None:
                bar.update(task, description=f"{pass_} {_label(t.config)}",
                           note=f"{max(0.0, budget_s - elapsed):.0f} s left")
            t0 = time.perf_counter()
            _run_trial(t, problem, head_dim, causal, pass_, tol, flops, repeat, time_ms)
            if t.status == "failed" and not _device_usable():
                context_lost = True
            t.seconds = time.perf_counter() - t0
            spent.append(t.seconds)
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()

    ranked = sorted((t for t in trials if t.status == "ok"), key=lambda t: t.median_ms)
    best = ranked[0].config if ranked else None
    path = cache_path() if cache else None
    key = _key(device, head_dim, dtype, causal, seqlen, pass_, kind)
    stored = False
    if best is not None and path is not None:
        top_trial = ranked[0]
        store(head_dim, dtype, causal, seqlen, pass_, best, device=device, info={
            "median_ms": top_trial.median_ms, "tflops": top_trial.tflops,
            "shape": [batch, heads, seqlen_q, seqlen_k, head_dim],
            "default_ms": next((t.median_ms for t in trials if t.config == default and t.status == "ok"), None),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        stored = True
    result = TuneResult(
        device=device, pass_=pass_, best=best, default=default, trials=trials, key=key,
        shape={"batch": batch, "heads": heads, "seqlen_q": seqlen_q, "seqlen_k": seqlen_k, "head_dim": head_dim,
               "dtype": dtype.name, "causal": bool(causal), "backend": backend.BACKEND},
        cache_file=str(path) if path is not None else None, stored=stored,
        elapsed_s=time.perf_counter() - t_start, budget_s=budget_s, kind=kind, elem=elem)
    if show:
        from rich.console import Console

        console = Console()
        console.print(result.table(top))
        console.print(result.summary())
    return result


def _run_trial(t: Trial, problem: _Problem, head_dim, causal, pass_, tol, flops, repeat, time_ms):
    """Check ``t.config`` against the oracle, then time it; fills ``t`` in place."""
    try:
        err = problem.check(t.config)
    except Exception as e:  # launch or compile error
        if _is_out_of_resources(e):
            t.status, t.reason = "skipped", "needs more registers than the SM has for this many threads"
        else:
            t.status, t.reason = "failed", f"{type(e).__name__}: {e}"[:200]
        return
    t.registers, max_threads = _resources(t.config, head_dim, causal, pass_)
    t.max_rel_err = err
    if max_threads is not None and t.config.num_threads > max_threads:  # pragma: no cover - caught above
        t.status, t.reason = "skipped", f"registers allow only {max_threads} threads per block"
        return
    if not err <= tol:  # also catches NaN
        t.status, t.reason = "failed", f"wrong result: max rel err {err:.2e} > {tol:.0e} vs the float64 oracle"
        return
    fn, inputs = problem.timed_fn(t.config)
    try:
        if repeat is None:
            probe = time_ms(fn, inputs, warmup=1, repeat=1)["median_ms"]
            n = int(min(20, max(3, 300.0 / max(probe, 1e-3))))
        else:
            n = repeat
        timing = time_ms(fn, inputs, warmup=1 if repeat is not None else 0, repeat=n)
    except Exception as e:
        t.status, t.reason = "failed", f"timing: {type(e).__name__}: {e}"[:200]
        return
    t.status = "ok"
    t.median_ms, t.min_ms, t.repeat = timing["median_ms"], timing["min_ms"], timing["repeat"]
    t.tflops = flops / (t.median_ms * 1e-3) / 1e12


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

_SMOKE_CONFIGS = ((8, 8, 16), (8, 8, 32), (16, 16, 32))
_SMOKE_TC_CONFIGS = ((64, 32, 2, 16), (64, 64, 2, 16), (32, 32, 1, 16))  # GPU only; all run both passes


def main(argv=None) -> int:
    """``numba-flash tune``: tune one problem's block sizes, print the ranking, store the best."""
    parser = argparse.ArgumentParser(
        prog="numba-flash tune",
        description="Check and time the block configurations of numba_flash for one problem, print them ranked, "
                    "and store the fastest correct one in the tuning cache that config=None uses. On the GPU "
                    "with float16 this tunes the tensor-core kernels' TensorCoreConfig (--kind tensor_core) "
                    "unless --kind block.")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=2048, help="query length (and key length unless --seqlen-k)")
    parser.add_argument("--seqlen-k", type=int, default=None)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--pass", dest="pass_", choices=PASSES, default="forward")
    parser.add_argument("--kind", choices=KINDS, default=None,
                        help="block: BlockConfigs of the portable kernels; tensor_core: TensorCoreConfigs of the "
                             "tensor-core kernels (GPU, float16). Default: that of --config, else tensor_core on "
                             "the GPU with float16 and head_dim <= 128, else block")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds to spend checking and timing (default 60)")
    parser.add_argument("--top", type=int, default=10, help="ranked rows to print")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls per config (default: ~0.3 s worth)")
    parser.add_argument("--check-seqlen", type=int, default=1024,
                        help="tokens of the reduced problem checked against the float64 oracle")
    parser.add_argument("--config", dest="configs", action="append", default=None,
                        metavar="BM,BN,THREADS|BM,BN,STAGES,ROWS_PER_WARP[,atomic][,reread][,split][,longest][,bK]",
                        help="try only these configs (repeatable): 3 numbers for a BlockConfig; 4 numbers and "
                             "any flags for a TensorCoreConfig (TensorCoreConfig.parse: e.g. 128,64,2,16,split)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the tuning cache")
    parser.add_argument("--cache-file", default=None, help=f"cache file to use (default: ${CACHE_ENV} or "
                        "~/.cache/numba_flash/tuning.json)")
    parser.add_argument("--clear-cache", action="store_true", help="delete the tuning cache and exit")
    parser.add_argument("--list-cache", action="store_true", help="print the cache entries and exit")
    parser.add_argument("--out", default=None, help="also save the trials as JSON + Markdown in this folder")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny problem and three configs (for the simulator); does not touch the "
                             "default cache unless --cache-file is given")
    args = parser.parse_args(argv)

    if args.cache_file:
        os.environ[CACHE_ENV] = args.cache_file
    path = cache_path()
    if args.clear_cache:
        removed = clear_cache()
        print(f"removed {path}" if removed else f"no tuning cache at {path}")
        return 0
    if args.list_cache:
        entries = cache_entries()
        if not entries:
            print(f"no tuning cache entries in {path}")
        for key, entry in sorted(entries.items()):
            print(f"{key}: config={entry.get('config')} median_ms={entry.get('median_ms')}")
        return 0

    try:
        configs = [_config_of_text(c) for c in args.configs] if args.configs else None
    except (TypeError, ValueError) as e:
        parser.error(f"--config: {e}")
    use_cache = not args.no_cache
    if args.smoke:
        args.batch, args.heads, args.seqlen, args.seqlen_k, args.head_dim = 1, 1, 16, None, 16
        args.budget, args.repeat = min(args.budget, 30.0), args.repeat or 1
        smoke = _SMOKE_TC_CONFIGS if args.kind == "tensor_core" else _SMOKE_CONFIGS
        configs = configs or [_as_config(c) for c in smoke]
        if not args.cache_file:
            use_cache = False
            print("smoke mode: not touching the default tuning cache (give --cache-file to test it)")
    try:
        kind = _resolve_kind(args.kind, configs, args.head_dim, args.dtype, args.pass_)
    except ValueError as e:
        parser.error(str(e))
    if use_cache and path is None:
        print(f"{CACHE_ENV} disables the tuning cache: the result is not stored")

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="numba_flash is running its CUDA kernels under")
        result = tune(args.batch, args.heads, args.seqlen, args.seqlen_k, args.head_dim, dtype=args.dtype,
                      causal=args.causal, pass_=args.pass_, budget_s=args.budget, configs=configs, cache=use_cache,
                      progress=not args.no_progress, top=args.top, check_seqlen=args.check_seqlen,
                      repeat=args.repeat, kind=kind)
    if args.out:
        from .results import markdown_table, save

        shape_cols = ["stages", "rows_per_warp"] if kind == "tensor_core" else ["threads_per_row"]
        cols = ["block_m", "block_n", "num_threads", *shape_cols, "smem_kib", "registers", "median_ms",
                "tflops", "max_rel_err", "status", "reason"]
        body = result.summary().replace("\n", "\n\n") + "\n\n" + markdown_table(result.rows(), cols) + "\n"
        name = f"tune_{args.pass_}"
        save(args.out, name, result.to_dict(), body, title=f"numba-flash tune ({args.pass_})")
        print(f"wrote {Path(args.out) / name}.json and .md")
    return 0 if result.best is not None else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
