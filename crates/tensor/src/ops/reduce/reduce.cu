// reduce.cu — sums and maxima of a contiguous [rows, cols] tensor, over the last dim or over rows.
// CPU counterparts: crates/tensor/src/ops/reduce.rs (sum_dims), ops/reduce_max.rs.
//   reduce_sum_last_<T>(T* out, const T* inp, int rows, int cols)         out[r] = sum_c inp[r, c]
//   reduce_max_last_<T>(T* out, i64* argmax, const T* inp, int rows, int cols)
//       out[r] = max_c inp[r, c]; argmax (may be null) = the FIRST index of the max; NaN propagates
//       grid = rows, block = 256 (any multiple of 32).
//   reduce_sum_rows_partial_<T>(float* part, const T* inp, int rows, int cols)
//       part[p, c] = sum of inp[r, c] over the p-th chunk of ceil(rows / nparts) rows
//       grid = (ceil(cols / 32), nparts), block = 256 (exactly: 32 columns x 8 row lanes)
//   reduce_sum_rows_finish_<T>(T* out, const float* part, int nparts, int cols)
//       out[c] = sum_p part[p, c]; grid = ceil(cols / 32), block = 256 (exactly)
//   Both sum their column blocks with block_col_sum (common.cuh).
//       (sum over rows = column sums, e.g. bias gradients: [rows, cols] -> [cols])
// All sums accumulate in f32 in a fixed order: results are deterministic for a given launch shape.
#include "common.cuh"

template <typename T>
__device__ void reduce_sum_last(T* out, const T* inp, int rows, int cols) {
    __shared__ float scratch[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    const T* x = inp + (i64)row * cols;
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += to_f32(x[c]);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[row] = from_f32<T>(s);
}

// (value, index) max with ties to the lower index; NaN wins (and the lowest NaN index among NaNs).
__device__ __forceinline__ void argmax_merge(float& v, int& i, float v2, int i2) {
    bool nan1 = v != v, nan2 = v2 != v2;
    bool take;
    if (nan1 || nan2) take = nan2 && (!nan1 || i2 < i);
    else take = v2 > v || (v2 == v && i2 < i);
    if (take) { v = v2; i = i2; }
}

template <typename T>
__device__ void reduce_max_last(T* out, i64* argmax, const T* inp, int rows, int cols) {
    __shared__ float sv[32];
    __shared__ int si[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    const T* x = inp + (i64)row * cols;
    float v = -KILN_INF;
    int idx = 0x7fffffff;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) argmax_merge(v, idx, to_f32(x[c]), c);
    for (int o = 16; o > 0; o >>= 1)
        argmax_merge(v, idx, __shfl_xor_sync(FULL_MASK, v, o), __shfl_xor_sync(FULL_MASK, idx, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sv[warp] = v; si[warp] = idx; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w) argmax_merge(v, idx, sv[w], si[w]);
        out[row] = from_f32<T>(v);
        if (argmax) argmax[row] = idx == 0x7fffffff ? 0 : idx;
    }
}

template <typename T>
__device__ void reduce_sum_rows_partial(float* part, const T* inp, int rows, int cols) {
    __shared__ float acc[8][33];
    int chunk = (rows + gridDim.y - 1) / gridDim.y;
    int r_begin = blockIdx.y * chunk, r_end = min(rows, r_begin + chunk);
    float t = block_col_sum(inp, r_begin, r_end, cols, acc);
    int c = blockIdx.x * 32 + threadIdx.x;
    if (threadIdx.x < 32 && c < cols) part[(i64)blockIdx.y * cols + c] = t;
}

template <typename T>
__device__ void reduce_sum_rows_finish(T* out, const float* part, int nparts, int cols) {
    __shared__ float acc[8][33];
    float t = block_col_sum(part, 0, nparts, cols, acc);
    int c = blockIdx.x * 32 + threadIdx.x;
    if (threadIdx.x < 32 && c < cols) out[c] = from_f32<T>(t);
}

#define REDUCE_KERNELS(T, S)                                                                       \
    extern "C" __global__ void reduce_sum_last_##S(T* out, const T* inp, int rows, int cols) {     \
        reduce_sum_last(out, inp, rows, cols);                                                     \
    }                                                                                              \
    extern "C" __global__ void reduce_max_last_##S(T* out, i64* argmax, const T* inp, int rows,    \
                                                   int cols) {                                     \
        reduce_max_last(out, argmax, inp, rows, cols);                                             \
    }                                                                                              \
    extern "C" __global__ void reduce_sum_rows_partial_##S(float* part, const T* inp, int rows,    \
                                                           int cols) {                             \
        reduce_sum_rows_partial(part, inp, rows, cols);                                            \
    }                                                                                              \
    extern "C" __global__ void reduce_sum_rows_finish_##S(T* out, const float* part, int nparts,   \
                                                          int cols) {                              \
        reduce_sum_rows_finish(out, part, nparts, cols);                                           \
    }
KILN_FOR_FLOATS(REDUCE_KERNELS)
