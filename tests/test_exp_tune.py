"""The block-size tuner (numba_flash.tune), its cache as config=None sees it, and the sweep experiment."""

import dataclasses
import importlib
import importlib.util
import json
import types
import warnings

import numpy as np
import pytest

import numba_flash as nf
from numba_flash import BlockConfig, api, reference
from numba_flash.config import MAX_THREADS_PER_BLOCK, TensorCoreConfig, default_config, default_tc_config

from helpers import ON_GPU, load_experiment, to_device, to_host

# importlib, not `import numba_flash.tune`: the package may export a function named `tune`.
tune_mod = importlib.import_module("numba_flash.tune")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own cache file, so the user's cache never leaks in or out."""
    path = tmp_path / "cache" / "tuning.json"
    monkeypatch.setenv(tune_mod.CACHE_ENV, str(path))
    return path


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="numba_flash is running its CUDA kernels under")
        yield


@pytest.mark.parametrize("head_dim", [8, 16, 64, 128, 256])
@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_enumerated_configs_are_all_runnable(head_dim, pass_):
    ok, skipped = tune_mod.enumerate_configs(head_dim, pass_, with_skipped=True)
    assert ok, "some config must fit every head_dim"
    for cfg in ok:
        assert cfg.problems(head_dim, pass_) == []
        cfg.validate(head_dim, pass_)
        assert cfg.block_m in tune_mod.BLOCK_SIZES and cfg.block_n in tune_mod.BLOCK_SIZES
        assert cfg.threads_per_row(cfg.block_m) in (1, 2, 4, 8)
        assert cfg.num_threads <= MAX_THREADS_PER_BLOCK
    for cfg, why in skipped:
        assert why and cfg.problems(head_dim, pass_) == why
    assert len(set(ok)) == len(ok) and not set(ok) & {c for c, _ in skipped}
    assert default_config(head_dim, np.float16, pass_, simulator=False) in ok


def test_seqlen_bucket():
    assert [tune_mod.seqlen_bucket(n) for n in (1, 2, 3, 16, 17, 1025, 2048, 2049)] == [1, 2, 4, 16, 32, 2048, 2048, 4096]


def test_cache_round_trip(private_cache, monkeypatch):
    cfg = BlockConfig(32, 16, 128)
    assert tune_mod.lookup(64, "float16", False, 2048, "forward") is None  # no file: nothing, no error
    assert tune_mod.store(64, np.float16, False, 2000, "forward", cfg, info={"median_ms": 1.0}) == private_cache
    assert private_cache.exists()
    assert tune_mod.lookup(64, np.dtype("float16"), False, 2048, "forward") == cfg
    assert tune_mod.lookup(64, "float16", False, 1025, "forward") == cfg  # same bucket
    for miss in [(64, "float16", False, 4096, "forward"), (64, "float32", False, 2048, "forward"),
                 (64, "float16", True, 2048, "forward"), (64, "float16", False, 2048, "backward"),
                 (128, "float16", False, 2048, "forward")]:
        assert tune_mod.lookup(*miss) is None, miss
    assert tune_mod.lookup(64, "float16", False, 2048, "forward", device="another GPU") is None
    entry = json.loads(private_cache.read_text())["entries"]
    assert [e["config"] for e in entry.values()] == [[32, 16, 128]]
    # a second entry keeps the first
    tune_mod.store(64, "float16", False, 2048, "backward", BlockConfig(16, 16, 64))
    assert len(tune_mod.cache_entries()) == 2 and tune_mod.lookup(64, "float16", False, 2048, "forward") == cfg
    assert tune_mod.clear_cache() and not private_cache.exists()
    assert tune_mod.lookup(64, "float16", False, 2048, "forward") is None
    assert not tune_mod.clear_cache()
    # disabled: nothing stored, nothing found
    monkeypatch.setenv(tune_mod.CACHE_ENV, "off")
    assert tune_mod.cache_path() is None
    assert tune_mod.store(64, "float16", False, 2048, "forward", cfg) is None
    assert tune_mod.lookup(64, "float16", False, 2048, "forward") is None


def test_broken_or_stale_cache_never_breaks_a_call(private_cache):
    private_cache.parent.mkdir(parents=True)
    private_cache.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert tune_mod.lookup(16, "float32", False, 8, "forward") is None
    # an entry whose config does not fit its head_dim (e.g. hand-edited) is ignored
    key = tune_mod._key(tune_mod._current_device_name(), 256, "float32", False, 8, "forward")
    private_cache.write_text(json.dumps({"version": 1, "entries": {key: {
        "head_dim": 256, "pass": "forward", "config": [128, 128, 1024]}}}))
    assert tune_mod.lookup(256, "float32", False, 8, "forward") is None
    with pytest.raises(ValueError):
        tune_mod.store(256, "float32", False, 8, "forward", BlockConfig(128, 128, 1024))


def test_api_uses_the_cached_config(private_cache, monkeypatch, rng):
    D, n = 16, 8
    default = default_config(D, np.float32, "forward")
    tuned = BlockConfig(8, 8, 64)  # valid at D=16, and not the default on either backend
    assert tuned != default
    assert api._check_config(None, D, np.float32, "forward", False, n) == default  # no cache: as before
    tune_mod.store(D, np.float32, False, n, "forward", tuned)
    assert api._check_config(None, D, np.float32, "forward", False, n) == tuned
    assert api._check_config(None, D, np.float32, "forward", True, n) == default  # other key
    assert api._check_config(None, D, np.float16, "forward", False, n) == default
    explicit = BlockConfig(8, 8, 16)
    assert api._check_config(explicit, D, np.float32, "forward", False, n) == explicit  # explicit wins

    used = []
    real = api.forward_kernel

    def recording(config, head_dim, *variant):
        used.append(config)
        return real(config, head_dim, *variant)

    monkeypatch.setattr(api, "forward_kernel", recording)
    # Every other column: the tensor-core forward (float32's default on the GPU) cannot read a strided
    # last axis, so the portable kernel, whose configs this cache holds, runs on both backends.
    wide = [to_device(rng.standard_normal((1, 1, n, 2 * D)).astype(np.float32)) for _ in range(3)]
    dev = [a[..., ::2] for a in wide]
    q, k, v = (to_host(a) for a in dev)
    out = to_host(nf.flash_attention(*dev))
    assert used == [tuned]
    want, _ = reference.attention_forward(q, k, v)
    assert np.max(np.abs(out - want)) < 1e-5
    tune_mod.clear_cache()
    nf.flash_attention(*dev)
    assert used == [tuned, default]


def test_tune_rejects_wrong_results_and_stores_the_best_correct_one(private_cache, monkeypatch):
    broken = BlockConfig(8, 8, 32)
    good = BlockConfig(8, 8, 16)
    real_compute = tune_mod._Problem.compute
    real_timed = tune_mod._Problem.timed_fn
    checked, timed = [], []

    def compute(self, config, which="check"):
        checked.append(config)
        outs = real_compute(self, config, which)
        return tuple(o + 0.5 for o in outs) if config == broken else outs  # a config that computes nonsense

    def timed_fn(self, config):
        timed.append(config)
        return real_timed(self, config)

    monkeypatch.setattr(tune_mod._Problem, "compute", compute)
    monkeypatch.setattr(tune_mod._Problem, "timed_fn", timed_fn)
    result = tune_mod.tune(1, 1, 16, 16, 16, dtype="float32", budget_s=60, configs=[broken, good, (8, 8, 64)],
                           progress=False, show=False, repeat=1)
    assert set(checked) == {broken, good, BlockConfig(8, 8, 64)}
    assert broken not in timed
    t = result.trial(broken)
    assert t.status == "failed" and "wrong result" in t.reason and t.median_ms is None and t.max_rel_err > 1e-2
    assert broken not in [r.config for r in result.ranked]
    assert result.best in (good, BlockConfig(8, 8, 64))
    assert tune_mod.lookup(16, "float32", False, 16, "forward") == result.best
    table = result.table()  # renders, with the failure listed
    assert table.row_count == 3


def test_tune_skips_out_of_resources_and_respects_the_budget(monkeypatch):
    big = BlockConfig(16, 16, 64)
    real_compute = tune_mod._Problem.compute

    class OutOfResources(Exception):
        code = 701

    def compute(self, config, which="check"):
        if config == big:
            raise OutOfResources("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")
        return real_compute(self, config, which)

    monkeypatch.setattr(tune_mod._Problem, "compute", compute)
    result = tune_mod.tune(1, 1, 16, 16, 16, dtype="float16", configs=[big, (8, 8, 16), (8, 8, 32), (128, 128, 1024)],
                           budget_s=0.0, cache=False, progress=False, show=False, repeat=1)
    assert result.trial(big).status == "skipped" and "registers" in result.trial(big).reason
    assert result.trial((128, 128, 1024)).status == "skipped"  # does not fit shared memory
    # budget 0: configs are tried until one is timed, then the rest are not run
    assert result.trial((8, 8, 16)).status == "ok"
    assert result.trial((8, 8, 32)).status == "not run" and result.trial((8, 8, 32)).reason == "budget spent"
    assert not result.stored and tune_mod.cache_entries() == {}


def test_tune_cli_smoke(tmp_path, capsys):
    cache = tmp_path / "c.json"
    out = tmp_path / "out"
    assert tune_mod.main(["--smoke", "--cache-file", str(cache), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "BM" in text and "stored in" in text
    data = json.loads((out / "tune_forward.json").read_text())
    assert data["shape"]["seqlen_q"] == 16 and data["environment"]["device"]
    statuses = [t["status"] for t in data["trials"]]
    assert statuses.count("ok") == 3, data["trials"]
    assert all(t["max_rel_err"] < tune_mod.RTOL["float16"] for t in data["trials"])
    best = data["best"]
    assert (out / "tune_forward.md").read_text().count("| ok |") == 3
    entries = json.loads(cache.read_text())["entries"]
    (entry,) = entries.values()
    assert entry["config"] == [best["block_m"], best["block_n"], best["num_threads"]] and entry["head_dim"] == 16
    assert tune_mod.main(["--list-cache", "--cache-file", str(cache)]) == 0
    assert "head_dim=16" in capsys.readouterr().out
    assert tune_mod.main(["--clear-cache", "--cache-file", str(cache)]) == 0
    assert not cache.exists()


def test_tune_smoke_without_cache_file_leaves_the_default_cache_alone(private_cache, monkeypatch, tmp_path):
    monkeypatch.delenv(tune_mod.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tune_mod.main(["--smoke", "--no-progress", "--config", "8,8,16"]) == 0
    assert not (tmp_path / "home" / ".cache").exists()


def test_block_size_sweep_smoke(tmp_path):
    mod = load_experiment("block_size_sweep")
    out = tmp_path / "sweep"
    assert mod.main(["--smoke", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "block_size_sweep.json").read_text())
    assert len(data["shapes"]) == 2
    for rec in data["shapes"]:
        cells = rec["cells"]
        assert len(cells) == len(rec["block_sizes"]) ** 2
        ok = [c for c in cells if c["status"] == "ok"]
        assert ok, cells
        for c in ok:
            assert c["tflops"] > 0 and c["num_threads"] and c["model_bytes"] > 0
            assert all(t["max_rel_err"] < 1e-2 for t in c["tried"] if t["status"] == "ok")
        # fewer query blocks -> fewer K/V re-reads in the model
        by = {(c["block_m"], c["block_n"]): c for c in cells}
        assert by[(16, 8)]["model_bytes"] < by[(8, 8)]["model_bytes"]
        assert rec["hbm_model"]
    md = (out / "block_size_sweep.md").read_text()
    assert "BLOCK_M \\ BLOCK_N" in md and "Modelled HBM" in md
    if importlib.util.find_spec("matplotlib"):
        pngs = sorted(out.glob("*.png"))
        assert len(pngs) == 2 and all(p.stat().st_size > 1000 for p in pngs)


# ---- the tensor-core configs (TensorCoreConfig) ------------------------------------------------
# They cannot run on the simulator (inline PTX), but they can be listed, ordered, stored, parsed
# and rendered anywhere; the tests that run them are GPU-only.

NEEDS_GPU = "the tensor-core kernels are inline PTX: they run only on the GPU backend, not on the simulator"


@pytest.mark.parametrize("head_dim", [16, 64, 128, 256])
@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_enumerated_tc_configs_are_all_runnable(head_dim, pass_):
    ok, skipped = tune_mod.enumerate_configs(head_dim, pass_, kind="tensor_core", with_skipped=True)
    # the tile grid, x 2 for reread_q, for the backward x 2 for split_d and + the atomic-dQ configs (which
    # have no dQ kernel, so no reread_q variant, and no split_d one); + a min_blocks=3 variant of each 4-warp
    # one ((64, rows 16) and (128, rows 32)) that is not atomic
    # (block_m, rows_per_warp) pairs of at most 8 warps: 256 rows only with 32 per warp
    pairs = [(bm, r) for bm in tune_mod.TC_BLOCK_M for r in tune_mod.TC_ROWS_PER_WARP if bm // r <= tune_mod.TC_MAX_WARPS]
    assert (256, 16) not in pairs and (256, 32) in pairs and len(pairs) == 7
    tiles = len(pairs) * len(tune_mod.TC_BLOCK_N) * len(tune_mod.TC_STAGES)
    four_warp = 2 * len(tune_mod.TC_BLOCK_N) * len(tune_mod.TC_STAGES) * len(tune_mod.TC_REREAD_Q)
    split = len(tune_mod.TC_SPLIT_D) if pass_ == "backward" else 1
    grid = tiles * (len(tune_mod.TC_REREAD_Q) * split + (1 if pass_ == "backward" else 0)) + four_warp * split
    grid *= len(tune_mod.TC_LONGEST_FIRST)  # every one of them in both block orders
    assert tune_mod.TC_MIN_BLOCKS == (1, 3) and tune_mod.TC_SPLIT_D == (False, True)
    assert tune_mod.TC_LONGEST_FIRST == (False, True)
    assert len(ok) + len(skipped) == grid == (688 if pass_ == "backward" else 288)
    assert len(set(ok)) == len(ok) and not set(ok) & {c for c, _ in skipped}
    assert tune_mod.enumerate_configs(head_dim, pass_, kind="tensor_core") == ok
    for cfg in ok:
        assert isinstance(cfg, TensorCoreConfig) and cfg.problems(head_dim, pass_) == []
        cfg.validate(head_dim, pass_)
        assert cfg.warps <= 8
        assert (cfg.block_m in (32, 64, 128, 256) and cfg.block_n in (16, 32, 64, 128) and cfg.stages in (1, 2)
                and cfg.rows_per_warp in (16, 32) and cfg.atomic_dq in ((False, True) if pass_ == "backward" else (False,))
                and not (cfg.atomic_dq and cfg.reread_q) and not (cfg.split_d and (pass_ == "forward" or cfg.atomic_dq)))
        if cfg.min_blocks > 1:  # the bound binds (4 warps: 255 registers allow 2 blocks) and leaves 168
            assert cfg.min_blocks == 3 and cfg.warps == 4 and not cfg.atomic_dq and cfg.max_registers() == 168
            assert dataclasses.replace(cfg, min_blocks=1) in ok
    for cfg, why in skipped:
        assert why and cfg.problems(head_dim, pass_) == why
    # longest_first changes no resource: its configs are the others' twins, and the checks below take the others
    twins = {c for c in ok if c.longest_first}
    ok = [c for c in ok if not c.longest_first]
    assert twins == {dataclasses.replace(c, longest_first=True) for c in ok}
    assert {c for c, _ in skipped if c.longest_first} == {dataclasses.replace(c, longest_first=True)
                                                          for c, _ in skipped if not c.longest_first}
    skipped = [(c, why) for c, why in skipped if not c.longest_first]
    if head_dim > 128:
        assert ok == [] and all("head_dim must be at most 128" in " ".join(why) for _, why in skipped)
        return
    assert default_tc_config(head_dim, False, pass_) in ok
    assert default_tc_config(head_dim, False, pass_, unmasked=True) in ok  # (256, 64, 2, 32, reread) at 128
    if pass_ == "backward":
        assert {c.rows_per_warp for c in ok} == {16}
        assert all(any("rows_per_warp=16" in w for w in why) for c, why in skipped if c.rows_per_warp == 32)
        # every rows_per_warp=16 config fits at head_dim <= 128; with atomic_dq's dS^T tile all do at
        # head_dim <= 64, and at 128 all but the largest (shared memory)
        plain = [c for c in ok if not c.atomic_dq and not c.reread_q and c.min_blocks == 1 and not c.split_d]
        atomic = [c for c in ok if c.atomic_dq]
        # split_d: every plain config with block_m and block_n multiples of 32 (two warps share 32 keys,
        # each takes half of a streamed tile), at head_dim 64 and 128 (multiples of 32), none at 16
        # (less, at head_dim 128, those whose P^T and dS^T tiles overflow shared memory)
        split = {c for c in ok if c.split_d and not c.reread_q and c.min_blocks == 1}
        fits32 = {dataclasses.replace(c, split_d=True) for c in plain
                  if head_dim % 32 == 0 and c.block_m % 32 == 0 and c.block_n % 32 == 0}
        assert split <= fits32 and (split == fits32 if head_dim <= 64 else len(split) >= len(fits32) - 2)
        assert TensorCoreConfig(128, 64, 2, 16, split_d=True) in split if head_dim in (64, 128) else not split
        for c in fits32 - split:
            assert any("shared memory" in w for w in c.problems(head_dim, pass_)), c
        # a split_d config skipped where its 16-key twin runs says why: its tile sizes, or shared memory
        assert all(any("split_d" in w or "shared memory" in w for w in why) for c, why in skipped
                   if c.split_d and not dataclasses.replace(c, split_d=False).problems(head_dim, pass_))
        assert len(plain) == 24 and {dataclasses.replace(c, atomic_dq=False) for c in atomic} <= set(plain)
        assert ({c for c in ok if c.reread_q and c.min_blocks == 1 and not c.split_d}
                == {dataclasses.replace(c, reread_q=True) for c in plain})
        assert len(atomic) == 24 if head_dim <= 64 else 12 <= len(atomic) < 24
        assert all(any("shared memory" in w for w in why) for c, why in skipped
                   if c.atomic_dq and c.rows_per_warp == 16)
    else:
        unbound = [c for c in ok if c.min_blocks == 1]
        # every tile fits at head_dim <= 128, the largest (256, 128, 2, 32) in 204 KB at 128
        assert {c.rows_per_warp for c in ok} == {16, 32} and len(unbound) == 112
        assert sum(c.reread_q for c in unbound) == 56 and sum(c.block_m == 256 for c in unbound) == 16
    # 3 blocks' shared memory must fit in an SM: the bound is skipped, with that reason, where it does not
    bound_skipped = [(c, why) for c, why in skipped if c.min_blocks > 1 and c.problems(head_dim, pass_, "f16")
                     and not dataclasses.replace(c, min_blocks=1).problems(head_dim, pass_, "f16")]
    assert all(len(why) == 1 and "min_blocks=3" in why[0] for _, why in bound_skipped)
    if head_dim == 128:
        assert bound_skipped  # e.g. (64, 64, 2, 16) at head_dim 128: 3 x 87 KB


def test_enumerate_configs_kind_block_is_the_default():
    assert tune_mod.enumerate_configs(64, "forward") == tune_mod.enumerate_configs(64, "forward", kind="block")
    assert all(isinstance(c, BlockConfig) for c in tune_mod.enumerate_configs(64, "backward"))
    with pytest.raises(ValueError, match="kind"):
        tune_mod.enumerate_configs(64, "forward", kind="tensorcore")


def test_tc_heuristic_order():
    ok = tune_mod.enumerate_configs(64, "forward", kind="tensor_core")
    ordered = tune_mod._tc_heuristic_order(ok)
    assert sorted(ordered, key=repr) == sorted(ok, key=repr)
    stages = [c.stages for c in ordered]
    assert stages == sorted(stages, reverse=True)  # every 2-stage config before any 1-stage one
    assert ordered[0].warps == 4 and ordered[0].block_m in (64, 128) and ordered[0].block_n == 32
    assert ordered.index(TensorCoreConfig(64, 32, 2, 16)) < ordered.index(TensorCoreConfig(32, 128, 2, 16))


def test_as_config_of_tuples():
    assert tune_mod._as_config((32, 16, 128)) == BlockConfig(32, 16, 128)
    assert tune_mod._as_config([64, 32, 2, 16]) == TensorCoreConfig(64, 32, 2, 16)
    assert type(tune_mod._as_config((64, 32, 2, 16))) is TensorCoreConfig
    cfg = TensorCoreConfig(128, 32, 2, 32)
    assert tune_mod._as_config(cfg) is cfg
    assert tune_mod._as_config((64, 32, 2, 16, True)) == TensorCoreConfig(64, 32, 2, 16, atomic_dq=True)
    assert tune_mod._as_config((64, 32, 2, 16, False, True)) == TensorCoreConfig(64, 32, 2, 16, reread_q=True)
    assert tune_mod._as_config((64, 64, 2, 16, False, True, 3)) == TensorCoreConfig(64, 64, 2, 16, reread_q=True,
                                                                                      min_blocks=3)
    assert tune_mod._as_config((128, 64, 2, 16, False, False, 1, True)) == TensorCoreConfig(128, 64, 2, 16, split_d=True)
    for bad in [(64, 32), (64, 32, 2, 16, True, 0), (64, 32, 2, 16, 1), (64, 32, 2, 16, False, False, True)]:
        with pytest.raises(ValueError, match="TensorCoreConfig"):
            tune_mod._as_config(bad)
    with pytest.raises(ValueError):
        tune_mod._as_config((64, 32, 3, 16))  # stages must be 1 or 2
    with pytest.raises(TypeError):
        tune_mod._as_config(64)


def test_tc_cache_entry_coexists_with_a_block_entry(private_cache):
    block, tc = BlockConfig(32, 16, 128), TensorCoreConfig(64, 64, 2, 16)
    problem = (64, "float16", False, 2048, "forward")
    assert tune_mod.lookup(*problem, kind="tensor_core") is None
    tune_mod.store(*problem, block)
    tune_mod.store(*problem, tc, info={"median_ms": 1.0})
    assert tune_mod.lookup(*problem) == block  # kind="block" by default
    assert tune_mod.lookup(*problem, kind="block") == block
    assert tune_mod.lookup(*problem, kind="tensor_core") == tc
    assert tune_mod.lookup(64, "float16", False, 1100, "forward", kind="tensor_core") == tc  # same bucket
    for miss in [(64, "float16", True, 2048, "forward"), (64, "float16", False, 2048, "backward"),
                 (64, "float32", False, 2048, "forward"), (64, "float16", False, 4096, "forward")]:
        assert tune_mod.lookup(*miss, kind="tensor_core") is None, miss
    with pytest.raises(ValueError, match="kind"):
        tune_mod.lookup(*problem, kind="tc")
    entries = json.loads(private_cache.read_text())["entries"]
    assert len(entries) == 2
    (tc_key,) = [k for k in entries if k.endswith("|tensor_core")]
    (block_key,) = [k for k in entries if not k.endswith("|tensor_core")]
    assert tc_key == block_key + "|tensor_core"
    assert entries[tc_key]["kind"] == "tensor_core" and entries[tc_key]["config"] == [64, 64, 2, 16]
    assert entries[tc_key]["median_ms"] == 1.0 and entries[tc_key]["head_dim"] == 64
    assert entries[block_key]["config"] == [32, 16, 128] and entries[block_key].get("kind", "block") == "block"
    # replacing the TC entry leaves the block one alone
    tune_mod.store(*problem, TensorCoreConfig(128, 32, 2, 32))
    assert tune_mod.lookup(*problem, kind="tensor_core") == TensorCoreConfig(128, 32, 2, 32)
    assert tune_mod.lookup(*problem) == block and len(tune_mod.cache_entries()) == 2


@pytest.mark.parametrize("cfg", [TensorCoreConfig(128, 32, 2, 32, reread_q=True), TensorCoreConfig(64, 32, 2, 16, True),
                                 TensorCoreConfig(64, 32, 2, 16, reread_q=True, min_blocks=3),
                                 TensorCoreConfig(128, 64, 2, 16, split_d=True),
                                 TensorCoreConfig(128, 64, 2, 16, reread_q=True, split_d=True)])
def test_tc_cache_entries_keep_their_flags(private_cache, cfg):
    # (until session 9 a tuned atomic_dq config was stored as its four tile sizes and came back without it;
    # split_d, in session 14)
    pass_ = "backward" if cfg.atomic_dq or cfg.split_d else "forward"
    tune_mod.store(128, "float16", False, 4096, pass_, cfg)
    assert tune_mod.lookup(128, "float16", False, 4096, pass_, kind="tensor_core") == cfg
    (entry,) = json.loads(private_cache.read_text())["entries"].values()
    more = cfg.min_blocks > 1 or cfg.split_d
    assert entry["config"] == [cfg.block_m, cfg.block_n, cfg.stages, cfg.rows_per_warp, cfg.atomic_dq, cfg.reread_q,
                               *([cfg.min_blocks] if more else []), *([True] if cfg.split_d else [])]


def test_store_validates_a_tc_config(private_cache):
    with pytest.raises(ValueError, match="rows_per_warp=16"):  # the backward takes 16 rows per warp
        tune_mod.store(64, "float16", False, 2048, "backward", TensorCoreConfig(128, 32, 2, 32))
    with pytest.raises(ValueError, match="head_dim must be at most"):
        tune_mod.store(256, "float16", False, 2048, "forward", TensorCoreConfig(64, 32, 2, 16))
    with pytest.raises(TypeError):
        tune_mod.store(64, "float16", False, 2048, "forward", (64, 32, 2, 16))
    assert not private_cache.exists()


def test_parse_drops_tc_entries_that_no_longer_fit(private_cache):
    dev = tune_mod._current_device_name()

    def key(d, pass_, kind="tensor_core"):
        return tune_mod._key(dev, d, "float16", False, 512, pass_, kind)

    def entry(d, pass_, config, **kw):
        return {"head_dim": d, "pass": pass_, "config": config, "kind": "tensor_core", **kw}

    private_cache.parent.mkdir(parents=True)
    entries = {
        key(64, "forward"): entry(64, "forward", [128, 32, 2, 32]),             # fine
        key(64, "backward"): entry(64, "backward", [128, 32, 2, 32]),           # backward needs 16 rows per warp
        key(128, "forward"): entry(128, "forward", [64, 32, 2]),                # 3 numbers: not a TC config
        key(16, "forward"): entry(16, "forward", [64, 40, 2, 16]),              # block_n not a multiple of 16
        key(32, "forward", "block"): entry(32, "forward", [64, 32, 2, 16]),     # a TC entry under a block key
        key(8, "forward", "block"): {"head_dim": 8, "pass": "forward", "config": [8, 8, 16]},  # old style: block
        key(8, "forward"): {"head_dim": 8, "pass": "forward", "config": [8, 8, 16]},  # block entry under a TC key
    }
    private_cache.write_text(json.dumps({"version": 1, "entries": entries}))
    assert tune_mod.lookup(64, "float16", False, 512, "forward", kind="tensor_core") == TensorCoreConfig(128, 32, 2, 32)
    assert tune_mod.lookup(64, "float16", False, 512, "backward", kind="tensor_core") is None
    assert tune_mod.lookup(128, "float16", False, 512, "forward", kind="tensor_core") is None
    assert tune_mod.lookup(16, "float16", False, 512, "forward", kind="tensor_core") is None
    assert tune_mod.lookup(32, "float16", False, 512, "forward") is None
    assert tune_mod.lookup(32, "float16", False, 512, "forward", kind="tensor_core") is None
    assert tune_mod.lookup(8, "float16", False, 512, "forward") == BlockConfig(8, 8, 16)
    assert tune_mod.lookup(8, "float16", False, 512, "forward", kind="tensor_core") is None
    assert set(tune_mod._parse(entries)) == {key(64, "forward"), key(8, "forward", "block")}


def test_state_is_memoised_for_a_second_and_reset_by_store(private_cache, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(tune_mod, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    assert tune_mod.state() == (str(private_cache), None)
    tune_mod.store(16, "float32", False, 8, "forward", BlockConfig(8, 8, 16))  # this process: seen at once
    first = tune_mod.state()
    assert first[0] == str(private_cache) and first[1] is not None
    # another process rewrites the file: seen once the memo is a second old
    private_cache.write_text(private_cache.read_text() + "\n")
    clock[0] += 0.5
    assert tune_mod.state() == first
    clock[0] += 0.6
    second = tune_mod.state()
    assert second != first and second[1][1] == first[1][1] + 1
    assert tune_mod.clear_cache()
    assert tune_mod.state() == (str(private_cache), None)  # cleared here: seen at once
    monkeypatch.setenv(tune_mod.CACHE_ENV, "off")
    assert tune_mod.state() is None  # another path: not the memo's


def _tc_result(pass_, head_dim=64):
    cfgs = [TensorCoreConfig(64, 32, 2, 16), TensorCoreConfig(64, 64, 1, 16), TensorCoreConfig(32, 16, 2, 16)]
    trials = [tune_mod.Trial(cfgs[0], "ok", max_rel_err=1e-3, median_ms=2.0, tflops=100.0, registers=96),
              tune_mod.Trial(cfgs[1], "ok", max_rel_err=1e-3, median_ms=1.0, tflops=200.0, registers=128),
              tune_mod.Trial(cfgs[2], "failed", "wrong result", max_rel_err=0.5)]
    shape = {"batch": 1, "heads": 2, "seqlen_q": 256, "seqlen_k": 256, "head_dim": head_dim, "dtype": "float16",
             "causal": False, "backend": "gpu"}
    return tune_mod.TuneResult(device="GPU", shape=shape, pass_=pass_, best=cfgs[1], default=cfgs[0], trials=trials,
                               key="k|tensor_core", cache_file=None, stored=False, elapsed_s=1.0, budget_s=60.0,
                               kind="tensor_core"), cfgs


@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_tc_trials_render(pass_):
    result, cfgs = _tc_result(pass_)
    rows = result.rows()
    assert [r["block_n"] for r in rows] == [64, 32, 16]  # ranked, then the failed one
    r = rows[0]
    assert r["kind"] == "tensor_core" and r["stages"] == 1 and r["rows_per_warp"] == 16
    assert r["threads_per_row"] is None and r["num_threads"] == 128
    want = (cfgs[1].shared_memory_bytes(64) if pass_ == "forward"
            else max(cfgs[1].backward_shared_bytes(64, k) for k in ("dq", "dkdv")))
    assert r["smem_kib"] == want / 1024
    if pass_ == "backward":
        assert want == cfgs[1].backward_shared_bytes(64, "dkdv") > cfgs[1].backward_shared_bytes(64, "dq")
    assert result.speedup_vs_default() == 2.0
    assert result.trial((64, 64, 1, 16)) is result.trials[1]
    table = result.table()
    headers = [c.header for c in table.columns]
    assert "stages" in headers and "rows/warp" in headers and "thr/row" not in headers
    assert table.row_count == 3
    d = result.to_dict()
    assert d["kind"] == "tensor_core" and d["best"] == {"block_m": 64, "block_n": 64, "stages": 1, "rows_per_warp": 16,
                                                   "atomic_dq": False, "reread_q": False, "min_blocks": 1, "split_d": False,
                                                   "longest_first": False}
    assert "order" in headers
    block_row = tune_mod.Trial(BlockConfig(32, 16, 128)).row(64, pass_)
    assert block_row["kind"] == "block" and block_row["stages"] is None and block_row["rows_per_warp"] is None
    assert block_row["threads_per_row"] == 4


def test_resolve_kind():
    # kind=None: the kernels config=None runs (tensor-core on the GPU with float16 and head_dim <= 128)
    assert tune_mod._resolve_kind(None, None, 64, "float16") == ("tensor_core" if ON_GPU else "block")
    assert tune_mod._resolve_kind(None, None, 256, "float16") == "block"
    # float32: config=None runs the 3xTF32 tensor-core kernels on the GPU, both passes
    assert tune_mod._resolve_kind(None, None, 64, "float32") == ("tensor_core" if ON_GPU else "block")
    assert tune_mod._resolve_kind(None, None, 64, "float32", "backward") == ("tensor_core" if ON_GPU else "block")
    assert tune_mod._resolve_kind(None, None, 256, "float32") == "block"
    if ON_GPU:
        assert tune_mod._resolve_kind("tensor_core", None, 64, "float32", "backward") == "tensor_core"
    assert tune_mod._resolve_kind("block", None, 64, "float16") == "block"
    # configs given: their kind
    assert tune_mod._resolve_kind(None, [BlockConfig(8, 8, 16)], 64, "float16") == "block"
    with pytest.raises(ValueError, match="mixed"):
        tune_mod._resolve_kind(None, [BlockConfig(8, 8, 16), TensorCoreConfig()], 64, "float16")
    with pytest.raises(ValueError, match="kind='block'"):
        tune_mod._resolve_kind("block", [TensorCoreConfig()], 64, "float16")
    with pytest.raises(ValueError, match="kind"):
        tune_mod._resolve_kind("portable", None, 64, "float16")
    with pytest.raises(ValueError, match=r"float16 .*float32 \(3xTF32\); got dtype=float64 for the backward pass"):
        tune_mod._resolve_kind("tensor_core", None, 64, "float64", "backward")
    if not ON_GPU:
        with pytest.raises(ValueError, match="need the GPU backend"):
            tune_mod._resolve_kind("tensor_core", None, 64, "float32", "backward")


@pytest.mark.skipif(ON_GPU, reason="checks the refusal on the simulator; the GPU runs tensor-core tuning")
def test_tune_tensor_core_on_the_simulator_is_a_clear_error(private_cache):
    for kw in ({"kind": "tensor_core"}, {"configs": [TensorCoreConfig(64, 32, 2, 16)]},
               {"configs": [(64, 32, 2, 16)]}):
        with pytest.raises(ValueError, match=r"kind='tensor_core'.*need the GPU"):
            tune_mod.tune(1, 1, 16, 16, 16, dtype="float16", budget_s=1, progress=False, show=False, **kw)
    assert not private_cache.exists()
    with pytest.raises(SystemExit) as exit_info:
        tune_mod.main(["--smoke", "--no-progress", "--kind", "tensor_core"])
    assert exit_info.value.code == 2
    # kind=None on the simulator tunes BlockConfigs and records that
    result = tune_mod.tune(1, 1, 16, 16, 16, dtype="float16", configs=[(8, 8, 16)], budget_s=30, progress=False,
                           show=False, repeat=1)
    assert result.kind == "block" and result.to_dict()["kind"] == "block" and result.best == BlockConfig(8, 8, 16)
    assert not result.key.endswith("|tensor_core")
    assert tune_mod.lookup(16, "float16", False, 16, "forward") == result.best
    assert tune_mod.lookup(16, "float16", False, 16, "forward", kind="tensor_core") is None


def test_tune_cli_reads_configs_with_flags():
    # (before session 14 --config took integers only, so no flagged tensor-core config could be named)
    read = tune_mod._config_of_text
    assert read("8, 8, 16") == BlockConfig(8, 8, 16) and read("64,32,2,16") == TensorCoreConfig(64, 32, 2, 16)
    assert read("128,64,2,16,split") == TensorCoreConfig(128, 64, 2, 16, split_d=True)
    assert read("64,64,2,16,reread,b3") == TensorCoreConfig(64, 64, 2, 16, reread_q=True, min_blocks=3)
    assert read("64,32,2,16,atomic") == TensorCoreConfig(64, 32, 2, 16, atomic_dq=True)
    for bad, why in (("8,8,x", "three integers"), ("64,32,2,16,fast", "unknown flag"), ("64,32", "four integers")):
        with pytest.raises(ValueError, match=why):
            read(bad)


def test_tune_cli_rejects_bad_configs(capsys):
    for argv in (["--config", "64,32"], ["--config", "8,8,16", "--config", "64,32,2,16"],
                 ["--kind", "block", "--config", "64,32,2,16"], ["--config", "128,64,2,16,quick"]):
        with pytest.raises(SystemExit) as exit_info:
            tune_mod.main(["--smoke", "--no-progress", *argv])
        assert exit_info.value.code == 2, argv
    err = capsys.readouterr().err
    assert "--config" in err and "mixed" in err and "kind='block'" in err and "unknown flag 'quick'" in err


@pytest.mark.skipif(ON_GPU, reason="on the GPU config=None picks tensor-core configs for float16 "
                                   "(test_pick_takes_the_tuned_tc_config_on_the_gpu)")
def test_pick_on_the_simulator_ignores_tc_entries(private_cache, monkeypatch, rng):
    D, n = 16, 8
    q, k, v = (to_device(rng.standard_normal((1, 1, n, D)).astype(np.float16)) for _ in range(3))
    arrays = (("q", q), ("k", k), ("v", v))
    default = default_config(D, np.float16, "forward")
    tune_mod.store(D, np.float16, False, n, "forward", TensorCoreConfig(64, 32, 2, 16))
    assert tune_mod.lookup(D, np.float16, False, n, "forward", kind="tensor_core") is not None
    assert api._pick(None, "forward", D, np.float16, False, n, arrays) == default
    tuned = BlockConfig(8, 8, 64)
    assert tuned != default
    tune_mod.store(D, np.float16, False, n, "forward", tuned)
    assert api._pick(None, "forward", D, np.float16, False, n, arrays) == tuned

    used = []
    real = api.forward_kernel
    monkeypatch.setattr(api, "forward_kernel", lambda cfg, *rest: used.append(cfg) or real(cfg, *rest))
    nf.flash_attention(q, k, v)
    assert used == [tuned]


# ---- GPU only: the tensor-core configs run --------------------------------------------------------

@pytest.mark.skipif(not ON_GPU, reason=NEEDS_GPU)
def test_pick_takes_the_tuned_tc_config_on_the_gpu(private_cache, monkeypatch, rng):
    import numba_flash.tc_forward as tc_forward
    from helpers import bf16_bits

    D, n = 64, 256
    host = [rng.standard_normal((1, 2, n, D)).astype(np.float32) for _ in range(3)]
    q, k, v = (to_device(a.astype(np.float16)) for a in host)
    arrays = (("q", q), ("k", k), ("v", v))
    default = default_tc_config(D, False, "forward")
    tuned = TensorCoreConfig(64, 64, 2, 16)
    assert tuned != default
    assert api._pick(None, "forward", D, np.float16, False, n, arrays) == default  # no cache: as before

    used = []
    real = tc_forward.tc_forward_kernel
    monkeypatch.setattr(tc_forward, "tc_forward_kernel", lambda cfg, *rest: used.append(cfg) or real(cfg, *rest))
    out0 = to_host(nf.flash_attention(q, k, v))
    assert used == [default]
    tune_mod.store(D, np.float16, False, n, "forward", tuned)
    assert api._pick(None, "forward", D, np.float16, False, n, arrays) == tuned
    assert api._pick(None, "forward", D, np.float16, True, n, arrays) == default  # causal: another key
    # with dropout: the default for dropout, never the tuned config
    assert api._pick(None, "forward", D, np.float16, False, n, arrays, True) == default_tc_config(D, True, "forward")
    bf = tuple((name, to_device(bf16_bits(a))) for name, a in zip("qkv", host))
    assert api._pick(None, "forward", D, np.uint16, False, n, bf) == tuned  # bfloat16 reads the float16 entry
    # the cached launch plan of the first call is remade: the tuning cache changed
    out1 = to_host(nf.flash_attention(q, k, v))
    assert used == [default, tuned]
    want, _ = reference.attention_forward(*(a.astype(np.float16) for a in host))
    for out in (out0, out1):
        assert np.max(np.abs(out.astype(np.float64) - want)) < 1e-2 * np.max(np.abs(want))
    # float32 (3xTF32) reads its own tensor-core entry, never float16's; the block entry only where the
    # tensor-core kernels cannot run (head_dim 256)
    q32 = (("q", to_device(host[0])), ("k", to_device(host[1])), ("v", to_device(host[2])))
    assert api._pick(None, "forward", D, np.float32, False, n, q32) == default_tc_config(D, False, "forward", "tf32")
    tune_mod.store(D, np.float32, False, n, "forward", TensorCoreConfig(64, 32, 1, 16))
    assert api._pick(None, "forward", D, np.float32, False, n, q32) == TensorCoreConfig(64, 32, 1, 16)
    tune_mod.store(256, np.float32, False, n, "forward", BlockConfig(8, 16, 32))  # fits head_dim 256
    big = tuple((name, to_device(rng.standard_normal((1, 2, n, 256)).astype(np.float32))) for name in "qkv")
    assert api._pick(None, "forward", 256, np.float32, False, n, big) == BlockConfig(8, 16, 32)


@pytest.mark.skipif(not ON_GPU, reason=NEEDS_GPU)
@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_tune_tensor_core_configs_on_the_gpu(pass_):
    default = default_tc_config(64, False, pass_)
    # (64, 64, 2, 16) is the backward's default at head_dim 64: there the other is (64, 32, 2, 16)
    other = TensorCoreConfig(64, 64, 2, 16) if pass_ == "forward" else TensorCoreConfig(64, 32, 2, 16)
    assert other != default
    # The budget counts compiling too, 20-50 s per tensor-core config (more with other tests compiling
    # beside this one): a 60 s budget would leave the second config "not run" after the first.
    result = tune_mod.tune(1, 2, 256, 256, 64, dtype="float16", pass_=pass_, kind="tensor_core",
                           configs=[default, other], budget_s=600, cache=False, show=False, progress=False)
    assert result.kind == "tensor_core" and result.default == default and result.key.endswith("|tensor_core")
    for cfg in (default, other):
        t = result.trial(cfg)
        assert t.status == "ok", (cfg, t.reason)
        assert t.max_rel_err < tune_mod.RTOL["float16"] and t.median_ms > 0 and t.tflops > 0
        assert t.registers is not None and t.registers > 0  # the dispatchers the API compiled
    assert result.best in (default, other) and not result.stored
    assert result.table().row_count == 2 and result.to_dict()["kind"] == "tensor_core"


def test_tuning_without_the_band_skips_the_reorders():
    """tune()'s grid: without the causal band the longest_first twins are skipped with the reason (nothing to
    balance); under it they stay; BlockConfigs pass through either way."""
    ok, skipped = tune_mod.enumerate_configs(128, "forward", kind="tensor_core", with_skipped=True)
    kept, more = tune_mod._without_reorders(ok, skipped, causal=False)
    assert kept == [c for c in ok if not c.longest_first] and len(kept) * 2 == len(ok)
    assert more[:len(skipped)] == skipped and [c for c, _ in more[len(skipped):]] == [c for c in ok if c.longest_first]
    assert all(why == [tune_mod.NO_BAND_NO_REORDER] for _, why in more[len(skipped):])
    assert tune_mod._without_reorders(ok, skipped, causal=True) == (ok, skipped)
    blocks = tune_mod.enumerate_configs(64, "forward")
    assert tune_mod._without_reorders(blocks, [], causal=False) == (blocks, [])


def test_float32_backward_grid_has_the_atomic_dq_candidates():
    """float32 (3xTF32) tunings try atomic dQ too since session 21: every atomic candidate that fits is its
    two-kernel twin with atomic_dq (its dS^T tile a little more shared memory); split_d stays 16-bit only."""
    for d in (64, 128):
        ok, skipped = tune_mod.enumerate_configs(d, "backward", kind="tensor_core", elem="tf32", with_skipped=True)
        atomic = [c for c in ok if c.atomic_dq]
        assert atomic and not any(c.split_d for c in ok), d
        plain = set(ok) - set(atomic)
        assert {dataclasses.replace(c, atomic_dq=False) for c in atomic} <= plain
        assert all(any("split_d" in w for w in why) for c, why in skipped if c.split_d)
        assert all(c.backward_shared_bytes(d, "dkdv", "tf32") > dataclasses.replace(c, atomic_dq=False)
                   .backward_shared_bytes(d, "dkdv", "tf32") for c in atomic)
