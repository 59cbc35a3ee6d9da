// Emulator test of softmax.cu (kernels/emu/run.sh builds and runs every ops/<op>/<stem>_emu.cpp)
// against double references: softmax and log_softmax forward and backward (block-per-row and f32
// warp-per-row, a -inf input), and the bf16 warp-per-row forward and backward at exact fits (C =
// 768, 2048).
#include "emu.h"
#include "emu_check.h"
#include <string>
#include "gen/softmax.cu"

int main() {
  // ---- softmax / log_softmax
  { int R = 9, C = 300; auto x = randv(R * C, 3.f), g = randv(R * C); x[5] = -INFINITY;
    for (int lg = 0; lg < 2; ++lg) {
      std::vector<float> y(R * C), dx(R * C); std::vector<double> ry(R * C), rdx(R * C);
      for (int r = 0; r < R; ++r) { double m = -INFINITY, s = 0; for (int c = 0; c < C; ++c) m = std::max(m, (double)x[r * C + c]); for (int c = 0; c < C; ++c) s += std::exp(x[r * C + c] - m);
        for (int c = 0; c < C; ++c) ry[r * C + c] = lg ? x[r * C + c] - m - std::log(s) : std::exp(x[r * C + c] - m) / s;
        double dot = 0; for (int c = 0; c < C; ++c) dot += lg ? g[r * C + c] : g[r * C + c] * ry[r * C + c];
        for (int c = 0; c < C; ++c) rdx[r * C + c] = lg ? g[r * C + c] - std::exp(ry[r * C + c]) * dot : ry[r * C + c] * (g[r * C + c] - dot); }
      if (lg) { launch({(unsigned)R}, {256}, [&] { log_softmax_fwd_f32(y.data(), x.data(), R, C); }); bool ninf = std::isinf(y[5]) && y[5] < 0; launch({(unsigned)R}, {256}, [&] { log_softmax_bwd_f32(dx.data(), y.data(), g.data(), R, C); }); ry[5] = y[5] = ninf ? 0 : 1; }
      else { launch({(unsigned)R}, {64}, [&] { softmax_fwd_f32(y.data(), x.data(), R, C); }); launch({(unsigned)R}, {64}, [&] { softmax_bwd_f32(dx.data(), y.data(), g.data(), R, C); }); }
      if (lg) { /* restore -inf position for the bwd reference: exp(-inf)=0 */ }
      check(lg ? "log_softmax_fwd" : "softmax_fwd", err(y, ry)); check(lg ? "log_softmax_bwd" : "softmax_bwd", err(dx, rdx));
      { std::vector<float> y2(R * C, NAN), dx2(R * C, NAN); unsigned gb = (R + 7) / 8;
        if (lg) { launch({gb}, {256}, [&] { log_softmax_fwd_warp16_f32(y2.data(), x.data(), R, C); }); bool ninf = std::isinf(y2[5]) && y2[5] < 0; launch({gb}, {256}, [&] { log_softmax_bwd_warp16_f32(dx2.data(), y2.data(), g.data(), R, C); }); y2[5] = ninf ? 0 : 1; }
        else { launch({gb}, {256}, [&] { softmax_fwd_warp16_f32(y2.data(), x.data(), R, C); }); launch({gb}, {256}, [&] { softmax_bwd_warp16_f32(dx2.data(), y.data(), g.data(), R, C); }); }
        check(lg ? "log_softmax_fwd_warp" : "softmax_fwd_warp", err(y2, ry)); check(lg ? "log_softmax_bwd_warp" : "softmax_bwd_warp", err(dx2, rdx)); }
    } }
  // ---- the bf16 warp-per-row forward and backward at exact fits (C = 32 E): E = 24 (GPT-2's
  // 768) and E = 64 (the largest), inputs exact in bf16, outputs poisoned; error relative to bf16 eps
  for (int C : {768, 2048}) { int R = 11; auto x = randv(R * C, 2.f), g = randv(R * C);
    for (auto* v : {&x, &g}) for (auto& e : *v) e = to_f32(from_f32<bf16>(e));
    auto bfv = [](const std::vector<float>& v) { std::vector<bf16> o(v.size()); for (size_t i = 0; i < v.size(); ++i) o[i] = from_f32<bf16>(v[i]); return o; };
    auto f32v = [](const std::vector<bf16>& v) { std::vector<float> o(v.size()); for (size_t i = 0; i < v.size(); ++i) o[i] = to_f32(v[i]); return o; };
    auto xb = bfv(x), gb = bfv(g);
    std::vector<double> ry(R * C), rdx(R * C); std::vector<float> yq(R * C);
    for (int r = 0; r < R; ++r) { double m = -INFINITY, s = 0;
      for (int c = 0; c < C; ++c) m = std::max(m, (double)x[r * C + c]);
      for (int c = 0; c < C; ++c) s += std::exp(x[r * C + c] - m);
      for (int c = 0; c < C; ++c) { ry[r * C + c] = std::exp(x[r * C + c] - m) / s; yq[r * C + c] = to_f32(from_f32<bf16>((float)ry[r * C + c])); }
      double dot = 0; for (int c = 0; c < C; ++c) dot += g[r * C + c] * yq[r * C + c];
      for (int c = 0; c < C; ++c) rdx[r * C + c] = yq[r * C + c] * (g[r * C + c] - dot); }
    auto yb = bfv(yq); std::vector<bf16> o(R * C, from_f32<bf16>(NAN)), o2(R * C, from_f32<bf16>(NAN));
    unsigned gb8 = (R + 7) / 8;
    if (C == 768) {
      launch({gb8}, {256}, [&] { softmax_fwd_warp24_bf16(o.data(), xb.data(), R, C); });
      launch({gb8}, {256}, [&] { softmax_bwd_warp24_bf16(o2.data(), yb.data(), gb.data(), R, C); });
    } else {
      launch({gb8}, {256}, [&] { softmax_fwd_warp64_bf16(o.data(), xb.data(), R, C); });
      launch({gb8}, {256}, [&] { softmax_bwd_warp64_bf16(o2.data(), yb.data(), gb.data(), R, C); });
    }
    std::string e = "_warp" + std::to_string(C / 32) + "_bf16 C" + std::to_string(C) + " (rel. to bf16 eps)";
    check(("softmax_fwd" + e).c_str(), err(f32v(o), ry) / 0.0078125, 0.51);
    check(("softmax_bwd" + e).c_str(), err(f32v(o2), rdx) / 0.0078125, 0.51);
  }
  return emu_done();
}
