// CPU emulation test of kernels/attention_tc.cu (tensor-core forward and backward, bf16 and f16) and of
// kernels/attention_wgmma.cu (the sm_90a wgmma forward, under emu_wgmma.h) against a
// double-precision attention on the same 16-bit-rounded inputs, with odd Tq / Tk, causal (Tq != Tk)
// and key-padding masks (one batch fully masked). Run with kernels/emu/run.sh.
#include "emu.h"
#include <cstdio>
#include <random>
#include "gen/attention_tc.cu"
#include "gen/attention_wgmma.cu"
#include "gen/attention_tma.cu"

// calls the entry point NAME_d{64,128}_{bf16,f16} for the enclosing run<T, D>'s T and D
#define TC_CALL(NAME, ...)                                                                      \
  do {                                                                                          \
    if constexpr (std::is_same_v<T, bf16>) { if (D == 64) NAME##_d64_bf16(__VA_ARGS__); else NAME##_d128_bf16(__VA_ARGS__); } \
    else { if (D == 64) NAME##_d64_f16(__VA_ARGS__); else NAME##_d128_f16(__VA_ARGS__); }        \
  } while (0)

static std::mt19937 rng(4321);
int fails = 0;
static void check(const char* what, double err, double tol) { printf("%-44s max err %.3g %s\n", what, err, err < tol ? "ok" : "FAIL"); if (!(err < tol)) fails++; }

template <typename T, int D>
void run(int B, int H, int Tq, int Tk, bool causal, bool use_mask) {
  float scale = 1.f / std::sqrt((float)D);
  size_t nq = (size_t)B * H * Tq * D, nk = (size_t)B * H * Tk * D;
  std::normal_distribution<float> nd(0.f, 1.f);
  auto mk = [&](size_t n, std::vector<T>& h, std::vector<double>& f) {
    h.resize(n); f.resize(n);
    for (size_t i = 0; i < n; ++i) { h[i].bits = emu_f2h(nd(rng), T{}); f[i] = emu_h2f(h[i].bits, T{}); }
  };
  std::vector<T> q, k, v; std::vector<double> qf, kf, vf;
  mk(nq, q, qf); mk(nk, k, kf); mk(nk, v, vf);
  std::vector<float> mask(B * Tk, 1.f);
  if (use_mask) { for (int b = 0; b < B; ++b) for (int j = 0; j < Tk; ++j) mask[b * Tk + j] = ((j * 7 + b) % 5 == 0) ? 0.f : 1.f; if (B > 1) for (int j = 0; j < Tk; ++j) mask[Tk + j] = 0.f; }
  const float* mp = use_mask ? mask.data() : nullptr;
  auto dof_h = std::vector<T>(); std::vector<double> dof; mk(nq, dof_h, dof);
  std::vector<double> ro(nq, 0), rl((size_t)B * H * Tq), rdq(nq, 0), rdk(nk, 0), rdv(nk, 0);
  double omax = 1e-12;
  for (int b = 0; b < B; ++b) for (int h = 0; h < H; ++h) {
    size_t bh = (size_t)b * H + h;
    for (int i = 0; i < Tq; ++i) {
      std::vector<double> s(Tk); std::vector<char> ok(Tk); double m = -INFINITY;
      for (int j = 0; j < Tk; ++j) {
        ok[j] = (!use_mask || mask[b * Tk + j] != 0) && (!causal || j <= i);
        double acc = 0; for (int d = 0; d < D; ++d) acc += qf[(bh * Tq + i) * D + d] * kf[(bh * Tk + j) * D + d];
        s[j] = acc * scale; if (ok[j]) m = std::max(m, s[j]);
      }
      double l = 0; std::vector<double> p(Tk, 0);
      if (m > -INFINITY) for (int j = 0; j < Tk; ++j) if (ok[j]) { p[j] = std::exp(s[j] - m); l += p[j]; }
      rl[bh * Tq + i] = l > 0 ? m + std::log(l) : -INFINITY;
      for (int d = 0; d < D; ++d) { double acc = 0; for (int j = 0; j < Tk; ++j) acc += p[j] * vf[(bh * Tk + j) * D + d]; ro[(bh * Tq + i) * D + d] = l > 0 ? acc / l : 0; omax = std::max(omax, std::fabs(ro[(bh * Tq + i) * D + d])); }
      if (l > 0) for (int j = 0; j < Tk; ++j) p[j] /= l;
      double delta = 0; for (int d = 0; d < D; ++d) delta += dof[(bh * Tq + i) * D + d] * ro[(bh * Tq + i) * D + d];
      for (int j = 0; j < Tk; ++j) {
        if (p[j] == 0) continue;
        double dp = 0; for (int d = 0; d < D; ++d) dp += dof[(bh * Tq + i) * D + d] * vf[(bh * Tk + j) * D + d];
        double ds = p[j] * (dp - delta);
        for (int d = 0; d < D; ++d) {
          rdq[(bh * Tq + i) * D + d] += scale * ds * kf[(bh * Tk + j) * D + d];
          rdk[(bh * Tk + j) * D + d] += scale * ds * qf[(bh * Tq + i) * D + d];
          rdv[(bh * Tk + j) * D + d] += p[j] * dof[(bh * Tq + i) * D + d];
        }
      }
    }
  }
  std::vector<T> out(nq); for (auto& x : out) x.bits = 0x7fc0;  // poisoned with NaN
  std::vector<float> lse((size_t)B * H * Tq, NAN);
  size_t sm = 2 * 64 * (D + 8) * 2;
  if (sm > sizeof(smem)) { printf("smem too big\n"); exit(1); }
  launch({(unsigned)((Tq + 63) / 64), (unsigned)(B * H)}, {128}, [&] {
    TC_CALL(attention_fwd_tc, out.data(), lse.data(), q.data(), k.data(), v.data(), mp, B, H, Tq, Tk, D, scale, causal);
  });
  // the tc2 forward (128-row blocks, 32 rows per warp, overlapped loads): same contract
  std::vector<T> out2(nq); for (auto& x : out2) x.bits = 0x7fc0;
  std::vector<float> lse2((size_t)B * H * Tq, NAN);
  size_t sm2 = (128 + 2 * (D > 64 ? 32 : 64)) * (D + 8) * 2;
  if (sm2 > sizeof(smem)) { printf("smem too big\n"); exit(1); }
  launch({(unsigned)((Tq + 127) / 128), (unsigned)(B * H)}, {128}, [&] {
    TC_CALL(attention_fwd_tc2, out2.data(), lse2.data(), q.data(), k.data(), v.data(), mp, B, H, Tq, Tk, D, scale, causal);
  });
  // the wgmma forward (sm_90a): 2 warpgroups x 64 rows, 128-key tiles double-buffered
  std::vector<T> out3(nq); for (auto& x : out3) x.bits = 0x7fc0;
  std::vector<float> lse3((size_t)B * H * Tq, NAN);
  size_t sm3 = (128 + 4 * 128) * D * 2;
  if (sm3 > sizeof(smem)) { printf("smem too big\n"); exit(1); }
  launch({(unsigned)((Tq + 127) / 128), (unsigned)(B * H)}, {256}, [&] {
    TC_CALL(attention_fwd_wg, out3.data(), lse3.data(), q.data(), k.data(), v.data(), mp, B, H, Tq, Tk, D, scale, causal);
  });
  // ... and its serial schedule (no overlap of S, softmax and P V)
  std::vector<T> out4(nq); for (auto& x : out4) x.bits = 0x7fc0;
  std::vector<float> lse4((size_t)B * H * Tq, NAN);
  launch({(unsigned)((Tq + 127) / 128), (unsigned)(B * H)}, {256}, [&] {
    TC_CALL(attention_fwd_wg_serial, out4.data(), lse4.data(), q.data(), k.data(), v.data(), mp, B, H, Tq, Tk, D, scale, causal);
  });
  // the warp-specialized TMA forward (sm_90a): a producer warpgroup, two consumer warpgroups;
  // q, k, v as 3-D tensor maps [B * H, T, D] with 64 x 128 boxes and the 128-byte swizzle
  auto tmap = [&](const std::vector<T>& x, int len) {
    return TmaMap{x.data(), 2, {D, len, (long long)B * H}, {2LL * D, 2LL * D * len}, {64, 128, 1}, true};
  };
  std::vector<T> out5(nq); for (auto& x : out5) x.bits = 0x7fc0;
  std::vector<float> lse5((size_t)B * H * Tq, NAN);
  if ((size_t)(5 * 128 * D * 2 + 72 + 1024) > sizeof(smem)) { printf("smem too big\n"); exit(1); }
  launch({(unsigned)((Tq + 127) / 128), (unsigned)(B * H)}, {384}, [&] {
    TC_CALL(attention_fwd_wgtma, out5.data(), lse5.data(), tmap(q, Tq), tmap(k, Tk), tmap(v, Tk), mp, B, H, Tq, Tk, D, scale, causal);
  });
  // ... with the two consumer warpgroups taking turns at the tensor cores (pingpong)
  std::vector<T> out6(nq); for (auto& x : out6) x.bits = 0x7fc0;
  std::vector<float> lse6((size_t)B * H * Tq, NAN);
  launch({(unsigned)((Tq + 127) / 128), (unsigned)(B * H)}, {384}, [&] {
    TC_CALL(attention_fwd_wgtma_pp, out6.data(), lse6.data(), tmap(q, Tq), tmap(k, Tk), tmap(v, Tk), mp, B, H, Tq, Tk, D, scale, causal);
  });
  // backward: delta = rowsum(dO * O) from the kernel's own output (as attention_bwd_preprocess)
  std::vector<float> delta((size_t)B * H * Tq);
  for (size_t r = 0; r < delta.size(); ++r) { double acc = 0; for (int d = 0; d < D; ++d) acc += dof[r * D + d] * emu_h2f(out[r * D + d].bits, T{}); delta[r] = (float)acc; }
  std::vector<T> dq(nq), dk(nk), dv(nk);
  for (auto* vv : {&dq, &dk, &dv}) for (auto& x : *vv) x.bits = 0x7fc0;
  size_t sm_kv = (2 * 64 + 2 * 32) * (D + 8) * 2 + 2 * 32 * 4;
  if (sm_kv > sizeof(smem)) { printf("smem too big\n"); exit(1); }
  launch({(unsigned)((Tq + 63) / 64), (unsigned)(B * H)}, {128}, [&] {
    TC_CALL(attention_bwd_dq_tc, dq.data(), lse.data(), delta.data(), q.data(), k.data(), v.data(), dof_h.data(), mp, B, H, Tq, Tk, D, scale, causal);
  });
  launch({(unsigned)((Tk + 63) / 64), (unsigned)(B * H)}, {128}, [&] {
    TC_CALL(attention_bwd_dkdv_tc, dk.data(), dv.data(), lse.data(), delta.data(), q.data(), k.data(), v.data(), dof_h.data(), mp, B, H, Tq, Tk, D, scale, causal);
  });
  // the tc2 backward: one pass over the keys, dQ through f32 atomics, then the convert kernel
  std::vector<float> dq_acc(nq, 0.f);
  std::vector<T> dq2(nq), dk2(nk), dv2(nk);
  for (auto* vv : {&dq2, &dk2, &dv2}) for (auto& x : *vv) x.bits = 0x7fc0;
  size_t sm_tc2 = (2 * 64 + 2 * 32) * (D + 8) * 2 + 2 * 32 * 4 + 64 * 40 * 2;
  if (sm_tc2 > sizeof(smem)) { printf("smem too big\n"); exit(1); }
  launch({(unsigned)((Tk + 63) / 64), (unsigned)(B * H)}, {128}, [&] {
    TC_CALL(attention_bwd_tc2, dq_acc.data(), dk2.data(), dv2.data(), lse.data(), delta.data(), q.data(), k.data(), v.data(), dof_h.data(), mp, B, H, Tq, Tk, D, scale, causal);
  });
  launch({3}, {64}, [&] {
    if constexpr (std::is_same_v<T, bf16>) attention_bwd_dq_convert_bf16(dq2.data(), dq_acc.data(), (i64)nq, scale);
    else attention_bwd_dq_convert_f16(dq2.data(), dq_acc.data(), (i64)nq, scale);
  });
  // the wgmma backward: 128-key blocks of 2 warpgroups, dQ through f32 atomics, then the convert kernel
  std::vector<float> dq_acc3(nq, 0.f);
  std::vector<T> dq3(nq), dk3(nk), dv3(nk);
  for (auto* vv : {&dq3, &dk3, &dv3}) for (auto& x : *vv) x.bits = 0x7fc0;
  size_t sm_wgb = (512 * D + 128 * 64) * 2 + 4 * 64 * 4;
  if (sm_wgb > sizeof(smem)) { printf("smem too big\n"); exit(1); }
  launch({(unsigned)((Tk + 127) / 128), (unsigned)(B * H)}, {256}, [&] {
    TC_CALL(attention_bwd_wg, dq_acc3.data(), dk3.data(), dv3.data(), lse.data(), delta.data(), q.data(), k.data(), v.data(), dof_h.data(), mp, B, H, Tq, Tk, D, scale, causal);
  });
  launch({3}, {64}, [&] {
    if constexpr (std::is_same_v<T, bf16>) attention_bwd_dq_convert_bf16(dq3.data(), dq_acc3.data(), (i64)nq, scale);
    else attention_bwd_dq_convert_f16(dq3.data(), dq_acc3.data(), (i64)nq, scale);
  });
  auto rel = [&](const std::vector<T>& got, const std::vector<double>& ref) {
    double mx = 1e-12, e = 0; for (double x : ref) mx = std::max(mx, std::fabs(x));
    for (size_t i = 0; i < got.size(); ++i) { double d = std::fabs(emu_h2f(got[i].bits, T{}) - ref[i]); if (!(d <= e)) e = d; }
    return e / mx;
  };
  auto out_err = [&](const std::vector<T>& o) {
    double e = 0; for (size_t i = 0; i < nq; ++i) { double d = std::fabs(emu_h2f(o[i].bits, T{}) - ro[i]); if (!(d <= e)) e = d; }
    return e;
  };
  auto lse_err = [&](const std::vector<float>& l) {
    double e = 0;
    for (size_t i = 0; i < l.size(); ++i) {
      if (std::isinf(rl[i])) { if (!(std::isinf(l[i]) && l[i] < 0)) e = 1e9; }
      else { double d = std::fabs(l[i] - rl[i]) / (1.0 + std::fabs(rl[i])); if (!(d <= e)) e = d; }
    }
    return e;
  };
  double eo = out_err(out), el = lse_err(lse);
  char buf[160];
  snprintf(buf, sizeof buf, "%s B%d H%d Tq%d Tk%d D%d causal%d mask%d", std::is_same_v<T, bf16> ? "bf16" : "f16", B, H, Tq, Tk, D, causal, use_mask);
  printf("%s\n", buf);
  // out: 16-bit output rounding (2^-9 relative) plus P rounded to 16 bits before P V
  check("  out (abs err / max |out|)", eo / omax, std::is_same_v<T, bf16> ? 8e-3 : 1.5e-3);
  check("  lse (rel)", el, 1e-4);
  check("  tc2 out (abs err / max |out|)", out_err(out2) / omax, std::is_same_v<T, bf16> ? 8e-3 : 1.5e-3);
  check("  tc2 lse (rel)", lse_err(lse2), 1e-4);
  check("  wg out (abs err / max |out|)", out_err(out3) / omax, std::is_same_v<T, bf16> ? 8e-3 : 1.5e-3);
  check("  wg lse (rel)", lse_err(lse3), 1e-4);
  check("  wg serial out (abs err / max |out|)", out_err(out4) / omax, std::is_same_v<T, bf16> ? 8e-3 : 1.5e-3);
  check("  wg serial lse (rel)", lse_err(lse4), 1e-4);
  check("  wgtma out (abs err / max |out|)", out_err(out5) / omax, std::is_same_v<T, bf16> ? 8e-3 : 1.5e-3);
  check("  wgtma lse (rel)", lse_err(lse5), 1e-4);
  check("  wgtma pingpong out (abs err / max |out|)", out_err(out6) / omax, std::is_same_v<T, bf16> ? 8e-3 : 1.5e-3);
  check("  wgtma pingpong lse (rel)", lse_err(lse6), 1e-4);
  double gt = std::is_same_v<T, bf16> ? 1e-2 : 1.5e-3;  // 16-bit P / dS / output rounding
  check("  dq (abs err / max |dq|)", rel(dq, rdq), gt);
  check("  dk (abs err / max |dk|)", rel(dk, rdk), gt);
  check("  dv (abs err / max |dv|)", rel(dv, rdv), gt);
  check("  tc2 dq (abs err / max |dq|)", rel(dq2, rdq), gt);
  check("  tc2 dk (abs err / max |dk|)", rel(dk2, rdk), gt);
  check("  tc2 dv (abs err / max |dv|)", rel(dv2, rdv), gt);
  check("  wg dq (abs err / max |dq|)", rel(dq3, rdq), gt);
  check("  wg dk (abs err / max |dk|)", rel(dk3, rdk), gt);
  check("  wg dv (abs err / max |dv|)", rel(dv3, rdv), gt);
}

// wgmma_probe_bf16 (attention_wgmma.cu's diagnostic of the three operand forms) against a plain
// product: checks the probe itself, so that on a GPU its result is about the hardware's reading
static void probe() {
  std::vector<bf16> a(64 * 16), b(16 * 64);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (auto& x : a) x.bits = emu_f2h(nd(rng), bf16{});
  for (auto& x : b) x.bits = emu_f2h(nd(rng), bf16{});
  for (int mode = 0; mode < 5; ++mode) {
    std::vector<float> d(64 * 64, NAN);
    launch({1}, {128}, [&] { wgmma_probe_bf16(d.data(), a.data(), b.data(), mode); });
    double e = 0;
    for (int m = 0; m < 64; ++m)
      for (int n = 0; n < 64; ++n) {
        double acc = 0; for (int k = 0; k < 16; ++k) acc += (double)emu_h2f(a[m * 16 + k].bits, bf16{}) * emu_h2f(b[k * 64 + n].bits, bf16{});
        double x = std::fabs(d[m * 64 + n] - acc); if (!(x <= e)) e = x;
      }
    char what[64]; snprintf(what, sizeof what, "wgmma probe form %d (abs err)", mode);
    check(what, e, 1e-4);
  }
}

int main() {
  probe();
#ifdef KILN_EMU_TSAN
  // Under ThreadSanitizer (run.sh with KILN_EMU_TSAN=1, ~10x slower) the cases that reach every
  // barrier of every schedule: several key tiles and query blocks (5 key tiles of 128: every
  // stage of the two-stage pipelines is refilled after a release), causal skips and diagonal
  // tiles, padding, partial tiles, and no keys at all.
  run<bf16, 64>(2, 1, 33, 131, true, true);
  run<bf16, 128>(1, 1, 300, 300, true, false);
  run<bf16, 64>(1, 1, 200, 520, false, true);
  run<f16, 64>(1, 1, 9, 0, false, false);
  printf(fails ? "FAILURES: %d\n" : "all ok\n", fails);
  return fails != 0;
#endif
  run<bf16, 64>(1, 1, 5, 5, false, false);
  run<bf16, 64>(2, 2, 67, 67, true, false);
  run<bf16, 64>(2, 1, 33, 131, true, true);
  run<bf16, 128>(1, 2, 100, 70, false, true);
  run<bf16, 128>(1, 1, 130, 130, true, false);
  run<f16, 64>(1, 2, 70, 97, false, false);
  run<f16, 128>(2, 1, 65, 40, true, true);
  run<bf16, 128>(1, 1, 300, 300, true, false);   // tc2: three 128-row blocks, causal skips and diagonal tiles
  run<bf16, 64>(1, 2, 257, 190, false, true);    // tc2: a 1-row last block, partial key tile, padding
  run<f16, 128>(1, 1, 131, 97, true, true);
  run<bf16, 64>(1, 2, 200, 300, false, false);   // wg: three key tiles (overlap steady state), two blocks
  run<f16, 64>(1, 1, 9, 0, false, false);        // no keys: out 0, lse -inf
  printf(fails ? "FAILURES: %d\n" : "all ok\n", fails);
  return fails != 0;
}
