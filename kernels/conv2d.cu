// Banked implicit-GEMM kernels for every layer of the cupy backend: shared (1 x 1 tile), tiled
// (TP x TQ) and locally connected (P x Q). Output (p, q) uses bank (p % TP) * TQ + q % TQ, and
// a block always works inside one tile class, so within a block the weights are one matrix:
//
//   forward      y[n, k, (p, q)]  = W[bank][k, (c, r, s)] . X[(c, r, s), (n, p, q)]
//   weight grad  dW[bank][k, crs] = dY[k, (n, p, q)] . X[(n, p, q), crs]    over the class
//   input grad   dx[n, c, (h, w)] = W^T[c, (k, r, s)] . dY[(k, r, s), (n, h, w)]  by input class
//
// Same algorithms, names and argument order as the Numba kernels (numba_cuda/conv2d.py); the
// host side (grid, tile choice, chunking, tap tables) is sharenet_fast/_gpu_host.py, shared by
// both backends. Every kernel's template and arguments are declared once, in
// sharenet_fast/_gpu_kernels.py (a test parses the prototypes below against it). Template
// parameters: T, the storage type (what inputs and shared-memory tiles hold), A, the
// accumulation type (accumulators, the weight-gradient partials; A = T for float and double), O,
// the type of the result written or added into (T, or A for a bfloat16/half layer asked for a
// float32 result or adding into float32 master gradients: rounded once, where it is stored),
// the block tile BM x BN (TM x TN per thread, reduction staged BK at a time) and, for the forward
// and weight-gradient kernels, the kernel size KR x KS when it is one of the common ones (0 =
// read R, S at run time): the (c, r, s) decode of every staged element then divides by
// constants (a multiply and a shift) instead of run-time 64-bit divisions. Instances are
// requested by name_expressions (cupy_backend/_loader).
#include "common.cuh"

#define THREADS ((BM / TM) * (BN / TN))

template <typename T, typename A, typename O, int BM, int BN, int BK, int TM, int TN, int KR,
          int KS>
__global__ void __launch_bounds__(THREADS)
conv2d_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                  O* __restrict__ y, i64 N, i64 C, i64 H, i64 W, i64 K, i64 P, i64 Q, i64 R,
                  i64 S, i64 G, i64 TP, i64 TQ, i64 sh, i64 sw, i64 ph, i64 pw, i64 dh, i64 dw,
                  i64 colblocks, i64 has_bias) {
    // grid: x = tile class * column block, y = group * block of BM of its filters k (a block
    // never spans two groups: its filters share one slice of C / G input channels)
    constexpr int NT = BN / TN, MT = BM / TM, NTH = THREADS;
    constexpr int LA = (BM * BK + NTH - 1) / NTH, LB = (BK * BN + NTH - 1) / NTH;
    const i64 Rk = KR ? KR : R, Sk = KS ? KS : S;   // compile-time when specialised
    __shared__ T As[BK][BM + 1];
    __shared__ T Bs[BK][BN];
    const int t = threadIdx.x, tm = t / NT, tn = t % NT;
    const i64 cls = blockIdx.x / colblocks;
    const i64 j0 = (blockIdx.x % colblocks) * (i64)BN;
    const i64 Kg = K / G, kbg = (Kg + BM - 1) / BM, grp = (i64)blockIdx.y / kbg;
    const i64 k0 = grp * Kg + ((i64)blockIdx.y - grp * kbg) * BM, kend = (grp + 1) * Kg;
    const i64 cb = grp * (C / G);           // the group's first input channel
    const i64 tp = cls / TQ, tq = cls % TQ;
    const i64 Pc = class_extent(P, tp, TP), Qc = class_extent(Q, tq, TQ);
    const i64 ncol = N * Pc * Qc;           // columns of this class: (n, i, j), p = tp + i*TP
    if (j0 >= ncol) return;                 // a narrower class: the whole block has no work
    const i64 RS = Rk * Sk, CRS = (C / G) * RS;
    A acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = A(0);
    // the columns this thread gathers never change: decode them once
    i64 bn[LB], bh[LB], bw[LB];
#pragma unroll
    for (int u = 0; u < LB; ++u) {
        const i64 col = j0 + (t + u * NTH) % BN;
        bn[u] = -1;
        bh[u] = bw[u] = 0;
        if (col < ncol) {
            const i64 n = col / (Pc * Qc), rem = col - n * (Pc * Qc), i = rem / Qc;
            bn[u] = n;
            bh[u] = (tp + i * TP) * sh - ph;
            bw[u] = (tq + (rem - i * Qc) * TQ) * sw - pw;
        }
    }
    const i64 wbase = cls * K;
    // W rows are read 16 bytes at a time when every row start is 16-byte aligned (C*R*S a
    // multiple of the vector, the array aligned): the weight stream of a local layer is what
    // bounds it at small batch. Uniform over the launch, so no divergence.
    constexpr int V = 16 / sizeof(T);
    const bool wvec = CRS % V == 0 && reinterpret_cast<unsigned long long>(w) % 16 == 0;
    for (i64 red0 = 0; red0 < CRS; red0 += BK) {
        if (wvec) {
            constexpr int NV = BM * BK / V, LV = (NV + NTH - 1) / NTH;
#pragma unroll
            for (int u = 0; u < LV; ++u) {
                const int e = t + u * NTH;
                if (e < NV) {
                    const int m = e / (BK / V), kk = (e % (BK / V)) * V;
                    Lanes16<T> l;
                    if (k0 + m < kend && red0 + kk < CRS)   // then all V lanes are < CRS
                        l.v = __ldg(reinterpret_cast<const typename Vec16<T>::type*>(
                            &w[(wbase + k0 + m) * CRS + red0 + kk]));
                    else
#pragma unroll
                        for (int i = 0; i < V; ++i) l.s[i] = zero<T>();
#pragma unroll
                    for (int i = 0; i < V; ++i) As[kk + i][m] = l.s[i];
                }
            }
        } else {
#pragma unroll
            for (int u = 0; u < LA; ++u) {
                const int e = t + u * NTH;
                if (e < BM * BK) {
                    const int m = e / BK, kk = e % BK;   // reduction fastest: coalesced W rows
                    T v = zero<T>();
                    if (k0 + m < kend && red0 + kk < CRS)
                        v = __ldg(&w[(wbase + k0 + m) * CRS + red0 + kk]);
                    As[kk][m] = v;
                }
            }
        }
#pragma unroll
        for (int u = 0; u < LB; ++u) {
            const int e = t + u * NTH;
            if (e < BK * BN) {
                const int kk = e / BN;               // column fastest: neighbouring q
                const i64 red = red0 + kk;
                T v = zero<T>();
                if (red < CRS && bn[u] >= 0) {
                    const i64 c = red / RS, rs = red - c * RS, r = rs / Sk;
                    const i64 h = bh[u] + r * dh, ww = bw[u] + (rs - r * Sk) * dw;
                    if (h >= 0 && h < H && ww >= 0 && ww < W)
                        v = __ldg(&x[off4(bn[u], cb + c, h, ww, C, H, W)]);
                }
                Bs[kk][e % BN] = v;
            }
        }
        __syncthreads();
        tile_fma<T, A, BM, BN, BK, TM, TN>(As, Bs, acc, tm, tn);
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const i64 col = j0 + tn + j * NT;
        if (col >= ncol) continue;
        const i64 n = col / (Pc * Qc), rem = col - n * (Pc * Qc), i = rem / Qc;
        const i64 p = tp + i * TP, q = tq + (rem - i * Qc) * TQ;
#pragma unroll
        for (int ii = 0; ii < TM; ++ii) {
            const i64 k = k0 + tm + ii * MT;
            if (k < kend)
                y[off4(n, k, p, q, K, P, Q)] =
                    cvt<O>(acc[ii][j] + (has_bias ? cvt<A>(__ldg(&bias[wbase + k])) : A(0)));
        }
    }
}

template <typename T, typename A, typename O, int BM, int BN, int BK, int TM, int TN, int KR,
          int KS>
__global__ void __launch_bounds__(THREADS)
conv2d_wgrad_kernel(const T* __restrict__ dy, const T* __restrict__ x, O* __restrict__ out,
                    A* __restrict__ ws, i64 N, i64 C, i64 H, i64 W, i64 K, i64 P, i64 Q, i64 R,
                    i64 S, i64 G, i64 TP, i64 TQ, i64 sh, i64 sw, i64 ph, i64 pw, i64 dh, i64 dw,
                    i64 nchunks, i64 chunk, i64 redblocks, i64 mode) {
    // grid: x = tile class * chunk of its positions, y = filter block * (c, r, s) block. The
    // block reduces its chunk in registers, then mode 0: adds into out (one chunk per class:
    // it owns those weights), 1: one atomicAdd per weight (the host launches it only with
    // O = A: a bfloat16/half sum is never rounded more than once), 2: its partial into ws
    // (summed in chunk order by conv2d_wgrad_reduce_kernel: deterministic).
    constexpr int NT = BN / TN, MT = BM / TM, NTH = THREADS;
    constexpr int LA = (BM * BK + NTH - 1) / NTH, LB = (BK * BN + NTH - 1) / NTH;
    const i64 Rk = KR ? KR : R, Sk = KS ? KS : S;   // compile-time when specialised
    __shared__ T As[BK][BM + 1];
    __shared__ T Bs[BK][BN];
    const int t = threadIdx.x, tm = t / NT, tn = t % NT;
    const i64 cls = blockIdx.x / nchunks, ch = blockIdx.x % nchunks;
    // y's filter blocks run group by group (grp, then BM of its K / G filters), as forward's
    const i64 Kg = K / G, kbg = (Kg + BM - 1) / BM;
    const i64 kb = blockIdx.y / redblocks, grp = kb / kbg;
    const i64 k0 = grp * Kg + (kb - grp * kbg) * (i64)BM, kend = (grp + 1) * Kg;
    const i64 cb = grp * (C / G);
    const i64 c0 = (blockIdx.y % redblocks) * (i64)BN;
    const i64 tp = cls / TQ, tq = cls % TQ;
    const i64 Pc = class_extent(P, tp, TP), Qc = class_extent(Q, tq, TQ);
    const i64 ncol = N * Pc * Qc;
    const i64 start = ch * chunk, stop = min(start + chunk, ncol);
    const i64 RS = Rk * Sk, CRS = (C / G) * RS;
    A acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = A(0);
    i64 bc[LB], br[LB], bs[LB];     // the (c, r, s) columns this thread gathers: decode once
#pragma unroll
    for (int u = 0; u < LB; ++u) {
        const i64 red = c0 + (t + u * NTH) % BN;
        bc[u] = -1;
        br[u] = bs[u] = 0;
        if (red < CRS) {
            const i64 c = red / RS, rs = red - c * RS, r = rs / Sk;
            bc[u] = c;
            br[u] = r * dh - ph;
            bs[u] = (rs - r * Sk) * dw - pw;
        }
    }
    for (i64 pos0 = start; pos0 < stop; pos0 += BK) {
#pragma unroll
        for (int u = 0; u < LA; ++u) {
            const int e = t + u * NTH;
            if (e < BM * BK) {
                const int m = e / BK, kk = e % BK;   // position fastest: neighbouring q of dy
                const i64 pos = pos0 + kk;
                T v = zero<T>();
                if (k0 + m < kend && pos < stop) {
                    const i64 n = pos / (Pc * Qc), rem = pos - n * (Pc * Qc), i = rem / Qc;
                    v = __ldg(&dy[off4(n, k0 + m, tp + i * TP, tq + (rem - i * Qc) * TQ, K, P, Q)]);
                }
                As[kk][m] = v;
            }
        }
#pragma unroll
        for (int u = 0; u < LB; ++u) {
            const int e = t + u * NTH;
            if (e < BK * BN) {
                const int kk = e / BN;               // (c, r, s) fastest: neighbouring s of x
                const i64 pos = pos0 + kk;
                T v = zero<T>();
                if (pos < stop && bc[u] >= 0) {
                    const i64 n = pos / (Pc * Qc), rem = pos - n * (Pc * Qc), i = rem / Qc;
                    const i64 h = (tp + i * TP) * sh + br[u];
                    const i64 ww = (tq + (rem - i * Qc) * TQ) * sw + bs[u];
                    if (h >= 0 && h < H && ww >= 0 && ww < W)
                        v = __ldg(&x[off4(n, cb + bc[u], h, ww, C, H, W)]);
                }
                Bs[kk][e % BN] = v;
            }
        }
        __syncthreads();
        tile_fma<T, A, BM, BN, BK, TM, TN>(As, Bs, acc, tm, tn);
        __syncthreads();
    }
    const i64 bank = cls * K;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const i64 k = k0 + tm + i * MT;
        if (k >= kend) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const i64 red = c0 + tn + j * NT;
            if (red >= CRS) continue;
            const i64 o = (bank + k) * CRS + red;
            if (mode == 0) {
                out[o] = cvt<O>(cvt<A>(out[o]) + acc[i][j]);
            } else if (mode == 1) {
                if constexpr (same_type<O, A>::value) atomicAdd(&out[o], acc[i][j]);
            } else {
                ws[ch * (TP * TQ * K * CRS) + o] = acc[i][j];
            }
        }
    }
}

template <typename T, typename A, typename O, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__(THREADS)
conv2d_dgrad_kernel(const T* __restrict__ dy, const T* __restrict__ w, O* __restrict__ dx,
                    const i64* __restrict__ rtab, const i64* __restrict__ stab,
                    const i64* __restrict__ rcnt, const i64* __restrict__ scnt, i64 N, i64 C,
                    i64 H, i64 W, i64 K, i64 P, i64 Q, i64 R, i64 S, i64 G, i64 TP, i64 TQ,
                    i64 LH, i64 LW, i64 ncw, i64 colblocks) {
    // Input classes h % LH, w % LW (LH = sh*TP): inside one, every pixel sees the same valid
    // taps through the same bank row, so the pass is a GEMM over those taps only (a gather:
    // each dx element written once). rtab[alpha][i] = (r, p at class row 0, that p % TP),
    // laid out (min(LH, H), R, 3); stab likewise for columns. grid: x = input class * column
    // block, y = block of BM channels.
    constexpr int NT = BN / TN, MT = BM / TM, NTH = THREADS;
    constexpr int LA = (BM * BK + NTH - 1) / NTH, LB = (BK * BN + NTH - 1) / NTH;
    __shared__ T As[BK][BM + 1];
    __shared__ T Bs[BK][BN];
    const int t = threadIdx.x, tm = t / NT, tn = t % NT;
    const i64 cls = blockIdx.x / colblocks;
    const i64 j0 = (blockIdx.x % colblocks) * (i64)BN;
    // y: group * block of BM of its C / G channels; the reduction runs over the group's filters
    const i64 Cg = C / G, Kg = K / G, cbg = (Cg + BM - 1) / BM, grp = (i64)blockIdx.y / cbg;
    const i64 c0 = grp * Cg + ((i64)blockIdx.y - grp * cbg) * BM, cend = (grp + 1) * Cg;
    const i64 kb = grp * Kg;
    const i64 alpha = cls / ncw, beta = cls % ncw;
    const i64 Hc = class_extent(H, alpha, LH), Wc = class_extent(W, beta, LW);
    const i64 ncol = N * Hc * Wc;           // columns: (n, hi, wi), h = alpha + hi*LH
    if (j0 >= ncol) return;
    const i64 nr = rcnt[alpha], ns = scnt[beta];
    const i64 nred = Kg * nr * ns;           // reduction: (the group's k, valid r, valid s)
    const i64* rt = rtab + alpha * R * 3;
    const i64* st = stab + beta * S * 3;
    A acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = A(0);
    i64 bn[LB], bhi[LB], bwi[LB];
#pragma unroll
    for (int u = 0; u < LB; ++u) {
        const i64 col = j0 + (t + u * NTH) % BN;
        bn[u] = -1;
        bhi[u] = bwi[u] = 0;
        if (col < ncol) {
            const i64 n = col / (Hc * Wc), rem = col - n * (Hc * Wc);
            bn[u] = n;
            bhi[u] = rem / Wc;
            bwi[u] = rem - bhi[u] * Wc;
        }
    }
    for (i64 red0 = 0; red0 < nred; red0 += BK) {
#pragma unroll
        for (int u = 0; u < LA; ++u) {
            const int e = t + u * NTH;
            if (e < BM * BK) {
                const int m = e / BK, kk = e % BK;
                const i64 red = red0 + kk;
                T v = zero<T>();
                if (c0 + m < cend && red < nred) {
                    const i64 k = red / (nr * ns), rem = red - k * (nr * ns);
                    const i64 ri = rem / ns, si = rem - ri * ns;
                    const i64 bank = rt[ri * 3 + 2] * TQ + st[si * 3 + 2];
                    v = __ldg(&w[off4(bank * K + kb + k, c0 + m - grp * Cg, rt[ri * 3], st[si * 3],
                                      Cg, R, S)]);
                }
                As[kk][m] = v;
            }
        }
#pragma unroll
        for (int u = 0; u < LB; ++u) {
            const int e = t + u * NTH;
            if (e < BK * BN) {
                const int kk = e / BN;
                const i64 red = red0 + kk;
                T v = zero<T>();
                if (red < nred && bn[u] >= 0) {
                    const i64 k = red / (nr * ns), rem = red - k * (nr * ns);
                    const i64 ri = rem / ns, si = rem - ri * ns;
                    const i64 p = rt[ri * 3 + 1] + bhi[u] * TP, q = st[si * 3 + 1] + bwi[u] * TQ;
                    if (p >= 0 && p < P && q >= 0 && q < Q)
                        v = __ldg(&dy[off4(bn[u], kb + k, p, q, K, P, Q)]);
                }
                Bs[kk][e % BN] = v;
            }
        }
        __syncthreads();
        tile_fma<T, A, BM, BN, BK, TM, TN>(As, Bs, acc, tm, tn);
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const i64 col = j0 + tn + j * NT;
        if (col >= ncol) continue;
        const i64 n = col / (Hc * Wc), rem = col - n * (Hc * Wc), hi = rem / Wc;
        const i64 h = alpha + hi * LH, ww = beta + (rem - hi * Wc) * LW;
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const i64 c = c0 + tm + i * MT;
            if (c < cend) dx[off4(n, c, h, ww, C, H, W)] = cvt<O>(acc[i][j]);
        }
    }
}

template <typename T, typename A, typename O>
__global__ void conv2d_wgrad_reduce_kernel(const A* __restrict__ ws, O* __restrict__ out,
                                           i64 nchunks, i64 size) {
    // out[e] += the chunk partials of e, always in chunk order: the same bits on every run.
    // With nchunks = 1 it is also how an A-typed sum is added into a T-typed result.
    for (i64 e = blockIdx.x * (i64)blockDim.x + threadIdx.x; e < size;
         e += (i64)gridDim.x * blockDim.x) {
        A s = A(0);
        for (i64 ch = 0; ch < nchunks; ++ch) s += ws[ch * size + e];
        out[e] = cvt<O>(cvt<A>(out[e]) + s);
    }
}

template <typename T, typename A, typename O, int NB>
__global__ void __launch_bounds__(NB)
conv2d_bgrad_kernel(const T* __restrict__ dy, O* __restrict__ out, i64 N, i64 K, i64 P, i64 Q,
                    i64 TP, i64 TQ) {
    // one block per (tile class, k): a strided sum over the class's (n, p, q), then warp
    // shuffles (fixed pattern: deterministic) and one shared-memory step across the warps;
    // blockDim.x is a power of two <= NB (the host shrinks it for short classes).
    __shared__ A warp_sums[NB / 32 > 0 ? NB / 32 : 1];
    const int t = threadIdx.x, lane = t % 32, warp = t / 32;
    const i64 cls = blockIdx.x / K, k = blockIdx.x % K;
    const i64 tp = cls / TQ, tq = cls % TQ;
    const i64 Pc = class_extent(P, tp, TP), Qc = class_extent(Q, tq, TQ);
    const i64 ncol = N * Pc * Qc;
    A s = A(0);
    for (i64 col = t; col < ncol; col += blockDim.x) {
        const i64 n = col / (Pc * Qc), rem = col - n * (Pc * Qc), i = rem / Qc;
        s += cvt<A>(__ldg(&dy[off4(n, k, tp + i * TP, tq + (rem - i * Qc) * TQ, K, P, Q)]));
    }
    const int width = blockDim.x < 32 ? blockDim.x : 32;
    const unsigned mask = width == 32 ? 0xffffffffu : (1u << width) - 1u;
    for (int off = width / 2; off > 0; off /= 2) s += __shfl_down_sync(mask, s, off, width);
    const int nwarps = (blockDim.x + 31) / 32;
    if (nwarps == 1) {
        if (t == 0) out[cls * K + k] = cvt<O>(cvt<A>(out[cls * K + k]) + s);
        return;
    }
    if (lane == 0) warp_sums[warp] = s;
    __syncthreads();
    if (warp == 0) {
        s = lane < nwarps ? warp_sums[lane] : A(0);
        for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off, 32);
        if (lane == 0) out[cls * K + k] = cvt<O>(cvt<A>(out[cls * K + k]) + s);
    }
}
