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


def _asm(ret, args, text, constraints, side_effect=False, actual=None):
    """An intrinsic's (signature, codegen): one inline-PTX statement taking ``args`` (numba types:
    uint32, uint64, float32) and returning ``ret`` (one of them, a UniTuple of them, or void).
    ``actual``: the argument types the call site has (any integer for an integer slot, since
    Numba widens address arithmetic to 64 bits); each is cast to the slot's type."""
    llvm = {types.uint32: ir.IntType(32), types.uint64: ir.IntType(64), types.float32: ir.FloatType()}
    outs = list(ret) if isinstance(ret, types.UniTuple) else ([] if ret == types.void else [ret])
    if len(outs) > 1:
        lret = ir.LiteralStructType([llvm[t] for t in outs])
    else:
        lret = llvm[outs[0]] if outs else ir.VoidType()
    fnty = ir.FunctionType(lret, [llvm[a] for a in args])
    actual = tuple(actual) if actual is not None else tuple(args)

    def codegen(context, builder, signature, vals):
        vals = [context.cast(builder, v, frm, to) for v, frm, to in zip(vals, actual, args)]
        asm = ir.InlineAsm(fnty, text, constraints, side_effect=side_effect)
        out = builder.call(asm, vals)
        if len(outs) > 1:
            return context.make_tuple(builder, ret, [builder.extract_value(out, i) for i in range(len(outs))])
        return out if outs else context.get_dummy_value()

    return ret(*actual), codegen


_U32, _U64, _F32 = types.uint32, types.uint64, types.float32


def _is(actual, expected):
    """Integer slots take any integer type (cast in codegen); float32 slots only float32."""
    return len(actual) == len(expected) and all(
        (isinstance(a, types.Integer) if e in (_U32, _U64) else a == e) for a, e in zip(actual, expected))


def _mma(text, operands):
    if not _is(operands, [_U32] * 6 + [_F32] * 4):
        return None
    return _asm(types.UniTuple(_F32, 4), [_U32] * 6 + [_F32] * 4, text,
                "=f,=f,=f,=f," + ",".join(["r"] * 6 + ["f"] * 4), actual=operands)


@intrinsic
def mma_16816_f16(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
    """One warp-wide m16n8k16 float16 mma with float32 accumulation (layout in the module docstring)."""
    return _mma(_MMA_16816_F16, (a0, a1, a2, a3, b0, b1, c0, c1, c2, c3))


@intrinsic
def mma_16816_bf16(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
    """As :func:`mma_16816_f16` with bfloat16 operands (the same fragment layout)."""
    return _mma(_MMA_16816_F16.replace(".f16.f16", ".bf16.bf16"), (a0, a1, a2, a3, b0, b1, c0, c1, c2, c3))


_MMA_1688_TF32 = ("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                  "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};")


@intrinsic
def mma_1688_tf32(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
    """One warp-wide m16n8k8 TF32 mma with float32 accumulation. Every operand register holds one
    32-bit value (the tensor cores read its top 19 bits): a0 = A[g, t], a1 = A[g+8, t],
    a2 = A[g, t+4], a3 = A[g+8, t+4]; b0 = B[t, g], b1 = B[t+4, g]; c and the result as for
    :func:`mma_16816_f16`."""
    return _mma(_MMA_1688_TF32, (a0, a1, a2, a3, b0, b1, c0, c1, c2, c3))


@intrinsic
def split_tf32(typingctx, x):
    """``(big, small)`` with x = big + small exactly: big = x rounded to TF32 (to nearest, ties away
    from zero: add half a TF32 ulp to the bits, clear the low 13), small = x - big (exact in float32,
    |small| <= 2^-11 |x|), both as uint32 bit patterns. The 3xTF32 split (as CUTLASS's
    ``OpMultiplyAddFastF32``): a b ~ big_a big_b + big_a small_b + small_a big_b, the mma truncating
    small to TF32 (relative error 2^-10 of small) and the dropped small_a small_b <= 2^-22 |a b|.
    Integer ops, not ``cvt.rna.tf32.f32``, which sm_90 runs as 4 instructions with an infinity test
    (finite inputs only, then: x is a score, a probability or an input value). ``x``: a float32, or
    a uint32 holding one (a fragment register from ldmatrix)."""
    text = ("{ .reg .f32 %xf, %bf, %sf; .reg .b32 %xi, %t; mov.b32 %xf, $2; mov.b32 %xi, $2; "
            "add.s32 %t, %xi, 4096; and.b32 $0, %t, -8192; mov.b32 %bf, $0; sub.f32 %sf, %xf, %bf; mov.b32 $1, %sf; }")
    if _is((x,), [_F32]):
        return _asm(types.UniTuple(_U32, 2), [_F32], text, "=r,=r,f", actual=(x,))
    if _is((x,), [_U32]):
        return _asm(types.UniTuple(_U32, 2), [_U32], text, "=r,=r,r", actual=(x,))
    return None


@intrinsic
def ldmatrix_x4(typingctx, addr):
    """Four 8x8 b16 matrices from shared memory (``addr``: the shared-window address, uint32, of this
    lane's row: lanes 8i..8i+7 give the rows of matrix i). Returns (r0, r1, r2, r3): r_i holds
    matrix i's row ``lane // 4``, columns ``2 (lane % 4)`` and ``+1``, as an mma A/B fragment wants."""
    if not _is((addr,), [_U32]):
        return None
    return _asm(types.UniTuple(_U32, 4), [_U32], "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {$0, $1, $2, $3}, [$4];",
                "=r,=r,=r,=r,r", side_effect=True, actual=(addr,))


@intrinsic
def ldmatrix_x4_trans(typingctx, addr):
    """:func:`ldmatrix_x4` of the transposed matrices: r_i holds matrix i's column ``lane // 4``,
    rows ``2 (lane % 4)`` and ``+1`` (a row-major [k][n] tile read as an mma B fragment)."""
    if not _is((addr,), [_U32]):
        return None
    return _asm(types.UniTuple(_U32, 4), [_U32],
                "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {$0, $1, $2, $3}, [$4];", "=r,=r,=r,=r,r",
                side_effect=True, actual=(addr,))


def _cp_async(cache: str, size: int, operands):
    """``cp.async.<cache>`` of ``size`` bytes with zero-fill past ``src_bytes`` (shared u32, global u64, u32)."""
    if not _is(operands, [_U32, _U64, _U32]):
        return None
    return _asm(types.void, [_U32, _U64, _U32], f"cp.async.{cache}.shared.global [$0], [$1], {size}, $2;", "r,l,r",
                side_effect=True, actual=operands)


@intrinsic
def cp_async16(typingctx, smem_addr, gmem_addr, src_bytes):
    """Asynchronous copy of 16 bytes global -> shared (``cp.async.cg``, bypassing L1); only the first
    ``src_bytes`` (0 or 16) are read, the rest of the 16 are zero-filled: ragged tiles need no branch."""
    return _cp_async("cg", 16, (smem_addr, gmem_addr, src_bytes))


@intrinsic
def cp_async16_whole(typingctx, smem_addr, gmem_addr):
    """:func:`cp_async16` of 16 bytes that all exist: no source-size operand, so no predicate or select
    per copy (the copier's path for tiles that lie inside the sequence)."""
    if not _is((smem_addr, gmem_addr), [_U32, _U64]):
        return None
    return _asm(types.void, [_U32, _U64], "cp.async.cg.shared.global [$0], [$1], 16;", "r,l", side_effect=True,
                actual=(smem_addr, gmem_addr))


@intrinsic
def cp_async4(typingctx, smem_addr, gmem_addr, src_bytes):
    """As :func:`cp_async16` for one 4-byte word (``cp.async.ca``; ``src_bytes`` 0 or 4): per-row
    float32 values (lse, delta) land in shared memory with the tiles they belong to."""
    return _cp_async("ca", 4, (smem_addr, gmem_addr, src_bytes))


@intrinsic
def ld_shared_f32(typingctx, addr):
    """The float32 at shared-window address ``addr`` (uint32)."""
    if not _is((addr,), [_U32]):
        return None
    return _asm(_F32, [_U32], "ld.shared.f32 $0, [$1];", "=f,r", side_effect=True, actual=(addr,))


@intrinsic
def cp_async_commit(typingctx):
    """Close the group of cp.async copies issued so far by this thread."""
    return _asm(types.void, [], "cp.async.commit_group;", "", side_effect=True)


@intrinsic
def cp_async_wait_all(typingctx):
    """Wait until all of this thread's cp.async groups have landed (then a barrier publishes them)."""
    return _asm(types.void, [], "cp.async.wait_group 0;", "", side_effect=True)


@intrinsic
def cp_async_wait_one(typingctx):
    """Wait until at most one (the newest) of this thread's cp.async groups is still in flight."""
    return _asm(types.void, [], "cp.async.wait_group 1;", "", side_effect=True)


@intrinsic
def ex2(typingctx, x):
    """2**x on the special-function unit (``ex2.approx.ftz.f32``: ~2 ulp; -inf -> 0)."""
    if x != _F32:
        return None
    return _asm(_F32, [_F32], "ex2.approx.ftz.f32 $0, $1;", "=f,f", actual=(x,))


@intrinsic
def pack_f16x2(typingctx, lo, hi):
    """Two float32 rounded to float16 (round to nearest even) in one register, ``lo`` in the low half."""
    if not _is((lo, hi), [_F32, _F32]):
        return None
    return _asm(_U32, [_F32, _F32], "cvt.rn.f16x2.f32 $0, $2, $1;", "=r,f,f", actual=(lo, hi,))


@intrinsic
def pack_bf16x2(typingctx, lo, hi):
    """As :func:`pack_f16x2`, rounding to bfloat16."""
    if not _is((lo, hi), [_F32, _F32]):
        return None
    return _asm(_U32, [_F32, _F32], "cvt.rn.bf16x2.f32 $0, $2, $1;", "=r,f,f", actual=(lo, hi,))


@intrinsic
def f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is ``bits`` (uint32): bfloat16 ``b`` is ``f32_from_bits(b << 16)``."""
    if not _is((bits,), [_U32]):
        return None
    return _asm(_F32, [_U32], "mov.b32 $0, $1;", "=f,r", actual=(bits,))


@intrinsic
def st_global_f32x2(typingctx, addr, lo, hi):
    """Store two float32 at global address ``addr`` (uint64, 8-byte aligned), ``lo`` first."""
    if not _is((addr, lo, hi), [_U64, _F32, _F32]):
        return None
    return _asm(types.void, [_U64, _F32, _F32], "st.global.v2.f32 [$0], {$1, $2};", "l,f,f", side_effect=True,
                actual=(addr, lo, hi))


@intrinsic
def st_global_u32(typingctx, addr, value):
    """Store one 32-bit word at global address ``addr`` (uint64)."""
    if not _is((addr, value), [_U64, _U32]):
        return None
    return _asm(types.void, [_U64, _U32], "st.global.b32 [$0], $1;", "l,r", side_effect=True, actual=(addr, value,))


@intrinsic
def st_shared_u32(typingctx, addr, value):
    """Store one 32-bit word at shared-window address ``addr`` (uint32)."""
    if not _is((addr, value), [_U32, _U32]):
        return None
    return _asm(types.void, [_U32, _U32], "st.shared.b32 [$0], $1;", "r,r", side_effect=True, actual=(addr, value))


@intrinsic
def st_shared_f32(typingctx, addr, value):
    """Store one float32 at shared-window address ``addr`` (uint32)."""
    if not _is((addr, value), [_U32, _F32]):
        return None
    return _asm(types.void, [_U32, _F32], "st.shared.f32 [$0], $1;", "r,f", side_effect=True, actual=(addr, value))


@intrinsic
def st_shared_f32x2(typingctx, addr, lo, hi):
    """Store two float32 at shared-window address ``addr`` (uint32, 8-byte aligned), ``lo`` first."""
    if not _is((addr, lo, hi), [_U32, _F32, _F32]):
        return None
    return _asm(types.void, [_U32, _F32, _F32], "st.shared.v2.f32 [$0], {$1, $2};", "r,f,f", side_effect=True,
                actual=(addr, lo, hi))


@intrinsic
def red_add_f32x2(typingctx, addr, lo, hi):
    """Atomically add two float32 to the two at global address ``addr`` (uint64, 8-byte aligned), ``lo``
    first: one vector reduction (``red.global.add.v2.f32``, sm_90), no value returned."""
    if not _is((addr, lo, hi), [_U64, _F32, _F32]):
        return None
    return _asm(types.void, [_U64, _F32, _F32], "red.global.add.v2.f32 [$0], {$1, $2};", "l,f,f", side_effect=True,
                actual=(addr, lo, hi))


def _data_pointer(context, builder, aryty, ary):
    return context.make_array(aryty)(context, builder, ary).data


@intrinsic
def global_address(typingctx, ary):
    """The address (uint64) of ``ary``'s first element; kernels add byte offsets from ``ary.strides``."""
    if not isinstance(ary, types.Array):
        return None

    def codegen(context, builder, signature, args):
        return builder.ptrtoint(_data_pointer(context, builder, signature.args[0], args[0]), ir.IntType(64))

    return _U64(ary), codegen


@intrinsic
def shared_address(typingctx, ary):
    """The shared-window address (uint32, what ldmatrix/cp.async take) of a ``cuda.shared.array``."""
    if not isinstance(ary, types.Array):
        return None

    def codegen(context, builder, signature, args):
        ptr = _data_pointer(context, builder, signature.args[0], args[0])
        shared = builder.addrspacecast(ptr, ptr.type.pointee.as_pointer(3))
        return builder.ptrtoint(shared, ir.IntType(32))

    return _U32(ary), codegen


__all__ = ["cp_async16", "cp_async4", "cp_async_commit", "cp_async_wait_all", "cp_async_wait_one", "ex2", "f32_from_bits", "global_address",
           "ld_shared_f32", "ldmatrix_x4", "ldmatrix_x4_trans", "mma_1688_tf32", "mma_16816_bf16", "mma_16816_f16",
           "pack_bf16x2", "pack_f16x2", "pack_half2", "red_add_f32x2", "shared_address", "split_tf32", "st_global_f32x2",
           "st_global_u32", "st_shared_f32", "st_shared_u32",
           "warp_mma_kernel"]


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
