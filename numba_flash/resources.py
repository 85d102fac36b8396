"""Compile the kernels for a GPU architecture without a GPU, and report what each one uses.

NVVM turns a kernel into PTX and nvJitLink assembles that for ``sm_90`` (the CUDA 13 toolkit
wheels from ``numba-cuda[cu13]`` bring both), so registers, stack frame, spills and shared memory
can be checked on a machine that has no GPU. This needs ``numba.cuda`` in GPU mode; from a
simulator process, run it as a subprocess::

    NUMBA_FLASH_BACKEND=gpu python -m numba_flash.resources --head-dims 64 128
"""

from __future__ import annotations

import argparse
import json
import re

import numpy as np

_REPORT = re.compile(
    r"used (?P<registers>\d+) registers, used (?P<barriers>\d+) barriers, (?P<stack>\d+) stack, "
    r"(?P<smem>\d+) bytes smem, .*?(?P<lmem>\d+) bytes lmem"
)
_SPILLS = re.compile(r"(?P<spill_stores>\d+) bytes spill stores, (?P<spill_loads>\d+) bytes spill loads")
KERNELS = ("forward", "dq", "dkdv", "delta")


def _signature(kernel: str, dtype):
    from numba.cuda import types

    elem = types.float16 if np.dtype(dtype) == np.float16 else types.float32
    a4 = types.Array(elem, 4, "A")
    f3 = types.Array(types.float32, 3, "A")
    f32, i64, u64 = types.float32, types.int64, types.uint64
    cu = types.Array(types.int32, 1, "C")
    # cu_q, cu_k, scale, group, left, right, seed_lo, seed_hi, threshold, drop_scale
    options = (cu, cu, f32, i64, i64, i64, u64, u64, u64, f32)
    return {
        "forward": (a4, a4, a4, a4, f3) + options,
        "dq": (a4, a4, a4, a4, f3, f3, a4) + options,
        "dkdv": (a4, a4, a4, a4, f3, f3, a4, a4) + options,
        "delta": (a4, a4, f3),
    }[kernel]


def _factory(kernel: str, config, head_dim: int, varlen: bool, dropout: bool):
    from .backward import delta_kernel, dkdv_kernel, dq_kernel
    from .forward import forward_kernel

    if kernel == "delta":
        return delta_kernel(head_dim)
    factory = {"forward": forward_kernel, "dq": dq_kernel, "dkdv": dkdv_kernel}[kernel]
    return factory(config, head_dim, varlen, dropout)


class _Device:
    def __init__(self, cc):
        self.compute_capability = cc


def compile_for(py_func, signature, cc=(9, 0), name="kernel", launch_bounds=None) -> tuple[str, dict]:
    """PTX of ``py_func`` for ``signature`` and ``cc`` (NVVM), assembled by nvJitLink; returns
    ``(ptx, resources)`` with registers, barriers, stack, smem, lmem and spill bytes."""
    from cuda.bindings import nvjitlink
    from numba import cuda

    from numba.cuda import dispatcher as numba_dispatcher

    # Device functions called by a kernel (numba_flash.tiles) are compiled for the *current*
    # device's compute capability, which needs a driver; stand in a device of capability ``cc``.
    real_device = numba_dispatcher.get_current_device
    numba_dispatcher.get_current_device = lambda: _Device(cc)
    try:
        ptx, _ = cuda.compile_ptx(py_func, signature, cc=cc, launch_bounds=launch_bounds)
    finally:
        numba_dispatcher.get_current_device = real_device
    handle = nvjitlink.create(2, [f"-arch=sm_{cc[0]}{cc[1]}", "-verbose"])
    try:
        data = ptx.encode()
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), name)
        nvjitlink.complete(handle)
        size = nvjitlink.get_info_log_size(handle)
        log = bytearray(size)
        nvjitlink.get_info_log(handle, log)
    finally:
        nvjitlink.destroy(handle)
    text = log.decode(errors="replace")
    report, spills = _REPORT.search(text), _SPILLS.search(text)
    if report is None or spills is None:
        raise RuntimeError(f"could not read the resource report of {name}:\n{text}")
    return ptx, {k: int(v) for k, v in {**report.groupdict(), **spills.groupdict()}.items()}


def compile_report(kernel: str, config, head_dim: int, dtype, cc=(9, 0), varlen=False, dropout=False) -> dict:
    """PTX-compile one kernel for ``cc`` and assemble it with nvJitLink; return its resource usage."""
    kernel_fn = _factory(kernel, config, head_dim, varlen, dropout)
    ptx, out = compile_for(kernel_fn.py_func, _signature(kernel, dtype), cc, kernel)
    out.update(kernel=kernel, head_dim=head_dim, varlen=varlen, dropout=dropout, dtype=np.dtype(dtype).name, arch=f"sm_{cc[0]}{cc[1]}",
               config=None if kernel == "delta" else [config.block_m, config.block_n, config.num_threads],
               ptx_lines=ptx.count("\n"))
    return out


def tc_signature(kernel: str = "forward", elem: str = "f16"):
    """Argument types of a tensor-core kernel (``forward``, ``dq`` or ``dkdv``) as
    :mod:`numba_flash.launch` compiles it (layout 'A'; the same for the varlen variants, whose
    offsets are always passed)."""
    from numba.cuda import types

    # bfloat16 as bit patterns; "tf32": float32 arrays (multiplied as 3xTF32)
    a4 = types.Array({"f16": types.float16, "bf16": types.uint16, "tf32": types.float32}[elem], 4, "A")
    f3 = types.Array(types.float32, 3, "A")
    f4 = types.Array(types.float32, 4, "A")  # dkdv's dq_acc (atomic_dq)
    cu = types.Array(types.int32, 1, "A")
    f32, i64, u64 = types.float32, types.int64, types.uint64
    options = (cu, cu, f32, i64, i64, i64, u64, u64, u64, f32)
    return {"forward": (a4, a4, a4, a4, f3), "dq": (a4, a4, a4, a4, f3, f3, a4),
            "dkdv": (a4, a4, a4, a4, f3, f3, a4, a4, f4)}[kernel] + options


def tc_ptx(config, head_dim: int, varlen=False, dropout=False, elem="f16", cc=(9, 0),
           kernel: str = "forward") -> tuple[str, dict]:
    """:func:`compile_for` of the tensor-core kernel ``kernel`` ("forward", "dq" or "dkdv") as the API
    launches it: ``(ptx, resources)``."""
    if kernel == "forward":
        from .tc_forward import tc_forward_kernel as factory
    else:
        from .tc_backward import tc_dkdv_kernel, tc_dq_kernel

        factory = {"dq": tc_dq_kernel, "dkdv": tc_dkdv_kernel}[kernel]
    fn = factory(config, head_dim, varlen, dropout, elem)
    return compile_for(fn.py_func, tc_signature(kernel, elem), cc, f"tc_{kernel}", fn.targetoptions.get("launch_bounds"))


def tc_compile_report(config, head_dim: int, varlen=False, dropout=False, elem="f16", cc=(9, 0),
                      kernel: str = "forward") -> dict:
    """Compile a tensor-core kernel for ``cc``: resources plus counts of the instructions that make
    it fast (mma.sync, ldmatrix, cp.async, ex2) and of local-memory accesses (should be 0)."""
    ptx, out = tc_ptx(config, head_dim, varlen, dropout, elem, cc, kernel)
    smem = (config.shared_memory_bytes(head_dim, elem) if kernel == "forward"
            else config.backward_shared_bytes(head_dim, kernel, elem))
    out.update(kernel=f"tc_{kernel}", head_dim=head_dim, varlen=varlen, dropout=dropout, elem=elem,
               arch=f"sm_{cc[0]}{cc[1]}", config=[config.block_m, config.block_n, config.stages, config.rows_per_warp],
               mma=len(re.findall(r"\bmma\.sync\.aligned\.m16n8k(?:16|8)\b", ptx)),
               mma_kind=sorted(set(re.findall(r"\bmma\.sync\.aligned\.m16n8k(?:16|8)\S*", ptx))),
               ldmatrix=len(re.findall(r"\bldmatrix\.sync", ptx)), cp_async=len(re.findall(r"\bcp\.async\.c[ag]", ptx)),
               ex2=len(re.findall(r"\bex2\.approx", ptx)), local_accesses=len(re.findall(r"\b(?:ld|st)\.local", ptx)),
               red=len(re.findall(r"\bred\.global\.add", ptx)), atomic_dq=getattr(config, "atomic_dq", False),
               reread_q=getattr(config, "reread_q", False), min_blocks=getattr(config, "min_blocks", 1),
               split_d=getattr(config, "split_d", False),
               expected_dynamic_smem=smem)
    return out


def main(argv=None) -> int:
    from . import backend
    from .config import default_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[16, 40, 64, 128, 256])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "float32"])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--cc", default="9.0")
    parser.add_argument("--variants", nargs="+", default=["plain", "varlen+dropout"],
                        choices=["plain", "varlen", "dropout", "varlen+dropout"],
                        help="compile-time variants (causal, windows and GQA are runtime arguments)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    if backend.BACKEND != backend.GPU:
        parser.error("needs numba.cuda in GPU mode: run with NUMBA_FLASH_BACKEND=gpu")
    cc = tuple(int(x) for x in args.cc.split("."))
    for dtype in args.dtypes:
        for d in args.head_dims:
            for kernel in args.kernels:
                pass_ = "forward" if kernel == "forward" else "backward"
                cfg = default_config(d, np.dtype(dtype), pass_, simulator=False)
                for variant in (["plain"] if kernel == "delta" else args.variants):
                    rep = compile_report(kernel, cfg, d, dtype, cc, "varlen" in variant, "dropout" in variant)
                    if kernel != "delta":
                        rep["expected_smem"] = cfg.shared_memory_bytes(d, kernel)
                    print(json.dumps(rep) if args.json else
                          f"{kernel:8s} {variant:14s} D={d:3d} {dtype:8s} cfg={rep['config']} "
                          f"regs={rep['registers']:3d} stack={rep['stack']:4d} "
                          f"spills={rep['spill_stores']}/{rep['spill_loads']} smem={rep['smem']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
