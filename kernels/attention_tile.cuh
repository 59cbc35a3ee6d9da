// attention_tile.cuh — the per-tile pieces shared by the tensor-core attention forwards
// (attention_tc.cu's tc2 and attention_wgmma.cu): the visibility rule and one online-softmax step
// on a thread's accumulator fragment (the mma.m16n8 C layout, which wgmma's D layout repeats).
#pragma once
#include "common.cuh"
#include "tensor_core.cuh"

// Key j visible to query i (both in range): the same rule as attention.cu.
__device__ __forceinline__ bool tc_visible(const float* key_mask, int b, int Tq, int Tk, int i, int j, int causal) {
    return i < Tq && j < Tk && (!causal || j <= i) && (key_mask == nullptr || key_mask[(i64)b * Tk + j] != 0.f);
}

// lse in base 2; +inf for a query that sees no key (lse = -inf), so that its P row is exactly 0
__device__ __forceinline__ float tc_lse2(float lse) { return lse == -KILN_INF ? KILN_INF : lse * 1.4426950408889634f; }

// *p += v in global memory, atomically, without a return value (the backward's dQ sums)
#ifndef KILN_EMU
__device__ __forceinline__ void red_add_f32(float* p, float v) { asm volatile("red.global.add.f32 [%0], %1;" ::"l"(p), "f"(v) : "memory"); }
#else
inline void red_add_f32(float* p, float v) { std::atomic_ref<float>(*p).fetch_add(v, std::memory_order_relaxed); }
#endif

// One online-softmax step for this thread's two rows i0 and i0 + 8 (i0 = the m-tile's first row +
// g) against the key tile starting at k0. s[t][e] holds S[i0 + 8 (e / 2)][k0 + 8 t + 2 c + e % 2];
// a row's NT * 8 values live in the 4 threads of a quad (c = lane % 4). Scales S to base 2 (sl2 =
// scale * log2 e), masks it where need_mask, updates the running max m and sum l, leaves
// P = exp2(s - m) in s and the factor alpha[r] the row's output accumulator must be scaled by
// (tc_rescale). A row that has seen nothing keeps m = -inf and uses 0 as its base, so its P and l
// stay 0.
template <int NT>
__device__ __forceinline__ void tc_softmax_stats(float (&s)[NT][4], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                                 bool need_mask, const float* key_mask, int b, int Tq, int Tk,
                                                 int i0, int k0, int c, int causal, float sl2) {
    float mx[2] = {-KILN_INF, -KILN_INF};
#pragma unroll
    for (int t = 0; t < NT; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            float x = s[t][e] * sl2;
            if (need_mask && !tc_visible(key_mask, b, Tq, Tk, i0 + (e >> 1) * 8, k0 + t * 8 + 2 * c + (e & 1), causal)) x = -KILN_INF;
            s[t][e] = x;
            mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 2));
        float mn = fmaxf(m[r], mx[r]);
        float base = mn == -KILN_INF ? 0.f : mn;
        alpha[r] = exp2f(m[r] - base);  // 0 when m was -inf
        m[r] = mn;
        l[r] *= alpha[r];
        mx[r] = base;
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            s[t][e] = exp2f(s[t][e] - mx[e >> 1]);
            l[e >> 1] += s[t][e];
        }
    }
}

// o[t][e] (rows as in tc_softmax_stats) *= alpha of its row.
template <int DT>
__device__ __forceinline__ void tc_rescale(float (&o)[DT][4], const float (&alpha)[2]) {
#pragma unroll
    for (int t = 0; t < DT; ++t) {
        o[t][0] *= alpha[0];
        o[t][1] *= alpha[0];
        o[t][2] *= alpha[1];
        o[t][3] *= alpha[1];
    }
}

// tc_softmax_stats, then the output accumulator o (DT 8-column tiles) rescaled.
template <int NT, int DT>
__device__ __forceinline__ void tc_softmax_step(float (&s)[NT][4], float (&o)[DT][4], float (&m)[2], float (&l)[2],
                                                bool need_mask, const float* key_mask, int b, int Tq, int Tk,
                                                int i0, int k0, int c, int causal, float sl2) {
    float alpha[2];
    tc_softmax_stats<NT>(s, m, l, alpha, need_mask, key_mask, b, Tq, Tk, i0, k0, c, causal, sl2);
    tc_rescale<DT>(o, alpha);
}

// Attention-probability dropout on P as tc_softmax_stats leaves it (rows i0, i0 + 8, keys from k0):
// the dropped elements become 0 (the kept ones stay unscaled; 1 / (1 - p) is applied at the store).
template <int NT>
__device__ __forceinline__ void tc_drop_p(float (&s)[NT][4], const AttnDrop& drop, i64 bh, int Tq, int Tk, int i0, int k0, int c) {
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            if (attn_drop_factor(drop, bh, Tq, Tk, i0 + (e >> 1) * 8, k0 + t * 8 + 2 * c + (e & 1)) == 0.f) s[t][e] = 0.f;
}

// P (16 x 16 for k-step kk, from the S accumulators of n-tiles 2kk and 2kk + 1) as the A fragment
// of mma.m16n8k16 / wgmma (rows g, g + 8; columns 2c.., 2c + 8..), 16-bit.
template <typename T, int NT>
__device__ __forceinline__ void tc_pack_a(u32 (&a)[4], const float (&s)[NT][4], int kk) {
    a[0] = pack2(s[2 * kk][0], s[2 * kk][1], T{});
    a[1] = pack2(s[2 * kk][2], s[2 * kk][3], T{});
    a[2] = pack2(s[2 * kk + 1][0], s[2 * kk + 1][1], T{});
    a[3] = pack2(s[2 * kk + 1][2], s[2 * kk + 1][3], T{});
}
// every k-step of s at once
template <typename T, int NT>
__device__ __forceinline__ void tc_pack_p(u32 (&pf)[NT / 2][4], const float (&s)[NT][4]) {
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) tc_pack_a<T, NT>(pf[kk], s, kk);
}

// The backward's transposed tile: s[t][e] = S^T and dp[t][e] = dP^T for key j0 + 8 (e / 2) and
// query qt + 8 t + 2 c + e % 2 become P^T = exp2(S^T sl2 - lse2) (0 where the key is hidden,
// checked only where need_mask) and dS^T = P^T (dP^T - delta). l2 / dl: the query tile's lse2 and
// delta, indexed by query - qt. With DROP (attention-probability dropout of head bh), f = M / (1 - p)
// regenerated from the counters: s = P^T f (what dV takes) and dS^T = P^T (dP^T f - delta).
template <int NT, bool DROP = false>
__device__ __forceinline__ void tc_bwd_pt_dst(float (&s)[NT][4], float (&dp)[NT][4], bool need_mask, const float* key_mask,
                                              int b, int Tq, int Tk, int qt, int j0, int c, int causal, float sl2,
                                              const float* l2, const float* dl, AttnDrop drop = AttnDrop{}, i64 bh = 0) {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int il = 8 * t + 2 * c + (e & 1);
            const bool vis = !need_mask || tc_visible(key_mask, b, Tq, Tk, qt + il, j0 + 8 * (e >> 1), causal);
            const float p = vis ? exp2f(s[t][e] * sl2 - l2[il]) : 0.f;
            if constexpr (DROP) {
                const float f = attn_drop_factor(drop, bh, Tq, Tk, qt + il, j0 + 8 * (e >> 1));
                s[t][e] = p * f;
                dp[t][e] = p * (dp[t][e] * f - dl[il]);
            } else {
                s[t][e] = p;
                dp[t][e] = p * (dp[t][e] - dl[il]);
            }
        }
    }
}

// The end of a dK/dV pass: rows j0 and j0 + 8 (those < Tk) of dK (times scale) and dV as 16-bit
// pairs; accumulators in the C layout of tc_softmax_step.
template <typename T, int D>
__device__ __forceinline__ void tc_store_dkdv(T* dk, T* dv, const float (&dka)[D / 8][4], const float (&dva)[D / 8][4],
                                              i64 bh, int Tk, int j0, int c, float scale) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int j = j0 + 8 * r;
        if (j >= Tk) continue;
        T* krow = dk + (bh * Tk + j) * D;
        T* vrow = dv + (bh * Tk + j) * D;
#pragma unroll
        for (int t = 0; t < D / 8; ++t) {
            *reinterpret_cast<u32*>(krow + t * 8 + 2 * c) = pack2(dka[t][2 * r] * scale, dka[t][2 * r + 1] * scale, T{});
            *reinterpret_cast<u32*>(vrow + t * 8 + 2 * c) = pack2(dva[t][2 * r], dva[t][2 * r + 1], T{});
        }
    }
}

// The end of a forward: full row sums across the quad, O / l stored as 16-bit pairs, and the
// natural-log logsumexp (-inf and O = 0 for a row that saw no key). Rows i0 and i0 + 8; o as in
// tc_softmax_step. `oscale` multiplies O / l (dropout's 1 / (1 - p)).
template <typename T, int D>
__device__ __forceinline__ void tc_store_rows(T* out, float* lse, const float (&o)[D / 8][4], const float (&m)[2],
                                              const float (&l)[2], i64 bh, int Tq, int i0, int c, float oscale = 1.f) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float lr = l[r];
        lr += __shfl_xor_sync(FULL_MASK, lr, 1);
        lr += __shfl_xor_sync(FULL_MASK, lr, 2);
        const int i = i0 + r * 8;
        if (i >= Tq) continue;
        float inv = lr > 0.f ? oscale / lr : 0.f;
        T* orow = out + (bh * Tq + i) * D;
#pragma unroll
        for (int t = 0; t < D / 8; ++t)
            *reinterpret_cast<u32*>(orow + t * 8 + 2 * c) = pack2(o[t][2 * r] * inv, o[t][2 * r + 1] * inv, T{});
        if (c == 0) lse[bh * Tq + i] = lr > 0.f ? (m[r] + log2f(lr)) * 0.6931471805599453f : -KILN_INF;
    }
}
