"""Turn the logs of experiments/gpu_suite.sh into a JSON record and a short Markdown table.

    python experiments/summarize_gpu_suite.py experiments/results/core-gpu-2026-11-24
"""

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(folder: str) -> None:
    d = Path(folder)
    info = dict(line.split(": ", 1) for line in (d / "info.txt").read_text().splitlines() if ": " in line)
    smi = [l for l in (d / "info.txt").read_text().splitlines() if l.startswith("NVIDIA")]
    suite = ET.parse(d / "junit.xml").getroot().find("testsuite")
    cases = suite.findall("testcase")
    failed = [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None]
    skipped = {c.get("name"): c.find("skipped").get("message") for c in cases if c.find("skipped") is not None}
    demos = []
    for block in (d / "demo.txt").read_text().split("== numba-flash demo")[1:]:
        head = re.search(r"on (.+?): B=(\d+) H=(\d+) N=(\d+) D=(\d+) (\w+)\s+causal=(\w+)", block, re.S)
        rows = {m[0]: m[1] for m in re.findall(r"│\s+([a-zA-Z_ +()]+?)\s+│\s+([\d.]+)\s+│\s+([\d.]+)\s+│", block)}
        worst = re.search(r"worst relative error ([\d.e+-]+)", block)
        times = {name.strip(): float(ms) for name, ms in rows.items()}
        demos.append({"args": block.splitlines()[0].strip(), "B": int(head[2]), "H": int(head[3]), "N": int(head[4]),
                      "D": int(head[5]), "dtype": head[6], "causal": head[7] == "True", "ms": times,
                      "worst_relative_error": float(worst[1]), "ok": "OK:" in block})
    record = {"date": suite.get("timestamp"), "command": "bash .gpu/env.sh bash experiments/gpu_suite.sh",
              "gpu": info.get("device"), "nvidia_smi": smi, "versions": info,
              "tests": {"total": int(suite.get("tests")), "failed": failed, "skipped": skipped,
                        "seconds": float(suite.get("time")), "hypothesis_profile": "gpu (100 examples per (dtype, causal))"},
              "demo": demos}
    (d / "summary.json").write_text(json.dumps(record, indent=1))
    md = [f"# GPU check of the core kernels, {record['date'][:10]}", "",
          f"GPU: {record['gpu']} ({'; '.join(smi)}); numba {info.get('numba')}, numba-cuda {info.get('numba-cuda')}, "
          f"CuPy {info.get('cupy')}, NumPy {info.get('numpy')}, Python {info.get('python')}.",
          f"Command: `{record['command']}` (logs beside this file).", "",
          f"Tests: {record['tests']['total']} run, {len(failed)} failed, {len(skipped)} skipped "
          f"({'; '.join(f'{k}: {v}' for k, v in skipped.items())}), {record['tests']['seconds']:.0f} s, Hypothesis GPU profile.",
          "", "| demo | numba_flash fwd ms | bwd ms | SDPA fwd ms | SDPA fwd+bwd ms | fwd ratio | fwd+bwd ratio | worst rel. error |",
          "|---|---|---|---|---|---|---|---|"]
    for x in demos:
        t = x["ms"]
        ours_f, ours_b = t["numba_flash forward"], t["numba_flash backward"]
        s_f, s_fb = t.get("torch SDPA forward (default backend)"), t.get("torch SDPA forward+backward")
        ratio = lambda a, b: f"{a / b:.4f}x" if a and b else "n/a"  # noqa: E731
        md.append(f"| B={x['B']} H={x['H']} N={x['N']} D={x['D']} {x['dtype']} causal={x['causal']} | {ours_f:.2f} | "
                  f"{ours_b:.2f} | {s_f} | {s_fb} | {ratio(s_f, ours_f)} | {ratio(s_fb, ours_f + ours_b)} | "
                  f"{x['worst_relative_error']:.1e} |")
    md += ["", "Ratio = SDPA time / numba_flash time (1.0 would be level; below 1 numba_flash is slower)."]
    (d / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main(sys.argv[1])
