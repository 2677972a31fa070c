"""The CPU microkernel every shared-conv pass is built on: a register-blocked "NT" GEMM.

    C[i, j] (+)= sum_t A[i, t] * B[j, t]        0 <= i < I, 0 <= j < J, 0 <= t < T

A and B are flat, C-contiguous 1-D arrays holding rows of length T at a_off + i*lda and
b_off + j*ldb, so every row is a unit-stride stream. C is a flat array addressed
c_off + i*ldci + j*ldcj, so a strided slice of the output (one output row of NCHW) is written in place.

Why this shape: Numba gives no SIMD intrinsics, but LLVM reliably vectorises a loop that keeps
scalar reductions in registers. The microkernel holds MR x NR = 4 x 3 accumulators and runs one
loop over t; LLVM turns each accumulator into an 8-wide (float32) or 4-wide (float64) vector, so
one trip of the vectorised loop is 4 + 3 vector loads feeding 12 vector FMAs, with the 12
accumulators in 12 of the 16 ymm registers. Measured about 69 GFLOP/s on the 2-core Zen 3 host
with operands in cache. Edge tiles clamp the row index (reads stay in bounds, duplicate work)
and guard the stores.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from ..config import MR, NR, njit_options


def typed_zero(a):  # pragma: no cover - replaced by the overload inside jitted code
    return a.dtype.type(0)


@overload(typed_zero, jit_options={"fastmath": True})
def _typed_zero_overload(a):
    # A literal zero of the array's dtype: a float64 literal would turn float32 accumulators
    # into float64 ones and stop the vectoriser.
    if a.dtype == types.float32:
        return lambda a: np.float32(0)
    return lambda a: np.float64(0)


@njit(**njit_options(), inline="always")
def microkernel_4x3(A, a0, lda, B, b0, ldb, T, i0, j0, I, J, C, c0, ldci, ldcj, accumulate):
    # Clamped rows: an edge tile recomputes the last valid row instead of reading past the end.
    ra0 = a0 + min(i0 + 0, I - 1) * lda
    ra1 = a0 + min(i0 + 1, I - 1) * lda
    ra2 = a0 + min(i0 + 2, I - 1) * lda
    ra3 = a0 + min(i0 + 3, I - 1) * lda
    rb0 = b0 + min(j0 + 0, J - 1) * ldb
    rb1 = b0 + min(j0 + 1, J - 1) * ldb
    rb2 = b0 + min(j0 + 2, J - 1) * ldb
    z = typed_zero(C)
    c00 = z; c01 = z; c02 = z
    c10 = z; c11 = z; c12 = z
    c20 = z; c21 = z; c22 = z
    c30 = z; c31 = z; c32 = z
    # Row views, indexed by the loop counter alone: LLVM then knows every index is in
    # [0, T) and drops Numba's negative-index wraparound, which otherwise blocks vectorisation.
    A0 = A[ra0:ra0 + T]; A1 = A[ra1:ra1 + T]; A2 = A[ra2:ra2 + T]; A3 = A[ra3:ra3 + T]
    B0 = B[rb0:rb0 + T]; B1 = B[rb1:rb1 + T]; B2 = B[rb2:rb2 + T]
    for t in range(T):
        b_0 = B0[t]; b_1 = B1[t]; b_2 = B2[t]
        a = A0[t]
        c00 += a * b_0; c01 += a * b_1; c02 += a * b_2
        a = A1[t]
        c10 += a * b_0; c11 += a * b_1; c12 += a * b_2
        a = A2[t]
        c20 += a * b_0; c21 += a * b_1; c22 += a * b_2
        a = A3[t]
        c30 += a * b_0; c31 += a * b_1; c32 += a * b_2
    _store_row(C, c0 + i0 * ldci, ldcj, j0, J, c00, c01, c02, i0 < I, accumulate)
    _store_row(C, c0 + (i0 + 1) * ldci, ldcj, j0, J, c10, c11, c12, i0 + 1 < I, accumulate)
    _store_row(C, c0 + (i0 + 2) * ldci, ldcj, j0, J, c20, c21, c22, i0 + 2 < I, accumulate)
    _store_row(C, c0 + (i0 + 3) * ldci, ldcj, j0, J, c30, c31, c32, i0 + 3 < I, accumulate)


@njit(**njit_options(), inline="always")
def _store_row(C, base, ldcj, j0, J, v0, v1, v2, row_ok, accumulate):
    if not row_ok:
        return
    if accumulate:
        C[base + j0 * ldcj] += v0
        if j0 + 1 < J:
            C[base + (j0 + 1) * ldcj] += v1
        if j0 + 2 < J:
            C[base + (j0 + 2) * ldcj] += v2
    else:
        C[base + j0 * ldcj] = v0
        if j0 + 1 < J:
            C[base + (j0 + 1) * ldcj] = v1
        if j0 + 2 < J:
            C[base + (j0 + 2) * ldcj] = v2


@njit(**njit_options())
def gemm_nt_streamed(A, a0, lda, B, b0, ldb, I, J, T, C, c0, ldci, ldcj, accumulate):
    """gemm_nt for an A that comes from DRAM once and fits in L2 (a locally-connected bank):
    column tiles outermost, so the first pass reads A as one sequential sweep (what the hardware
    prefetchers follow best) and the other passes find it in L2. Measured 8-10% faster than
    gemm_nt's row-tile-outer order on alexnet_conv1 and vgg_3x3 local2d forward."""
    for j0 in range(0, J, NR):
        for i0 in range(0, I, MR):
            microkernel_4x3(A, a0, lda, B, b0, ldb, T, i0, j0, I, J, C, c0, ldci, ldcj,
                            accumulate)


@njit(**njit_options())
def gemm_nt(A, a0, lda, B, b0, ldb, I, J, T, C, c0, ldci, ldcj, accumulate):
    """C (+)= A . B^T over the whole I x J block, serially (callers parallelise around it).

    Loop order: the rows of the outer tile stay in L1 while the inner loop re-streams the other
    operand, so the smaller operand is the re-streamed one (it is the one that fits in L2).
    """
    if J <= I:
        for i0 in range(0, I, MR):
            for j0 in range(0, J, NR):
                microkernel_4x3(A, a0, lda, B, b0, ldb, T, i0, j0, I, J, C, c0, ldci, ldcj,
                                accumulate)
    else:  # column tiles outermost
        gemm_nt_streamed(A, a0, lda, B, b0, ldb, I, J, T, C, c0, ldci, ldcj, accumulate)


# ------------------------------------------------------------------------------- NN "axpy" form
# C[i, t] (+)= sum_j A[i, j] * B[j, t] with a SHORT reduction (j: the batch in the local-layer
# weight gradient, or K in its input gradient) and a long unit-stride t. The NT microkernel above
# would reduce over j, 8 lanes at a time, and pay a horizontal sum per output: useless for j = 8.
# Here t is the vectorised loop: one C row is loaded, gets up to 8 terms (8 B rows, A scalars
# broadcast), and is stored once. Per 8-lane step: 8 B loads + 1 C load + 1 store for 8 FMAs,
# close to the 2 loads/cycle the core sustains. One output row at a time keeps LLVM's runtime
# alias checks (each store against each B row) at 8, the vectoriser's default limit.

@njit(**njit_options(), inline="always")
def _row8(Ci, A, ab, laj, B, bb, ldb, T, assign):
    a0 = A[ab]; a1 = A[ab + laj]; a2 = A[ab + 2 * laj]; a3 = A[ab + 3 * laj]
    a4 = A[ab + 4 * laj]; a5 = A[ab + 5 * laj]; a6 = A[ab + 6 * laj]; a7 = A[ab + 7 * laj]
    B0 = B[bb:bb + T]; B1 = B[bb + ldb:bb + ldb + T]
    B2 = B[bb + 2 * ldb:bb + 2 * ldb + T]; B3 = B[bb + 3 * ldb:bb + 3 * ldb + T]
    B4 = B[bb + 4 * ldb:bb + 4 * ldb + T]; B5 = B[bb + 5 * ldb:bb + 5 * ldb + T]
    B6 = B[bb + 6 * ldb:bb + 6 * ldb + T]; B7 = B[bb + 7 * ldb:bb + 7 * ldb + T]
    if assign:
        for t in range(T):
            Ci[t] = ((a0 * B0[t] + a1 * B1[t]) + (a2 * B2[t] + a3 * B3[t])) + \
                    ((a4 * B4[t] + a5 * B5[t]) + (a6 * B6[t] + a7 * B7[t]))
    else:
        for t in range(T):
            Ci[t] += ((a0 * B0[t] + a1 * B1[t]) + (a2 * B2[t] + a3 * B3[t])) + \
                     ((a4 * B4[t] + a5 * B5[t]) + (a6 * B6[t] + a7 * B7[t]))


@njit(**njit_options(), inline="always")
def _row4(Ci, A, ab, laj, B, bb, ldb, T, assign):
    a0 = A[ab]; a1 = A[ab + laj]; a2 = A[ab + 2 * laj]; a3 = A[ab + 3 * laj]
    B0 = B[bb:bb + T]; B1 = B[bb + ldb:bb + ldb + T]
    B2 = B[bb + 2 * ldb:bb + 2 * ldb + T]; B3 = B[bb + 3 * ldb:bb + 3 * ldb + T]
    if assign:
        for t in range(T):
            Ci[t] = (a0 * B0[t] + a1 * B1[t]) + (a2 * B2[t] + a3 * B3[t])
    else:
        for t in range(T):
            Ci[t] += (a0 * B0[t] + a1 * B1[t]) + (a2 * B2[t] + a3 * B3[t])


@njit(**njit_options(), inline="always")
def _row1(Ci, A, ab, B, bb, T, assign):
    a0 = A[ab]
    B0 = B[bb:bb + T]
    if assign:
        for t in range(T):
            Ci[t] = a0 * B0[t]
    else:
        for t in range(T):
            Ci[t] += a0 * B0[t]


@njit(**njit_options())
def gemm_nn(A, a0, lai, laj, B, b0, ldb, C, c0, ldc, I, J, T, accumulate):
    """C[c0 + i*ldc + t] (+)= sum_j A[a0 + i*lai + j*laj] * B[b0 + j*ldb + t], serially.

    Terms are taken 8 at a time (then 4, then 1) in the outer loop, so a block's B rows stay in
    L1 while every row of C passes under them; with J <= 8 each C row is written exactly once.
    The summation order depends on J only. accumulate=False overwrites C.
    """
    j0 = 0
    while j0 < J:
        nj = 8 if J - j0 >= 8 else (4 if J - j0 >= 4 else 1)
        assign = (not accumulate) and j0 == 0
        bb = b0 + j0 * ldb
        for i in range(I):
            ci = c0 + i * ldc
            Ci = C[ci:ci + T]
            ab = a0 + i * lai + j0 * laj
            if nj == 8:
                _row8(Ci, A, ab, laj, B, bb, ldb, T, assign)
            elif nj == 4:
                _row4(Ci, A, ab, laj, B, bb, ldb, T, assign)
            else:
                _row1(Ci, A, ab, B, bb, T, assign)
        j0 += nj
