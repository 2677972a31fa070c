// Run CUDA C kernels on the CPU, for tests on machines without a GPU.
//
// Included before a kernels/*.cu source and compiled by g++ (-std=c++20 -pthread). A launch runs
// its blocks one after another; a block's threads are real OS threads (std::thread), so
// __syncthreads is a std::barrier and races between threads stay possible, as on a GPU.
// __shared__ arrays become function statics: one per kernel instance, shared by the threads of
// the block that runs (blocks never overlap). atomicAdd is std::atomic_ref::fetch_add.
// Kernel arguments arrive like cuLaunchKernel's: an array of pointers to each argument.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) double2 {
    double x, y;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

// The 16-bit storage types of cuda_bf16.h / cuda_fp16.h and their conversions, with the device's
// rounding: widening is exact; narrowing rounds to nearest even (bfloat16: carry into the upper
// half; NaN becomes CUDA's canonical 0x7fff; half: g++'s _Float16, IEEE round to nearest even).
#define SHARENET_EMU
#define SHARENET_REDUCED
struct __nv_bfloat16 {
    unsigned short x;
};
struct __half {
    unsigned short x;
};
inline float __bfloat162float(__nv_bfloat16 v) {
    const std::uint32_t u = std::uint32_t(v.x) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fff};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {static_cast<unsigned short>(u >> 16)};
}
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { return {x}; }
inline __half __ushort_as_half(unsigned short x) { return {x}; }
inline float __half2float(__half v) {
    _Float16 h;
    std::memcpy(&h, &v.x, 2);
    return static_cast<float>(h);
}
inline __half __float2half_rn(float f) {
    const _Float16 h = static_cast<_Float16>(f);
    __half r;
    std::memcpy(&r.x, &h, 2);
    return r;
}

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* emu_barrier = nullptr;
inline std::vector<std::barrier<>*> emu_warp_barriers;   // one per warp of the block

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static

inline void __syncthreads() { emu_barrier->arrive_and_wait(); }
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
// Warp shuffle: the warp's threads publish their value, meet at the warp's barrier, read their
// source lane (or keep their own past `width`), meet again. Only the calling warp takes part,
// as on a GPU, so a shuffle inside `if (warp == 0)` works.
template <class T>
inline T __shfl_down_sync(unsigned, T v, int delta, int width = 32) {
    static T slots[1024];
    const unsigned t = threadIdx.x;
    std::barrier<>& bar = *emu_warp_barriers[t / 32];
    slots[t] = v;
    bar.arrive_and_wait();
    const int lane = static_cast<int>(t % 32) % width;
    const T r = lane + delta < width ? slots[t + delta] : v;
    bar.arrive_and_wait();
    return r;
}

using std::fma;
using std::max;
using std::min;

// One launch: `threads` OS threads walk the grid block by block, in the same order, meeting at
// a barrier after each block (so the next block may reuse the statics).
template <class F>
void emu_run(unsigned gx, unsigned gy, unsigned threads, F&& body) {
    gridDim = dim3{gx, gy, 1};
    blockDim = dim3{threads, 1, 1};
    std::barrier<> bar(threads);
    emu_barrier = &bar;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    emu_warp_barriers.clear();
    for (unsigned w0 = 0; w0 < threads; w0 += 32) {
        warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - w0)));
        emu_warp_barriers.push_back(warps.back().get());
    }
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            threadIdx = dim3{t, 0, 0};
            for (unsigned by = 0; by < gy; ++by)
                for (unsigned bx = 0; bx < gx; ++bx) {
                    blockIdx = dim3{bx, by, 0};
                    body();
                    bar.arrive_and_wait();
                }
        });
    for (auto& th : pool) th.join();
    emu_barrier = nullptr;
}

template <class... A, std::size_t... I>
void emu_call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <class... A>
void emu_launch(void (*k)(A...), unsigned gx, unsigned gy, unsigned threads, void** args) {
    emu_run(gx, gy, threads, [&] { emu_call(k, args, std::index_sequence_for<A...>{}); });
}
