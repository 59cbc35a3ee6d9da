// common.cuh — shared by every kernels/*.cu file. Embedded by kiln's NVRTC pipeline as the header
// "common.cuh", so kernels need NO CUDA headers at all (no cuda_bf16.h / cuda_fp16.h).
//
// bf16 and f16 are carried as 16-bit bit patterns wrapped in distinct structs (same size and
// alignment as half::bf16 / half::f16 on the Rust side), converted with bit arithmetic or PTX `cvt`.
// All arithmetic is done in f32 (`to_f32` on load, `from_f32<T>` on store).
#pragma once

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;

struct bf16 { unsigned short bits; };
struct f16 { unsigned short bits; };

#define KILN_INF __int_as_float(0x7f800000)
#define KILN_NAN __int_as_float(0x7fffffff)
#define FULL_MASK 0xffffffffu

// ---- conversions ------------------------------------------------------------------------------
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }
__device__ __forceinline__ float to_f32(f16 x) {
    float f;
#ifdef KILN_EMU  // kernels/emu: the host compiler's IEEE half
    _Float16 h;
    memcpy(&h, &x.bits, 2);
    f = (float)h;
#else
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
#endif
    return f;
}

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) {
    bf16 r;
#if __CUDA_ARCH__ >= 800
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
#else
    // Round to nearest even by bit arithmetic (pre-Ampere has no cvt.bf16); NaN stays a quiet NaN.
    u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) { r.bits = 0x7fc0; return r; }
    u += 0x7fffu + ((u >> 16) & 1u);
    r.bits = (unsigned short)(u >> 16);
#endif
    return r;
}
template <> __device__ __forceinline__ f16 from_f32<f16>(float x) {
    f16 r;
#ifdef KILN_EMU
    _Float16 h = (_Float16)x;  // round to nearest even, as cvt.rn
    memcpy(&r.bits, &h, 2);
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
#endif
    return r;
}

// ---- 16-byte vector packs -----------------------------------------------------------------------
// Pack<T>::N elements of T in one 16-byte load/store (4 x f32, 8 x bf16/f16).
template <typename T> struct alignas(16) Pack {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};
template <typename T> __device__ __forceinline__ Pack<T> load_pack(const T* p) {
    return *reinterpret_cast<const Pack<T>*>(p);
}
template <typename T> __device__ __forceinline__ void store_pack(T* p, const Pack<T>& x) {
    *reinterpret_cast<Pack<T>*>(p) = x;
}
__device__ __forceinline__ bool aligned16(const void* p) { return (((u64)p) & 15ull) == 0; }

// ---- warp / block reductions --------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}
// Block-wide sum/max; every thread gets the result. blockDim.x must be a multiple of 32 (<= 1024).
// `scratch` is 32 floats of shared memory; the trailing __syncthreads makes it reusable at once.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.f;
    v = warp_sum(v);
    __syncthreads();
    return v;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : -KILN_INF;
    v = warp_max(v);
    __syncthreads();
    return v;
}

// Column sums of rows [r_begin, r_end) of a [*, cols] array, in a fixed order (deterministic for a
// given row range): a block of exactly 256 threads owns the 32 columns blockIdx.x * 32 + lane; warp w
// sums rows r_begin + w, + 8, ..., then warp 0 adds the 8 sums in warp order. Every thread must call
// it (one __syncthreads); the sum is returned on warp 0's lanes (elsewhere: 0). `acc`: 8 x 33 floats
// of shared memory, not reused before the next __syncthreads.
template <typename T>
__device__ __forceinline__ float block_col_sum(const T* in, i64 r_begin, i64 r_end, int cols, float (*acc)[33]) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int c = blockIdx.x * 32 + lane;
    float s = 0.f;
    if (c < cols)
        for (i64 r = r_begin + warp; r < r_end; r += 8) s += to_f32(in[r * cols + c]);
    acc[warp][lane] = s;
    __syncthreads();
    if (warp != 0) return 0.f;
    float t = 0.f;
#pragma unroll
    for (int k = 0; k < 8; ++k) t += acc[k][lane];
    return t;
}

// Online-softmax merge: (m, s) <- (m, s) (+) (m2, s2), where s = sum exp(x - m). -inf safe.
__device__ __forceinline__ void softmax_merge(float& m, float& s, float m2, float s2) {
    float mn = fmaxf(m, m2);
    if (mn == -KILN_INF) return;  // both empty
    s = s * expf(m - mn) + s2 * expf(m2 - mn);
    m = mn;
}

// ---- strided layouts (rank <= 6), mirrored by `KLayout` in crates/tensor/src/cuda/launch.rs ---
#define KILN_MAX_RANK 6
struct Layout {
    i64 shape[KILN_MAX_RANK];   // logical shape (the OUTPUT shape for broadcasting ops)
    i64 stride[KILN_MAX_RANK];  // element strides of the input; 0 on broadcast dims
    int rank;
    int contiguous;             // 1 when stride is the row-major stride of shape (fast path)
};
// Element offset (from the base pointer) of the element with row-major flat index `i`.
__device__ __forceinline__ i64 layout_offset(i64 i, const Layout& l) {
    if (l.contiguous) return i;
    i64 off = 0;
    // Fully unrolled with constant indices: the struct stays in the parameter bank (a loop with a
    // runtime bound would copy it to local memory, ptxas "104 bytes stack frame").
#pragma unroll
    for (int d = KILN_MAX_RANK - 1; d >= 0; --d) {
        if (d < l.rank) {
            i64 s = l.shape[d];
            off += (i % s) * l.stride[d];
            i /= s;
        }
    }
    return off;
}

// Grid-stride loop over [0, n).
#define GRID_STRIDE(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// ---- contiguous element-wise maps with 16-byte packs ----------------------------------------------
// out[i] = f(i, a[i]) for i in [0, n). Packs of 16 bytes when every pointer is 16-byte aligned
// (uniform branch), then a scalar tail; otherwise scalar throughout. `f` works in f32.
template <typename TO, typename TA, typename F>
__device__ __forceinline__ void map1(TO* out, const TA* a, i64 n, F f) {
    static_assert(sizeof(TO) == sizeof(TA), "map1: equal element sizes");
    constexpr int N = Pack<TA>::N;
    i64 start = 0;
    if (aligned16(out) && aligned16(a)) {
        i64 npacks = n / N;
        GRID_STRIDE(p, npacks) {
            Pack<TA> x = load_pack(a + p * N);
            Pack<TO> y;
#pragma unroll
            for (int k = 0; k < N; ++k) y.v[k] = from_f32<TO>(f(p * N + k, to_f32(x.v[k])));
            store_pack(out + p * N, y);
        }
        start = npacks * N;
    }
    for (i64 i = start + (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        out[i] = from_f32<TO>(f(i, to_f32(a[i])));
}

// out[i] = f(i, a[i], b[i]) for i in [0, n); same packing rule as map1.
template <typename T, typename F>
__device__ __forceinline__ void map2(T* out, const T* a, const T* b, i64 n, F f) {
    constexpr int N = Pack<T>::N;
    i64 start = 0;
    if (aligned16(out) && aligned16(a) && aligned16(b)) {
        i64 npacks = n / N;
        GRID_STRIDE(p, npacks) {
            Pack<T> x = load_pack(a + p * N), y = load_pack(b + p * N), z;
#pragma unroll
            for (int k = 0; k < N; ++k) z.v[k] = from_f32<T>(f(p * N + k, to_f32(x.v[k]), to_f32(y.v[k])));
            store_pack(out + p * N, z);
        }
        start = npacks * N;
    }
    for (i64 i = start + (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        out[i] = from_f32<T>(f(i, to_f32(a[i]), to_f32(b[i])));
}

// ---- a row held in one warp's registers (the `_warp` kernel variants) ------------------------------
// Rows of `cols` elements with cols % N == 0 (N = Pack<T>::N) and 16-byte aligned rows: lane l holds
// packs l, l + 32, ... (at most P of them), so a row of up to 32 * P * N elements is read from
// memory once. The `_warp<E>` kernels are instantiated for E = P * N elements per lane in
// KILN_ROW_E (the launcher picks the smallest E with 32 * E >= cols: registers, and so the warps an
// SM can hold, follow the row length instead of the longest row).
template <typename T, int P> struct WarpRow {
    static constexpr int N = Pack<T>::N;
    float v[P][N];
    // loads the row; missing lanes get `fill`
    __device__ __forceinline__ void load(const T* row, int cols, float fill) {
        int lane = threadIdx.x & 31, np = cols / N;
#pragma unroll
        for (int p = 0; p < P; ++p) {
            int pi = p * 32 + lane;
            if (pi < np) {
                Pack<T> x = load_pack(row + (i64)pi * N);
#pragma unroll
                for (int k = 0; k < N; ++k) v[p][k] = to_f32(x.v[k]);
            } else {
#pragma unroll
                for (int k = 0; k < N; ++k) v[p][k] = fill;
            }
        }
    }
    __device__ __forceinline__ void store(T* row, int cols) const {
        int lane = threadIdx.x & 31, np = cols / N;
#pragma unroll
        for (int p = 0; p < P; ++p) {
            int pi = p * 32 + lane;
            if (pi < np) {
                Pack<T> x;
#pragma unroll
                for (int k = 0; k < N; ++k) x.v[k] = from_f32<T>(v[p][k]);
                store_pack(row + (i64)pi * N, x);
            }
        }
    }
    // whether pack p of this lane is inside the row
    __device__ __forceinline__ static bool valid(int p, int cols) { return p * 32 + (threadIdx.x & 31) < cols / N; }
};

// ---- the dropout RNG contract (docs/KERNELS.md; the CPU: ops::dropout::dropout_uniform) -------
// A uniform number in [0, 1) for element idx under seed: the SplitMix64 finaliser of
// seed + golden * (idx + 1) (wrapping u64), its top 24 bits times 2^-24 (exact in f32). Used by
// dropout.cu and by the attention kernels' probability dropout; this is the one definition.
__device__ __forceinline__ float dropout_uniform(u64 seed, i64 idx) {
    u64 z = seed + 0x9E3779B97F4A7C15ull * (u64)(idx + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}
// Element idx is kept by dropout with probability p iff its uniform number is >= p.
__device__ __forceinline__ bool dropout_keep(u64 seed, i64 idx, float p) { return dropout_uniform(seed, idx) >= p; }

// Attention-probability dropout (the attention kernels' `_drop` entry points): probability
// P[bh, i, j] is kept iff dropout_keep(seed, (bh * Tq + i) * Tk + j, p) and then scaled by
// scale = 1 / (1 - p) (computed in f32, as dropout.cu does).
struct AttnDrop {
    u64 seed;
    float p, scale;
};
__device__ __forceinline__ AttnDrop attn_drop(float p, u64 seed) { return AttnDrop{seed, p, 1.0f / (1.0f - p)}; }
// 1 / (1 - p) where P[bh, i, j] is kept, 0 where it is dropped.
__device__ __forceinline__ float attn_drop_factor(const AttnDrop& d, i64 bh, int Tq, int Tk, int i, int j) {
    return dropout_keep(d.seed, (bh * Tq + i) * Tk + j, d.p) ? d.scale : 0.f;
}

// Instantiates M(T, S, E) for every elements-per-lane count E of the `_warp<E>` row kernels.
#define KILN_ROW_E(M, T, S) M(T, S, 8) M(T, S, 16) M(T, S, 24) M(T, S, 32) M(T, S, 48) M(T, S, 64)

// Instantiates `extern "C"` entry points NAME_f32 / NAME_bf16 / NAME_f16 from a macro M(T, SUFFIX).
#define KILN_FOR_FLOATS(M) M(float, f32) M(bf16, bf16) M(f16, f16)
