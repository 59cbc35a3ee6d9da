// rms_norm.cu — RMSNorm over the last dim of a contiguous [rows, cols] tensor.
// CPU counterpart: crates/tensor/src/ops/rms_norm/cpu.rs; emulator test: rms_norm_emu.cpp beside it.
//
//   rms_norm_fwd_<T>(T* out, float* rstd, const T* inp, const T* weight, int rows, int cols, float eps)
//     grid = rows, block = 256 (any multiple of 32). out = x * rstd * weight with
//     rstd = 1 / sqrt(mean(x^2) + eps); rstd ([rows], f32) is saved for backward and may be null
//     (inference); weight may be null.
//   rms_norm_bwd_<T>(T* dinp, float* dweight_part, const float* rstd, const T* dout, const T* inp,
//                    const T* weight, int rows, int cols)
//     grid = nparts (any number <= rows), block = 256, dynamic smem = (cols + 32) * 4 bytes.
//     Block b handles rows b, b + nparts, ...: dinp = rstd * (g - xhat * mean(g * xhat)) with
//     xhat = x * rstd, g = dout * weight (not accumulated), and its partial column sums
//     dweight_part[b, :] = sum dout * xhat (f32, [nparts, cols]). weight == null: no weight, and
//     dweight_part is ignored (may be null).
//   rms_norm_bwd_reduce_<T>(T* dweight, const float* dweight_part, int nparts, int cols)
//     grid = ceil(cols / 32), block = 256: the parts summed per column by block_col_sum
//     (common.cuh: a fixed order for a given nparts; no atomics). Writes dweight (not accumulated).
#include "common.cuh"

template <typename T>
__device__ void rms_norm_fwd(T* out, float* rstd_out, const T* inp, const T* weight, int rows, int cols, float eps) {
    __shared__ float scratch[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    const T* x = inp + (i64)row * cols;
    T* y = out + (i64)row * cols;
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = to_f32(x[c]);
        s += v * v;
    }
    float rstd = rsqrtf(block_sum(s, scratch) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float h = to_f32(x[c]) * rstd;
        if (weight) h *= to_f32(weight[c]);
        y[c] = from_f32<T>(h);
    }
    if (threadIdx.x == 0 && rstd_out) rstd_out[row] = rstd;
}

template <typename T>
__device__ void rms_norm_bwd(T* dinp, float* dw_part, const float* rstd, const T* dout, const T* inp,
                             const T* weight, int rows, int cols) {
    extern __shared__ float smem[];
    float* dw_acc = smem;         // [cols]: column c is only touched by thread c % blockDim.x
    float* scratch = smem + cols; // [32]
    bool affine = weight != nullptr;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dw_acc[c] = 0.f;
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* x = inp + (i64)row * cols;
        const T* g = dout + (i64)row * cols;
        T* dx = dinp + (i64)row * cols;
        float rs = rstd[row];
        float b = 0.f;  // sum of g * w * xhat
        for (int c = threadIdx.x; c < cols; c += blockDim.x)
            b += to_f32(g[c]) * (affine ? to_f32(weight[c]) : 1.f) * to_f32(x[c]) * rs;
        b = block_sum(b, scratch) / cols;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            float xhat = to_f32(x[c]) * rs, gc = to_f32(g[c]);
            dx[c] = from_f32<T>(rs * (gc * (affine ? to_f32(weight[c]) : 1.f) - xhat * b));
            dw_acc[c] += gc * xhat;
        }
    }
    if (!affine) return;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)  // same thread wrote dw_acc[c]: no sync needed
        dw_part[(i64)blockIdx.x * cols + c] = dw_acc[c];
}

template <typename T>
__device__ void rms_norm_bwd_reduce(T* dweight, const float* dw_part, int nparts, int cols) {
    __shared__ float sw[8][33];
    float w = block_col_sum(dw_part, 0, nparts, cols, sw);
    int c = blockIdx.x * 32 + threadIdx.x;
    if (threadIdx.x < 32 && c < cols) dweight[c] = from_f32<T>(w);
}

#define RMS_KERNELS(T, S)                                                                          \
    extern "C" __global__ void rms_norm_fwd_##S(T* out, float* rstd, const T* inp, const T* weight, \
                                                int rows, int cols, float eps) {                   \
        rms_norm_fwd(out, rstd, inp, weight, rows, cols, eps);                                     \
    }                                                                                              \
    extern "C" __global__ void rms_norm_bwd_##S(T* dinp, float* dw_part, const float* rstd,        \
                                                const T* dout, const T* inp, const T* weight,      \
                                                int rows, int cols) {                              \
        rms_norm_bwd(dinp, dw_part, rstd, dout, inp, weight, rows, cols);                          \
    }                                                                                              \
    extern "C" __global__ void rms_norm_bwd_reduce_##S(T* dweight, const float* dw_part, int nparts, \
                                                       int cols) {                                 \
        rms_norm_bwd_reduce(dweight, dw_part, nparts, cols);                                       \
    }
KILN_FOR_FLOATS(RMS_KERNELS)
