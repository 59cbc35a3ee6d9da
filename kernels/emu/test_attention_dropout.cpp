// CPU emulation test of the attention kernels with attention-probability dropout: attention.cu's
// attention_{fwd,bwd_dq,bwd_dkdv}_drop_f32 and attention_tc.cu's attention_{fwd,bwd_dq,bwd_dkdv}_tc_drop
// (bf16 / f16, D = 64 / 128) against a double-precision attention with the same mask, built here by
// an independent SplitMix64 (the contract of docs/KERNELS.md: P[bh, i, j] kept iff
// u(seed, (bh * Tq + i) * Tk + j) >= p, scaled by 1 / (1 - p)). Odd Tq / Tk, causal (Tq != Tk),
// key padding with one batch fully masked. Run with kernels/emu/run.sh.
#include "emu.h"
#include <cstdio>
#include <random>
#include "gen/attention.cu"
#include "gen/attention_tc.cu"

// calls NAME_d{64,128}_{bf16,f16} for the enclosing run_tc<T, D>'s T and D
#define TC_CALL(NAME, ...)                                                                      \
  do {                                                                                          \
    if constexpr (std::is_same_v<T, bf16>) { if (D == 64) NAME##_d64_bf16(__VA_ARGS__); else NAME##_d128_bf16(__VA_ARGS__); } \
    else { if (D == 64) NAME##_d64_f16(__VA_ARGS__); else NAME##_d128_f16(__VA_ARGS__); }        \
  } while (0)

static std::mt19937 rng(2718);
int fails = 0;
static void check(const char* what, double err, double tol) { printf("%-46s max err %.3g %s\n", what, err, err < tol ? "ok" : "FAIL"); if (!(err < tol)) fails++; }

// the keep rule, written again here (not the kernels' function)
static bool ref_keep(uint64_t seed, uint64_t idx, float p) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (idx + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (double)(z >> 40) / 16777216.0 >= (double)p;
}

struct Ref { std::vector<double> o, lse, dq, dk, dv; double kept_frac; };

// Double attention with dropout on q [BH, Tq, D], k / v [BH, Tk, D], upstream gradient g.
static Ref reference(int B, int H, int Tq, int Tk, int D, bool causal, const float* mask, float p, uint64_t seed,
                     const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v, const std::vector<double>& g) {
  double scale = 1.0 / std::sqrt((double)D), inv_keep = 1.0 / (1.0 - (double)p);
  size_t nq = (size_t)B * H * Tq * D, nk = (size_t)B * H * Tk * D;
  Ref r{std::vector<double>(nq, 0), std::vector<double>((size_t)B * H * Tq), std::vector<double>(nq, 0), std::vector<double>(nk, 0), std::vector<double>(nk, 0), 0};
  size_t kept = 0, seen = 0;
  for (int b = 0; b < B; ++b) for (int h = 0; h < H; ++h) {
    size_t bh = (size_t)b * H + h;
    for (int i = 0; i < Tq; ++i) {
      std::vector<double> s(Tk), pr(Tk, 0), f(Tk); std::vector<char> ok(Tk); double m = -INFINITY;
      for (int j = 0; j < Tk; ++j) {
        ok[j] = (!mask || mask[b * Tk + j] != 0) && (!causal || j <= i);
        double acc = 0; for (int d = 0; d < D; ++d) acc += q[(bh * Tq + i) * D + d] * k[(bh * Tk + j) * D + d];
        s[j] = acc * scale; if (ok[j]) m = std::max(m, s[j]);
        f[j] = ref_keep(seed, (bh * Tq + i) * Tk + j, p) ? inv_keep : 0.0;
        if (ok[j]) { seen++; kept += f[j] != 0; }
      }
      double l = 0;
      if (m > -INFINITY) for (int j = 0; j < Tk; ++j) if (ok[j]) { pr[j] = std::exp(s[j] - m); l += pr[j]; }
      r.lse[bh * Tq + i] = l > 0 ? m + std::log(l) : -INFINITY;
      if (l > 0) for (int j = 0; j < Tk; ++j) pr[j] /= l;
      for (int d = 0; d < D; ++d) { double acc = 0; for (int j = 0; j < Tk; ++j) acc += pr[j] * f[j] * v[(bh * Tk + j) * D + d]; r.o[(bh * Tq + i) * D + d] = acc; }
      // dP' = dP f, dS = P (dP' - delta), delta = rowsum(dO o); dV += P f dO
      double delta = 0; for (int d = 0; d < D; ++d) delta += g[(bh * Tq + i) * D + d] * r.o[(bh * Tq + i) * D + d];
      for (int j = 0; j < Tk; ++j) {
        if (pr[j] == 0) continue;
        double dp = 0; for (int d = 0; d < D; ++d) dp += g[(bh * Tq + i) * D + d] * v[(bh * Tk + j) * D + d];
        double ds = pr[j] * (dp * f[j] - delta);
        for (int d = 0; d < D; ++d) {
          r.dq[(bh * Tq + i) * D + d] += scale * ds * k[(bh * Tk + j) * D + d];
          r.dk[(bh * Tk + j) * D + d] += scale * ds * q[(bh * Tq + i) * D + d];
          r.dv[(bh * Tk + j) * D + d] += pr[j] * f[j] * g[(bh * Tq + i) * D + d];
        }
      }
    }
  }
  r.kept_frac = seen ? (double)kept / seen : 1.0;
  return r;
}

static std::vector<float> padding(int B, int Tk) {
  std::vector<float> mask(B * Tk, 1.f);
  for (int b = 0; b < B; ++b) for (int j = 0; j < Tk; ++j) mask[b * Tk + j] = ((j * 7 + b) % 5 == 0) ? 0.f : 1.f;
  if (B > 1) for (int j = 0; j < Tk; ++j) mask[Tk + j] = 0.f;  // batch 1 fully masked
  return mask;
}

template <typename V> static double abs_err(const V& got, const std::vector<double>& want) {
  double mx = 1e-12, e = 0; for (double x : want) mx = std::max(mx, std::fabs(x));
  for (size_t i = 0; i < want.size(); ++i) { double d = std::fabs((double)got[i] - want[i]); if (!(d <= e)) e = d; }
  return e / mx;
}
static double lse_err(const std::vector<float>& l, const std::vector<double>& rl) {
  double e = 0;
  for (size_t i = 0; i < l.size(); ++i) {
    if (std::isinf(rl[i])) { if (!(std::isinf(l[i]) && l[i] < 0)) e = 1e9; }
    else { double d = std::fabs(l[i] - rl[i]) / (1.0 + std::fabs(rl[i])); if (!(d <= e)) e = d; }
  }
  return e;
}

// attention.cu's f32 _drop kernels
static void run_simple(int B, int H, int Tq, int Tk, int D, bool causal, bool use_mask, float p, uint64_t seed) {
  float scale = 1.f / std::sqrt((float)D);
  size_t nq = (size_t)B * H * Tq * D, nk = (size_t)B * H * Tk * D;
  std::normal_distribution<float> nd(0.f, 1.f);
  auto randv = [&](size_t n) { std::vector<float> x(n); for (auto& y : x) y = nd(rng); return x; };
  auto q = randv(nq), k = randv(nk), v = randv(nk), g = randv(nq);
  auto dbl = [](const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); };
  auto mask = padding(B, Tk);
  const float* mp = use_mask ? mask.data() : nullptr;
  Ref r = reference(B, H, Tq, Tk, D, causal, mp, p, seed, dbl(q), dbl(k), dbl(v), dbl(g));
  std::vector<float> out(nq, NAN), lse((size_t)B * H * Tq, NAN), delta((size_t)B * H * Tq, NAN), dq(nq, NAN), dk(nk, NAN), dv(nk, NAN);
  launch({(unsigned)((Tq + 15) / 16), (unsigned)(B * H)}, {128}, [&] { attention_fwd_drop_f32(out.data(), lse.data(), q.data(), k.data(), v.data(), mp, B, H, Tq, Tk, D, scale, causal, p, seed); });
  int rows = B * H * Tq;
  launch({(unsigned)((rows + 3) / 4)}, {128}, [&] { attention_bwd_preprocess_f32(delta.data(), out.data(), g.data(), rows, D); });
  launch({(unsigned)((Tq + 7) / 8), (unsigned)(B * H)}, {128}, [&] { attention_bwd_dq_drop_f32(dq.data(), lse.data(), delta.data(), q.data(), k.data(), v.data(), g.data(), mp, B, H, Tq, Tk, D, scale, causal, p, seed); });
  launch({(unsigned)((Tk + 7) / 8), (unsigned)(B * H)}, {128}, [&] { attention_bwd_dkdv_drop_f32(dk.data(), dv.data(), lse.data(), delta.data(), q.data(), k.data(), v.data(), g.data(), mp, B, H, Tq, Tk, D, scale, causal, p, seed); });
  printf("simple f32 B%d H%d Tq%d Tk%d D%d causal%d mask%d p%.2f (kept %.3f of visible)\n", B, H, Tq, Tk, D, causal, use_mask, p, r.kept_frac);
  check("  drop out", abs_err(out, r.o), 1e-5); check("  drop lse", lse_err(lse, r.lse), 1e-5);
  check("  drop dq", abs_err(dq, r.dq), 1e-5); check("  drop dk", abs_err(dk, r.dk), 1e-5); check("  drop dv", abs_err(dv, r.dv), 1e-5);
}

// attention_tc.cu's _drop kernels (16-bit in, f32 accumulation)
template <typename T, int D>
static void run_tc(int B, int H, int Tq, int Tk, bool causal, bool use_mask, float p, uint64_t seed) {
  float scale = 1.f / std::sqrt((float)D);
  size_t nq = (size_t)B * H * Tq * D, nk = (size_t)B * H * Tk * D;
  std::normal_distribution<float> nd(0.f, 1.f);
  auto mk = [&](size_t n, std::vector<T>& hx, std::vector<double>& fx) {
    hx.resize(n); fx.resize(n);
    for (size_t i = 0; i < n; ++i) { hx[i].bits = emu_f2h(nd(rng), T{}); fx[i] = emu_h2f(hx[i].bits, T{}); }
  };
  std::vector<T> q, k, v, g; std::vector<double> qf, kf, vf, gf;
  mk(nq, q, qf); mk(nk, k, kf); mk(nk, v, vf); mk(nq, g, gf);
  auto mask = padding(B, Tk);
  const float* mp = use_mask ? mask.data() : nullptr;
  Ref r = reference(B, H, Tq, Tk, D, causal, mp, p, seed, qf, kf, vf, gf);
  auto poisoned = [](size_t n) { std::vector<T> x(n); for (auto& y : x) y.bits = 0x7fc0; return x; };
  std::vector<T> out = poisoned(nq), dq = poisoned(nq), dk = poisoned(nk), dv = poisoned(nk);
  std::vector<float> lse((size_t)B * H * Tq, NAN);
  size_t sm = 2 * 64 * (D + 8) * 2, sm_kv = (2 * 64 + 2 * 32) * (D + 8) * 2 + 2 * 32 * 4;
  if (sm > sizeof(smem) || sm_kv > sizeof(smem)) { printf("smem too big\n"); exit(1); }
  launch({(unsigned)((Tq + 63) / 64), (unsigned)(B * H)}, {128}, [&] {
    TC_CALL(attention_fwd_tc_drop, out.data(), lse.data(), q.data(), k.data(), v.data(), mp, B, H, Tq, Tk, D, scale, causal, p, seed);
  });
  // delta = rowsum(dO * O) from the kernel's own output (as attention_bwd_preprocess)
  std::vector<float> delta((size_t)B * H * Tq);
  for (size_t row = 0; row < delta.size(); ++row) { double acc = 0; for (int d = 0; d < D; ++d) acc += gf[row * D + d] * emu_h2f(out[row * D + d].bits, T{}); delta[row] = (float)acc; }
  launch({(unsigned)((Tq + 63) / 64), (unsigned)(B * H)}, {128}, [&] {
    TC_CALL(attention_bwd_dq_tc_drop, dq.data(), lse.data(), delta.data(), q.data(), k.data(), v.data(), g.data(), mp, B, H, Tq, Tk, D, scale, causal, p, seed);
  });
  launch({(unsigned)((Tk + 63) / 64), (unsigned)(B * H)}, {128}, [&] {
    TC_CALL(attention_bwd_dkdv_tc_drop, dk.data(), dv.data(), lse.data(), delta.data(), q.data(), k.data(), v.data(), g.data(), mp, B, H, Tq, Tk, D, scale, causal, p, seed);
  });
  auto f = [](const std::vector<T>& x) { std::vector<double> y(x.size()); for (size_t i = 0; i < x.size(); ++i) y[i] = emu_h2f(x[i].bits, T{}); return y; };
  bool bf = std::is_same_v<T, bf16>;
  printf("tc %s B%d H%d Tq%d Tk%d D%d causal%d mask%d p%.2f (kept %.3f of visible)\n", bf ? "bf16" : "f16", B, H, Tq, Tk, D, causal, use_mask, p, r.kept_frac);
  // the tolerances of test_attention_tc (16-bit P, dS and outputs), doubled for 1 / (1 - p) <= 2
  double to = bf ? 1.6e-2 : 3e-3, tg = bf ? 2e-2 : 3e-3;
  check("  tc drop out (abs err / max |out|)", abs_err(f(out), r.o), to);
  check("  tc drop lse (rel)", lse_err(lse, r.lse), 1e-4);
  check("  tc drop dq (abs err / max |dq|)", abs_err(f(dq), r.dq), tg);
  check("  tc drop dk (abs err / max |dk|)", abs_err(f(dk), r.dk), tg);
  check("  tc drop dv (abs err / max |dv|)", abs_err(f(dv), r.dv), tg);
}

int main() {
#ifdef KILN_EMU_TSAN
  // Under ThreadSanitizer: the dropout variants keep the schedules (barriers, shared memory) of
  // the kernels test_attention / test_attention_tc cover; one case each with several tiles.
  run_simple(2, 1, 37, 53, 32, true, true, 0.3f, 11);
  run_tc<bf16, 64>(2, 1, 70, 97, true, true, 0.3f, 12);
  printf(fails ? "FAILURES: %d\n" : "all ok\n", fails);
  return fails != 0;
#endif
  run_simple(1, 1, 5, 5, 32, false, false, 0.1f, 1);
  run_simple(2, 3, 37, 53, 24, true, false, 0.1f, 42);
  run_simple(2, 2, 33, 45, 80, true, true, 0.5f, 7);
  run_simple(3, 1, 40, 29, 96, false, true, 0.2f, 123456789);
  run_simple(1, 2, 17, 70, 128, true, false, 0.9f, 5);
  run_tc<bf16, 64>(2, 2, 67, 67, true, false, 0.1f, 42);
  run_tc<bf16, 64>(2, 1, 33, 131, true, true, 0.5f, 3);
  run_tc<bf16, 128>(1, 2, 100, 70, false, true, 0.2f, 9);
  run_tc<f16, 64>(1, 2, 70, 97, false, false, 0.1f, 77);
  run_tc<f16, 128>(2, 1, 65, 40, true, true, 0.3f, 1ull << 63);
  printf(fails ? "FAILURES: %d\n" : "all ok\n", fails);
  return fails != 0;
}
