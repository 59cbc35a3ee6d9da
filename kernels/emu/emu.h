// Minimal CPU emulation of the CUDA execution model for testing kiln's kernels (f32 paths).
// Blocks run one after another; the threads of a block run concurrently as std::threads.
#pragma once
#include <atomic>
#include <climits>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>
#include <algorithm>
#include <memory>
using std::min; using std::max;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define asm(...) ((void)0)
#define KILN_EMU 1
#define __launch_bounds__(...)
struct dim3e { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3e threadIdx;
inline dim3e blockIdx, blockDim, gridDim;
alignas(1024) inline float smem[1 << 16];  // "extern __shared__ float smem[]" resolves here
// Blocking on a 32-bit word by raw futex calls: unlike std::barrier and std::atomic::wait (whose
// waiters share a few mutex-guarded pools), this gives ThreadSanitizer no ordering edges of its
// own, so the only ones it sees are those of the atomics that the barriers below (and emu_tma.h's
// mbarriers) are made of: what the GPU guarantees, and nothing between unrelated threads.
inline void emu_futex_wait(const void* word, uint32_t seen) { syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0); }
inline void emu_futex_wake(const void* word) { syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0); }
// A barrier: every arrival of a phase happens-before every departure from it. A phase completes
// at `of` arrivals (n for __syncthreads and the warps; given per call for named barriers).
struct EmuBarrier {
  explicit EmuBarrier(int n = 0) : n((uint32_t)n) {}
  // one arrival; true for the one that completes the phase. *ph: the phase it arrived in
  bool arrive(uint32_t of, uint32_t* ph) {
    *ph = phase.load(std::memory_order_acquire);  // cannot move on before this arrival
    if (count.fetch_add(1, std::memory_order_acq_rel) + 1 != of) return false;  // the last one acquires the others
    count.store(0, std::memory_order_relaxed);
    phase.fetch_add(1, std::memory_order_release);
    emu_futex_wake(&phase);
    return true;
  }
  void arrive_and_wait(uint32_t of) {
    uint32_t ph;
    if (arrive(of, &ph)) return;
    for (uint32_t p = ph; p == ph; p = phase.load(std::memory_order_acquire)) emu_futex_wait(&phase, ph);
  }
  void arrive_and_wait() { arrive_and_wait(n); }
  void reset() { count.store(0); phase.store(0); }
  const uint32_t n;
  std::atomic<uint32_t> count{0}, phase{0};
};
inline std::unique_ptr<EmuBarrier> g_block_bar;
// named barriers 1..15 (bar.sync / bar.arrive id, n; emu_tma.h), reset for each block
inline EmuBarrier g_named[16];
inline std::vector<std::unique_ptr<EmuBarrier>> g_warp_bar;
inline std::vector<std::vector<uint64_t>> g_warp_slot;
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
// correctly rounded single operations (the host compiler, in ISO C++ mode without -mfma, contracts
// nothing, so a plain operator is one rounding; fmaf is a true fused multiply-add)
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __expf(float x) { return expf(x); }               // the hardware's ex2-based exp: a few ulp
inline float __fdividef(float a, float b) { return a / b; }    // (the emulator checks the formulas)
inline int __ffs(unsigned x) { return x ? __builtin_ctz(x) + 1 : 0; }
inline long long clock64() { return (long long)__builtin_ia32_rdtsc(); }  // a cycle-like counter
template <typename T> T warp_exchange(T v, int src) {
  int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  uint64_t bits = 0; memcpy(&bits, &v, sizeof(T));
  g_warp_slot[w][lane] = bits;
  g_warp_bar[w]->arrive_and_wait();
  uint64_t r = g_warp_slot[w][src & 31];
  g_warp_bar[w]->arrive_and_wait();
  T out; memcpy(&out, &r, sizeof(T)); return out;
}
template <typename T> T __shfl_xor_sync(unsigned, T v, int o) { return warp_exchange(v, (threadIdx.x & 31) ^ o); }
template <typename T> T __shfl_sync(unsigned, T v, int src) { return warp_exchange(v, src); }
inline unsigned __ballot_sync(unsigned, bool p) {
  int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  g_warp_slot[w][lane] = p;
  g_warp_bar[w]->arrive_and_wait();
  unsigned m = 0; for (int l = 0; l < 32; ++l) if (g_warp_slot[w][l]) m |= 1u << l;
  g_warp_bar[w]->arrive_and_wait();
  return m;
}
// launch(grid, block, [&]{ kernel(args...); })
inline void launch(dim3e grid, dim3e block, const std::function<void()>& body) {
  gridDim = grid; blockDim = block;
  int nt = block.x; int nw = (nt + 31) / 32;
  for (unsigned by = 0; by < grid.y; ++by) for (unsigned bx = 0; bx < grid.x; ++bx) {
    blockIdx = {bx, by, 1};
    g_block_bar = std::make_unique<EmuBarrier>(nt);
    for (auto& nb : g_named) nb.reset();
    g_warp_bar.clear(); g_warp_slot.assign(nw, std::vector<uint64_t>(32));
    for (int w = 0; w < nw; ++w) g_warp_bar.push_back(std::make_unique<EmuBarrier>(32));
    std::vector<std::thread> ts;
    for (int t = 0; t < nt; ++t) ts.emplace_back([t, &body] { threadIdx = {(unsigned)t, 0, 0}; body(); });
    for (auto& t : ts) t.join();
  }
}
