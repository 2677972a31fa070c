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

// ------------------------------------------------------------------ neighbour soft sharing
// Banked weights (TP, TQ, KF): position (p, q)'s bank is KF = K*C*R*S contiguous values. Its
// neighbours lie one step along each direction of reference.NEIGHBOURHOODS (the first two for
// the 4-neighbourhood: right, down; the 8-neighbourhood adds both down-diagonals), on a torus
// if wrap. The same algorithms as sharenet_fast/numba_cuda/sharing.py.
#define SHARENET_COSINE_EPS 1e-8   // reference.COSINE_EPS (tests/test_cupy_backend.py checks it)
__device__ __forceinline__ void direction(int d, i64& dp, i64& dq) {
    dp = d == 0 ? 0 : 1;
    dq = d == 0 ? 1 : (d == 1 ? 0 : (d == 2 ? 1 : -1));
}

// The flat position (p + dp, q + dq), or -1 off the grid (wrap: a torus).
__device__ __forceinline__ i64 neighbour(i64 p, i64 q, i64 dp, i64 dq, i64 TP, i64 TQ,
                                         i64 wrap) {
    i64 p2 = p + dp, q2 = q + dq;
    if (wrap) {
        p2 = (p2 % TP + TP) % TP;
        q2 = (q2 % TQ + TQ) % TQ;
    } else if (p2 < 0 || p2 >= TP || q2 < 0 || q2 >= TQ) {
        return -1;
    }
    return p2 * TQ + q2;
}

// A grid-stride loop over the elements (consecutive threads: consecutive elements of a bank,
// coalesced); each thread reads its element and the same element of the banks around it, adds
// strength * sum of (w - neighbour) into grad (owner computes: no atomics) and sums the squared
// differences to its forward neighbours (each pair once) in double; the block's sum goes to
// partials (soft_sharing_reduce_kernel scales the total by strength/2).
template <typename T, typename A, typename O, int NT>
__global__ void __launch_bounds__(NT)
neighbour_l2_kernel(const T* __restrict__ w, O* __restrict__ grad, A strength, i64 TP, i64 TQ,
                    i64 KF, i64 eight, i64 wrap, i64 has_grad, double* __restrict__ partials) {
    __shared__ double buf[NT];
    const int t = threadIdx.x;
    const int nd = eight ? 4 : 2;
    const i64 n = TP * TQ * KF;
    double s = 0.0;
    for (i64 i = (i64)blockIdx.x * NT + t; i < n; i += (i64)gridDim.x * NT) {
        const i64 pos = i / KF, e = i - pos * KF, p = pos / TQ, q = pos - p * TQ;
        const A v = cvt<A>(__ldg(&w[i]));
        A g = A(0);
        for (int d = 0; d < nd; ++d) {
            i64 dp, dq;
            direction(d, dp, dq);
            const i64 f = neighbour(p, q, dp, dq, TP, TQ, wrap);
            if (f >= 0) {                       // the pair (this, forward neighbour)
                const A diff = v - cvt<A>(__ldg(&w[f * KF + e]));
                s += (double)diff * (double)diff;
                g += diff;
            }
            const i64 b = neighbour(p, q, -dp, -dq, TP, TQ, wrap);
            if (b >= 0) g += v - cvt<A>(__ldg(&w[b * KF + e]));   // the pair (b, this)
        }
        if (has_grad) grad[i] = cvt<O>(cvt<A>(grad[i]) + strength * g);
    }
    buf[t] = s;
    block_tree<NT>(buf, t);
    if (t == 0) partials[blockIdx.x] = buf[0];
}

// One block per filter (pos, k): norms[pos*K + k] = |w|, dots[(d*TP*TQ + pos)*K + k] = its dot
// product with forward neighbour d's filter k (left as given, 0, where there is none); sums in
// double, tree-folded in a fixed order.
template <typename T, typename A, int NT>
__global__ void __launch_bounds__(NT)
neighbour_dots_kernel(const T* __restrict__ w, double* __restrict__ norms,
                      double* __restrict__ dots, i64 TP, i64 TQ, i64 K, i64 F, i64 eight,
                      i64 wrap) {
    __shared__ double buf[5][NT];
    const int t = threadIdx.x;
    const i64 fil = blockIdx.x, pos = fil / K, k = fil - pos * K, p = pos / TQ, q = pos - p * TQ;
    const int nd = eight ? 4 : 2;
    const i64 base = fil * F;
    double acc = 0.0;
    for (i64 e = t; e < F; e += NT) {
        const double a = (double)cvt<A>(__ldg(&w[base + e]));
        acc += a * a;
    }
    buf[0][t] = acc;
    for (int d = 0; d < 4; ++d) {
        double dot = 0.0;
        i64 dp, dq;
        direction(d, dp, dq);
        const i64 f = d < nd ? neighbour(p, q, dp, dq, TP, TQ, wrap) : -1;
        if (f >= 0) {
            const i64 other = (f * K + k) * F;
            for (i64 e = t; e < F; e += NT)
                dot += (double)cvt<A>(__ldg(&w[base + e])) * (double)cvt<A>(__ldg(&w[other + e]));
        }
        buf[1 + d][t] = dot;
    }
    __syncthreads();
#pragma unroll
    for (int half = NT / 2; half > 0; half /= 2) {
        if (t < half)
            for (int j = 0; j < 5; ++j) buf[j][t] += buf[j][t + half];
        __syncthreads();
    }
    if (t == 0) {
        norms[fil] = sqrt(buf[0][0]);
        for (int d = 0; d < 4; ++d) dots[((i64)d * TP * TQ + pos) * K + k] = buf[1 + d][0];
    }
}

// (cos, 1/(na nb), cos/|x|^2 or 0 where |x| <= eps) of a pair with norms la, lb, for the
// gradient at its member of norm lx: d cos/dx = y/(na nb) - cos/|x|^2 x (reference.py).
__device__ __forceinline__ void cos_terms(double la, double lb, double dot, double lx,
                                          double& c, double& inv, double& cx) {
    const double eps = SHARENET_COSINE_EPS;
    const double na = fmax(la, eps), nb = fmax(lb, eps), nx = fmax(lx, eps);
    inv = 1.0 / (na * nb);
    c = dot * inv;
    cx = lx > eps ? c / (nx * nx) : 0.0;
}

// A grid-stride loop over the elements: each gradient element from the cosines of the pairs
// its filter is in (norms and dots from neighbour_dots_kernel), scaled by
// strength / (pairs * K); the filter's first element's thread adds its (1 - cos) terms to the
// block's partial.
template <typename T, typename A, typename O, int NT>
__global__ void __launch_bounds__(NT)
neighbour_cosine_kernel(const T* __restrict__ w, O* __restrict__ grad,
                        const double* __restrict__ norms, const double* __restrict__ dots,
                        double scale, i64 TP, i64 TQ, i64 K, i64 F, i64 eight, i64 wrap,
                        i64 has_grad, double* __restrict__ partials) {
    __shared__ double buf[NT];
    const int t = threadIdx.x;
    const int nd = eight ? 4 : 2;
    const i64 KF = K * F, n = TP * TQ * KF;
    double s = 0.0;
    for (i64 i = (i64)blockIdx.x * NT + t; i < n; i += (i64)gridDim.x * NT) {
        const i64 pos = i / KF, rem = i - pos * KF, k = rem / F, e = rem - k * F;
        const i64 p = pos / TQ, q = pos - p * TQ;
        const double la = norms[pos * K + k], a = (double)cvt<A>(__ldg(&w[i]));
        double g = 0.0, c, inv, cx;
        for (int d = 0; d < nd; ++d) {
            i64 dp, dq;
            direction(d, dp, dq);
            const i64 f = neighbour(p, q, dp, dq, TP, TQ, wrap);
            if (f >= 0) {                       // the pair (this, f)
                cos_terms(la, norms[f * K + k], dots[((i64)d * TP * TQ + pos) * K + k], la, c,
                          inv, cx);
                g -= (double)cvt<A>(__ldg(&w[(f * K + k) * F + e])) * inv - cx * a;
                if (e == 0) s += 1.0 - c;       // the filter's (1 - cos) once, by element 0
            }
            const i64 b = neighbour(p, q, -dp, -dq, TP, TQ, wrap);
            if (b >= 0) {                       // the pair (b, this)
                cos_terms(norms[b * K + k], la, dots[((i64)d * TP * TQ + b) * K + k], la, c,
                          inv, cx);
                g -= (double)cvt<A>(__ldg(&w[(b * K + k) * F + e])) * inv - cx * a;
            }
        }
        if (has_grad) grad[i] = cvt<O>(cvt<A>(grad[i]) + (A)(scale * g));
    }
    buf[t] = s;
    block_tree<NT>(buf, t);
    if (t == 0) partials[blockIdx.x] = buf[0];
}

// --------------------------------------------------------------------------- bank averaging
// A grid-stride loop over (block of gp x gq positions, element): the element's mean over the
// block in double, written to every position of the block. In place (out == w) is allowed: a
// thread reads every element it writes first, and no other thread touches them (so no
// __restrict__ here).
template <typename T, typename A>
__global__ void average_banks_kernel(const T* w, T* out, i64 TP, i64 TQ, i64 F, i64 gp,
                                     i64 gq) {
    const i64 nbq = (TQ + gq - 1) / gq, n = ((TP + gp - 1) / gp) * nbq * F;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n;
         i += (i64)gridDim.x * blockDim.x) {
        const i64 blk = i / F, e = i - blk * F;
        const i64 p0 = (blk / nbq) * gp, q0 = (blk % nbq) * gq;
        const i64 p1 = min(p0 + gp, TP), q1 = min(q0 + gq, TQ);
        double acc = 0.0;
        for (i64 p = p0; p < p1; ++p)
            for (i64 q = q0; q < q1; ++q) acc += (double)cvt<A>(w[(p * TQ + q) * F + e]);
        const A mean = (A)(acc / (double)((p1 - p0) * (q1 - q0)));
        for (i64 p = p0; p < p1; ++p)
            for (i64 q = q0; q < q1; ++q) out[(p * TQ + q) * F + e] = cvt<T>(mean);
    }
}
