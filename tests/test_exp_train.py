"""experiments/train_tiny_gpt.py: its --smoke run trains the tiny GPT (on the CPU without a GPU:
the SDPA runs only, numba_flash recorded as skipped), the loss goes down, and the JSON, Markdown
and PNG are written; the agreement metric compares smoothed curves as documented."""

import json
import math

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is an optional extra; the training experiment needs it")

from helpers import load_experiment  # noqa: E402


@pytest.fixture(scope="module")
def exp():
    return load_experiment("train_tiny_gpt")


@pytest.fixture(scope="module")
def smoke(exp, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_tiny_gpt")
    assert exp.main(["--smoke", "--out", str(out)]) == 0
    return out, json.loads((out / "train_tiny_gpt.json").read_text())


def _nf_possible(exp):
    return exp.numba_flash_unavailable(torch.device("cuda" if torch.cuda.is_available() else "cpu")) is None


def test_smoke_run_writes_results(exp, smoke):
    out, data = smoke
    assert (out / "train_tiny_gpt.md").exists()
    md = (out / "train_tiny_gpt.md").read_text()
    assert "| sdpa |" in md and "| sdpa_noise |" in md and "| numba_flash |" in md
    if exp.results.pyplot() is not None:
        assert (out / "train_tiny_gpt.png").stat().st_size > 0
    assert data["environment"]["device"]
    assert data["corpus"]["bytes"] > 100_000 and len(data["corpus"]["sha256"]) == 64
    assert set(data["runs"]) == set(exp.RUNS)
    assert data["verdict"] == data["agreement"]["verdict"]


def test_smoke_losses_decrease(exp, smoke):
    _, data = smoke
    ran = [exp.SDPA, exp.NOISE] + ([exp.NF] if _nf_possible(exp) else [])
    for name in ran:
        run = data["runs"][name]
        assert run["status"] == "ok", (name, run["status"])
        losses = run["train_loss"]
        assert len(losses) == run["steps_done"] == data["args"]["steps"]
        assert all(math.isfinite(x) for x in losses)
        first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
        assert last < first - 0.3, (name, first, last)
        val = run["val_loss"]
        assert val[0][0] == 0 and val[-1][0] == run["steps_done"]
        assert val[-1][1] < val[0][1]
        assert run["tokens_per_s"] > 0
    # sdpa and the noise run differ (other seeds); the noise metric is measured.
    assert data["runs"][exp.SDPA]["train_loss"] != data["runs"][exp.NOISE]["train_loss"]
    assert data["agreement"]["noise_train"]["max"] > 0


def test_numba_flash_run_or_its_skip(exp, smoke):
    _, data = smoke
    nf = data["runs"][exp.NF]
    if _nf_possible(exp):
        assert nf["status"] == "ok"
        assert data["agreement"]["within_noise"] is not None
        assert data["verdict"].startswith("numba_flash vs SDPA differs by")
    else:
        assert nf["status"] == "skipped" and nf["reason"].startswith(exp.NO_GPU_NF)
        assert data["verdict"].startswith("numba_flash not compared")


def test_agreement_metric(exp):
    args = type("A", (), {"smooth": 2})()
    base = [3.0, 2.0, 1.0, 1.0]
    runs = {exp.SDPA: {"train_loss": base, "val_loss": [[0, 3.0], [4, 1.0]]},
            exp.NF: {"train_loss": [x + 0.01 for x in base], "val_loss": [[0, 3.0], [4, 1.02]]},
            exp.NOISE: {"train_loss": [x + 0.1 for x in base], "val_loss": [[0, 3.1], [4, 1.1]]}}
    ag = exp.agreement(runs, args)
    assert ag["nf_train"]["max"] == pytest.approx(0.01)
    assert ag["noise_train"]["max"] == pytest.approx(0.1)
    assert ag["within_noise"] is True and ag["val_within_noise"] is True
    assert "within the noise of two SDPA seeds" in ag["verdict"]
    runs[exp.NF]["train_loss"] = [x + 0.5 for x in base]
    assert exp.agreement(runs, args)["within_noise"] is False
    runs[exp.NF]["train_loss"] = [3.0, float("nan"), 1.0, 1.0]
    assert exp.agreement(runs, args)["within_noise"] is False


def test_smooth_and_schedule(exp):
    assert list(exp.smooth([1, 2, 3, 4], 2)) == [1.5, 2.5, 3.5]
    args = type("A", (), {"warmup": 10, "steps": 110, "min_lr_frac": 0.1})()
    assert exp.lr_at(0, args) == pytest.approx(0.1)
    assert exp.lr_at(10, args) == pytest.approx(1.0)
    assert exp.lr_at(110, args) == pytest.approx(0.1)
