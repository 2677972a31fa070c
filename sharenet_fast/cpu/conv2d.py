"""Shared-weight 2D convolution on the CPU: Numba parallel kernels, forward and backward.

All three passes are cast as the outer-product microkernel of _simd.py (rows broadcast, one
or more vectors along the columns, the reduction in registers) over operands that each task
gathers into a private, L2-sized buffer:

  forward  out (Q x K)    = patch(n, p) (Q x RSC) . W^T (RSC x K)   patch row q = the R*S*C
                            inputs under output (p, q), gathered from NHWC x; vectors along K
  wgrad    dW (K x RSC)  += dy[n, :, rows] (K x L) . patches (L x RSC)   per chunk of output
                            rows; each chunk owns a private partial (no shared writes)
  dgrad    dx[n, :, h, :] = sum_r scatter(dyT[n, p(h, r)] (Q x K) . W_r (K x S*C))   gather
                            form: one task owns one input row, so no atomics (stride 1: the
                            forward of the flipped layer)

bfloat16 on AVX512_BF16 (config.DOT_BF16, _pairs): the same passes on the 16-bit storage with
the reduction taken two steps at a time (_simd.outer_product_pairs, vdpbf16ps): the forward
over channel pairs (rows form) or even-length patches (gathered form), the stride-1 input
gradient as that forward, the weight gradient over the same position of two images.

Public host launchers (conv2d, conv2d_input_grad, conv2d_weight_grad, conv2d_bias_grad: the op
table's signatures, optable.py) take validated arrays, a ConvGeometry and the bank grid (1 x 1
here); kernels are named <layer>_<kernel tag>_kernel.
"""
import dataclasses
from functools import lru_cache

import numpy as np
from numba import njit, prange

from .. import dtypes
from ..config import (CONV_ACC, CONV_NVMAX, CONV_ROWS_ACC, CONV_ROWS_NVMAX,
                      CONV_ROWS_PAIRS_NVMAX, DOT_BF16, WGRAD_CHUNK, WGRAD_DIRECT_FILL,
                      WGRAD_DIRECT_NVMAX, WGRAD_MAX_PARTIALS, WGRAD_MAX_WORKSPACE,
                      WGRAD_PAIRS_TILE, njit_options)
from ._simd import (lanes, lanes_of, narrow, outer_product, outer_product_nested,
                    outer_product_pairs, typed_zero)
from ._workspace import launch_lock as _launch_lock
from ._workspace import scratch
from . import depthwise


def _padded(a, pads, layout, name, tail=0):
    """Copy of NCHW `a` zero-padded by pads = ((top, bottom), (left, right)), in NCHW, NHWC,
    HNCW or channel-pairs layout (ConvGeometry.pads(): padding="same"'s odd extra row/column
    goes at the end).

    Kernels read the padded copy and never test bounds. A negative amount crops instead
    (the input-gradient-as-convolution needs that when padding > dilation * (R - 1)).
    The copy is scratch `name` (call under _launch_lock), `tail` elements longer.
    """
    N, C, H, W = a.shape
    (t, b), (l, r) = pads
    Hp, Wp = H + t + b, W + l + r
    src = a[:, :, max(0, -t):H - max(0, -b), max(0, -l):W - max(0, -r)]
    t, b, l, r = max(0, t), max(0, b), max(0, l), max(0, r)
    if layout == "nhwc":
        out = scratch(name, (N, Hp, Wp, C), a.dtype)
        nhwc_pad_kernel(src, out, t, l)
        return out
    elif layout == "pairs":
        # (N, C2, Hp, Wp, 2): channels 2c2 and 2c2 + 1 side by side (an odd C's last pair
        # zero), for the bfloat16 pairs kernels
        out = scratch(name, (N, (C + 1) // 2, Hp, Wp, 2), a.dtype, tail)
        pairs_pad_kernel(src, out.view(np.uint32).reshape(out.shape[:4]), t, l)
        return out
    elif layout == "hncw":
        out = scratch(name, (Hp, N, C, Wp), a.dtype, tail)
        hncw_pad_kernel(src, out, t, l)
        return out
    else:
        out = dst = scratch(name, (N, C, Hp, Wp), a.dtype)
    # zero only the border; the interior is overwritten
    dst[:, :, :t] = 0
    dst[:, :, Hp - b:] = 0
    dst[:, :, :, :l] = 0
    dst[:, :, :, Wp - r:] = 0
    dst[:, :, t:Hp - b, l:Wp - r] = src
    return out


@njit(**njit_options(), inline="always")
def _pad_border(row, h, t, H, l, W):
    """Zero what padding output row `row` (row h of a copy padded by t rows / l columns before)
    holds: all of it above and below the input, else its first l and its columns past l + W
    along the first axis. True when the row holds input (its l..l+W-1 still to be written)."""
    if h < t or h >= t + H:
        row[:] = 0
        return False
    row[:l] = 0
    row[l + W:] = 0
    return True


@njit(**njit_options(parallel=True))
def nhwc_pad_kernel(src, out, t, l):
    """out (N, Hp, Wp, C) = src (N, C, H, W) zero-padded by t rows / l columns before (and
    the rest after), channels innermost. One task per (image, output row), each row written
    once in order (numpy's transposing assignment: 1.1 ms single-threaded at alexnet_conv1's
    input)."""
    N, C, H, W = src.shape
    _, Hp, Wp, _ = out.shape
    for task in prange(N * Hp):
        n = task // Hp
        h = task - n * Hp
        row = out[n, h]
        if not _pad_border(row, h, t, H, l, W):
            continue
        for c in range(C):
            s = src[n, c, h - t]
            for w in range(W):
                row[l + w, c] = s[w]


@njit(**njit_options(parallel=True))
def hncw_pad_kernel(src, out, t, l):
    """out (Hp, N, C, Wp) = src (N, C, H, W) zero-padded by t rows / l columns before (and
    the rest after): the local weight gradient's patch source. One task per (output row,
    image), its C rows written in order (numpy's assignment through the transposed view, one
    thread: 3.6 ms at vgg_3x3, 16 x 64 x 56 x 56)."""
    N, C, H, W = src.shape
    Hp, _, _, Wp = out.shape
    for task in prange(Hp * N):
        h = task // N
        n = task - h * N
        for c in range(C):
            row = out[h, n, c]
            if _pad_border(row, h, t, H, l, W):
                row[l:l + W] = src[n, c, h - t]


@njit(**njit_options(parallel=True))
def pairs_pad_kernel(src, out, t, l):
    """out (N, C2, Hp, Wp) 32-bit words = src (N, C, H, W) 16-bit with channels 2c2, 2c2 + 1
    side by side (the low half first; an odd C's last pair's high half zero), zero-padded by t
    rows / l columns before (and the rest after). One task per (image, channel pair), whole
    words: numpy's two strided assignments took 1.5 ms at vgg_3x3 (16 x 64 x 56 x 56)."""
    N, C, H, W = src.shape
    _, C2, Hp, Wp = out.shape
    for task in prange(N * C2):
        n = task // C2
        c = 2 * (task - n * C2)
        o = out[n, c // 2]
        for h in range(Hp):
            row = o[h]
            if not _pad_border(row, h, t, H, l, W):
                continue
            dst = row[l:l + W]
            s0 = src[n, c, h - t]
            if c + 1 < C:
                s1 = src[n, c + 1, h - t]
                for w in range(W):
                    dst[w] = np.uint32(s0[w]) | (np.uint32(s1[w]) << np.uint32(16))
            else:
                for w in range(W):
                    dst[w] = np.uint32(s0[w])


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
def conv_tile(K, itemsize):
    """(MR, NV): the forward's register tile, MR output positions x NV vectors of filters.
    NV divides the filters' vector count where it can (no masked lanes but at K's end), and MR
    fills the accumulator budget (config.CONV_ACC) up to 8 rows."""
    nvec = -(-K // lanes(itemsize))
    NV = max(d for d in range(1, CONV_NVMAX + 1) if nvec % d == 0)
    return min(8, CONV_ACC // NV), NV


@njit(**njit_options(), inline="always")
def _gather_rows(xf, patch, T, row, n, p, tq, TQ, Q, Hp, Wp, C, R, S, sh, sw, dh, dw):
    """Patches of output row (n, p), columns q = tq, tq + TQ, ... into patch rows row, row+1,
    ... (T elements apart): row = the R*S*C inputs under (p, q) from NHWC xf, (r, s, c) order,
    unit-stride runs of S*C when dilation is 1; a row's T - R*S*C last elements are zeroed
    (the pairs form's padding step). Returns the next free row."""
    SC = S * C
    for q in range(tq, Q, TQ):
        for r in range(R):
            src = ((n * Hp + p * sh + r * dh) * Wp + q * sw) * C
            dst = row * T + r * SC
            if dw == 1:
                _copy(patch[dst:dst + SC], xf[src:src + SC])
            else:
                for s in range(S):
                    _copy(patch[dst + s * C:dst + (s + 1) * C],
                          xf[src + s * dw * C:src + s * dw * C + C])
        for t in range(row * T + R * SC, (row + 1) * T):
            patch[t] = 0
        row += 1
    return row


@lru_cache(maxsize=None)
def _fwd_kernel(MR, NV, PAIRS):
    @njit(**njit_options(parallel=True))
    def conv2d_fwd_kernel(xh, wt, bias, has_bias, y, R, S, sh, sw, dh, dw, TP, TQ, k_base):
        """xh: padded NHWC input; wt: TP*TQ banks of (R*S*C, K), filters innermost (PAIRS: of
        (T2/2, K2, 2), T2 = R*S*C rounded up to even, K2 = K rounded up to whole vectors, steps
        2j and 2j + 1 of a filter side by side); y: (N, KY, P, Q) output, of which this call
        writes filters k_base..k_base+K (a group of a grouped conv writes its slice of y in
        place); bias (TP*TQ*K, zeros when has_bias is off), in the accumulator's dtype.

        Output (p, q) uses bank [p % TP, q % TQ] (shared conv: TP = TQ = 1). One task = one
        output row (n, p): gather its Q patches (rows of R*S*C, unit stride along (s, c) when
        dilation is 1), class by class of q % TQ; then, per class, out (positions x K) =
        patch (positions x T) . bank (T x K), MR positions x NV vectors of filters at a time:
        each step broadcasts one input value per position (PAIRS, bfloat16: one pair of
        consecutive inputs, for vdpbf16ps) and loads NV vectors of weights (the bank stays in
        L2 across tasks). The block is stored (positions, K) and written to y's row n, k, p
        as runs along q (rounded into y's storage).
        """
        N, Hp, Wp, C = xh.shape
        _, KY, P, Q = y.shape
        K = len(bias) // (TP * TQ)             # (the host passes zeros without a bias)
        T = R * S * C
        TS = T + (T & 1) if PAIRS else T       # a patch row's length
        VK = NV * 16 if PAIRS else NV * lanes_of(y)
        J, L = wt.shape[1], wt.shape[2]        # a bank's steps and its row's length
        xf = xh.ravel()
        wf = wt.ravel()
        yf = y.ravel()
        for task in prange(N * P):
            n = task // P
            p = task - n * P
            tp = p % TP
            patch = np.empty(Q * TS, dtype=xh.dtype)
            obuf = np.empty(Q * K, dtype=bias.dtype)
            row = 0
            for tq in range(TQ):
                row = _gather_rows(xf, patch, TS, row, n, p, tq, TQ, Q, Hp, Wp, C, R, S, sh,
                                   sw, dh, dw)
            row = 0
            for tq in range(TQ):
                nq = (Q - tq + TQ - 1) // TQ
                bank = tp * TQ + tq
                for i0 in range(row, row + nq, MR):
                    for k0 in range(0, K, VK):
                        if PAIRS:
                            outer_product_pairs(MR, NV, patch, i0 * TS, TS,
                                                wf, bank * J * L + 2 * k0, L, J,
                                                obuf, i0 * K + k0, K, min(MR, row + nq - i0),
                                                min(VK, K - k0), False, obuf, 0, False,
                                                1, 0, 1, 0)
                        else:
                            outer_product(MR, NV, 1, 0, 0, patch, i0 * T, T, 1,
                                          wf, bank * T * K + k0, K, T, 0,
                                          obuf, i0 * K + k0, K, 1, min(MR, row + nq - i0),
                                          min(VK, K - k0), False, obuf, 0, False, 0)
                base = (n * KY + k_base) * P * Q + p * Q
                for k in range(K):
                    bk = bias[bank * K + k] if has_bias else typed_zero(obuf)
                    for j in range(nq):
                        yf[base + k * P * Q + tq + j * TQ] = narrow(obuf[(row + j) * K + k] + bk,
                                                                    yf)
                row += nq

    return conv2d_fwd_kernel


def conv2d(x, weight, bias, g, grid, out_dtype=None):
    return _layer_forward(x, weight[None, None], None if bias is None else bias[None, None], g,
                          out_dtype)


def native_forward(x, weight, bias, g, grid):
    """Whether the forward runs on x's storage itself (bfloat16 pairs, _pairs) rather than on
    float32 copies (_precision.adapted): every ungrouped and grouped conv, not depthwise."""
    return _pairs(x) and not g.depthwise


def native_input_grad(dy, weight, g, grid):
    """The input gradient likewise: where it is a convolution itself (stride 1)."""
    return _pairs(dy) and not g.depthwise and g.stride == (1, 1)


def native_weight_grad(dy, x, g, grid, out=None, deterministic=False):
    """The shared conv's weight gradient likewise (a float32 result, which _precision.adapted
    rounds or adds into out=), not depthwise, column dilation 1 (it reads a tap's S*C inputs
    as one run)."""
    return _pairs(x) and not g.depthwise and g.dilation[1] == 1


# ------------------------------------------------------------------------------------ groups
# A grouped conv (1 < groups < C) is `groups` ungrouped convs over channel slices: each kernel
# builds its padded copy of its slice of x anyway (so slicing costs nothing there), and each
# group's result lands in its slice of y / dx / dw. Depthwise (groups == C: one channel per
# filter, no reduction over channels) has kernels of its own (depthwise.py).
def _groups(g):
    """[(input channel slice, filter slice)] of g's groups, and the geometry of one group."""
    one = dataclasses.replace(g, C=g.Cg, K=g.Kg, groups=1)
    return [(slice(i * g.Cg, (i + 1) * g.Cg), slice(i * g.Kg, (i + 1) * g.Kg))
            for i in range(g.groups)], one


def _layer_forward(x, banks, bias, g, out_dtype=None):
    """y of the tiled conv at g (shared: 1 x 1 banks (1, 1, K, C/G, R, S)), any groups; in
    out_dtype (a native bfloat16 pass's float32 result) or x's dtype."""
    y = np.empty(g.y_shape, dtype=out_dtype or x.dtype)
    if g.depthwise:
        depthwise.forward(x, banks, bias, g, y)
    elif g.groups == 1:
        _forward(x, banks, bias, g.pads(), g.stride, g.dilation, y)
    else:
        for cs, ks in _groups(g)[0]:   # each group writes its filters' planes of y
            _forward(x[:, cs], banks[:, :, ks], None if bias is None else bias[:, :, ks],
                     g.pads(), g.stride, g.dilation, y, ks.start)
    return y


@lru_cache(maxsize=None)
def _fwd_rows_kernel(MR, NV, PAIRS):

    @njit(**njit_options(parallel=True))
    def conv2d_fwd_rows_kernel(xp, w, bias, has_bias, y, R, S, sh, dh, dw, k_base):
        """The shared conv forward with vectors along q (the other orientation of
        conv2d_fwd_kernel, for few filters and unit column stride): xp: padded NCHW input
        (PAIRS: channel pairs side by side, (N, C2, Hp, 2*Wp): _padded's "pairs");
        w: (K, C*R*S) in its own layout (PAIRS: (K, C2*R*S*2), steps (c2, r, s, pair));
        y: (N, KY, P, Q), filters k_base..k_base+K written.

        One task = one output row (n, p): y[n, :, p, :] (K x Q) = W (K x T) . X, where X's row
        t = (c, r, s) is the run of Q inputs of row (n, c, p*sh + r*dh) from column s*dw on,
        read in place (no gathered copy: a direct convolution); MR filters x NV vectors of q
        at a time, stored straight into y's rows with the bias added (PAIRS: rounded into y's
        storage as they are stored). Per step: NV loads and MR broadcasts for MR*NV FMAs
        (PAIRS: vdpbf16ps, two channels each), where the filters-along-vector form at K = 16
        needs a load per FMA.
        """
        N, CE, Hp, WE = xp.shape
        _, KY, P, Q = y.shape
        K = w.shape[0]
        E = 2 if PAIRS else 1                  # elements per step and column
        T = w.shape[1] // E                    # steps (PAIRS: channel pairs x taps)
        VQ = NV * 16 if PAIRS else NV * lanes_of(y)
        xf = xp.ravel()
        wf = w.ravel()
        yf = y.ravel()
        for task in prange(N * P):
            n = task // P
            p = task - n * P
            row0 = ((n * CE) * Hp + p * sh) * WE
            for k0 in range(0, K, MR):
                mr = min(MR, K - k0)
                y0 = ((n * KY + k_base + k0) * P + p) * Q
                for q0 in range(0, Q, VQ):
                    # steps (c, r, s): B row = input row (n, c, p*sh + r*dh) from column
                    # s*dw + q0, read in place
                    if PAIRS:
                        outer_product_pairs(MR, NV, wf, k0 * 2 * T, 2 * T, xf, row0 + 2 * q0,
                                            2 * dw, S, yf, y0 + q0, P * Q, mr, min(VQ, Q - q0),
                                            False, bias, k0, has_bias, R, dh * WE, CE,
                                            Hp * WE)
                    else:
                        outer_product_nested(MR, NV, wf, k0 * T, T, 1, xf, row0 + q0, dw, S,
                                             yf, y0 + q0, P * Q, 1, mr, min(VQ, Q - q0),
                                             False, bias, k0, has_bias, R, dh * WE, CE,
                                             Hp * WE)

    return conv2d_fwd_rows_kernel


def _rows_form(TP, TQ, K, stride, itemsize, pairs=False):
    """Whether the forward runs with vectors along q: a shared conv with unit column stride
    whose filters fill fewer vectors than the filters-along-vector tile takes; in bfloat16
    pairs, at any K (vgg_3x3, 64 filters: 7.75 ms against 8.62 gathered, same process)."""
    return ((TP, TQ) == (1, 1) and stride[1] == 1
            and (pairs or -(-K // lanes(itemsize)) < CONV_NVMAX))


def _pairs(x):
    """Whether a pass on x runs in bfloat16 pairs (vdpbf16ps): bfloat16 storage on a target
    with AVX512_BF16 (config.DOT_BF16); float16 and the rest widen (cpu/_precision.py)."""
    return DOT_BF16 and x.dtype == dtypes.BFLOAT16


def _even(n):
    return n + (n & 1)


def _forward(x, banks, bias, pads, stride, dilation, y, k_base=0):
    """y[:, k_base:k_base + K] = tiled conv of x zero-padded by `pads` (_padded) with banks
    (TP, TQ, K, C, R, S), bias (TP, TQ, K) or None; y (N, >= k_base + K, P, Q) C-contiguous.
    bfloat16 x and banks (_pairs): multiplied as such (a float32 bias; y bfloat16 or float32)."""
    TP, TQ, K, C, R, S = banks.shape
    T = R * S * C
    pairs = _pairs(x)
    acc = np.float32 if pairs else x.dtype
    b = (np.ascontiguousarray(bias, dtype=acc).reshape(-1) if bias is not None
         else np.zeros(TP * TQ * K, dtype=acc))      # the gathered kernel's K = len(b) / banks
    xv, bv, yv = (dtypes.kernel_view(a) for a in (x, banks, y))
    lanes_acc = lanes(np.dtype(acc).itemsize)
    if _rows_form(TP, TQ, K, stride, np.dtype(acc).itemsize, pairs):
        Q = y.shape[3]
        nvmax = CONV_ROWS_PAIRS_NVMAX if pairs else CONV_ROWS_NVMAX
        NV = max(1, min(nvmax, -(-Q // lanes_acc)))
        kernel = _fwd_rows_kernel(min(8, CONV_ROWS_ACC // NV), NV, pairs)
        with _launch_lock:
            if pairs:
                # the kernel reads whole vectors (2*VQ words) from the last row's end on
                xp = _padded(xv, pads, "pairs", "fwd_x", 2 * NV * lanes_acc)
                # (K, C2, R, S, 2): channels 2c2, 2c2 + 1 side by side (an odd C's last
                # pair padded with zero weights)
                wide = np.zeros((K, _even(C), R, S), xv.dtype)
                wide[:, :C] = bv.reshape(K, C, R, S)
                w = np.ascontiguousarray(
                    wide.reshape(K, -1, 2, R, S).transpose(0, 1, 3, 4, 2)).reshape(K, -1)
            else:
                xp = _padded(xv, pads, "nchw", "fwd_x")
                w = np.ascontiguousarray(bv.reshape(K, C * R * S))
            kernel(xp.reshape(xp.shape[0], xp.shape[1], xp.shape[2], -1), w, b,
                   bias is not None, yv, R, S, stride[0], *dilation, k_base)
        return
    MR, NV = conv_tile(K, np.dtype(acc).itemsize)
    kernel = _fwd_kernel(MR, NV, pairs)
    with _launch_lock:
        xh = _padded(xv, pads, "nhwc", "fwd_x")
        if pairs:
            # (bank, T2/2, K2, 2): steps 2j, 2j + 1 of filter k at words 2k, 2k + 1 of row j
            K2 = -(-K // (NV * lanes_acc)) * NV * lanes_acc
            wide = np.zeros((TP * TQ, _even(T), K2), xv.dtype)
            wide[:, :T, :K] = bv.transpose(0, 1, 4, 5, 3, 2).reshape(TP * TQ, T, K)
            wt = scratch("fwd_w", (TP * TQ, _even(T) // 2, K2, 2), xv.dtype)
            wt[...] = wide.reshape(TP * TQ, -1, 2, K2).transpose(0, 1, 3, 2)
        else:
            wt = scratch("fwd_w", (TP * TQ, T, K), x.dtype)
            wt.reshape(TP, TQ, R, S, C, K)[...] = banks.transpose(0, 1, 4, 5, 3, 2)
        kernel(xh, wt.reshape(TP * TQ, wt.shape[1], -1), b, bias is not None, yv, R, S,
               *stride, *dilation, TP, TQ, k_base)


# ----------------------------------------------------------------------------- weight grad
@lru_cache(maxsize=None)
def _wgrad_kernel(MR, NV):
    @njit(**njit_options(parallel=True))
    def conv2d_wgrad_kernel(dyd, xh, partial, Q, R, S, sh, sw, dh, dw, rows, TP, TQ):
        """dyd: dy (N, K, P, Q) de-interleaved by q % TQ as (N, K, P, TQ, ceil(Q/TQ));
        xh: padded NHWC input; partial: (B, TP*TQ, K, R*S*C) private sums, (r, s, c) order.

        Work unit u = (image n, block of `rows` output rows). Partial b owns units
        [b*U//B, (b+1)*U//B) and is the only writer of partial[b]: the CPU form of the
        per-depth-slice reduction. Within a unit, each tile class (p % TP, q % TQ) gathers its
        dy entries (K x L positions) and its patches (L x T, as the forward does), and adds
        their product into its own bank: MR filters x NV vectors along T, the L positions
        reduced in registers, each partial tile loaded and stored once per class.
        """
        N, K, P, _, Qd = dyd.shape
        _, Hp, Wp, C = xh.shape
        B = partial.shape[0]
        T = C * R * S
        chunks = (P + rows - 1) // rows
        U = N * chunks
        cap = -(-rows // TP) * Qd
        VT = NV * lanes_of(partial)
        dyf = dyd.ravel()
        xf = xh.ravel()
        pf = partial.ravel()
        for b in prange(B):
            patch = np.empty(T * cap, dtype=xh.dtype)
            dyc = np.empty(K * cap, dtype=xh.dtype)
            pf[b * TP * TQ * K * T:(b + 1) * TP * TQ * K * T] = 0
            for u in range(b * U // B, (b + 1) * U // B):
                n = u // chunks
                p0 = (u - n * chunks) * rows
                p1 = min(p0 + rows, P)
                for tp in range(TP):
                    pa = p0 + (tp - p0) % TP  # first row of the unit in this class
                    nr = (p1 - pa + TP - 1) // TP if pa < p1 else 0
                    for tq in range(TQ):
                        nq = (Q - tq + TQ - 1) // TQ
                        L = nr * nq
                        if L == 0:
                            continue
                        row = 0
                        for i in range(nr):
                            row = _gather_rows(xf, patch, T, row, n, pa + i * TP, tq, TQ, Q,
                                               Hp, Wp, C, R, S, sh, sw, dh, dw)
                        for k in range(K):
                            for i in range(nr):
                                src = (((n * K + k) * P + pa + i * TP) * TQ + tq) * Qd
                                dst = k * L + i * nq
                                _copy(dyc[dst:dst + nq], dyf[src:src + nq])
                        base = (b * TP * TQ + tp * TQ + tq) * K * T
                        for t0 in range(0, T, VT):
                            for k0 in range(0, K, MR):
                                outer_product(MR, NV, 1, 0, 0, dyc, k0 * L, L, 1,
                                              patch, t0, T, L, 0,
                                              pf, base + k0 * T + t0, T, 1, min(MR, K - k0),
                                              min(VT, T - t0), True, pf, 0, False, 0)

    return conv2d_wgrad_kernel


@lru_cache(maxsize=None)
def _wgrad_direct_kernel(MR, NV):
    @njit(**njit_options(parallel=True))
    def conv2d_wgrad_direct_kernel(dy, xh, partial, R, S, sh, sw, dh, rows, k_base, x0):
        """The shared conv's weight gradient read in place (no gathered patches, no copy of
        dy): dy (N, KY, P, Q), of which filters k_base..k_base+K are read (a group of a
        grouped conv reads its slice of dy in place); xh: padded NHWC input, read from element
        x0 on (a tiled layer's tile class: its first row and column); partial:
        (B, 1, K, R*S*C) as in
        conv2d_wgrad_kernel, the same work units and owners. Column dilation 1: tap r's S*C
        inputs under (p, q) are one run of xh's row p*sh + r*dh from column q*sw.

        Per unit (n, rows p0..p1) and tap r: partial[b][k, r*S*C + sc] += sum over (p, q) of
        dy[n, k, p, q] * xh[n, p*sh + r*dh, q*sw, sc]: MR filters (A: dy's rows, unit stride
        along the positions) x NV vectors of (s, c) (B: read from the input row, stride sw*C
        per q, sh rows per p), the unit's positions reduced in registers. Where C*S fills whole
        vectors this does the GEMM of conv2d_wgrad_kernel without writing and re-reading its
        patch matrix (8 MB per image at deepface_l4)."""
        N, KY, P, Q = dy.shape
        _, Hp, Wp, C = xh.shape
        B, _, K, _ = partial.shape
        SC = S * C
        T = R * SC
        chunks = (P + rows - 1) // rows
        U = N * chunks
        VT = NV * lanes_of(partial)
        dyf = dy.ravel()
        xf = xh.ravel()
        pf = partial.ravel()
        for b in prange(B):
            pf[b * K * T:(b + 1) * K * T] = 0
            for u in range(b * U // B, (b + 1) * U // B):
                n = u // chunks
                p0 = (u - n * chunks) * rows
                nr = min(rows, P - p0)
                for r in range(R):
                    xrow = x0 + (n * Hp + p0 * sh + r * dh) * Wp * C
                    for sc0 in range(0, SC, VT):
                        for k0 in range(0, K, MR):
                            outer_product_nested(MR, NV, dyf,
                                                 ((n * KY + k_base + k0) * P + p0) * Q,
                                                 P * Q, 1, xf, xrow + sc0, sw * C, Q,
                                                 pf, (b * K + k0) * T + r * SC + sc0, T, 1,
                                                 min(MR, K - k0), min(VT, SC - sc0), True,
                                                 pf, 0, False, nr, sh * Wp * C, 1, 0)

    return conv2d_wgrad_direct_kernel


@njit(**njit_options(parallel=True))
def image_pairs_kernel(src, out, t, l):
    """out (N2, Hp, Wp, C) 32-bit words, N2 = ceil(N/2): word (h, w, c) of image pair m = the
    zero-padded input (pads t rows / l columns before, zeros after) of image 2m at (c, h, w)
    in its low half and of image 2m + 1 in its high half (zero past an odd N): NHWC with the
    batch folded into pairs, for conv2d_wgrad_pairs_kernel. src (N, C, H, W) 16-bit. One task
    per (image pair, row)."""
    N, C, H, W = src.shape
    N2, Hp, Wp, _ = out.shape
    for task in prange(N2 * Hp):
        m = task // Hp
        h = task - m * Hp
        row = out[m, h]
        if not _pad_border(row, h, t, H, l, W):
            continue
        for c in range(C):
            s0 = src[2 * m, c, h - t]
            if 2 * m + 1 < N:
                s1 = src[2 * m + 1, c, h - t]
                for w in range(W):
                    row[l + w, c] = np.uint32(s0[w]) | (np.uint32(s1[w]) << np.uint32(16))
            else:
                for w in range(W):
                    row[l + w, c] = np.uint32(s0[w])


@lru_cache(maxsize=None)
def _wgrad_pairs_kernel(MR, NV):
    @njit(**njit_options(parallel=True))
    def conv2d_wgrad_pairs_kernel(dy, x2, partial, R, S, sh, sw, dh, rows, k_base):
        """The shared conv's weight gradient in bfloat16 pairs (vdpbf16ps), read in place as
        conv2d_wgrad_direct_kernel (column dilation 1): dy (N, KY, P, Q) bfloat16 (uint16),
        filters k_base..k_base+K; x2 (N2, Hp, Wp, C, 2) the padded input with images 2m and
        2m + 1 side by side (image_pairs_kernel); partial (B, K, R*S*C) float32, the work
        units (image pair, rows p0..p1) split among the partials as conv2d_wgrad_kernel's.

        The reduction over positions takes the same position of two images at once: A = the
        unit's dy rows of both images interleaved (one 32-bit broadcast = dy of images 2m and
        2m + 1 at (k, p, q); zero for a missing last image), B = x2's row p*sh + r*dh from
        column q*sw: word pair (s, c) = the two images' inputs at tap (r, s), channel c, so a
        tap's S*C columns are one run, sw*C pairs on per position. MR filters x NV vectors of
        (s, c). Both operands hold each input once (no duplicated columns)."""
        N, KY, P, Q = dy.shape
        N2, Hp, Wp, C, _ = x2.shape
        B, K, T = partial.shape
        SC = S * C
        chunks = (P + rows - 1) // rows
        U = N2 * chunks
        VT = NV * 16
        dyf = dy.ravel()
        xf = x2.ravel()
        pf = partial.ravel()
        for b in prange(B):
            words = np.empty(K * rows * Q, dtype=np.uint32)
            dyc = words.view(np.uint16)
            pf[b * K * T:(b + 1) * K * T] = 0
            for u in range(b * U // B, (b + 1) * U // B):
                m = u // chunks
                p0 = (u - m * chunks) * rows
                L = min(rows, P - p0) * Q
                for k in range(K):
                    d = words[k * L:(k + 1) * L]
                    s0 = dyf[((2 * m * KY + k_base + k) * P + p0) * Q:]
                    if 2 * m + 1 < N:
                        s1 = dyf[(((2 * m + 1) * KY + k_base + k) * P + p0) * Q:]
                        for i in range(L):
                            d[i] = np.uint32(s0[i]) | (np.uint32(s1[i]) << np.uint32(16))
                    else:
                        for i in range(L):
                            d[i] = np.uint32(s0[i])
                for r in range(R):
                    xrow = ((m * Hp + p0 * sh + r * dh) * Wp) * C * 2
                    for sc0 in range(0, SC, VT):
                        for k0 in range(0, K, MR):
                            outer_product_pairs(MR, NV, dyc, k0 * 2 * L, 2 * L,
                                                xf, xrow + 2 * sc0, 2 * sw * C, Q,
                                                pf, (b * K + k0) * T + r * SC + sc0, T,
                                                min(MR, K - k0), min(VT, SC - sc0), True,
                                                pf, 0, False, L // Q, sh * Wp * C * 2, 1, 0)

    return conv2d_wgrad_pairs_kernel


def wgrad_direct_tile(K, SC, itemsize):
    """(MR, NV) of the in-place weight gradient, or None where the gathered form is the better
    one: vectors run along a tap's S*C inputs, so S*C must fill them (alexnet_conv1's 33 would
    leave a third of the lanes idle). NV: no masked vector where one divides S*C's vector
    count, then the most FMAs per load (MR*NV / (MR + NV)) within the accumulator budget."""
    VL = lanes(itemsize)
    nvec = -(-SC // VL)
    if SC / (nvec * VL) < WGRAD_DIRECT_FILL:
        return None
    best = None
    for NV in range(1, min(nvec, WGRAD_DIRECT_NVMAX) + 1):
        MR = min(8, CONV_ACC // NV, K)
        masked = -(-nvec // NV) * NV - nvec          # vectors of the last tile past S*C
        key = (-masked, MR * NV / (MR + NV))
        if best is None or key > best[0]:
            best = (key, (MR, NV))
    return best[1]


@njit(**njit_options(parallel=True))
def reduce_partials_kernel(partial, out, accumulate):
    """out (+)= sum_b partial[b], b in increasing order: the same bits whatever the threads.
    Blocks of 512 elements, each summed partial by partial with whole-vector adds (element by
    element over b, the 64 strided reads per element took 2.2 ms at vgg_3x3's 64 partials of
    36864 weights; the order of each element's sum is the same)."""
    B = partial.shape[0]
    M = partial.shape[1]
    for blk in prange((M + 511) // 512):
        i0 = blk * 512
        i1 = min(M, i0 + 512)
        acc = partial[0, i0:i1].copy()
        for b in range(1, B):
            _add(acc, partial[b, i0:i1])
        if accumulate:
            _add(out[i0:i1], acc)
        else:
            _copy(out[i0:i1], acc)


def _wgrad_split(g, banks=1, itemsize=4, grid=None):
    """(rows per work unit, number of partials): depends on the shapes only, never the threads.
    grid: the (P, Q) the kernel walks, when not g's (a tile class's subgrid).

    A unit holds about WGRAD_CHUNK positions per tile class (so a 2 x 2 tile gets units 4x as
    big: each class's GEMM keeps a long reduction). WGRAD_MAX_PARTIALS bounds the partials'
    total size in banks (a tiled partial holds every bank), and so does the byte budget
    WGRAD_MAX_WORKSPACE; at least 4 partials (or one per unit) remain, so both cores have work.
    """
    P, Q = grid or (g.P, g.Q)
    rows = max(1, min(P, WGRAD_CHUNK * banks // Q))
    units = g.N * (-(-P // rows))
    per_partial = banks * g.K * g.C * g.R * g.S * itemsize
    cap = max(4, min(WGRAD_MAX_PARTIALS // banks, WGRAD_MAX_WORKSPACE // per_partial))
    return rows, max(1, min(units, WGRAD_MAX_PARTIALS, cap))


def conv2d_weight_grad(dy, x, g, grid, out=None, deterministic=False):
    """Weight gradient (K, C/G, R, S). With `out`, the gradient is added into it.

    The reduction order depends only on the shapes, never on the thread schedule, so the CPU
    result is bitwise reproducible whether or not `deterministic` is asked for.
    """
    return _weight_grad(dy, x, g, (1, 1), g.w_shape, out)


def _weight_grad(dy, x, g, tile, w_shape, out):
    """Weight gradient of the tiled conv at g (shared: tile 1 x 1), any groups; `out` (a
    C-contiguous w_shape array) added into when given."""
    accumulate = out is not None
    acc = np.float32 if _pairs(x) else x.dtype     # bfloat16 pairs: a float32 result
    if out is None:
        out = np.empty(w_shape, dtype=acc)
    if g.depthwise:
        depthwise.weight_grad(dy, x, g, tile, out, accumulate)
        return out
    if g.groups == 1:
        return _ungrouped_weight_grad(dy, x, g, tile, out, accumulate)
    slices, one = _groups(g)
    banks = tile[0] * tile[1]
    view = out.reshape(banks, g.K, g.Cg, g.R, g.S)
    part = np.empty((banks, g.Kg, g.Cg, g.R, g.S), dtype=acc)
    dy = np.ascontiguousarray(dy)
    for cs, ks in slices:
        # the group's filters: a block of each bank (strided in out), added in place below
        _ungrouped_weight_grad(dy, x[:, cs], one, tile, part, False, ks.start)
        if accumulate:
            view[:, ks] += part
        else:
            view[:, ks] = part
    return out


def _ungrouped_weight_grad(dy, x, g, tile, out, accumulate, k_base=0):
    """The tiled conv's weight gradient at ungrouped g, written (or added) into `out`, a
    C-contiguous array of TP*TQ*K*C*R*S elements; dy's filters k_base..k_base+K (dy may hold
    more: a grouped conv's whole dy)."""
    TP, TQ = tile
    if _pairs(x) and (TP, TQ) == (1, 1):
        # work units over image pairs (each position counts twice)
        rows, nparts = _wgrad_split(dataclasses.replace(g, N=(g.N + 1) // 2), 1, 4)
        kernel = _wgrad_pairs_kernel(*WGRAD_PAIRS_TILE)
        (t, b), (l, r) = g.pads()
        Hp, Wp = g.H + t + b, g.W + l + r
        with _launch_lock:
            # a tap run's last vector is read whole: the copy's tail covers it
            x2 = scratch("wgrad_x", ((g.N + 1) // 2, Hp, Wp, g.C, 2), np.uint16,
                         2 * WGRAD_PAIRS_TILE[1] * 16)
            image_pairs_kernel(dtypes.kernel_view(x), x2.view(np.uint32)[..., 0], t, l)
            partial = scratch("wgrad_partial", (nparts, 1, g.K, g.R * g.S * g.C), np.float32)
            kernel(dtypes.kernel_view(np.ascontiguousarray(dy)), x2, partial[:, 0], g.R, g.S,
                   *g.stride, g.dilation[0], rows, k_base)
            _sum_partials_into(partial, out.reshape(g.K, g.C, g.R, g.S), accumulate)
        return out
    rows, nparts = _wgrad_split(g, TP * TQ, x.dtype.itemsize)
    direct = (wgrad_direct_tile(g.K, g.S * g.C, x.dtype.itemsize)
              if g.dilation[1] == 1 else None)
    if direct is not None and (TP, TQ) != (1, 1):
        return _classwise_weight_grad(dy, x, g, tile, out, accumulate, k_base, direct)
    with _launch_lock:
        xh = _padded(x, g.pads(), "nhwc", "wgrad_x")
        partial = scratch("wgrad_partial", (nparts, TP * TQ, g.K, g.R * g.S * g.C), x.dtype)
        if direct is not None:
            _wgrad_direct_kernel(*direct)(np.ascontiguousarray(dy), xh, partial, g.R, g.S,
                                          *g.stride, g.dilation[0], rows, k_base, 0)
        else:
            dyd = _deinterleaved(np.ascontiguousarray(dy[:, k_base:k_base + g.K]), TQ,
                                 "wgrad_dy")
            _wgrad_kernel(*conv_tile(g.K, x.dtype.itemsize))(
                dyd, xh, partial, g.Q, g.R, g.S, *g.stride, *g.dilation, rows, TP, TQ)
        _sum_partials_into(partial, out.reshape(TP * TQ * g.K, g.C, g.R, g.S), accumulate)
    return out


def _sum_partials_into(partial, dst, accumulate):
    """dst (B*K, C, R, S) (+)= the sum of the weight-gradient kernels' partials (nparts, B, K,
    R*S*C), whose banks are (K, R, S, C): summed in a fixed order (reduce_partials_kernel),
    then transposed on the way into dst."""
    nparts, rows, (C, R, S) = partial.shape[0], dst.shape[0], dst.shape[1:]
    summed = scratch("wgrad_sum", (rows, R * S * C), partial.dtype)
    reduce_partials_kernel(partial.reshape(nparts, -1), summed.reshape(-1), False)
    banks = summed.reshape(rows, R, S, C).transpose(0, 3, 1, 2)
    if accumulate:
        dst += banks
    else:
        dst[...] = banks


def _classwise_weight_grad(dy, x, g, tile, out, accumulate, k_base, direct):
    """The tiled conv's weight gradient as TP*TQ shared ones: tile class (a, b) is the shared
    conv over the output subgrid p = a + i*TP, q = b + j*TQ, i.e. stride (TP*sh, TQ*sw) over
    the input from row a*sh, column b*sw on, so each class runs the in-place kernel (vectors
    along a tap's S*C inputs: no gathered patches) on its own slice of dy, where the
    class-interleaved form must gather (deepface_l4 2x2: 6.1 -> 2.9 ms). Bank (a, b) of `out`
    (TP, TQ, K, C, R, S) is written or added into."""
    TP, TQ = tile
    sh, sw = g.stride
    banks = out.reshape(TP, TQ, g.K, g.C, g.R, g.S)
    kernel = _wgrad_direct_kernel(*direct)
    with _launch_lock:
        xh = _padded(x, g.pads(), "nhwc", "wgrad_x")
        Wp, C = xh.shape[2], g.C
        for a in range(TP):
            for b in range(TQ):
                dyc = np.ascontiguousarray(dy[:, k_base:k_base + g.K, a::TP, b::TQ])
                rows, nparts = _wgrad_split(g, 1, x.dtype.itemsize, dyc.shape[2:])
                partial = scratch("wgrad_partial", (nparts, 1, g.K, g.R * g.S * C), x.dtype)
                kernel(dyc, xh, partial, g.R, g.S, TP * sh, TQ * sw, g.dilation[0], rows, 0,
                       (a * sh * Wp + b * sw) * C)
                _sum_partials_into(partial, banks[a, b], accumulate)
    return out


def _deinterleaved(a, M, name):
    """(N, C, H, W) -> (N, C, H, M, ceil(W/M)) with [..., m, j] = a[..., m + j*M] (zero past
    the end): columns M apart become adjacent. M = 1 is a free reshape; otherwise the result
    is scratch `name` (call under _launch_lock)."""
    N, C, H, W = a.shape
    if M == 1:
        return a.reshape(N, C, H, 1, W)
    Wd = -(-W // M)
    out = scratch(name, (N, C, H, M, Wd), a.dtype)
    full, rest = divmod(W, M)
    # phase m holds columns m, m + M, ...: full + 1 of them for m < rest, else full
    for m in range(M):
        cnt = full + (1 if m < rest else 0)
        out[:, :, :, m, :cnt] = a[:, :, :, m::M]
        out[:, :, :, m, cnt:] = 0
    return out


# ------------------------------------------------------------------------------ input grad
@lru_cache(maxsize=None)
def _dgrad_kernel(MR, NV):
    @njit(**njit_options(parallel=True))
    def conv2d_dgrad_kernel(dyt, wt, dx, H, W, ph, pw, sh, sw, dh, dw, TP, TQ):
        """dyt: dy as (N, P, Q, K); wt: TP*TQ*R banks of (K, S*C); dx: (N, C, H, W) output.

        Gather form: one task owns input row (n, h) and sums, over the taps r whose output row
        p = (h + ph - r*dh) / sh is on the grid and each class tq of q % TQ,
        tmp = dyt[n, p, class] (nq x K) . wt[bank, r] (K x S*C): MR positions x NV vectors of
        (s, c), the filters reduced in registers; then scatters tmp[j, (s, c)] to column
        w = q*sw + s*dw - pw (q = tq + j*TQ) of its own row buffer. No two tasks write the
        same element. Shared conv: TP = TQ = 1.
        """
        N, P, Q, K = dyt.shape
        SC = wt.shape[1] // K
        R = wt.shape[0] // (TP * TQ)
        C = dx.shape[1]
        S = SC // C
        Wp = W + 2 * pw
        VC = NV * lanes_of(dx)
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
                tp = p % TP
                for tq in range(TQ):
                    nq = (Q - tq + TQ - 1) // TQ
                    bank = tp * TQ + tq
                    # rows q = tq + j*TQ of dyt[n, p]: offset tq*K, row stride TQ*K
                    for j0 in range(0, nq, MR):
                        for c0 in range(0, SC, VC):
                            outer_product(MR, NV, 1, 0, 0,
                                          dyf, ((n * P + p) * Q + tq + j0 * TQ) * K, TQ * K, 1,
                                          wf, (bank * R + r) * K * SC + c0, SC, K, 0,
                                          tmp, j0 * SC + c0, SC, 1, min(MR, nq - j0),
                                          min(VC, SC - c0), False, tmp, 0, False, 0)
                    for j in range(nq):
                        q = tq + j * TQ
                        if dw == 1:  # the S taps of one q are adjacent in the NHWC row buffer
                            _add(rowbuf[q * sw * C:q * sw * C + SC], tmp[j * SC:(j + 1) * SC])
                        else:
                            for s in range(S):
                                dst = (q * sw + s * dw) * C
                                _add(rowbuf[dst:dst + C],
                                     tmp[j * SC + s * C:j * SC + (s + 1) * C])
            for c in range(C):
                for w in range(W):
                    dx[n, c, h, w] = rowbuf[(w + pw) * C + c]

    return conv2d_dgrad_kernel


def conv2d_input_grad(dy, weight, g, grid, out_dtype=None):
    return _layer_input_grad(dy, weight[None, None], g, out_dtype)


def _layer_input_grad(dy, banks, g, out_dtype=None):
    """Input gradient of the tiled conv at g with banks (TP, TQ, K, C/G, R, S), any groups
    (in out_dtype or dy's dtype)."""
    dx = np.empty(g.x_shape, dtype=out_dtype or dy.dtype)
    if g.depthwise:
        depthwise.input_grad(dy, banks, g, dx)
        return dx
    if g.groups == 1:
        return _input_grad(dy, banks, g, dx)
    slices, one = _groups(g)
    for cs, ks in slices:      # each group writes its channels' planes of dx
        _input_grad(dy[:, ks], banks[:, :, ks], one, dx, cs.start)
    return dx


def _input_grad(dy, banks, g, dx=None, c_base=0):
    """Input gradient of the tiled conv with banks (TP, TQ, K, C, R, S) (shared: 1 x 1) at
    ungrouped g: into dx[:, c_base:c_base + C] (dx None: a new (N, C, H, W) array)."""
    TP, TQ, K, C, R, S = banks.shape
    if dx is None:
        dx = np.empty(g.x_shape, dtype=dy.dtype)
    if g.stride == (1, 1):
        # With stride 1 the input gradient is itself a convolution: dy padded by
        # dilation*(R-1) - padding, correlated with the flipped kernel with K and C swapped.
        # That reuses the forward kernel, whose reduction runs over K*R*S instead of K.
        # Tiled: input pixel (h, w) meets output p = h + ph - r*dh through tap r, whose bank
        # row is p % TP = (h % TP + ph - r*dh) % TP: so the flipped layer is tiled too, by
        # input class (h % TP, w % TQ), each class bank assembling tap by tap the banks it meets.
        (dh, dw), (ph, pw) = g.dilation, g.padding
        rr = np.arange(R)[::-1]   # flipped tap r' reads original tap r = R-1-r
        ss = np.arange(S)[::-1]
        rows = (np.arange(TP)[:, None] + ph - rr * dh) % TP  # (TP, R'): bank row of class a
        cols = (np.arange(TQ)[:, None] + pw - ss * dw) % TQ  # (TQ, S')
        # flipped[a, b, c, k, r', s'] = banks[rows[a, r'], cols[b, s'], k, c, R-1-r', S-1-s']
        flipped = banks.transpose(0, 1, 4, 5, 3, 2)[rows[:, None, :, None],
                                                    cols[None, :, None, :],
                                                    rr[None, None, :, None],
                                                    ss[None, None, None, :]]
        flipped = np.ascontiguousarray(flipped.transpose(0, 1, 4, 5, 2, 3))
        # dy padded on each side by the kernel's extent less x's padding on that side
        (th, bh), (tw, bw) = g.pads()
        eh, ew = dh * (R - 1), dw * (S - 1)
        _forward(dy, flipped, None, ((eh - th, eh - bh), (ew - tw, ew - bw)), (1, 1),
                 g.dilation, dx, c_base)
        return dx
    with _launch_lock:
        dyt = scratch("dgrad_dy", (g.N, g.P, g.Q, K), dy.dtype)
        dyt[...] = dy.transpose(0, 2, 3, 1)
        wt = scratch("dgrad_w", (TP, TQ, R, K, S, C), dy.dtype)
        wt[...] = banks.transpose(0, 1, 4, 2, 5, 3)
        kernel = _dgrad_kernel(*conv_tile(S * C, dy.dtype.itemsize))
        # a channel slice of dx is a strided view: the kernel indexes dx 4-D
        kernel(dyt, wt.reshape(TP * TQ * R, K * S * C), dx[:, c_base:c_base + C], g.H, g.W,
               *g.padding, *g.stride, *g.dilation, TP, TQ)
    return dx


# ------------------------------------------------------------------------------- bias grad
@njit(**njit_options(parallel=True))
def conv2d_bgrad_kernel(dy, out, accumulate, TP, TQ):
    """out[tp, tq, k] (+)= sum of dy[n, k, p, q] over n and the class p % TP = tp, q % TQ = tq.

    One task per k; each image's class sum is formed first, then added in image order. The
    shared conv (1 x 1) sums each image's P*Q plane as one unit-stride run, in a loop of its
    own (vectorised: 0.6 ms at alexnet_conv1; inside the class loops it stayed at 8 ms).
    """
    N, K, P, Q = dy.shape
    of = out.ravel()
    df = dy.ravel()
    PQ = P * Q
    sums = np.empty(K * TP * TQ, dtype=dy.dtype)
    if TP == 1 and TQ == 1:
        for k in prange(K):
            acc = typed_zero(dy)  # not dy[...] * 0: inf * 0 would seed the sum with NaN
            for n in range(N):
                base = (n * K + k) * PQ
                plane = df[base:base + PQ]
                s = typed_zero(dy)
                for i in range(PQ):
                    s += plane[i]
                acc += s
            sums[k] = acc
    else:
        for k in prange(K):
            for tp in range(TP):
                for tq in range(TQ):
                    acc = typed_zero(dy)
                    for n in range(N):
                        s = typed_zero(dy)
                        for p in range(tp, P, TP):
                            for q in range(tq, Q, TQ):
                                s += dy[n, k, p, q]
                        acc += s
                    sums[(tp * TQ + tq) * K + k] = acc
    for i in range(K * TP * TQ):
        if accumulate:
            of[i] += sums[i]
        else:
            of[i] = sums[i]


def conv2d_bias_grad(dy, g, grid, out=None):
    return _bias_grad(dy, (1, 1), (dy.shape[1],), out)


def _bias_grad(dy, tile, shape, out):
    """Bias gradient of the tiled conv (shared: 1 x 1 tile), shaped `shape`."""
    accumulate = out is not None
    if out is None:
        out = np.empty(shape, dtype=dy.dtype)
    with _launch_lock:
        conv2d_bgrad_kernel(dy, out, accumulate, *tile)
    return out
