// attention_tc.cu — tensor-core fused attention, forward and backward (sm_80+, bf16 / f16 in, f32
// accumulation):
// the `tc` variant of attention.cu (which stays the simple reference variant). FlashAttention-2
// structure: a block owns 64 query rows (4 warps x 16), streams 64-key tiles of K and V through
// shared memory (cp.async), computes S = Q K^T and O += P V with mma.sync m16n8k16 (operands by
// ldmatrix; V through ldmatrix.trans), and keeps the online softmax (running max m, partial sums l)
// in registers with exp2. P never leaves the registers: the S accumulators are re-packed as the A
// operand of the P V product. No [Tq, Tk] matrix exists anywhere.
//
// Same layout, masks and outputs as attention_fwd in attention.cu: q [B, H, Tq, D], k / v
// [B, H, Tk, D], out [B, H, Tq, D] contiguous, lse [B, H, Tq] f32 (natural log; -inf and out = 0
// for a query that sees no key), key_mask [B, Tk] f32 or null, causal top-left aligned.
// Requirements: D = 64 or 128 (the template parameter), q/k/v 16-byte aligned (rows are 128 or
// 256 bytes, so every row is). Any Tq, Tk (partial tiles are zero-filled and masked).
//
//   attention_fwd_tc_d{64,128}_{bf16,f16}(T* out, float* lse, const T* q, const T* k, const T* v,
//                                           const float* key_mask, int B, int H, int Tq, int Tk,
//                                           int D, float scale, int causal)
//     grid = (ceil(Tq / 64), B * H), block = 128,
//     dynamic smem = 2 * 64 * (D + 8) * 2 bytes (18 KB at D = 64, 34 KB at D = 128).
//   Backward (attention_tc_bwd.cuh; delta from attention_bwd_preprocess_<T> of attention.cu first):
//   attention_bwd_dq_tc_d{64,128}_{bf16,f16}(T* dq, const float* lse, const float* delta,
//       const T* q, const T* k, const T* v, const T* dout, const float* key_mask, <dims as fwd>)
//     grid = (ceil(Tq / 64), B * H), block = 128, dynamic smem = 2 * 64 * (D + 8) * 2 bytes
//     (as the forward: 18 KB at D = 64, 34 KB at D = 128).
//   attention_bwd_dkdv_tc_d{64,128}_{bf16,f16}(T* dk, T* dv, const float* lse, const float* delta,
//       const T* q, const T* k, const T* v, const T* dout, const float* key_mask, <dims as fwd>)
//     grid = (ceil(Tk / 64), B * H), block = 128, dynamic smem = (2 * 64 + 2 * 32) * (D + 8) * 2
//     + 2 * 32 * 4 bytes (27.9 KB at D = 64, 52.5 KB at D = 128: above 48 KB, opt in with
//     cudaFuncSetAttribute(MaxDynamicSharedMemorySize)).
//   Each output element is written by exactly one block (no atomics): deterministic.
//   With attention-probability dropout (the contract of attention.cu's `_drop` kernels: P[bh, i, j]
//   kept iff dropout_keep(seed, (bh * Tq + i) * Tk + j, p_drop), scaled by 1 / (1 - p_drop)):
//   attention_fwd_tc_drop_d*, attention_bwd_dq_tc_drop_d*, attention_bwd_dkdv_tc_drop_d* take the
//   arguments above followed by (float p_drop, u64 seed); same launches.
#include "common.cuh"
#include "tensor_core.cuh"
#include "attention_tile.cuh"

#define TC_WARPS 4
#define TC_BQ 64  // query rows per block (16 per warp)
#define TC_BK 64  // keys per tile

// Copies rows [row0, row0 + ROWS) of a [rows, D] 16-bit matrix to shared memory (row stride
// D + 8), zero-filling rows past `rows`, with 16-byte cp.async copies (one commit group).
template <typename T, int D, int ROWS = TC_BK>
__device__ __forceinline__ void tc_load_tile(T* dst, const T* src, int row0, int rows) {
    constexpr int LDS = D + 8, CHUNKS = D / 8;  // 16-byte chunks per row
    for (int idx = threadIdx.x; idx < ROWS * CHUNKS; idx += TC_WARPS * 32) {
        int r = idx / CHUNKS, ch = idx - r * CHUNKS;
        int g = row0 + r;
        bool ok = g < rows;
        cp_async16(dst + r * LDS + ch * 8, src + (ok ? (i64)g * D + ch * 8 : 0), ok);
    }
    cp_async_commit();
}

template <typename T, int D, bool DROP = false>
__device__ void attention_fwd_tc(T* out, float* lse, const T* q, const T* k, const T* v, const float* key_mask,
                                 int B, int H, int Tq, int Tk, float scale, int causal, AttnDrop drop = AttnDrop{}) {
    constexpr int LDS = D + 8;       // padded row stride (elements): conflict-free ldmatrix
    constexpr int KS = D / 16;       // k-steps of Q K^T
    constexpr int NT = TC_BK / 8;    // 8-key n-tiles of S
    constexpr int DT = D / 8;        // 8-dim n-tiles of O
    extern __shared__ float smem[];
    T* sK = reinterpret_cast<T*>(smem);  // [BK][LDS]; holds the Q tile before the loop
    T* sV = sK + TC_BK * LDS;             // [BK][LDS]
    const int bh = blockIdx.y, b = bh / H;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int q0 = blockIdx.x * TC_BQ;
    const T* qb = q + (i64)bh * Tq * D;
    const T* kb = k + (i64)bh * Tk * D;
    const T* vb = v + (i64)bh * Tk * D;
    const float sl2 = scale * 1.4426950408889634f;  // scale * log2(e): softmax in base 2

    // Q fragments of this warp's 16 rows, kept in registers for the whole loop.
    u32 qf[KS][4];
    tc_load_tile<T, D>(sK, qb, q0, Tq);
    cp_async_wait_all();
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
        ldmatrix_x4(qf[ks], sK + (warp * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);

    // rows of this thread: i0 = q0 + warp*16 + g and i0 + 8
    const int i0 = q0 + warp * 16 + g;
    float m[2] = {-KILN_INF, -KILN_INF}, l[2] = {0.f, 0.f};
    float o[DT][4];
#pragma unroll
    for (int t = 0; t < DT; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;

    const int k_end = causal ? min(Tk, q0 + TC_BQ) : Tk;
    for (int k0 = 0; k0 < k_end; k0 += TC_BK) {
        __syncthreads();  // every warp is done with the previous tile (and with the Q tile)
        tc_load_tile<T, D>(sK, kb, k0, Tk);
        tc_load_tile<T, D>(sV, vb, k0, Tk);
        cp_async_wait_all();
        __syncthreads();

        // S = Q K^T for this warp's 16 rows x 64 keys
        float s[NT][4];
#pragma unroll
        for (int t = 0; t < NT; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
            for (int t = 0; t < NT; t += 2) {
                u32 kf[4];  // b0, b1 of n-tile t, then of n-tile t + 1
                ldmatrix_x4(kf, sK + (t * 8 + (lane >> 4) * 8 + (lane & 7)) * LDS + ks * 16 + ((lane >> 3) & 1) * 8);
                mma_16816(s[t], qf[ks], kf, T{});
                mma_16816(s[t + 1], qf[ks], kf + 2, T{});
            }
        }

        // mask, scale to base 2, online softmax (a row's 64 values live in the 4 threads of a quad)
        tc_softmax_step<NT, DT>(s, o, m, l, true, key_mask, b, Tq, Tk, i0, k0, c, causal, sl2);
        if constexpr (DROP) tc_drop_p<NT>(s, drop, bh, Tq, Tk, i0, k0, c);  // l keeps the undropped sum

        // O += P V: P (16 x 64) from the S registers, V (64 x D) through ldmatrix.trans
#pragma unroll
        for (int kk = 0; kk < TC_BK / 16; ++kk) {
            u32 pf[4];
            tc_pack_a<T, NT>(pf, s, kk);
#pragma unroll
            for (int t = 0; t < DT; t += 2) {
                u32 vf[4];  // b0, b1 of dim tile t, then of dim tile t + 1
                ldmatrix_x4_trans(vf, sV + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LDS + (t + (lane >> 4)) * 8);
                mma_16816(o[t], pf, vf, T{});
                mma_16816(o[t + 1], pf, vf + 2, T{});
            }
        }
    }

    // finish: full row sums across the quad, normalise, store
    tc_store_rows<T, D>(out, lse, o, m, l, bh, Tq, i0, c, DROP ? drop.scale : 1.f);
}

// ---------------------------------------------------------------------------------------------
// attention_fwd_tc2: the same contract as attention_fwd_tc (identical outputs up to rounding), laid
// out as FlashAttention-2 lays out its forward, to use the tensor cores better:
//  - 128 query rows per block and 32 per warp (two m16 tiles): every K and V fragment a warp reads
//    from shared memory feeds two mma instead of one (half the ldmatrix traffic per FLOP), and each
//    K / V tile is read from global memory once per 128 queries instead of per 64;
//  - loads overlap the math: the V tile streams in while S = Q K^T and the softmax run, and the
//    next K tile while O += P V runs (one buffer each; two barriers per tile order the reuse);
//  - masking is evaluated only on tiles that need it (key mask, the last partial tile, tiles that
//    cross the causal diagonal); a warp skips a tile that its causal rows cannot see;
//  - causal blocks run longest first (the grid is walked in reverse), which evens out the tail.
// D = 64 keeps the Q fragments in registers; D = 128 re-reads them from shared memory per tile
// (registers go to the 32 x 128 output accumulator).
//   attention_fwd_tc2_d{64,128}_{bf16,f16}(<the arguments of attention_fwd_tc>)
//     grid = (ceil(Tq / 128), B * H), block = 128,
//     dynamic smem = (128 + 2 * TC2_BK) * (D + 8) * 2 bytes (36 KB at D = 64, 68 KB at D = 128:
//     above 48 KB, opt in with cudaFuncSetAttribute(MaxDynamicSharedMemorySize)).
#define TC2_BQ 128  // query rows per block (32 per warp)
template <typename T, int D, int TC2_BK = (D > 64 ? 32 : 64), bool QREG = (D <= 64)>
__device__ void attention_fwd_tc2(T* out, float* lse, const T* q, const T* k, const T* v, const float* key_mask,
                                  int B, int H, int Tq, int Tk, float scale, int causal) {
    constexpr int LDS = D + 8, KS = D / 16, NT = TC2_BK / 8, DT = D / 8, MT = 2;
    extern __shared__ float smem[];
    T* sQ = reinterpret_cast<T*>(smem);  // [BQ][LDS]
    T* sK = sQ + TC2_BQ * LDS;            // [BK][LDS]
    T* sV = sK + TC2_BK * LDS;            // [BK][LDS]
    const int bh = blockIdx.y, b = bh / H;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int qblk = causal ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
    const int q0 = qblk * TC2_BQ, r0 = q0 + warp * 32;  // the block's and this warp's first row
    const T* kb = k + (i64)bh * Tk * D;
    const T* vb = v + (i64)bh * Tk * D;
    const float sl2 = scale * 1.4426950408889634f;

    tc_load_tile<T, D, TC2_BQ>(sQ, q + (i64)bh * Tq * D, q0, Tq);
    tc_load_tile<T, D, TC2_BK>(sK, kb, 0, Tk);
    u32 qf[QREG ? MT : 1][QREG ? KS : 1][4];

    float m[MT][2], l[MT][2], o[MT][DT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        m[mt][0] = m[mt][1] = -KILN_INF;
        l[mt][0] = l[mt][1] = 0.f;
#pragma unroll
        for (int t = 0; t < DT; ++t) o[mt][t][0] = o[mt][t][1] = o[mt][t][2] = o[mt][t][3] = 0.f;
    }

    const int k_end = causal ? min(Tk, q0 + TC2_BQ) : Tk;
    for (int k0 = 0; k0 < k_end; k0 += TC2_BK) {
        cp_async_wait_all();  // this thread's part of the K tile (and of Q, first time) landed
        __syncthreads();      // ... every thread's; and every warp is done with the previous V tile
        tc_load_tile<T, D, TC2_BK>(sV, vb, k0, Tk);  // V streams in during S and the softmax
        if (QREG && k0 == 0) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int ks = 0; ks < KS; ++ks)
                    ldmatrix_x4(qf[QREG ? mt : 0][QREG ? ks : 0], sQ + (warp * 32 + mt * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);
        }
        // some row of this warp may see some key of the tile (warp-uniform)
        const bool active = !causal || k0 <= r0 + 31;
        float s[MT][NT][4];
        if (active) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int t = 0; t < NT; ++t) s[mt][t][0] = s[mt][t][1] = s[mt][t][2] = s[mt][t][3] = 0.f;
            // S = Q K^T: each K fragment feeds both m-tiles
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {
                u32 qa[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    if constexpr (QREG) {
#pragma unroll
                        for (int e = 0; e < 4; ++e) qa[mt][e] = qf[QREG ? mt : 0][QREG ? ks : 0][e];
                    } else {
                        ldmatrix_x4(qa[mt], sQ + (warp * 32 + mt * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);
                    }
                }
#pragma unroll
                for (int t = 0; t < NT; t += 2) {
                    u32 kf[4];
                    ldmatrix_x4(kf, sK + (t * 8 + (lane >> 4) * 8 + (lane & 7)) * LDS + ks * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_16816(s[mt][t], qa[mt], kf, T{});
                        mma_16816(s[mt][t + 1], qa[mt], kf + 2, T{});
                    }
                }
            }
            // scale to base 2 (masking only where a tile needs it), then the online softmax
            const bool need_mask = key_mask != nullptr || k0 + TC2_BK > Tk || (causal && k0 + TC2_BK - 1 > r0);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                tc_softmax_step<NT, DT>(s[mt], o[mt], m[mt], l[mt], need_mask, key_mask, b, Tq, Tk, r0 + mt * 16 + g, k0, c, causal, sl2);
        }
        cp_async_wait_all();  // this thread's part of the V tile landed
        __syncthreads();      // ... every thread's; and every warp is done with the K tile
        if (k0 + TC2_BK < k_end) tc_load_tile<T, D, TC2_BK>(sK, kb, k0 + TC2_BK, Tk);  // during P V
        if (active) {
            // O += P V: P from the S registers; each V fragment feeds both m-tiles
#pragma unroll
            for (int kk = 0; kk < TC2_BK / 16; ++kk) {
                u32 pf[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) tc_pack_a<T, NT>(pf[mt], s[mt], kk);
#pragma unroll
                for (int t = 0; t < DT; t += 2) {
                    u32 vf[4];
                    ldmatrix_x4_trans(vf, sV + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LDS + (t + (lane >> 4)) * 8);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_16816(o[mt][t], pf[mt], vf, T{});
                        mma_16816(o[mt][t + 1], pf[mt], vf + 2, T{});
                    }
                }
            }
        }
    }
    cp_async_wait_all();  // nothing may be in flight into shared memory when the block exits (Tk = 0)

    // finish: full row sums across the quad, normalise, store
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) tc_store_rows<T, D>(out, lse, o[mt], m[mt], l[mt], bh, Tq, r0 + mt * 16 + g, c);
}

#include "attention_tc_bwd.cuh"

#define ATT_TC_KERNEL(T, S, DIM)                                                                    \
    extern "C" __global__ void __launch_bounds__(128)                                              \
        attention_fwd_tc_d##DIM##_##S(T* out, float* lse, const T* q, const T* k, const T* v,      \
                                      const float* key_mask, int B, int H, int Tq, int Tk, int D,  \
                                      float scale, int causal) {                                   \
        attention_fwd_tc<T, DIM>(out, lse, q, k, v, key_mask, B, H, Tq, Tk, scale, causal);        \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128)                                              \
        attention_fwd_tc2_d##DIM##_##S(T* out, float* lse, const T* q, const T* k, const T* v,     \
                                       const float* key_mask, int B, int H, int Tq, int Tk, int D, \
                                       float scale, int causal) {                                  \
        attention_fwd_tc2<T, DIM>(out, lse, q, k, v, key_mask, B, H, Tq, Tk, scale, causal);       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) attention_bwd_tc2_d##DIM##_##S(              \
        float* dq_accum, T* dk, T* dv, const float* lse, const float* delta, const T* q,           \
        const T* k, const T* v, const T* dout, const float* key_mask, int B, int H, int Tq,        \
        int Tk, int D, float scale, int causal) {                                                  \
        attention_bwd_dkdv_tc<T, DIM, true>(dq_accum, dk, dv, lse, delta, q, k, v, dout, key_mask, \
                                            H, Tq, Tk, scale, causal);                             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) attention_bwd_dq_tc_d##DIM##_##S(            \
        T* dq, const float* lse, const float* delta, const T* q, const T* k, const T* v,           \
        const T* dout, const float* key_mask, int B, int H, int Tq, int Tk, int D, float scale,    \
        int causal) {                                                                              \
        attention_bwd_dq_tc<T, DIM>(dq, lse, delta, q, k, v, dout, key_mask, H, Tq, Tk, scale,     \
                                    causal);                                                       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) attention_bwd_dkdv_tc_d##DIM##_##S(          \
        T* dk, T* dv, const float* lse, const float* delta, const T* q, const T* k, const T* v,    \
        const T* dout, const float* key_mask, int B, int H, int Tq, int Tk, int D, float scale,    \
        int causal) {                                                                              \
        attention_bwd_dkdv_tc<T, DIM, false>(nullptr, dk, dv, lse, delta, q, k, v, dout, key_mask, \
                                             H, Tq, Tk, scale, causal);                            \
    }
ATT_TC_KERNEL(bf16, bf16, 64)
ATT_TC_KERNEL(bf16, bf16, 128)
ATT_TC_KERNEL(f16, f16, 64)
ATT_TC_KERNEL(f16, f16, 128)

// The default (tc) forward and two-pass backward with attention-probability dropout (see the header).
#define ATT_TC_DIMS int B, int H, int Tq, int Tk, int D, float scale, int causal, float p_drop, u64 seed
#define ATT_TC_DROP_KERNEL(T, S, DIM)                                                               \
    extern "C" __global__ void __launch_bounds__(128) attention_fwd_tc_drop_d##DIM##_##S(          \
        T* out, float* lse, const T* q, const T* k, const T* v, const float* key_mask,             \
        ATT_TC_DIMS) {                                                                             \
        attention_fwd_tc<T, DIM, true>(out, lse, q, k, v, key_mask, B, H, Tq, Tk, scale, causal,   \
                                       attn_drop(p_drop, seed));                                   \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) attention_bwd_dq_tc_drop_d##DIM##_##S(       \
        T* dq, const float* lse, const float* delta, const T* q, const T* k, const T* v,           \
        const T* dout, const float* key_mask, ATT_TC_DIMS) {                                       \
        attention_bwd_dq_tc<T, DIM, true>(dq, lse, delta, q, k, v, dout, key_mask, H, Tq, Tk,      \
                                          scale, causal, attn_drop(p_drop, seed));                 \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) attention_bwd_dkdv_tc_drop_d##DIM##_##S(     \
        T* dk, T* dv, const float* lse, const float* delta, const T* q, const T* k, const T* v,    \
        const T* dout, const float* key_mask, ATT_TC_DIMS) {                                       \
        attention_bwd_dkdv_tc<T, DIM, false, true>(nullptr, dk, dv, lse, delta, q, k, v, dout,     \
                                                   key_mask, H, Tq, Tk, scale, causal,             \
                                                   attn_drop(p_drop, seed));                       \
    }
ATT_TC_DROP_KERNEL(bf16, bf16, 64)
ATT_TC_DROP_KERNEL(bf16, bf16, 128)
ATT_TC_DROP_KERNEL(f16, f16, 64)
ATT_TC_DROP_KERNEL(f16, f16, 128)
#define ATT_DQ_CONVERT(T, S)                                                                       \
    extern "C" __global__ void attention_bwd_dq_convert_##S(T* dq, const float* dq_accum, i64 n,   \
                                                          float scale) {                         \
        attention_bwd_dq_convert<T>(dq, dq_accum, n, scale);                                       \
    }
ATT_DQ_CONVERT(bf16, bf16)
ATT_DQ_CONVERT(f16, f16)
