"""Soft sharing on the CPU: penalty = strength/2 * sum((a - b)**2), its gradients added into
grad_a (+ strength*(a - b)) and grad_b (- strength*(a - b)), in one pass over the four streams.

Bandwidth-bound (6 bytes moved per FLOP): each thread walks whole chunks of config.PENALTY_CHUNK
elements, reading a and b once and updating the gradients in the same loop; a chunk's sum of
squares is accumulated in float64 and the per-chunk partials are summed in chunk order, so the
result has the same bits whatever the thread count.

bfloat16/float16 banks (their 16-bit views, dtypes.py) are widened in registers and the
difference taken in float32; gradients in the storage dtype are rounded once per element,
float32 ones (master weights) are added into as they are. Half the bytes of float32 a and b.
"""
from functools import lru_cache

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .. import config, dtypes
from ..reference import COSINE_EPS, NEIGHBOURHOODS, neighbour_count
from ._simd import narrow, stream_copy, widen
from ._workspace import launch_lock


@njit(**config.njit_options(parallel=True))
def soft_sharing_penalty_kernel(a, b, strength, grad_a, grad_b, has_a, has_b, chunk):
    n = a.size
    nchunks = (n + chunk - 1) // chunk
    partial = np.zeros(nchunks, np.float64)
    for c in prange(nchunks):
        lo = c * chunk
        hi = min(n, lo + chunk)
        # chunk views indexed from 0: LLVM vectorises these loops, not ones indexed lo..hi
        # (3x slower here); four loops instead of one with two ifs: each a straight stream
        x, y, ga, gb = a[lo:hi], b[lo:hi], grad_a[lo:hi], grad_b[lo:hi]
        m = hi - lo
        s = 0.0
        if has_a and has_b:
            for i in range(m):
                d = widen(x[i]) - widen(y[i])
                s += np.float64(d) * d
                ga[i] = narrow(widen(ga[i]) + strength * d, ga)
                gb[i] = narrow(widen(gb[i]) - strength * d, gb)
        elif has_a:
            for i in range(m):
                d = widen(x[i]) - widen(y[i])
                s += np.float64(d) * d
                ga[i] = narrow(widen(ga[i]) + strength * d, ga)
        elif has_b:
            for i in range(m):
                d = widen(x[i]) - widen(y[i])
                s += np.float64(d) * d
                gb[i] = narrow(widen(gb[i]) - strength * d, gb)
        else:
            for i in range(m):
                d = np.float64(widen(x[i]) - widen(y[i]))
                s += d * d
        partial[c] = s
    total = 0.0
    for c in range(nchunks):        # chunk order: deterministic
        total += partial[c]
    return total


def soft_sharing_penalty(a, b, strength, grad_a=None, grad_b=None):
    """The penalty (a float) for flat C-contiguous a, b of one dtype; grad_a / grad_b (same
    shape and dtype, float32 for reduced a and b, or None) are added into in place."""
    row = dtypes.lookup(a.dtype)
    s = row.accum.type(strength)
    a, b = dtypes.kernel_view(a), dtypes.kernel_view(b)
    ga = np.empty(0, a.dtype) if grad_a is None else dtypes.kernel_view(grad_a)
    gb = np.empty(0, a.dtype) if grad_b is None else dtypes.kernel_view(grad_b)
    with launch_lock:
        total = soft_sharing_penalty_kernel(a, b, s, ga, gb, grad_a is not None,
                                            grad_b is not None, config.PENALTY_CHUNK)
    return 0.5 * float(strength) * total


# ------------------------------------------------------------------ neighbour soft sharing
# Gather form: each bank's gradient is summed from the bank and its (up to 8) neighbours by the
# thread that owns the bank's grid row (prange over TP), so no two threads write one element
# and each gradient element is stored once; the penalty counts a pair at its first bank only
# (the forward directions). A bank's neighbours sit in 8 slots, forward directions in 0-3 and
# backward ones in 4-7; a slot without a neighbour (the grid's edge, the 4-neighbourhood's
# diagonals) points at the bank itself with weight 0. One loop over a bank then reads it and
# its neighbours once each and keeps the sums in registers (a loop per neighbour adding into a
# running sum in memory was 2x slower at alexnet_conv1).


def _store(o, i, v):
    """o[i] = v: as it is into float64, else rounded once (from float32) into o's dtype."""


@overload(_store, inline="always")
def _store_impl(o, i, v):
    if o.dtype == types.float64:
        def impl(o, i, v):
            o[i] = v
    else:
        def impl(o, i, v):
            o[i] = narrow(np.float32(v), o)
    return impl


@njit(**config.njit_options(), inline="always")
def _slots(p, q, TP, TQ, dirs, wrap, nbp, nbq, on):
    """Fill the 8 neighbour slots of bank (p, q): row, column, and 1.0 where a neighbour is."""
    for j in range(8):
        nbp[j], nbq[j], on[j] = p, q, 0.0
    for d in range(dirs.shape[0]):
        for back in range(2):
            sign = -1 if back else 1
            p2 = p + sign * dirs[d, 0]
            q2 = q + sign * dirs[d, 1]
            if wrap:
                p2 %= TP
                q2 %= TQ
            elif p2 < 0 or p2 >= TP or q2 < 0 or q2 >= TQ:
                continue
            j = d + 4 * back
            nbp[j], nbq[j], on[j] = p2, q2, 1.0


@lru_cache(maxsize=None)
def neighbour_kernels(eight, grad):
    """(l2 kernel, cosine kernel) for the 8-neighbourhood (eight=True: slots 0-7) or the
    4-neighbourhood (slots 0, 1, 4, 5), with or without the gradient: `if EIGHT` and `if GRAD`
    are compile-time constants, their code compiled away where false (a store under a runtime
    branch left the penalty-only loop unvectorised, 7x slower)."""
    EIGHT, GRAD = eight, grad

    @njit(**config.njit_options(parallel=True))
    def neighbour_l2_kernel(w, grad, strength, dirs, wrap):
        """w, grad: (TP, TQ, L) banks (the penalty is elementwise: a bank is one run of
        L = K*C*R*S elements). grad[p, q] += strength * sum over neighbours of (w[p, q] -
        w[neighbour]); returns the sum of squared differences over the forward pairs (a slot
        pointing at the bank itself adds 0 to both)."""
        TP, TQ, L = w.shape
        partial = np.zeros(TP, np.float64)
        zero = strength - strength                  # 0 in the accumulation dtype
        for p in prange(TP):
            nbp = np.empty(8, np.int64)
            nbq = np.empty(8, np.int64)
            on = np.empty(8, np.float64)
            s = 0.0
            for q in range(TQ):
                _slots(p, q, TP, TQ, dirs, wrap, nbp, nbq, on)
                a = w[p, q]
                f0, f1, b0, b1 = w[nbp[0], nbq[0]], w[nbp[1], nbq[1]], w[nbp[4], nbq[4]], \
                    w[nbp[5], nbq[5]]
                f2, f3, b2, b3 = w[nbp[2], nbq[2]], w[nbp[3], nbq[3]], w[nbp[6], nbq[6]], \
                    w[nbp[7], nbq[7]]
                ss = zero
                g = grad[p, q]
                for i in range(L):
                    x = widen(a[i])
                    d0 = x - widen(f0[i])
                    d1 = x - widen(f1[i])
                    ss += d0 * d0 + d1 * d1
                    if EIGHT:
                        d2 = x - widen(f2[i])
                        d3 = x - widen(f3[i])
                        ss += d2 * d2 + d3 * d3
                    if GRAD:
                        d = d0 + d1 + (x - widen(b0[i])) + (x - widen(b1[i]))
                        if EIGHT:
                            d += d2 + d3 + (x - widen(b2[i])) + (x - widen(b3[i]))
                        g[i] = narrow(widen(g[i]) + strength * d, g)
                s += np.float64(ss)
            partial[p] = s
        total = 0.0
        for p in range(TP):                 # row order: the same bits on any thread count
            total += partial[p]
        return total

    @njit(**config.njit_options(parallel=True))
    def neighbour_cosine_kernel(w, grad, scale, zero, dirs, wrap, eps):
        """w, grad: (TP, TQ, K, M) banks. For each filter k of each pair, 1 - cos(a, b) with
        cos = a.b / (max(|a|, eps) max(|b|, eps)); grad[p, q, k] -= scale * sum over
        neighbours of (b / (na nb) - cos a / |a|^2). Returns the sum of 1 - cos over the
        forward pairs. Per filter one pass for the norms and the dots (float64), one for the
        gradient."""
        TP, TQ, K, M = w.shape
        partial = np.zeros(TP, np.float64)
        for p in prange(TP):
            nbp = np.empty(8, np.int64)
            nbq = np.empty(8, np.int64)
            on = np.empty(8, np.float64)
            dot = np.zeros(8, np.float64)
            nb2 = np.zeros(8, np.float64)
            c = np.zeros(8, np.float64)
            ct = np.zeros(9, type(zero))
            s = 0.0
            for q in range(TQ):
                _slots(p, q, TP, TQ, dirs, wrap, nbp, nbq, on)
                for k in range(K):
                    a = w[p, q, k]
                    b0, b1, b4, b5 = w[nbp[0], nbq[0], k], w[nbp[1], nbq[1], k], \
                        w[nbp[4], nbq[4], k], w[nbp[5], nbq[5], k]
                    b2, b3, b6, b7 = w[nbp[2], nbq[2], k], w[nbp[3], nbq[3], k], \
                        w[nbp[6], nbq[6], k], w[nbp[7], nbq[7], k]
                    la = 0.0
                    t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = 0.0     # a . b_j
                    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = 0.0     # |b_j|^2
                    for i in range(M):
                        x = np.float64(widen(a[i]))
                        y0, y1 = np.float64(widen(b0[i])), np.float64(widen(b1[i]))
                        y4, y5 = np.float64(widen(b4[i])), np.float64(widen(b5[i]))
                        la += x * x
                        t0 += x * y0
                        t1 += x * y1
                        t4 += x * y4
                        t5 += x * y5
                        n0 += y0 * y0
                        n1 += y1 * y1
                        n4 += y4 * y4
                        n5 += y5 * y5
                        if EIGHT:
                            y2, y3 = np.float64(widen(b2[i])), np.float64(widen(b3[i]))
                            y6, y7 = np.float64(widen(b6[i])), np.float64(widen(b7[i]))
                            t2 += x * y2
                            t3 += x * y3
                            t6 += x * y6
                            t7 += x * y7
                            n2 += y2 * y2
                            n3 += y3 * y3
                            n6 += y6 * y6
                            n7 += y7 * y7
                    dot[0], dot[1], dot[2], dot[3] = t0, t1, t2, t3
                    dot[4], dot[5], dot[6], dot[7] = t4, t5, t6, t7
                    nb2[0], nb2[1], nb2[2], nb2[3] = n0, n1, n2, n3
                    nb2[4], nb2[5], nb2[6], nb2[7] = n4, n5, n6, n7
                    la = np.sqrt(la)
                    na = max(la, eps)
                    self_coef = 0.0
                    for j in range(8):
                        nb = max(np.sqrt(nb2[j]), eps)
                        cos = dot[j] / (na * nb)
                        if j < 4:
                            s += on[j] * (1.0 - cos)
                        # d(1 - cos)/da = -(b / (na nb) - cos a / |a|^2)
                        c[j] = on[j] / (na * nb)
                        if la > eps:
                            self_coef += on[j] * cos / (na * na)
                    if GRAD:
                        # the gradient's arithmetic in the accumulation dtype (`zero`'s: float32
                        # but for float64 weights), its coefficients scaled once
                        g = grad[p, q, k]
                        for j in range(8):
                            ct[j] = -scale * c[j]
                        ct[8] = scale * self_coef
                        c0, c1, c2, c3, c4, c5, c6, c7, ca = ct[0], ct[1], ct[2], ct[3], \
                            ct[4], ct[5], ct[6], ct[7], ct[8]
                        for i in range(M):
                            v = (c0 * widen(b0[i]) + c1 * widen(b1[i]) + c4 * widen(b4[i])
                                 + c5 * widen(b5[i]) + ca * widen(a[i]))
                            if EIGHT:
                                v += (c2 * widen(b2[i]) + c3 * widen(b3[i]) + c6 * widen(b6[i])
                                      + c7 * widen(b7[i]))
                            _store(g, i, widen(g[i]) + v)
            partial[p] = s
        total = 0.0
        for p in range(TP):                 # row order: the same bits on any thread count
            total += partial[p]
        return total

    return neighbour_l2_kernel, neighbour_cosine_kernel


def neighbour_penalty(weight, strength, metric, neighbourhood, wrap, grad_weight=None):
    """The penalty (a float) of C-contiguous banked `weight` (TP, TQ, K, C, R, S);
    grad_weight (its shape; its dtype or float32 for reduced weights) is added into. Formula:
    reference.neighbour_penalty."""
    TP, TQ, K = weight.shape[:3]
    accum = dtypes.lookup(weight.dtype).accum.type
    dirs = np.array(NEIGHBOURHOODS[neighbourhood], np.int64)
    shape = (TP, TQ, -1) if metric == "l2" else (TP, TQ, K, -1)
    w = dtypes.kernel_view(weight).reshape(shape)
    # without a gradient the kernel's grad argument is w itself, never written (GRAD False)
    g = w if grad_weight is None else dtypes.kernel_view(grad_weight).reshape(shape)
    l2, cosine = neighbour_kernels(neighbourhood == 8, grad_weight is not None)
    with launch_lock:
        if metric == "l2":
            total = l2(w, g, accum(strength), dirs, bool(wrap))
            return 0.5 * float(strength) * total
        # cosine: the mean over pairs and filters
        npairs = neighbour_count((TP, TQ), neighbourhood, wrap)
        scale = float(strength) / (npairs * K) if npairs else 0.0
        return scale * cosine(w, g, scale, accum(0), dirs, bool(wrap), COSINE_EPS)


# ------------------------------------------------------------------------- bank averaging
def _mean_row(o, m):
    """An empty row of m elements in the type o's elements are written from: float64 for
    float64 banks, else float32 (rounded to 16-bit storage by the store)."""


@overload(_mean_row, inline="always")
def _mean_row_impl(o, m):
    if o.dtype == types.float64:
        return lambda o, m: np.empty(m, np.float64)
    return lambda o, m: np.empty(m, np.float32)


@njit(**config.njit_options(parallel=True))
def average_banks_kernel(w, out, gp, gq, chunk):
    """w, out: (TP, TQ, L) banks (out may be w: in place). Each block of gp x gq positions
    (the last ones clipped at the grid's edge) gets the mean of its banks, summed in float64.
    A task takes one chunk of a bank's elements over one row of blocks: it sums the block's
    chunks, then writes their mean over them, so in place is safe and each element is read
    and written once. The mean is written with non-temporal stores (the banks are not read
    again soon: an ordinary store would first read each line of out for ownership, a third
    stream)."""
    TP, TQ, L = w.shape
    nbp, nbq = (TP + gp - 1) // gp, (TQ + gq - 1) // gq
    nchunks = (L + chunk - 1) // chunk
    for t in prange(nchunks * nbp):
        lo = (t // nbp) * chunk
        m = min(chunk, L - lo)
        p0 = (t % nbp) * gp
        p1 = min(TP, p0 + gp)
        acc = np.empty(m, np.float64)
        mean = _mean_row(out, m)
        for bq in range(nbq):
            q0 = bq * gq
            q1 = min(TQ, q0 + gq)
            for i in range(m):
                acc[i] = 0.0
            for p in range(p0, p1):
                # two banks per pass over acc: half the passes over it (load, add, store)
                for q in range(q0, q1 - 1, 2):
                    a = w[p, q, lo:lo + m]
                    b = w[p, q + 1, lo:lo + m]
                    for i in range(m):
                        acc[i] += np.float64(widen(a[i])) + np.float64(widen(b[i]))
                if (q1 - q0) % 2:
                    a = w[p, q1 - 1, lo:lo + m]
                    for i in range(m):
                        acc[i] += widen(a[i])
            inv = 1.0 / ((p1 - p0) * (q1 - q0))
            for i in range(m):
                mean[i] = acc[i] * inv
            for p in range(p0, p1):
                for q in range(q0, q1):
                    stream_copy(out[p, q], lo, mean, 0, m)


def average_banks(weight, groups_of, out):
    """out (may be weight) = weight's banks averaged over blocks of groups_of = (gp, gq)
    positions; C-contiguous banked arrays of one dtype."""
    TP, TQ = weight.shape[:2]
    w = dtypes.kernel_view(weight).reshape(TP, TQ, -1)
    o = dtypes.kernel_view(out).reshape(TP, TQ, -1)
    gp, gq = min(groups_of[0], TP), min(groups_of[1], TQ)
    # the summation order does not depend on the chunk; longer runs where tasks are plenty
    chunk = config.AVERAGE_CHUNK
    if -(-TP // gp) * -(-w.shape[2] // (2 * chunk)) >= 64:
        chunk *= 2
    with launch_lock:
        average_banks_kernel(w, o, gp, gq, chunk)
    return out
