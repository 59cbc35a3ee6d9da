// layer_norm.cu — LayerNorm over the last dim of a contiguous [rows, cols] tensor.
// CPU counterpart: crates/tensor/src/ops/layer_norm/.
//
//   layer_norm_fwd_<T>(T* out, float* mean, float* rstd, const T* inp, const T* weight,
//                      const T* bias, int rows, int cols, float eps)
//     grid = rows, block = 256 (any multiple of 32). out = (x - mean) * rstd * weight + bias.
//     mean/rstd ([rows], f32) are saved for backward; they may be null (inference).
//     weight/bias may be null (no affine).
//   layer_norm_bwd_<T>(T* dinp, float* dweight_part, float* dbias_part, const float* mean,
//                      const float* rstd, const T* dout, const T* inp, const T* weight,
//                      int rows, int cols)
//     grid = nparts (any number <= rows), block = 256, dynamic smem = (2 * cols + 32) * 4 bytes.
//     Block b handles rows b, b + nparts, ...; writes dinp (not accumulated) and its partial column
//     sums dweight_part[b, :] = sum dout * xhat, dbias_part[b, :] = sum dout (f32, [nparts, cols]).
//     weight == null: no affine; the partial pointers are then ignored (may be null).
//   layer_norm_bwd_reduce_<T>(T* dweight, T* dbias, const float* dweight_part,
//                             const float* dbias_part, int nparts, int cols)
//     grid = ceil(cols / 32), block = 256: the parts summed per column by block_col_sum (common.cuh:
//     a fixed order for a given nparts, deterministic, no atomics anywhere). Writes dweight/dbias
//     (not accumulated).
//   layer_norm_bwd_warp<E>_<T>(same arguments as layer_norm_bwd), E in {8, 16, 24, 32, 48}: one
//     warp per row with x and dout held in registers (each element read once, 16-byte accesses,
//     dinp written once). A lane owns the same columns in every row, so its dweight / dbias sums stay
//     in registers across the rows its warp takes; at the end the block's warps add theirs into
//     shared memory in warp order (deterministic) and write dweight_part[b, :] / dbias_part[b, :].
//     cols % (16 / sizeof(T)) == 0, 16-byte aligned pointers (inp, dout, dinp, weight),
//     cols <= 32 * E. grid = nparts (any number), block = any multiple of 32 (kiln: 128),
//     dynamic smem = 2 * cols * 4 bytes (with weight; 0 without).
//   layer_norm_fwd_warp<E>_<T>(same arguments as layer_norm_fwd), E in {8, 16, 24, 32, 48, 64}
//     (KILN_ROW_E): one warp per row held in registers, E elements per lane (x read once, 16-byte
//     accesses); cols % (16 / sizeof(T)) == 0, 16-byte aligned pointers (out, inp, weight, bias),
//     cols <= 32 * E. grid = ceil(rows / 8), block = 256.
#include "common.cuh"

template <typename T>
__device__ void layer_norm_fwd(T* out, float* mean_out, float* rstd_out, const T* inp, const T* weight,
                               const T* bias, int rows, int cols, float eps) {
    __shared__ float scratch[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    const T* x = inp + (i64)row * cols;
    T* y = out + (i64)row * cols;
    // pass 1: mean
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += to_f32(x[c]);
    float mean = block_sum(s, scratch) / cols;
    // pass 2: variance around the mean (two-pass: no cancellation)
    float v = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float d = to_f32(x[c]) - mean;
        v += d * d;
    }
    float rstd = rsqrtf(block_sum(v, scratch) / cols + eps);
    // pass 3: normalise and apply the affine transform
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float h = (to_f32(x[c]) - mean) * rstd;
        if (weight) h *= to_f32(weight[c]);
        if (bias) h += to_f32(bias[c]);
        y[c] = from_f32<T>(h);
    }
    if (threadIdx.x == 0) {
        if (mean_out) mean_out[row] = mean;
        if (rstd_out) rstd_out[row] = rstd;
    }
}

template <typename T>
__device__ void layer_norm_bwd(T* dinp, float* dw_part, float* db_part, const float* mean, const float* rstd,
                               const T* dout, const T* inp, const T* weight, int rows, int cols) {
    extern __shared__ float smem[];
    float* dw_acc = smem;             // [cols]: column c is only touched by thread c % blockDim.x
    float* db_acc = smem + cols;      // [cols]
    float* scratch = smem + 2 * cols; // [32]
    bool affine = weight != nullptr;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) { dw_acc[c] = 0.f; db_acc[c] = 0.f; }
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* x = inp + (i64)row * cols;
        const T* g = dout + (i64)row * cols;
        T* dx = dinp + (i64)row * cols;
        float mu = mean[row], rs = rstd[row];
        // dxhat = dout * w;  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        float a = 0.f, b = 0.f;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            float xhat = (to_f32(x[c]) - mu) * rs;
            float dxhat = to_f32(g[c]) * (affine ? to_f32(weight[c]) : 1.f);
            a += dxhat;
            b += dxhat * xhat;
        }
        a = block_sum(a, scratch) / cols;
        b = block_sum(b, scratch) / cols;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            float xhat = (to_f32(x[c]) - mu) * rs;
            float gc = to_f32(g[c]);
            float dxhat = gc * (affine ? to_f32(weight[c]) : 1.f);
            dx[c] = from_f32<T>(rs * (dxhat - a - xhat * b));
            dw_acc[c] += gc * xhat;
            db_acc[c] += gc;
        }
    }
    if (!affine) return;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {  // same thread wrote dw_acc[c]: no sync needed
        dw_part[(i64)blockIdx.x * cols + c] = dw_acc[c];
        db_part[(i64)blockIdx.x * cols + c] = db_acc[c];
    }
}

template <typename T>
__device__ void layer_norm_bwd_reduce(T* dweight, T* dbias, const float* dw_part, const float* db_part,
                                      int nparts, int cols) {
    __shared__ float sw[8][33], sb[8][33];
    float w = block_col_sum(dw_part, 0, nparts, cols, sw), b = block_col_sum(db_part, 0, nparts, cols, sb);
    int c = blockIdx.x * 32 + threadIdx.x;
    if (threadIdx.x >= 32 || c >= cols) return;
    if (dweight) dweight[c] = from_f32<T>(w);
    if (dbias) dbias[c] = from_f32<T>(b);
}

// The backward with the row in registers (see the header). E = elements per lane = P packs of N.
template <typename T, int E>
__device__ void layer_norm_bwd_warp(T* dinp, float* dw_part, float* db_part, const float* mean, const float* rstd,
                                   const T* dout, const T* inp, const T* weight, int rows, int cols) {
    constexpr int N = Pack<T>::N, P = E / N;
    static_assert(E % N == 0, "E must be a whole number of packs");
    extern __shared__ float smem[];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    bool affine = weight != nullptr;
    float dw[P][N], db[P][N];  // this lane's columns: sum over its warp's rows of dout * xhat, dout
#pragma unroll
    for (int p = 0; p < P; ++p)
#pragma unroll
        for (int k = 0; k < N; ++k) dw[p][k] = db[p][k] = 0.f;
    for (int row = blockIdx.x * nwarps + warp; row < rows; row += gridDim.x * nwarps) {  // warp-uniform
        WarpRow<T, P> x, g;  // x becomes xhat and g becomes dxhat = dout * w in place
        x.load(inp + (i64)row * cols, cols, 0.f);
        g.load(dout + (i64)row * cols, cols, 0.f);
        float mu = mean[row], rs = rstd[row];
        float a = 0.f, b = 0.f;  // sums of dxhat and dxhat * xhat (padding adds 0)
#pragma unroll
        for (int p = 0; p < P; ++p) {
            if (!WarpRow<T, P>::valid(p, cols)) continue;
            Pack<T> w;
            if (affine) w = load_pack(weight + (p * 32 + lane) * N);
#pragma unroll
            for (int k = 0; k < N; ++k) {
                float xh = (x.v[p][k] - mu) * rs, gc = g.v[p][k];
                float dxh = affine ? gc * to_f32(w.v[k]) : gc;
                dw[p][k] += gc * xh;
                db[p][k] += gc;
                a += dxh;
                b += dxh * xh;
                x.v[p][k] = xh;
                g.v[p][k] = dxh;
            }
        }
        a = warp_sum(a) / cols;
        b = warp_sum(b) / cols;
        // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
#pragma unroll
        for (int p = 0; p < P; ++p)
#pragma unroll
            for (int k = 0; k < N; ++k) g.v[p][k] = rs * (g.v[p][k] - a - x.v[p][k] * b);
        g.store(dinp + (i64)row * cols, cols);
    }
    if (!affine) return;  // uniform over the block
    float* sw = smem;         // [cols]
    float* sb = smem + cols;  // [cols]
    for (int w = 0; w < nwarps; ++w) {  // the warps add their sums in warp order: deterministic
        if (warp == w)
#pragma unroll
            for (int p = 0; p < P; ++p) {
                if (!WarpRow<T, P>::valid(p, cols)) continue;
#pragma unroll
                for (int k = 0; k < N; ++k) {
                    int c = (p * 32 + lane) * N + k;
                    sw[c] = (w == 0 ? 0.f : sw[c]) + dw[p][k];
                    sb[c] = (w == 0 ? 0.f : sb[c]) + db[p][k];
                }
            }
        __syncthreads();
    }
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        dw_part[(i64)blockIdx.x * cols + c] = sw[c];
        db_part[(i64)blockIdx.x * cols + c] = sb[c];
    }
}

template <typename T, int E>
__device__ void layer_norm_fwd_warp(T* out, float* mean_out, float* rstd_out, const T* inp, const T* weight,
                                    const T* bias, int rows, int cols, float eps) {
    constexpr int N = Pack<T>::N, P = E / N;
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;  // warp-uniform
    WarpRow<T, P> r;
    r.load(inp + (i64)row * cols, cols, 0.f);
    float s = 0.f;
#pragma unroll
    for (int p = 0; p < P; ++p)
#pragma unroll
        for (int k = 0; k < N; ++k) s += r.v[p][k];
    float mean = warp_sum(s) / cols;
    float v = 0.f;  // two-pass variance, from the registers
#pragma unroll
    for (int p = 0; p < P; ++p)
        if (WarpRow<T, P>::valid(p, cols))
#pragma unroll
            for (int k = 0; k < N; ++k) v += (r.v[p][k] - mean) * (r.v[p][k] - mean);
    float rstd = rsqrtf(warp_sum(v) / cols + eps);
#pragma unroll
    for (int p = 0; p < P; ++p) {
        if (!WarpRow<T, P>::valid(p, cols)) continue;
        int c0 = (p * 32 + lane) * N;
        Pack<T> w, b;
        if (weight) w = load_pack(weight + c0);
        if (bias) b = load_pack(bias + c0);
#pragma unroll
        for (int k = 0; k < N; ++k) {
            float h = (r.v[p][k] - mean) * rstd;
            if (weight) h *= to_f32(w.v[k]);
            if (bias) h += to_f32(b.v[k]);
            r.v[p][k] = h;
        }
    }
    r.store(out + (i64)row * cols, cols);
    if (lane == 0) {
        if (mean_out) mean_out[row] = mean;
        if (rstd_out) rstd_out[row] = rstd;
    }
}

#define LN_KERNELS(T, S)                                                                           \
    extern "C" __global__ void layer_norm_fwd_##S(T* out, float* mean, float* rstd, const T* inp,  \
                                                  const T* weight, const T* bias, int rows,        \
                                                  int cols, float eps) {                           \
        layer_norm_fwd(out, mean, rstd, inp, weight, bias, rows, cols, eps);                       \
    }                                                                                              \
    KILN_ROW_E(LN_FWD_WARP, T, S)                                                                  \
    extern "C" __global__ void layer_norm_bwd_##S(T* dinp, float* dw_part, float* db_part,         \
                                                  const float* mean, const float* rstd,            \
                                                  const T* dout, const T* inp, const T* weight,    \
                                                  int rows, int cols) {                            \
        layer_norm_bwd(dinp, dw_part, db_part, mean, rstd, dout, inp, weight, rows, cols);         \
    }                                                                                              \
    extern "C" __global__ void layer_norm_bwd_reduce_##S(T* dweight, T* dbias, const float* dw_part, \
                                                         const float* db_part, int nparts,         \
                                                         int cols) {                               \
        layer_norm_bwd_reduce(dweight, dbias, dw_part, db_part, nparts, cols);                     \
    }                                                                                              \
    LN_BWD_WARP(T, S, 8) LN_BWD_WARP(T, S, 16) LN_BWD_WARP(T, S, 24) LN_BWD_WARP(T, S, 32) LN_BWD_WARP(T, S, 48)
#define LN_FWD_WARP(T, S, E)                                                                       \
    extern "C" __global__ void layer_norm_fwd_warp##E##_##S(T* out, float* mean, float* rstd,      \
                                                         const T* inp, const T* weight,            \
                                                         const T* bias, int rows, int cols,        \
                                                         float eps) {                              \
        layer_norm_fwd_warp<T, E>(out, mean, rstd, inp, weight, bias, rows, cols, eps);            \
    }
#define LN_BWD_WARP(T, S, E)                                                                       \
    extern "C" __global__ void layer_norm_bwd_warp##E##_##S(T* dinp, float* dw_part, float* db_part, \
                                                         const float* mean, const float* rstd,     \
                                                         const T* dout, const T* inp,              \
                                                         const T* weight, int rows, int cols) {    \
        layer_norm_bwd_warp<T, E>(dinp, dw_part, db_part, mean, rstd, dout, inp, weight, rows, cols); \
    }
KILN_FOR_FLOATS(LN_KERNELS)
