// embedding.cu — row gather (forward) and a DETERMINISTIC scatter-add (backward) for embeddings.
// CPU counterpart: crates/tensor/src/ops/index_select.rs (embedding = index_select on dim 0).
//   embedding_fwd_<T>(T* out, const T* weight, const i64* ids, int n_ids, int dim, int vocab)
//       out[i, :] = weight[ids[i], :]; an id outside [0, vocab) yields a NaN row (the host validates
//       ids; NaN makes a miss visible). grid = n_ids, block = 128.
//   embedding_bwd_<T>(T* dweight, const T* dout, const i64* ids, int n_ids, int dim, int vocab,
//                     int rows_per_block)
//       dweight[v, :] = sum over i with ids[i] == v of dout[i, :], summed in increasing i (written,
//       not accumulated; rows no id points at become 0).
//       grid = ceil(vocab / rows_per_block), block = 256 (multiple of 32),
//       dynamic smem = 4 * (rows_per_block * dim rounded up to even) + 8 * blockDim + 4 * 32 bytes.
// How the backward stays deterministic without sorting or atomics: block b owns vocabulary rows
// [b * R, (b + 1) * R) and keeps their f32 accumulators in shared memory. It scans ALL ids in tiles
// of blockDim; a warp ballot marks the ids that fall in its rows, and the block walks those hits in
// increasing index order, thread t adding columns t, t + blockDim, ... So every dweight element is
// summed by one thread in one fixed order.
#include "common.cuh"

template <typename T>
__device__ void embedding_fwd(T* out, const T* weight, const i64* ids, int n_ids, int dim, int vocab) {
    int i = blockIdx.x;
    if (i >= n_ids) return;
    i64 id = ids[i];
    T* o = out + (i64)i * dim;
    if (id < 0 || id >= vocab) {
        for (int d = threadIdx.x; d < dim; d += blockDim.x) o[d] = from_f32<T>(KILN_NAN);
        return;
    }
    const T* w = weight + id * dim;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) o[d] = w[d];
}

template <typename T>
__device__ void embedding_bwd(T* dweight, const T* dout, const i64* ids, int n_ids, int dim, int vocab, int R) {
    extern __shared__ float smem[];
    float* acc = smem;                                   // [R][dim]
    i64* tile_ids = (i64*)(acc + (((i64)R * dim + 1) & ~1ll)); // [blockDim], 8-byte aligned
    u32* hit_mask = (u32*)(tile_ids + blockDim.x);       // [blockDim / 32]
    int v0 = blockIdx.x * R, v1 = min(vocab, v0 + R);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int k = threadIdx.x; k < R * dim; k += blockDim.x) acc[k] = 0.f;
    for (int t0 = 0; t0 < n_ids; t0 += blockDim.x) {
        __syncthreads();  // previous tile consumed (and acc zeroed on the first pass)
        int t = t0 + threadIdx.x;
        i64 id = t < n_ids ? ids[t] : -1;
        tile_ids[threadIdx.x] = id;
        u32 m = __ballot_sync(FULL_MASK, id >= v0 && id < v1);
        if (lane == 0) hit_mask[warp] = m;
        __syncthreads();
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) {
            u32 bits = hit_mask[w];
            while (bits) {                        // ascending bit order = ascending id index
                int bit = __ffs(bits) - 1;
                bits &= bits - 1;
                int k = w * 32 + bit;
                int row = (int)(tile_ids[k] - v0);
                const T* g = dout + (i64)(t0 + k) * dim;
                for (int d = threadIdx.x; d < dim; d += blockDim.x) acc[row * dim + d] += to_f32(g[d]);
            }
        }
    }
    __syncthreads();
    for (int k = threadIdx.x; k < (v1 - v0) * dim; k += blockDim.x)
        dweight[(i64)v0 * dim + k] = from_f32<T>(acc[k]);
}

#define EMB_KERNELS(T, S)                                                                          \
    extern "C" __global__ void embedding_fwd_##S(T* out, const T* weight, const i64* ids,          \
                                                 int n_ids, int dim, int vocab) {                  \
        embedding_fwd(out, weight, ids, n_ids, dim, vocab);                                        \
    }                                                                                              \
    extern "C" __global__ void embedding_bwd_##S(T* dweight, const T* dout, const i64* ids,        \
                                                 int n_ids, int dim, int vocab,                    \
                                                 int rows_per_block) {                             \
        embedding_bwd(dweight, dout, ids, n_ids, dim, vocab, rows_per_block);                      \
    }
KILN_FOR_FLOATS(EMB_KERNELS)
