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
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .. import config, dtypes
from ._simd import narrow, widen
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
def _add_into(g, i, v):
    """g[i] += v for a float64 v: in float64 into a float64 array, else in float32 and rounded
    once into the array's dtype (float32, bfloat16, float16)."""


@overload(_add_into, inline="always")
def _add_into_impl(g, i, v):
    if g.dtype == types.float64:
        def impl(g, i, v):
            g[i] += v
    else:
        def impl(g, i, v):
            g[i] = narrow(widen(g[i]) + np.float32(v), g)
    return impl


# Gather form: each bank's gradient is computed by the thread that owns it, from the bank and
# its (up to 8) neighbours, so no two threads write one element and the gradient is stored
# once; the penalty counts each pair at its first bank only (the forward directions). Threads
# own rows of the grid (prange over TP).
@njit(**config.njit_options(), inline="always")
def _neighbours(p, q, TP, TQ, dirs, wrap, nbp, nbq, fwd):
    """How many neighbours bank (p, q) has; their rows, columns and whether the pair is
    counted here (a forward direction) in nbp, nbq, fwd."""
    nd = dirs.shape[0]
    nn = 0
    for j in range(2 * nd):
        sign = 1 if j < nd else -1
        p2 = p + sign * dirs[j % nd, 0]
        q2 = q + sign * dirs[j % nd, 1]
        if wrap:
            p2 %= TP
            q2 %= TQ
        elif p2 < 0 or p2 >= TP or q2 < 0 or q2 >= TQ:
            continue
        nbp[nn], nbq[nn], fwd[nn] = p2, q2, j < nd
        nn += 1
    return nn


@njit(**config.njit_options(parallel=True))
def neighbour_l2_kernel(w, grad, has_grad, strength, dirs, wrap, chunk):
    """w, grad: (TP, TQ, L) banks. grad[p, q] += strength * sum over neighbours of (w[p, q] -
    w[neighbour]); returns the sum of squared differences over the forward pairs. The penalty
    is elementwise, so a bank is one run of L = K*C*R*S elements, cut into chunks that keep
    the gradient's running sum in L1 (runs of one filter, 363 elements at alexnet_conv1, would
    leave a scalar tail per filter)."""
    TP, TQ, L = w.shape
    nd = dirs.shape[0]
    partial = np.zeros(TP, np.float64)
    zero = strength - strength                  # 0 in the accumulation dtype
    for p in prange(TP):
        acc = np.empty(chunk, type(strength))
        nbp = np.empty(2 * nd, np.int64)
        nbq = np.empty(2 * nd, np.int64)
        fwd = np.empty(2 * nd, np.bool_)
        s = 0.0
        for q in range(TQ):
            nn = _neighbours(p, q, TP, TQ, dirs, wrap, nbp, nbq, fwd)
            for lo in range(0, L, chunk):
                m = min(chunk, L - lo)
                a = w[p, q, lo:lo + m]          # views indexed from 0: vectorised loops
                for i in range(m):
                    acc[i] = zero
                for j in range(nn):
                    b = w[nbp[j], nbq[j], lo:lo + m]
                    if fwd[j]:
                        ss = zero
                        for i in range(m):
                            d = widen(a[i]) - widen(b[i])
                            ss += d * d
                            acc[i] += d
                        s += np.float64(ss)
                    else:
                        for i in range(m):
                            acc[i] += widen(a[i]) - widen(b[i])
                if has_grad:
                    g = grad[p, q, lo:lo + m]
                    for i in range(m):
                        g[i] = narrow(widen(g[i]) + strength * acc[i], g)
        partial[p] = s
    total = 0.0
    for p in range(TP):                 # row order: the same bits on any thread count
        total += partial[p]
    return total


@njit(**config.njit_options(parallel=True))
def neighbour_cosine_kernel(w, grad, has_grad, scale, dirs, wrap, eps):
    """w, grad: (TP, TQ, K, M) banks. For each filter k of each pair, 1 - cos(a, b) with
    cos = a.b / (max(|a|, eps) max(|b|, eps)); grad[p, q, k] -= scale * sum over neighbours
    of (b / (na nb) - cos a / |a|^2). Returns the sum of 1 - cos over the forward pairs. Dots
    and norms in float64."""
    TP, TQ, K, M = w.shape
    nd = dirs.shape[0]
    partial = np.zeros(TP, np.float64)
    for p in prange(TP):
        acc = np.empty(M, np.float64)
        nbp = np.empty(2 * nd, np.int64)
        nbq = np.empty(2 * nd, np.int64)
        fwd = np.empty(2 * nd, np.bool_)
        s = 0.0
        for q in range(TQ):
            nn = _neighbours(p, q, TP, TQ, dirs, wrap, nbp, nbq, fwd)
            for k in range(K):
                a = w[p, q, k]
                la = 0.0
                for i in range(M):
                    x = np.float64(widen(a[i]))
                    la += x * x
                    acc[i] = 0.0
                la = np.sqrt(la)
                na = max(la, eps)
                self_coef = 0.0
                for j in range(nn):
                    b = w[nbp[j], nbq[j], k]
                    dot = 0.0
                    lb = 0.0
                    for i in range(M):
                        y = np.float64(widen(b[i]))
                        dot += np.float64(widen(a[i])) * y
                        lb += y * y
                    nb = max(np.sqrt(lb), eps)
                    cos = dot / (na * nb)
                    if fwd[j]:
                        s += 1.0 - cos
                    if has_grad:
                        c = 1.0 / (na * nb)
                        for i in range(M):
                            acc[i] += c * widen(b[i])
                        if la > eps:
                            self_coef += cos / (na * na)
                if has_grad:
                    g = grad[p, q, k]
                    for i in range(M):
                        _add_into(g, i, -scale * (acc[i] - self_coef * widen(a[i])))
        partial[p] = s
    total = 0.0
    for p in range(TP):                 # row order: the same bits on any thread count
        total += partial[p]
    return total


def neighbour_penalty(weight, strength, metric, neighbourhood, wrap, grad_weight=None):
    """The penalty (a float) of C-contiguous banked `weight` (TP, TQ, K, C, R, S);
    grad_weight (its shape; its dtype or float32 for reduced weights) is added into. Formula:
    reference.neighbour_penalty."""
    from ..reference import COSINE_EPS, NEIGHBOURHOODS, neighbour_pairs

    TP, TQ, K = weight.shape[:3]
    dirs = np.array(NEIGHBOURHOODS[neighbourhood], np.int64)
    shape = (TP, TQ, -1) if metric == "l2" else (TP, TQ, K, -1)
    w = dtypes.kernel_view(weight).reshape(shape)
    g = (np.empty((0,) * len(w.shape), w.dtype) if grad_weight is None
         else dtypes.kernel_view(grad_weight).reshape(shape))
    has = grad_weight is not None
    with launch_lock:
        if metric == "l2":
            s = dtypes.lookup(weight.dtype).accum.type(strength)
            total = neighbour_l2_kernel(w, g, has, s, dirs, bool(wrap), config.NEIGHBOUR_CHUNK)
            return 0.5 * float(strength) * total
        # cosine: the mean over pairs and filters
        npairs = len(neighbour_pairs((TP, TQ), neighbourhood, wrap))
        scale = float(strength) / (npairs * K) if npairs else 0.0
        return scale * neighbour_cosine_kernel(w, g, has, scale, dirs, bool(wrap), COSINE_EPS)
