// attention_bwd.cuh — the two backward passes of attention.cu (included by it; see its header for
// the launch contract). Both recompute P = exp(scale * q.k - lse) tile by tile (and with DROP the
// dropout mask from its counters).
#pragma once

// dQ pass: each warp owns RQ query rows (like the forward); lane l handles key k0 + l of the tile.
//   dS_ij = P_ij * (dO_i . V_j - delta_i);  dQ_i = scale * sum_j dS_ij K_j
template <typename T, int RQ, bool DROP>
__device__ void attention_bwd_dq(T* dq, const float* lse, const float* delta, const T* q, const T* k,
                                 const T* v, const T* dout, const float* key_mask, int B, int H, int Tq,
                                 int Tk, int D, float scale, int causal, AttnDrop drop) {
    constexpr int BQ = ATT_WARPS * RQ;
    extern __shared__ float smem[];
    float* q_s = smem;                    // [BQ][D]
    float* do_s = q_s + BQ * D;           // [BQ][D]
    float* k_s = do_s + BQ * D;           // [TILE][D+1]
    float* v_s = k_s + ATT_TILE * (D + 1); // [TILE][D+1]
    int bh = blockIdx.y, b = bh / H;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int q0 = blockIdx.x * BQ, offset = 0;  // top-left causal alignment, as the CPU op and PyTorch is_causal
    const T* kb = k + (i64)bh * Tk * D;
    const T* vb = v + (i64)bh * Tk * D;
    load_rows(q_s, D, q + (i64)bh * Tq * D, q0, BQ, Tq, D);
    load_rows(do_s, D, dout + (i64)bh * Tq * D, q0, BQ, Tq, D);

    float lse_r[RQ], delta_r[RQ], acc[RQ][ATT_MAXC];
#pragma unroll
    for (int r = 0; r < RQ; ++r) {
        int i = q0 + warp * RQ + r;
        lse_r[r] = i < Tq ? lse[(i64)bh * Tq + i] : -KILN_INF;
        delta_r[r] = i < Tq ? delta[(i64)bh * Tq + i] : 0.f;
#pragma unroll
        for (int c = 0; c < ATT_MAXC; ++c) acc[r][c] = 0.f;
    }
    int k_end = causal ? min(Tk, q0 + BQ + offset) : Tk;
    for (int k0 = 0; k0 < k_end; k0 += ATT_TILE) {
        __syncthreads();
        load_rows(k_s, D + 1, kb, k0, ATT_TILE, Tk, D);
        load_rows(v_s, D + 1, vb, k0, ATT_TILE, Tk, D);
        __syncthreads();
        int j = k0 + lane;
        bool kv = key_visible(key_mask, b, Tk, j);
        float s[RQ], dp[RQ];
#pragma unroll
        for (int r = 0; r < RQ; ++r) { s[r] = 0.f; dp[r] = 0.f; }
        for (int d = 0; d < D; ++d) {
            float kd = k_s[lane * (D + 1) + d], vd = v_s[lane * (D + 1) + d];
#pragma unroll
            for (int r = 0; r < RQ; ++r) {
                s[r] += q_s[(warp * RQ + r) * D + d] * kd;
                dp[r] += do_s[(warp * RQ + r) * D + d] * vd;
            }
        }
#pragma unroll
        for (int r = 0; r < RQ; ++r) {
            int i = q0 + warp * RQ + r;
            bool ok = kv && i < Tq && (!causal || j <= i + offset) && lse_r[r] != -KILN_INF;
            float p = ok ? expf(s[r] * scale - lse_r[r]) : 0.f;
            if (DROP && ok) dp[r] *= attn_drop_factor(drop, bh, Tq, Tk, i, j);  // dP' = dP * M / (1 - p)
            float ds = p * (dp[r] - delta_r[r]);
            for (int jj = 0; jj < ATT_TILE; ++jj) {
                float dsj = __shfl_sync(FULL_MASK, ds, jj);
#pragma unroll
                for (int c = 0; c < ATT_MAXC; ++c) {
                    int d = lane + 32 * c;
                    if (d < D) acc[r][c] += dsj * k_s[jj * (D + 1) + d];
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RQ; ++r) {
        int i = q0 + warp * RQ + r;
        if (i >= Tq) continue;
        T* row = dq + ((i64)bh * Tq + i) * D;
#pragma unroll
        for (int c = 0; c < ATT_MAXC; ++c) {
            int d = lane + 32 * c;
            if (d < D) row[d] = from_f32<T>(scale * acc[r][c]);
        }
    }
}

// dK/dV pass: each warp owns RK key rows; lane l handles query i0 + l of the current query tile.
//   dV_j = sum_i P_ij dO_i;  dK_j = scale * sum_i dS_ij Q_i
template <typename T, int RK, bool DROP>
__device__ void attention_bwd_dkdv(T* dk, T* dv, const float* lse, const float* delta, const T* q,
                                   const T* k, const T* v, const T* dout, const float* key_mask, int B,
                                   int H, int Tq, int Tk, int D, float scale, int causal, AttnDrop drop) {
    constexpr int BK = ATT_WARPS * RK;
    extern __shared__ float smem[];
    float* k_s = smem;                     // [BK][D]
    float* v_s = k_s + BK * D;             // [BK][D]
    float* q_s = v_s + BK * D;             // [TILE][D+1]
    float* do_s = q_s + ATT_TILE * (D + 1); // [TILE][D+1]
    int bh = blockIdx.y, b = bh / H;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int k0 = blockIdx.x * BK, offset = 0;  // top-left causal alignment, as the CPU op and PyTorch is_causal
    const T* qb = q + (i64)bh * Tq * D;
    const T* dob = dout + (i64)bh * Tq * D;
    load_rows(k_s, D, k + (i64)bh * Tk * D, k0, BK, Tk, D);
    load_rows(v_s, D, v + (i64)bh * Tk * D, k0, BK, Tk, D);

    bool kv[RK];
    float dk_acc[RK][ATT_MAXC], dv_acc[RK][ATT_MAXC];
#pragma unroll
    for (int r = 0; r < RK; ++r) {
        kv[r] = key_visible(key_mask, b, Tk, k0 + warp * RK + r);
#pragma unroll
        for (int c = 0; c < ATT_MAXC; ++c) { dk_acc[r][c] = 0.f; dv_acc[r][c] = 0.f; }
    }
    // causal: query i sees key j iff i >= j - offset; the first key of this block is k0
    int i_begin = causal ? max(0, k0 - offset) : 0;
    i_begin -= i_begin % ATT_TILE;
    for (int i0 = i_begin; i0 < Tq; i0 += ATT_TILE) {
        __syncthreads();
        load_rows(q_s, D + 1, qb, i0, ATT_TILE, Tq, D);
        load_rows(do_s, D + 1, dob, i0, ATT_TILE, Tq, D);
        __syncthreads();
        int i = i0 + lane;
        float lse_i = i < Tq ? lse[(i64)bh * Tq + i] : -KILN_INF;
        float delta_i = i < Tq ? delta[(i64)bh * Tq + i] : 0.f;
        float s[RK], dp[RK];
#pragma unroll
        for (int r = 0; r < RK; ++r) { s[r] = 0.f; dp[r] = 0.f; }
        for (int d = 0; d < D; ++d) {
            float qd = q_s[lane * (D + 1) + d], gd = do_s[lane * (D + 1) + d];
#pragma unroll
            for (int r = 0; r < RK; ++r) {
                s[r] += qd * k_s[(warp * RK + r) * D + d];
                dp[r] += gd * v_s[(warp * RK + r) * D + d];
            }
        }
#pragma unroll
        for (int r = 0; r < RK; ++r) {
            int j = k0 + warp * RK + r;
            bool ok = kv[r] && i < Tq && (!causal || j <= i + offset) && lse_i != -KILN_INF;
            float p = ok ? expf(s[r] * scale - lse_i) : 0.f;
            float f = DROP && ok ? attn_drop_factor(drop, bh, Tq, Tk, i, j) : 1.f;  // M / (1 - p)
            float ds = p * (dp[r] * f - delta_i);
            float pd = p * f;  // dV takes the dropped probabilities
            for (int jj = 0; jj < ATT_TILE; ++jj) {
                float pj = __shfl_sync(FULL_MASK, pd, jj), dsj = __shfl_sync(FULL_MASK, ds, jj);
#pragma unroll
                for (int c = 0; c < ATT_MAXC; ++c) {
                    int d = lane + 32 * c;
                    if (d < D) {
                        dv_acc[r][c] += pj * do_s[jj * (D + 1) + d];
                        dk_acc[r][c] += dsj * q_s[jj * (D + 1) + d];
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RK; ++r) {
        int j = k0 + warp * RK + r;
        if (j >= Tk) continue;
        T* dk_row = dk + ((i64)bh * Tk + j) * D;
        T* dv_row = dv + ((i64)bh * Tk + j) * D;
#pragma unroll
        for (int c = 0; c < ATT_MAXC; ++c) {
            int d = lane + 32 * c;
            if (d < D) {
                dk_row[d] = from_f32<T>(scale * dk_acc[r][c]);
                dv_row[d] = from_f32<T>(dv_acc[r][c]);
            }
        }
    }
}
