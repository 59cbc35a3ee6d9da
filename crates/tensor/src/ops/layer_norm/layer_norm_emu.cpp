// Emulator test of layer_norm.cu (kernels/emu/run.sh builds and runs every ops/<op>/<stem>_emu.cpp)
// against double references: the block-per-row forward and backward (partial column sums, then the
// reduce), the f32 warp-per-row forward, the register-resident backward layer_norm_bwd_warp<E> (f32
// and bf16, with and without affine), and the bf16 warp-per-row forwards at exact fits (C = 768,
// 2048).
#include "emu.h"
#include "emu_check.h"
#include <string>
#include "gen/layer_norm.cu"

int main() {
  // ---- layer_norm
  { int R = 37, C = 100; auto x = randv(R * C, 2.f), w = randv(C), b = randv(C), g = randv(R * C);
    for (auto& v : x) v += 3.f;
    std::vector<float> out(R * C), mean(R), rstd(R), dx(R * C), dw(C), db(C);
    launch({(unsigned)R}, {256}, [&] { layer_norm_fwd_f32(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), R, C, 1e-5f); });
    std::vector<double> ro(R * C), rdx(R * C), rdw(C, 0), rdb(C, 0);
    for (int r = 0; r < R; ++r) { double mu = 0, var = 0; for (int c = 0; c < C; ++c) mu += x[r * C + c]; mu /= C; for (int c = 0; c < C; ++c) var += (x[r * C + c] - mu) * (x[r * C + c] - mu); var /= C; double rs = 1 / std::sqrt(var + 1e-5);
      double a = 0, bb = 0; for (int c = 0; c < C; ++c) { double xh = (x[r * C + c] - mu) * rs; ro[r * C + c] = xh * w[c] + b[c]; a += g[r * C + c] * w[c]; bb += g[r * C + c] * w[c] * xh; rdw[c] += g[r * C + c] * xh; rdb[c] += g[r * C + c]; }
      for (int c = 0; c < C; ++c) { double xh = (x[r * C + c] - mu) * rs; rdx[r * C + c] = rs * (g[r * C + c] * w[c] - a / C - xh * bb / C); } }
    check("layer_norm_fwd", err(out, ro));
    { std::vector<float> o2(R * C, NAN), m2(R, NAN), r2(R, NAN);
      launch({(unsigned)((R + 7) / 8)}, {256}, [&] { layer_norm_fwd_warp32_f32(o2.data(), m2.data(), r2.data(), x.data(), w.data(), b.data(), R, C, 1e-5f); });
      check("layer_norm_fwd_warp", err(o2, ro)); check("layer_norm_fwd_warp mean/rstd", std::max(err(m2, mean), err(r2, rstd))); }
    int parts = 5; std::vector<float> pw(parts * C, NAN), pb(parts * C, NAN);
    launch({(unsigned)parts}, {256}, [&] { layer_norm_bwd_f32(dx.data(), pw.data(), pb.data(), mean.data(), rstd.data(), g.data(), x.data(), w.data(), R, C); });
    launch({(unsigned)((C + 31) / 32)}, {256}, [&] { layer_norm_bwd_reduce_f32(dw.data(), db.data(), pw.data(), pb.data(), parts, C); });
    check("layer_norm_bwd dx", err(dx, rdx)); check("layer_norm_bwd dw", err(dw, rdw)); check("layer_norm_bwd db", err(db, rdb));
  }
  // ---- layer_norm_bwd_warp<E>: rows in registers, per-lane column sums, then the new reduce.
  // (R, C, E, blocks): fewer rows than warps, a partial last pack group, P = 6 packs per lane,
  // bf16, and no affine transform; outputs poisoned with NaN.
  { struct Case { int R, C, E, parts; bool bf, affine; };
    for (Case k : {Case{37, 100, 8, 3, false, true}, Case{5, 100, 8, 2, false, true}, Case{19, 700, 24, 2, false, true},
                   Case{23, 200, 8, 3, true, true}, Case{11, 1000, 32, 2, false, false}, Case{9, 1528, 48, 2, true, true}}) {
      int R = k.R, C = k.C; auto x = randv(R * C, 2.f), w = randv(C), g = randv(R * C);
      for (auto& v : x) v += 1.f;
      if (k.bf) for (auto* v : {&x, &w, &g}) for (auto& e : *v) e = to_f32(from_f32<bf16>(e));  // exact in bf16
      std::vector<float> mean(R), rstd(R); std::vector<double> rdx(R * C), rdw(C, 0), rdb(C, 0);
      for (int r = 0; r < R; ++r) { double mu = 0, var = 0; for (int c = 0; c < C; ++c) mu += x[r * C + c]; mu /= C;
        for (int c = 0; c < C; ++c) var += (x[r * C + c] - mu) * (x[r * C + c] - mu); var /= C;
        mean[r] = (float)mu; rstd[r] = (float)(1 / std::sqrt(var + 1e-5));
        double a = 0, bb = 0, rs = rstd[r];
        for (int c = 0; c < C; ++c) { double xh = (x[r * C + c] - mean[r]) * rs, wc = k.affine ? w[c] : 1.0; a += g[r * C + c] * wc; bb += g[r * C + c] * wc * xh; rdw[c] += g[r * C + c] * xh; rdb[c] += g[r * C + c]; }
        for (int c = 0; c < C; ++c) { double xh = (x[r * C + c] - mean[r]) * rs, wc = k.affine ? w[c] : 1.0; rdx[r * C + c] = rs * (g[r * C + c] * wc - a / C - xh * bb / C); } }
      std::vector<float> pw(k.parts * C, NAN), pb(k.parts * C, NAN), dx(R * C, NAN), dw(C, NAN), db(C, NAN);
      char what[96]; snprintf(what, sizeof what, "layer_norm_bwd_warp%d %s R%d C%d%s", k.E, k.bf ? "bf16" : "f32", R, C, k.affine ? "" : " no affine");
      if (k.bf) {
        std::vector<bf16> xb(R * C), gb(R * C), wb(C), dxb(R * C, from_f32<bf16>(NAN)), dwb(C, from_f32<bf16>(NAN)), dbb(C, from_f32<bf16>(NAN));
        for (int i = 0; i < R * C; ++i) { xb[i] = from_f32<bf16>(x[i]); gb[i] = from_f32<bf16>(g[i]); }
        for (int c = 0; c < C; ++c) wb[c] = from_f32<bf16>(w[c]);
        auto f = k.E == 8 ? layer_norm_bwd_warp8_bf16 : layer_norm_bwd_warp48_bf16;
        launch({(unsigned)k.parts}, {128}, [&] { f(dxb.data(), pw.data(), pb.data(), mean.data(), rstd.data(), gb.data(), xb.data(), k.affine ? wb.data() : nullptr, R, C); });
        launch({(unsigned)((C + 31) / 32)}, {256}, [&] { layer_norm_bwd_reduce_bf16(dwb.data(), dbb.data(), pw.data(), pb.data(), k.parts, C); });
        for (int i = 0; i < R * C; ++i) dx[i] = to_f32(dxb[i]);
        for (int c = 0; c < C; ++c) { dw[c] = to_f32(dwb[c]); db[c] = to_f32(dbb[c]); }
      } else {
        auto f = k.E == 8 ? layer_norm_bwd_warp8_f32 : k.E == 24 ? layer_norm_bwd_warp24_f32 : layer_norm_bwd_warp32_f32;
        launch({(unsigned)k.parts}, {k.E == 24 ? 256u : 128u}, [&] { f(dx.data(), pw.data(), pb.data(), mean.data(), rstd.data(), g.data(), x.data(), k.affine ? w.data() : nullptr, R, C); });
        launch({(unsigned)((C + 31) / 32)}, {256}, [&] { layer_norm_bwd_reduce_f32(dw.data(), db.data(), pw.data(), pb.data(), k.parts, C); });
      }
      double tol = k.bf ? 8e-3 : 1e-5;  // bf16: one rounding of each output (2^-8 relative) against the max
      check((std::string(what) + " dx").c_str(), err(dx, rdx), tol);
      if (k.affine) { check((std::string(what) + " dw").c_str(), err(dw, rdw), tol); check((std::string(what) + " db").c_str(), err(db, rdb), tol); }
    } }
  // ---- the bf16 warp-per-row forward at exact fits (C = 32 E): E = 24 (GPT-2's 768) and E = 64
  // (the largest), inputs exact in bf16, outputs poisoned; error relative to bf16 eps
  for (int C : {768, 2048}) { int R = 11; auto x = randv(R * C, 2.f), w = randv(C), b = randv(C);
    for (auto* v : {&x, &w, &b}) for (auto& e : *v) e = to_f32(from_f32<bf16>(e));
    auto bfv = [](const std::vector<float>& v) { std::vector<bf16> o(v.size()); for (size_t i = 0; i < v.size(); ++i) o[i] = from_f32<bf16>(v[i]); return o; };
    auto f32v = [](const std::vector<bf16>& v) { std::vector<float> o(v.size()); for (size_t i = 0; i < v.size(); ++i) o[i] = to_f32(v[i]); return o; };
    auto xb = bfv(x), wb = bfv(w), bb = bfv(b);
    std::vector<double> rl(R * C);
    for (int r = 0; r < R; ++r) { double mu = 0, var = 0;
      for (int c = 0; c < C; ++c) mu += x[r * C + c]; mu /= C;
      for (int c = 0; c < C; ++c) var += (x[r * C + c] - mu) * (x[r * C + c] - mu); var /= C;
      for (int c = 0; c < C; ++c) rl[r * C + c] = (x[r * C + c] - mu) / std::sqrt(var + 1e-5) * w[c] + b[c]; }
    std::vector<bf16> o3(R * C, from_f32<bf16>(NAN));
    std::vector<float> mean(R, NAN), rstd(R, NAN); unsigned gb8 = (R + 7) / 8;
    if (C == 768) launch({gb8}, {256}, [&] { layer_norm_fwd_warp24_bf16(o3.data(), mean.data(), rstd.data(), xb.data(), wb.data(), bb.data(), R, C, 1e-5f); });
    else launch({gb8}, {256}, [&] { layer_norm_fwd_warp64_bf16(o3.data(), mean.data(), rstd.data(), xb.data(), wb.data(), bb.data(), R, C, 1e-5f); });
    std::string e = "_warp" + std::to_string(C / 32) + "_bf16 C" + std::to_string(C) + " (rel. to bf16 eps)";
    check(("layer_norm_fwd" + e).c_str(), err(f32v(o3), rl) / 0.0078125, 0.51);
  }
  return emu_done();
}
