// softmax.cu — softmax and log_softmax over the last dim of a contiguous [rows, cols] tensor.
// CPU counterpart: crates/tensor/src/ops/softmax/ (softmax, log_softmax).
//   softmax_fwd_<T>(T* out, const T* inp, int rows, int cols)
//   softmax_bwd_<T>(T* dinp, const T* out, const T* dout, int rows, int cols)
//       dinp = y * (dy - sum(dy * y))            (y = saved forward output)
//   log_softmax_fwd_<T>(T* out, const T* inp, int rows, int cols)
//   log_softmax_bwd_<T>(T* dinp, const T* out, const T* dout, int rows, int cols)
//       dinp = dy - exp(y) * sum(dy)             (y = saved log-probabilities)
// grid = rows, block = 256 (any multiple of 32). A row that is entirely -inf gives NaN (as PyTorch).
//   softmax_fwd_warp<E>_<T>, softmax_bwd_warp<E>_<T>, log_softmax_fwd_warp<E>_<T>,
//   log_softmax_bwd_warp<E>_<T>, E in {8, 16, 24, 32, 48, 64} (KILN_ROW_E): same arguments and
//     results; one warp per row held in registers, E elements per lane (each element read and
//     written once, 16-byte accesses). Only for cols % (16 / sizeof(T)) == 0, 16-byte aligned
//     pointers and cols <= 32 * E. grid = ceil(rows / 8), block = 256 (8 rows per block).
#include "common.cuh"

// Row max M and sum S = sum exp(x - M), single pass with a per-thread online update.
template <typename T>
__device__ __forceinline__ void row_max_sum(const T* x, int cols, float* scratch, float& M, float& S) {
    float m = -KILN_INF, s = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = to_f32(x[c]);
        if (v > m) {                       // new running max: rescale what we have
            s = s * expf(m - v) + 1.f;     // m = -inf on the first hit gives s * 0 + 1
            m = v;
        } else if (v != -KILN_INF) {
            s += expf(v - m);
        }
    }
    M = block_max(m, scratch);
    s = (m == -KILN_INF) ? 0.f : s * expf(m - M);
    S = block_sum(s, scratch);
}

template <typename T>
__device__ void softmax_fwd(T* out, const T* inp, int rows, int cols, bool log) {
    __shared__ float scratch[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    const T* x = inp + (i64)row * cols;
    T* y = out + (i64)row * cols;
    float M, S;
    row_max_sum(x, cols, scratch, M, S);
    if (log) {
        float lse = M + logf(S);
        for (int c = threadIdx.x; c < cols; c += blockDim.x) y[c] = from_f32<T>(to_f32(x[c]) - lse);
    } else {
        float inv = 1.f / S;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) y[c] = from_f32<T>(expf(to_f32(x[c]) - M) * inv);
    }
}

template <typename T>
__device__ void softmax_bwd(T* dinp, const T* out, const T* dout, int rows, int cols, bool log) {
    __shared__ float scratch[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    const T* y = out + (i64)row * cols;
    const T* g = dout + (i64)row * cols;
    T* dx = dinp + (i64)row * cols;
    float dot = 0.f;  // softmax: sum(dy * y); log_softmax: sum(dy)
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        dot += log ? to_f32(g[c]) : to_f32(g[c]) * to_f32(y[c]);
    dot = block_sum(dot, scratch);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float yc = to_f32(y[c]), gc = to_f32(g[c]);
        dx[c] = from_f32<T>(log ? gc - expf(yc) * dot : yc * (gc - dot));
    }
}

template <typename T, int E>
__device__ void softmax_fwd_warp(T* out, const T* inp, int rows, int cols, bool log) {
    constexpr int P = E / Pack<T>::N;
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;  // warp-uniform
    WarpRow<T, P> r;
    r.load(inp + (i64)row * cols, cols, -KILN_INF);
    float m = -KILN_INF;
#pragma unroll
    for (int p = 0; p < P; ++p)
#pragma unroll
        for (int k = 0; k < WarpRow<T, P>::N; ++k) m = fmaxf(m, r.v[p][k]);
    m = warp_max(m);
    float s = 0.f;
#pragma unroll
    for (int p = 0; p < P; ++p)
#pragma unroll
        for (int k = 0; k < WarpRow<T, P>::N; ++k) s += expf(r.v[p][k] - m);  // padding: exp(-inf) = 0
    s = warp_sum(s);
    float lse = m + logf(s), inv = 1.f / s;
#pragma unroll
    for (int p = 0; p < P; ++p)
#pragma unroll
        for (int k = 0; k < WarpRow<T, P>::N; ++k) r.v[p][k] = log ? r.v[p][k] - lse : expf(r.v[p][k] - m) * inv;
    r.store(out + (i64)row * cols, cols);
}

template <typename T, int E>
__device__ void softmax_bwd_warp(T* dinp, const T* out, const T* dout, int rows, int cols, bool log) {
    constexpr int P = E / Pack<T>::N;
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;  // warp-uniform
    WarpRow<T, P> y, g;
    y.load(out + (i64)row * cols, cols, 0.f);
    g.load(dout + (i64)row * cols, cols, 0.f);
    float dot = 0.f;  // softmax: sum(dy * y); log_softmax: sum(dy); the padding adds 0
#pragma unroll
    for (int p = 0; p < P; ++p)
#pragma unroll
        for (int k = 0; k < WarpRow<T, P>::N; ++k) dot += log ? g.v[p][k] : g.v[p][k] * y.v[p][k];
    dot = warp_sum(dot);
#pragma unroll
    for (int p = 0; p < P; ++p)
#pragma unroll
        for (int k = 0; k < WarpRow<T, P>::N; ++k)
            g.v[p][k] = log ? g.v[p][k] - expf(y.v[p][k]) * dot : y.v[p][k] * (g.v[p][k] - dot);
    g.store(dinp + (i64)row * cols, cols);
}

#define SOFTMAX_KERNELS(T, S)                                                                      \
    extern "C" __global__ void softmax_fwd_##S(T* out, const T* inp, int rows, int cols) {         \
        softmax_fwd(out, inp, rows, cols, false);                                                  \
    }                                                                                              \
    extern "C" __global__ void softmax_bwd_##S(T* dinp, const T* out, const T* dout, int rows,     \
                                               int cols) {                                         \
        softmax_bwd(dinp, out, dout, rows, cols, false);                                           \
    }                                                                                              \
    extern "C" __global__ void log_softmax_fwd_##S(T* out, const T* inp, int rows, int cols) {     \
        softmax_fwd(out, inp, rows, cols, true);                                                   \
    }                                                                                              \
    extern "C" __global__ void log_softmax_bwd_##S(T* dinp, const T* out, const T* dout, int rows, \
                                                   int cols) {                                     \
        softmax_bwd(dinp, out, dout, rows, cols, true);                                            \
    }                                                                                              \
    KILN_ROW_E(SOFTMAX_WARP_KERNELS, T, S)
#define SOFTMAX_WARP_KERNELS(T, S, E)                                                              \
    extern "C" __global__ void softmax_fwd_warp##E##_##S(T* out, const T* inp, int rows, int cols) { \
        softmax_fwd_warp<T, E>(out, inp, rows, cols, false);                                       \
    }                                                                                              \
    extern "C" __global__ void softmax_bwd_warp##E##_##S(T* dinp, const T* out, const T* dout,     \
                                                         int rows, int cols) {                     \
        softmax_bwd_warp<T, E>(dinp, out, dout, rows, cols, false);                                \
    }                                                                                              \
    extern "C" __global__ void log_softmax_fwd_warp##E##_##S(T* out, const T* inp, int rows,       \
                                                             int cols) {                           \
        softmax_fwd_warp<T, E>(out, inp, rows, cols, true);                                        \
    }                                                                                              \
    extern "C" __global__ void log_softmax_bwd_warp##E##_##S(T* dinp, const T* out, const T* dout, \
                                                             int rows, int cols) {                 \
        softmax_bwd_warp<T, E>(dinp, out, dout, rows, cols, true);                                 \
    }
KILN_FOR_FLOATS(SOFTMAX_KERNELS)
