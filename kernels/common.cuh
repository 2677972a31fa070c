// Shared by every kernel of the cupy backend (compiled at run time by NVRTC through CuPy).
//
// Index arithmetic is 64-bit throughout (i64): a local layer's weights at batch 64 take part in
// 6.7e9 input-patch products, and any tensor may pass 2**31 elements. Offsets come from off4.
#pragma once

typedef long long i64;

// Conversions between the storage type T, the accumulation type A and the output type O:
// plain casts for float and double; bfloat16 and half (compiled only with SHARENET_REDUCED, so
// the float32/float64 program needs no CUDA headers) widen exactly and narrow round-to-nearest-
// even, once, where a result is stored.
template <typename To, typename From>
__device__ __forceinline__ To cvt(From v) { return static_cast<To>(v); }

template <typename T>
__device__ __forceinline__ T zero() { return cvt<T>(0.0f); }

template <typename X, typename Y> struct same_type { static constexpr bool value = false; };
template <typename X> struct same_type<X, X> { static constexpr bool value = true; };

// 16-byte vector of T (4 floats, 2 doubles, 8 bfloat16 or half), read through the read-only
// cache and taken apart element by element (the union keeps it in registers).
template <typename T> struct Vec16;
template <> struct Vec16<float> { typedef float4 type; };
template <> struct Vec16<double> { typedef double2 type; };

#ifdef SHARENET_REDUCED
#ifndef SHARENET_EMU            // the g++ emulation defines the two types itself
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
template <> __device__ __forceinline__ float cvt<float, __nv_bfloat16>(__nv_bfloat16 v) {
    return __bfloat162float(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 cvt<__nv_bfloat16, float>(float v) {
    return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ float cvt<float, __half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ __half cvt<__half, float>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 zero<__nv_bfloat16>() {
    return __ushort_as_bfloat16(0);             // the bits: no conversion instruction
}
template <> __device__ __forceinline__ __half zero<__half>() { return __ushort_as_half(0); }
template <> struct Vec16<__nv_bfloat16> { typedef uint4 type; };
template <> struct Vec16<__half> { typedef uint4 type; };
#endif

template <typename T>
union Lanes16 {
    typename Vec16<T>::type v;
    T s[16 / sizeof(T)];
};

// Flat offset of [a, b, c, d] in a C-contiguous (., B, C, D) array.
__device__ __forceinline__ i64 off4(i64 a, i64 b, i64 c, i64 d, i64 B, i64 C, i64 D) {
    return ((a * B + b) * C + c) * D + d;
}

// How many of first, first + step, ... lie below size (0 if none).
__device__ __forceinline__ i64 class_extent(i64 size, i64 first, i64 step) {
    return first >= size ? 0 : (size - first + step - 1) / step;
}

// One BK step of a block's GEMM: thread (tm, tn) owns rows tm + i*MT and columns tn + j*NT of
// the block tile, so neighbouring threads read neighbouring shared words (no bank conflicts)
// and write neighbouring output columns (coalesced). As is the A tile stored transposed
// (BK x (BM + 1): the pad column spreads its column-wise stores over the banks). The tiles hold
// the storage type T; fragments and accumulators are in the accumulation type A.
template <typename T, typename A, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void tile_fma(const T (&As)[BK][BM + 1], const T (&Bs)[BK][BN],
                                         A (&acc)[TM][TN], int tm, int tn) {
    constexpr int MT = BM / TM, NT = BN / TN;
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
        A a[TM], b[TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) a[i] = cvt<A>(As[kk][tm + i * MT]);
#pragma unroll
        for (int j = 0; j < TN; ++j) b[j] = cvt<A>(Bs[kk][tn + j * NT]);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
}
