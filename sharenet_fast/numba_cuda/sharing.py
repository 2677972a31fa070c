"""Numba CUDA kernels of the soft-sharing penalty (host side: _gpu_host.soft_sharing_penalty).

penalty_kernel: a fixed grid of blocks strides over the n elements (thread t of block k takes
k*NT + t, then steps by the whole grid: consecutive threads read consecutive elements, so every
load and the gradient read-modify-writes are coalesced); each thread keeps its sum of squares
in float64, the block folds them in a shared-memory tree (fixed order) into partials[k].
penalty_reduce_kernel: one block sums the partials in the same fixed order and scales by
strength/2. No atomics anywhere: the penalty has the same bits on every run.
"""
import functools

from numba import cuda  # a module global: the simulator swaps it inside kernels

from .. import config


@functools.lru_cache(maxsize=None)
def kernels(dtype, nt):
    """{"penalty", "penalty_reduce"} for one dtype and block size nt (a power of two). The dtype
    keys the cache only: the kernels are typed by their arguments at the first launch."""
    from numba import float64, int64

    if nt & (nt - 1):
        raise ValueError(f"penalty block size must be a power of two, got {nt}")

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
    def penalty_kernel(a, b, strength, grad_a, grad_b, has_a, has_b, n, partials):
        t = cuda.threadIdx.x
        step = int64(cuda.gridDim.x) * nt
        s = float64(0)
        for i in range(int64(cuda.blockIdx.x) * nt + t, n, step):
            d = a[i] - b[i]
            s += float64(d) * float64(d)
            if has_a:
                grad_a[i] += strength * d
            if has_b:
                grad_b[i] -= strength * d
        buf = cuda.shared.array(nt, float64)
        buf[t] = s
        tree(buf, t)
        if t == 0:
            partials[cuda.blockIdx.x] = buf[0]

    @cuda.jit(fastmath=False)
    def penalty_reduce_kernel(partials, nparts, scale, out):
        t = cuda.threadIdx.x
        s = float64(0)
        for i in range(t, nparts, nt):
            s += partials[i]
        buf = cuda.shared.array(nt, float64)
        buf[t] = s
        tree(buf, t)
        if t == 0:
            out[0] = scale * buf[0]

    return dict(penalty=penalty_kernel, penalty_reduce=penalty_reduce_kernel)


def signatures(dtype):
    """{kernel: argument types} as _gpu_host passes them, for PTX compilation without a GPU."""
    from numba import boolean, float32, float64, int64

    ft = {"float32": float32, "float64": float64}[dtype]
    arr = ft[::1]
    return {"penalty": (arr, arr, ft, arr, arr, boolean, boolean, int64, float64[::1]),
            "penalty_reduce": (float64[::1], int64, float64, float64[::1])}


def compile_ptx(dtype, cc=(9, 0)):
    """{kernel: PTX} of both kernels at the configured block size; needs NVVM, not a GPU."""
    ks = kernels(dtype, config.CUDA_PENALTY_THREADS)
    return {name: cuda.compile_ptx(ks[name].py_func, sig, cc=cc)[0]
            for name, sig in signatures(dtype).items()}
