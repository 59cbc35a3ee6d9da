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
#include "common.cuh"
#include "tensor_core.cuh"

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

// Key j visible to query i (both in range): the same rule as attention.cu.
__device__ __forceinline__ bool tc_visible(const float* key_mask, int b, int Tq, int Tk, int i, int j, int causal) {
    return i < Tq && j < Tk && (!causal || j <= i) && (key_mask == nullptr || key_mask[(i64)b * Tk + j] != 0.f);
}

template <typename T, int D>
__device__ void attention_fwd_tc(T* out, float* lse, const T* q, const T* k, const T* v, const float* key_mask,
                                 int B, int H, int Tq, int Tk, float scale, int causal) {
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

        // mask, scale to base 2, row maxima (a row's 64 values live in the 4 threads of a quad)
        float mx[2] = {-KILN_INF, -KILN_INF};
#pragma unroll
        for (int t = 0; t < NT; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int j = k0 + t * 8 + 2 * c + (e & 1), i = i0 + (e >> 1) * 8;
                s[t][e] = tc_visible(key_mask, b, Tq, Tk, i, j, causal) ? s[t][e] * sl2 : -KILN_INF;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[t][e]);
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL_MASK, mx[r], 2));
        }
        // online softmax update; a row that has seen nothing keeps m = -inf and uses 0 as its base
        float base[2], alpha[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mn = fmaxf(m[r], mx[r]);
            base[r] = mn == -KILN_INF ? 0.f : mn;
            alpha[r] = exp2f(m[r] - base[r]);  // 0 when m was -inf
            m[r] = mn;
            l[r] *= alpha[r];
        }
#pragma unroll
        for (int t = 0; t < DT; ++t) {
            o[t][0] *= alpha[0]; o[t][1] *= alpha[0];
            o[t][2] *= alpha[1]; o[t][3] *= alpha[1];
        }
#pragma unroll
        for (int t = 0; t < NT; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[t][e] = exp2f(s[t][e] - base[e >> 1]);
                l[e >> 1] += s[t][e];
            }
        }

        // O += P V: P (16 x 64) from the S registers, V (64 x D) through ldmatrix.trans
#pragma unroll
        for (int kk = 0; kk < TC_BK / 16; ++kk) {
            u32 pf[4] = {pack2(s[2 * kk][0], s[2 * kk][1], T{}), pack2(s[2 * kk][2], s[2 * kk][3], T{}),
                         pack2(s[2 * kk + 1][0], s[2 * kk + 1][1], T{}), pack2(s[2 * kk + 1][2], s[2 * kk + 1][3], T{})};
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
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(FULL_MASK, l[r], 1);
        l[r] += __shfl_xor_sync(FULL_MASK, l[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int i = i0 + r * 8;
        if (i >= Tq) continue;
        float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
        T* orow = out + ((i64)bh * Tq + i) * D;
#pragma unroll
        for (int t = 0; t < DT; ++t) {
            u32 pr = pack2(o[t][2 * r] * inv, o[t][2 * r + 1] * inv, T{});
            *reinterpret_cast<u32*>(orow + t * 8 + 2 * c) = pr;
        }
        if (c == 0) lse[(i64)bh * Tq + i] = l[r] > 0.f ? (m[r] + log2f(l[r])) * 0.6931471805599453f : -KILN_INF;
    }
}

#include "attention_tc_bwd.cuh"

#define ATT_TC_KERNEL(T, S, DIM)                                                                    \
    extern "C" __global__ void __launch_bounds__(128)                                              \
        attention_fwd_tc_d##DIM##_##S(T* out, float* lse, const T* q, const T* k, const T* v,      \
                                      const float* key_mask, int B, int H, int Tq, int Tk, int D,  \
                                      float scale, int causal) {                                   \
        attention_fwd_tc<T, DIM>(out, lse, q, k, v, key_mask, B, H, Tq, Tk, scale, causal);        \
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
        attention_bwd_dkdv_tc<T, DIM>(dk, dv, lse, delta, q, k, v, dout, key_mask, H, Tq, Tk,      \
                                      scale, causal);                                              \
    }
ATT_TC_KERNEL(bf16, bf16, 64)
ATT_TC_KERNEL(bf16, bf16, 128)
ATT_TC_KERNEL(f16, f16, 64)
ATT_TC_KERNEL(f16, f16, 128)
