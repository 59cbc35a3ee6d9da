// adamw.cu — one fused AdamW step (PyTorch semantics: decoupled weight decay) on f32 master weights,
// in the operation order of kiln's CPU loop (crates/model/src/adamw_kernel.rs, itself PyTorch's), with
// every rounding explicit (__fmul_rn, __fmaf_rn, ...: no contraction by the compiler), so a CUDA step
// gives the same bits as the CPU step:
//   adamw_step_<G>(float* param_out, float* m_out, float* v_out, const float* param, const float* m,
//                  const float* v, const G* grad, i64 n, float decay, float w1, float beta2,
//                  float one_minus_beta2, float bc2_sqrt, float eps, float neg_step_size)
//     p = p * decay                               (decay = 1 - lr * weight_decay; 1: no decay)
//     m = m + w1 (g - m)  (w1 = 1 - beta1 < 0.5;  else g + (w1 - 1)(g - m), one fma either way)
//     v = v * beta2 + (one_minus_beta2 * g) * g
//     p = p + (neg_step_size * m) / (sqrt(v) / bc2_sqrt + eps)
//     neg_step_size = -lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t): computed on the host (t from 1).
//     G = f32 / bf16 / f16 is the gradient dtype (widened exactly to f32). The outputs may be the
//     inputs (each element is read, then written, by one thread).
// Launch: 1-D grid-stride over n, any grid/block size. Element-wise: deterministic.
#include "common.cuh"

template <typename G>
__device__ void adamw_step(float* param_out, float* m_out, float* v_out, const float* param, const float* m,
                           const float* v, const G* grad, i64 n, float decay, float w1, float beta2,
                           float one_minus_beta2, float bc2_sqrt, float eps, float neg_step_size) {
    bool small = fabsf(w1) < 0.5f;
    float coeff = small ? w1 : __fsub_rn(w1, 1.f);
    GRID_STRIDE(i, n) {
        float g = to_f32(grad[i]), mi = m[i];
        float p = __fmul_rn(param[i], decay);
        float mn = __fmaf_rn(coeff, __fsub_rn(g, mi), small ? mi : g);
        float vn = __fadd_rn(__fmul_rn(v[i], beta2), __fmul_rn(__fmul_rn(one_minus_beta2, g), g));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vn), bc2_sqrt), eps);
        param_out[i] = __fadd_rn(p, __fdiv_rn(__fmul_rn(neg_step_size, mn), denom));
        m_out[i] = mn;
        v_out[i] = vn;
    }
}

#define ADAMW_KERNELS(G, S)                                                                        \
    extern "C" __global__ void adamw_step_##S(float* param_out, float* m_out, float* v_out,       \
                                              const float* param, const float* m, const float* v, \
                                              const G* grad, i64 n, float decay, float w1,        \
                                              float beta2, float one_minus_beta2, float bc2_sqrt, \
                                              float eps, float neg_step_size) {                    \
        adamw_step(param_out, m_out, v_out, param, m, v, grad, n, decay, w1, beta2,               \
                   one_minus_beta2, bc2_sqrt, eps, neg_step_size);                                 \
    }
KILN_FOR_FLOATS(ADAMW_KERNELS)
