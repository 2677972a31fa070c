"""Shared-weight 2D convolution on the CPU: Numba parallel kernels, forward and backward.

All three passes are cast as the register-blocked GEMM of _gemm.py over operands that each
task gathers into a private, L2-sized buffer:

  forward  y[n, :, p, :]  = W (K x RSC) . patch(n, p)^T   patch row q = the R*S*C inputs under
                                                          output (p, q), gathered from NHWC x
  wgrad    dW (K x CRS)  += dy[n, :, rows] . patchT^T     per chunk of output rows; each chunk
                                                          owns a private partial (no shared writes)
  dgrad    dx[n, :, h, :] = sum_r scatter(dyT[n, p(h, r)] . W_r^T)   gather form: one task owns
                                                          one input row, so no atomics

Public host launchers (conv2d, conv2d_input_grad, conv2d_weight_grad, conv2d_bias_grad) take
validated arrays and a ConvGeometry; kernels are named *_kernel.
"""
import threading

import numpy as np
from numba import njit, prange

from ..config import WGRAD_CHUNK, WGRAD_MAX_PARTIALS, njit_options
from ._gemm import gemm_nt, typed_zero

# Numba's default "workqueue" threading layer aborts the process when two Python threads
# enter parallel kernels at once. A kernel already uses every core, so serialising callers
# costs nothing and keeps the user's choice of threading layer untouched.
_launch_lock = threading.RLock()


def _padded(a, ph, pw, layout):
    """Copy of NCHW `a` zero-padded by (ph, pw) on each side, in NCHW or NHWC layout.

    Kernels read the padded copy and never test bounds. A negative amount crops instead
    (the input-gradient-as-convolution needs that when padding > dilation * (R - 1)).
    """
    N, C, H, W = a.shape
    Hp, Wp = H + 2 * ph, W + 2 * pw
    src = a[:, :, max(0, -ph):H - max(0, -ph), max(0, -pw):W - max(0, -pw)]
    oh, ow = max(0, ph), max(0, pw)
    if layout == "nhwc":
        out = np.zeros((N, Hp, Wp, C), dtype=a.dtype)
        out[:, oh:Hp - oh, ow:Wp - ow, :] = src.transpose(0, 2, 3, 1)
    else:
        out = np.zeros((N, C, Hp, Wp), dtype=a.dtype)
        out[:, :, oh:Hp - oh, ow:Wp - ow] = src
    return out


@njit(**njit_options(), inline="always")
def _copy(dst, src):
    # Slices indexed by the loop counter only: Numba's negative-index wraparound is dropped
    # and the loop becomes a vector copy (a flat index expression would stay scalar).
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@njit(**njit_options(), inline="always")
def _add(dst, src):
    for i in range(dst.shape[0]):
        dst[i] += src[i]


# ----------------------------------------------------------------------------------- forward
@njit(**njit_options(parallel=True))
def conv2d_forward_kernel(xh, wk, bias, has_bias, y, R, S, sh, sw, dh, dw):
    """xh: padded NHWC input; wk: weights as (K, R*S*C) rows; y: (N, K, P, Q) output.

    One task = one output row (n, p): gather its Q patches (rows of R*S*C, unit stride along
    (s, c) when dilation is 1), then y[n, :, p, :] = wk . patch^T. The weight matrix is re-read
    from L2 by every task; the patch buffer (Q*R*S*C) stays in L2 for the whole row.
    """
    N, Hp, Wp, C = xh.shape
    K = wk.shape[0]
    _, _, P, Q = y.shape
    T = R * S * C
    SC = S * C
    xf = xh.ravel()
    wf = wk.ravel()
    yf = y.ravel()
    for task in prange(N * P):
        n = task // P
        p = task - n * P
        patch = np.empty(Q * T, dtype=xh.dtype)
        for q in range(Q):
            for r in range(R):
                src = ((n * Hp + p * sh + r * dh) * Wp + q * sw) * C
                dst = q * T + r * SC
                if dw == 1:
                    _copy(patch[dst:dst + SC], xf[src:src + SC])
                else:
                    for s in range(S):
                        _copy(patch[dst + s * C:dst + (s + 1) * C],
                              xf[src + s * dw * C:src + s * dw * C + C])
        base = n * K * P * Q + p * Q
        gemm_nt(wf, 0, T, patch, 0, T, K, Q, T, yf, base, P * Q, 1, False)
        if has_bias:
            for k in range(K):
                bk = bias[k]
                for q in range(Q):
                    yf[base + k * P * Q + q] += bk


def conv2d(x, weight, bias, g):
    y = np.empty(g.y_shape, dtype=x.dtype)
    _forward(x, weight, bias, g.padding, g.stride, g.dilation, y)
    return y


def _forward(x, weight, bias, padding, stride, dilation, y):
    K, C, R, S = weight.shape
    xh = _padded(x, *padding, "nhwc")
    wk = np.ascontiguousarray(weight.transpose(0, 2, 3, 1)).reshape(K, -1)
    b = bias if bias is not None else np.zeros(1, dtype=x.dtype)
    with _launch_lock:
        conv2d_forward_kernel(xh, wk, b, bias is not None, y, R, S, *stride, *dilation)


# ----------------------------------------------------------------------------- weight grad
@njit(**njit_options(parallel=True))
def conv2d_wgrad_kernel(dy, xp, partial, R, S, sh, sw, dh, dw, rows):
    """dy: (N, K, P, Q); xp: padded NCHW input; partial: (B, K, C*R*S) private sums.

    Work unit u = (image n, block of `rows` output rows). Partial b owns units
    [b*U//B, (b+1)*U//B) and is the only writer of partial[b]: the CPU form of the per-depth-slice
    reduction. The unit's transposed patches (C*R*S x rows*Q; unit stride along q when the stride
    is 1) are the B operand; dy's rows are already contiguous over (p, q).
    """
    N, K, P, Q = dy.shape
    _, C, Hp, Wp = xp.shape
    B = partial.shape[0]
    T = C * R * S
    chunks = (P + rows - 1) // rows
    U = N * chunks
    dyf = dy.ravel()
    xf = xp.ravel()
    pf = partial.ravel()
    for b in prange(B):
        patch = np.empty(T * rows * Q, dtype=xp.dtype)
        first = True
        for u in range(b * U // B, (b + 1) * U // B):
            n = u // chunks
            p0 = (u - n * chunks) * rows
            p1 = min(p0 + rows, P)
            L = (p1 - p0) * Q
            for c in range(C):
                for r in range(R):
                    for s in range(S):
                        j = (c * R + r) * S + s
                        for p in range(p0, p1):
                            src = ((n * C + c) * Hp + p * sh + r * dh) * Wp + s * dw
                            dst = j * L + (p - p0) * Q
                            if sw == 1:
                                _copy(patch[dst:dst + Q], xf[src:src + Q])
                            else:
                                _copy(patch[dst:dst + Q], xf[src:src + (Q - 1) * sw + 1:sw])
            gemm_nt(dyf, (n * K * P + p0) * Q, P * Q, patch, 0, L, K, T, L,
                    pf, b * K * T, T, 1, not first)
            first = False
        if first:  # more partials than units cannot happen (B <= U), but never leave garbage
            for i in range(K * T):
                pf[b * K * T + i] = 0


@njit(**njit_options(parallel=True))
def reduce_partials_kernel(partial, out, accumulate):
    """out (+)= sum_b partial[b], b in increasing order: the same bits whatever the threads."""
    B = partial.shape[0]
    M = partial.shape[1]
    for i in prange(M):
        acc = partial[0, i]
        for b in range(1, B):
            acc += partial[b, i]
        if accumulate:
            out[i] += acc
        else:
            out[i] = acc


def _wgrad_split(g):
    rows = max(1, min(g.P, WGRAD_CHUNK // g.Q))
    units = g.N * (-(-g.P // rows))
    return rows, max(1, min(units, WGRAD_MAX_PARTIALS))


def conv2d_weight_grad(dy, x, g, out=None, deterministic=False):
    """Weight gradient (K, C, R, S). With `out`, the gradient is added into it.

    The reduction order depends only on the shapes, never on the thread schedule, so the CPU
    result is bitwise reproducible whether or not `deterministic` is asked for.
    """
    xp = _padded(x, *g.padding, "nchw")
    rows, nparts = _wgrad_split(g)
    partial = np.empty((nparts, g.K, g.C * g.R * g.S), dtype=x.dtype)
    accumulate = out is not None
    if out is None:
        out = np.empty(g.w_shape, dtype=x.dtype)
    with _launch_lock:
        conv2d_wgrad_kernel(dy, xp, partial, g.R, g.S, *g.stride, *g.dilation, rows)
        reduce_partials_kernel(partial.reshape(nparts, -1), out.reshape(-1), accumulate)
    return out


# ------------------------------------------------------------------------------ input grad
@njit(**njit_options(parallel=True))
def conv2d_dgrad_kernel(dyt, wt, dx, H, W, ph, pw, sh, sw, dh, dw):
    """dyt: dy as (N, P, Q, K); wt: weights as (R, S*C, K); dx: (N, C, H, W) output.

    Gather form: one task owns input row (n, h) and sums, over the taps r whose output row
    p = (h + ph - r*dh) / sh is on the grid, tmp = dyt[n, p] (Q x K) . wt[r]^T (S*C x K), then
    scatters tmp[q, (s, c)] to column w = q*sw + s*dw - pw of its own row buffer. No two tasks
    write the same element.
    """
    N, P, Q, K = dyt.shape
    R = wt.shape[0]
    SC = wt.shape[1]
    C = dx.shape[1]
    S = SC // C
    Wp = W + 2 * pw
    dyf = dyt.ravel()
    wf = wt.ravel()
    for task in prange(N * H):
        n = task // H
        h = task - n * H
        rowbuf = np.zeros(Wp * C, dtype=dx.dtype)
        tmp = np.empty(Q * SC, dtype=dx.dtype)
        for r in range(R):
            num = h + ph - r * dh
            if num < 0 or num % sh != 0:
                continue
            p = num // sh
            if p >= P:
                continue
            gemm_nt(dyf, (n * P + p) * Q * K, K, wf, r * SC * K, K, Q, SC, K, tmp, 0, SC, 1,
                    False)
            for q in range(Q):
                if dw == 1:  # the S taps of one q are adjacent in the NHWC row buffer
                    _add(rowbuf[q * sw * C:q * sw * C + SC], tmp[q * SC:(q + 1) * SC])
                else:
                    for s in range(S):
                        dst = (q * sw + s * dw) * C
                        _add(rowbuf[dst:dst + C], tmp[q * SC + s * C:q * SC + (s + 1) * C])
        for c in range(C):
            for w in range(W):
                dx[n, c, h, w] = rowbuf[(w + pw) * C + c]


def conv2d_input_grad(dy, weight, g):
    dx = np.empty(g.x_shape, dtype=dy.dtype)
    if g.stride == (1, 1):
        # With stride 1 the input gradient is itself a convolution: dy padded by
        # dilation*(R-1) - padding, correlated with the flipped kernel with K and C swapped.
        # That reuses the forward kernel, whose reduction runs over K*R*S instead of K.
        (dh, dw), (ph, pw) = g.dilation, g.padding
        wflip = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        _forward(dy, wflip, None, (dh * (g.R - 1) - ph, dw * (g.S - 1) - pw), (1, 1),
                 g.dilation, dx)
        return dx
    dyt = np.ascontiguousarray(dy.transpose(0, 2, 3, 1))
    wt = np.ascontiguousarray(weight.transpose(2, 3, 1, 0)).reshape(g.R, g.S * g.C, g.K)
    with _launch_lock:
        conv2d_dgrad_kernel(dyt, wt, dx, g.H, g.W, *g.padding, *g.stride, *g.dilation)
    return dx


# ------------------------------------------------------------------------------- bias grad
@njit(**njit_options(parallel=True))
def conv2d_bgrad_kernel(dy, out, accumulate):
    """out[k] (+)= sum over n, p, q of dy[n, k, p, q]; one task per k, rows summed in order."""
    N, K, P, Q = dy.shape
    for k in prange(K):
        acc = typed_zero(dy)  # not dy[...] * 0: inf * 0 would seed the sum with NaN
        for n in range(N):
            s = typed_zero(dy)
            for p in range(P):
                for q in range(Q):
                    s += dy[n, k, p, q]
            acc += s
        if accumulate:
            out[k] += acc
        else:
            out[k] = acc


def conv2d_bias_grad(dy, out=None):
    accumulate = out is not None
    if out is None:
        out = np.empty(dy.shape[1], dtype=dy.dtype)
    with _launch_lock:
        conv2d_bgrad_kernel(dy, out, accumulate)
    return out
