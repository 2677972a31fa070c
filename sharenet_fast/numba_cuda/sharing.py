"""Numba CUDA kernels of the soft-sharing penalty (host side: _gpu_host.soft_sharing_penalty;
the CUDA C twins: kernels/sharing.cu, the same names and declared arguments).

soft_sharing_penalty_kernel: a fixed grid of blocks strides over the n elements in groups of E
consecutive ones (2 for 16-bit storage: the CUDA C twin loads a pair as one 32-bit word; 1
otherwise): thread t of block k takes group k*NT + t, then steps by the whole grid, so
consecutive threads read consecutive elements and every load and the gradient read-modify-
writes are coalesced; the difference and
the gradient step are computed in the accumulation dtype, each thread keeps its sum of squares
in float64, the block folds them in a shared-memory tree (fixed order) into partials[k].
soft_sharing_reduce_kernel: one block sums the partials in the same fixed order and scales by
strength/2. No atomics anywhere: the penalty has the same bits on every run.

Neighbour soft sharing and bank averaging on banked weights (TP, TQ, KF): position (p, q)'s
bank is KF = K*C*R*S contiguous values; its neighbours are the banks one step along each
direction of NEIGHBOURHOODS (4: right, down; 8: and both down-diagonals), on a torus if wrap.
neighbour_l2_kernel: a grid-stride loop over the elements (coalesced: consecutive threads,
consecutive elements of one bank); each thread reads its element and the same element of the
(up to 8) banks around it, adds strength * sum of (w - neighbour) into grad (owner computes:
no atomics) and sums the squared differences to its forward neighbours (each pair once) in
float64 into its block's partial; soft_sharing_reduce_kernel then scales the sum by strength/2.
neighbour_dots_kernel: one block per filter (position, k): |w| and its dot products with its
forward neighbours' filter, tree-summed in float64. neighbour_cosine_kernel: a grid-stride loop
over the elements again, each gradient element from the cosines of the (up to 8) pairs its
filter is in; the filter's first element's thread adds its (1 - cos) terms to the partial.
average_banks_kernel: a grid-stride loop over (block of positions, element): the element's mean
over the block in float64, written to every position of the block (in place allowed: a thread
reads all it writes first, and no other thread touches those elements).
"""
import functools
import math

import numpy as np

from numba import cuda  # a module global: the simulator swaps it inside kernels

from .. import config
from .._gpu_kernels import KERNELS, row
from ..reference import COSINE_EPS
from ._convert import converters
from ._launch import signature

TAGS = ("penalty", "penalty_reduce", "neighbour_l2", "neighbour_dots", "neighbour_cosine",
        "average")


@functools.lru_cache(maxsize=None)
def kernels(dt, out, nt):
    """{"penalty", "penalty_reduce"} for one dtypes.DType row, gradient dtype `out` (O: the
    storage dtype, or float32 master gradients of 16-bit storage) and block size nt (a power
    of two)."""
    from numba import float64, from_dtype, int64

    if nt & (nt - 1):
        raise ValueError(f"penalty block size must be a power of two, got {nt}")
    widen, widen_out, narrow_out = converters(dt, out)
    at = from_dtype(dt.accum)
    E = 2 if dt.storage.itemsize == 2 else 1   # elements per thread per step (sharing.cu)

    @cuda.jit(device=True, inline=True)
    def tree(buf, t):
        # buf[0] = sum of buf[0:nt], folding halves in a fixed order
        cuda.syncthreads()
        half = nt // 2
        while half > 0:
            if t < half:
                buf[t] += buf[t + half]
            cuda.syncthreads()
            half //= 2

    @cuda.jit(fastmath=False)
    def soft_sharing_penalty_kernel(a, b, strength, grad_a, grad_b, has_a, has_b, n, partials):
        t = cuda.threadIdx.x
        step = int64(cuda.gridDim.x) * nt * E
        s = float64(0)
        for i0 in range((int64(cuda.blockIdx.x) * nt + t) * E, n, step):
            for e in range(E):
                i = i0 + e
                if i < n:
                    d = widen(a[i]) - widen(b[i])
                    s += float64(d) * float64(d)
                    if has_a:
                        grad_a[i] = narrow_out(widen_out(grad_a[i]) + strength * d)
                    if has_b:
                        grad_b[i] = narrow_out(widen_out(grad_b[i]) - strength * d)
        buf = cuda.shared.array(nt, float64)
        buf[t] = s
        tree(buf, t)
        if t == 0:
            partials[cuda.blockIdx.x] = buf[0]

    @cuda.jit(fastmath=False)
    def soft_sharing_reduce_kernel(partials, nparts, scale, out):
        t = cuda.threadIdx.x
        s = float64(0)
        for i in range(t, nparts, nt):
            s += partials[i]
        buf = cuda.shared.array(nt, float64)
        buf[t] = s
        tree(buf, t)
        if t == 0:
            out[0] = scale * buf[0]

    eps = float64(COSINE_EPS)

    @cuda.jit(device=True, inline=True)
    def neighbour(p, q, dp, dq, TP, TQ, wrap):
        # the position (p + dp, q + dq) as a flat index, or -1 off the grid (wrap: a torus)
        p2 = p + dp
        q2 = q + dq
        if wrap:
            p2 = (p2 % TP + TP) % TP
            q2 = (q2 % TQ + TQ) % TQ
        elif p2 < 0 or p2 >= TP or q2 < 0 or q2 >= TQ:
            return int64(-1)
        return int64(p2) * TQ + q2

    @cuda.jit(device=True, inline=True)
    def direction(d):
        # NEIGHBOURHOODS[8]: (0, 1), (1, 0), (1, 1), (1, -1); the 4-neighbourhood is the first two
        if d == 0:
            return 0, 1
        if d == 1:
            return 1, 0
        if d == 2:
            return 1, 1
        return 1, -1

    @cuda.jit(fastmath=False)
    def neighbour_l2_kernel(w, grad, strength, TP, TQ, KF, eight, wrap, has_grad, partials):
        t = cuda.threadIdx.x
        nd = 4 if eight else 2
        s = float64(0)
        n = int64(TP) * TQ * KF
        for i in range(int64(cuda.blockIdx.x) * nt + t, n, int64(cuda.gridDim.x) * nt):
            pos = i // KF
            e = i - pos * KF
            p = pos // TQ
            q = pos - p * TQ
            v = widen(w[i])
            g = at(0)
            for d in range(nd):
                dp, dq = direction(d)
                f = neighbour(p, q, dp, dq, TP, TQ, wrap)
                if f >= 0:                       # the pair (this, forward neighbour)
                    diff = v - widen(w[f * KF + e])
                    s += float64(diff) * float64(diff)
                    g += diff
                b = neighbour(p, q, -dp, -dq, TP, TQ, wrap)
                if b >= 0:                       # the pair (backward neighbour, this)
                    g += v - widen(w[b * KF + e])
            if has_grad:
                grad[i] = narrow_out(widen_out(grad[i]) + strength * g)
        buf = cuda.shared.array(nt, float64)
        buf[t] = s
        tree(buf, t)
        if t == 0:
            partials[cuda.blockIdx.x] = buf[0]

    @cuda.jit(fastmath=False)
    def neighbour_dots_kernel(w, norms, dots, TP, TQ, K, F, eight, wrap):
        # one block per filter (pos, k): norms[pos*K + k] = |w|, dots[(d*TP*TQ + pos)*K + k] =
        # its dot product with forward neighbour d's filter k (0 where there is none)
        t = cuda.threadIdx.x
        fil = int64(cuda.blockIdx.x)
        pos = fil // K
        k = fil - pos * K
        p = pos // TQ
        q = pos - p * TQ
        nd = 4 if eight else 2
        base = fil * F
        buf = cuda.shared.array((5, nt), float64)
        for j in range(5):
            buf[j, t] = 0
        for d in range(nd):
            dp, dq = direction(d)
            f = neighbour(p, q, dp, dq, TP, TQ, wrap)
            if f >= 0:
                other = (f * K + k) * F
                acc = float64(0)
                for e in range(t, F, nt):
                    acc += float64(widen(w[base + e])) * float64(widen(w[other + e]))
                buf[1 + d, t] = acc
        acc = float64(0)
        for e in range(t, F, nt):
            a = float64(widen(w[base + e]))
            acc += a * a
        buf[0, t] = acc
        cuda.syncthreads()
        half = nt // 2
        while half > 0:
            if t < half:
                for j in range(5):
                    buf[j, t] += buf[j, t + half]
            cuda.syncthreads()
            half //= 2
        if t == 0:
            norms[fil] = math.sqrt(buf[0, 0])
            for d in range(4):
                dots[(int64(d) * TP * TQ + pos) * K + k] = buf[1 + d, 0]

    @cuda.jit(device=True, inline=True)
    def cos_terms(la, lb, dot, lx):
        # (cos, 1/(na nb), cos/|x|^2 or 0 where |x| <= eps) of a pair with norms la, lb, for
        # the gradient at its member of norm lx: d cos/dx = y/(na nb) - cos/|x|^2 x
        na = max(la, eps)
        nb = max(lb, eps)
        inv = 1.0 / (na * nb)
        c = dot * inv
        nx = max(lx, eps)
        cx = c / (nx * nx) if lx > eps else 0.0
        return c, inv, cx

    @cuda.jit(fastmath=False)
    def neighbour_cosine_kernel(w, grad, norms, dots, scale, TP, TQ, K, F, eight, wrap,
                                has_grad, partials):
        t = cuda.threadIdx.x
        nd = 4 if eight else 2
        s = float64(0)
        KF = int64(K) * F
        n = int64(TP) * TQ * KF
        for i in range(int64(cuda.blockIdx.x) * nt + t, n, int64(cuda.gridDim.x) * nt):
            pos = i // KF
            rem = i - pos * KF
            k = rem // F
            e = rem - k * F
            p = pos // TQ
            q = pos - p * TQ
            fil = pos * K + k
            la = norms[fil]
            a = float64(widen(w[i]))
            g = float64(0)
            for d in range(nd):
                dp, dq = direction(d)
                f = neighbour(p, q, dp, dq, TP, TQ, wrap)
                if f >= 0:                       # pair (this, f)
                    c, inv, cx = cos_terms(la, norms[f * K + k],
                                           dots[(int64(d) * TP * TQ + pos) * K + k], la)
                    g -= float64(widen(w[(f * K + k) * F + e])) * inv - cx * a
                    if e == 0:                   # the filter's (1 - cos) once, by element 0
                        s += 1.0 - c
                b = neighbour(p, q, -dp, -dq, TP, TQ, wrap)
                if b >= 0:                       # pair (b, this)
                    c, inv, cx = cos_terms(norms[b * K + k], la,
                                           dots[(int64(d) * TP * TQ + b) * K + k], la)
                    g -= float64(widen(w[(b * K + k) * F + e])) * inv - cx * a
            if has_grad:
                grad[i] = narrow_out(widen_out(grad[i]) + at(scale * g))
        buf = cuda.shared.array(nt, float64)
        buf[t] = s
        tree(buf, t)
        if t == 0:
            partials[cuda.blockIdx.x] = buf[0]

    @cuda.jit(fastmath=False)
    def average_banks_kernel(w, out, TP, TQ, F, gp, gq):
        nbq = (TQ + gq - 1) // gq
        n = int64((TP + gp - 1) // gp) * nbq * F
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            blk = i // F
            e = i - blk * F
            p0 = (blk // nbq) * gp
            q0 = (blk - (blk // nbq) * nbq) * gq
            p1 = min(p0 + gp, TP)
            q1 = min(q0 + gq, TQ)
            acc = float64(0)
            for p in range(p0, p1):
                for q in range(q0, q1):
                    acc += float64(widen(w[(int64(p) * TQ + q) * F + e]))
            mean = acc / ((p1 - p0) * (q1 - q0))
            for p in range(p0, p1):
                for q in range(q0, q1):
                    out[(int64(p) * TQ + q) * F + e] = narrow_out(at(mean))

    return dict(penalty=soft_sharing_penalty_kernel, penalty_reduce=soft_sharing_reduce_kernel,
                neighbour_l2=neighbour_l2_kernel, neighbour_dots=neighbour_dots_kernel,
                neighbour_cosine=neighbour_cosine_kernel, average=average_banks_kernel)


def signatures(dtype, out=None):
    """{kernel tag: argument types} as _gpu_host passes them (from the declaration,
    _gpu_kernels.KERNELS), for PTX compilation without a GPU."""
    dt = row(dtype)
    return {tag: signature(tag, dt, out) for tag in TAGS}


def compile_ptx(dtype, cc=(9, 0), out=None):
    """{kernel tag: PTX} of both kernels at the configured block size and gradient dtype
    `out` (default: the storage dtype); needs NVVM, not a GPU."""
    dt = row(dtype)
    out = dt.storage if out is None else np.dtype(out)
    ks = kernels(dt, out, config.CUDA_PENALTY_THREADS)
    # a kernel without a result type (no O in its template) is built once, with the storage's
    return {tag: cuda.compile_ptx(ks[tag].py_func, sig, cc=cc)[0]
            for tag, sig in signatures(dt, out).items()
            if out == dt.storage or "O" in KERNELS[tag].template}
