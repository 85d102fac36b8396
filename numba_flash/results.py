"""Where a measurement came from, and how it is saved: JSON + Markdown under experiments/results/.

Every result file names the GPU, driver, library versions, date and command line that produced it.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import shlex
import sys
from pathlib import Path

import numpy as np


def environment() -> dict:
    """Backend, device, driver and library versions of this process."""
    import numba

    from . import __version__, backend

    compile_only = False  # NUMBA_FLASH_BACKEND=gpu without a driver: kernels compiled, none run
    if backend.BACKEND == backend.GPU:
        from numba import cuda

        compile_only = not cuda.is_available()
    device = "none: compiled only, no CUDA driver" if compile_only else backend.device_name()
    env = {"numba_flash": __version__, "numba": numba.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "backend": backend.BACKEND, "device": device,
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(shlex.quote(a) for a in sys.argv)}
    try:
        from importlib.metadata import version

        env["numba-cuda"] = version("numba-cuda")
    except Exception:  # pragma: no cover
        pass
    if backend.BACKEND == backend.GPU and not compile_only:
        import cupy

        env["cupy"] = cupy.__version__
        env["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        env["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        try:
            import torch

            env["torch"] = torch.__version__
        except ImportError:
            pass
    return env


def markdown_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = ".3g") -> str:
    """A GitHub Markdown table of ``rows`` (dicts), columns in ``columns`` order (default: first row's)."""
    columns = columns or list(rows[0]) if rows else []

    def fmt(x):
        if isinstance(x, (float, np.floating)):
            return format(float(x), floatfmt)
        return "" if x is None else str(x)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save(out_dir, name: str, data: dict, markdown_body: str, title: str | None = None) -> tuple[Path, Path]:
    """Write ``name.json`` (data plus environment) and ``name.md`` (header naming GPU, versions,
    date, command, then ``markdown_body``) into ``out_dir``; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    record = {"environment": env, **data}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(record, indent=1, default=_jsonable))
    versions = ", ".join(f"{k} {env[k]}" for k in ("numba_flash", "numba", "numba-cuda", "cupy", "torch", "numpy", "python")
                         if k in env)
    header = [f"# {title or name}", "",
              f"Device: {env['device']}" + (f" (CUDA driver {env['cuda_driver']})" if "cuda_driver" in env else ""),
              f"Versions: {versions}", f"Date: {env['date']}", f"Command: `{env['command']}`", ""]
    md_path = out / f"{name}.md"
    md_path.write_text("\n".join(header) + markdown_body.rstrip() + "\n")
    return json_path, md_path


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or None when matplotlib is missing
    (the experiments then skip their PNG and say so)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
