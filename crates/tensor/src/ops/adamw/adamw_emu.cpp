// Emulator test of adamw.cu (kernels/emu/run.sh builds and runs every ops/<op>/<stem>_emu.cpp):
// adamw_step bit-identical to the CPU loop's float operations and within f32 rounding of AdamW in
// double (f32 and bf16 gradients).
#include "emu.h"
#include "emu_check.h"
#include <cstring>
#include "gen/adamw.cu"

int main() {
  // ---- adamw: bit-identical to the CPU loop's float operations (adamw_kernel.rs::body), and within
  // f32 rounding of AdamW in double; step 3, both lerp branches (beta1 0.9: w1 < 0.5; 0.3: w1 >= 0.5),
  // in place and out of place, no decay, bf16 gradients
  { int n = 20001; double lr = 1e-3, wd = 0.01, b2 = 0.999, ep = 1e-8; int t = 3;
    for (int variant = 0; variant < 4; ++variant) {
      double b1 = variant == 1 ? 0.3 : 0.9; bool inplace = variant == 2, decay_on = variant != 3, bf = variant == 3;
      auto w = randv(n), gg = randv(n), m = randv(n, 0.1f), v = randv(n, 0.1f);
      for (auto& x : v) x = x * x;
      if (bf) for (auto& x : gg) x = to_f32(from_f32<bf16>(x));
      float decay = decay_on ? (float)(1 - lr * wd) : 1.f, w1 = (float)(1 - b1), beta2 = (float)b2, omb2 = (float)(1 - b2);
      float bc2s = (float)std::sqrt(1 - std::pow(b2, t)), eps = (float)ep, nss = (float)(-(lr / (1 - std::pow(b1, t))));
      std::vector<float> ew(n), em(n), ev(n); std::vector<double> rw(n);
      bool small = std::fabs(w1) < 0.5f; float coeff = small ? w1 : w1 - 1.f;
      for (int i = 0; i < n; ++i) {  // the CPU loop, operation by operation
        float p = decay_on ? w[i] * decay : w[i], mn = std::fmaf(coeff, gg[i] - m[i], small ? m[i] : gg[i]);
        float vn = v[i] * beta2 + (omb2 * gg[i]) * gg[i]; float den = std::sqrt(vn) / bc2s + eps;
        ew[i] = p + (nss * mn) / den; em[i] = mn; ev[i] = vn;
        double mi = b1 * m[i] + (1 - b1) * gg[i], vi = b2 * v[i] + (1 - b2) * (double)gg[i] * gg[i];
        rw[i] = w[i] * (decay_on ? 1 - lr * wd : 1.0) - lr * (mi / (1 - std::pow(b1, t))) / (std::sqrt(vi / (1 - std::pow(b2, t))) + ep); }
      std::vector<float> pw = inplace ? w : std::vector<float>(n, NAN), pm = inplace ? m : std::vector<float>(n, NAN), pv = inplace ? v : std::vector<float>(n, NAN);
      const float* iw = inplace ? pw.data() : w.data(); const float* im = inplace ? pm.data() : m.data(); const float* iv = inplace ? pv.data() : v.data();
      if (bf) { std::vector<bf16> gb(n); for (int i = 0; i < n; ++i) gb[i] = from_f32<bf16>(gg[i]);
        launch({4}, {256}, [&] { adamw_step_bf16(pw.data(), pm.data(), pv.data(), iw, im, iv, gb.data(), n, decay, w1, beta2, omb2, bc2s, eps, nss); }); }
      else launch({4}, {256}, [&] { adamw_step_f32(pw.data(), pm.data(), pv.data(), iw, im, iv, gg.data(), n, decay, w1, beta2, omb2, bc2s, eps, nss); });
      int diff = 0; for (int i = 0; i < n; ++i) diff += memcmp(&pw[i], &ew[i], 4) != 0 || memcmp(&pm[i], &em[i], 4) != 0 || memcmp(&pv[i], &ev[i], 4) != 0;
      const char* names[] = {"beta1 0.9", "beta1 0.3", "in place", "no decay, bf16 grad"};
      char what[80]; snprintf(what, sizeof what, "adamw_step %s: elements != CPU bits", names[variant]);
      check(what, diff, 0.5);
      snprintf(what, sizeof what, "adamw_step %s vs double", names[variant]);
      double e = 0; for (int i = 0; i < n; ++i) e = std::max(e, std::fabs(pw[i] - rw[i]) / (std::fabs(rw[i]) + 1e-3));
      check(what, e, 1e-6); } }
  return emu_done();
}
