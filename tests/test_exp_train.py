"""experiments/train_tiny_gpt.py: its --smoke run trains the tiny GPT (on the CPU without a GPU:
the SDPA runs only, numba_flash recorded as skipped), the loss goes down, and the JSON, Markdown
and PNG are written; the agreement metric compares smoothed curves as documented; --cuda-graphs
parses, refuses dropout, says it needs CUDA, and (on a GPU) trains from graph replays.

The command line and the pure helpers need no PyTorch; the training tests skip without it."""

import argparse
import json
import math

import pytest

from helpers import load_experiment

try:
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is an optional extra; the training experiment needs it")
CUDA = torch is not None and torch.cuda.is_available()


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


@needs_torch
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
    assert data["mode"] == exp.EAGER and "Mode: **eager**" in md


@needs_torch
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


@needs_torch
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


# --------------------------------------------------------------------------------------------
# --cuda-graphs
# --------------------------------------------------------------------------------------------

def test_cuda_graphs_option(exp):
    eager = exp.parse_args([])
    assert eager.cuda_graphs is False and exp.mode_of(eager) == exp.EAGER
    graphs = exp.parse_args(["--cuda-graphs"])
    assert graphs.cuda_graphs is True and exp.mode_of(graphs) == exp.GRAPHS
    assert exp.mode_of(argparse.Namespace(layers=6)) == exp.EAGER  # an older run's args, without the option
    assert exp.parse_args(["--cuda-graphs", "--attn-dropout", "0"]).attn_dropout == 0
    assert exp.parse_args(["--attn-dropout", "0.1"]).attn_dropout == 0.1  # eager dropout stays allowed
    assert (exp.mode_text(exp.EAGER), exp.mode_text(exp.GRAPHS)) == ("eager", "CUDA graphs")


@pytest.mark.parametrize("extra", [[], ["--smoke"], ["--runs", "sdpa"]])
def test_cuda_graphs_refuse_dropout(exp, capsys, extra):
    """A graph replays numba_flash's host-drawn dropout seed forever: refused, for every run."""
    with pytest.raises(SystemExit) as info:
        exp.parse_args(["--cuda-graphs", "--attn-dropout", "0.1", *extra])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--cuda-graphs" in err and "--attn-dropout 0.1" in err and "dropout mask" in err


def test_cuda_graphs_help_says_why(exp, capsys):
    with pytest.raises(SystemExit):
        exp.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--cuda-graphs" in text and "dropout seed on the host" in text and "CUDA only" in text


def test_mode_line(exp):
    eager = exp.mode_line(exp.parse_args([]), {})
    assert eager.startswith("Mode: **eager**")
    runs = {exp.SDPA: {"graph_capture_s": 1.25}, exp.NF: {"status": "skipped"}, exp.NOISE: {"graph_capture_s": 0.5}}
    graphs = exp.mode_line(exp.parse_args(["--cuda-graphs"]), runs)
    assert graphs.startswith("Mode: **CUDA graphs**") and "make_graphed_callables" in graphs
    assert "sdpa 1.2 s, sdpa_noise 0.5 s" in graphs and "numba_flash" not in graphs.split("Capture")[1]


@needs_torch
@pytest.mark.skipif(CUDA, reason="checks the message on a machine without CUDA")
def test_cuda_graphs_without_cuda_says_so(exp, capsys, tmp_path):
    assert exp.main(["--smoke", "--cuda-graphs", "--out", str(tmp_path)]) == 0
    assert exp.NO_GPU_GRAPHS in " ".join(capsys.readouterr().out.split())
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need PyTorch and a CUDA GPU")
def test_smoke_cuda_graphs(exp, smoke, tmp_path):
    """Graphed training: every run trains from replays (losses fall), the mode is recorded, and the
    graphed SDPA run starts where the eager one does (same weights, same batches: the replays read
    each step's batch, not the one captured)."""
    assert exp.main(["--smoke", "--cuda-graphs", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "train_tiny_gpt.json").read_text())
    md = (tmp_path / "train_tiny_gpt.md").read_text()
    assert data["mode"] == exp.GRAPHS and "Mode: **CUDA graphs**" in md and "(CUDA graphs)" in md.splitlines()[0]
    ran = [exp.SDPA, exp.NOISE] + ([exp.NF] if _nf_possible(exp) else [])
    for name in ran:
        run = data["runs"][name]
        assert run["status"] == "ok" and run["mode"] == exp.GRAPHS and run["graph_capture_s"] > 0, (name, run)
        losses = run["train_loss"]
        assert all(math.isfinite(x) for x in losses)
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, name
    eager = smoke[1]["runs"][exp.SDPA]["train_loss"]
    graphed = data["runs"][exp.SDPA]["train_loss"]
    assert graphed[0] == pytest.approx(eager[0], abs=1e-3)
    assert graphed[:5] == pytest.approx(eager[:5], abs=2e-2)
