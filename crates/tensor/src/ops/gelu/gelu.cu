// gelu.cu — GELU forward and backward, exact (erf) and tanh ("gelu_new", GPT-2) forms.
// CPU counterpart: crates/tensor/src/ops/gelu/. Element-wise over a contiguous buffer of n elements.
//   gelu_fwd_<T>(T* out, const T* inp, i64 n, int tanh_approx)
//   gelu_bwd_<T>(T* dinp, const T* inp, const T* dout, i64 n, int tanh_approx)
// tanh_approx = 0: 0.5 x (1 + erf(x / sqrt 2));  1: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// dinp is written (not accumulated). Launch: 1-D grid-stride, any grid/block size.
// bf16 / f16, tanh form: 0.5 (1 + tanh u) = sigmoid(2u), so gelu = x / (1 + exp(-2u)) with the
// hardware exp2 and reciprocal (__expf, __fdividef): about 8 instructions per element instead of ~24
// with tanhf, whose cost at 16-bit bandwidth (4 bytes moved per element) is the same order as the
// memory time. Relative error a few 1e-6, far under the 16-bit rounding, and no cancellation for
// x < 0 (1 + tanh u is never formed). f32 and the erf form keep tanhf / erff.
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

// 2u and d(2u)/dx of the tanh form; exp(-2u) clamped so that 1 + e stays below 2^126, where
// __fdividef is exact enough (the result there is ~0 either way)
__device__ __forceinline__ float gelu_tanh_exp(float x) {
    float u2 = 2.f * GELU_SQRT_2_OVER_PI * fmaf(GELU_C * x, x * x, x);
    return __expf(fminf(-u2, 80.f));
}

// the tanh form through the sigmoid (16-bit types; see the header)
__device__ __forceinline__ float gelu_tanh_fast(float x) { return __fdividef(x, 1.f + gelu_tanh_exp(x)); }

// its derivative: s + x s (1 - s) d(2u)/dx, s = sigmoid(2u)
__device__ __forceinline__ float gelu_tanh_fast_grad(float x) {
    float e = gelu_tanh_exp(x), s = __fdividef(1.f, 1.f + e);
    float du2 = 2.f * GELU_SQRT_2_OVER_PI * fmaf(3.f * GELU_C * x, x, 1.f);
    return fmaf(x * s * (1.f - s), du2, s);
}

template <typename T> __device__ __forceinline__ float gelu_fwd_of(float x, int tanh_approx) {
    if (sizeof(T) == 2 && tanh_approx) return gelu_tanh_fast(x);
    return gelu_f(x, tanh_approx);
}
template <typename T> __device__ __forceinline__ float gelu_grad_of(float x, int tanh_approx) {
    if (sizeof(T) == 2 && tanh_approx) return gelu_tanh_fast_grad(x);
    return gelu_grad(x, tanh_approx);
}

#define GELU_KERNELS(T, S)                                                                         \
    extern "C" __global__ void gelu_fwd_##S(T* out, const T* inp, i64 n, int tanh_approx) {       \
        map1(out, inp, n, [=](i64, float x) { return gelu_fwd_of<T>(x, tanh_approx); });           \
    }                                                                                              \
    extern "C" __global__ void gelu_bwd_##S(T* dinp, const T* inp, const T* dout, i64 n,          \
                                            int tanh_approx) {                                     \
        map2(dinp, inp, dout, n, [=](i64, float x, float g) { return g * gelu_grad_of<T>(x, tanh_approx); }); \
    }
KILN_FOR_FLOATS(GELU_KERNELS)
