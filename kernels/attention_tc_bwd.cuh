// attention_tc_bwd.cuh — the tensor-core backward passes of attention_tc.cu (included by it; see
// its header for the launch contract): the deterministic dQ and dK/dV passes, and the single-pass
// attention_bwd_tc2 (the dK/dV pass that also adds dQ with atomics). Both recompute P = exp2(S * scale * log2(e) - lse2)
// tile by tile from the saved logsumexp; dS = P * (dP - delta) with delta = rowsum(dO * O).
// Same fragment conventions as the forward (tensor_core.cuh): a warp owns 16 rows, g = lane / 4,
// c = lane % 4 and accumulator element e of n-tile t sits at row g + 8 * (e / 2), column
// 8 t + 2 c + e % 2.
#pragma once

#define TC_BK2 32  // keys (dQ pass) or queries (dK/dV pass) per streamed tile


// dQ pass: each warp owns 16 query rows (Q and dO fragments stay in registers); 32-key tiles of K
// and V stream through shared memory.  dQ_i = scale * sum_j dS_ij K_j.
// With DROP (attention-probability dropout): dS = P (dP * M / (1 - p) - delta), M regenerated.
template <typename T, int D, bool DROP = false>
__device__ void attention_bwd_dq_tc(T* dq, const float* lse, const float* delta, const T* q, const T* k,
                                    const T* v, const T* dout, const float* key_mask, int H, int Tq,
                                    int Tk, float scale, int causal, AttnDrop drop = AttnDrop{}) {
    constexpr int LDS = D + 8, KS = D / 16, NT = TC_BK2 / 8, DT = D / 8;
    extern __shared__ float smem[];
    T* sA = reinterpret_cast<T*>(smem);  // [64][LDS]: Q, then dO, then the K tile
    T* sB = sA + TC_BQ * LDS;             // [64][LDS]: the V tile
    const int bh = blockIdx.y, b = bh / H;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int q0 = blockIdx.x * TC_BQ, i0 = q0 + warp * 16 + g;
    const float sl2 = scale * 1.4426950408889634f;
    const T* kb = k + (i64)bh * Tk * D;
    const T* vb = v + (i64)bh * Tk * D;

    u32 qf[KS][4], of[KS][4];
    tc_load_tile<T, D, TC_BQ>(sA, q + (i64)bh * Tq * D, q0, Tq);
    tc_load_tile<T, D, TC_BQ>(sB, dout + (i64)bh * Tq * D, q0, Tq);
    cp_async_wait_all();
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
        ldmatrix_x4(qf[ks], sA + (warp * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);
        ldmatrix_x4(of[ks], sB + (warp * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);
    }
    float l2[2], dl[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int i = i0 + 8 * r;
        l2[r] = i < Tq ? tc_lse2(lse[(i64)bh * Tq + i]) : KILN_INF;
        dl[r] = i < Tq ? delta[(i64)bh * Tq + i] : 0.f;
    }
    float acc[DT][4];
#pragma unroll
    for (int t = 0; t < DT; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;

    const int k_end = causal ? min(Tk, q0 + TC_BQ) : Tk;
    for (int k0 = 0; k0 < k_end; k0 += TC_BK2) {
        __syncthreads();  // previous tiles (or the Q / dO staging) consumed
        tc_load_tile<T, D, TC_BK2>(sA, kb, k0, Tk);
        tc_load_tile<T, D, TC_BK2>(sB, vb, k0, Tk);
        cp_async_wait_all();
        __syncthreads();
        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[t][e] = dp[t][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
            for (int t = 0; t < NT; t += 2) {
                u32 kf[4], vf[4];
                int off = (t * 8 + (lane >> 4) * 8 + (lane & 7)) * LDS + ks * 16 + ((lane >> 3) & 1) * 8;
                ldmatrix_x4(kf, sA + off);
                ldmatrix_x4(vf, sB + off);
                mma_16816(s[t], qf[ks], kf, T{});       // S = Q K^T
                mma_16816(s[t + 1], qf[ks], kf + 2, T{});
                mma_16816(dp[t], of[ks], vf, T{});      // dP = dO V^T
                mma_16816(dp[t + 1], of[ks], vf + 2, T{});
            }
        }
#pragma unroll
        for (int t = 0; t < NT; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int r = e >> 1, i = i0 + 8 * r, j = k0 + t * 8 + 2 * c + (e & 1);
                float p = tc_visible(key_mask, b, Tq, Tk, i, j, causal) ? exp2f(s[t][e] * sl2 - l2[r]) : 0.f;
                if constexpr (DROP) dp[t][e] *= attn_drop_factor(drop, bh, Tq, Tk, i, j);
                s[t][e] = p * (dp[t][e] - dl[r]);  // dS
            }
        }
        // dQ += dS K: dS (16 x 32 keys) from registers, K (32 x D) through ldmatrix.trans
#pragma unroll
        for (int kk = 0; kk < TC_BK2 / 16; ++kk) {
            u32 pf[4];
            tc_pack_a<T, NT>(pf, s, kk);
#pragma unroll
            for (int t = 0; t < DT; t += 2) {
                u32 kf[4];
                ldmatrix_x4_trans(kf, sA + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LDS + (t + (lane >> 4)) * 8);
                mma_16816(acc[t], pf, kf, T{});
                mma_16816(acc[t + 1], pf, kf + 2, T{});
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int i = i0 + 8 * r;
        if (i >= Tq) continue;
        T* row = dq + ((i64)bh * Tq + i) * D;
#pragma unroll
        for (int t = 0; t < DT; ++t)
            *reinterpret_cast<u32*>(row + t * 8 + 2 * c) = pack2(acc[t][2 * r] * scale, acc[t][2 * r + 1] * scale, T{});
    }
}

// attention_bwd_tc2 (attention_bwd_dkdv_tc below with DQ): the backward in one pass over the keys
// (FlashAttention-2's), 5 GEMMs per tile instead of the 7 of the dQ + dK/dV passes. A block owns
// 64 keys (16 per warp) and streams
// 32-query tiles: S^T = K Q^T and dP^T = V dO^T recompute P^T and dS^T, dV += P^T dO and
// dK += dS^T Q stay in registers, and dQ += dS K for the tile is computed from dS^T staged in shared
// memory (each warp a quarter of the D columns) and added into an f32 dq_accum with atomics, which
// a second kernel scales and converts (attention_bwd_dq_convert). The atomics make dQ's sum order,
// and so its last bits, run-dependent: the two-pass backward is the deterministic one.
//   attention_bwd_tc2_d{64,128}_{bf16,f16}(float* dq_accum, T* dk, T* dv, const float* lse,
//       const float* delta, const T* q, const T* k, const T* v, const T* dout, const float* key_mask,
//       <dims as fwd>)   dq_accum [B, H, Tq, D] f32 zeroed first;
//     grid = (ceil(Tk / 64), B * H), block = 128, dynamic smem = (2 * 64 + 2 * 32) * (D + 8) * 2
//     + 2 * 32 * 4 + 64 * 40 * 2 bytes (33 KB at D = 64, 57.6 KB at D = 128).
//   attention_bwd_dq_convert_{bf16,f16}(T* dq, const float* dq_accum, i64 n, float scale):
//     dq = scale * dq_accum; 1-D grid-stride, 256 threads.
#define TC2_LDP (TC_BK2 + 8)  // row stride of the staged dS^T tile [64 keys][32 queries]


// dQ (32 queries x this warp's D / 4 columns) += dS (32 x 64 keys) K (64 x D) for the query tile
// at qt, added into dq (f32 [Tq, D] of this head) with atomics: A from the staged dS^T through
// ldmatrix.trans, B from K through ldmatrix.trans.
template <typename T, int D>
__device__ __forceinline__ void tc_dq_tile_add(float* dq, const T* sS, const T* sK, int qt, int Tq, int warp, int lane) {
    constexpr int LDS = D + 8, NQ = D / 8 / TC_WARPS;
    const int g = lane >> 2, c = lane & 3;
    float acc[2][NQ][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int t = 0; t < NQ; ++t) acc[mt][t][0] = acc[mt][t][1] = acc[mt][t][2] = acc[mt][t][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < TC_BQ / 16; ++ks) {
        u32 af[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)  // matrix i = lane / 8: keys + (i / 2) * 8, queries + (i % 2) * 8
            ldmatrix_x4_trans(af[mt], sS + (ks * 16 + (lane >> 4) * 8 + (lane & 7)) * TC2_LDP + mt * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
        for (int t = 0; t < NQ; t += 2) {
            u32 kf[4];
            ldmatrix_x4_trans(kf, sK + (ks * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LDS + (warp * NQ + t + (lane >> 4)) * 8);
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                mma_16816(acc[mt][t], af[mt], kf, T{});
                mma_16816(acc[mt][t + 1], af[mt], kf + 2, T{});
            }
        }
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            int i = qt + mt * 16 + g + 8 * r;
            if (i >= Tq) continue;
            float* row = dq + (i64)i * D + warp * NQ * 8 + 2 * c;
#pragma unroll
            for (int t = 0; t < NQ; ++t) {
                red_add_f32(row + t * 8, acc[mt][t][2 * r]);
                red_add_f32(row + t * 8 + 1, acc[mt][t][2 * r + 1]);
            }
        }
}

// dK/dV pass: each warp owns 16 key rows (K and V of the block's 64 keys stay in shared memory);
// 32-query tiles of Q and dO stream through.  dV_j = sum_i P_ij dO_i;  dK_j = scale sum_i dS_ij Q_i.
// Works on the transposed scores: S^T = K Q^T (16 keys x 32 queries per warp).
// With DQ (attention_bwd_tc2 below) it also adds the tile's dQ = dS K into dq_accum. With DROP
// (attention-probability dropout; not combined with DQ) dV takes P^T M / (1 - p) (tc_bwd_pt_dst).
template <typename T, int D, bool DQ, bool DROP = false>
__device__ void attention_bwd_dkdv_tc(float* dq_accum, T* dk, T* dv, const float* lse, const float* delta, const T* q,
                                      const T* k, const T* v, const T* dout, const float* key_mask, int H,
                                      int Tq, int Tk, float scale, int causal, AttnDrop drop = AttnDrop{}) {
    static_assert(!(DQ && DROP), "the single-pass backward has no dropout variant");
    constexpr int LDS = D + 8, KS = D / 16, NT = TC_BK2 / 8, DT = D / 8;
    extern __shared__ float smem[];
    T* sK = reinterpret_cast<T*>(smem);   // [64][LDS]
    T* sV = sK + TC_BQ * LDS;              // [64][LDS]
    T* sQ = sV + TC_BQ * LDS;              // [32][LDS]
    T* sO = sQ + TC_BK2 * LDS;             // [32][LDS]: dO
    float* sL = reinterpret_cast<float*>(sO + TC_BK2 * LDS);  // [32]: lse2 of the query tile
    float* sD = sL + TC_BK2;                                   // [32]: delta
    T* sS = reinterpret_cast<T*>(sD + TC_BK2);                 // DQ: [64][TC2_LDP], dS^T of the tile
    const int bh = blockIdx.y, b = bh / H;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int k0 = blockIdx.x * TC_BQ, j0 = k0 + warp * 16 + g;
    const float sl2 = scale * 1.4426950408889634f;
    const T* qb = q + (i64)bh * Tq * D;
    const T* ob = dout + (i64)bh * Tq * D;
    tc_load_tile<T, D, TC_BQ>(sK, k + (i64)bh * Tk * D, k0, Tk);
    tc_load_tile<T, D, TC_BQ>(sV, v + (i64)bh * Tk * D, k0, Tk);

    float dka[DT][4], dva[DT][4];
#pragma unroll
    for (int t = 0; t < DT; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[t][e] = dva[t][e] = 0.f;

    // causal (top-left): queries before k0 see none of this block's keys
    const int i_start = causal ? (k0 / TC_BK2) * TC_BK2 : 0;
    for (int qt = i_start; qt < Tq; qt += TC_BK2) {
        __syncthreads();  // previous query tile (and its staged dS^T) consumed
        tc_load_tile<T, D, TC_BK2>(sQ, qb, qt, Tq);
        tc_load_tile<T, D, TC_BK2>(sO, ob, qt, Tq);
        if (threadIdx.x < TC_BK2) {
            int i = qt + threadIdx.x;
            sL[threadIdx.x] = i < Tq ? tc_lse2(lse[(i64)bh * Tq + i]) : KILN_INF;
            sD[threadIdx.x] = i < Tq ? delta[(i64)bh * Tq + i] : 0.f;
        }
        cp_async_wait_all();
        __syncthreads();
        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[t][e] = dp[t][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
            u32 kf[4], vf[4];  // A fragments: this warp's 16 keys of K and of V
            ldmatrix_x4(kf, sK + (warp * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);
            ldmatrix_x4(vf, sV + (warp * 16 + (lane & 15)) * LDS + ks * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int t = 0; t < NT; t += 2) {
                u32 qf[4], of[4];
                int off = (t * 8 + (lane >> 4) * 8 + (lane & 7)) * LDS + ks * 16 + ((lane >> 3) & 1) * 8;
                ldmatrix_x4(qf, sQ + off);
                ldmatrix_x4(of, sO + off);
                mma_16816(s[t], kf, qf, T{});       // S^T = K Q^T
                mma_16816(s[t + 1], kf, qf + 2, T{});
                mma_16816(dp[t], vf, of, T{});      // dP^T = V dO^T
                mma_16816(dp[t + 1], vf, of + 2, T{});
            }
        }
        tc_bwd_pt_dst<NT, DROP>(s, dp, true, key_mask, b, Tq, Tk, qt, j0, c, causal, sl2, sL, sD, drop, bh);  // s: P^T, dp: dS^T
        if constexpr (DQ) {  // stage dS^T (16-bit, as the mma consumes it) for the block's dQ product
#pragma unroll
            for (int t = 0; t < NT; ++t)
#pragma unroll
                for (int r = 0; r < 2; ++r)
                    *reinterpret_cast<u32*>(sS + (warp * 16 + g + 8 * r) * TC2_LDP + t * 8 + 2 * c) = pack2(dp[t][2 * r], dp[t][2 * r + 1], T{});
        }
        // dV += P^T dO and dK += dS^T Q: A from registers, B (queries x D) through ldmatrix.trans
#pragma unroll
        for (int kk = 0; kk < TC_BK2 / 16; ++kk) {
            u32 pf[4], sf[4];
            tc_pack_a<T, NT>(pf, s, kk);
            tc_pack_a<T, NT>(sf, dp, kk);
#pragma unroll
            for (int t = 0; t < DT; t += 2) {
                u32 of[4], qf[4];
                int off = (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LDS + (t + (lane >> 4)) * 8;
                ldmatrix_x4_trans(of, sO + off);
                ldmatrix_x4_trans(qf, sQ + off);
                mma_16816(dva[t], pf, of, T{});
                mma_16816(dva[t + 1], pf, of + 2, T{});
                mma_16816(dka[t], sf, qf, T{});
                mma_16816(dka[t + 1], sf, qf + 2, T{});
            }
        }
        if constexpr (DQ) {
            __syncthreads();  // every warp's dS^T rows are staged
            tc_dq_tile_add<T, D>(dq_accum + (i64)bh * Tq * D, sS, sK, qt, Tq, warp, lane);
        }
    }
    cp_async_wait_all();  // the K / V copies, when no query tile ran
    tc_store_dkdv<T, D>(dk, dv, dka, dva, bh, Tk, j0, c, scale);
}

template <typename T>
__device__ void attention_bwd_dq_convert(T* dq, const float* dq_accum, i64 n, float scale) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        dq[i] = from_f32<T>(dq_accum[i] * scale);
}
