// cross_entropy.cu — fused log-softmax + negative log-likelihood over the last dim (the vocabulary).
// CPU counterpart: crates/tensor/src/ops/cross_entropy/.
//   cross_entropy_fwd_<T>(float* losses, float* lse, const T* logits, const i64* targets,
//                         int rows, int vocab, i64 ignore_index)
//     losses[r] = lse[r] - logits[r, targets[r]]  (f32, [rows]); 0 where targets[r] == ignore_index,
//     NaN where the target is out of range (the host validates targets; NaN makes a miss visible).
//     lse[r] = logsumexp(logits[r, :]) is saved for backward. The caller reduces `losses`
//     (sum / mean over non-ignored rows) with the reduce kernels.
//   cross_entropy_bwd_<T>(T* dlogits, const float* lse, const float* dloss, const T* logits,
//                         const i64* targets, int rows, int vocab, int dloss_stride, i64 ignore_index)
//     dlogits[r, v] = dloss[r * dloss_stride] * (softmax(logits[r])[v] - (v == targets[r]));
//     0 on ignored rows. dloss_stride = 0 broadcasts one scalar (e.g. 1 / n_valid for a mean loss).
// grid = rows, block = 256 (any multiple of 32). dlogits is written (not accumulated).
#include "common.cuh"

template <typename T>
__device__ void cross_entropy_fwd(float* losses, float* lse_out, const T* logits, const i64* targets,
                                  int rows, int vocab, i64 ignore_index) {
    __shared__ float scratch[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    const T* x = logits + (i64)row * vocab;
    // online max / sum-exp per thread, then merged across the block
    float m = -KILN_INF, s = 0.f;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        float v = to_f32(x[c]);
        if (v > m) { s = s * expf(m - v) + 1.f; m = v; }
        else if (v != -KILN_INF) s += expf(v - m);
    }
    float M = block_max(m, scratch);
    s = (m == -KILN_INF) ? 0.f : s * expf(m - M);
    float S = block_sum(s, scratch);
    if (threadIdx.x == 0) {
        float lse = M + logf(S);
        i64 t = targets[row];
        float loss;
        if (t == ignore_index) loss = 0.f;
        else if (t < 0 || t >= vocab) loss = KILN_NAN;
        else loss = lse - to_f32(x[t]);
        losses[row] = loss;
        if (lse_out) lse_out[row] = lse;
    }
}

template <typename T>
__device__ void cross_entropy_bwd(T* dlogits, const float* lse, const float* dloss, const T* logits,
                                  const i64* targets, int rows, int vocab, int dloss_stride, i64 ignore_index) {
    int row = blockIdx.x;
    if (row >= rows) return;
    const T* x = logits + (i64)row * vocab;
    T* dx = dlogits + (i64)row * vocab;
    i64 t = targets[row];
    if (t == ignore_index) {
        for (int c = threadIdx.x; c < vocab; c += blockDim.x) dx[c] = from_f32<T>(0.f);
        return;
    }
    float g = dloss[(i64)row * dloss_stride];
    float l = lse[row];
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        float p = expf(to_f32(x[c]) - l);
        dx[c] = from_f32<T>(g * (p - (c == t ? 1.f : 0.f)));
    }
}

#define CE_KERNELS(T, S)                                                                           \
    extern "C" __global__ void cross_entropy_fwd_##S(float* losses, float* lse, const T* logits,   \
                                                     const i64* targets, int rows, int vocab,      \
                                                     i64 ignore_index) {                           \
        cross_entropy_fwd(losses, lse, logits, targets, rows, vocab, ignore_index);                \
    }                                                                                              \
    extern "C" __global__ void cross_entropy_bwd_##S(T* dlogits, const float* lse,                 \
                                                     const float* dloss, const T* logits,          \
                                                     const i64* targets, int rows, int vocab,      \
                                                     int dloss_stride, i64 ignore_index) {         \
        cross_entropy_bwd(dlogits, lse, dloss, logits, targets, rows, vocab, dloss_stride,         \
                          ignore_index);                                                           \
    }
KILN_FOR_FLOATS(CE_KERNELS)
