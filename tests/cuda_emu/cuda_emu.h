// Run CUDA C kernels on the CPU, for tests on machines without a GPU.
//
// Included before a kernels/*.cu source and compiled by g++ (-std=c++20). A launch runs its
// blocks one after another; a block's threads are fibers (ucontext) on the calling OS thread, each
// with its own stack, switched only at __syncthreads and warp shuffles. That costs a function
// call where OS threads (an earlier version) cost a kernel wake-up per thread per barrier, and
// the interleaving is reproducible: the threads of a block run in thread order up to a barrier,
// then in reverse order up to the next one, and so on, so a missing barrier shows as a wrong
// value whichever side of it reads first. A barrier not reached by every thread aborts.
// __shared__ arrays become function statics: one per kernel instance, shared by the threads of
// the block that runs (blocks never overlap). atomicAdd is std::atomic_ref::fetch_add.
// Kernel arguments arrive like cuLaunchKernel's: an array of pointers to each argument.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <ucontext.h>
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
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

// The fibers of the running block and the scheduler that resumes them.
struct EmuFiber {
    ucontext_t ctx;
    std::unique_ptr<char[]> stack;
    dim3 thread, block;
    bool done = false;
};
inline std::vector<EmuFiber> emu_fibers;
inline ucontext_t emu_scheduler;
inline unsigned emu_current = 0;
inline unsigned long emu_progress = 0;   // barrier arrivals: a pass without any is a deadlock

inline void emu_yield() {
    EmuFiber& f = emu_fibers[emu_current];
    f.block = blockIdx;                  // threadIdx is the fiber's own: never changed
    swapcontext(&f.ctx, &emu_scheduler);
}

// A barrier of `count` fibers: the last to arrive releases the others, which wait by yielding.
struct EmuBarrier {
    unsigned count, arrived = 0;
    unsigned long generation = 0;
    explicit EmuBarrier(unsigned n) : count(n) {}
    void arrive_and_wait() {
        ++emu_progress;
        const unsigned long mine = generation;
        if (++arrived == count) {
            arrived = 0;
            ++generation;
            return;
        }
        while (generation == mine) emu_yield();
    }
};
inline EmuBarrier* emu_barrier = nullptr;
inline std::vector<EmuBarrier> emu_warp_barriers;   // one per warp of the block

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
    EmuBarrier& bar = emu_warp_barriers[t / 32];
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

// One launch: a fiber per thread walks the grid block by block, the fibers meeting at a barrier
// after each block (so the next block may reuse the statics). The scheduler resumes the fibers
// that have not finished, in thread order on even passes and in reverse on odd ones.
constexpr std::size_t EMU_STACK = 256 * 1024;

template <class F>
struct EmuLaunch {
    F* body;
    unsigned gx, gy;
    static void entry(unsigned lo, unsigned hi) {
        auto* self = reinterpret_cast<EmuLaunch*>((std::uintptr_t(hi) << 32) | lo);
        for (unsigned by = 0; by < self->gy; ++by)
            for (unsigned bx = 0; bx < self->gx; ++bx) {
                blockIdx = dim3{bx, by, 0};
                (*self->body)();
                emu_barrier->arrive_and_wait();
            }
        emu_fibers[emu_current].done = true;
    }   // returns to uc_link: the scheduler
};

template <class F>
void emu_run(unsigned gx, unsigned gy, unsigned threads, F&& body) {
    gridDim = dim3{gx, gy, 1};
    blockDim = dim3{threads, 1, 1};
    EmuBarrier bar(threads);
    emu_barrier = &bar;
    emu_warp_barriers.clear();
    for (unsigned w0 = 0; w0 < threads; w0 += 32)
        emu_warp_barriers.emplace_back(std::min(32u, threads - w0));
    EmuLaunch<std::remove_reference_t<F>> launch{&body, gx, gy};
    const auto self = reinterpret_cast<std::uintptr_t>(&launch);
    emu_fibers = std::vector<EmuFiber>(threads);
    for (unsigned t = 0; t < threads; ++t) {
        EmuFiber& f = emu_fibers[t];
        f.thread = dim3{t, 0, 0};
        f.stack.reset(new char[EMU_STACK]);
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.get();
        f.ctx.uc_stack.ss_size = EMU_STACK;
        f.ctx.uc_link = &emu_scheduler;
        makecontext(&f.ctx, reinterpret_cast<void (*)()>(&decltype(launch)::entry), 2,
                    unsigned(self & 0xffffffffu), unsigned(self >> 32));
    }
    for (unsigned pass = 0, left = threads; left; ++pass) {
        const unsigned long before = emu_progress;
        left = 0;
        for (unsigned i = 0; i < threads; ++i) {
            const unsigned t = pass % 2 ? threads - 1 - i : i;
            EmuFiber& f = emu_fibers[t];
            if (f.done) continue;
            emu_current = t;
            threadIdx = f.thread;
            blockIdx = f.block;
            swapcontext(&emu_scheduler, &f.ctx);
            left += !f.done;
        }
        if (left && emu_progress == before) {
            std::fprintf(stderr, "cuda_emu: deadlock: a barrier not reached by every thread\n");
            std::abort();
        }
    }
    emu_fibers.clear();
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
