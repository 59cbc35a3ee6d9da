// gelu.cu — GELU forward and backward, exact (erf) and tanh ("gelu_new", GPT-2) forms.
// CPU counterpart: crates/tensor/src/ops/gelu/. Element-wise over a contiguous buffer of n elements.
//   gelu_fwd_<T>(T* out, const T* inp, i64 n, int tanh_approx)
//   gelu_bwd_<T>(T* dinp, const T* inp, const T* dout, i64 n, int tanh_approx)
// tanh_approx = 0: 0.5 x (1 + erf(x / sqrt 2));  1: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// dinp is written (not accumulated). Launch: 1-D grid-stride, any grid/block size.
#include "common.cuh"

#define GELU_SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_INV_SQRT_2 0.7071067811865476f
#define GELU_INV_SQRT_2PI 0.3989422804014327f
#define GELU_C 0.044715f

__device__ __forceinline__ float gelu_f(float x, int tanh_approx) {
    if (tanh_approx) {
        float u = GELU_SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
        return 0.5f * x * (1.f + tanhf(u));
    }
    return 0.5f * x * (1.f + erff(x * GELU_INV_SQRT_2));
}

// d gelu / dx
__device__ __forceinline__ float gelu_grad(float x, int tanh_approx) {
    if (tanh_approx) {
        float u = GELU_SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
        float t = tanhf(u);
        float du = GELU_SQRT_2_OVER_PI * (1.f + 3.f * GELU_C * x * x);
        return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * du;
    }
    float cdf = 0.5f * (1.f + erff(x * GELU_INV_SQRT_2));
    float pdf = GELU_INV_SQRT_2PI * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

#define GELU_KERNELS(T, S)                                                                         \
    extern "C" __global__ void gelu_fwd_##S(T* out, const T* inp, i64 n, int tanh_approx) {       \
        map1(out, inp, n, [=](i64, float x) { return gelu_f(x, tanh_approx); });                   \
    }                                                                                              \
    extern "C" __global__ void gelu_bwd_##S(T* dinp, const T* inp, const T* dout, i64 n,          \
                                            int tanh_approx) {                                     \
        map2(dinp, inp, dout, n, [=](i64, float x, float g) { return g * gelu_grad(x, tanh_approx); }); \
    }
KILN_FOR_FLOATS(GELU_KERNELS)
