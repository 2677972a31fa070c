"""Locally-connected 2D layer on the CPU (no weight sharing): Numba parallel kernels.

Weight (P, Q, K, C, R, S): one bank of K filters per output position, K*C*R*S contiguous values
per position. At small batch the layer is bound by the weight stream (each weight is used N
times: 2N FLOPs per 4 bytes), so every kernel walks the positions and touches each position's
bank exactly once, for the whole batch, in its natural layout (no transposed copy of the weights:
that would be a second weight-sized buffer and a second pass over memory).

  forward  y[:, :, p, q] = W_pq (K x T) . patch_pq^T (T x N)      NT GEMM, reduction over T=C*R*S
  wgrad    dW_pq (K x T) (+)= dy_pq^T (K x N) . patch_pq (N x T)  NN form, reduction over the
                                                                  batch only (owner computes)
  dgrad    dpatch (N x T) = dy_pq (N x K) . W_pq (K x T), then added into the input rows under
           (p, q). One task owns one output row p; tasks run in G phases of rows p = phase mod G
           with G*sh > the kernel's extent, so two tasks of one phase never touch one input row:
           no atomics, and every input pixel gets its sum in a fixed order. (The gather form,
           one task per input row, would need W with k innermost: a transposed weight copy.)
  wgrad and dgrad run in one pass when both are needed (local2d_input_weight_grad).

patch_pq (N x T) holds the C*R*S inputs under (p, q) for each image, in the (c, r, s) order of
the weights, gathered from the zero-padded NCHW input (runs of S along w when dilation is 1).
"""
import numpy as np
from numba import njit, prange

from ..config import njit_options
from ._gemm import gemm_nn, gemm_nt_streamed, typed_zero
from ._workspace import scratch
from ._workspace import launch_lock as _launch_lock
from .conv2d import _add, _copy, _padded


@njit(**njit_options(), inline="always")
def _gather_patches(xf, patch, N, C, Hp, Wp, R, S, h0, w0, dh, dw):
    """patch[n*T + (c*R + r)*S + s] = xp[n, c, h0 + r*dh, w0 + s*dw]."""
    for n in range(N):
        for c in range(C):
            for r in range(R):
                src = ((n * C + c) * Hp + h0 + r * dh) * Wp + w0
                dst = ((n * C + c) * R + r) * S
                if dw == 1:
                    _copy(patch[dst:dst + S], xf[src:src + S])
                else:
                    _copy(patch[dst:dst + S], xf[src:src + (S - 1) * dw + 1:dw])


# ----------------------------------------------------------------------------------- forward
@njit(**njit_options(parallel=True))
def local2d_fwd_kernel(xp, w, bias, has_bias, y, R, S, sh, sw, dh, dw):
    """xp: padded NCHW input; w: (P, Q, K, C, R, S); bias: (P, Q, K); y: (N, K, P, Q).

    One task = one output row p; per position, the K x T bank is streamed from memory once,
    in one sequential sweep (gemm_nt_streamed); the N patches (4*N*T bytes) stay in L1.
    """
    N, C, Hp, Wp = xp.shape
    _, K, P, Q = y.shape
    T = C * R * S
    xf = xp.ravel()
    wf = w.ravel()
    bf = bias.ravel()
    yf = y.ravel()
    for p in prange(P):
        patch = np.empty(N * T, dtype=xp.dtype)
        for q in range(Q):
            _gather_patches(xf, patch, N, C, Hp, Wp, R, S, p * sh, q * sw, dh, dw)
            pos = p * Q + q
            # y[n, k, p, q] at pos + k*P*Q + n*K*P*Q
            gemm_nt_streamed(wf, pos * K * T, T, patch, 0, T, K, N, T, yf, pos, P * Q, K * P * Q,
                             False)
            if has_bias:
                for n in range(N):
                    for k in range(K):
                        yf[(n * K + k) * P * Q + pos] += bf[pos * K + k]


def local2d(x, weight, bias, g, grid):
    y = np.empty(g.y_shape, dtype=x.dtype)
    b = bias if bias is not None else np.zeros((1, 1, 1), dtype=x.dtype)
    with _launch_lock:
        xp = _padded(x, *g.padding, "nchw", "local_x")
        local2d_fwd_kernel(xp, weight, b, bias is not None, y, g.R, g.S, *g.stride,
                               *g.dilation)
    return y


# ------------------------------------------------------------------ weight and input grads
@njit(**njit_options(parallel=True))
def local2d_iwgrad_kernel(dyt, xp, w, dxp, dwo, R, S, sh, sw, dh, dw, G, want_dx, want_dw,
                            accumulate):
    """Input and/or weight gradient in one pass over the positions.

    dyt: dy as (P, Q, N, K); xp: padded NCHW input; w: (P, Q, K, C, R, S); dxp: zeroed padded
    NCHW input gradient; dwo: (P, Q, K, C, R, S) weight gradient (added into if accumulate).

    One task = one output row p. Weight gradient: the task is the only writer of dwo[p]; each
    weight's gradient is a sum over the batch alone, in registers, and each row of dwo is
    written once when N <= 8 (gemm_nn takes the batch 8 terms at a time). Input gradient:
    dpatch = dy_pq (N x K) . W_pq (K x T), added into the input rows under (p, q); phase f runs
    rows p = f, f + G, ..., and G*sh > dh*(R-1), so rows of one phase write disjoint input rows.
    Both together share the patch gather and make one pass over memory, reading W and writing
    dW position by position (about 1.5x faster than two passes at alexnet_conv1).
    """
    P, Q, N, K = dyt.shape
    _, C, Hp, Wp = xp.shape if want_dw else dxp.shape  # the other one is a placeholder
    T = C * R * S
    xf = xp.ravel()
    wf = w.ravel()
    dyf = dyt.ravel()
    dxf = dxp.ravel()
    of = dwo.ravel()
    for f in range(G):
        for i in prange((P - f + G - 1) // G):
            p = f + i * G
            patch = np.empty(N * T if want_dw else 1, dtype=xp.dtype)
            dpatch = np.empty(N * T if want_dx else 1, dtype=xp.dtype)
            for q in range(Q):
                pos = p * Q + q
                if want_dw:
                    _gather_patches(xf, patch, N, C, Hp, Wp, R, S, p * sh, q * sw, dh, dw)
                    # A[k, n] = dyt[p, q, n, k]: row stride 1, term stride K
                    gemm_nn(dyf, pos * N * K, 1, K, patch, 0, T, of, pos * K * T, T, K, N, T,
                            accumulate)
                if want_dx:
                    # dpatch[n, t] = sum_k dyt[p, q, n, k] * w[p, q, k, t]
                    gemm_nn(dyf, pos * N * K, K, 1, wf, pos * K * T, T, dpatch, 0, T, N, K, T,
                            False)
                    for n in range(N):
                        for c in range(C):
                            for r in range(R):
                                dst = ((n * C + c) * Hp + p * sh + r * dh) * Wp + q * sw
                                src = ((n * C + c) * R + r) * S
                                if dw == 1:
                                    _add(dxf[dst:dst + S], dpatch[src:src + S])
                                else:
                                    for s in range(S):
                                        dxf[dst + s * dw] += dpatch[src + s]


def _phases(g):
    """Fewest row phases G with G*sh > dh*(R-1): rows G apart never share an input row."""
    extent = g.dilation[0] * (g.R - 1) + 1
    return -(-extent // g.stride[0])


def _backward(dy, x, weight, g, want_dx, want_dw, out):
    """(dx or None, dw or None); dw added into `out` when given."""
    ph, pw = g.padding
    dt = dy.dtype
    accumulate = out is not None
    if want_dw and out is None:
        out = np.empty((g.P, g.Q) + g.w_shape, dtype=dt)
    dwo = out if want_dw else np.zeros((1, 1, 1, 1, 1, 1), dt)
    w = weight if want_dx else np.zeros((1, 1, 1, 1, 1, 1), dt)
    with _launch_lock:
        dyt = scratch("local_dy", (g.P, g.Q, g.N, g.K), dt)
        dyt[...] = dy.transpose(2, 3, 0, 1)
        xp = _padded(x, ph, pw, "nchw", "local_x") if want_dw else np.zeros((1, 1, 1, 1), dt)
        if want_dx:
            dxp = scratch("local_dx", (g.N, g.C, g.H + 2 * ph, g.W + 2 * pw), dt)
            dxp[...] = 0
        else:
            dxp = np.zeros((1, 1, 1, 1), dt)
        local2d_iwgrad_kernel(dyt, xp, w, dxp, dwo, g.R, g.S, *g.stride, *g.dilation,
                                _phases(g) if want_dx else 1, want_dx, want_dw, accumulate)
        # a fresh array: the scratch is reused by the next call
        dx = dxp[:, :, ph:ph + g.H, pw:pw + g.W].copy() if want_dx else None
    return dx, (out if want_dw else None)


def local2d_weight_grad(dy, x, g, grid, out=None, deterministic=False):
    """(P, Q, K, C, R, S); with `out`, added into it. Always bitwise reproducible."""
    return _backward(dy, x, None, g, False, True, out)[1]


def local2d_input_grad(dy, weight, g, grid):
    return _backward(dy, None, weight, g, True, False, None)[0]


def local2d_input_weight_grad(dy, x, weight, g, grid, out=None, deterministic=False):
    """(input grad, weight grad) in one pass (the API uses it when both are needed)."""
    return _backward(dy, x, weight, g, True, True, out)


# ------------------------------------------------------------------------------- bias grad
@njit(**njit_options(parallel=True))
def local2d_bgrad_kernel(dy, out, accumulate):
    """out[p, q, k] (+)= sum_n dy[n, k, p, q]; one task per k, images summed in order.

    conv2d_bgrad_kernel with a P x Q tile gives the same sums, but its per-class loops over
    one-element classes made it 4x slower (2.2 vs 0.5 ms at alexnet_conv1)."""
    N, K, P, Q = dy.shape
    of = out.ravel()
    for k in prange(K):
        for p in range(P):
            for q in range(Q):
                acc = typed_zero(dy)
                for n in range(N):
                    acc += dy[n, k, p, q]
                i = (p * Q + q) * K + k
                if accumulate:
                    of[i] += acc
                else:
                    of[i] = acc


def local2d_bias_grad(dy, g, grid, out=None):
    accumulate = out is not None
    if out is None:
        out = np.empty((dy.shape[2], dy.shape[3], dy.shape[1]), dtype=dy.dtype)
    with _launch_lock:
        local2d_bgrad_kernel(dy, out, accumulate)
    return out
