"""Host side of the GPU backends: launch geometry, tile choice, chunking and tap tables.

The numba-cuda and cupy backends run the same kernels (same names, arguments and semantics;
numba_cuda/ in Numba, kernels/*.cu in CUDA C; each kernel's arguments declared once in
_gpu_kernels.KERNELS), so everything decided on the host lives here once. A backend passes a
`dev` object that satisfies `Device` below; each launch's arguments are given by name and
packed into the declared order (_gpu_kernels.pack).
"""
import math
from typing import Protocol, runtime_checkable

import numpy as np

from . import config
from . import reference as ref
from ._gpu_kernels import pack, row, same

MAX_GRID_Y = 65535


@runtime_checkable
class Device(Protocol):
    """What the host side needs of a GPU backend (numba_cuda's and cupy_backend's DEV; the g++
    emulator's and the recording devices of the tests). `like` is an argument of the op: new
    arrays are of its kind (CuPy, Numba, NumPy) and launches order with its stream."""

    def empty(self, like, shape, dtype):
        """A new uninitialised array of `shape` and `dtype`."""

    def zeros(self, like, shape, dtype):
        """A new zero-filled array."""

    def to_device_like(self, like, a):
        """The NumPy array `a` (a small table) copied to the device."""

    def flat(self, a):
        """The 1-D view of a C-contiguous array (what every pointer argument is)."""

    def launch(self, tag, dt, tiles, grid, threads, like, args, ksize=None):
        """Run kernel `tag` (_gpu_kernels.KERNELS) for the dtypes.DType row `dt` on a grid of
        `grid` (gx or (gx, gy)) blocks of `threads` threads. `args` is the launch tuple,
        already in the declared order and types (_gpu_kernels.pack). tiles: the block tile
        (BM, BN, BK, TM, TN) of a tile-templated kernel, else None; ksize: (R, S) for the
        kernels a backend may specialise on the kernel size (fwd, wgrad), else None."""


def _launch(dev, tag, dt, tiles, grid, threads, like, ksize, /, **values):
    """dev.launch with the kernel's arguments given by name (declared once: _gpu_kernels)."""
    dev.launch(tag, dt, tiles, grid, threads, like, pack(tag, dt, values), ksize=ksize)


def check_grid(gx, gy):
    """(gx, gy) as a launch grid; ValueError if the layer is too large for one launch."""
    if gy > MAX_GRID_Y or gx >= 2**31:
        raise ValueError(f"layer too large for one launch: grid ({gx}, {gy}) exceeds the "
                         f"CUDA limits (2**31 - 1, {MAX_GRID_Y})")
    return (gx, gy)


def threads(tiles):
    """Threads of a block for a GEMM tile (BM, BN, BK, TM, TN)."""
    BM, BN, _, TM, TN = tiles
    return (BM // TM) * (BN // TN)


def _dims(g):
    """The kernels' geometry arguments (_gpu_kernels.DIMS), by name."""
    return dict(N=g.N, C=g.C, H=g.H, W=g.W, K=g.K, P=g.P, Q=g.Q, R=g.R, S=g.S, G=g.groups)


def _conv(g):
    """Stride, padding and dilation as the kernels take them (_gpu_kernels.CONV)."""
    (sh, sw), (ph, pw), (dh, dw) = g.stride, g.padding, g.dilation
    return dict(sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw)


def elementwise_grid(size):
    nt = config.CUDA_THREADS
    return min(-(-size // nt), 65535 * 16), nt


def class_extent(size, first, step):
    """How many of first, first + step, ... lie below `size` (0 if none)."""
    if first >= size:
        return 0
    return (size - first + step - 1) // step


def class_columns(N, P, Q, TP, TQ):
    """GEMM columns of the widest class (tp = tq = 0) when a P x Q grid is cut into TP x TQ
    classes: N * ceil(P/TP) * ceil(Q/TQ). Output classes for fwd, wgrad and bgrad; input
    classes (H, W by LH, LW) for dgrad."""
    return N * -(-P // TP) * -(-Q // TQ)


def pick_tiles(rows, cols):
    """The menu tile (config.CUDA_TILE_MENU) with the least padded work for a rows x cols
    output: ceil(rows/BM)*BM * ceil(cols/BN)*BN, weighted by 1 + 1/TM + 1/TN for the shared-
    memory loads per FMA of a thread's TM x TN fragment. Ties go to the earlier entry."""
    def cost(t):
        BM, BN, _, TM, TN = t
        return -(-rows // BM) * BM * -(-cols // BN) * BN * (1 + 1 / TM + 1 / TN)
    return tuple(min(config.CUDA_TILE_MENU, key=cost))


def forward(dev, x, w, bias, g, tile, out_dtype=None):
    """y (N, K, P, Q) of a layer whose weight is a (TP, TQ) grid of (K, C, R, S) banks, in
    x's dtype or `out_dtype` (the accumulation dtype of a reduced one)."""
    TP, TQ = tile
    dt = row(x.dtype)
    ncol = class_columns(g.N, g.P, g.Q, TP, TQ)
    tiles = pick_tiles(g.Kg, ncol)
    y = dev.empty(x, g.y_shape, out_dtype or x.dtype)
    BM, BN = tiles[:2]
    colblocks = -(-ncol // BN)
    # blocks of filters group by group: none spans two groups (groups = 1: ceil(K / BM))
    grid = check_grid(TP * TQ * colblocks, g.groups * -(-g.Kg // BM))
    has_bias = bias is not None
    _launch(dev, "fwd", dt, tiles, grid, threads(tiles), x, (g.R, g.S),
            x=dev.flat(x), w=dev.flat(w), bias=dev.flat(bias) if has_bias else dev.flat(w)[:1],
            y=dev.flat(y), **_dims(g), TP=TP, TQ=TQ, **_conv(g), colblocks=colblocks,
            has_bias=has_bias)
    return y


def weight_grad(dev, dy, x, g, tile, shape, out=None, deterministic=False, out_dtype=None):
    """The weight gradient (TP*TQ banks of (K, C, R, S)) as `shape`, added into `out` (that
    shape, C-contiguous) when given, which is returned; a new one in x's dtype or `out_dtype`
    otherwise. A reduced-storage result is rounded once: blocks that own their weights add
    into it, atomics go to a float32 sum that is then added in (wgrad_reduce, one chunk)."""
    TP, TQ = tile
    dt = row(x.dtype)
    tiles = pick_tiles(g.Kg, g.Cg * g.R * g.S)
    w_shape = tuple(tile) + g.w_shape
    if out is None:
        out = dev.zeros(x, shape, out_dtype or x.dtype)
    BM, BN, BK = tiles[:3]
    ncol = class_columns(g.N, g.P, g.Q, TP, TQ)              # positions of the widest class
    nchunks = min(-(-ncol // config.CUDA_WGRAD_CHUNK), config.CUDA_WGRAD_MAX_CHUNKS)
    size = math.prod(w_shape)
    itemsize = dt.accum.itemsize
    if deterministic and nchunks > 1:
        nchunks = max(1, min(nchunks, config.CUDA_WGRAD_MAX_WORKSPACE // (size * itemsize)))
    chunk = -(-ncol // nchunks)
    chunk = -(-chunk // BK) * BK                              # whole BK steps
    nchunks = -(-ncol // chunk)
    if nchunks == 1:
        mode = 0                                 # the block owns its weights: plain add
    elif not deterministic:
        mode = 1                                 # one atomic add per weight per block
    else:
        mode = 2                                 # partials (accumulation dtype), summed in order
    staged = mode == 1 and not same(out.dtype, dt.accum, dt)
    # atomics sum in A, then the sum is added into a reduced result (rounded once, below)
    target = dev.zeros(x, (size,), dt.accum) if staged else dev.flat(out)
    if mode == 2:
        ws = dev.empty(x, (nchunks * size,), dt.accum)
    elif same(target.dtype, dt.accum, dt):
        ws = target[:1]                          # a placeholder, never touched
    else:
        ws = dev.empty(x, (1,), dt.accum)
    redblocks = -(-g.Cg * g.R * g.S // BN)
    grid = check_grid(TP * TQ * nchunks, g.groups * -(-g.Kg // BM) * redblocks)
    _launch(dev, "wgrad", dt, tiles, grid, threads(tiles), x, (g.R, g.S),
            dy=dev.flat(dy), x=dev.flat(x), out=target, ws=ws, **_dims(g), TP=TP, TQ=TQ,
            **_conv(g), nchunks=nchunks, chunk=chunk, redblocks=redblocks, mode=mode)
    if mode == 2 or staged:
        parts, n = (ws, nchunks) if mode == 2 else (target, 1)
        _launch(dev, "wgrad_reduce", dt, None, *elementwise_grid(size), x, None,
                ws=parts, out=dev.flat(out), nchunks=n, size=size)
    return out


def _tap_table(size, L, pad, stride, dil, taps, T, out_size):
    """Per input class alpha (< min(L, size)): the taps r that reach it, with their output
    index at class row 0 (p0 = (alpha + pad - r*dil) / stride) and bank row p0 % T. Taps
    whose outputs all fall outside [0, out_size) for this class are dropped."""
    ncls = min(L, size)
    table = np.zeros((ncls, taps, 3), dtype=np.int64)
    count = np.zeros(ncls, dtype=np.int64)
    for alpha in range(ncls):
        rows = class_extent(size, alpha, L)
        for r in range(taps):
            num = alpha + pad - r * dil
            if num % stride:
                continue
            p0 = num // stride
            if not any(0 <= p0 + hi * T < out_size for hi in range(rows)):
                continue
            table[alpha, count[alpha]] = (r, p0, p0 % T)
            count[alpha] += 1
    return table, count


def input_grad(dev, dy, w, g, tile, out_dtype=None):
    """dx (N, C, H, W) by input class (see conv2d_dgrad_kernel); every element is written, in
    dy's dtype or `out_dtype`."""
    TP, TQ = tile
    sh, sw = g.stride
    LH, LW = sh * TP, sw * TQ
    rtab, rcnt = _tap_table(g.H, LH, g.padding[0], sh, g.dilation[0], g.R, TP, g.P)
    stab, scnt = _tap_table(g.W, LW, g.padding[1], sw, g.dilation[1], g.S, TQ, g.Q)
    rtab, stab, rcnt, scnt = (dev.flat(dev.to_device_like(dy, a))
                              for a in (rtab, stab, rcnt, scnt))
    dx = dev.empty(dy, g.x_shape, out_dtype or dy.dtype)
    nch, ncw = len(rcnt), len(scnt)
    ncol = class_columns(g.N, g.H, g.W, LH, LW)                # widest input class
    tiles = pick_tiles(g.Cg, ncol)
    BM, BN = tiles[:2]
    colblocks = -(-ncol // BN)
    grid = check_grid(nch * ncw * colblocks, g.groups * -(-g.Cg // BM))
    _launch(dev, "dgrad", row(dy.dtype), tiles, grid, threads(tiles), dy, None,
            dy=dev.flat(dy), w=dev.flat(w), dx=dev.flat(dx), rtab=rtab, stab=stab, rcnt=rcnt,
            scnt=scnt, **_dims(g), TP=TP, TQ=TQ, LH=LH, LW=LW, ncw=ncw, colblocks=colblocks)
    return dx


def bias_grad(dev, dy, tile, shape, out=None, out_dtype=None):
    """The bias gradient (TP*TQ banks of K) as `shape`, added into `out` when given (a new one
    in dy's dtype or `out_dtype` otherwise). Always deterministic; one block per weight, so
    a reduced result is rounded once."""
    TP, TQ = tile
    N, K, P, Q = dy.shape
    if out is None:
        out = dev.zeros(dy, shape, out_dtype or dy.dtype)
    ncol = class_columns(N, P, Q, TP, TQ)
    nthreads = min(config.CUDA_BIAS_THREADS, 1 << max(0, (ncol - 1).bit_length()))
    grid = check_grid(TP * TQ * K, 1)
    _launch(dev, "bgrad", row(dy.dtype), None, grid, nthreads, dy, None,
            dy=dev.flat(dy), out=dev.flat(out), N=N, K=K, P=P, Q=Q, TP=TP, TQ=TQ)
    return out


def soft_sharing_penalty(dev, a, b, strength, grad_a=None, grad_b=None):
    """strength/2 * sum((a - b)**2) as a 1-element float64 device array; strength * (a - b) added
    into grad_a, subtracted from grad_b (flat, C-contiguous, a's dtype or, for reduced a, its
    accumulation dtype: master gradients; None: not wanted).

    One fused pass (penalty kernel: a fixed grid of blocks strides over the elements, each
    block's float64 sum of squares into its partial), then one block sums the partials in
    order (penalty_reduce): bitwise the same on every run."""
    n = a.size
    dt = row(a.dtype)
    nt = config.CUDA_PENALTY_THREADS
    blocks = max(1, min(-(-n // nt), config.CUDA_PENALTY_BLOCKS))
    partials = dev.empty(a, (blocks,), np.float64)
    out = dev.empty(a, (1,), np.float64)
    grads = {"grad_a": grad_a, "grad_b": grad_b}
    staged = {}
    if grad_a is not None and grad_b is not None and not same(grad_a.dtype, grad_b.dtype, dt):
        # one kernel has one result type: a float32 master gradient beside a reduced one, so
        # the reduced one gets a float32 step added in afterwards (rounded once)
        for k, grad in grads.items():
            if not same(grad.dtype, dt.accum, dt):
                staged[k], grads[k] = grad, dev.zeros(a, (n,), dt.accum)
    given = [grad for grad in grads.values() if grad is not None]
    none = dev.empty(a, (1,), given[0].dtype if given else a.dtype)   # a gradient not wanted
    _launch(dev, "penalty", dt, None, check_grid(blocks, 1), nt, a, None,
            a=a, b=b, strength=strength, **{k: none if v is None else v for k, v in grads.items()},
            has_a=grad_a is not None, has_b=grad_b is not None, n=n, partials=partials)
    _launch(dev, "penalty_reduce", dt, None, 1, nt, a, None,
            partials=partials, nparts=blocks, scale=0.5 * float(strength), out=out)
    for k, grad in staged.items():
        _launch(dev, "wgrad_reduce", dt, None, *elementwise_grid(n), a, None,
                ws=grads[k], out=grad, nchunks=1, size=n)
    return out


def neighbour_penalty(dev, weight, strength, metric, neighbourhood, wrap, grad_weight=None):
    """The neighbour penalty of a C-contiguous banked weight (TP, TQ, K, C, R, S) as a
    1-element float64 device array; its gradient added into grad_weight (weight's dtype, or
    float32 master gradients of 16-bit banks; None: not wanted). Deterministic: owner-computes
    gradients, fixed-order block partials (numba_cuda/sharing.py says how)."""
    TP, TQ, K = weight.shape[:3]
    F = math.prod(weight.shape[3:])
    dt = row(weight.dtype)
    nt = config.CUDA_PENALTY_THREADS
    n = weight.size
    blocks = max(1, min(-(-n // nt), config.CUDA_PENALTY_BLOCKS))
    partials = dev.empty(weight, (blocks,), np.float64)
    out = dev.empty(weight, (1,), np.float64)
    has = grad_weight is not None
    grad = dev.flat(grad_weight) if has else dev.empty(weight, (1,), weight.dtype)
    w = dev.flat(weight)
    eight = neighbourhood == 8
    pairs = ref.neighbour_count((TP, TQ), neighbourhood, wrap)
    if metric == "l2":
        _launch(dev, "neighbour_l2", dt, None, check_grid(blocks, 1), nt, weight, None,
                w=w, grad=grad, strength=strength, TP=TP, TQ=TQ, KF=K * F, eight=eight,
                wrap=wrap, has_grad=has, partials=partials)
        scale = 0.5 * float(strength)
    else:
        norms = dev.empty(weight, (TP * TQ * K,), np.float64)
        dots = dev.zeros(weight, (4 * TP * TQ * K,), np.float64)
        _launch(dev, "neighbour_dots", dt, None, check_grid(TP * TQ * K, 1), nt, weight, None,
                w=w, norms=norms, dots=dots, TP=TP, TQ=TQ, K=K, F=F, eight=eight, wrap=wrap)
        scale = float(strength) / (pairs * K) if pairs else 0.0
        _launch(dev, "neighbour_cosine", dt, None, check_grid(blocks, 1), nt, weight, None,
                w=w, grad=grad, norms=norms, dots=dots, scale=scale, TP=TP, TQ=TQ, K=K, F=F,
                eight=eight, wrap=wrap, has_grad=has, partials=partials)
    _launch(dev, "penalty_reduce", dt, None, 1, nt, weight, None,
            partials=partials, nparts=blocks, scale=scale, out=out)
    return out


def average_banks(dev, weight, groups_of, out):
    """Each gp x gq block of positions of C-contiguous banks (TP, TQ, ...) set to its mean, in
    `out` (may be weight itself); returns out."""
    TP, TQ = weight.shape[:2]
    F = math.prod(weight.shape[2:])
    gp, gq = groups_of
    size = -(-TP // gp) * -(-TQ // gq) * F
    _launch(dev, "average", row(weight.dtype), None, *elementwise_grid(size), weight, None,
            w=dev.flat(weight), out=dev.flat(out), TP=TP, TQ=TQ, F=F, gp=gp, gq=gq)
    return out


# ----------------------------------------------------- the registry interface, for every layer
def layer_ops(dev, spec):
    """The host functions of one op-table layer on `dev` (optable.py's signatures), as
    (forward, input_grad, weight_grad, bias_grad): every layer is the same banked kernels with
    its grid (shared 1 x 1, tiled (TP, TQ), local (P, Q)). A locally connected layer has one
    position per tile class, so each forward block streams its bank once for the whole batch
    (N <= BN) and each weight-gradient block owns its weights (one chunk per class: no atomics)."""
    def fwd(x, weight, bias, g, grid, out_dtype=None):
        return forward(dev, x, weight, bias, g, grid, out_dtype)

    def dgrad(dy, weight, g, grid, out_dtype=None):
        return input_grad(dev, dy, weight, g, grid, out_dtype)

    def wgrad(dy, x, g, grid, out=None, deterministic=False, out_dtype=None):
        return weight_grad(dev, dy, x, g, grid, spec.weight_shape(g, grid), out, deterministic,
                           out_dtype)

    def bgrad(dy, g, grid, out=None, out_dtype=None):
        return bias_grad(dev, dy, grid, spec.bias_shape(g, grid), out, out_dtype)

    fns = (fwd, dgrad, wgrad, bgrad)
    for fn, pass_ in zip(fns, ("forward", "input", "weight", "bias")):
        fn.__name__ = fn.__qualname__ = spec.export(pass_)
    return fns


def penalty_op(dev):
    def soft_sharing_penalty_(a, b, strength, grad_a=None, grad_b=None):
        return soft_sharing_penalty(dev, a, b, strength, grad_a, grad_b)
    soft_sharing_penalty_.__name__ = "soft_sharing_penalty"
    return soft_sharing_penalty_


def bank_ops(dev):
    """(neighbour_penalty, average_banks) with the op table's signatures (optable.NEIGHBOUR,
    optable.AVERAGE) on `dev`."""
    def neighbour_penalty_(weight, strength, metric, neighbourhood, wrap, grad_weight=None):
        return neighbour_penalty(dev, weight, strength, metric, neighbourhood, wrap,
                                 grad_weight)

    def average_banks_(weight, groups_of, out):
        return average_banks(dev, weight, groups_of, out)
    neighbour_penalty_.__name__ = "neighbour_penalty"
    average_banks_.__name__ = "average_banks"
    return neighbour_penalty_, average_banks_
