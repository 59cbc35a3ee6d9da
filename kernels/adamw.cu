// adamw.cu — one fused AdamW step (PyTorch semantics: decoupled weight decay) on f32 master weights.
// CPU counterpart: crates/model/src/optim (AdamW).
//   adamw_step_<G>(float* param, G* param_copy, float* m, float* v, const G* grad, i64 n, float lr,
//                  float beta1, float beta2, float eps, float weight_decay, float bias_corr1,
//                  float bias_corr2, float grad_scale)
//     g = grad * grad_scale                     (grad_scale: e.g. the clip-by-global-norm factor)
//     param -= lr * weight_decay * param
//     m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//     param -= lr * (m / bias_corr1) / (sqrt(v / bias_corr2) + eps)
//     bias_corr1 = 1 - beta1^t, bias_corr2 = 1 - beta2^t (t = step, from 1), computed on the host.
//     param_copy (may be null) receives the updated weights rounded to G: the bf16/f16 working copy
//     of mixed-precision training. G = f32 / bf16 / f16 is the gradient (and copy) dtype.
// Launch: 1-D grid-stride over n, any grid/block size. Element-wise: deterministic.
#include "common.cuh"

template <typename G>
__device__ void adamw_step(float* param, G* param_copy, float* m, float* v, const G* grad, i64 n, float lr,
                           float beta1, float beta2, float eps, float weight_decay, float bias_corr1,
                           float bias_corr2, float grad_scale) {
    GRID_STRIDE(i, n) {
        float g = to_f32(grad[i]) * grad_scale;
        float p = param[i];
        p -= lr * weight_decay * p;
        float mi = beta1 * m[i] + (1.f - beta1) * g;
        float vi = beta2 * v[i] + (1.f - beta2) * g * g;
        p -= lr * (mi / bias_corr1) / (sqrtf(vi / bias_corr2) + eps);
        m[i] = mi;
        v[i] = vi;
        param[i] = p;
        if (param_copy) param_copy[i] = from_f32<G>(p);
    }
}

#define ADAMW_KERNELS(G, S)                                                                        \
    extern "C" __global__ void adamw_step_##S(float* param, G* param_copy, float* m, float* v,     \
                                              const G* grad, i64 n, float lr, float beta1,         \
                                              float beta2, float eps, float weight_decay,          \
                                              float bias_corr1, float bias_corr2,                  \
                                              float grad_scale) {                                  \
        adamw_step(param, param_copy, m, v, grad, n, lr, beta1, beta2, eps, weight_decay,          \
                   bias_corr1, bias_corr2, grad_scale);                                            \
    }
KILN_FOR_FLOATS(ADAMW_KERNELS)
