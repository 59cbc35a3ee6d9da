// attention.cu — the SIMPLE reference fused attention (FlashAttention-style online softmax, no
// tensor cores): softmax(scale * Q K^T + mask) V without materialising the [Tq, Tk] matrix.
// CPU counterpart: crates/tensor/src/ops/attention/.
//
// Layout: q [B, H, Tq, D], k / v [B, H, Tk, D], out / dq [B, H, Tq, D], dk / dv [B, H, Tk, D],
// all contiguous; lse / delta [B, H, Tq] f32. D <= 128 at run time (32/64/80/96/128 in practice).
// Masks: key j is visible to query i iff key_mask[b, j] != 0 (key_mask: [B, Tk] f32, may be null)
// and, when causal, j <= i (top-left aligned like PyTorch is_causal and the CPU op, also when Tq != Tk).
// A query that sees no key gets out = 0, lse = -inf and zero gradients.
//
//   attention_fwd_<T>(T* out, float* lse, const T* q, const T* k, const T* v, const float* key_mask,
//                     int B, int H, int Tq, int Tk, int D, float scale, int causal)
//     grid = (ceil(Tq / 16), B * H), block = 128, dynamic smem = (48 * D + 32 * (D + 1)) * 4 bytes.
//   attention_bwd_preprocess_<T>(float* delta, const T* out, const T* dout, int rows, int D)
//     delta[row] = sum_d dout * out over rows = B * H * Tq. grid = ceil(rows / 4), block = 128.
//   attention_bwd_dq_<T>(T* dq, const float* lse, const float* delta, const T* q, const T* k,
//                        const T* v, const T* dout, const float* key_mask, <dims as fwd>)
//     grid = (ceil(Tq / 8), B * H), block = 128, dynamic smem = (16 * D + 64 * (D + 1)) * 4 bytes.
//   attention_bwd_dkdv_<T>(T* dk, T* dv, const float* lse, const float* delta, const T* q,
//                          const T* k, const T* v, const T* dout, const float* key_mask, <dims>)
//     grid = (ceil(Tk / 8), B * H), block = 128, dynamic smem = (16 * D + 64 * (D + 1)) * 4 bytes.
// At D = 128 that is 41.1 KB (fwd) and 41.2 KB (bwd): under the 48 KB default, no opt-in needed.
// Backward recomputes P blockwise from lse (never stored): dS = P * (dP - delta), dQ = scale dS K,
// dK = scale dS^T Q, dV = P^T dO. Every output element is produced by exactly one block: no atomics.
//
// Attention-probability dropout: attention_fwd_drop_<T>, attention_bwd_dq_drop_<T> and
// attention_bwd_dkdv_drop_<T> take the arguments above followed by (float p_drop, u64 seed), same
// launch. P[bh, i, j] is kept iff dropout_keep(seed, (bh * Tq + i) * Tk + j, p_drop) (common.cuh,
// the contract of dropout.cu) and scaled by 1 / (1 - p_drop): out = (P * M / (1 - p)) V, lse that of
// the undropped softmax. The backward regenerates M: dP' = dP * M / (1 - p), dS = P * (dP' - delta),
// dV = (P * M / (1 - p))^T dO; delta = rowsum(dO * out) is unchanged (out already holds the
// dropout). The entry points without `_drop` are the same templates with the dropout compiled out.
#include "common.cuh"

#define ATT_WARPS 4   // warps per block (block = 128 threads)
#define ATT_TILE 32   // keys (fwd, dq) or queries (dkdv) per shared-memory tile: one per lane
#define ATT_MAXC 4    // ceil(128 / 32): dims per lane, dim d = lane + 32 * c

// Loads rows [row0, row0 + nrows) of a [rows_total, D] matrix into shared memory as f32, row stride
// `ld` (D or D + 1); rows past rows_total are zero.
template <typename T>
__device__ __forceinline__ void load_rows(float* dst, int ld, const T* src, int row0, int nrows, int rows_total, int D) {
    for (int idx = threadIdx.x; idx < nrows * D; idx += blockDim.x) {
        int r = idx / D, d = idx - r * D;
        int g = row0 + r;
        dst[r * ld + d] = g < rows_total ? to_f32(src[(i64)g * D + d]) : 0.f;
    }
}

__device__ __forceinline__ bool key_visible(const float* key_mask, int b, int Tk, int j) {
    return j < Tk && (key_mask == nullptr || key_mask[(i64)b * Tk + j] != 0.f);
}

// ------------------------------------------------------------------------------------- forward
// Each warp owns RQ query rows; lane l scores key k0 + l of the current tile against them, then the
// warp folds the tile into its running (max m, sum l, accumulator o) with the online-softmax update.
template <typename T, int RQ, bool DROP>
__device__ void attention_fwd(T* out, float* lse, const T* q, const T* k, const T* v, const float* key_mask,
                              int B, int H, int Tq, int Tk, int D, float scale, int causal, AttnDrop drop) {
    constexpr int BQ = ATT_WARPS * RQ;
    extern __shared__ float smem[];
    float* q_s = smem;                       // [BQ][D]
    float* v_s = q_s + BQ * D;               // [TILE][D]   (row jj read by all lanes: no conflict)
    float* k_s = v_s + ATT_TILE * D;         // [TILE][D+1] (lane l reads row l: padded)
    int bh = blockIdx.y, b = bh / H;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int q0 = blockIdx.x * BQ, offset = 0;  // top-left causal alignment, as the CPU op and PyTorch is_causal
    const T* qb = q + (i64)bh * Tq * D;
    const T* kb = k + (i64)bh * Tk * D;
    const T* vb = v + (i64)bh * Tk * D;
    load_rows(q_s, D, qb, q0, BQ, Tq, D);

    float m[RQ], l[RQ], o[RQ][ATT_MAXC];
#pragma unroll
    for (int r = 0; r < RQ; ++r) {
        m[r] = -KILN_INF; l[r] = 0.f;
#pragma unroll
        for (int c = 0; c < ATT_MAXC; ++c) o[r][c] = 0.f;
    }
    // causal: the last query of this block sees keys <= q0 + BQ - 1 + offset
    int k_end = causal ? min(Tk, q0 + BQ + offset) : Tk;
    for (int k0 = 0; k0 < k_end; k0 += ATT_TILE) {
        __syncthreads();  // previous tile consumed (and q_s visible on the first pass)
        load_rows(k_s, D + 1, kb, k0, ATT_TILE, Tk, D);
        load_rows(v_s, D, vb, k0, ATT_TILE, Tk, D);
        __syncthreads();
        int j = k0 + lane;
        bool kv = key_visible(key_mask, b, Tk, j);
        float s[RQ];
#pragma unroll
        for (int r = 0; r < RQ; ++r) s[r] = 0.f;
        for (int d = 0; d < D; ++d) {
            float kd = k_s[lane * (D + 1) + d];
#pragma unroll
            for (int r = 0; r < RQ; ++r) s[r] += q_s[(warp * RQ + r) * D + d] * kd;
        }
#pragma unroll
        for (int r = 0; r < RQ; ++r) {
            int i = q0 + warp * RQ + r;
            bool ok = kv && i < Tq && (!causal || j <= i + offset);
            float sc = ok ? s[r] * scale : -KILN_INF;
            float m_new = fmaxf(m[r], warp_max(sc));
            if (m_new == -KILN_INF) continue;  // warp-uniform: nothing visible yet
            float alpha = expf(m[r] - m_new);  // 0 when m[r] == -inf
            float p = ok ? expf(sc - m_new) : 0.f;
            l[r] = l[r] * alpha + warp_sum(p);
            if (DROP && ok && attn_drop_factor(drop, bh, Tq, Tk, i, j) == 0.f) p = 0.f;  // 1/(1-p) at the end
#pragma unroll
            for (int c = 0; c < ATT_MAXC; ++c) o[r][c] *= alpha;
            for (int jj = 0; jj < ATT_TILE; ++jj) {
                float pj = __shfl_sync(FULL_MASK, p, jj);
#pragma unroll
                for (int c = 0; c < ATT_MAXC; ++c) {
                    int d = lane + 32 * c;
                    if (d < D) o[r][c] += pj * v_s[jj * D + d];
                }
            }
            m[r] = m_new;
        }
    }
#pragma unroll
    for (int r = 0; r < RQ; ++r) {
        int i = q0 + warp * RQ + r;
        if (i >= Tq) continue;
        float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
        if (DROP) inv *= drop.scale;
        T* orow = out + ((i64)bh * Tq + i) * D;
#pragma unroll
        for (int c = 0; c < ATT_MAXC; ++c) {
            int d = lane + 32 * c;
            if (d < D) orow[d] = from_f32<T>(o[r][c] * inv);
        }
        if (lane == 0) lse[(i64)bh * Tq + i] = l[r] > 0.f ? m[r] + logf(l[r]) : -KILN_INF;
    }
}

// --------------------------------------------------------------------------- backward: delta
template <typename T>
__device__ void attention_bwd_preprocess(float* delta, const T* out, const T* dout, int rows, int D) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;  // warp-uniform
    float s = 0.f;
    for (int d = lane; d < D; d += 32) s += to_f32(out[(i64)row * D + d]) * to_f32(dout[(i64)row * D + d]);
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

#include "attention_bwd.cuh"

#define ATT_DIMS int B, int H, int Tq, int Tk, int D, float scale, int causal
#define ATT_KERNELS(T, S)                                                                          \
    extern "C" __global__ void attention_fwd_##S(T* out, float* lse, const T* q, const T* k,       \
                                                 const T* v, const float* key_mask, ATT_DIMS) {   \
        attention_fwd<T, 4, false>(out, lse, q, k, v, key_mask, B, H, Tq, Tk, D, scale, causal,    \
                                   AttnDrop{});                                                    \
    }                                                                                              \
    extern "C" __global__ void attention_bwd_preprocess_##S(float* delta, const T* out,            \
                                                            const T* dout, int rows, int D) {      \
        attention_bwd_preprocess(delta, out, dout, rows, D);                                       \
    }                                                                                              \
    extern "C" __global__ void attention_bwd_dq_##S(T* dq, const float* lse, const float* delta,   \
                                                    const T* q, const T* k, const T* v,            \
                                                    const T* dout, const float* key_mask,          \
                                                    ATT_DIMS) {                                    \
        attention_bwd_dq<T, 2, false>(dq, lse, delta, q, k, v, dout, key_mask, B, H, Tq, Tk, D,     \
                                      scale, causal, AttnDrop{});                                  \
    }                                                                                              \
    extern "C" __global__ void attention_bwd_dkdv_##S(T* dk, T* dv, const float* lse,              \
                                                      const float* delta, const T* q, const T* k,  \
                                                      const T* v, const T* dout,                   \
                                                      const float* key_mask, ATT_DIMS) {           \
        attention_bwd_dkdv<T, 2, false>(dk, dv, lse, delta, q, k, v, dout, key_mask, B, H, Tq, Tk,  \
                                        D, scale, causal, AttnDrop{});                             \
    }
KILN_FOR_FLOATS(ATT_KERNELS)

// The same kernels with attention-probability dropout (opt-in on the Rust side; see the header).
#define ATT_DROP_KERNELS(T, S)                                                                     \
    extern "C" __global__ void attention_fwd_drop_##S(T* out, float* lse, const T* q, const T* k,  \
                                                      const T* v, const float* key_mask, ATT_DIMS, \
                                                      float p_drop, u64 seed) {                    \
        attention_fwd<T, 4, true>(out, lse, q, k, v, key_mask, B, H, Tq, Tk, D, scale, causal,     \
                                  attn_drop(p_drop, seed));                                        \
    }                                                                                              \
    extern "C" __global__ void attention_bwd_dq_drop_##S(                                          \
        T* dq, const float* lse, const float* delta, const T* q, const T* k, const T* v,           \
        const T* dout, const float* key_mask, ATT_DIMS, float p_drop, u64 seed) {                  \
        attention_bwd_dq<T, 2, true>(dq, lse, delta, q, k, v, dout, key_mask, B, H, Tq, Tk, D,      \
                                     scale, causal, attn_drop(p_drop, seed));                      \
    }                                                                                              \
    extern "C" __global__ void attention_bwd_dkdv_drop_##S(                                        \
        T* dk, T* dv, const float* lse, const float* delta, const T* q, const T* k, const T* v,    \
        const T* dout, const float* key_mask, ATT_DIMS, float p_drop, u64 seed) {                  \
        attention_bwd_dkdv<T, 2, true>(dk, dv, lse, delta, q, k, v, dout, key_mask, B, H, Tq, Tk,   \
                                       D, scale, causal, attn_drop(p_drop, seed));                 \
    }
KILN_FOR_FLOATS(ATT_DROP_KERNELS)
