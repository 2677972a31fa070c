"""The CPU outer-product microkernel, written as LLVM vector IR through a Numba intrinsic.

    C[i, n] = beta*C[i, n] + D[i] + sum_j A[i, j] * B[j, n]      i < MR rows, n < NV*VL columns

A is the broadcast operand (one scalar per row and reduction step, any strides), B the vector
operand (row j holds the columns contiguously), and the MR x NV accumulator vectors stay in
registers for the whole reduction: per step, NV vector loads of B and MR broadcasts of A feed
MR * NV fused multiply-adds. This is the BLIS/oneDNN microkernel shape: no horizontal sums, no
scalar remainder, and the vector length (VL lanes of VEC_BYTES, from config.py: 64 bytes where
Numba compiles for AVX-512, 32 for AVX2) is chosen by the target rather than by LLVM's
vectoriser (an SLP-vectorised 12 x 8 scalar version of this kernel ran at 21 GFLOP/s on one
Emerald Rapids core; this one at 60-100).

Split reduction (U > 1): when the output has fewer columns than a vector has lanes (a
locally-connected layer's batch of 8 against 16 float32 lanes), B's row j holds U reduction
steps of G = VL/U columns laid end to end (lane u*G + n: step j*U + u, column n; which is just
the original T x G layout). B is permuted once per step to lane n*U + u, so that A's U
consecutive steps are a plain repeating broadcast (one load: vbroadcastsd, vbroadcastf32x4),
and the U partial sums of a column are added together before the store.

Registers: the loop keeps one address per A row, so MR stays <= 8 (x86 has 16 general
registers; at MR = 16 LLVM spilled the row pointers to the stack every step).

Edges: rows past `nrows` recompute the last valid row (reads stay in bounds) and are not
stored; columns past `ncols` are masked on every load and store of B and C, so neither is
touched beyond the caller's arrays.
"""
import platform

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import errors
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ..config import VEC_BYTES
from ..dtypes import DTYPES

I32 = ir.IntType(32)
I64 = ir.IntType(64)
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def lanes(itemsize):
    return VEC_BYTES // itemsize


def lanes_of(a):  # pragma: no cover - replaced by the overload inside jitted code
    return VEC_BYTES // a.dtype.itemsize


@overload(lanes_of)
def _lanes_of_overload(a):
    n = VEC_BYTES // (a.dtype.bitwidth // 8)
    return lambda a: n


def typed_zero(a):  # pragma: no cover - replaced by the overload inside jitted code
    return np.float64(0) if a.dtype == np.float64 else np.float32(0)


@overload(typed_zero, jit_options={"fastmath": True})
def _typed_zero_overload(a):
    # A literal zero of the type a's elements sum in: float64 for float64, float32 for float32
    # and for 16-bit storage (a float64 literal would turn float32 accumulators into float64
    # ones and stop the vectoriser).
    if a.dtype == types.float64:
        return lambda a: np.float64(0)
    return lambda a: np.float32(0)


def line_of(a):  # pragma: no cover - replaced by the overload inside jitted code
    return 64 // a.dtype.itemsize


@overload(line_of)
def _line_of_overload(a):
    n = 64 // (a.dtype.bitwidth // 8)
    return lambda a: n


# ------------------------------------------------------------- reduced-precision storage
# Kernels read bfloat16 and float16 arrays as 16-bit integers (dtypes.py, `view`: uint16 holds
# bfloat16, int16 holds float16). Widening and rounding are a few integer instructions on whole
# vectors, written once here for scalars and vectors alike (LLVM applies them lane by lane).
# The Numba type of each view -> its storage dtype's name, from the dtype table.
_HALF = {numba.from_dtype(row.view): row.name for row in DTYPES.values() if row.reduced}


def _vec_of(ty, like):
    """`ty` (a scalar IR type), as a vector of like's length if `like` is a vector type."""
    return ir.VectorType(ty, like.count) if isinstance(like, ir.VectorType) else ty


def _const(ty, value):
    """A constant of scalar or vector type `ty`, every lane `value`."""
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [ir.Constant(ty.element, value)] * ty.count)
    return ir.Constant(ty, value)


def widen_ir(builder, val, kind):
    """16-bit storage (i16 scalar or vector) -> float32: bfloat16 is the float32's high half (a
    shift), float16 a hardware conversion (F16C's vcvtph2ps on x86)."""
    if kind == "bfloat16":
        wide = builder.zext(val, _vec_of(I32, val.type))
        wide = builder.shl(wide, _const(wide.type, 16))
        return builder.bitcast(wide, _vec_of(ir.FloatType(), val.type))
    half = builder.bitcast(val, _vec_of(ir.HalfType(), val.type))
    return builder.fpext(half, _vec_of(ir.FloatType(), val.type))


def narrow_ir(builder, val, kind):
    """float32 (scalar or vector) -> 16-bit storage, rounded to nearest even. bfloat16: add
    0x7FFF plus the kept part's lowest bit, keep the high half (what ml_dtypes, PyTorch and
    vcvtneps2bf16 give); a NaN keeps its high half with the quiet bit set (rounding could carry
    it into an infinity). float16: the hardware conversion (RNE)."""
    i16 = _vec_of(ir.IntType(16), val.type)
    if kind == "float16":
        return builder.bitcast(builder.fptrunc(val, _vec_of(ir.HalfType(), val.type)), i16)
    bits = builder.bitcast(val, _vec_of(I32, val.type))
    c = lambda v: _const(bits.type, v)  # noqa: E731
    lsb = builder.and_(builder.lshr(bits, c(16)), c(1))
    rounded = builder.lshr(builder.add(bits, builder.add(c(0x7FFF), lsb)), c(16))
    isnan = builder.icmp_unsigned(">", builder.and_(bits, c(0x7FFFFFFF)), c(0x7F800000))
    quiet = builder.or_(builder.lshr(bits, c(16)), c(0x40))
    return builder.trunc(builder.select(isnan, quiet, rounded), i16)


@intrinsic
def widen(typingctx, v):
    """A stored element as its accumulation type: a bfloat16 (uint16 bits) or float16 (int16
    bits) as float32; float32 and float64 as they are."""
    if v in _HALF:
        def codegen(context, builder, signature, args):
            return widen_ir(builder, args[0], _HALF[v])
        return types.float32(v), codegen
    if v in (types.float32, types.float64):
        return v(v), lambda context, builder, signature, args: args[0]
    return None


@intrinsic
def narrow(typingctx, v, like):
    """Accumulated value `v` as an element of array `like`: rounded to nearest even into
    bfloat16 / float16 bits, or cast to like's float dtype."""
    if not isinstance(like, types.Array):
        return None
    out = like.dtype
    if out in _HALF:
        if v != types.float32:
            return None

        def codegen(context, builder, signature, args):
            return narrow_ir(builder, args[0], _HALF[out])
        return out(v, like), codegen
    if out in (types.float32, types.float64) and isinstance(v, types.Float):
        def codegen(context, builder, signature, args):
            return context.cast(builder, args[0], v, out)
        return out(v, like), codegen
    return None


class _BFloatType(ir.Type):
    """LLVM's bfloat, which llvmlite's IR builder does not spell: the operand type of the
    AVX512_BF16 intrinsics (only ever bitcast to and from <2n x i16>)."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloatType)

    def __hash__(self):
        return hash("bfloat")


_BFLOAT = _BFloatType()


def _declare(module, name, fnty):
    return cgutils.get_or_insert_function(module, fnty, name)


def _i32s(values):
    return ir.Constant(ir.VectorType(I32, len(values)), list(values))


def _operands_ok(A, B, C, D):
    """C and D: one float dtype (the accumulator's); A and B: that dtype too, or, with a float32
    accumulator, 16-bit storage (bfloat16 / float16 views, widened as they are loaded)."""
    arrays = (A, B, C, D)
    if not all(isinstance(a, types.Array) for a in arrays):
        return False
    acc = C.dtype
    if acc not in (types.float32, types.float64) or D.dtype != acc:
        return False
    return all(a.dtype == acc or (acc == types.float32 and a.dtype in _HALF) for a in (A, B))


@intrinsic(prefer_literal=True)
def outer_product(typingctx, MR, NV, U, PF, PF_ON_B, A, a0, lda, ldaj, B, b0, ldb, nk, ntail, C,
                  c0, ldc, ldcn, nrows, ncols, beta, D, d0, add_d, pf):
    """The microkernel: an MR x (NV vectors) register tile, reduction split U, PF software
    prefetches per step into A (into B with PF_ON_B). MR, NV, U, PF, PF_ON_B must be
    compile-time integer constants (a kernel factory's closure ints, or literals): each tuple
    is its own code, and a closure holding only ints keeps Numba's on-disk cache valid.

      for i < nrows, n < ncols:
        C[c0 + i*ldc + n*ldcn] = (C[...] if beta) + (D[d0 + i] if add_d) + sum_j a(i,j) b(j,n)
      U == 1: sum over j < nk of A[a0 + i*lda + j*ldaj] * B[b0 + j*ldb + n], n < NV*VL.
      U  > 1: NV must be 1, n < G = VL/U, steps t = j*U + u, j < nk, u < U, and then the steps
              j = nk, u < ntail (a last, partial group: A is read masked there; B's row nk must
              exist, zero-padded): A[a0 + i*lda + j*ldaj + u] * B[b0 + j*ldb + u*G + n].
    A, B, C, D: 1-D C-contiguous arrays of one float dtype, offsets and strides in elements;
    with a float32 C, A and/or B may hold 16-bit storage (bfloat16 as uint16, float16 as int16:
    dtypes.py), widened to float32 in registers as each element is loaded.
    PF > 0: step j also prefetches (into L2) the PF cache lines of A (or B) from element
    pf + j*PF*64/itemsize on: a caller streaming a bank from memory in short rows (~1.5 KB
    each, too short for the hardware prefetchers to ramp up) points pf at what it reads next,
    so it arrives during this call (measured 24 -> 15 us per alexnet_conv1 position on one
    core; prefetching into L1 instead: 18 us). A prefetch never faults: pf may run past the
    array.
    """
    consts = (MR, NV, U, PF, PF_ON_B)
    if not all(isinstance(t, types.IntegerLiteral) for t in consts):
        raise errors.TypingError("outer_product: MR, NV, U, PF, PF_ON_B must be compile-time "
                                 f"integer constants, got {consts}")
    mr, nv, u, npf, pfb = (t.literal_value for t in consts)
    if u > 1 and nv != 1:
        raise errors.TypingError("outer_product: a split reduction (U > 1) takes NV = 1")
    if not _operands_ok(A, B, C, D):
        return None
    sig = types.void(MR, NV, U, PF, PF_ON_B, A, a0, lda, ldaj, B, b0, ldb, nk, ntail, C, c0, ldc,
                     ldcn, nrows, ncols, beta, D, d0, add_d, pf)

    def codegen(context, builder, signature, args):
        sub = signature.replace(args=signature.args[5:])
        return _emit(context, builder, sub, args[5:], mr, nv, u, npf, bool(pfb))

    return sig, codegen


@intrinsic(prefer_literal=True)
def outer_product_dot(typingctx, MR, PF, A, a0, lda, ldaj, B, b0, ldb, nk, ntail, C, c0, ldc,
                      ldcn, nrows, ncols, beta, D, d0, add_d, pf):
    """outer_product on AVX512_BF16's dot-product instruction: A and B bfloat16 (uint16
    views), C and D float32, a split reduction of U = 4 steps per vector and G = 8 columns.

    B's row j holds 4 steps of 8 columns end to end (lane u*8 + n: step 4j + u, column n: the
    natural T x 8 layout, as outer_product's U > 1), 32 bfloat16 in one 64-byte load. One
    vpermw per step pairs them as vdpbf16ps wants (dword lane 2n + p: steps 4j + 2p and
    4j + 2p + 1 of column n) and A's four steps are one 64-bit broadcast, so a step is MR
    instructions that each do 32 multiply-adds (vdpbf16ps: each product of two bfloat16 is exact
    in float32, summed in float32 with round to nearest even; denormals flushed to zero) where
    the widening path does 16 per FMA plus two shuffles of A. The 2 lanes of a column are added
    in the epilogue. NV = 1; every other argument as outer_product's (ntail: the steps of the
    last, partial group, A read masked there; B's row nk must exist, zero-padded).
    Only where config.DOT_BF16 (the target has avx512bf16)."""
    consts = (MR, PF)
    if not all(isinstance(t, types.IntegerLiteral) for t in consts):
        raise errors.TypingError("outer_product_dot: MR, PF must be compile-time integer "
                                 f"constants, got {consts}")
    mr, npf = (t.literal_value for t in consts)
    if not (_operands_ok(A, B, C, D) and A.dtype == B.dtype == types.uint16
            and C.dtype == types.float32):
        return None
    sig = types.void(MR, PF, A, a0, lda, ldaj, B, b0, ldb, nk, ntail, C, c0, ldc, ldcn, nrows,
                     ncols, beta, D, d0, add_d, pf)

    def codegen(context, builder, signature, args):
        sub = signature.replace(args=signature.args[2:])
        return _emit(context, builder, sub, args[2:], mr, 1, 4, npf, False, dot=True)

    return sig, codegen


@intrinsic(prefer_literal=True)
def outer_product_nested(typingctx, MR, NV, A, a0, lda, ldaj, B, b0, ldb, nk, C, c0, ldc, ldcn,
                         nrows, ncols, beta, D, d0, add_d, nk1, ldb1, nk2, ldb2):
    """outer_product (U = 1, no prefetch) whose reduction runs over a 3-level index
    j = (j2*nk1 + j1)*nk + j0 (j2 < nk2, j1 < nk1, j0 < nk): A's step j is at a0 + i*lda +
    j*ldaj as before, B's at b0 + j2*ldb2 + j1*ldb1 + j0*ldb. A direct convolution: B's rows
    are read in place from the input (j2 = channel, j1 = kernel row, j0 = kernel column), with
    no gathered copy."""
    consts = (MR, NV)
    if not all(isinstance(t, types.IntegerLiteral) for t in consts):
        raise errors.TypingError("outer_product_nested: MR, NV must be compile-time integer "
                                 f"constants, got {consts}")
    mr, nv = (t.literal_value for t in consts)
    if not _operands_ok(A, B, C, D):
        return None
    sig = types.void(MR, NV, A, a0, lda, ldaj, B, b0, ldb, nk, C, c0, ldc, ldcn, nrows, ncols,
                     beta, D, d0, add_d, nk1, ldb1, nk2, ldb2)

    def codegen(context, builder, signature, args):
        a = signature.args
        i64 = lambda k: context.cast(builder, args[k], a[k], types.int64)  # noqa: E731
        zero = context.get_constant(types.int64, 0)
        # the flat operand list of outer_product: ntail = 0 and pf = 0
        sub_args = list(args[2:10]) + [zero] + list(args[10:20]) + [zero]
        sub_tys = list(a[2:10]) + [types.int64] + list(a[10:20]) + [types.int64]
        sub = signature.replace(args=tuple(sub_tys))
        return _emit(context, builder, sub, sub_args, mr, nv, 1, 0, False,
                     nest=(i64(20), i64(21), i64(22), i64(23)))

    return sig, codegen


@intrinsic(prefer_literal=True)
def outer_product_stream(typingctx, MR, NV, A, a0, lda, ldaj, B, b0, ldb, nk, C, c0, ldc, nrows,
                         ncols):
    """outer_product (U = 1, no prefetch, no beta, no D, unit column stride) that writes C
    straight to memory: each whole vector whose address is vector-aligned with a non-temporal
    store (the rest with ordinary masked stores). For a tile of an output written once and
    not read again soon (a locally-connected weight gradient's bank): no read for ownership
    and no staging buffer copied out afterwards (stream_copy's second pass). The caller issues
    store_fence() before other threads may read C. float32 / float64 C only. (Adding into C
    this way, its old value read in the epilogue, was slower than the staged add: vgg_3x3's
    backward into grad_weight= 90 vs 81 ms.)"""
    consts = (MR, NV)
    if not all(isinstance(t, types.IntegerLiteral) for t in consts):
        raise errors.TypingError("outer_product_stream: MR, NV must be compile-time integer "
                                 f"constants, got {consts}")
    mr, nv = (t.literal_value for t in consts)
    if not (_operands_ok(A, B, C, C) and C.dtype in (types.float32, types.float64)):
        return None
    sig = types.void(MR, NV, A, a0, lda, ldaj, B, b0, ldb, nk, C, c0, ldc, nrows, ncols)

    def codegen(context, builder, signature, args):
        a = signature.args
        zero = context.get_constant(types.int64, 0)
        one = context.get_constant(types.int64, 1)
        false = context.get_constant(types.boolean, False)
        # outer_product's operand list: ntail = 0, ldcn = 1, beta off, D = C unread, pf = 0
        flat = [(args[k], a[k]) for k in range(2, 10)] + [(zero, types.int64)] + [
            (args[k], a[k]) for k in range(10, 13)] + [(one, types.int64)] + [
            (args[13], a[13]), (args[14], a[14]), (false, types.boolean), (args[10], a[10]),
            (zero, types.int64), (false, types.boolean), (zero, types.int64)]
        sub = signature.replace(args=tuple(t for _, t in flat))
        return _emit(context, builder, sub, [v for v, _ in flat], mr, nv, 1, 0, False,
                     stream=True)

    return sig, codegen


@intrinsic
def store_fence(typingctx):
    """Order this thread's non-temporal stores before what it does next (sfence on x86)."""
    def codegen(context, builder, signature, args):
        _fence(builder)
        return context.get_dummy_value()
    return types.void(), codegen


def _fence(builder):
    if _X86:  # sfence: what Intel and AMD name for non-temporal stores (a locked
        # instruction, LLVM's seq_cst fence on x86, is not documented to drain them)
        builder.call(_declare(builder.module, "llvm.x86.sse.sfence",
                              ir.FunctionType(ir.VoidType(), [])), [])
    else:
        builder.fence("seq_cst")


@intrinsic(prefer_literal=True)
def outer_product_pairs(typingctx, MR, NV, A, a0, lda, B, b0, ldb, nk, C, c0, ldc, nrows, ncols,
                        beta, D, d0, add_d, nk1, ldb1, nk2, ldb2):
    """outer_product on AVX512_BF16's vdpbf16ps with the reduction taken in pairs of steps that
    the caller has laid out that way (no shuffles): A and B bfloat16 (uint16 views), C and D
    float32, U = 1 in every other respect (NV vectors of VL float32 columns, one column a lane).

      C[c0 + i*ldc + n] = (C[...] if beta) + (D[d0 + i] if add_d)
                          + sum_j sum_p A[a0 + i*lda + 2j + p] * B[(pair j) + 2n + p]
    over pairs j = (j2*nk1 + j1)*nk + j0 (the nested index of outer_product_nested: B's pair j
    at b0 + j2*ldb2 + j1*ldb1 + j0*ldb; A's at a0 + i*lda + 2j), p < 2. So A's row holds the
    steps in order (one 32-bit broadcast per pair) and B's row of a pair holds each column's
    two steps side by side: word 2n + p, 2*VL words a vector. A step count that is odd is the
    caller's to pad with a zero step. B is read in whole vectors (masked loads of 16-bit words
    made a tail block 1.5x slower): every row read must have NV*VL columns (2*NV*VL words) in
    the caller's buffer, what lies past ncols only reaches lanes whose stores are masked off
    (vdpbf16ps treats denormals as zero: no slow path). C's stores are masked past ncols.
    C float32, or bfloat16 (uint16: each sum rounded to nearest even as it is stored; beta
    must be off there). Only where config.DOT_BF16."""
    consts = (MR, NV)
    if not all(isinstance(t, types.IntegerLiteral) for t in consts):
        raise errors.TypingError("outer_product_pairs: MR, NV must be compile-time integer "
                                 f"constants, got {consts}")
    mr, nv = (t.literal_value for t in consts)
    if not (all(isinstance(a, types.Array) for a in (A, B, C, D))
            and A.dtype == B.dtype == types.uint16 and D.dtype == types.float32
            and C.dtype in (types.float32, types.uint16)):
        return None
    sig = types.void(MR, NV, A, a0, lda, B, b0, ldb, nk, C, c0, ldc, nrows, ncols, beta, D, d0,
                     add_d, nk1, ldb1, nk2, ldb2)

    def codegen(context, builder, signature, args):
        a = signature.args
        i64 = lambda k: context.cast(builder, args[k], a[k], types.int64)  # noqa: E731
        zero = context.get_constant(types.int64, 0)
        one = context.get_constant(types.int64, 1)
        two = context.get_constant(types.int64, 2)
        # outer_product's operand list: ldaj = 2, ntail = 0, ldcn = 1, pf = 0
        flat = [(args[2], a[2]), (args[3], a[3]), (args[4], a[4]), (two, types.int64),
                (args[5], a[5]), (args[6], a[6]), (args[7], a[7]), (args[8], a[8]),
                (zero, types.int64), (args[9], a[9]), (args[10], a[10]), (args[11], a[11]),
                (one, types.int64), (args[12], a[12]), (args[13], a[13]),
                (args[14], a[14]), (args[15], a[15]), (args[16], a[16]),
                (args[17], a[17]), (zero, types.int64)]
        sub = signature.replace(args=tuple(t for _, t in flat))
        return _emit(context, builder, sub, [v for v, _ in flat], mr, nv, 1, 0, False,
                     nest=(i64(18), i64(19), i64(20), i64(21)), dot="pairs")

    return sig, codegen


def _emit(context, builder, signature, args, MR, NV, U, PF, PF_ON_B, nest=None, dot=False,
          stream=False):
    tys = signature.args
    vals = [context.cast(builder, v, t, types.int64) if isinstance(t, types.Integer) else v
            for v, t in zip(args, tys)]
    if nest is not None:  # (nk1, ldb1, nk2, ldb2), already i64
        nk1, ldb1, nk2, ldb2 = nest
    (aA, a0, lda, ldaj, aB, b0, ldb, nk, ntail, aC, c0, ldc, ldcn, nrows, ncols, beta, aD, d0,
     add_d, pf) = vals
    beta = context.cast(builder, beta, tys[15], types.boolean)
    add_d = context.cast(builder, add_d, tys[18], types.boolean)
    # the accumulator: C's dtype; a 16-bit C (outer_product_pairs) accumulates in float32 and
    # is stored rounded
    c_kind = _HALF.get(tys[9].dtype)
    flt = ir.FloatType() if c_kind else context.get_value_type(tys[9].dtype)
    itemsize = context.get_abi_sizeof(flt)
    VL = VEC_BYTES // itemsize
    # dot (outer_product_dot): a vector of VL float32 lanes holds FOLD = 2 lanes per column,
    # each summing pairs of steps inside the instruction; otherwise U lanes per column
    FOLD = 2 if dot is True else U
    # A's and B's element types and, for 16-bit storage, how they widen (None: already flt)
    a_ety, b_ety = (context.get_value_type(tys[k].dtype) for k in (0, 4))
    a_kind, b_kind = (_HALF.get(tys[k].dtype) for k in (0, 4))
    a_size, b_size = (context.get_abi_sizeof(t) for t in (a_ety, b_ety))
    G = VL // FOLD                     # output columns per vector
    vty = ir.VectorType(flt, VL)
    mty = ir.VectorType(ir.IntType(1), VL)
    pA, pB, pC, pD = (context.make_array(tys[k])(context, builder, a).data
                      for k, a in ((0, aA), (4, aB), (9, aC), (16, aD)))
    mod = builder.module
    elt = 'f32' if itemsize == 4 else 'f64'
    sfx = f"v{VL}{elt}"
    fma = _declare(mod, f"llvm.fma.{sfx}", ir.FunctionType(vty, [vty, vty, vty]))
    mload = _declare(mod, f"llvm.masked.load.{sfx}.p0",
                     ir.FunctionType(vty, [vty.as_pointer(), I32, mty, vty]))

    def masked_load(ety, n):
        """llvm.masked.load of n elements of type ety (float or 16-bit storage)."""
        t = ir.VectorType(ety, n)
        name = {ir.FloatType(): "f32", ir.DoubleType(): "f64"}.get(ety, "i16")
        return _declare(mod, f"llvm.masked.load.v{n}{name}.p0",
                        ir.FunctionType(t, [t.as_pointer(), I32, ir.VectorType(ir.IntType(1), n),
                                            t]))
    mstore = _declare(mod, f"llvm.masked.store.{sfx}.p0",
                      ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), I32, mty]))
    ity = ir.VectorType(ir.IntType(16), VL)
    mstore16 = _declare(mod, f"llvm.masked.store.v{VL}i16.p0",
                        ir.FunctionType(ir.VoidType(), [ity, ity.as_pointer(), I32, mty]))
    i8p = ir.IntType(8).as_pointer()
    prefetch = _declare(mod, "llvm.prefetch.p0", ir.FunctionType(ir.VoidType(),
                                                                 [i8p, I32, I32, I32]))
    align = ir.Constant(I32, itemsize)
    zero = ir.Constant(vty, None)
    line = 64 // (b_size if PF_ON_B else a_size)     # elements of the prefetched operand

    def c64(v):
        return ir.Constant(I64, v)

    def vptr(base, off):
        return builder.bitcast(builder.gep(base, [off]), vty.as_pointer())

    def splat(x, ty=vty):
        v = builder.insert_element(ir.Constant(ty, None), x, ir.Constant(I32, 0))
        return builder.shuffle_vector(v, ir.Constant(ty, None), _i32s([0] * ty.count))

    def lane_mask(count):
        # lane c is on if c < count
        return builder.icmp_signed("<", ir.Constant(ir.VectorType(I64, VL), list(range(VL))),
                                   splat(count, ir.VectorType(I64, VL)))

    # row offsets, clamped: a short edge tile recomputes the last row
    last = builder.sub(nrows, c64(1))
    a_rows = []
    for i in range(MR):
        r = builder.select(builder.icmp_signed("<", c64(i), nrows), c64(i), last)
        a_rows.append(builder.add(a0, builder.mul(r, lda)))
    # B's column masks (U == 1 edge tiles)
    bcols = ncols if U == 1 else c64(VL)
    bmasks = [lane_mask(builder.sub(bcols, c64(v * VL))) for v in range(NV)]
    bfull = builder.icmp_signed("==", bcols, c64(NV * VL))
    uty = ir.VectorType(flt, U)
    a_pattern = _i32s([c % U for c in range(VL)])
    b_perm = _i32s([(c % U) * G + c // U for c in range(VL)])
    if dot:
        bw_ty = ir.VectorType(ir.IntType(16), 2 * VL)
        bf_ty = ir.VectorType(_BFLOAT, 2 * VL)
        dpbf16_fn = _declare(mod, f"llvm.x86.avx512bf16.dpbf16ps.{VL * 32}",
                             ir.FunctionType(vty, [vty, bf_ty, bf_ty]))

        def dpbf16(acc, bvec, avec):
            return builder.call(dpbf16_fn, [acc, builder.bitcast(bvec, bf_ty),
                                            builder.bitcast(avec, bf_ty)])
    pairs = dot == "pairs"
    if dot is True:
        # 2*VL bfloat16 per vector; word w of the permuted B: dword lane L = w // 2 = 2n + p
        # (column n, step pair p), its low / high word steps 2p / 2p + 1 (w % 2) of column n,
        # at word (2p + w % 2) * G + n of the natural row; A's U = 4 steps repeat every 4 words
        bw_ty = ir.VectorType(ir.IntType(16), 2 * VL)
        b_perm = _i32s([(2 * ((w // 2) % 2) + w % 2) * G + (w // 2) // 2 for w in range(2 * VL)])
        a_pattern = _i32s([w % U for w in range(2 * VL)])
    accs = [[cgutils.alloca_once(builder, vty) for _ in range(NV)] for _ in range(MR)]
    for row in accs:
        for a in row:
            builder.store(zero, a)

    def load_b(j, masked, boff=None):
        if boff is None:
            boff = builder.add(b0, builder.mul(j, ldb))
        out = []
        if pairs:    # NV whole loads of 2*VL bfloat16, already paired
            for v in range(NV):
                p = builder.bitcast(builder.gep(pB, [builder.add(boff, c64(2 * v * VL))]),
                                    bw_ty.as_pointer())
                out.append(builder.load(p, align=b_size))
            return out
        if dot:      # one load of 2*VL bfloat16, paired by one vpermw
            p = builder.bitcast(builder.gep(pB, [boff]), bw_ty.as_pointer())
            val = builder.load(p, align=b_size)
            return [builder.shuffle_vector(val, ir.Constant(bw_ty, None), b_perm)]
        bvty = ir.VectorType(b_ety, VL)
        for v in range(NV):
            p = builder.bitcast(builder.gep(pB, [builder.add(boff, c64(v * VL))]),
                                bvty.as_pointer())
            val = (builder.call(masked_load(b_ety, VL), [p, ir.Constant(I32, b_size), bmasks[v],
                                                         ir.Constant(bvty, None)]) if masked
                   else builder.load(p, align=b_size))
            if b_kind is not None:
                val = widen_ir(builder, val, b_kind)
            if U > 1:
                val = builder.shuffle_vector(val, zero, b_perm)
            out.append(val)
        return out

    def load_a(i, j, umask=None):
        off = builder.add(a_rows[i], builder.mul(j, ldaj))
        if pairs:    # the pair's 32 bits, broadcast
            s = builder.load(builder.bitcast(builder.gep(pA, [off]), I32.as_pointer()),
                             align=a_size)
            return splat(s, ir.VectorType(I32, VL))
        if U == 1:
            s = builder.load(builder.gep(pA, [off]))
            return splat(s if a_kind is None else widen_ir(builder, s, a_kind))
        auty = ir.VectorType(a_ety, U)
        p = builder.bitcast(builder.gep(pA, [off]), auty.as_pointer())
        if umask is None:
            s = builder.load(p, align=a_size)
        else:
            s = builder.call(masked_load(a_ety, U), [p, ir.Constant(I32, a_size), umask,
                                                     ir.Constant(auty, None)])
        if dot:      # the U steps' bits, repeated: one 64-bit broadcast
            return builder.shuffle_vector(s, ir.Constant(auty, None), a_pattern)
        if a_kind is not None:
            s = widen_ir(builder, s, a_kind)
        return builder.shuffle_vector(s, ir.Constant(uty, None), a_pattern)

    def step(j, masked, umask=None, boff=None):
        bv = load_b(j, masked, boff)
        for i in range(MR):
            a = load_a(i, j, umask)
            for v in range(NV):
                acc = builder.load(accs[i][v])
                if dot:
                    builder.store(dpbf16(acc, bv[v], a), accs[i][v])
                else:
                    builder.store(builder.call(fma, [a, bv[v], acc]), accs[i][v])

    def inner(masked, jbase, bbase):
        with cgutils.for_range(builder, nk) as loop:
            j = builder.add(jbase, loop.index)
            for f in range(PF):
                off = builder.add(builder.add(pf, builder.mul(j, c64(PF * line))),
                                  c64(f * line))
                builder.call(prefetch, [builder.bitcast(builder.gep(pB if PF_ON_B else pA,
                                                                    [off]), i8p),
                                        ir.Constant(I32, 0), ir.Constant(I32, 2),
                                        ir.Constant(I32, 1)])
            step(j, masked, None, builder.add(bbase, builder.mul(loop.index, ldb)))

    def main_loop(masked):
        if nest is None:
            inner(masked, c64(0), b0)
            return
        with cgutils.for_range(builder, nk2) as l2:
            with cgutils.for_range(builder, nk1) as l1:
                jbase = builder.mul(builder.add(builder.mul(l2.index, nk1), l1.index), nk)
                bbase = builder.add(b0, builder.add(builder.mul(l2.index, ldb2),
                                                    builder.mul(l1.index, ldb1)))
                inner(masked, jbase, bbase)

    if pairs:        # (B never masked)
        main_loop(False)
    else:
        with builder.if_else(bfull) as (then, otherwise):
            with then:
                main_loop(False)
            with otherwise:
                main_loop(True)
    if U > 1:  # the last, partial group of steps
        with builder.if_then(builder.icmp_signed(">", ntail, c64(0))):
            umask = builder.icmp_signed("<", ir.Constant(ir.VectorType(I64, U), list(range(U))),
                                        splat(ntail, ir.VectorType(I64, U)))
            step(nk, False, umask)

    # epilogue: fold the split lanes, add D and (beta) C, store
    cmask = [lane_mask(builder.sub(ncols, c64(v * VL))) for v in range(NV)]
    unit = builder.icmp_signed("==", ldcn, c64(1))
    dslot = cgutils.alloca_once(builder, flt)
    for i in range(MR):
        with builder.if_then(builder.icmp_signed("<", c64(i), nrows)):
            crow = builder.add(c0, builder.mul(c64(i), ldc))
            builder.store(ir.Constant(flt, 0.0), dslot)
            with builder.if_then(add_d):      # D is only read when asked for
                builder.store(builder.load(builder.gep(pD, [builder.add(d0, c64(i))])), dslot)
            dval = builder.load(dslot)
            for v in range(NV):
                val = builder.load(accs[i][v])
                if FOLD > 1:
                    s = FOLD // 2
                    while s >= 1:  # lane n*FOLD gets the sum of lanes n*FOLD .. + FOLD - 1
                        val = builder.fadd(val, builder.shuffle_vector(
                            val, zero, _i32s([c + s for c in range(VL)])))
                        s //= 2
                    val = builder.shuffle_vector(val, zero, _i32s(
                        [c * FOLD if c < G else VL for c in range(VL)]))
                val = builder.fadd(val, splat(dval))
                # C is read only when beta: a select would add whatever the (maybe
                # uninitialised) output holds, and a denormal there costs a microcode assist
                # per lane (that made the epilogue 3x the whole reduction at alexnet_conv1)
                if c_kind:     # rounded into 16-bit storage (beta is off there)
                    with builder.if_else(unit) as (contiguous, strided):
                        with contiguous:
                            p = builder.bitcast(builder.gep(pC, [builder.add(crow, c64(v * VL))]),
                                                ity.as_pointer())
                            builder.call(mstore16, [narrow_ir(builder, val, c_kind), p,
                                                    ir.Constant(I32, 2), cmask[v]])
                        with strided:
                            for c in range(VL):
                                col = v * VL + c
                                with builder.if_then(builder.icmp_signed("<", c64(col), ncols)):
                                    p = builder.gep(pC, [builder.add(crow, builder.mul(
                                        c64(col), ldcn))])
                                    x = builder.extract_element(val, ir.Constant(I32, c))
                                    builder.store(narrow_ir(builder, x, c_kind), p)
                    continue
                with builder.if_else(unit) as (contiguous, strided):
                    with contiguous:
                        p = vptr(pC, builder.add(crow, c64(v * VL)))
                        if stream:   # (beta is off) a whole aligned vector: non-temporal
                            whole = builder.and_(
                                builder.icmp_signed("<=", c64((v + 1) * VL), ncols),
                                builder.icmp_unsigned("==", builder.and_(
                                    builder.ptrtoint(p, I64), c64(VEC_BYTES - 1)), c64(0)))
                            with builder.if_else(whole) as (nt, masked):
                                with nt:
                                    st = builder.store(val, p, align=VEC_BYTES)
                                    st.set_metadata("nontemporal", builder.module.add_metadata(
                                        [ir.Constant(I32, 1)]))
                                with masked:
                                    builder.call(mstore, [val, p, align, cmask[v]])
                        else:
                            # a whole vector: plain load / store (AVX2's masked store,
                            # vmaskmovps, is microcoded on AMD: in Zen 4's AVX2 build the
                            # local weight-gradient kernel took 80 ms at vgg_3x3 through it,
                            # 57 ms without)
                            full = builder.icmp_signed("<=", c64((v + 1) * VL), ncols)
                            slot = cgutils.alloca_once_value(builder, val)
                            with builder.if_else(full) as (whole, part):
                                with whole:
                                    with builder.if_then(beta):
                                        old = builder.load(p, align=itemsize)
                                        builder.store(builder.fadd(val, old), slot)
                                    builder.store(builder.load(slot), p, align=itemsize)
                                with part:
                                    with builder.if_then(beta):
                                        old = builder.call(mload, [p, align, cmask[v], zero])
                                        builder.store(builder.fadd(val, old), slot)
                                    builder.call(mstore, [builder.load(slot), p, align,
                                                          cmask[v]])
                    with strided:
                        for c in range(VL if U == 1 else G):
                            col = v * VL + c
                            with builder.if_then(builder.icmp_signed("<", c64(col), ncols)):
                                p = builder.gep(pC, [builder.add(crow, builder.mul(
                                    c64(col), ldcn))])
                                x = builder.extract_element(val, ir.Constant(I32, c))
                                xs = cgutils.alloca_once_value(builder, x)
                                with builder.if_then(beta):
                                    builder.store(builder.fadd(x, builder.load(p)), xs)
                                builder.store(builder.load(xs), p)
    return context.get_dummy_value()


def _run_codegen(add):
    """Codegen of copy_run (add=False) and add_run (add=True): whole vectors, then one masked
    vector for the rest."""
    def codegen(context, builder, signature, args):
        tys = signature.args
        pd, ps = (context.make_array(tys[k])(context, builder, args[k]).data for k in (0, 2))
        d0, s0, n = (context.cast(builder, args[k], tys[k], types.int64) for k in (1, 3, 4))
        ety = context.get_value_type(tys[0].dtype)
        esize = context.get_abi_sizeof(ety)
        VL = VEC_BYTES // esize
        mty = ir.VectorType(ir.IntType(1), VL)
        if add:       # the float type itself
            vty = ir.VectorType(ety, VL)
            name = {4: "f32", 8: "f64"}[esize]
        else:         # moved as integers of the element's size: the same bits, any type
            ety = ir.IntType(8 * esize)
            vty = ir.VectorType(ety, VL)
            name = f"i{8 * esize}"
        mload = _declare(builder.module, f"llvm.masked.load.v{VL}{name}.p0",
                         ir.FunctionType(vty, [vty.as_pointer(), I32, mty, vty]))
        mstore = _declare(builder.module, f"llvm.masked.store.v{VL}{name}.p0",
                          ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), I32, mty]))
        c64 = lambda v: ir.Constant(I64, v)  # noqa: E731
        dp = builder.bitcast(builder.gep(pd, [d0]), ety.as_pointer())
        sp = builder.bitcast(builder.gep(ps, [s0]), ety.as_pointer())

        def at(base, i):
            return builder.bitcast(builder.gep(base, [i]), vty.as_pointer())

        nvec = builder.sdiv(n, c64(VL))
        with cgutils.for_range(builder, nvec) as loop:
            i = builder.mul(loop.index, c64(VL))
            v = builder.load(at(sp, i), align=esize)
            if add:
                v = builder.fadd(v, builder.load(at(dp, i), align=esize))
            builder.store(v, at(dp, i), align=esize)
        done = builder.mul(nvec, c64(VL))
        rest = builder.sub(n, done)
        with builder.if_then(builder.icmp_signed(">", rest, c64(0))):
            lanes_ = ir.Constant(ir.VectorType(I64, VL), list(range(VL)))
            r = builder.insert_element(ir.Constant(ir.VectorType(I64, VL), None), rest,
                                       ir.Constant(I32, 0))
            r = builder.shuffle_vector(r, ir.Constant(ir.VectorType(I64, VL), None),
                                       _i32s([0] * VL))
            mask = builder.icmp_signed("<", lanes_, r)
            align = ir.Constant(I32, esize)
            v = builder.call(mload, [at(sp, done), align, mask, ir.Constant(vty, None)])
            if add:
                v = builder.fadd(v, builder.call(mload, [at(dp, done), align, mask,
                                                         ir.Constant(vty, None)]))
            builder.call(mstore, [v, at(dp, done), align, mask])
        return context.get_dummy_value()
    return codegen


@intrinsic
def copy_run(typingctx, dst, d0, src, s0, n):
    """dst[d0 + i] = src[s0 + i], i < n, for short runs (a few elements to a few vectors, e.g.
    the S inputs of one kernel row gathered per position and image): whole vectors, then one
    masked vector for the rest. A plain loop over a slice of runtime length costs a vector
    loop's setup and a scalar remainder per run: with this and add_run, deepface_l4's local
    backward (S = 9) went from 26 to 21 ms in float32."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and src.dtype == dst.dtype and src.dtype.bitwidth in (8, 16, 32, 64)):
        return None
    return types.void(dst, d0, src, s0, n), _run_codegen(False)


@intrinsic
def copy_run_over(typingctx, dst, d0, src, s0, n):
    """dst[d0 + i] = src[s0 + i], i < n, in whole unmasked vectors of the narrowest width that
    holds n (16, 32 or 64 bytes; longer runs: 64-byte vectors, the last one whole too), so it
    may write up to a vector less one element past d0 + n and read as far past s0 + n: the
    caller's buffers have that room, and its runs go to increasing addresses, each overwriting
    the last one's overrun (a gathered patch). One load and one store a run where copy_run's
    masked pair cost ~9 cycles a run of 9 (deepface_l4's patch gather: 4.3 ms of its 19 ms
    weight gradient)."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and src.dtype == dst.dtype and src.dtype.bitwidth in (8, 16, 32, 64)):
        return None

    def codegen(context, builder, signature, args):
        tys = signature.args
        pd, ps = (context.make_array(tys[k])(context, builder, args[k]).data for k in (0, 2))
        d0, s0, n = (context.cast(builder, args[k], tys[k], types.int64) for k in (1, 3, 4))
        esize = context.get_abi_sizeof(context.get_value_type(tys[0].dtype))
        ety = ir.IntType(8 * esize)        # moved as integers: the same bits, any type
        dp = builder.gep(builder.bitcast(pd, ety.as_pointer()), [d0])
        sp = builder.gep(builder.bitcast(ps, ety.as_pointer()), [s0])
        c64 = lambda v: ir.Constant(I64, v)  # noqa: E731

        def move(vl, off):
            vty = ir.VectorType(ety, vl)
            v = builder.load(builder.bitcast(builder.gep(sp, [off]), vty.as_pointer()),
                             align=esize)
            builder.store(v, builder.bitcast(builder.gep(dp, [off]), vty.as_pointer()),
                          align=esize)
        VL = VEC_BYTES // esize
        small = [w for w in (16 // esize, 32 // esize) if 0 < w < VL]

        def widths(ws):
            if not ws:           # whole full-width vectors
                nvec = builder.sdiv(builder.add(n, c64(VL - 1)), c64(VL))
                with cgutils.for_range(builder, nvec) as loop:
                    move(VL, builder.mul(loop.index, c64(VL)))
                return
            with builder.if_else(builder.icmp_signed("<=", n, c64(ws[0]))) as (fits, wider):
                with fits:
                    move(ws[0], c64(0))
                with wider:
                    widths(ws[1:])
        widths(small)
        return context.get_dummy_value()
    return types.void(dst, d0, src, s0, n), codegen


@intrinsic
def add_run(typingctx, dst, d0, src, s0, n):
    """dst[d0 + i] += src[s0 + i], i < n (float32 / float64), as copy_run: the scatter of a
    position's patch gradient into the input gradient, S values per kernel row."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and src.dtype == dst.dtype and src.dtype in (types.float32, types.float64)):
        return None
    return types.void(dst, d0, src, s0, n), _run_codegen(True)


@intrinsic
def stream_copy(typingctx, dst, d0, src, s0, n):
    """dst[d0 + i] = src[s0 + i], i < n, with non-temporal vector stores.

    For an output written once and not read again soon (a locally-connected weight gradient,
    hundreds of MB): an ordinary store first reads each destination line into the cache (a
    read for ownership), so writing 422 MB moved 844; a non-temporal store writes whole lines
    to memory and reads nothing. Stores are aligned to the vector (x86's movntps needs it): the
    unaligned head and the tail are scalar. A fence at the end orders the weakly ordered
    non-temporal stores before anything this thread does next (another thread reading the
    output after the parallel region's join sees them).

    A 16-bit storage dst (bfloat16 / float16 view) with a float32 src: each element is rounded
    to nearest even on the way (narrow_ir), so the stream to memory is half as many bytes."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and src.dtype in (types.float32, types.float64)
            and (src.dtype == dst.dtype or (src.dtype == types.float32 and dst.dtype in _HALF))):
        return None
    sig = types.void(dst, d0, src, s0, n)
    kind = _HALF.get(dst.dtype)

    def codegen(context, builder, signature, args):
        tys = signature.args
        pd, ps = (context.make_array(tys[k])(context, builder, args[k]).data for k in (0, 2))
        d0, s0, n = (context.cast(builder, args[k], tys[k], types.int64) for k in (1, 3, 4))
        flt = context.get_value_type(tys[2].dtype)
        dty = context.get_value_type(tys[0].dtype)
        dsize = context.get_abi_sizeof(dty)
        VL = VEC_BYTES // context.get_abi_sizeof(flt)
        vty = ir.VectorType(flt, VL)
        dvty = ir.VectorType(dty, VL)
        c64 = lambda v: ir.Constant(I64, v)  # noqa: E731
        dp = builder.gep(pd, [d0])
        sp = builder.gep(ps, [s0])
        # elements before the first vector-aligned destination address, at most n
        addr = builder.ptrtoint(dp, I64)
        mis = builder.and_(builder.udiv(addr, c64(dsize)), c64(VL - 1))
        head = builder.and_(builder.sub(c64(VL), mis), c64(VL - 1))
        head = builder.select(builder.icmp_signed("<", head, n), head, n)
        nvec = builder.sdiv(builder.sub(n, head), c64(VL))
        body_end = builder.add(head, builder.mul(nvec, c64(VL)))

        def stored(val):
            return val if kind is None else narrow_ir(builder, val, kind)

        def scalar(i):
            builder.store(stored(builder.load(builder.gep(sp, [i]))), builder.gep(dp, [i]))

        with cgutils.for_range(builder, head) as loop:
            scalar(loop.index)
        with cgutils.for_range(builder, nvec) as loop:
            i = builder.add(head, builder.mul(loop.index, c64(VL)))
            val = builder.load(builder.bitcast(builder.gep(sp, [i]), vty.as_pointer()),
                               align=context.get_abi_sizeof(flt))
            st = builder.store(stored(val), builder.bitcast(builder.gep(dp, [i]),
                                                            dvty.as_pointer()),
                               align=VL * dsize)
            st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(I32, 1)]))
        with cgutils.for_range(builder, builder.sub(n, body_end)) as loop:
            scalar(builder.add(body_end, loop.index))
        _fence(builder)
        return context.get_dummy_value()

    return sig, codegen
