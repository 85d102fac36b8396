"""Prepared kernel launches: numba-cuda compiles, we launch with one driver call.

``kernel[grid, block, stream](*args)`` costs ~30-60 us of host time per launch (measured on the
H100 host): numba types every argument, wraps each CuPy array in a device-array object, builds a
stream object and packs the parameters through cuda.core. The kernels here always see the same
kinds of arguments, so all of that can be done once per argument-type signature:

* Arrays are typed ``Array(dtype, ndim, "A")`` whatever their strides (one compiled version per
  dtype/rank, indexing through the strides it is given: strided views work as before).
* The compiled kernel's driver handle and the byte layout of its flattened parameter list are
  kept; a launch packs the values with ``struct.pack_into`` into a per-thread buffer whose
  parameter pointers were built once, and calls ``cuLaunchKernel`` through ctypes.

Numba flattens an array argument into ``meminfo, parent, nitems, itemsize, data, shape...,
strides...`` (``numba.cuda.dispatcher._Kernel._prepare_args``), each a separate kernel parameter
at its natural alignment, which is what ``struct``'s native mode lays out.

GPU only (the API's launch plans, ``numba_flash.plan``, call it); the simulator keeps numba's own
launch (``api._launch``).
"""

from __future__ import annotations

import ctypes
import struct
import sys
import threading

import numpy as np

_CUDA_ERROR_INVALID_VALUE = 1
_CUDA_ERROR_INVALID_CONTEXT = 201
# cuLaunchKernel's ``extra`` keys: the parameters as one packed buffer instead of one pointer each.
_PARAM_BUFFER_POINTER, _PARAM_BUFFER_SIZE, _PARAM_END = 1, 2, 0

# PARAM_BUFFER: hand the driver the packed parameter buffer through cuLaunchKernel's ``extra`` (one
# copy) rather than one pointer per parameter (a tensor-core backward kernel has ~100 flattened
# parameters). Both give bit-identical launches (tests/test_plan.py); on the H100 neither was
# consistently faster (experiments/results/plans-2026-11-24: tiny forward 34.7 vs 36.7 us in one
# run, 45.5 vs 36.6 in another), so the default is the common per-pointer form. Keeping the GIL
# over the call (ctypes.PyDLL) was also tried and cost 30-60 us more.
PARAM_BUFFER = False

_driver = None


def _libcuda():
    global _driver
    if _driver is None:
        lib = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
        u = ctypes.c_uint
        lib.cuLaunchKernel.argtypes = [ctypes.c_void_p, u, u, u, u, u, u, u, ctypes.c_void_p, ctypes.c_void_p,
                                       ctypes.c_void_p]
        lib.cuLaunchKernel.restype = ctypes.c_int
        lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        _driver = lib
    return _driver


def _error(code: int) -> str:
    msg = ctypes.c_char_p()
    _libcuda().cuGetErrorString(code, ctypes.byref(msg))
    return f"CUDA error {code}: {msg.value.decode() if msg.value else 'unknown'}"


def _arg_kind(a):
    """What the compiled signature depends on: (dtype, ndim) of an array, the type of a scalar."""
    dt = getattr(a, "dtype", None)
    if dt is not None and getattr(a, "ndim", 0) > 0:
        return dt.char, a.ndim
    return type(a)


def _numba_type(a):
    from numba import types
    from numba.np import numpy_support

    if getattr(a, "ndim", 0) > 0:
        return types.Array(numpy_support.from_dtype(a.dtype), a.ndim, "A")
    if isinstance(a, (bool, np.bool_)):
        return types.boolean
    if isinstance(a, int):
        return types.int64
    if isinstance(a, np.generic):
        return numpy_support.from_dtype(a.dtype)
    raise TypeError(f"launch: unsupported kernel argument {type(a).__name__}")


def _format(ty) -> str:
    """struct format of one argument's flattened parameters."""
    from numba import types

    if isinstance(ty, types.Array):
        return "PPqqP" + "q" * (2 * ty.ndim)
    return {types.int64: "q", types.int32: "i", types.uint64: "Q", types.uint32: "I", types.float32: "f",
            types.float64: "d", types.boolean: "?"}[ty]


def param_layout(argtypes) -> tuple[str, list[int]]:
    """struct format of the flattened parameters and the byte offset of each, at natural alignment."""
    offsets, fmt = [], "@"
    for t in argtypes:
        for code in _format(t):
            offsets.append(struct.calcsize(fmt + code) - struct.calcsize(code))
            fmt += code
    return fmt, offsets


def _pointer(a) -> int:
    ptr = getattr(a, "ptr", None)  # api.DeviceView
    if ptr is not None:
        return ptr
    data = getattr(a, "data", None)
    if data is not None and hasattr(data, "ptr"):  # CuPy
        return data.ptr
    return a.__cuda_array_interface__["data"][0]


class _Prepared:
    """One compiled kernel and the layout of its parameters."""

    def __init__(self, dispatcher, args):
        argtypes = tuple(_numba_type(a) for a in args)
        kernel = dispatcher.overloads.get(argtypes) or dispatcher.compile(argtypes)
        cufunc = kernel._codelibrary.get_cufunc()
        self.kernel = kernel
        self.name = dispatcher.py_func.__name__
        self.config = getattr(dispatcher, "config_label", "")  # TensorCoreConfig.label() of a tensor-core kernel
        try:
            self.handle = int(cufunc.handle)
        except TypeError:  # older cuda.bindings handle objects
            self.handle = int(cufunc.handle.getPtr())
        self.device_id = cufunc.device.id
        self.fmt, self.offsets = param_layout(argtypes)
        self.size = struct.calcsize(self.fmt)
        self.max_shared = 48 * 1024
        self.last = None  # (block, shared bytes) of the latest launch, for occupancy()
        self.by_buffer = True  # cleared if the driver refuses the packed buffer
        self._tls = threading.local()

    def _buffers(self):
        """This thread's parameter buffer, the per-parameter pointer array into it and the ``extra``
        array that hands the driver the whole buffer (addresses as ints, the objects kept alive)."""
        b = getattr(self._tls, "b", None)
        if b is None:
            buf = ctypes.create_string_buffer(max(self.size, 8))
            base = ctypes.addressof(buf)
            ptrs = (ctypes.c_void_p * len(self.offsets))(*(base + o for o in self.offsets))
            size = ctypes.c_size_t(self.size)
            extra = (ctypes.c_void_p * 5)(_PARAM_BUFFER_POINTER, base, _PARAM_BUFFER_SIZE, ctypes.addressof(size),
                                          _PARAM_END)
            b = self._tls.b = (buf, ctypes.addressof(ptrs), ctypes.addressof(extra), (ptrs, size, extra))
        return b

    def set_max_shared(self, nbytes: int) -> None:
        from numba.cuda.cudadrv.driver import driver as nb_driver, binding

        attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        nb_driver.cuKernelSetAttribute(attr, int(nbytes), self.kernel._codelibrary.get_cufunc().handle,
                                       self.device_id)
        self.max_shared = int(nbytes)

    def values(self, args):
        vals = []
        for a in args:
            if getattr(a, "ndim", 0) > 0:
                vals += (0, 0, a.size, a.itemsize, _pointer(a), *a.shape, *a.strides)
            else:
                vals.append(a)
        return vals

    def launch_values(self, grid, block, stream: int, values, shared: int = 0) -> None:
        """Launch with the flattened parameter ``values`` (as :meth:`values` makes them)."""
        buf, params, extra, _ = self._buffers()
        struct.pack_into(self.fmt, buf, 0, *values)
        gx, gy, gz = grid
        self.last = (block, shared)
        lib = _libcuda()
        by_buffer = PARAM_BUFFER and self.by_buffer
        rc = lib.cuLaunchKernel(self.handle, gx, gy, gz, block, 1, 1, shared, stream, None if by_buffer else params,
                                extra if by_buffer else None)
        if rc == _CUDA_ERROR_INVALID_VALUE and by_buffer:  # a driver that wants the size another way: per pointer
            self.by_buffer = False
            rc = lib.cuLaunchKernel(self.handle, gx, gy, gz, block, 1, 1, shared, stream, params, None)
        if rc == _CUDA_ERROR_INVALID_CONTEXT:  # a thread that has not touched CUDA yet: bind the context
            from numba import cuda

            cuda.current_context()
            rc = lib.cuLaunchKernel(self.handle, gx, gy, gz, block, 1, 1, shared, stream, params, None)
        if rc != 0:
            raise RuntimeError(f"launching {self.name}: {_error(rc)}")

    def blocks_per_sm(self, block: int, shared: int) -> int:
        """Resident blocks per SM at ``block`` threads and ``shared`` bytes of dynamic shared memory
        (the driver's occupancy calculator: registers, shared memory and the launch bound)."""
        n = ctypes.c_int()
        rc = _libcuda().cuOccupancyMaxActiveBlocksPerMultiprocessor(ctypes.byref(n), ctypes.c_void_p(self.handle),
                                                                     ctypes.c_int(block), ctypes.c_size_t(shared))
        if rc != 0:
            raise RuntimeError(f"occupancy of {self.name}: {_error(rc)}")
        return n.value


_PREPARED: dict = {}
_LOCK = threading.Lock()


def occupancy() -> list[dict]:
    """The kernels launched so far (one row per compiled kernel and argument kind): registers,
    local memory, and resident blocks and warps per SM at the latest launch's shape."""
    rows = []
    for p in list(_PREPARED.values()):
        if p.last is None:
            continue
        block, shared = p.last
        blocks = p.blocks_per_sm(block, shared)
        rows.append({"kernel": p.name, "config": p.config, "registers": p.kernel.regs_per_thread,
                     "local_bytes": p.kernel.local_mem_per_thread, "threads": block, "shared_bytes": shared,
                     "blocks_per_sm": blocks, "warps_per_sm": blocks * block // 32})
    return rows


def prepared(dispatcher, args) -> _Prepared:
    """The prepared launch of ``dispatcher`` for arguments like ``args`` (compiled on first use)."""
    key = (dispatcher, *map(_arg_kind, args))
    p = _PREPARED.get(key)
    if p is None:
        with _LOCK:
            p = _PREPARED.get(key)
            if p is None:
                p = _PREPARED[key] = _Prepared(dispatcher, args)
    return p
