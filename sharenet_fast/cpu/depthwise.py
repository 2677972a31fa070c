"""Depthwise shared and tiled convolution on the CPU (groups == C): Numba parallel kernels.

A depthwise filter k reads one input channel, c = k // M (M = K / C filters per channel), so
there is no reduction over channels: an output is R*S multiply-adds, and the layer is bound by
moving x and y, not by arithmetic (9 FMAs per 8 bytes at 3 x 3). The GEMM microkernels of
conv2d.py would run with a reduction of R*S and one filter per group; here every pass walks
planes instead, vectors along q (output columns: contiguous in x and y when the column stride
is 1), each input row read from L1 by the R*S taps that use it:

  forward  y[n, k, p, :] = sum_{r, s} w[bank, k, r, s] * xp[n, c, p*sh + r*dh, s*dw + :*sw]
           one task per plane (n, k): the row accumulated in a buffer, bias first
  wgrad    dw[bank, k, r, s] = sum_{n, p, q in the bank's class} dy[n, k, p, q] * xp[...]
           one task per filter k (owner computes: no shared writes), sums in a fixed order
  dgrad    dxp[n, c, p*sh + r*dh, s*dw + :*sw] += w[bank, k, r, s] * dy[n, k, p, :] over the
           M filters of c: one task per input plane (n, c), scattered into its own padded plane

Banks: (TP*TQ, K, R*S); output (p, q) uses bank (p % TP) * TQ + q % TQ (shared: 1 x 1). xp is
the zero-padded NCHW input (conv2d._padded), so no kernel tests bounds.
"""
import numpy as np
from numba import njit, prange

from ..config import njit_options
from ._simd import typed_zero
from ._workspace import launch_lock as _launch_lock


@njit(**njit_options(parallel=True))
def conv2d_dw_fwd_kernel(xp, w, bias, has_bias, y, R, S, sh, sw, dh, dw, TP, TQ):
    N, C, Hp, Wp = xp.shape
    _, K, P, Q = y.shape
    M = K // C
    RS = R * S
    xf = xp.ravel()
    wf = w.ravel()
    for task in prange(N * K):
        n = task // K
        k = task - n * K
        plane = (n * C + k // M) * Hp * Wp
        acc = np.empty(Q, dtype=y.dtype)
        for p in range(P):
            tp = p % TP
            if TQ == 1:
                b = bias[tp * K + k] if has_bias else typed_zero(y)
                for q in range(Q):
                    acc[q] = b
            else:
                for q in range(Q):
                    acc[q] = bias[(tp * TQ + q % TQ) * K + k] if has_bias else typed_zero(y)
            for r in range(R):
                row = plane + (p * sh + r * dh) * Wp
                for s in range(S):
                    x0 = row + s * dw
                    if TQ == 1:
                        wv = wf[(tp * K + k) * RS + r * S + s]
                        if sw == 1:          # both runs contiguous: a vector loop
                            for q in range(Q):
                                acc[q] += wv * xf[x0 + q]
                        else:
                            for q in range(Q):
                                acc[q] += wv * xf[x0 + q * sw]
                    else:
                        for tq in range(TQ):
                            wv = wf[((tp * TQ + tq) * K + k) * RS + r * S + s]
                            for q in range(tq, Q, TQ):
                                acc[q] += wv * xf[x0 + q * sw]
            for q in range(Q):
                y[n, k, p, q] = acc[q]


@njit(**njit_options(parallel=True))
def conv2d_dw_wgrad_kernel(dy, xp, out, R, S, sh, sw, dh, dw, TP, TQ, accumulate):
    """out (TP*TQ, K, R*S) (+)= the weight gradient; one task per filter k, its sums over
    (n, p, q) in that order (so bitwise the same for any thread count)."""
    N, K, P, Q = dy.shape
    _, C, Hp, Wp = xp.shape
    M = K // C
    RS = R * S
    xf = xp.ravel()
    dyf = dy.ravel()
    of = out.ravel()
    for k in prange(K):
        acc = np.zeros(TP * TQ * RS, dtype=dy.dtype)
        for n in range(N):
            plane = (n * C + k // M) * Hp * Wp
            for p in range(P):
                tp = p % TP
                d0 = ((n * K + k) * P + p) * Q
                for r in range(R):
                    row = plane + (p * sh + r * dh) * Wp
                    for s in range(S):
                        x0 = row + s * dw
                        for tq in range(TQ):
                            t = typed_zero(dy)
                            if TQ == 1 and sw == 1:
                                for q in range(Q):
                                    t += dyf[d0 + q] * xf[x0 + q]
                            else:
                                for q in range(tq, Q, TQ):
                                    t += dyf[d0 + q] * xf[x0 + q * sw]
                            acc[(tp * TQ + tq) * RS + r * S + s] += t
        for b in range(TP * TQ):
            for i in range(RS):
                o = (b * K + k) * RS + i
                if accumulate:
                    of[o] += acc[b * RS + i]
                else:
                    of[o] = acc[b * RS + i]


@njit(**njit_options(parallel=True))
def conv2d_dw_dgrad_kernel(dy, w, dx, R, S, sh, sw, dh, dw, ph, pw, TP, TQ):
    """dx (N, C, H, W) = the input gradient; one task per input plane (n, c), which gathers the
    M filters of c into a private zero-padded plane and crops it into dx."""
    N, K, P, Q = dy.shape
    _, C, H, W = dx.shape
    M = K // C
    RS = R * S
    Hp = (P - 1) * sh + (R - 1) * dh + 1
    Wp = (Q - 1) * sw + (S - 1) * dw + 1
    wf = w.ravel()
    dyf = dy.ravel()
    for task in prange(N * C):
        n = task // C
        c = task - n * C
        buf = np.zeros(Hp * Wp, dtype=dx.dtype)
        for k in range(c * M, c * M + M):
            for p in range(P):
                tp = p % TP
                d0 = ((n * K + k) * P + p) * Q
                for r in range(R):
                    row = (p * sh + r * dh) * Wp
                    for s in range(S):
                        x0 = row + s * dw
                        if TQ == 1:
                            wv = wf[(tp * K + k) * RS + r * S + s]
                            if sw == 1:
                                for q in range(Q):
                                    buf[x0 + q] += wv * dyf[d0 + q]
                            else:
                                for q in range(Q):
                                    buf[x0 + q * sw] += wv * dyf[d0 + q]
                        else:
                            for tq in range(TQ):
                                wv = wf[((tp * TQ + tq) * K + k) * RS + r * S + s]
                                for q in range(tq, Q, TQ):
                                    buf[x0 + q * sw] += wv * dyf[d0 + q]
        # padded row h + ph of the buffer is input row h (rows past Hp: no output reads them)
        for h in range(H):
            hb = h + ph
            for x_ in range(W):
                wb = x_ + pw
                dx[n, c, h, x_] = buf[hb * Wp + wb] if hb < Hp and wb < Wp else typed_zero(dx)


def _banks(banks):
    """(TP, TQ, K, 1, R, S) -> contiguous (TP*TQ, K, R*S)."""
    TP, TQ, K, _, R, S = banks.shape
    return np.ascontiguousarray(banks.reshape(TP * TQ, K, R * S))


def forward(xp, banks, bias, g, y):
    """y = the depthwise tiled conv of padded NCHW xp (conv2d._padded) with banks
    (TP, TQ, K, 1, R, S), bias (TP, TQ, K) or None."""
    TP, TQ = banks.shape[:2]
    b = (np.ascontiguousarray(bias).reshape(-1) if bias is not None
         else np.zeros(1, dtype=y.dtype))
    conv2d_dw_fwd_kernel(xp, _banks(banks), b, bias is not None, y, g.R, g.S, *g.stride,
                         *g.dilation, TP, TQ)


def weight_grad(dy, xp, g, tile, out, accumulate):
    """out (TP, TQ, K, 1, R, S) or (K, 1, R, S), C-contiguous: (+)= the weight gradient."""
    conv2d_dw_wgrad_kernel(np.ascontiguousarray(dy), xp, out.reshape(-1, g.K, g.R * g.S),
                           g.R, g.S, *g.stride, *g.dilation, *tile, accumulate)


def input_grad(dy, banks, g, dx):
    TP, TQ = banks.shape[:2]
    with _launch_lock:
        conv2d_dw_dgrad_kernel(np.ascontiguousarray(dy), _banks(banks), dx, g.R, g.S,
                               *g.stride, *g.dilation, *g.padding, TP, TQ)
