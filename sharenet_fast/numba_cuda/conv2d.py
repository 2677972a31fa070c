"""Numba CUDA kernels for every layer: one banked implicit GEMM per pass.

The three layers differ only in the grid of filter banks (docs/design.md), so every kernel here takes
the tile (TP, TQ): output (p, q) uses bank (p % TP) * TQ + q % TQ. Shared conv is the 1 x 1 tile,
local2d the P x Q one. A block always works inside one *tile class* (the positions sharing a
bank), so within a block the weights are one plain matrix and the pass is a GEMM:

    forward      y[n, k, (p, q)]   = W[bank][k, (c, r, s)] . X[(c, r, s), (n, p, q)]
    weight grad  dW[bank][k, crs]  = dY[k, (n, p, q)] . X[(n, p, q), crs]   over the class
    input grad   dx[n, c, (h, w)]  = W^T[c, (k, r, s)] . dY[(k, r, s), (n, h, w)]

The X operand is never materialised (implicit GEMM: the shared-memory tile is gathered straight
from the NCHW input, zero outside the padding). Each launch picks its block tile from
config.CUDA_TILE_MENU (_gpu_host.pick_tiles: least padding for its rows x columns): BM x BN
outputs per block, TM x TN per thread in registers, the reduction staged BK at a time through
shared memory. Arrays are passed flat and every offset is computed by the helpers below in
64-bit integers (Numba widens int32 products to int64): local weights of alexnet_conv1 at batch
64 reach 6.7e9 input-patch products, and 105.7e6 weights per bank grid.

Kernels are built lazily per (DType row, tiles): storage and accumulation dtypes are separate
(shared-memory tiles and loads in the storage dtype, accumulators and workspace partials in the
accumulation dtype), so importing needs no GPU and tests may shrink the tiles. Their arguments
are declared once (_gpu_kernels.KERNELS: names, order, types; signatures() below derive from
it). The host side (grids, tiles, chunks, tap tables) is _gpu_host.py, shared with the cupy
backend; DEV below is this backend's half of it.
"""
import functools

import numpy as np
from numba import cuda  # a module global: the simulator swaps it inside kernels

from .. import _gpu_host as host
from .. import config
from .._device import kind
from .._gpu_kernels import out_of, row
from . import sharing
from ._convert import converters, held
from ._launch import device_empty, device_zeros, flat, launch, signature, stream_for

TAGS = ("fwd", "wgrad", "dgrad", "wgrad_reduce", "bgrad")     # the kernels built here
TILED = ("fwd", "wgrad", "dgrad")                             # one build per block tile

# --------------------------------------------------------------------------- index helpers
# Kept as plain functions so tests can compile them with int32 arguments on the CPU and prove
# 64-bit results (tests/test_numba_cuda.py); the kernels use them as device functions.


def off4(a, b, c, d, B, C, D):
    """Flat offset of [a, b, c, d] in a C-contiguous (., B, C, D) array, in int64."""
    return ((np.int64(a) * B + b) * C + c) * D + d


@functools.lru_cache(maxsize=None)
def _device_helpers():
    return (cuda.jit(off4, device=True, inline=True),
            cuda.jit(host.class_extent, device=True, inline=True))


@cuda.jit(device=True, inline=True)
def _atomic_add(out, o, v):
    cuda.atomic.add(out, o, v)


@cuda.jit(device=True, inline=True)
def _no_atomic(out, o, v):
    pass


# --------------------------------------------------------------------------------- kernels
@functools.lru_cache(maxsize=None)
def kernels(dt, out, tiles, bias_threads):
    """{tag: kernel} for one dtypes.DType row (storage and accumulation dtype), result dtype
    `out` (O: the storage dtype, or for 16-bit storage float32), block tile (BM, BN, BK, TM,
    TN) and bias-gradient block size (the size of its shared reduction buffer)."""
    from numba import from_dtype, int64

    BM, BN, BK, TM, TN = tiles
    if BM % TM or BN % TN:
        raise ValueError(f"CUDA tiles {tiles}: BM must be a multiple of TM and BN of TN")
    MT, NT = BM // TM, BN // TN        # thread grid of a block: MT rows x NT columns
    NTH = MT * NT                      # threads per block
    BM1 = BM + 1                       # padded A-tile row (a constant: shared array shapes are)
    LA = -(-BM * BK // NTH)            # A-tile elements each thread loads
    LB = -(-BK * BN // NTH)            # B-tile elements each thread loads
    ft = from_dtype(held(dt.storage))  # what arrays and shared-memory tiles hold
    at = from_dtype(dt.accum)          # what accumulators, fragments and partials hold
    # T -> A where elements enter the arithmetic; results rounded to O once, where stored
    widen, widen_out, narrow_out = converters(dt, out)
    # atomics only into A-typed results (the host stages a 16-bit one through float32): the
    # other build gets a no-op, so no 16-bit atomic is ever compiled
    atomic_add = _atomic_add if np.dtype(out) == dt.accum else _no_atomic
    off4_d, extent_d = _device_helpers()
    # Thread (tm, tn) owns rows tm + i*MT and columns tn + j*NT: neighbouring threads read
    # neighbouring shared-memory words (no bank conflicts) and write neighbouring columns of
    # the output (coalesced). The A tile is stored transposed with one pad column so that its
    # stores, which walk the reduction index fastest for coalesced global loads, spread over
    # the banks.

    @cuda.jit(device=True, inline=True)
    def zero_acc(acc):
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = at(0)

    @cuda.jit(device=True, inline=True)
    def tile_fma(As, Bs, acc, a, b, tm, tn):
        # one BK step of the block's GEMM: the thread's TM x TN fragment += A^T[:, rows] x
        # B[:, cols], TM + TN shared loads per TM*TN FMAs
        for kk in range(BK):
            for i in range(TM):
                a[i] = widen(As[kk, tm + i * MT])
            for j in range(TN):
                b[j] = widen(Bs[kk, tn + j * NT])
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] += a[i] * b[j]

    @cuda.jit(fastmath=False)
    def conv2d_fwd_kernel(x, w, bias, y, N, C, H, W, K, P, Q, R, S, G, TP, TQ, sh, sw, ph, pw,
                          dh, dw, colblocks, has_bias):
        # grid: x = tile class * column block, y = group * block of BM of its filters k (a
        # block never spans two groups: its filters share one slice of C / G input channels)
        t = cuda.threadIdx.x
        tm = t // NT
        tn = t % NT
        cls = cuda.blockIdx.x // colblocks
        j0 = (cuda.blockIdx.x % colblocks) * BN
        Kg = K // G
        kbg = (Kg + BM - 1) // BM
        grp = cuda.blockIdx.y // kbg
        k0 = grp * Kg + (cuda.blockIdx.y - grp * kbg) * BM
        kend = (grp + 1) * Kg
        cb = grp * (C // G)                # the group's first input channel
        tp = cls // TQ
        tq = cls % TQ
        Pc = extent_d(P, tp, TP)
        Qc = extent_d(Q, tq, TQ)
        ncol = N * Pc * Qc                 # columns of this class: (n, i, j), p = tp + i*TP
        if j0 >= ncol:                     # a narrower class: the whole block has no work
            return
        RS = R * S
        CRS = (C // G) * RS
        As = cuda.shared.array((BK, BM1), ft)
        Bs = cuda.shared.array((BK, BN), ft)
        acc = cuda.local.array((TM, TN), at)
        a = cuda.local.array(TM, at)
        b = cuda.local.array(TN, at)
        zero_acc(acc)
        # the columns this thread gathers never change: decode them once
        bn = cuda.local.array(LB, int64)
        bh = cuda.local.array(LB, int64)
        bw = cuda.local.array(LB, int64)
        for u in range(LB):
            col = j0 + (t + u * NTH) % BN
            bn[u] = -1
            if col < ncol:
                n = col // (Pc * Qc)
                rem = col - n * (Pc * Qc)
                i = rem // Qc
                bn[u] = n
                bh[u] = (tp + i * TP) * sh - ph
                bw[u] = (tq + (rem - i * Qc) * TQ) * sw - pw
        wbase = int64(cls) * K
        for red0 in range(0, CRS, BK):
            for u in range(LA):
                e = t + u * NTH
                if e < BM * BK:
                    m = e // BK                 # reduction index fastest: coalesced rows of W
                    kk = e - m * BK
                    v = ft(0)
                    if k0 + m < kend and red0 + kk < CRS:
                        v = w[(wbase + k0 + m) * CRS + red0 + kk]
                    As[kk, m] = v
            for u in range(LB):
                e = t + u * NTH
                if e < BK * BN:
                    kk = e // BN                # column fastest: neighbouring q, coalesced x
                    red = red0 + kk
                    v = ft(0)
                    if red < CRS and bn[u] >= 0:
                        c = red // RS
                        rs = red - c * RS
                        r = rs // S
                        h = bh[u] + r * dh
                        ww = bw[u] + (rs - r * S) * dw
                        if h >= 0 and h < H and ww >= 0 and ww < W:
                            v = x[off4_d(bn[u], cb + c, h, ww, C, H, W)]
                    Bs[kk, e - kk * BN] = v
            cuda.syncthreads()
            tile_fma(As, Bs, acc, a, b, tm, tn)
            cuda.syncthreads()
        for j in range(TN):
            col = j0 + tn + j * NT
            if col < ncol:
                n = col // (Pc * Qc)
                rem = col - n * (Pc * Qc)
                i = rem // Qc
                p = tp + i * TP
                q = tq + (rem - i * Qc) * TQ
                for ii in range(TM):
                    k = k0 + tm + ii * MT
                    if k < kend:
                        v = acc[ii, j]
                        if has_bias:
                            v += widen(bias[wbase + k])
                        y[off4_d(n, k, p, q, K, P, Q)] = narrow_out(v)

    @cuda.jit(fastmath=False)
    def conv2d_wgrad_kernel(dy, x, out, ws, N, C, H, W, K, P, Q, R, S, G, TP, TQ, sh, sw, ph,
                            pw, dh, dw, nchunks, chunk, redblocks, mode):
        # grid: x = tile class * chunk of its positions, y = (block of BM filters k) *
        # (block of BN reduction columns c*R*S + r*S + s). The block reduces its chunk in
        # registers, then mode 0: adds into out (one chunk per class: it owns those weights),
        # 1: one atomic add per weight, 2: writes its partial to ws (summed in fixed order).
        t = cuda.threadIdx.x
        tm = t // NT
        tn = t % NT
        cls = cuda.blockIdx.x // nchunks
        ch = cuda.blockIdx.x % nchunks
        # y's filter blocks run group by group (grp, then BM of its K / G filters)
        Kg = K // G
        kbg = (Kg + BM - 1) // BM
        kb = cuda.blockIdx.y // redblocks
        grp = kb // kbg
        k0 = grp * Kg + (kb - grp * kbg) * BM
        kend = (grp + 1) * Kg
        cb = grp * (C // G)
        c0 = (cuda.blockIdx.y % redblocks) * BN
        tp = cls // TQ
        tq = cls % TQ
        Pc = extent_d(P, tp, TP)
        Qc = extent_d(Q, tq, TQ)
        ncol = N * Pc * Qc
        start = int64(ch) * chunk
        stop = min(start + chunk, ncol)
        RS = R * S
        CRS = (C // G) * RS
        As = cuda.shared.array((BK, BM1), ft)
        Bs = cuda.shared.array((BK, BN), ft)
        acc = cuda.local.array((TM, TN), at)
        a = cuda.local.array(TM, at)
        b = cuda.local.array(TN, at)
        zero_acc(acc)
        # reduction columns (c, r, s) this thread gathers: fixed, decode once
        bc = cuda.local.array(LB, int64)
        br = cuda.local.array(LB, int64)
        bs = cuda.local.array(LB, int64)
        for u in range(LB):
            red = c0 + (t + u * NTH) % BN
            bc[u] = -1
            if red < CRS:
                c = red // RS
                rs = red - c * RS
                r = rs // S
                bc[u] = c
                br[u] = r * dh - ph
                bs[u] = (rs - r * S) * dw - pw
        for pos0 in range(start, stop, BK):
            for u in range(LA):
                e = t + u * NTH
                if e < BM * BK:
                    m = e // BK                 # position fastest: neighbouring q of dy
                    kk = e - m * BK
                    pos = pos0 + kk
                    v = ft(0)
                    if k0 + m < kend and pos < stop:
                        n = pos // (Pc * Qc)
                        rem = pos - n * (Pc * Qc)
                        i = rem // Qc
                        v = dy[off4_d(n, k0 + m, tp + i * TP, tq + (rem - i * Qc) * TQ,
                                      K, P, Q)]
                    As[kk, m] = v
            for u in range(LB):
                e = t + u * NTH
                if e < BK * BN:
                    kk = e // BN                # (c, r, s) fastest: neighbouring s of x
                    pos = pos0 + kk
                    v = ft(0)
                    if pos < stop and bc[u] >= 0:
                        n = pos // (Pc * Qc)
                        rem = pos - n * (Pc * Qc)
                        i = rem // Qc
                        h = (tp + i * TP) * sh + br[u]
                        ww = (tq + (rem - i * Qc) * TQ) * sw + bs[u]
                        if h >= 0 and h < H and ww >= 0 and ww < W:
                            v = x[off4_d(n, cb + bc[u], h, ww, C, H, W)]
                    Bs[kk, e - kk * BN] = v
            cuda.syncthreads()
            tile_fma(As, Bs, acc, a, b, tm, tn)
            cuda.syncthreads()
        bank = int64(cls) * K
        for i in range(TM):
            k = k0 + tm + i * MT
            if k < kend:
                for j in range(TN):
                    red = c0 + tn + j * NT
                    if red < CRS:
                        o = (bank + k) * CRS + red
                        if mode == 0:
                            out[o] = narrow_out(widen_out(out[o]) + acc[i, j])
                        elif mode == 1:
                            atomic_add(out, o, acc[i, j])
                        else:
                            ws[int64(ch) * (int64(TP * TQ) * K * CRS) + o] = acc[i, j]

    @cuda.jit(fastmath=False)
    def conv2d_dgrad_kernel(dy, w, dx, rtab, stab, rcnt, scnt, N, C, H, W, K, P, Q, R, S, G,
                            TP, TQ, LH, LW, ncw, colblocks):
        # Input classes: h % LH, w % LW with LH = sh*TP, LW = sw*TQ. Inside one class every
        # input row sees the same taps r (those with (h + ph - r*dh) % sh == 0) with the same
        # bank row, so the pass is a plain GEMM over the class's valid taps only: a strided
        # layer does no work on the taps that skip it (phase decomposition), and a tiled or
        # local layer's A tile is one matrix. rtab[alpha, i] = (r, p at class row 0, p % TP),
        # flat (min(LH, H), R, 3); stab likewise for the columns (S taps).
        # grid: x = input class * column block, y = block of BM channels c.
        t = cuda.threadIdx.x
        tm = t // NT
        tn = t % NT
        cls = cuda.blockIdx.x // colblocks
        j0 = (cuda.blockIdx.x % colblocks) * BN
        # y: group * block of BM of its C / G channels; the reduction runs over the group's filters
        Cg = C // G
        cbg = (Cg + BM - 1) // BM
        grp = cuda.blockIdx.y // cbg
        c0 = grp * Cg + (cuda.blockIdx.y - grp * cbg) * BM
        cend = (grp + 1) * Cg
        kb = grp * (K // G)
        alpha = cls // ncw
        beta = cls % ncw
        Hc = extent_d(H, alpha, LH)
        Wc = extent_d(W, beta, LW)
        ncol = N * Hc * Wc               # columns: (n, hi, wi), h = alpha + hi*LH
        if j0 >= ncol:
            return
        nr = rcnt[alpha]
        ns = scnt[beta]
        nred = (K // G) * nr * ns        # reduction: (the group's k, valid r, valid s)
        rt = int64(alpha) * R * 3        # this class's rows of the tap tables
        st = int64(beta) * S * 3
        As = cuda.shared.array((BK, BM1), ft)
        Bs = cuda.shared.array((BK, BN), ft)
        acc = cuda.local.array((TM, TN), at)
        a = cuda.local.array(TM, at)
        b = cuda.local.array(TN, at)
        zero_acc(acc)
        bn = cuda.local.array(LB, int64)
        bhi = cuda.local.array(LB, int64)
        bwi = cuda.local.array(LB, int64)
        for u in range(LB):
            col = j0 + (t + u * NTH) % BN
            bn[u] = -1
            if col < ncol:
                n = col // (Hc * Wc)
                rem = col - n * (Hc * Wc)
                bn[u] = n
                bhi[u] = rem // Wc
                bwi[u] = rem - bhi[u] * Wc
        for red0 in range(0, nred, BK):
            for u in range(LA):
                e = t + u * NTH
                if e < BM * BK:
                    m = e // BK
                    kk = e - m * BK
                    red = red0 + kk
                    v = ft(0)
                    if c0 + m < cend and red < nred:
                        k = red // (nr * ns)
                        rem = red - k * (nr * ns)
                        ri = rem // ns
                        si = rem - ri * ns
                        bank = rtab[rt + ri * 3 + 2] * TQ + stab[st + si * 3 + 2]
                        v = w[off4_d(bank * K + kb + k, c0 + m - grp * Cg, rtab[rt + ri * 3],
                                     stab[st + si * 3], Cg, R, S)]
                    As[kk, m] = v
            for u in range(LB):
                e = t + u * NTH
                if e < BK * BN:
                    kk = e // BN
                    red = red0 + kk
                    v = ft(0)
                    if red < nred and bn[u] >= 0:
                        k = red // (nr * ns)
                        rem = red - k * (nr * ns)
                        ri = rem // ns
                        si = rem - ri * ns
                        p = rtab[rt + ri * 3 + 1] + bhi[u] * TP
                        q = stab[st + si * 3 + 1] + bwi[u] * TQ
                        if p >= 0 and p < P and q >= 0 and q < Q:
                            v = dy[off4_d(bn[u], kb + k, p, q, K, P, Q)]
                    Bs[kk, e - kk * BN] = v
            cuda.syncthreads()
            tile_fma(As, Bs, acc, a, b, tm, tn)
            cuda.syncthreads()
        for j in range(TN):
            col = j0 + tn + j * NT
            if col < ncol:
                n = col // (Hc * Wc)
                rem = col - n * (Hc * Wc)
                hi = rem // Wc
                h = alpha + hi * LH
                ww = beta + (rem - hi * Wc) * LW
                for i in range(TM):
                    c = c0 + tm + i * MT
                    if c < cend:
                        dx[off4_d(n, c, h, ww, C, H, W)] = narrow_out(acc[i, j])

    @cuda.jit(fastmath=False)
    def conv2d_wgrad_reduce_kernel(ws, out, nchunks, size):
        # out[e] += sum of the chunk partials of e, always in chunk order: the same bits on
        # every run. One thread per weight (grid-stride), reads coalesced across threads.
        start = cuda.grid(1)
        step = cuda.gridsize(1)
        for e in range(start, size, step):
            s = at(0)
            for ch in range(nchunks):
                s += ws[int64(ch) * size + e]
            out[e] = narrow_out(widen_out(out[e]) + s)

    NB = bias_threads

    @cuda.jit(fastmath=False)
    def conv2d_bgrad_kernel(dy, out, N, K, P, Q, TP, TQ):
        # one block per (tile class, k): its threads stride over the class's (n, p, q), then a
        # shared-memory tree reduction in a fixed order (deterministic); thread 0 adds into out.
        t = cuda.threadIdx.x
        cls = cuda.blockIdx.x // K
        k = cuda.blockIdx.x % K
        tp = cls // TQ
        tq = cls % TQ
        Pc = extent_d(P, tp, TP)
        Qc = extent_d(Q, tq, TQ)
        ncol = N * Pc * Qc
        s = at(0)
        for col in range(t, ncol, cuda.blockDim.x):
            n = col // (Pc * Qc)
            rem = col - n * (Pc * Qc)
            i = rem // Qc
            s += widen(dy[off4_d(n, k, tp + i * TP, tq + (rem - i * Qc) * TQ, K, P, Q)])
        buf = cuda.shared.array(NB, at)
        buf[t] = s
        cuda.syncthreads()
        half = cuda.blockDim.x // 2
        while half > 0:
            if t < half:
                buf[t] += buf[t + half]
            cuda.syncthreads()
            half //= 2
        if t == 0:
            o = int64(cls) * K + k
            out[o] = narrow_out(widen_out(out[o]) + buf[0])

    return dict(fwd=conv2d_fwd_kernel, wgrad=conv2d_wgrad_kernel,
                dgrad=conv2d_dgrad_kernel, wgrad_reduce=conv2d_wgrad_reduce_kernel,
                bgrad=conv2d_bgrad_kernel)


def signatures(dtype, out=None):
    """{kernel tag: argument types} as _gpu_host passes them (from the declaration,
    _gpu_kernels.KERNELS) for result dtype `out` (default: the storage dtype): what tests
    compile to PTX without a GPU (compile_ptx)."""
    dt = row(dtype)
    return {tag: signature(tag, dt, out) for tag in TAGS}


def compile_ptx(dtype, cc=(9, 0), out=None):
    """{(kernel, tiles): PTX} for every kernel at every tile of the menu, result dtype `out`
    (default: the storage dtype); needs NVVM, not a GPU. The tile-independent kernels
    (wgrad_reduce, bgrad) are compiled once."""
    dt = row(dtype)
    out = dt.storage if out is None else np.dtype(out)
    ptx = {}
    for tiles in config.CUDA_TILE_MENU:
        ks = kernels(dt, out, tuple(tiles), config.CUDA_BIAS_THREADS)
        for tag, sig in signatures(dt, out).items():
            if tag in TILED or tiles == config.CUDA_TILE_MENU[0]:
                ptx[tag, tuple(tiles)] = cuda.compile_ptx(ks[tag].py_func, sig, cc=cc)[0]
    return ptx


def _kernels_for(a, tiles=None):
    tiles = tuple(config.CUDA_TILE_MENU[0]) if tiles is None else tiles
    dt = row(a.dtype)
    return kernels(dt, dt.storage, tiles, config.CUDA_BIAS_THREADS)


class _NumbaDevice:
    """The `dev` of _gpu_host (a _gpu_host.Device) for Numba: kernels from kernels() and
    sharing.kernels(), arrays as given (CuPy or Numba), launches on CuPy's current stream for
    CuPy arrays (see _launch)."""
    empty = staticmethod(device_empty)
    zeros = staticmethod(device_zeros)
    flat = staticmethod(flat)

    @staticmethod
    def to_device_like(like, a):
        if kind(like) == "cupy":
            import cupy

            return cupy.asarray(a)
        return cuda.to_device(a)

    @staticmethod
    def launch(tag, dt, tiles, grid, threads, like, args, ksize=None):
        out = out_of(tag, dt, args)
        if tag in TAGS:
            ks = kernels(dt, out, tuple(tiles or config.CUDA_TILE_MENU[0]),
                         config.CUDA_BIAS_THREADS)
        else:
            ks = sharing.kernels(dt, out, config.CUDA_PENALTY_THREADS)
        launch(ks[tag], grid, threads, stream_for(like), *args)


DEV = _NumbaDevice()
