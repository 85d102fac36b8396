"""The block-size tuner (numba_flash.tune), its cache as config=None sees it, and the sweep experiment."""

import importlib
import importlib.util
import json
import warnings

import numpy as np
import pytest

import numba_flash as nf
from numba_flash import BlockConfig, api, reference
from numba_flash.config import MAX_THREADS_PER_BLOCK, default_config

from helpers import load_experiment, to_device, to_host

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
    q, k, v, _ = (rng.standard_normal((1, 1, n, D)).astype(np.float32) for _ in range(4))
    out = to_host(nf.flash_attention(*(to_device(a) for a in (q, k, v))))
    assert used == [tuned]
    want, _ = reference.attention_forward(q, k, v)
    assert np.max(np.abs(out - want)) < 1e-5
    tune_mod.clear_cache()
    nf.flash_attention(*(to_device(a) for a in (q, k, v)))
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
