// attention_wg_fwd.cuh — one warpgroup's share of the wgmma attention forwards (attention_wgmma.cu's
// `wg`, attention_tma.cu's `wgtma`): its 64 query rows against `tiles` tiles of BK keys, from the
// accumulators to the stored rows. The kernels differ only in where the operands sit in shared
// memory (descriptors) and in how tiles arrive and are released (hooks), so the schedule, with its
// wgmma waits and fences, is written once here.
//
// OVERLAP (FlashAttention-3's intra-warpgroup overlap): tile j's S_j = Q K_j^T and the previous
// tile's O += P_{j-1} V_{j-1} are issued together, the softmax of tile j runs while P V computes,
// then O is rescaled and P_j packed. Without OVERLAP each tile runs S, softmax, P V in turn.
//
// The caller's pieces (all inlined):
//   desc_q(ks), desc_k(j, ks): descriptors of Q's and K_j's 16 dims from 16 ks (K-major)
//   desc_v(j, kk): the descriptor of V_j's keys 16 kk .. + 15 (MN-major)
//   ready_s(j): K_j (and Q, at j = 0) is in shared memory and S_j may be issued; without OVERLAP
//     V_j must be in too
//   ready_pv(j, alone): V_j is in shared memory and P V_j may be issued (OVERLAP only); alone: the
//     last P V, issued by itself after the loop
//   issued(): the wgmmas of one issue section are committed (pingpong passes its turn here)
//   done_s(j), done_pv(j): the wgmmas reading K_j / V_j have retired (their stage may be refilled)
#pragma once
#include "attention_tile.cuh"
#include "wgmma.cuh"

// a hook that does nothing
struct WgNoHook {
    template <typename... A> __device__ __forceinline__ void operator()(A...) const {}
};

template <typename T, int D, int BK, bool OVERLAP, typename DescQ, typename DescK, typename DescV, typename ReadyS,
          typename ReadyPV, typename Issued, typename DoneS, typename DonePV>
__device__ __forceinline__ void wg_fwd_rows(T* out, float* lse, const float* key_mask, int b, int bh, int Tq, int Tk,
                                            float scale, int causal, int r0, int tiles, DescQ desc_q, DescK desc_k,
                                            DescV desc_v, ReadyS ready_s, ReadyPV ready_pv, Issued issued, DoneS done_s,
                                            DonePV done_pv) {
    constexpr int NT = BK / 8, DT = D / 8, KS = D / 16, PK = BK / 16;
    const int warp = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const float sl2 = scale * 1.4426950408889634f;
    float m[2] = {-KILN_INF, -KILN_INF}, l[2] = {0.f, 0.f}, o[DT][4], s[NT][4], alpha[2];
    u32 pf[PK][4];
#pragma unroll
    for (int t = 0; t < DT; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
    // the accumulators as wgmma sees them: 64 x N per warpgroup, N / 2 registers per thread
    float(&s_acc)[NT * 4] = reinterpret_cast<float(&)[NT * 4]>(s);
    float(&o_acc)[DT * 4] = reinterpret_cast<float(&)[DT * 4]>(o);
    auto issue_s = [&](int j) {  // S = Q K_j^T, operands from shared memory
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) wg_mma_ss(s_acc, desc_q(ks), desc_k(j, ks), ks > 0, T{});
        wgmma_commit();
    };
    auto issue_pv = [&](int j) {  // O += P V_j: P (64 x BK) as 16-bit A fragments from registers
        wgmma_fence_operand(o_acc);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < PK; ++kk) wg_mma_rs_tb(o_acc, pf[kk], desc_v(j, kk), 1, T{});
        wgmma_commit();
    };
    auto softmax = [&](int j) {  // P_j = exp2(S - m) in s, m / l updated, alpha for O
        const int k0 = j * BK;
        const bool need_mask = key_mask != nullptr || k0 + BK > Tk || (causal && k0 + BK - 1 > r0);
        tc_softmax_stats<NT>(s, m, l, alpha, need_mask, key_mask, b, Tq, Tk, r0 + 16 * warp + g, k0, c, causal, sl2);
    };
    if (tiles > 0) {
        if constexpr (OVERLAP) {
            ready_s(0);
            issue_s(0);
            issued();
            wgmma_wait<0>();
            wgmma_fence_operand(s_acc);
            done_s(0);
            softmax(0);  // alpha is 0 or 1 and O is 0: no rescale
            tc_pack_p<T, NT>(pf, s);
            for (int j = 1; j < tiles; ++j) {
                ready_s(j);
                issue_s(j);
                ready_pv(j - 1, false);
                issue_pv(j - 1);
                issued();
                wgmma_wait<1>();  // S_j done; P_{j-1} V_{j-1} may still run
                wgmma_fence_operand(s_acc);
                done_s(j);
                softmax(j);
                wgmma_wait<0>();  // P_{j-1} V_{j-1} done: its V stage, P and O are free
                wgmma_fence_operand(o_acc);
                done_pv(j - 1);
                tc_rescale<DT>(o, alpha);
                tc_pack_p<T, NT>(pf, s);
            }
            ready_pv(tiles - 1, true);
            issue_pv(tiles - 1);
            issued();
            wgmma_wait<0>();
            wgmma_fence_operand(o_acc);
        } else {
            for (int j = 0; j < tiles; ++j) {
                ready_s(j);
                issue_s(j);
                wgmma_wait<0>();
                wgmma_fence_operand(s_acc);
                done_s(j);
                softmax(j);
                tc_rescale<DT>(o, alpha);
                tc_pack_p<T, NT>(pf, s);
                issue_pv(j);
                issued();
                wgmma_wait<0>();
                wgmma_fence_operand(o_acc);
                done_pv(j);
            }
        }
    }
    tc_store_rows<T, D>(out, lse, o, m, l, bh, Tq, r0 + 16 * warp + g, c);
}
