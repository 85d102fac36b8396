"""Which machine the kernels run on: a CUDA GPU, or Numba's CUDA simulator on the CPU.

The choice has to be made before ``numba.cuda`` is first imported (Numba reads
``NUMBA_ENABLE_CUDASIM`` once), so this module is imported first by the package and must not
import ``numba.cuda`` itself before deciding.

* ``NUMBA_FLASH_BACKEND=gpu``: use the GPU (errors if there is none).
* ``NUMBA_FLASH_BACKEND=simulator``: use the simulator even when a GPU is present.
* unset: use the GPU when the CUDA driver reports a device, the simulator otherwise.

On the GPU, arrays are CuPy arrays (inputs may be anything exposing ``__cuda_array_interface__``
or DLPack, such as torch CUDA tensors). On the simulator they are NumPy arrays.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

GPU = "gpu"
SIMULATOR = "simulator"
_ENV = "NUMBA_FLASH_BACKEND"


def _driver_device_count() -> int:
    """Number of CUDA devices the driver reports, 0 if there is no driver; never raises."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
            return count.value
        except AttributeError:
            return 0
    return 0


def _choose() -> str:
    wanted = os.environ.get(_ENV, "").strip().lower()
    if wanted not in ("", GPU, SIMULATOR, "sim", "cpu"):
        raise ValueError(f"{_ENV}={wanted!r}: expected 'gpu' or 'simulator' (or leave it unset)")
    if "numba.cuda" in sys.modules:
        # Too late to choose: follow whatever mode numba.cuda was imported in.
        from numba.cuda.core import config

        actual = SIMULATOR if config.ENABLE_CUDASIM else GPU
        if wanted == GPU and actual != GPU:
            raise RuntimeError(f"{_ENV}=gpu but numba.cuda was already imported in simulator mode")
        return actual
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        if wanted == GPU:
            raise RuntimeError(f"{_ENV}=gpu conflicts with NUMBA_ENABLE_CUDASIM=1")
        return SIMULATOR
    if wanted == GPU:
        return GPU
    if wanted in (SIMULATOR, "sim", "cpu") or _driver_device_count() == 0:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        return SIMULATOR
    return GPU


BACKEND = _choose()
_warned = False


def warn_if_simulated() -> None:
    """Say once per process that the simulator is slow and only good for checking correctness."""
    global _warned
    if BACKEND == SIMULATOR and not _warned:
        _warned = True
        warnings.warn(
            "numba_flash is running its CUDA kernels under Numba's CUDA simulator (no GPU found, or "
            f"{_ENV}=simulator): results are exact but it is very slow (microseconds per thread "
            "instruction), so use tiny shapes; it is meant for checking correctness, not speed.",
            RuntimeWarning,
            stacklevel=3,
        )


def array_module():
    """``cupy`` on the GPU backend, ``numpy`` on the simulator."""
    if BACKEND == SIMULATOR:
        import numpy

        return numpy
    try:
        import cupy
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError(
            "numba_flash on a GPU needs CuPy for its device arrays: pip install 'numba-flash[cuda]' "
            "(installs cupy-cuda13x and numba-cuda[cu13])"
        ) from e
    return cupy


def device_name() -> str:
    """A human-readable name of where the kernels run."""
    if BACKEND == SIMULATOR:
        return "Numba CUDA simulator (CPU)"
    from numba import cuda

    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)
