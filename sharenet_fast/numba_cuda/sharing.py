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
"""
import functools

import numpy as np

from numba import cuda  # a module global: the simulator swaps it inside kernels

from .. import config
from .._gpu_kernels import row
from ._convert import converters
from ._launch import signature

TAGS = ("penalty", "penalty_reduce")


@functools.lru_cache(maxsize=None)
def kernels(dt, out, nt):
    """{"penalty", "penalty_reduce"} for one dtypes.DType row, gradient dtype `out` (O: the
    storage dtype, or float32 master gradients of 16-bit storage) and block size nt (a power
    of two)."""
    from numba import float64, int64

    if nt & (nt - 1):
        raise ValueError(f"penalty block size must be a power of two, got {nt}")
    widen, widen_out, narrow_out = converters(dt, out)
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

    return dict(penalty=soft_sharing_penalty_kernel, penalty_reduce=soft_sharing_reduce_kernel)


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
    return {tag: cuda.compile_ptx(ks[tag].py_func, sig, cc=cc)[0]
            for tag, sig in signatures(dt, out).items()}
