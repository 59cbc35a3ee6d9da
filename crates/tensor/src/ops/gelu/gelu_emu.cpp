// Emulator test of gelu.cu (kernels/emu/run.sh builds and runs every ops/<op>/<stem>_emu.cpp): the
// f32 erf and tanh forms against double (backward against central differences), and the bf16 path
// (8-element packs and a tail; the emulator uses the pre-sm_80 software rounding), erf and the tanh
// form through the sigmoid.
#include "emu.h"
#include "emu_check.h"
#include "gen/gelu.cu"

int main() {
  // ---- gelu (vs central differences) + bf16 rounding path
  { int n = 1003; auto x = randv(n, 2.f), g = randv(n);
    for (int ta = 0; ta < 2; ++ta) { std::vector<float> y(n), dx(n); std::vector<double> ry(n), rdx(n);
      for (int i = 0; i < n; ++i) { auto f = [&](double v) { return ta ? 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))) : 0.5 * v * (1 + std::erf(v / std::sqrt(2.))); };
        ry[i] = f(x[i]); rdx[i] = g[i] * (f(x[i] + 1e-5) - f(x[i] - 1e-5)) / 2e-5; }
      launch({2}, {128}, [&] { gelu_fwd_f32(y.data(), x.data(), n, ta); });
      launch({2}, {128}, [&] { gelu_bwd_f32(dx.data(), x.data(), g.data(), n, ta); });
      check(ta ? "gelu_fwd tanh" : "gelu_fwd erf", err(y, ry)); check(ta ? "gelu_bwd tanh" : "gelu_bwd erf", err(dx, rdx), 1e-4); } }
  // ---- bf16 path (8-element packs + tail; the emulator uses the pre-sm_80 software rounding)
  { int n = 1001; auto x = randv(n, 2.f); std::vector<bf16> xb(n), yb(n); double e = 0;
    for (int i = 0; i < n; ++i) xb[i] = from_f32<bf16>(x[i]);
    launch({1}, {64}, [&] { gelu_fwd_bf16(yb.data(), xb.data(), n, 0); });
    for (int i = 0; i < n; ++i) { double v = to_f32(xb[i]); double r = 0.5 * v * (1 + std::erf(v / std::sqrt(2.))); e = std::max(e, std::fabs(to_f32(yb[i]) - r) / (std::fabs(r) + 1e-2)); }
    check("gelu_fwd_bf16 (rel. to bf16 eps)", e / 0.0078125, 0.51); }
  // ---- bf16 tanh form through the sigmoid (gelu_tanh_fast): x from -9 to 9, where 1 + tanh(u)
  // would cancel for x < 0; each element against double, relative to bf16 eps (output rounding only)
  { int n = 1001; std::vector<bf16> xb(n), gb(n), yb(n), db(n); auto g = randv(n); double ef = 0, eb = 0;
    for (int i = 0; i < n; ++i) { xb[i] = from_f32<bf16>(-9.f + 18.f * i / (n - 1)); gb[i] = from_f32<bf16>(g[i]); }
    launch({1}, {64}, [&] { gelu_fwd_bf16(yb.data(), xb.data(), n, 1); });
    launch({1}, {64}, [&] { gelu_bwd_bf16(db.data(), xb.data(), gb.data(), n, 1); });
    for (int i = 0; i < n; ++i) { double v = to_f32(xb[i]), k = std::sqrt(2 / M_PI), u = k * (v + 0.044715 * v * v * v), t = std::tanh(u);
      double r = 0.5 * v * (1 + t), dr = to_f32(gb[i]) * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v));
      // 1 + t for u < -3 from the exact form exp(2u) / (1 + exp(2u)) * 2, so the reference does not cancel either
      if (u < -3) { double e2 = std::exp(2 * u); r = v * e2 / (1 + e2); double s = e2 / (1 + e2); dr = to_f32(gb[i]) * (s + v * s * (1 - s) * 2 * k * (1 + 3 * 0.044715 * v * v)); }
      double df = std::fabs(to_f32(yb[i]) - r) / std::max(std::fabs(r), 1e-30);  // r = 0 only at x = 0, where y = 0
      double dd = std::fabs(to_f32(db[i]) - dr) / (std::fabs(dr) + 1e-3);
      if (!(df <= ef)) ef = df;  // a NaN (an unwritten output) counts
      if (!(dd <= eb)) eb = dd; }
    check("gelu_fwd_bf16 tanh, per element (rel. to bf16 eps)", ef / 0.0078125, 0.51);
    check("gelu_bwd_bf16 tanh, per element (rel. to bf16 eps)", eb / 0.0078125, 0.51); }
  return emu_done();
}
