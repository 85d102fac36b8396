"""The seed's GPU memory-hierarchy table, checked on this device: the properties the driver reports,
HBM bandwidth from a large copy, shared-memory bandwidth from a Numba kernel (conflict-free and
with 32-way bank conflicts, to show why our kernels pad their tile rows by one word), and
pointer-chase latencies, printed beside the seed's numbers.

The seed (flashattention-seed.md, table 1.1; the issue adds shared memory ~192-228 KB/SM and HBM
~2-3 TB/s):

    Registers      in core   ~256 KB/SM       fastest (10 TB/s+)  0 cycles
    SRAM (shared)  on chip   ~192 KB/SM       very fast (TB/s)    ~20 cycles
    HBM (global)   off chip  80 GB (total)    slow (2 TB/s)       ~400 cycles

Register bandwidth cannot be measured directly (every instruction reads registers; there is no
register "copy" to time); an estimate from the FP32 FMA rate is printed and labelled as such.

    python experiments/memory_hierarchy.py --out experiments/results/memory_hierarchy   # GPU, ~30 s
    python experiments/memory_hierarchy.py --smoke --out /tmp/mh                        # simulator
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from numba_flash import backend, results, timing  # noqa: E402  (backend first: GPU or simulator)
from numba import cuda  # noqa: E402
from numba.cuda import float32, int32  # noqa: E402

NAME = "memory_hierarchy"
ON_GPU = backend.BACKEND == backend.GPU

# Device attributes (CU_DEVICE_ATTRIBUTE_<name>) read through Numba; units as the driver gives them.
ATTRIBUTES = (
    "MULTIPROCESSOR_COUNT", "CLOCK_RATE", "MEMORY_CLOCK_RATE", "GLOBAL_MEMORY_BUS_WIDTH", "L2_CACHE_SIZE",
    "MAX_PERSISTING_L2_CACHE_SIZE", "MAX_REGISTERS_PER_MULTIPROCESSOR", "MAX_REGISTERS_PER_BLOCK",
    "MAX_SHARED_MEMORY_PER_MULTIPROCESSOR", "MAX_SHARED_MEMORY_PER_BLOCK", "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN",
    "RESERVED_SHARED_MEMORY_PER_BLOCK", "MAX_THREADS_PER_MULTIPROCESSOR", "MAX_BLOCKS_PER_MULTIPROCESSOR",
    "WARP_SIZE",
)
# FP32 FMA lanes per SM by compute capability (CUDA C Programming Guide, arithmetic throughput table);
# used only for the register-bandwidth estimate.
FP32_LANES_PER_SM = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128, (9, 0): 128,
                     (10, 0): 128, (10, 3): 128, (12, 0): 128}
SEED = {
    "registers": {"size": "~256 KB/SM", "bandwidth": "fastest (10 TB/s+)", "latency": "0 cycles"},
    "shared": {"size": "~192 KB/SM (issue: 192-228 KB/SM)", "bandwidth": "very fast (TB/s)", "latency": "~20 cycles"},
    "hbm": {"size": "80 GB (total)", "bandwidth": "slow (2 TB/s; issue: ~2-3 TB/s)", "latency": "~400 cycles"},
    "sram_total": {"size": "20 MB (seed text: SRAM capacity)"},
}

# --------------------------------------------------------------------------------------------
# Device properties
# --------------------------------------------------------------------------------------------


def read_properties() -> dict:
    """What the driver reports about this device, plus derived theoretical numbers. On the
    simulator only what the fake device has (the rest is recorded as not available)."""
    dev = cuda.get_current_device()
    props = {"name": backend.device_name(), "compute_capability": list(dev.compute_capability)}
    missing = []
    for attr in ATTRIBUTES:
        try:
            value = getattr(dev, attr)
            props[attr.lower()] = int(value)
        except Exception:  # noqa: BLE001 - the simulator's device has almost none of these
            missing.append(attr.lower())
    try:
        free, total = cuda.current_context().get_memory_info()
        if np.isfinite(float(total)):  # the simulator answers infinity
            props["total_memory_bytes"], props["free_memory_bytes"] = int(total), int(free)
        else:
            missing.append("total_memory_bytes")
    except Exception:  # noqa: BLE001
        missing.append("total_memory_bytes")
    if ON_GPU and ("memory_clock_rate" not in props or "global_memory_bus_width" not in props):
        try:  # CUDA 13 dropped some cudaDeviceProp fields; ask CuPy as a second source
            import cupy

            p = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            for key, name in (("memoryClockRate", "memory_clock_rate"), ("memoryBusWidth", "global_memory_bus_width")):
                if name not in props and p.get(key):
                    props[name] = int(p[key])
                    if name in missing:
                        missing.remove(name)
        except Exception:  # noqa: BLE001
            pass
    props["not_available"] = missing
    d = derived(props)
    return {**props, "derived": d}


def derived(props: dict) -> dict:
    """Theoretical numbers from the properties (None when an input is missing)."""
    sms, clock_khz = props.get("multiprocessor_count"), props.get("clock_rate")
    out = {}
    if props.get("memory_clock_rate") and props.get("global_memory_bus_width"):
        # DDR: two transfers per memory clock; bus width in bits.
        out["hbm_theoretical_bytes_per_s"] = 2 * props["memory_clock_rate"] * 1e3 * props["global_memory_bus_width"] / 8
    if props.get("max_registers_per_multiprocessor"):
        out["register_file_bytes_per_sm"] = props["max_registers_per_multiprocessor"] * 4
    if sms and clock_khz:
        # 32 banks x 4 bytes per clock per SM.
        out["shared_theoretical_bytes_per_s"] = sms * 32 * 4 * clock_khz * 1e3
        lanes = FP32_LANES_PER_SM.get(tuple(props["compute_capability"]))
        if lanes:
            # One FFMA per lane per clock reads 3 registers and writes 1: a lower bound on what the
            # register file delivers (not a measurement).
            out["fp32_lanes_per_sm"] = lanes
            out["register_estimate_bytes_per_s"] = sms * lanes * 3 * 4 * clock_khz * 1e3
    if sms and props.get("max_shared_memory_per_multiprocessor"):
        out["shared_total_bytes"] = sms * props["max_shared_memory_per_multiprocessor"]
    if sms and out.get("register_file_bytes_per_sm"):
        out["register_total_bytes"] = sms * out["register_file_bytes_per_sm"]
    return out


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------

SMEM_WORDS = 4096  # 16 KiB of float32 per block: several blocks per SM fit, and all offsets below stay inside
LOADS_PER_ITER = 16


@functools.lru_cache(maxsize=None)
def smem_kernel(stride: int, write: bool):
    """Each thread reads (``write``: reads and writes back) 16 shared-memory words per iteration.

    Lane ``l`` of a warp touches word ``l*stride + c`` (c a multiple of 32 that changes every
    iteration), so bank = (l*stride) mod 32: stride 1 or 33 is conflict-free (33 is a row padded by
    one word, as our tiles are), stride 32 puts the whole warp on one bank: 32-way conflict.
    Indices are unsigned so Numba adds no negative-index wrap-around arithmetic to each access.
    """
    STRIDE = stride
    WRITE = write

    @cuda.jit
    def kernel(out, iters):
        sm = cuda.shared.array(SMEM_WORDS, float32)
        tid = cuda.threadIdx.x
        for w in range(tid, SMEM_WORDS, cuda.blockDim.x):
            sm[w] = float32(w)
        cuda.syncthreads()
        lane = np.uint32(tid & 31)
        acc0 = acc1 = acc2 = acc3 = float32(0.0)
        for it in range(iters):
            # <= 31*33 + 768 + 15*128 = 3711 < SMEM_WORDS; each offset is a multiple of 32 words.
            b = lane * np.uint32(STRIDE) + ((np.uint32(it) * np.uint32(256)) & np.uint32(1023))
            if WRITE:
                for o in range(LOADS_PER_ITER):  # literal trip count: unrolled by the compiler
                    x = b + np.uint32(o * 128)
                    sm[x] = sm[x] + float32(1.0)
            else:
                acc0 += sm[b] + sm[b + np.uint32(128)] + sm[b + np.uint32(256)] + sm[b + np.uint32(384)]
                acc1 += sm[b + np.uint32(512)] + sm[b + np.uint32(640)] + sm[b + np.uint32(768)] + sm[b + np.uint32(896)]
                acc2 += sm[b + np.uint32(1024)] + sm[b + np.uint32(1152)] + sm[b + np.uint32(1280)] + sm[b + np.uint32(1408)]
                acc3 += sm[b + np.uint32(1536)] + sm[b + np.uint32(1664)] + sm[b + np.uint32(1792)] + sm[b + np.uint32(1920)]
        cuda.syncthreads()
        # Keep the work observable so the compiler cannot drop it.
        out[cuda.blockIdx.x * cuda.blockDim.x + tid] = acc0 + acc1 + acc2 + acc3 + sm[tid]

    return kernel


@cuda.jit
def copy_kernel(src, dst):
    """Grid-stride copy of 8-byte words: what a plain Numba kernel gets out of HBM."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    n = src.shape[0]
    while i < n:
        dst[i] = src[i]
        i += step


@cuda.jit
def chase_global(nxt, hops, out):
    """One thread follows j = nxt[j]: every load waits for the previous one (latency, not bandwidth).

    It starts where the previous launch stopped (``out[0]``), so repeated launches walk new parts
    of the cycle instead of re-reading the few lines the last one left in L2."""
    j = out[0]
    for _ in range(hops):
        j = nxt[np.uint32(j)]
    out[0] = j


@cuda.jit
def chase_shared(nxt, hops, out):
    """The same chase inside shared memory (the chain is copied there first)."""
    sm = cuda.shared.array(SMEM_WORDS, int32)
    for w in range(SMEM_WORDS):
        sm[w] = nxt[w]
    j = out[0]
    for _ in range(hops):
        j = sm[np.uint32(j)]
    out[0] = j


def _launch(kernel, grid, block, *args):
    """Launch on CuPy's current stream (the one timing.time_ms records its events on)."""
    if ON_GPU:
        import cupy

        kernel[grid, block, cuda.external_stream(cupy.cuda.get_current_stream().ptr)](*args)
    else:
        kernel[grid, block](*args)


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def measure_hbm(props, args) -> list[dict]:
    """Bandwidth of a device-to-device copy: bytes read + bytes written over the median time."""
    xp = backend.array_module()
    nbytes = int(args.copy_mib) * 2**20
    src = xp.ones(nbytes // 8, dtype=np.uint64)
    dst = xp.empty_like(src)
    rows = []
    if ON_GPU:
        import cupy

        rt = cupy.cuda.runtime

        def memcpy():
            rt.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes, rt.memcpyDeviceToDevice,
                           cupy.cuda.get_current_stream().ptr)

        t = timing.time_ms(memcpy, warmup=3, repeat=args.repeat)
        rows.append(dict(what="cudaMemcpy device-to-device", bytes_moved=2 * nbytes, **t))
        blocks, threads = props.get("multiprocessor_count", 132) * 8, 256
    else:
        t = timing.time_ms(lambda: np.copyto(dst, src), repeat=args.repeat)
        rows.append(dict(what="numpy copy (simulator: host memory)", bytes_moved=2 * nbytes, **t))
        blocks, threads = 2, 32
    small = src if ON_GPU else src[: 4 * threads]  # the simulator runs one Python thread per CUDA thread
    small_dst = dst if ON_GPU else dst[: 4 * threads]
    t = timing.time_ms(lambda: _launch(copy_kernel, blocks, threads, small, small_dst), warmup=3, repeat=args.repeat)
    rows.append(dict(what=f"Numba grid-stride copy kernel ({blocks}x{threads} threads)",
                     bytes_moved=2 * small.nbytes, **t))
    ok = bool((small_dst == small).all())
    for r in rows:
        r["bytes_per_s"] = r["bytes_moved"] / (r["median_ms"] * 1e-3)
        r["copy_correct"] = ok
    return rows


def measure_shared(props, args) -> list[dict]:
    """Aggregate shared-memory bandwidth over a full grid, for strides 1, 33 (padded) and 32."""
    sms = props.get("multiprocessor_count", 1)
    if ON_GPU:
        # Many short blocks rather than one wave of long ones: how many fit per SM depends on the
        # kernel's registers, and with ~20 waves a partly filled last wave costs only a few percent.
        threads = 512
        blocks = sms * 64
    else:
        threads, blocks = 32, 1
    xp = backend.array_module()
    out = xp.zeros(blocks * threads, dtype=np.float32)
    rows = []
    for stride, label in ((1, "conflict-free (stride 1)"), (33, "padded rows (stride 33)"),
                          (32, "32-way bank conflict (stride 32)")):
        for write in (False, True):
            # Conflicted accesses are ~32x slower: fewer iterations keep the run short.
            iters = args.smem_iters // (16 if stride == 32 else 1) if ON_GPU else 2
            kernel = smem_kernel(stride, write)
            t = timing.time_ms(lambda: _launch(kernel, blocks, threads, out, iters), warmup=2, repeat=args.repeat)
            accesses = blocks * threads * iters * LOADS_PER_ITER
            moved = accesses * 4 * (2 if write else 1)
            row = dict(what=f"{'read+write' if write else 'read'}, {label}", stride=stride, write=write,
                       blocks=blocks, threads=threads, iters=iters, bytes_moved=moved, **t)
            row["bytes_per_s"] = moved / (t["median_ms"] * 1e-3)
            if props.get("clock_rate"):
                cycles = t["median_ms"] * 1e-3 * props["clock_rate"] * 1e3
                row["bytes_per_clock_per_sm"] = moved / cycles / sms
            rows.append(row)
    return rows


def measure_latency(props, args) -> list[dict]:
    """Pointer-chase latency: one thread, each load's address from the previous load."""
    xp = backend.array_module()
    clock_hz = props.get("clock_rate", 0) * 1e3
    rows = []
    rng = np.random.default_rng(0)

    def cycle(n):
        """A single random cycle through n slots (so the chase visits them all, in no pattern)."""
        perm = rng.permutation(n).astype(np.int32) if not ON_GPU else xp.random.permutation(n).astype(np.int32)
        nxt = xp.empty(n, dtype=np.int32)
        nxt[perm] = xp.roll(perm, -1)
        return nxt

    out = xp.zeros(1, dtype=np.int32)
    cases = [("shared memory", SMEM_WORDS, chase_shared, args.shared_hops)]
    if ON_GPU:
        cases += [(f"global, {args.l2_chase_mib} MiB working set (fits in L2)", args.l2_chase_mib * 2**18,
                   chase_global, args.global_hops),
                  (f"global, {args.hbm_chase_mib} MiB working set (HBM; may include TLB misses)",
                   args.hbm_chase_mib * 2**18, chase_global, args.global_hops)]
    else:
        cases += [("global (simulator)", 256, chase_global, args.global_hops)]
    for what, n, kernel, hops in cases:
        nxt = cycle(n)
        out[:] = 0
        if "L2" in what:
            int(nxt.sum())  # read the whole working set once, so that it sits in L2 when the chase starts
        t = timing.time_ms(lambda: _launch(kernel, 1, 1, nxt, hops, out), warmup=1, repeat=max(3, args.repeat // 4))
        ns = t["median_ms"] * 1e6 / hops
        row = dict(what=what, working_set_bytes=n * 4, hops=hops, ns_per_load=ns, **t)
        if clock_hz:
            row["cycles_per_load"] = ns * 1e-9 * clock_hz
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _tb(x):
    return "n/a" if x is None else f"{x / 1e12:.3g} TB/s"


def _kib(x):
    return "n/a" if x is None else f"{x / 1024:.0f} KiB"


def hierarchy_table(props, hbm, smem, lat) -> list[dict]:
    """The seed's rows with what this device reports and what was measured beside them."""
    d = props["derived"]
    sim = "" if ON_GPU else " [simulator: meaningless]"
    best_hbm = max((r["bytes_per_s"] for r in hbm), default=None)
    free_smem = next((r for r in smem if r["stride"] == 1 and not r["write"]), None)
    conflict = next((r for r in smem if r["stride"] == 32 and not r["write"]), None)
    padded = next((r for r in smem if r["stride"] == 33 and not r["write"]), None)

    def lat_text(rows):
        if not rows:
            return "n/a"
        r = rows[0]
        return (f"{r['cycles_per_load']:.0f} cycles" if "cycles_per_load" in r else f"{r['ns_per_load']:.1f} ns") + sim

    sms = props.get("multiprocessor_count")
    shared_sm = props.get("max_shared_memory_per_multiprocessor")
    optin = props.get("max_shared_memory_per_block_optin")
    hbm_lat = [r for r in lat if "HBM" in r["what"]] or [r for r in lat if r["what"].startswith("global")]
    l2_lat = [r for r in lat if "L2" in r["what"]]
    return [
        {"level": "Registers", "seed_size": SEED["registers"]["size"],
         "device_size": (_kib(d.get("register_file_bytes_per_sm")) + "/SM" if d.get("register_file_bytes_per_sm") else "n/a")
         + (f" ({props['max_registers_per_multiprocessor']} x 32-bit; max {props['max_registers_per_block']}/block)"
            if "max_registers_per_block" in props else ""),
         "seed_bandwidth": SEED["registers"]["bandwidth"],
         "measured_bandwidth": "not measurable directly; estimate " + _tb(d.get("register_estimate_bytes_per_s"))
         + " (FP32 FMA lanes x 3 operands x 4 B x max clock)",
         "seed_latency": SEED["registers"]["latency"], "measured_latency": "(part of each instruction)"},
        {"level": "SRAM (shared memory / L1)", "seed_size": SEED["shared"]["size"],
         "device_size": (f"{_kib(shared_sm)}/SM, {_kib(optin)}/block opt-in, {_kib(props.get('max_shared_memory_per_block'))}/block static"
                         if shared_sm else "n/a"),
         "seed_bandwidth": SEED["shared"]["bandwidth"],
         "measured_bandwidth": (f"{_tb(free_smem['bytes_per_s'])} conflict-free, {_tb(padded['bytes_per_s'])} padded "
                                f"rows, {_tb(conflict['bytes_per_s'])} with 32-way conflicts "
                                f"({free_smem['bytes_per_s'] / conflict['bytes_per_s']:.1f}x slower); theoretical "
                                f"{_tb(d.get('shared_theoretical_bytes_per_s'))}" + sim)
         if free_smem and conflict and padded else "n/a",
         "seed_latency": SEED["shared"]["latency"], "measured_latency": lat_text([r for r in lat if r["what"] == "shared memory"])},
        {"level": "SRAM, all SMs", "seed_size": SEED["sram_total"]["size"],
         "device_size": (f"{d['shared_total_bytes'] / 2**20:.1f} MiB shared ({sms} SMs) + {props['l2_cache_size'] / 2**20:.0f} MiB L2"
                         if "shared_total_bytes" in d and "l2_cache_size" in props else "n/a"),
         "seed_bandwidth": "", "measured_bandwidth": "",
         "seed_latency": "", "measured_latency": "L2: " + lat_text(l2_lat)},
        {"level": "HBM (global memory)", "seed_size": SEED["hbm"]["size"],
         "device_size": f"{props['total_memory_bytes'] / 1e9:.1f} GB" if "total_memory_bytes" in props else "n/a",
         "seed_bandwidth": SEED["hbm"]["bandwidth"],
         "measured_bandwidth": (f"{_tb(best_hbm)} copy (theoretical {_tb(d.get('hbm_theoretical_bytes_per_s'))})" + sim),
         "seed_latency": SEED["hbm"]["latency"],
         "measured_latency": lat_text(hbm_lat)},
    ]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="experiments/results/memory_hierarchy", help="folder for JSON and Markdown")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, runs in seconds on the simulator")
    p.add_argument("--copy-mib", type=int, help="bytes copied per HBM measurement (default 2048 MiB; smoke 1)")
    p.add_argument("--smem-iters", type=int, default=512, help="iterations of the shared-memory kernel per block")
    p.add_argument("--repeat", type=int, help="timed repetitions (default 20; smoke 1)")
    p.add_argument("--shared-hops", type=int, help="pointer-chase steps in shared memory (default 1000000)")
    p.add_argument("--global-hops", type=int, help="pointer-chase steps in global memory (default 20000)")
    p.add_argument("--l2-chase-mib", type=int, help="working set of the L2 pointer chase (default 8 MiB)")
    p.add_argument("--hbm-chase-mib", type=int, help="working set of the HBM pointer chase (default 256 MiB)")
    args = p.parse_args(argv)
    small = args.smoke or not ON_GPU
    for key, gpu, smoke in (("copy_mib", 2048, 1), ("repeat", 20, 1), ("shared_hops", 1_000_000, 8),
                            ("global_hops", 20_000, 8), ("l2_chase_mib", 8, 1), ("hbm_chase_mib", 256, 64)):
        if getattr(args, key) is None:
            setattr(args, key, smoke if small else gpu)
    return args


def main(argv=None) -> int:
    from rich.console import Console
    from rich.table import Table

    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=170)
    t0 = time.perf_counter()
    props = read_properties()
    hbm = measure_hbm(props, args)
    smem = measure_shared(props, args)
    lat = measure_latency(props, args)
    table_rows = hierarchy_table(props, hbm, smem, lat)

    title = f"GPU memory hierarchy: the seed's table vs {props['name']}"
    table = Table(title=title + ("" if ON_GPU else " (SIMULATOR: measured numbers are meaningless)"))
    cols = ("level", "seed_size", "device_size", "seed_bandwidth", "measured_bandwidth", "seed_latency", "measured_latency")
    for c in cols:
        table.add_column(c.replace("_", " "))
    for r in table_rows:
        table.add_row(*(str(r[c]) for c in cols))
    console.print(table)

    detail = Table(title="measurements")
    for c in ("what", "median ms", "bandwidth / latency"):
        detail.add_column(c)
    for r in hbm + smem:
        extra = f" ({r['bytes_per_clock_per_sm']:.0f} B/clk/SM)" if "bytes_per_clock_per_sm" in r else ""
        detail.add_row(r["what"], f"{r['median_ms']:.4g}", _tb(r["bytes_per_s"]) + extra)
    for r in lat:
        detail.add_row("latency: " + r["what"], f"{r['median_ms']:.4g}",
                       f"{r['ns_per_load']:.1f} ns" + (f" = {r['cycles_per_load']:.0f} cycles" if "cycles_per_load" in r else ""))
    console.print(detail)
    props_lines = [f"{k}: {v}" for k, v in props.items() if k != "derived"]
    props_lines += [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in props["derived"].items()]
    console.print("device properties: " + "; ".join(props_lines))

    notes = [
        "Bandwidth = (bytes read + bytes written) / median time (CUDA events). HBM: a device-to-device copy of "
        f"{args.copy_mib} MiB reads and writes every byte once" + (", far beyond the L2." if args.copy_mib * 2**20 > 4 * props.get("l2_cache_size", 0) else "."),
        f"Shared memory: every SM full of blocks, each thread doing {LOADS_PER_ITER} 4-byte accesses per iteration; "
        "lane l of a warp touches word l*stride, so stride 32 puts the 32 lanes on one bank (32-way conflict) and "
        "stride 33, a row padded by one word as in our kernels' tiles, is conflict-free again.",
        "Latency: one thread chasing a random cycle (each address comes from the previous load), time per load "
        "converted to cycles at the maximum SM clock (CLOCK_RATE); includes the address arithmetic of the loop.",
        "Registers: not measurable directly (no register 'copy' to time); the estimate is FP32 FMA lanes x 3 source "
        "operands x 4 B x clock: what the register file must deliver at the peak FP32 FMA rate.",
    ]
    if not ON_GPU:
        notes.insert(0, "SIMULATOR RUN: Numba's CUDA simulator on the CPU; every measured number here is meaningless "
                        "(it only shows the script works). Device properties are not available on the simulator.")
    for n in notes:
        console.print(n)

    data = {"args": vars(args), "simulator": not ON_GPU, "wall_s": time.perf_counter() - t0, "properties": props,
            "seed_table": SEED, "table": table_rows, "hbm": hbm, "shared": smem, "latency": lat, "notes": notes}
    md_detail = [dict(what=r["what"], median_ms=r["median_ms"], bandwidth=_tb(r["bytes_per_s"]),
                      bytes_per_clock_per_sm=r.get("bytes_per_clock_per_sm")) for r in hbm + smem]
    md_lat = [dict(what=r["what"], median_ms=r["median_ms"], ns_per_load=r["ns_per_load"],
                   cycles_per_load=r.get("cycles_per_load")) for r in lat]
    body = ["", *(["**SIMULATOR RUN: measured numbers are meaningless.**", ""] if not ON_GPU else []),
            "The seed's memory-hierarchy table (flashattention-seed.md, 1.1) beside what this device reports and "
            "what was measured on it.", "",
            results.markdown_table(table_rows, list(cols)), "",
            "## Measurements", "", results.markdown_table(md_detail), "", results.markdown_table(md_lat), "",
            "## Device properties", "", "; ".join(props_lines), "", "## Notes", "", *[f"- {n}" for n in notes]]
    paths = results.save(args.out, NAME, data, "\n".join(body), title="GPU memory hierarchy: seed vs measured")
    console.print(f"wrote {paths[0]}, {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
