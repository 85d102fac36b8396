"""The experiment runners: several scripts in one process, and tuning several problems at once."""

from __future__ import annotations

import json

from helpers import load_experiment

SCRIPT = '''
import sys
def main(argv=None):
    print("{name} says", *(argv or []))
    open({log!r}, "a").write("{name}\\n")
    return {rc}
'''


def _scripts(tmp_path, **rcs):
    log = tmp_path / "order.log"
    for name, rc in rcs.items():
        (tmp_path / f"{name}.py").write_text(SCRIPT.format(name=name, log=str(log), rc=rc))
    return log


def test_in_one_process_runs_scripts_in_order_and_redirects(tmp_path, monkeypatch):
    runner = load_experiment("in_one_process")
    monkeypatch.setattr(runner, "HERE", tmp_path)
    log = _scripts(tmp_path, first=0, second=0)
    out = tmp_path / "printed.txt"
    assert runner.main([f"first --x 1 > {out}", "second"]) == 0
    assert log.read_text().split() == ["first", "second"]
    assert out.read_text().strip() == "first says --x 1"  # its argv, its output in the file


def test_in_one_process_stops_at_the_first_failure(tmp_path, monkeypatch):
    runner = load_experiment("in_one_process")
    monkeypatch.setattr(runner, "HERE", tmp_path)
    log = _scripts(tmp_path, failing=3, after=0)
    assert runner.main(["failing", "after"]) == 3
    assert log.read_text().split() == ["failing"]


def test_tune_parallel_tunes_each_problem_into_its_own_folder(tmp_path):
    tp = load_experiment("tune_parallel")
    rc = tp.main(["--out", str(tmp_path), "--smoke --repeat 1", "--smoke --pass backward --repeat 1"])
    assert rc == 0
    for i, pass_ in enumerate(("forward", "backward")):
        result = json.loads((tmp_path / f"{i:02d}" / f"tune_{pass_}.json").read_text())
        assert result["pass"] == pass_ and result["best"] is not None
        cache = json.loads((tmp_path / f"{i:02d}" / "tuning.json").read_text())
        assert len(cache["entries"]) == 1
