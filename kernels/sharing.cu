// Soft sharing: penalty = strength/2 * sum((a - b)^2), grad_a += strength*(a - b),
// grad_b -= strength*(a - b), in one pass (host side: sharenet_fast/_gpu_host.py
// soft_sharing_penalty; the same kernels in Numba: sharenet_fast/numba_cuda/sharing.py; template
// and arguments declared in sharenet_fast/_gpu_kernels.py). T: the storage type, A: the
// accumulation type the difference and the gradient step are computed in, O: the gradients'
// type (T, or A: float32 master gradients of bfloat16/half weights).
#include "common.cuh"

// Fold buf[0:NT] into buf[0], halves in a fixed order (deterministic). NT a power of two.
template <int NT>
__device__ __forceinline__ void block_tree(double* buf, int t) {
    __syncthreads();
#pragma unroll
    for (int half = NT / 2; half > 0; half /= 2) {
        if (t < half) buf[t] += buf[t + half];
        __syncthreads();
    }
}

// A fixed grid strides over the n elements in groups of E consecutive ones (E = 2 for 16-bit
// storage: a pair is one 32-bit load of a and of b, twice the bytes per load instruction;
// E = 1 for float and double): thread t of block k takes group k*NT + t, then steps by the
// whole grid, so consecutive threads touch consecutive groups (coalesced loads and
// read-modify-writes). Each thread sums d*d in double, in element order; the block's sum goes to
// partials[k]. grad_a / grad_b may be 1-element placeholders when has_a / has_b is 0 (never
// touched then).
template <typename T, typename A, typename O, int NT>
__global__ void __launch_bounds__(NT)
soft_sharing_penalty_kernel(const T* __restrict__ a, const T* __restrict__ b, A strength,
                            O* __restrict__ grad_a, O* __restrict__ grad_b, i64 has_a, i64 has_b,
                            i64 n, double* __restrict__ partials) {
    constexpr int E = sizeof(T) == 2 ? 2 : 1;
    __shared__ double buf[NT];
    const int t = threadIdx.x;
    const i64 step = (i64)gridDim.x * NT * E;
    // pairs are read as words where both arrays are 4-byte aligned (uniform: no divergence)
    const bool words = E == 2 && (reinterpret_cast<unsigned long long>(a) |
                                  reinterpret_cast<unsigned long long>(b)) % 4 == 0;
    double s = 0.0;
    for (i64 i0 = ((i64)blockIdx.x * NT + t) * E; i0 < n; i0 += step) {
        union { unsigned w; T v[2]; } av, bv;
        if (words && i0 + 1 < n) {
            av.w = __ldg(reinterpret_cast<const unsigned*>(a + i0));
            bv.w = __ldg(reinterpret_cast<const unsigned*>(b + i0));
        } else {
#pragma unroll
            for (int e = 0; e < E; ++e) {
                av.v[e] = i0 + e < n ? __ldg(&a[i0 + e]) : zero<T>();
                bv.v[e] = i0 + e < n ? __ldg(&b[i0 + e]) : zero<T>();
            }
        }
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const i64 i = i0 + e;
            if (i >= n) break;
            const A d = cvt<A>(av.v[e]) - cvt<A>(bv.v[e]);
            s += (double)d * (double)d;
            if (has_a) grad_a[i] = cvt<O>(cvt<A>(grad_a[i]) + strength * d);
            if (has_b) grad_b[i] = cvt<O>(cvt<A>(grad_b[i]) - strength * d);
        }
    }
    buf[t] = s;
    block_tree<NT>(buf, t);
    if (t == 0) partials[blockIdx.x] = buf[0];
}

// One block: the partials summed in a fixed order, times strength/2, into out[0].
template <int NT>
__global__ void __launch_bounds__(NT)
soft_sharing_reduce_kernel(const double* __restrict__ partials, i64 nparts, double scale,
                           double* __restrict__ out) {
    __shared__ double buf[NT];
    const int t = threadIdx.x;
    double s = 0.0;
    for (i64 i = t; i < nparts; i += NT) s += partials[i];
    buf[t] = s;
    block_tree<NT>(buf, t);
    if (t == 0) out[0] = scale * buf[0];
}
