// CPU emulation test of kernels/attention.cu (forward + both backward passes) against a naive
// double-precision attention with causal (Tq != Tk) and key-padding masks. Run with kernels/emu/run.sh.
#include "emu.h"
#include <cstdio>
#include <random>
#include "gen/attention.cu"

static std::mt19937 rng(1234);
static std::vector<float> randv(size_t n, float s = 1.f) { std::normal_distribution<float> d(0.f, s); std::vector<float> v(n); for (auto& x : v) x = d(rng); return v; }
// max abs error relative to the largest reference magnitude
static double maxerr(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0, s = 1e-12; for (double v : b) s = std::max(s, std::fabs(v));
  for (size_t i = 0; i < a.size(); ++i) { double d = std::fabs(a[i] - b[i]); if (!(d <= m)) m = d; } return m / s; }

int fails = 0;
void check(const char* what, double err, double tol) { printf("%-40s max rel err %.3g %s\n", what, err, err < tol ? "ok" : "FAIL"); if (!(err < tol)) fails++; }

void run(int B, int H, int Tq, int Tk, int D, bool causal, bool use_mask) {
  float scale = 1.f / std::sqrt((float)D);
  size_t nq = (size_t)B * H * Tq * D, nk = (size_t)B * H * Tk * D;
  auto q = randv(nq), k = randv(nk), v = randv(nk), dout = randv(nq);
  std::vector<float> mask(B * Tk, 1.f);
  if (use_mask) { for (int b = 0; b < B; ++b) for (int j = 0; j < Tk; ++j) mask[b * Tk + j] = ((j * 7 + b) % 5 == 0) ? 0.f : 1.f; if (B > 1) for (int j = 0; j < Tk; ++j) mask[1 * Tk + j] = 0.f; /* batch 1 fully masked */ }
  const float* mp = use_mask ? mask.data() : nullptr;
  int off = 0;  // top-left causal alignment (PyTorch is_causal), as the CPU op
  // reference in double
  std::vector<double> ro(nq, 0), rl((size_t)B * H * Tq), rdq(nq, 0), rdk(nk, 0), rdv(nk, 0);
  for (int b = 0; b < B; ++b) for (int h = 0; h < H; ++h) {
    size_t bh = (size_t)b * H + h;
    for (int i = 0; i < Tq; ++i) {
      std::vector<double> s(Tk); std::vector<char> ok(Tk); double m = -INFINITY;
      for (int j = 0; j < Tk; ++j) {
        ok[j] = (!use_mask || mask[b * Tk + j] != 0) && (!causal || j <= i + off);
        double acc = 0; for (int d = 0; d < D; ++d) acc += (double)q[(bh * Tq + i) * D + d] * k[(bh * Tk + j) * D + d];
        s[j] = acc * scale; if (ok[j]) m = std::max(m, s[j]);
      }
      double l = 0; std::vector<double> p(Tk, 0);
      if (m > -INFINITY) for (int j = 0; j < Tk; ++j) if (ok[j]) { p[j] = std::exp(s[j] - m); l += p[j]; }
      rl[bh * Tq + i] = l > 0 ? m + std::log(l) : -INFINITY;
      for (int j = 0; j < Tk; ++j) p[j] = l > 0 ? p[j] / l : 0;
      for (int d = 0; d < D; ++d) { double acc = 0; for (int j = 0; j < Tk; ++j) acc += p[j] * v[(bh * Tk + j) * D + d]; ro[(bh * Tq + i) * D + d] = acc; }
      // backward: dP = dO V^T, dS = P (dP - sum(dO*O)), dQ = scale dS K, dK += scale dS^T Q, dV += P^T dO
      double delta = 0; for (int d = 0; d < D; ++d) delta += dout[(bh * Tq + i) * D + d] * ro[(bh * Tq + i) * D + d];
      for (int j = 0; j < Tk; ++j) {
        if (p[j] == 0) continue;
        double dp = 0; for (int d = 0; d < D; ++d) dp += (double)dout[(bh * Tq + i) * D + d] * v[(bh * Tk + j) * D + d];
        double ds = p[j] * (dp - delta);
        for (int d = 0; d < D; ++d) {
          rdq[(bh * Tq + i) * D + d] += scale * ds * k[(bh * Tk + j) * D + d];
          rdk[(bh * Tk + j) * D + d] += scale * ds * q[(bh * Tq + i) * D + d];
          rdv[(bh * Tk + j) * D + d] += p[j] * dout[(bh * Tq + i) * D + d];
        }
      }
    }
  }
  std::vector<float> out(nq, NAN), lse((size_t)B * H * Tq, NAN), delta((size_t)B * H * Tq, NAN), dq(nq, NAN), dk(nk, NAN), dv(nk, NAN);
  size_t sm_f = (48 * D + 32 * (D + 1)) * 4, sm_b = (16 * D + 64 * (D + 1)) * 4;
  if (sm_f > sizeof(smem) || sm_b > sizeof(smem)) { printf("smem too big\n"); exit(1); }
  launch({(unsigned)((Tq + 15) / 16), (unsigned)(B * H)}, {128}, [&] { attention_fwd_f32(out.data(), lse.data(), q.data(), k.data(), v.data(), mp, B, H, Tq, Tk, D, scale, causal); });
  int rows = B * H * Tq;
  launch({(unsigned)((rows + 3) / 4)}, {128}, [&] { attention_bwd_preprocess_f32(delta.data(), out.data(), dout.data(), rows, D); });
  launch({(unsigned)((Tq + 7) / 8), (unsigned)(B * H)}, {128}, [&] { attention_bwd_dq_f32(dq.data(), lse.data(), delta.data(), q.data(), k.data(), v.data(), dout.data(), mp, B, H, Tq, Tk, D, scale, causal); });
  launch({(unsigned)((Tk + 7) / 8), (unsigned)(B * H)}, {128}, [&] { attention_bwd_dkdv_f32(dk.data(), dv.data(), lse.data(), delta.data(), q.data(), k.data(), v.data(), dout.data(), mp, B, H, Tq, Tk, D, scale, causal); });
  char buf[128];
  snprintf(buf, sizeof buf, "B%d H%d Tq%d Tk%d D%d causal%d mask%d", B, H, Tq, Tk, D, causal, use_mask); printf("%s\n", buf);
  // lse: compare finite values, and that -inf matches
  double el = 0; for (size_t i = 0; i < lse.size(); ++i) { if (std::isinf(rl[i])) { if (!(std::isinf(lse[i]) && lse[i] < 0)) el = 1e9; } else el = std::max(el, std::fabs(lse[i] - rl[i]) / (1e-3 + std::fabs(rl[i]))); }
  check("  out", maxerr(out, ro), 1e-5); check("  lse", el, 1e-5);
  check("  dq", maxerr(dq, rdq), 1e-5); check("  dk", maxerr(dk, rdk), 1e-5); check("  dv", maxerr(dv, rdv), 1e-5);
}

int main() {
  run(1, 1, 5, 5, 32, false, false);
  run(2, 3, 37, 37, 64, true, false);
  run(2, 2, 33, 45, 80, true, true);
  run(3, 1, 40, 29, 96, false, true);
  run(1, 2, 17, 70, 128, true, false);
  run(2, 1, 50, 50, 40, true, true);
  printf(fails ? "FAILURES: %d\n" : "all ok\n", fails);
  return fails != 0;
}
