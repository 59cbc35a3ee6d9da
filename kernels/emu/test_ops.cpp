// CPU emulation tests of the kernels of kernels/{elementwise,copy}.cu and crates/tensor/src/ops/<op>/<op>.cu (gelu, layer_norm, softmax, cross_entropy, reduce, adamw, dropout; index_select/embedding.cu)
// against double-precision references. Run with kernels/emu/run.sh.
#include "emu.h"
#include "emu_check.h"
#include <cstdio>
#include <random>
#include <string>
#include "gen/gelu.cu"
#include "gen/layer_norm.cu"
#include "gen/softmax.cu"
#include "gen/cross_entropy.cu"
#include "gen/elementwise.cu"
#include "gen/reduce.cu"
#include "gen/embedding.cu"
#include "gen/adamw.cu"
#include "gen/dropout.cu"
#include "gen/copy.cu"

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
  // ---- the bf16 warp-per-row forwards and softmax backward at exact fits (C = 32 E): E = 24 (GPT-2's
  // 768) and E = 64 (the largest), inputs exact in bf16, outputs poisoned; error relative to bf16 eps
  for (int C : {768, 2048}) { int R = 11; auto x = randv(R * C, 2.f), g = randv(R * C), w = randv(C), b = randv(C);
    for (auto* v : {&x, &g, &w, &b}) for (auto& e : *v) e = to_f32(from_f32<bf16>(e));
    auto bfv = [](const std::vector<float>& v) { std::vector<bf16> o(v.size()); for (size_t i = 0; i < v.size(); ++i) o[i] = from_f32<bf16>(v[i]); return o; };
    auto f32v = [](const std::vector<bf16>& v) { std::vector<float> o(v.size()); for (size_t i = 0; i < v.size(); ++i) o[i] = to_f32(v[i]); return o; };
    auto xb = bfv(x), gb = bfv(g), wb = bfv(w), bb = bfv(b);
    std::vector<double> ry(R * C), rdx(R * C), rl(R * C); std::vector<float> yq(R * C);
    for (int r = 0; r < R; ++r) { double m = -INFINITY, s = 0, mu = 0, var = 0;
      for (int c = 0; c < C; ++c) { m = std::max(m, (double)x[r * C + c]); mu += x[r * C + c]; } mu /= C;
      for (int c = 0; c < C; ++c) { s += std::exp(x[r * C + c] - m); var += (x[r * C + c] - mu) * (x[r * C + c] - mu); } var /= C;
      for (int c = 0; c < C; ++c) { ry[r * C + c] = std::exp(x[r * C + c] - m) / s; yq[r * C + c] = to_f32(from_f32<bf16>((float)ry[r * C + c]));
        rl[r * C + c] = (x[r * C + c] - mu) / std::sqrt(var + 1e-5) * w[c] + b[c]; }
      double dot = 0; for (int c = 0; c < C; ++c) dot += g[r * C + c] * yq[r * C + c];
      for (int c = 0; c < C; ++c) rdx[r * C + c] = yq[r * C + c] * (g[r * C + c] - dot); }
    auto yb = bfv(yq); std::vector<bf16> o(R * C, from_f32<bf16>(NAN)), o2(R * C, from_f32<bf16>(NAN)), o3(R * C, from_f32<bf16>(NAN));
    std::vector<float> mean(R, NAN), rstd(R, NAN); unsigned gb8 = (R + 7) / 8;
    if (C == 768) {
      launch({gb8}, {256}, [&] { softmax_fwd_warp24_bf16(o.data(), xb.data(), R, C); });
      launch({gb8}, {256}, [&] { softmax_bwd_warp24_bf16(o2.data(), yb.data(), gb.data(), R, C); });
      launch({gb8}, {256}, [&] { layer_norm_fwd_warp24_bf16(o3.data(), mean.data(), rstd.data(), xb.data(), wb.data(), bb.data(), R, C, 1e-5f); });
    } else {
      launch({gb8}, {256}, [&] { softmax_fwd_warp64_bf16(o.data(), xb.data(), R, C); });
      launch({gb8}, {256}, [&] { softmax_bwd_warp64_bf16(o2.data(), yb.data(), gb.data(), R, C); });
      launch({gb8}, {256}, [&] { layer_norm_fwd_warp64_bf16(o3.data(), mean.data(), rstd.data(), xb.data(), wb.data(), bb.data(), R, C, 1e-5f); });
    }
    std::string e = "_warp" + std::to_string(C / 32) + "_bf16 C" + std::to_string(C) + " (rel. to bf16 eps)";
    check(("softmax_fwd" + e).c_str(), err(f32v(o), ry) / 0.0078125, 0.51);
    check(("softmax_bwd" + e).c_str(), err(f32v(o2), rdx) / 0.0078125, 0.51);
    check(("layer_norm_fwd" + e).c_str(), err(f32v(o3), rl) / 0.0078125, 0.51);
  }
  // ---- cross_entropy
  { int R = 7, V = 1000; auto x = randv(R * V, 2.f); std::vector<long long> t = {3, 999, -100, 0, 500, 42, 7};
    std::vector<float> loss(R), lse(R), dl(R * V), dloss = {0.5f};
    launch({(unsigned)R}, {256}, [&] { cross_entropy_fwd_f32(loss.data(), lse.data(), x.data(), t.data(), R, V, -100); });
    launch({(unsigned)R}, {256}, [&] { cross_entropy_bwd_f32(dl.data(), lse.data(), dloss.data(), x.data(), t.data(), R, V, 0, -100); });
    std::vector<double> rl(R), rd(R * V);
    for (int r = 0; r < R; ++r) { double m = -INFINITY, s = 0; for (int c = 0; c < V; ++c) m = std::max(m, (double)x[r * V + c]); for (int c = 0; c < V; ++c) s += std::exp(x[r * V + c] - m); double l = m + std::log(s);
      rl[r] = t[r] == -100 ? 0 : l - x[r * V + t[r]]; for (int c = 0; c < V; ++c) rd[r * V + c] = t[r] == -100 ? 0 : 0.5 * (std::exp(x[r * V + c] - l) - (c == t[r])); }
    check("cross_entropy_fwd", err(loss, rl)); check("cross_entropy_bwd", err(dl, rd)); }
  // ---- elementwise: binary with broadcast [4,1,5] + [3,1] -> [4,3,5], lhs transposed storage
  { std::vector<float> a = randv(20), b = randv(3), out(60); std::vector<double> r(60);
    // lhs logical [4,1,5] stored as [5,4] (transposed): element (i,0,k) at k*4+i -> strides (1, 0, 4); broadcast over dim1 (3)
    Layout la{}, lb{}; long long sh[3] = {4, 3, 5};
    for (int d = 0; d < 3; ++d) la.shape[d] = lb.shape[d] = sh[d]; la.rank = lb.rank = 3;
    la.stride[0] = 1; la.stride[1] = 0; la.stride[2] = 4; lb.stride[0] = 0; lb.stride[1] = 1; lb.stride[2] = 0;
    for (int i = 0; i < 4; ++i) for (int j = 0; j < 3; ++j) for (int k = 0; k < 5; ++k) r[(i * 3 + j) * 5 + k] = (double)a[k * 4 + i] / b[j];
    launch({1}, {32}, [&] { binary_fwd_f32(out.data(), a.data(), b.data(), la, lb, 60, B_DIV); });
    check("binary_fwd broadcast+strided", err(out, r), 1e-6);
    std::vector<float> u(60), du(60); auto g = randv(60); std::vector<double> ru(60), rdu(60);
    for (int i = 0; i < 60; ++i) { double s = 1 / (1 + std::exp(-(double)out[i])); ru[i] = out[i] * s; rdu[i] = g[i] * s * (1 + out[i] * (1 - s)); }
    Layout lc{}; lc.shape[0] = 60; lc.stride[0] = 1; lc.rank = 1; lc.contiguous = 1;
    launch({2}, {64}, [&] { unary_fwd_f32(u.data(), out.data(), lc, 60, U_SILU); });
    launch({2}, {64}, [&] { unary_bwd_f32(du.data(), out.data(), u.data(), g.data(), 60, U_SILU); });
    check("unary_fwd silu", err(u, ru)); check("unary_bwd silu", err(du, rdu));
    // copy permute [2,3,4] -> permute(2,0,1) = [4,2,3], strides (1, 12, 4)
    auto src = randv(24); std::vector<float> dst(24), back(24, NAN); std::vector<double> rc(24);
    for (int i = 0; i < 4; ++i) for (int j = 0; j < 2; ++j) for (int k = 0; k < 3; ++k) rc[(i * 2 + j) * 3 + k] = src[j * 12 + k * 4 + i];
    Layout lp{}; lp.rank = 3; lp.shape[0] = 4; lp.shape[1] = 2; lp.shape[2] = 3; lp.stride[0] = 1; lp.stride[1] = 12; lp.stride[2] = 4;
    launch({1}, {256}, [&] { copy_f32(dst.data(), src.data(), lp, 24); });
    launch({1}, {256}, [&] { copy_to_strided_f32(back.data(), dst.data(), lp, 24); });
    check("copy permute", err(dst, rc), 1e-9); check("copy_to_strided roundtrip", err(back, src), 1e-9); }
  // ---- reduce
  { int R = 50, C = 33; auto x = randv(R * C); x[3 * C + 7] = 9.f; x[3 * C + 20] = 9.f;
    std::vector<float> s(R), m(R), cs(C); std::vector<long long> am(R); std::vector<double> rs(R, 0), rm(R, -INFINITY), rcs(C, 0); std::vector<long long> ram(R);
    for (int r = 0; r < R; ++r) for (int c = 0; c < C; ++c) { rs[r] += x[r * C + c]; rcs[c] += x[r * C + c]; if (x[r * C + c] > rm[r]) { rm[r] = x[r * C + c]; ram[r] = c; } }
    launch({(unsigned)R}, {64}, [&] { reduce_sum_last_f32(s.data(), x.data(), R, C); });
    launch({(unsigned)R}, {96}, [&] { reduce_max_last_f32(m.data(), am.data(), x.data(), R, C); });
    int parts = 3; std::vector<float> part(parts * C);
    launch({(unsigned)((C + 31) / 32), (unsigned)parts}, {256}, [&] { reduce_sum_rows_partial_f32(part.data(), x.data(), R, C); });
    launch({(unsigned)((C + 31) / 32)}, {256}, [&] { reduce_sum_rows_finish_f32(cs.data(), part.data(), parts, C); });
    bool argok = am == ram; check("reduce_sum_last", err(s, rs)); check("reduce_max_last", err(m, rm) + (argok ? 0 : 1)); check("reduce_sum_rows", err(cs, rcs)); }
  // ---- embedding
  { int V = 23, D = 37, N = 150; auto w = randv(V * D), g = randv(N * D); std::vector<long long> ids(N);
    for (int i = 0; i < N; ++i) ids[i] = (i * 7 + i / 3) % V; ids[10] = 22;
    std::vector<float> out(N * D), dw(V * D, NAN); std::vector<double> ro(N * D), rdw(V * D, 0);
    for (int i = 0; i < N; ++i) for (int d = 0; d < D; ++d) { ro[i * D + d] = w[ids[i] * D + d]; rdw[ids[i] * D + d] += g[i * D + d]; }
    launch({(unsigned)N}, {32}, [&] { embedding_fwd_f32(out.data(), w.data(), ids.data(), N, D, V); });
    int Rb = 4;  // rows per block; smem in floats: acc + tile ids + masks
    launch({(unsigned)((V + Rb - 1) / Rb)}, {64}, [&] { embedding_bwd_f32(dw.data(), g.data(), ids.data(), N, D, V, Rb); });
    check("embedding_fwd", err(out, ro), 1e-9); check("embedding_bwd", err(dw, rdw)); }
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
  // ---- binary_rows_fwd (a bias add / row broadcast): f32 sub (not commutative) and bf16 add, with a
  // y grid smaller than the rows so threads walk down several rows, and a partial x block
  { int R = 37, C = 100; auto a = randv(R * C), b = randv(C); std::vector<float> o(R * C, NAN); std::vector<double> r(R * C);
    for (int i = 0; i < R * C; ++i) r[i] = (double)(a[i] - b[i % C]);
    launch({1, 5}, {32}, [&] { binary_rows_fwd_f32(o.data(), a.data(), b.data(), R, C, B_SUB); });
    check("binary_rows_fwd f32 sub", err(o, r), 1e-9);
    int C2 = 96; std::vector<bf16> ab(R * C2), bb(C2), ob(R * C2, from_f32<bf16>(NAN)); std::vector<double> r2(R * C2); double e = 0;
    for (int i = 0; i < R * C2; ++i) ab[i] = from_f32<bf16>(a[i % (R * C)]);
    for (int c = 0; c < C2; ++c) bb[c] = from_f32<bf16>(b[c % C]);
    launch({1, 4}, {32}, [&] { binary_rows_fwd_bf16(ob.data(), ab.data(), bb.data(), R, C2, B_ADD); });
    for (int i = 0; i < R * C2; ++i) { double want = (double)to_f32(ab[i]) + (double)to_f32(bb[i % C2]); double d = std::fabs(to_f32(ob[i]) - want) / (std::fabs(want) + 1e-3); if (!(d <= e)) e = d; }  // NaN counts
    check("binary_rows_fwd bf16 add (rel. to bf16 eps)", e / 0.0078125, 0.51); }
  // ---- dropout + adamw
  { int n = 20001; auto x = randv(n); std::vector<float> y(n); float p = 0.3f; unsigned long long seed = 12345;
    launch({4}, {256}, [&] { dropout_fwd_f32(y.data(), x.data(), n, p, seed); });
    int kept = 0; double e = 0; for (int i = 0; i < n; ++i) { float u = dropout_uniform(seed, i); float want = u >= p ? x[i] * (1.0f / (1.0f - p)) : 0.f; e = std::max(e, (double)std::fabs(y[i] - want)); kept += u >= p; }
    printf("dropout kept %d of %d (p=%.2f); u(42,0..2) = %.8f %.8f %.8f\n", kept, n, p, dropout_uniform(42, 0), dropout_uniform(42, 1), dropout_uniform(42, 2));
    check("dropout_fwd", e, 1e-9);
  }
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
