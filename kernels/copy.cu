// copy.cu — strided copies (permute / contiguous / narrow / broadcast materialisation), rank <= 6.
// CPU counterparts: Tensor::contiguous and the views in crates/tensor/src/ops/view.rs.
//   copy_<T>(T* out, const T* inp, Layout src, i64 n)
//       gather: out (contiguous, n elements, shape src.shape) = inp read through src's strides
//   copy_to_strided_<T>(T* out, const T* inp, Layout dst, i64 n)
//       scatter: out read/written through dst's strides (e.g. a narrow() of a bigger buffer, for
//       cat) = inp (contiguous). dst must not overlap itself (no zero strides).
// T = f32, bf16, f16, f64, i64 (a copy only moves bits). Launch: 1-D grid-stride.
#include "common.cuh"

template <typename T>
__device__ void copy_gather(T* out, const T* inp, const Layout& src, i64 n) {
    if (src.contiguous) {
        GRID_STRIDE(i, n) out[i] = inp[i];
        return;
    }
    GRID_STRIDE(i, n) out[i] = inp[layout_offset(i, src)];
}

template <typename T>
__device__ void copy_scatter(T* out, const T* inp, const Layout& dst, i64 n) {
    GRID_STRIDE(i, n) out[layout_offset(i, dst)] = inp[i];
}

#define COPY_KERNELS(T, S)                                                                         \
    extern "C" __global__ void copy_##S(T* out, const T* inp, Layout src, i64 n) {                 \
        copy_gather(out, inp, src, n);                                                             \
    }                                                                                              \
    extern "C" __global__ void copy_to_strided_##S(T* out, const T* inp, Layout dst, i64 n) {      \
        copy_scatter(out, inp, dst, n);                                                            \
    }
COPY_KERNELS(float, f32)
COPY_KERNELS(bf16, bf16)
COPY_KERNELS(f16, f16)
COPY_KERNELS(double, f64)
COPY_KERNELS(i64, i64)
