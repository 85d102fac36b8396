"""The command line: `numba-flash demo` checks itself against the oracle and exits 0."""

import subprocess
import sys

from numba_flash import cli
from helpers import ON_GPU


def test_demo_runs_and_checks_itself(capsys):
    args = ["demo", "--seqlen", "12", "--heads", "1", "--head-dim", "16"]
    if ON_GPU:
        args = ["demo", "--seqlen", "256", "--repeat", "3"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "error vs float64 oracle" in printed and "OK" in printed and "N x N" in printed


def test_demo_causal_fp16():
    assert cli.main(["demo", "--seqlen", "9", "--heads", "1", "--head-dim", "8", "--dtype", "float16", "--causal"]) == 0


def test_console_script_info():
    proc = subprocess.run([sys.executable, "-m", "numba_flash.cli", "info"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "backend:" in proc.stdout


def test_bench_and_tune_subcommands_are_wired(capsys):
    import pytest

    for name in ("bench", "tune"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0
        assert f"numba-flash {name}" in capsys.readouterr().out
