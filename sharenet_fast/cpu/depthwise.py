"""Depthwise shared and tiled convolution on the CPU (groups == C): Numba parallel kernels.

A depthwise filter k reads one input channel, c = k // M (M = K / C filters per channel), so
there is no reduction over channels: an output is R*S multiply-adds, and the layer is bound by
moving x and y, not by arithmetic (9 FMAs per 8 bytes at 3 x 3). The GEMM microkernels of
conv2d.py would run with a reduction of R*S and one filter per group; here every pass walks
planes instead, vectors along q (output columns: contiguous in x and y when the column stride
is 1), each input row read from L1 by the R*S taps that use it. With one bank (the shared
conv) the phase-plane kernels below run (each tap one long loop over a whole plane); the row
kernels here serve tiled grids:

  forward  y[n, k, p, :] = sum_{r, s} w[bank, k, r, s] * xp[n, c, p*sh + r*dh, s*dw + :*sw]
           one task per plane (n, k): each row accumulated in place in y, bias first
  wgrad    dw[bank, k, r, s] = sum_{n, p, q in the bank's class} dy[n, k, p, q] * xp[...]
           one task per filter k (owner computes: no shared writes), sums in a fixed order
  dgrad    dxp[n, c, p*sh + r*dh, s*dw + :*sw] += w[bank, k, r, s] * dy[n, k, p, :] over the
           M filters of c: one task per input plane (n, c), scattered into its own padded plane

Banks: (TP*TQ, K, R*S); output (p, q) uses bank (p % TP) * TQ + q % TQ (shared: 1 x 1). The
kernels read x unpadded: a tap skips rows outside x and runs over the columns inside it only
(_span), so no padded copy is made (it cost more than the 3 x 3 forward itself).
"""
import numpy as np
from numba import njit, prange

from ..config import njit_options
from ._simd import typed_zero
from ._workspace import launch_lock as _launch_lock


@njit(**njit_options(), inline="always")
def _span(Q, W, pw, sw, off):
    """[q0, q1): the output columns q whose input column q*sw + off - pw lies in [0, W)."""
    lo = pw - off
    q0 = max(0, -(-lo // sw)) if lo > 0 else 0
    hi = W - 1 + pw - off                      # q*sw <= hi
    q1 = min(Q, hi // sw + 1) if hi >= 0 else 0
    return q0, max(q0, q1)


# The inner loops below index slices by their loop counter only: Numba then drops its
# negative-index wraparound test and LLVM vectorises them (indexing the flat arrays with
# `base + q` kept them scalar: 5 ms instead of 0.4 at mobilenet_dw).
@njit(**njit_options(), inline="always")
def _axpy(dst, src, a):
    for i in range(dst.shape[0]):
        dst[i] += a * src[i]


@njit(**njit_options(), inline="always")
def _axpy3(dst, a, b, c, wa, wb, wc):
    """dst += wa*a + wb*b + wc*c: three taps of a row per pass over dst (a third of the
    accumulator's loads and stores of three _axpy: the plane kernels' taps are L1-bound)."""
    for i in range(dst.shape[0]):
        dst[i] += wa * a[i] + wb * b[i] + wc * c[i]


@njit(**njit_options(), inline="always")
def _dot3(d, a, b, c, zero):
    """(d.a, d.b, d.c): three taps' dot products sharing d's loads."""
    ta = zero
    tb = zero
    tc = zero
    for i in range(d.shape[0]):
        ta += d[i] * a[i]
        tb += d[i] * b[i]
        tc += d[i] * c[i]
    return ta, tb, tc


@njit(**njit_options(), inline="always")
def _dot(a, b, zero):
    t = zero
    for i in range(a.shape[0]):
        t += a[i] * b[i]
    return t


@njit(**njit_options(parallel=True))
def conv2d_dw_fwd_kernel(x, w, bias, has_bias, y, R, S, sh, sw, dh, dw, ph, pw, TP, TQ):
    """x: (N, C, H, W) unpadded (the zero padding is the taps' row test and column span);
    w: (TP*TQ, K, R*S); y: (N, K, P, Q). One task per output plane (n, k); each output row is
    accumulated in place in y, bias first, then tap by tap over its valid columns."""
    N, C, H, W = x.shape
    _, K, P, Q = y.shape
    M = K // C
    RS = R * S
    xf = x.ravel()
    wf = w.ravel()
    yf = y.ravel()
    for task in prange(N * K):
        n = task // K
        k = task - n * K
        plane = (n * C + k // M) * H * W
        for p in range(P):
            tp = p % TP
            yrow = yf[((n * K + k) * P + p) * Q:((n * K + k) * P + p + 1) * Q]
            for q in range(Q):
                yrow[q] = bias[(tp * TQ + q % TQ) * K + k] if has_bias else typed_zero(y)
            for r in range(R):
                h = p * sh + r * dh - ph
                if h < 0 or h >= H:
                    continue
                row = plane + h * W
                for s in range(S):
                    q0, q1 = _span(Q, W, pw, sw, s * dw)
                    x0 = row + q0 * sw + s * dw - pw
                    for tq in range(TQ):
                        wv = wf[((tp * TQ + tq) * K + k) * RS + r * S + s]
                        if TQ == 1 and sw == 1:      # both runs contiguous: a vector loop
                            _axpy(yrow[q0:q1], xf[x0:x0 + q1 - q0], wv)
                        else:
                            a = q0 + (tq - q0) % TQ  # the first column of class tq
                            if a < q1:
                                _axpy(yrow[a:q1:TQ],
                                      xf[x0 + (a - q0) * sw:x0 + (q1 - q0 - 1) * sw + 1:sw * TQ],
                                      wv)


@njit(**njit_options(parallel=True))
def conv2d_dw_wgrad_kernel(dy, x, out, R, S, sh, sw, dh, dw, ph, pw, TP, TQ, accumulate):
    """out (TP*TQ, K, R*S) (+)= the weight gradient; one task per filter k, its sums over
    (n, p, q) in that order (so bitwise the same for any thread count)."""
    N, K, P, Q = dy.shape
    _, C, H, W = x.shape
    M = K // C
    RS = R * S
    xf = x.ravel()
    dyf = dy.ravel()
    of = out.ravel()
    for k in prange(K):
        acc = np.zeros(TP * TQ * RS, dtype=dy.dtype)
        for n in range(N):
            plane = (n * C + k // M) * H * W
            for p in range(P):
                tp = p % TP
                d0 = ((n * K + k) * P + p) * Q
                for r in range(R):
                    h = p * sh + r * dh - ph
                    if h < 0 or h >= H:
                        continue
                    row = plane + h * W
                    for s in range(S):
                        q0, q1 = _span(Q, W, pw, sw, s * dw)
                        x0 = row + q0 * sw + s * dw - pw
                        for tq in range(TQ):
                            i = (tp * TQ + tq) * RS + r * S + s
                            if TQ == 1 and sw == 1:
                                acc[i] += _dot(dyf[d0 + q0:d0 + q1], xf[x0:x0 + q1 - q0],
                                               typed_zero(dy))
                            else:
                                a = q0 + (tq - q0) % TQ
                                if a < q1:
                                    acc[i] += _dot(dyf[d0 + a:d0 + q1:TQ],
                                                   xf[x0 + (a - q0) * sw:
                                                      x0 + (q1 - q0 - 1) * sw + 1:sw * TQ],
                                                   typed_zero(dy))
        for b in range(TP * TQ):
            for i in range(RS):
                o = (b * K + k) * RS + i
                if accumulate:
                    of[o] += acc[b * RS + i]
                else:
                    of[o] = acc[b * RS + i]


@njit(**njit_options(parallel=True))
def conv2d_dw_dgrad_kernel(dy, w, dx, R, S, sh, sw, dh, dw, ph, pw, TP, TQ):
    """dx (N, C, H, W) = the input gradient; one task per input plane (n, c): zeroed, then the
    M filters of c scattered into it tap by tap over each tap's valid columns (the task owns
    the plane: no two tasks write one element)."""
    N, K, P, Q = dy.shape
    _, C, H, W = dx.shape
    M = K // C
    RS = R * S
    wf = w.ravel()
    dyf = dy.ravel()
    dxf = dx.ravel()
    for task in prange(N * C):
        n = task // C
        c = task - n * C
        plane = (n * C + c) * H * W
        dplane = dxf[plane:plane + H * W]
        for i in range(H * W):
            dplane[i] = typed_zero(dx)
        for k in range(c * M, c * M + M):
            for p in range(P):
                tp = p % TP
                d0 = ((n * K + k) * P + p) * Q
                for r in range(R):
                    h = p * sh + r * dh - ph
                    if h < 0 or h >= H:
                        continue
                    for s in range(S):
                        q0, q1 = _span(Q, W, pw, sw, s * dw)
                        x0 = plane + h * W + q0 * sw + s * dw - pw
                        for tq in range(TQ):
                            wv = wf[((tp * TQ + tq) * K + k) * RS + r * S + s]
                            if TQ == 1 and sw == 1:
                                _axpy(dxf[x0:x0 + q1 - q0], dyf[d0 + q0:d0 + q1], wv)
                            else:
                                a = q0 + (tq - q0) % TQ
                                if a < q1:
                                    _axpy(dxf[x0 + (a - q0) * sw:
                                              x0 + (q1 - q0 - 1) * sw + 1:sw * TQ],
                                          dyf[d0 + a:d0 + q1:TQ], wv)


# --------------------------------------------------------------- one bank: phase planes
# A row of 56 floats is shorter than LLVM's vector loop (16 lanes x 4 interleaved), so the row
# kernels above run mostly in its scalar remainder. With one bank, each tap is instead ONE long
# loop over a whole plane. x is padded into private planes, one per stride phase (a, b):
# phase[a, b][i, j] = xpad[i*sh + a, j*sw + b], row stride Wph (in L1/L2; no padded copy of x
# in memory). Output (p, q) of tap (r, s) reads phase (r*dh % sh, s*dw % sw) at (p + r*dh // sh,
# q + s*dw // sw): with the output accumulated at row stride Wph too, the tap is
# acc[i] += w * phase[o + i] for every i < P*Wph, o = (r*dh // sh)*Wph + s*dw // sw (columns
# q >= Q are scratch and dropped). Stride 1 is the one-phase case. The input gradient is the
# same walk scattered (dy copied at row stride Wph, zero past Q), the weight gradient its dot
# products.
# The phase split and its inverse, one function per column stride case: one function holding
# all three loops (unit, pairwise, general stride) ran 3x slower even at stride 1 (its copy loop
# no longer vectorised).
@njit(**njit_options(), inline="always")
def _split_unit(buf, src, H, W, ph, pw, sh, PL, Wph, back):
    """Column stride 1: row h -> phase row ((h+ph) % sh, (h+ph) // sh), from column pw on
    (back: the other way, buf -> src)."""
    for h in range(H):
        o = ((h + ph) % sh) * PL + ((h + ph) // sh) * Wph + pw
        d = buf[o:o + W]
        x = src[h * W:(h + 1) * W]
        if back:
            for j in range(W):
                x[j] = d[j]
        else:
            for j in range(W):
                d[j] = x[j]


@njit(**njit_options(), inline="always")
def _split_pairs(buf, src, H, W, ph, pw, sh, PL, Wph, back):
    """Column stride 2, W even: even column 2j -> phase pw % 2 at j + pw // 2, odd 2j + 1 ->
    the other phase at j + pw // 2 + pw % 2; one loop over the pairs (a vector shuffle)."""
    for h in range(H):
        r = ((h + ph) % sh) * 2 * PL + ((h + ph) // sh) * Wph
        e = buf[r + (pw % 2) * PL + pw // 2:][:W // 2]
        f = buf[r + ((pw + 1) % 2) * PL + pw // 2 + pw % 2:][:W // 2]
        x = src[h * W:(h + 1) * W]
        if back:
            for j in range(W // 2):
                x[2 * j] = e[j]
                x[2 * j + 1] = f[j]
        else:
            for j in range(W // 2):
                e[j] = x[2 * j]
                f[j] = x[2 * j + 1]


@njit(**njit_options(), inline="always")
def _split_strided(buf, src, H, W, ph, pw, sh, sw, PL, Wph, back):
    """Any column stride: per phase b, the columns w = w0, w0 + sw, ... ((w + pw) % sw == b)."""
    for h in range(H):
        for b in range(sw):
            w0 = (b - pw) % sw
            if w0 >= W:
                continue
            n = (W - 1 - w0) // sw + 1
            o = (((h + ph) % sh) * sw + b) * PL + ((h + ph) // sh) * Wph + (w0 + pw) // sw
            for j in range(n):
                if back:
                    src[h * W + w0 + j * sw] = buf[o + j]
                else:
                    buf[o + j] = src[h * W + w0 + j * sw]


@njit(**njit_options(), inline="always")
def _phases(buf, src, H, W, ph, pw, sh, sw, Hph, Wph, back):
    PL = Hph * Wph + Wph
    if sw == 1:
        _split_unit(buf, src, H, W, ph, pw, sh, PL, Wph, back)
    elif sw == 2 and W % 2 == 0:
        _split_pairs(buf, src, H, W, ph, pw, sh, PL, Wph, back)
    else:
        _split_strided(buf, src, H, W, ph, pw, sh, sw, PL, Wph, back)


@njit(**njit_options(), inline="always")
def _to_phases(buf, src, H, W, ph, pw, sh, sw, Hph, Wph):
    """buf (sh*sw planes of Hph*Wph + Wph) = the phases of src (H x W) zero-padded by ph, pw
    (zero past it)."""
    for i in range(buf.shape[0]):
        buf[i] = 0
    _phases(buf, src, H, W, ph, pw, sh, sw, Hph, Wph, False)


@njit(**njit_options(), inline="always")
def _from_phases(dst, buf, H, W, ph, pw, sh, sw, Hph, Wph):
    """dst (H x W) = the interior of the padded plane held as phases in buf (_to_phases)."""
    _phases(buf, dst, H, W, ph, pw, sh, sw, Hph, Wph, True)


@njit(**njit_options(), inline="always")
def _tap_offset(r, s, dh, dw, sh, sw, Hph, Wph):
    """Where tap (r, s) reads in the phase planes: plane offset + (row, column) shift."""
    rr = r * dh
    ss = s * dw
    return ((rr % sh) * sw + ss % sw) * (Hph * Wph + Wph) + (rr // sh) * Wph + ss // sw


@njit(**njit_options(), inline="always")
def _rows(wide, packed, P, Q, Wph, back):
    """wide's rows p (row stride Wph, first Q columns) = packed's rows (row stride Q); back:
    the other way, packed = wide's first Q columns."""
    for p in range(P):
        w = wide[p * Wph:p * Wph + Q]
        k = packed[p * Q:(p + 1) * Q]
        if back:
            for q in range(Q):
                k[q] = w[q]
        else:
            for q in range(Q):
                w[q] = k[q]


@njit(**njit_options(parallel=True))
def conv2d_dw_fwd_plane_kernel(x, w, bias, has_bias, y, R, S, sh, sw, dh, dw, ph, pw, Hph,
                               Wph):
    """One bank: one task per input plane (n, c), split into phase planes once and used by its
    M filters; y (N, K, P, Q)."""
    N, C, H, W = x.shape
    _, K, P, Q = y.shape
    M = K // C
    RS = R * S
    L = P * Wph
    xf = x.ravel()
    yf = y.ravel()
    wf = w.ravel()
    for task in prange(N * C):
        n = task // C
        c = task - n * C
        buf = np.empty(sh * sw * (Hph * Wph + Wph), dtype=x.dtype)
        acc = np.empty(L, dtype=y.dtype)
        _to_phases(buf, xf[(n * C + c) * H * W:(n * C + c + 1) * H * W], H, W, ph, pw, sh, sw,
                   Hph, Wph)
        for k in range(c * M, c * M + M):
            b = bias[k] if has_bias else typed_zero(y)
            for i in range(L):
                acc[i] = b
            for r in range(R):
                s = 0
                while s + 3 <= S:           # taps s, s+1, s+2 of row r in one pass
                    o0 = _tap_offset(r, s, dh, dw, sh, sw, Hph, Wph)
                    o1 = _tap_offset(r, s + 1, dh, dw, sh, sw, Hph, Wph)
                    o2 = _tap_offset(r, s + 2, dh, dw, sh, sw, Hph, Wph)
                    w0 = k * RS + r * S + s
                    _axpy3(acc, buf[o0:o0 + L], buf[o1:o1 + L], buf[o2:o2 + L], wf[w0],
                           wf[w0 + 1], wf[w0 + 2])
                    s += 3
                for s2 in range(s, S):
                    o = _tap_offset(r, s2, dh, dw, sh, sw, Hph, Wph)
                    _axpy(acc, buf[o:o + L], wf[k * RS + r * S + s2])
            _rows(acc, yf[(n * K + k) * P * Q:(n * K + k + 1) * P * Q], P, Q, Wph, True)


@njit(**njit_options(parallel=True))
def conv2d_dw_dgrad_plane_kernel(dy, w, dx, R, S, sh, sw, dh, dw, ph, pw, Hph, Wph):
    """One bank: one task per input plane (n, c): its M filters' dy planes copied at row
    stride Wph (zero past Q) and scattered tap by tap into private phase planes of the padded
    input gradient, whose interior is dx[n, c]."""
    N, K, P, Q = dy.shape
    _, C, H, W = dx.shape
    M = K // C
    RS = R * S
    L = P * Wph
    dyf = dy.ravel()
    dxf = dx.ravel()
    wf = w.ravel()
    for task in prange(N * C):
        n = task // C
        c = task - n * C
        acc = np.zeros(sh * sw * (Hph * Wph + Wph), dtype=dx.dtype)
        dyb = np.zeros(L, dtype=dx.dtype)
        for k in range(c * M, c * M + M):
            _rows(dyb, dyf[(n * K + k) * P * Q:(n * K + k + 1) * P * Q], P, Q, Wph, False)
            for r in range(R):
                for s in range(S):
                    o = _tap_offset(r, s, dh, dw, sh, sw, Hph, Wph)
                    _axpy(acc[o:o + L], dyb, wf[k * RS + r * S + s])
        _from_phases(dxf[(n * C + c) * H * W:(n * C + c + 1) * H * W], acc, H, W, ph, pw, sh,
                     sw, Hph, Wph)


@njit(**njit_options(parallel=True))
def conv2d_dw_wgrad_plane_kernel(dy, x, out, R, S, sh, sw, dh, dw, ph, pw, Hph, Wph,
                                 accumulate):
    """One bank: one task per filter k; per image, its input plane split into phases and its
    dy plane copied at row stride Wph (zero past Q), then each tap one long dot product; images
    summed in order (bitwise the same for any thread count)."""
    N, K, P, Q = dy.shape
    _, C, H, W = x.shape
    M = K // C
    RS = R * S
    L = P * Wph
    dyf = dy.ravel()
    xf = x.ravel()
    of = out.ravel()
    for k in prange(K):
        c = k // M
        buf = np.empty(sh * sw * (Hph * Wph + Wph), dtype=x.dtype)
        dyb = np.zeros(L, dtype=dy.dtype)
        acc = np.zeros(RS, dtype=dy.dtype)
        for n in range(N):
            _to_phases(buf, xf[(n * C + c) * H * W:(n * C + c + 1) * H * W], H, W, ph, pw, sh,
                       sw, Hph, Wph)
            _rows(dyb, dyf[(n * K + k) * P * Q:(n * K + k + 1) * P * Q], P, Q, Wph, False)
            for r in range(R):
                s = 0
                while s + 3 <= S:
                    o0 = _tap_offset(r, s, dh, dw, sh, sw, Hph, Wph)
                    o1 = _tap_offset(r, s + 1, dh, dw, sh, sw, Hph, Wph)
                    o2 = _tap_offset(r, s + 2, dh, dw, sh, sw, Hph, Wph)
                    ta, tb, tc = _dot3(dyb, buf[o0:o0 + L], buf[o1:o1 + L], buf[o2:o2 + L],
                                       typed_zero(dy))
                    acc[r * S + s] += ta
                    acc[r * S + s + 1] += tb
                    acc[r * S + s + 2] += tc
                    s += 3
                for s2 in range(s, S):
                    o = _tap_offset(r, s2, dh, dw, sh, sw, Hph, Wph)
                    acc[r * S + s2] += _dot(dyb, buf[o:o + L], typed_zero(dy))
        for i in range(RS):
            if accumulate:
                of[k * RS + i] += acc[i]
            else:
                of[k * RS + i] = acc[i]


def _plane(g, tile):
    """(Hph, Wph), the size of the phase-plane kernels' planes (the padded input split by the
    stride), or None where the row kernels run (a tiled grid)."""
    if tuple(tile) != (1, 1):
        return None
    (t, b), (l, r) = g.pads()
    return -(-(g.H + t + b) // g.stride[0]), -(-(g.W + l + r) // g.stride[1])


def _banks(banks):
    """(TP, TQ, K, 1, R, S) -> contiguous (TP*TQ, K, R*S)."""
    TP, TQ, K, _, R, S = banks.shape
    return np.ascontiguousarray(banks.reshape(TP * TQ, K, R * S))


def forward(x, banks, bias, g, y):
    """y = the depthwise tiled conv of x (N, C, H, W) with banks (TP, TQ, K, 1, R, S), bias
    (TP, TQ, K) or None, zero padding g.padding (and g.extra: no tap reads past x's end)."""
    TP, TQ = banks.shape[:2]
    b = (np.ascontiguousarray(bias).reshape(-1) if bias is not None
         else np.zeros(1, dtype=y.dtype))
    plane = _plane(g, (TP, TQ))
    with _launch_lock:
        if plane is not None:
            conv2d_dw_fwd_plane_kernel(np.ascontiguousarray(x), _banks(banks), b,
                                       bias is not None, y, g.R, g.S, *g.stride,
                                       *g.dilation, *g.padding, *plane)
            return
        conv2d_dw_fwd_kernel(np.ascontiguousarray(x), _banks(banks), b, bias is not None, y,
                             g.R, g.S, *g.stride, *g.dilation, *g.padding, TP, TQ)


def weight_grad(dy, x, g, tile, out, accumulate):
    """out (TP, TQ, K, 1, R, S) or (K, 1, R, S), C-contiguous: (+)= the weight gradient."""
    plane = _plane(g, tile)
    with _launch_lock:
        if plane is not None:
            conv2d_dw_wgrad_plane_kernel(np.ascontiguousarray(dy), np.ascontiguousarray(x),
                                         out.reshape(-1, g.K, g.R * g.S), g.R, g.S,
                                         *g.stride, *g.dilation, *g.padding, *plane,
                                         accumulate)
            return
        conv2d_dw_wgrad_kernel(np.ascontiguousarray(dy), np.ascontiguousarray(x),
                               out.reshape(-1, g.K, g.R * g.S), g.R, g.S, *g.stride,
                               *g.dilation, *g.padding, *tile, accumulate)


def input_grad(dy, banks, g, dx):
    TP, TQ = banks.shape[:2]
    plane = _plane(g, (TP, TQ))
    with _launch_lock:
        if plane is not None:
            conv2d_dw_dgrad_plane_kernel(np.ascontiguousarray(dy), _banks(banks), dx, g.R, g.S,
                                         *g.stride, *g.dilation, *g.padding, *plane)
            return
        conv2d_dw_dgrad_kernel(np.ascontiguousarray(dy), _banks(banks), dx, g.R, g.S,
                               *g.stride, *g.dilation, *g.padding, TP, TQ)
