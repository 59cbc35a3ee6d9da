// dropout.cu — inverted dropout with a counter-based RNG: no mask is stored; backward recomputes it.
// CPU counterpart: crates/tensor/src/ops/dropout.rs, which MUST use the same contract:
//
//   for the element with row-major flat index idx (0-based, over the contiguous tensor):
//     u64 z = seed + 0x9E3779B97F4A7C15 * (idx + 1)        (wrapping u64 arithmetic)
//     z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
//     z = (z ^ (z >> 27)) * 0x94D049BB133111EB
//     z ^= z >> 31
//     u = (float)(z >> 40) * 2^-24                          (in [0, 1), exact in f32)
//     keep iff u >= p;  out = keep ? x * scale : 0,  scale = 1.0f / (1.0f - p) computed in f32
//
//   dropout_fwd_<T>(T* out, const T* inp, i64 n, float p, u64 seed)
//   dropout_bwd_<T>(T* dinp, const T* dout, i64 n, float p, u64 seed)   (same mask, same scale)
// p = 0 keeps everything (u >= 0 always); p = 1 drops everything. Launch: 1-D grid-stride.
// dropout_uniform / dropout_keep are defined once, in common.cuh (the attention kernels' probability
// dropout uses the same functions).
#include "common.cuh"

template <typename T>
__device__ void dropout_apply(T* out, const T* inp, i64 n, float p, u64 seed) {
    float scale = 1.0f / (1.0f - p);
    map1(out, inp, n, [=](i64 i, float x) { return dropout_keep(seed, i, p) ? x * scale : 0.f; });
}

#define DROPOUT_KERNELS(T, S)                                                                      \
    extern "C" __global__ void dropout_fwd_##S(T* out, const T* inp, i64 n, float p, u64 seed) {   \
        dropout_apply(out, inp, n, p, seed);                                                       \
    }                                                                                              \
    extern "C" __global__ void dropout_bwd_##S(T* dinp, const T* dout, i64 n, float p, u64 seed) { \
        dropout_apply(dinp, dout, n, p, seed);                                                     \
    }
KILN_FOR_FLOATS(DROPOUT_KERNELS)
