"""Locally-connected 2D layer on the CPU (no weight sharing): Numba parallel kernels.

Weight (P, Q, K, C, R, S): one bank of K filters per output position, K*C*R*S contiguous values
per position. At small batch the layer is bound by the weight stream (each weight is used N
times: 2N FLOPs per 4 bytes), so every kernel walks the positions and touches each position's
bank exactly once, for the whole batch, in its natural layout (no transposed copy of the weights:
that would be a second weight-sized buffer and a second pass over memory).

  forward  y[:, :, p, q] = W_pq (K x T) . patch_pq^T (T x N)      NT GEMM, reduction over T=C*R*S
  wgrad    dW_pq (K x T) (+)= dy_pq^T (K x N) . patch_pq (N x T)  NN form, reduction over the
                                                                  batch only (owner computes)
  dgrad    a batch of a vector or more (N >= lanes): dpatch^T (T x N) = W_pq^T . dy_pq^T,
           images as the vector columns, added into a (C, H, W, N) input gradient as runs of
           S*N values (local2d_dgrad_kernel); a smaller batch: dpatch (N x T) = dy_pq (N x K) .
           W_pq (K x T), added into the NCHW input rows under (p, q) as runs of S. Tasks are
           tiles of positions in 4 phases (tiles of one phase never touch one input pixel): no
           atomics, and every input pixel gets its sum in a fixed order.
  wgrad and the small-batch dgrad run in one pass when both are needed.

patch_pq (N x T) holds the C*R*S inputs under (p, q) for each image, in the (c, r, s) order of
the weights, gathered from the zero-padded NCHW input (runs of S along w when dilation is 1).

Reduced-precision storage (bfloat16, float16): the weights are read and the weight gradient is
written as 16-bit values (their integer views, dtypes.py) by the kernels themselves, widened in
registers as the microkernel loads them and rounded to nearest even as the gradient streams out,
so the weight stream, the layer's traffic, is half the bytes. Activations (x, dy: a few percent
of the bytes) are widened to float32 once on the way into the scratch copies the kernels read
anyway; everything sums in float32.
"""
from functools import lru_cache

import numpy as np
from numba import njit, prange

from .. import dtypes
from ..config import (DGRAD_NVMAX, DGRAD_PREFETCH, DGRAD_ROWS, DGRAD_TILE, DGRAD_TILE_16,
                      DOT_BF16, DOT_BF16_COLUMNS, VEC_BYTES,
                      FWD_PREFETCH, FWD_TILE, FWD_TILE_SPLIT, POSITION_BLOCKS, POSITION_TILE, QB,
                      WGRAD_TILE, njit_options)
from ._precision import result_dtype, widened
from ._simd import (add_run, copy_run, copy_run_over, lanes, lanes_of, line_of, narrow,
                    outer_product, outer_product_dot, outer_product_stream, store_fence,
                    stream_copy, typed_zero, widen)
from ._workspace import result, scratch
from ._workspace import launch_lock as _launch_lock
from .conv2d import _copy, _padded


@njit(**njit_options(), inline="always")
def _over_width(S, itemsize, VL):
    """The elements copy_run_over moves for a run of S: its narrowest vector that holds S."""
    w16, w32 = 16 // itemsize, 32 // itemsize
    if S <= w16 < VL:
        return w16
    if S <= w32 < VL:
        return w32
    return -(-S // VL) * VL


@njit(**njit_options(), inline="always")
def _gather_patches(xf, patch, N, C, Hp, Wp, R, S, h0, w0, dh, dw):
    """patch[n*T + (c*R + r)*S + s] = xh[h0 + r*dh, n, c, w0 + s*dw], xh the padded input in
    (H, N, C, W) layout: the runs of one kernel row r, for every image and channel, lie Wp
    apart in one block that is walked in order (from NCHW they were a plane, 4 KB or more,
    apart: vgg_3x3's gather 30% faster).
    A short run (a 16- or 32-byte vector holds it) is one whole-vector copy (copy_run_over)
    where what it writes past its end lands on runs of later kernel rows, written after it
    (W - S <= (R - 1 - r) * S); the last row's runs, and longer ones, are copied exactly
    (copy_run: masked). vgg_3x3's weight gradient 49.0 -> 44.6 ms, cifar_5x5 9.7 -> 9.4
    (kernel alone, same process). xf has a vector of room past its end (the over-read)."""
    VL = lanes_of(xf)
    W = _over_width(S, xf.itemsize, VL)
    for r in range(R):
        # (a full-width vector per run was slower than the masked copy: deepface_l4, S = 9)
        over = dw == 1 and W < VL and W - S <= (R - 1 - r) * S
        for n in range(N):
            for c in range(C):
                src = (((h0 + r * dh) * N + n) * C + c) * Wp + w0
                dst = ((n * C + c) * R + r) * S
                if over:
                    copy_run_over(patch, dst, xf, src, S)
                elif dw == 1:
                    copy_run(patch, dst, xf, src, S)
                else:
                    _copy(patch[dst:dst + S], xf[src:src + (S - 1) * dw + 1:dw])


# ----------------------------------------------------------------------------------- forward
def fwd_columns(N, itemsize):
    """(G, U): the batch is padded to G columns and the reduction split U ways so that one
    vector of VL lanes holds U reduction steps of G images (G * U == VL when N < VL), or G is a
    multiple of VL (U == 1). At batch 8 in float32 that is G = 8, U = 2 on AVX-512 (every lane
    busy) and G = 8, U = 1 on AVX2."""
    VL = lanes(itemsize)
    if N >= VL:
        return -(-N // VL) * VL, 1
    G = 1
    while G < N:
        G *= 2
    return G, VL // G


@njit(**njit_options(), inline="always")
def _accumulate(dst, src):
    """dst += src (src in the accumulation dtype; a 16-bit dst rounded once per element)."""
    for i in range(dst.shape[0]):
        dst[i] = narrow(widen(dst[i]) + src[i], dst)


@njit(**njit_options(), inline="always")
def _store_run(yf, obuf, N, K, G, PQ, pos, nq):
    """The forwards' outputs of nq consecutive positions from pos, staged in obuf as (q, k,
    image) with G image columns, into flat NCHW y: each y[n, k, p, q0:q0 + nq] one run
    (rounded to y's storage as written)."""
    for n in range(N):
        for k in range(K):
            base = (n * K + k) * PQ + pos
            for qi in range(nq):
                yf[base + qi] = narrow(obuf[(qi * K + k) * G + n], yf)


@lru_cache(maxsize=None)
def _fwd_kernel(MR, NV, U, WB, DOT):
    # each step reads MR*U weights of WB bytes (one 64-byte line at MR = 8, U = 2 in float32;
    # MR = 8, U = 4 in bfloat16) and prefetches as many lines (at least one), FWD_PREFETCH
    # tiles of MR filters ahead (pf). DOT: bfloat16 x and w multiplied by outer_product_dot.
    PF = max(1, MR * U * WB // 64)

    @njit(**njit_options(parallel=True))
    def local2d_fwd_kernel(xt, w, bias, has_bias, y, N, R, S, sh, sw, dh, dw, blocks, NG):
        """xt: padded input as (NB, C, Hp, Wp, GB): NB blocks of GB images, images innermost
        and zero past N, in the accumulation dtype (DOT: bfloat16 bits, as w; blocks of 8
        images; otherwise one block); w: (P, Q, K, C, R, S) (or its 16-bit view); bias:
        (P, Q, K), in the accumulation dtype; y: (N, K, P, Q), any storage (rounded as it is
        written).

        Tasks are `blocks` runs of consecutive positions (p, q), so every core streams its own
        contiguous part of the weights, whatever P and Q are. Per position: gather patch[t, n]
        per block of images (t = (c, r, s), a run of S*GB contiguous values per (c, r)), then
        y_pq (K x N) = W_pq (K x T) . patch, MR filters at a time; each weight is read from
        memory once and used by all N images from registers (a second block of images reads
        the MR filters' tile again, from L1).

        NG groups: w is (P, Q, K, C/NG, R, S); filters of group grp multiply the patch rows of
        its channels, which the gather puts in a segment of their own (T + U rows, the last U
        zero: a split reduction's last partial step reads zeros, never the next group's
        inputs). NG = 1 is the ungrouped layout.
        """
        NB, C, Hp, Wp, GB = xt.shape
        G = NB * GB                            # images, padded: obuf's columns
        P, Q, K = w.shape[0], w.shape[1], w.shape[2]
        Cg = C // NG
        Kg = K // NG
        T = Cg * R * S                         # one filter's reduction
        W = NV * lanes_of(bias)                # tile columns (U > 1: U steps of GB images)
        ldb = U * GB if U > 1 else GB
        step = GB if U > 1 else W              # images per column tile (within one block)
        TG = T + U                             # rows of one group's patch segment
        TB = NG * TG * GB                      # one block's patch
        XB = C * Hp * Wp * GB                  # one block's input
        T0 = (T // U) * U                      # split steps; the T % U rest in scalar code
        PQ = P * Q
        xf = xt.ravel()
        wf = w.ravel()
        bf = bias.ravel()
        yf = y.ravel()
        for b in prange(blocks):
            lo = b * PQ // blocks
            hi = (b + 1) * PQ // blocks
            # zero rows past T: the last partial group of a split reduction reads one
            patch = np.zeros(NB * TB, dtype=xt.dtype)
            # outputs of up to QB consecutive positions of one row, (q, k, n): the microkernel
            # stores contiguous rows here, and each y[n, k, p, q0:q0 + QB] is then written as
            # one run. (Storing straight into NCHW y scatters K*N single floats per position,
            # each an L1 miss: that cost 2.4x the arithmetic at alexnet_conv1.)
            obuf = np.empty(QB * K * G, dtype=bias.dtype)
            pos = lo
            while pos < hi:
                p = pos // Q
                q0 = pos - p * Q
                nq = min(QB, Q - q0, hi - pos)
                for qi in range(nq):
                    q = q0 + qi
                    for nb in range(NB):
                        for c in range(C):
                            grp = c // Cg
                            for r in range(R):
                                src = nb * XB + ((c * Hp + p * sh + r * dh) * Wp + q * sw) * GB
                                dst = nb * TB + (grp * TG + ((c - grp * Cg) * R + r) * S) * GB
                                if dw == 1:
                                    _copy(patch[dst:dst + S * GB], xf[src:src + S * GB])
                                else:
                                    for s in range(S):
                                        _copy(patch[dst + s * GB:dst + (s + 1) * GB],
                                              xf[src + s * dw * GB:src + s * dw * GB + GB])
                    k0 = 0
                    while k0 < K:                # MR filters, never across a group's end
                        grp = k0 // Kg
                        kn = min(MR, (grp + 1) * Kg - k0)
                        wrow = ((pos + qi) * K + k0) * T
                        for n0 in range(0, N, step):
                            nb = n0 // GB              # B: this block's patch, from column n0
                            b0 = nb * TB + grp * TG * GB + n0 - nb * GB
                            if DOT:
                                outer_product_dot(MR, PF, wf, wrow, T, U,
                                                  patch, b0, ldb, T // U, T - T0,
                                                  obuf, (qi * K + k0) * G + n0, G, 1,
                                                  kn, min(step, N - n0), False,
                                                  bf, (pos + qi) * K + k0, has_bias,
                                                  wrow + FWD_PREFETCH * MR * T)
                            else:
                                outer_product(MR, NV, U, PF, 0, wf, wrow, T, U,
                                              patch, b0, ldb, T // U, T - T0,
                                              obuf, (qi * K + k0) * G + n0, G, 1,
                                              kn, min(step, N - n0), False,
                                              bf, (pos + qi) * K + k0, has_bias,
                                              wrow + FWD_PREFETCH * MR * T)
                        k0 += kn
                _store_run(yf, obuf, N, K, G, PQ, pos, nq)
                pos += nq

    return local2d_fwd_kernel


@njit(**njit_options(parallel=True))
def local2d_dw_fwd_kernel(xt, w, bias, has_bias, y, N, R, S, sh, sw, dh, dw, blocks):
    """The depthwise forward (groups == C: filter k reads channel k // M alone): xt (NB, C, Hp,
    Wp, GB) as the forward's, w (P, Q, K, 1, R, S) (or its 16-bit view), bias (P, Q, K), y
    (N, K, P, Q). The general kernel would run a GEMM of one filter and R*S steps per group
    behind an 8-filter register tile; here a filter's output for a block of images is R*S
    vector multiply-adds read straight from xt (GB images contiguous under each tap: no
    gathered patch). Positions in `blocks` runs, outputs staged in runs of QB along q, as the
    general forward does."""
    NB, C, Hp, Wp, GB = xt.shape
    P, Q, K = w.shape[0], w.shape[1], w.shape[2]
    M = K // C
    RS = R * S
    G = NB * GB
    PQ = P * Q
    XB = C * Hp * Wp * GB
    xf = xt.ravel()
    wf = w.ravel()
    bf = bias.ravel()
    yf = y.ravel()
    for b in prange(blocks):
        lo = b * PQ // blocks
        hi = (b + 1) * PQ // blocks
        obuf = np.empty(QB * K * G, dtype=bias.dtype)
        pos = lo
        while pos < hi:
            p = pos // Q
            q0 = pos - p * Q
            nq = min(QB, Q - q0, hi - pos)
            for qi in range(nq):
                q = q0 + qi
                for k in range(K):
                    c = k // M
                    wk = ((pos + qi) * K + k) * RS
                    for nb in range(NB):
                        acc = obuf[(qi * K + k) * G + nb * GB:(qi * K + k) * G + nb * GB + GB]
                        bk = bf[(pos + qi) * K + k] if has_bias else typed_zero(bias)
                        for i in range(GB):
                            acc[i] = bk
                        for r in range(R):
                            row = nb * XB + ((c * Hp + p * sh + r * dh) * Wp + q * sw) * GB
                            for s in range(S):
                                wv = widen(wf[wk + r * S + s])
                                xs = xf[row + s * dw * GB:row + s * dw * GB + GB]
                                for i in range(GB):
                                    acc[i] += wv * xs[i]
            _store_run(yf, obuf, N, K, G, PQ, pos, nq)
            pos += nq


def _fwd_tile(G, U, itemsize):
    """(MR, NV) register tile of the forward: MR filters x NV vectors of images (no more
    vectors than the padded batch fills)."""
    if U > 1:
        return FWD_TILE_SPLIT
    MR, NV = FWD_TILE
    return MR, max(1, min(NV, G // lanes(itemsize)))


def local2d(x, weight, bias, g, grid, out_dtype=None):
    row = dtypes.lookup(x.dtype)
    acc = row.accum
    y = np.empty(g.y_shape, dtype=result_dtype(x.dtype, out_dtype))
    b = widened(bias) if bias is not None else np.zeros((1, 1, 1), dtype=acc)
    if g.depthwise:       # no reduction over channels: its own kernel, vectors along the batch
        GB = min(lanes(acc.itemsize), -(-g.N // 8) * 8)
        with _launch_lock:
            xt = _transposed(widened(x), g.pads(), GB, "local_xt")
            local2d_dw_fwd_kernel(xt, dtypes.kernel_view(weight), b, bias is not None,
                                  dtypes.kernel_view(y), g.N, g.R, g.S, *g.stride, *g.dilation,
                                  min(g.P * g.Q, POSITION_BLOCKS))
        return y
    dot = DOT_BF16 and row.name == "bfloat16"
    if dot:       # blocks of 8 images x 4 steps of bfloat16 per vector (_simd.py)
        GB, U, tile = DOT_BF16_COLUMNS, 4, (8, 1)
    else:
        GB, U = fwd_columns(g.N, acc.itemsize)
        tile = _fwd_tile(GB, U, acc.itemsize)
    kernel = _fwd_kernel(*tile, U, x.dtype.itemsize, dot)
    with _launch_lock:
        # the input as the kernel multiplies it: bfloat16 bits for the dot product, else
        # widened to the accumulation dtype
        xt = _transposed(x if dot else widened(x), g.pads(), GB, "local_xt")
        kernel(dtypes.kernel_view(xt), dtypes.kernel_view(weight), b, bias is not None,
               dtypes.kernel_view(y), g.N, g.R, g.S, *g.stride, *g.dilation,
               min(g.P * g.Q, POSITION_BLOCKS), g.groups)
    return y


def _transposed(x, pads, GB, name):
    """Input zero-padded by pads ((top, bottom), (left, right)) as (NB, C, Hp, Wp, GB): blocks
    of GB images, images innermost, zero columns past N; one block when GB covers the batch."""
    N, C, H, W = x.shape
    (ph, bh), (pw, bw) = pads
    NB = -(-N // GB)
    xt = scratch(name, (NB, C, H + ph + bh, W + pw + bw, GB), x.dtype)
    # moved as bits (NumPy copies ml_dtypes' bfloat16 element by element through the dtype's
    # own functions: 2.5 ms at alexnet_conv1's input, more than the layer's arithmetic)
    bits = dtypes.kernel_view(xt)
    bits[...] = 0
    xv = dtypes.kernel_view(x)
    for nb in range(NB):
        n0, n1 = nb * GB, min(N, nb * GB + GB)
        bits[nb, :, ph:ph + H, pw:pw + W, :n1 - n0] = xv[n0:n1].transpose(1, 2, 3, 0)
    return xt


# ------------------------------------------------------------------ weight and input grads
@njit(**njit_options(), inline="always")
def _phase_grid(phase, ST, TPn, TQn):
    """Phase `phase` of ST*ST over a TPn x TQn grid of position tiles: (first tile row, first
    tile column, tile rows, tile columns), the phase's tiles ST apart. ST = 2 for kernels that
    add into the input gradient (tiles two apart touch disjoint input pixels: _tiles), 1 for
    those that write only their own banks."""
    fp = phase // ST
    fq = phase % ST
    return fp, fq, (TPn - fp + ST - 1) // ST, (TQn - fq + ST - 1) // ST


@lru_cache(maxsize=None)
def _iwgrad_kernel(WB):
    # WB: the weights' itemsize (16-bit weights: a wider input-gradient tile, config.py)
    MW, NW = WGRAD_TILE
    MD, ND = DGRAD_TILE_16 if WB == 2 else DGRAD_TILE
    # the input gradient streams the bank as B (rows of T along the vector): it prefetches the
    # next position's bank, DGRAD_PREFETCH lines a step, while this one's is used from L2

    @njit(**njit_options(parallel=True))
    def local2d_iwgrad_kernel(dyv, xp, w, dxp, dwo, R, S, sh, sw, dh, dw, BP, BQ, want_dx,
                              want_dw, accumulate, NG, direct, dws):
        """Input and/or weight gradient in one pass over the positions.

        dyv: dy as (P, Q, K, N) (_by_position); xp: padded input as (H, N, C, W); w: (P, Q,
        K, C, R, S); dxp: zeroed padded NCHW input gradient; dwo: (P, Q, K, C, R, S) weight
        gradient (added into if accumulate). dyv, xp, dxp in the accumulation dtype; w and dwo
        in any storage (w widened as the microkernel loads it, dwo rounded as it is written).

        Tasks are tiles of BP x BQ positions, run (with dx) in 4 phases by the parity of the
        tile's row and column (with BP*sh + sh >= the kernel's extent, and the same along q,
        tiles of one phase touch disjoint input pixels), so the whole grid is parallel, a 1-D
        layer (P = 1) too, and every input pixel gets its sum in a fixed order whatever the
        thread count. Without dx, one sweep over all tiles (dW is owner-computes). Per position:
          weight gradient  dW_pq (K x T) (+)= dy_pq^T (K x N) . patch (N x T): owner computes,
                           a sum over the batch in registers, each dW row written once;
          input gradient   dpatch (N x T) = dy_pq (N x K) . W_pq (K x T), added into the input
                           rows under (p, q).
        Both together share the patch gather and read W / write dW in one pass.
        direct (_streams): the dW tiles go from registers to dws (dwo itself, flat, in the
        accumulation dtype; a placeholder otherwise) with non-temporal stores, no bank staged
        in L2 and copied out.
        NG groups: W_pq is (K, C/NG * R * S); group grp's filters meet the patch columns of
        its channels only (a contiguous segment of each patch row): one GEMM per group.
        """
        P, Q, K, N = dyv.shape
        if want_dw:                   # the other one is a placeholder
            Hp, _, C, Wp = xp.shape
        else:
            _, C, Hp, Wp = dxp.shape
        TF = C * R * S                # a patch row: every channel
        Kg = K // NG
        T = TF // NG                  # one filter's reduction: its group's channels
        nTD = -(-T // (ND * lanes_of(dyv)))
        xf = xp.ravel()
        wf = w.ravel()
        dyf = dyv.ravel()
        dxf = dxp.ravel()
        of = dwo.ravel()
        TPn = -(-P // BP)
        TQn = -(-Q // BQ)
        VW = NW * lanes_of(dyv)
        VD = ND * lanes_of(dyv)
        # the weight gradient alone writes only its own banks: one parallel sweep, no phases
        ST = 2 if want_dx else 1
        for phase in range(ST * ST):
            fp, fq, ntp, ntq = _phase_grid(phase, ST, TPn, TQn)
            for task in prange(ntp * ntq):
                tp = fp + ST * (task // ntq)
                tq = fq + ST * (task % ntq)
                patch = np.empty(N * TF if want_dw else 1, dtype=dyv.dtype)
                bank = np.empty(K * T if want_dw and not direct else 1, dtype=dyv.dtype)
                dpatch = np.empty(N * TF if want_dx else 1, dtype=dyv.dtype)
                for p in range(tp * BP, min(P, tp * BP + BP)):
                    for q in range(tq * BQ, min(Q, tq * BQ + BQ)):
                        pos = p * Q + q
                        dyo = pos * N * K
                        if want_dw:
                            _gather_patches(xf, patch, N, C, Hp, Wp, R, S, p * sh, q * sw,
                                            dh, dw)
                            # A[k, n] = dyv[p, q, k, n]: row stride N, step stride 1;
                            # B: the patch columns of filter k's group
                            for grp in range(NG):
                                for k0 in range(grp * Kg, (grp + 1) * Kg, MW):
                                    for t0 in range(0, T, VW):
                                        if direct:
                                            outer_product_stream(
                                                MW, NW, dyf, dyo + k0 * N, N, 1, patch,
                                                grp * T + t0, TF, N, dws,
                                                pos * K * T + k0 * T + t0, T,
                                                min(MW, (grp + 1) * Kg - k0), min(VW, T - t0))
                                        else:
                                            outer_product(MW, NW, 1, 0, 0, dyf, dyo + k0 * N, N,
                                                          1, patch, grp * T + t0, TF, N, 0,
                                                          bank, k0 * T + t0, T, 1,
                                                          min(MW, (grp + 1) * Kg - k0),
                                                          min(VW, T - t0), False, bank, 0,
                                                          False, 0)
                            if direct:
                                store_fence()
                            # the bank, contiguous, from L2 to memory in one sequential run
                            elif accumulate:
                                _accumulate(of[pos * K * T:(pos + 1) * K * T], bank)
                            else:
                                stream_copy(of, pos * K * T, bank, 0, K * T)
                        if want_dx:
                            # dpatch[n, grp's t] = sum over grp's k of dyv[p, q, k, n] *
                            # w[p, q, k, t]
                            nxt = (pos + 1) * K * T
                            for grp in range(NG):
                                for t0 in range(0, T, VD):
                                    for n0 in range(0, N, MD):
                                        outer_product(MD, ND, 1, DGRAD_PREFETCH, 1,
                                                      dyf, dyo + grp * Kg * N + n0, 1, N,
                                                      wf, (pos * K + grp * Kg) * T + t0, T, Kg,
                                                      0, dpatch, n0 * TF + grp * T + t0, TF, 1,
                                                      min(MD, N - n0), min(VD, T - t0), False,
                                                      dpatch, 0, False,
                                                      nxt + (grp * nTD + t0 // VD) * Kg
                                                      * DGRAD_PREFETCH * line_of(wf))
                            for n in range(N):
                                for c in range(C):
                                    for r in range(R):
                                        dst = ((n * C + c) * Hp + p * sh + r * dh) * Wp + q * sw
                                        src = ((n * C + c) * R + r) * S
                                        if dw == 1:
                                            add_run(dxf, dst, dpatch, src, S)
                                        else:
                                            for s in range(S):
                                                dxf[dst + s * dw] += dpatch[src + s]

    return local2d_iwgrad_kernel


@lru_cache(maxsize=None)
def _dgrad_kernel(NV):
    # NV: vectors of images per microkernel row
    MR = DGRAD_ROWS

    @njit(**njit_options(parallel=True))
    def local2d_dgrad_kernel(dyv, w, dxt, R, S, sh, sw, dh, dw, BP, BQ, NG):
        """The input gradient with the images innermost.

        dyv: dy as (P, Q, K, N); w: (P, Q, K, C, R, S), any storage; dxt: the zeroed padded
        input gradient as (C, Hp, Wp, N), in dyv's dtype. Per position and group:
          dpatch^T (T x N) = W_pq^T (T x K) . dy_pq^T (K x N)
        rows = MR consecutive t of the bank (A, broadcast, T apart along k: each step reads one
        line of the bank, and the next MR rows reuse it from L1), columns = NV vectors of
        images (B: dy's row k). Then for each (c, r), the S taps x N images of dpatch^T are
        the S*N contiguous values of dxt[c, p*sh + r*dh, q*sw:, :] (dilation 1 along w): one
        add of a long run, where the NCHW form added runs of S floats (3 at vgg_3x3: 35 of
        that kernel's 58 ms there, timed alone).
        Tiles and phases as local2d_iwgrad_kernel (tiles of one phase touch disjoint input
        pixels): no atomics, every pixel's sum in a fixed order.
        """
        P, Q, K, N = dyv.shape
        C, Hp, Wp, _ = dxt.shape
        Kg = K // NG
        TF = C * R * S
        T = TF // NG
        VN = NV * lanes_of(dyv)
        line = line_of(w)
        wf = w.ravel()
        dyf = dyv.ravel()
        dxf = dxt.ravel()
        TPn = -(-P // BP)
        TQn = -(-Q // BQ)
        for phase in range(4):
            fp, fq, ntp, ntq = _phase_grid(phase, 2, TPn, TQn)
            for task in prange(ntp * ntq):
                tp = fp + 2 * (task // ntq)
                tq = fq + 2 * (task % ntq)
                dpt = np.empty(TF * N, dtype=dyv.dtype)
                for p in range(tp * BP, min(P, tp * BP + BP)):
                    for q in range(tq * BQ, min(Q, tq * BQ + BQ)):
                        pos = p * Q + q
                        nxt = (pos + 1) * K * T     # the next bank, prefetched meanwhile
                        for grp in range(NG):
                            a_grp = (pos * K + grp * Kg) * T
                            b_grp = (pos * K + grp * Kg) * N
                            pf = nxt + grp * (T // MR + 1) * -(-N // VN) * Kg * line
                            for t0 in range(0, T, MR):
                                for n0 in range(0, N, VN):
                                    outer_product(MR, NV, 1, 1, 0, wf, a_grp + t0, 1, T,
                                                  dyf, b_grp + n0, N, Kg, 0,
                                                  dpt, (grp * T + t0) * N + n0, N, 1,
                                                  min(MR, T - t0), min(VN, N - n0),
                                                  False, dpt, 0, False, pf)
                                    pf += Kg * line
                        for c in range(C):
                            for r in range(R):
                                dst = ((c * Hp + p * sh + r * dh) * Wp + q * sw) * N
                                src = (c * R + r) * S * N
                                if dw == 1:
                                    add_run(dxf, dst, dpt, src, S * N)
                                else:
                                    for s in range(S):
                                        add_run(dxf, dst + s * dw * N, dpt, src + s * N, N)

    return local2d_dgrad_kernel


def _input_grad(dyv, dy_dtype, weight, g, out_dtype):
    """The input gradient through local2d_dgrad_kernel (images innermost); dyv from
    _by_position, under the launch lock."""
    (ph, bh), (pw, bw) = g.pads()
    NV = min(DGRAD_NVMAX, -(-g.N // lanes_of(dyv)))
    dxt = scratch("local_dxt", (g.C, g.H + ph + bh, g.W + pw + bw, g.N), dyv.dtype)
    dxt[...] = 0
    _dgrad_kernel(NV)(dyv, dtypes.kernel_view(weight), dxt, g.R, g.S, *g.stride, *g.dilation,
                      *_tiles(g), g.groups)
    dx = np.empty(g.x_shape, result_dtype(dy_dtype, out_dtype))
    _from_images_innermost(dxt, dtypes.kernel_view(dx), ph, pw)
    return dx


@njit(**njit_options(parallel=True))
def _positions_kernel(src, out):
    """out[m, k, n] = src[n, k, m] (widened): dy (N, K, P*Q) to (P*Q, K, N). A task is one
    filter and 16 images: 16 rows of src read in order, 64 positions at a time, each position's
    16 images written as one run (NumPy's transposing copy walks one side at a 4 KB stride and
    took 3-5x as long at cifar_5x5; tiles of 16 positions x 16 images, 1.4x as long at
    vgg_3x3)."""
    N, K, M = src.shape
    TB = 16
    nnb = -(-N // TB)
    for task in prange(K * nnb):
        k = task // nnb
        n0 = (task % nnb) * TB
        n1 = min(N, n0 + TB)
        for m0 in range(0, M, 64):
            for m in range(m0, min(M, m0 + 64)):
                for n in range(n0, n1):
                    out[m, k, n] = widen(src[n, k, m])


def _by_position(dy, g, dt):
    """dy as (P, Q, K, N) in the accumulation dtype, in the scratch "local_dyv": per position,
    dy's row k holds the images contiguously (the kernels' B operand, or A with stride N)."""
    dyv = scratch("local_dyv", (g.P, g.Q, g.K, g.N), dt)
    _positions_kernel(dtypes.kernel_view(dy).reshape(g.N, g.K, g.P * g.Q),
                      dyv.reshape(g.P * g.Q, g.K, g.N))
    return dyv


@njit(**njit_options(parallel=True))
def _from_images_innermost(dxt, dx, ph, pw):
    """dx[n, c, h, w] = dxt[c, ph + h, pw + w, n], rounded to dx's storage: one task per input
    row (c, h), whose W x N block is read once and written as N runs of W."""
    N, C, H, W = dx.shape
    for ch in prange(C * H):
        c, h = ch // H, ch % H
        for n in range(N):
            for w in range(W):
                dx[n, c, h, w] = narrow(dxt[c, ph + h, pw + w, n], dx)


@njit(**njit_options(parallel=True))
def local2d_dw_iwgrad_kernel(xt, dyv, w, dxt, dwo, R, S, sh, sw, dh, dw, BP, BQ, want_dx,
                             want_dw, accumulate):
    """The depthwise input and/or weight gradient (groups == C), with local2d_iwgrad_kernel's
    tasks and phases (tiles of one phase touch disjoint input pixels: no atomics, a fixed
    order). xt: padded input as (NB, C, Hp, Wp, GB), zero past N; dyv: dy as (P, Q, K, G),
    images innermost, zero past N; w, dwo: (P, Q, K, 1, R, S) (16-bit views allowed); dxt:
    the zeroed padded input gradient, xt's layout. Per filter and tap, over the images:
    dW = dy . x (one dot product of G lanes), dx += w * dy (one vector multiply-add), both on
    the GB images that sit contiguously under the tap: no gathered patch."""
    NB, C, Hp, Wp, GB = xt.shape if want_dw else dxt.shape
    P, Q, K, G = dyv.shape
    M = K // C
    RS = R * S
    XB = C * Hp * Wp * GB
    xf = xt.ravel()
    dyf = dyv.ravel()
    wf = w.ravel()
    dxf = dxt.ravel()
    of = dwo.ravel()
    TPn = -(-P // BP)
    TQn = -(-Q // BQ)
    for phase in range(4):
        fp, fq, ntp, ntq = _phase_grid(phase, 2, TPn, TQn)
        for task in prange(ntp * ntq):
            tp = fp + 2 * (task // ntq)
            tq = fq + 2 * (task % ntq)
            for p in range(tp * BP, min(P, tp * BP + BP)):
                for q in range(tq * BQ, min(Q, tq * BQ + BQ)):
                    pos = p * Q + q
                    for k in range(K):
                        c = k // M
                        wk = (pos * K + k) * RS
                        for r in range(R):
                            for s in range(S):
                                o = ((c * Hp + p * sh + r * dh) * Wp + q * sw + s * dw) * GB
                                wv = widen(wf[wk + r * S + s]) if want_dx else typed_zero(xt)
                                t = typed_zero(dyv)
                                for nb in range(NB):
                                    d = dyf[(pos * K + k) * G + nb * GB:
                                            (pos * K + k) * G + nb * GB + GB]
                                    if want_dw:
                                        xs = xf[nb * XB + o:nb * XB + o + GB]
                                        for i in range(GB):
                                            t += d[i] * xs[i]
                                    if want_dx:
                                        dd = dxf[nb * XB + o:nb * XB + o + GB]
                                        for i in range(GB):
                                            dd[i] += wv * d[i]
                                if want_dw:
                                    if accumulate:
                                        of[wk + r * S + s] = narrow(
                                            widen(of[wk + r * S + s]) + t, of)
                                    else:
                                        of[wk + r * S + s] = narrow(t, of)


def _dw_backward(dy, x, weight, g, want_dx, want_dw, out, out_dtype):
    """The depthwise local layer's backward (local2d_dw_iwgrad_kernel): (dx or None, dw or
    None), dw added into `out` when given."""
    dt = dtypes.lookup(dy.dtype).accum
    GB = min(lanes(dt.itemsize), -(-g.N // 8) * 8)
    NB = -(-g.N // GB)
    (ph, bh), (pw, bw) = g.pads()
    Hp, Wp = g.H + ph + bh, g.W + pw + bw
    accumulate = out is not None
    if want_dw and out is None:
        out = result((g.P, g.Q) + g.w_shape, result_dtype(dy.dtype, out_dtype))
    dwo = dtypes.kernel_view(out) if want_dw else np.zeros(1, dt)
    w = dtypes.kernel_view(weight) if want_dx else np.zeros(1, dt)
    with _launch_lock:
        dyv = scratch("local_dyv", (g.P, g.Q, g.K, NB * GB), dt)
        dyv[..., g.N:] = 0
        dyv[..., :g.N] = widened(dy).transpose(2, 3, 1, 0)
        xt = (_transposed(widened(x), g.pads(), GB, "local_xt") if want_dw
              else np.zeros((1, 1, 1, 1, 1), dt))
        dxt = (scratch("local_dxt", (NB, g.C, Hp, Wp, GB), dt) if want_dx
               else np.zeros((1, 1, 1, 1, 1), dt))
        if want_dx:
            dxt[...] = 0
        local2d_dw_iwgrad_kernel(xt, dyv, w, dxt, dwo, g.R, g.S, *g.stride, *g.dilation,
                                 *_tiles(g), want_dx, want_dw, accumulate)
        dx = None
        if want_dx:
            dx = np.empty(g.x_shape, result_dtype(dy.dtype, out_dtype))
            # (NB, C, Hp, Wp, GB) -> (N, C, H, W): images back out of the lanes, padding off
            inner = dxt[:, :, ph:ph + g.H, pw:pw + g.W, :].transpose(0, 4, 1, 2, 3)
            _round_into(dtypes.kernel_view(dx),
                        inner.reshape(NB * GB, g.C, g.H, g.W)[:g.N])
    return dx, (out if want_dw else None)


def _tiles(g):
    """(BP, BQ): position tiles whose same-parity neighbours (two tiles apart) share no input
    pixel: (BP + 1) * sh >= dh*(R-1) + 1, likewise along q; at least POSITION_TILE positions
    along q where Q allows, so a task streams several banks."""
    ext_h = g.dilation[0] * (g.R - 1) + 1
    ext_w = g.dilation[1] * (g.S - 1) + 1
    BP = max(1, -(-ext_h // g.stride[0]) - 1)
    BQ = max(1, -(-ext_w // g.stride[1]) - 1, min(POSITION_TILE, -(-g.Q // 4)))
    return BP, BQ


def _streams(dwo, dt, g, accumulate):
    """Whether the weight-gradient tiles go straight to dwo with non-temporal stores
    (outer_product_stream) instead of through a bank in L2 copied out by stream_copy: where
    every vector of them is whole and aligned (a 64-byte aligned output, a group's C*R*S a
    multiple of the vector), written not added, in the accumulation dtype. Kernel alone, same
    process: vgg_3x3 41.8 -> 25.9 ms, deepface_l4 17.3 -> 13.4, cifar_5x5 8.3 -> 7.3."""
    VL = lanes(dt.itemsize)
    return bool(not accumulate and dwo.dtype == dt and (g.C // g.groups * g.R * g.S) % VL == 0
                and dwo.ctypes.data % VEC_BYTES == 0)


def _backward(dy, x, weight, g, want_dx, want_dw, out, out_dtype=None):
    """(dx or None, dw or None); dw added into `out` when given (any storage: a float32 out
    for reduced storage is a master-weight buffer)."""
    if g.depthwise:
        return _dw_backward(dy, x, weight, g, want_dx, want_dw, out, out_dtype)
    dt = dtypes.lookup(dy.dtype).accum
    (ph, bh), (pw, bw) = g.pads()
    # a batch of a vector or more: the images-innermost input gradient (long runs into a
    # (C, H, W, N) buffer, no NCHW scatter: vgg_3x3 43 -> 32 ms); with fewer images than lanes
    # the idle lanes cost more than the scatter saves (deepface_l4 13.9 vs 11.9 ms), and the
    # gathered kernel computes dx beside dW, sharing the position loop
    dx_apart = want_dx and g.N >= lanes(dt.itemsize)
    dx_here = want_dx and not dx_apart
    accumulate = out is not None
    if want_dw and out is None:  # written whole: from the result pool (cpu/_workspace.py)
        out = result((g.P, g.Q) + g.w_shape, result_dtype(dy.dtype, out_dtype))
    dwo = dtypes.kernel_view(out) if want_dw else np.zeros((1, 1, 1, 1, 1, 1), dt)
    w = dtypes.kernel_view(weight) if dx_here else np.zeros((1, 1, 1, 1, 1, 1), dt)
    dx = None
    with _launch_lock:
        dyv = _by_position(dy, g, dt)
        if dx_apart:
            dx = _input_grad(dyv, dy.dtype, weight, g, out_dtype)
        if want_dw or dx_here:
            # a vector of room past the end: _gather_patches' whole-vector reads
            xp = (_padded(widened(x), g.pads(), "hncw", "local_x", tail=lanes(dt.itemsize))
                  if want_dw
                  else np.zeros((1, 1, 1, 1), dt))
            if dx_here:
                dxp = scratch("local_dx", (g.N, g.C, g.H + ph + bh, g.W + pw + bw), dt)
                dxp[...] = 0
            else:
                dxp = np.zeros((1, 1, 1, 1), dt)
            kernel = _iwgrad_kernel(weight.dtype.itemsize if dx_here else 4)
            direct = want_dw and _streams(dwo, dt, g, accumulate)
            kernel(dyv, xp, w, dxp, dwo, g.R, g.S, *g.stride, *g.dilation, *_tiles(g),
                   dx_here, want_dw, accumulate, g.groups, direct,
                   dwo.reshape(-1) if direct else np.zeros((1,), dt))   # one signature
            if dx_here:  # a fresh array (the scratch is reused by the next call)
                dx = np.empty(g.x_shape, result_dtype(dy.dtype, out_dtype))
                _round_into(dtypes.kernel_view(dx), dxp[:, :, ph:ph + g.H, pw:pw + g.W])
    return dx, (out if want_dw else None)


@njit(**njit_options(parallel=True))
def _round_into(dst, src):
    """dst[...] = src[...] (4-D; src in the accumulation dtype, dst any storage)."""
    N, C, H, W = dst.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for h in range(H):
            for w in range(W):
                dst[n, c, h, w] = narrow(src[n, c, h, w], dst)


def local2d_weight_grad(dy, x, g, grid, out=None, deterministic=False, out_dtype=None):
    """(P, Q, K, C, R, S); with `out`, added into it. Always bitwise reproducible."""
    return _backward(dy, x, None, g, False, True, out, out_dtype)[1]


def local2d_input_grad(dy, weight, g, grid, out_dtype=None):
    return _backward(dy, None, weight, g, True, False, None, out_dtype)[0]


def local2d_input_weight_grad(dy, x, weight, g, grid, out=None, deterministic=False,
                              out_dtype=None):
    """(input grad, weight grad) in one pass (the API uses it when both are needed)."""
    return _backward(dy, x, weight, g, True, True, out, out_dtype)


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
                    acc += widen(dy[n, k, p, q])
                i = (p * Q + q) * K + k
                if accumulate:
                    of[i] = narrow(widen(of[i]) + acc, of)
                else:
                    of[i] = narrow(acc, of)


def local2d_bias_grad(dy, g, grid, out=None, out_dtype=None):
    accumulate = out is not None
    if out is None:
        out = np.empty((dy.shape[2], dy.shape[3], dy.shape[1]),
                       dtype=result_dtype(dy.dtype, out_dtype))
    with _launch_lock:
        local2d_bgrad_kernel(dtypes.kernel_view(dy), dtypes.kernel_view(out), accumulate)
    return out
