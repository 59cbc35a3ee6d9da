// Emulator test of rms_norm.cu (kernels/emu/run.sh builds and runs every ops/<op>/<op>_emu.cpp):
// forward, fused backward and the dweight reduction against double references, f32 and bf16, with
// and without a weight, odd widths and more parts than a block's rows; outputs poisoned with NaN.
#include "emu.h"
#include "emu_check.h"
#include <string>
#include "gen/rms_norm.cu"

int main() {
  struct Case { int R, C, parts; bool bf, affine; };
  for (Case k : {Case{37, 100, 5, false, true}, Case{3, 3, 2, false, true}, Case{9, 257, 4, false, false}, Case{23, 200, 3, true, true}, Case{64, 768, 7, false, true}}) {
    int R = k.R, C = k.C;
    auto x = randv(R * C, 2.f), w = randv(C), g = randv(R * C);
    if (k.bf) for (auto* v : {&x, &w, &g}) for (auto& e : *v) e = to_f32(from_f32<bf16>(e));  // exact in bf16
    const float eps = 1e-6f;
    std::vector<double> ry(R * C), rr(R), rdx(R * C), rdw(C, 0);
    for (int r = 0; r < R; ++r) {
      double ss = 0; for (int c = 0; c < C; ++c) ss += (double)x[r * C + c] * x[r * C + c];
      double rs = 1 / std::sqrt(ss / C + eps), b = 0; rr[r] = rs;
      for (int c = 0; c < C; ++c) { double xh = x[r * C + c] * rs, wc = k.affine ? w[c] : 1.0; ry[r * C + c] = xh * wc; b += g[r * C + c] * wc * xh; rdw[c] += g[r * C + c] * xh; }
      for (int c = 0; c < C; ++c) { double xh = x[r * C + c] * rs, wc = k.affine ? w[c] : 1.0; rdx[r * C + c] = rs * (g[r * C + c] * wc - xh * b / C); }
    }
    std::vector<float> y(R * C, NAN), rstd(R, NAN), dx(R * C, NAN), dw(C, NAN), part(k.parts * C, NAN);
    if (k.bf) {
      std::vector<bf16> xb(R * C), gb(R * C), wb(C), yb(R * C, from_f32<bf16>(NAN)), dxb(R * C, from_f32<bf16>(NAN)), dwb(C, from_f32<bf16>(NAN));
      for (int i = 0; i < R * C; ++i) { xb[i] = from_f32<bf16>(x[i]); gb[i] = from_f32<bf16>(g[i]); }
      for (int c = 0; c < C; ++c) wb[c] = from_f32<bf16>(w[c]);
      const bf16* wp = k.affine ? wb.data() : nullptr;
      launch({(unsigned)R}, {256}, [&] { rms_norm_fwd_bf16(yb.data(), rstd.data(), xb.data(), wp, R, C, eps); });
      launch({(unsigned)k.parts}, {256}, [&] { rms_norm_bwd_bf16(dxb.data(), part.data(), rstd.data(), gb.data(), xb.data(), wp, R, C); });
      if (k.affine) launch({(unsigned)((C + 31) / 32)}, {256}, [&] { rms_norm_bwd_reduce_bf16(dwb.data(), part.data(), k.parts, C); });
      for (int i = 0; i < R * C; ++i) { y[i] = to_f32(yb[i]); dx[i] = to_f32(dxb[i]); }
      for (int c = 0; c < C; ++c) dw[c] = to_f32(dwb[c]);
    } else {
      const float* wp = k.affine ? w.data() : nullptr;
      launch({(unsigned)R}, {256}, [&] { rms_norm_fwd_f32(y.data(), rstd.data(), x.data(), wp, R, C, eps); });
      launch({(unsigned)k.parts}, {256}, [&] { rms_norm_bwd_f32(dx.data(), part.data(), rstd.data(), g.data(), x.data(), wp, R, C); });
      if (k.affine) launch({(unsigned)((C + 31) / 32)}, {256}, [&] { rms_norm_bwd_reduce_f32(dw.data(), part.data(), k.parts, C); });
    }
    char what[64]; snprintf(what, sizeof what, "rms_norm %s R%d C%d%s", k.bf ? "bf16" : "f32", R, C, k.affine ? "" : " no weight");
    double tol = k.bf ? 8e-3 : 1e-5;  // bf16: one rounding of each output (2^-8 relative) against the max
    check((std::string(what) + " fwd").c_str(), err(y, ry), tol);
    check((std::string(what) + " rstd").c_str(), err(rstd, rr), 1e-5);
    check((std::string(what) + " dx").c_str(), err(dx, rdx), tol);
    if (k.affine) check((std::string(what) + " dw").c_str(), err(dw, rdw), tol);
  }
  return emu_done();
}
