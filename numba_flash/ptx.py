"""Tensor-core building blocks as Numba intrinsics: inline PTX through llvmlite's ``ir.InlineAsm``.

Groundwork for the tensor-core kernels (the speed issue). GPU only: the CUDA simulator cannot run
inline PTX, so kernels built from these get compile checks on any machine (PTX for sm_90 through
NVVM, assembled by nvJitLink: ``tests/test_ptx.py``) and correctness tests on the GPU only.

* ``pack_half2(lo, hi)``: two float16 values in one 32-bit register, ``lo`` in the low half (the
  operand format of ``mma``).
* ``mma_16816_f16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)``: one warp-wide
  ``mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32``, D = A (16x16) @ B (16x8) + C in fp32.
  Per lane (``g = lane // 4``, ``t = lane % 4``), as the PTX ISA lays the fragments out:
  a0 = A[g, 2t:2t+2], a1 = A[g+8, 2t:2t+2], a2 = A[g, 2t+8:2t+10], a3 = A[g+8, 2t+8:2t+10];
  b0 = B[2t:2t+2, g], b1 = B[2t+8:2t+10, g];
  c0, c1 = C[g, 2t:2t+2]; c2, c3 = C[g+8, 2t:2t+2]; the result (d0..d3) is laid out as c.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.cuda.extending import intrinsic

_MMA_16816_F16 = ("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                  "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};")


@intrinsic
def pack_half2(typingctx, lo, hi):
    if lo != types.float16 or hi != types.float16:
        return None
    sig = types.uint32(types.float16, types.float16)

    def codegen(context, builder, signature, args):
        i16, i32 = ir.IntType(16), ir.IntType(32)
        lo_bits = builder.zext(builder.bitcast(args[0], i16), i32)
        hi_bits = builder.zext(builder.bitcast(args[1], i16), i32)
        return builder.or_(lo_bits, builder.shl(hi_bits, ir.Constant(i32, 16)))

    return sig, codegen


@intrinsic
def mma_16816_f16(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
    if any(x != types.uint32 for x in (a0, a1, a2, a3, b0, b1)) or any(
            x != types.float32 for x in (c0, c1, c2, c3)):
        return None
    ret = types.UniTuple(types.float32, 4)
    sig = ret(*([types.uint32] * 6 + [types.float32] * 4))

    def codegen(context, builder, signature, args):
        f32, i32 = ir.FloatType(), ir.IntType(32)
        fnty = ir.FunctionType(ir.LiteralStructType([f32] * 4), [i32] * 6 + [f32] * 4)
        asm = ir.InlineAsm(fnty, _MMA_16816_F16, "=f,=f,=f,=f," + ",".join(["r"] * 6 + ["f"] * 4))
        out = builder.call(asm, args)
        return context.make_tuple(builder, ret, [builder.extract_value(out, i) for i in range(4)])

    return sig, codegen


__all__ = ["mma_16816_f16", "pack_half2", "warp_mma_kernel"]


def warp_mma_kernel():
    """A one-warp kernel ``kernel(a, b, c)``: c (16x8 fp32) = a (16x16 fp16) @ b (16x8 fp16).

    NumPy spec: ``c[:] = a.astype(np.float32) @ b.astype(np.float32)`` (fp32 accumulation).
    The smallest complete use of the fragment layout above: the tests run it on the GPU against
    NumPy and compile it for sm_90 anywhere. Launch with one block of 32 threads.
    """
    from numba import cuda
    from numba.cuda import float32

    @cuda.jit
    def kernel(a, b, c):
        lane = cuda.threadIdx.x
        g = lane // 4
        t = lane % 4
        a0 = pack_half2(a[g, 2 * t], a[g, 2 * t + 1])
        a1 = pack_half2(a[g + 8, 2 * t], a[g + 8, 2 * t + 1])
        a2 = pack_half2(a[g, 2 * t + 8], a[g, 2 * t + 9])
        a3 = pack_half2(a[g + 8, 2 * t + 8], a[g + 8, 2 * t + 9])
        b0 = pack_half2(b[2 * t, g], b[2 * t + 1, g])
        b1 = pack_half2(b[2 * t + 8, g], b[2 * t + 9, g])
        z = float32(0.0)
        d0, d1, d2, d3 = mma_16816_f16(a0, a1, a2, a3, b0, b1, z, z, z, z)
        c[g, 2 * t] = d0
        c[g, 2 * t + 1] = d1
        c[g + 8, 2 * t] = d2
        c[g + 8, 2 * t + 1] = d3

    return kernel


def main(argv=None) -> int:
    """Compile the warp MMA kernel for sm_90 and print its tensor-core PTX and resources (JSON)."""
    import json

    from numba import types as nbtypes

    from .resources import compile_for

    f16 = nbtypes.Array(nbtypes.float16, 2, "A")
    sig = (f16, f16, nbtypes.Array(nbtypes.float32, 2, "A"))
    ptx, res = compile_for(warp_mma_kernel().py_func, sig, (9, 0), "warp_mma")
    res["mma_lines"] = [line.strip() for line in ptx.splitlines() if "mma.sync" in line]
    print(json.dumps(res))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
