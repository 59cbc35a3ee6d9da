// CPU emulation tests of the shared kernels of kernels/{elementwise,copy}.cu (broadcasting strided
// binary ops, unary silu forward and backward, binary_rows_fwd in f32 and bf16, strided copies)
// against double-precision references. Run with kernels/emu/run.sh. An op's own kernels
// (crates/tensor/src/ops/<op>/<stem>.cu) are tested by the <stem>_emu.cpp beside them.
#include "emu.h"
#include "emu_check.h"
#include "gen/elementwise.cu"
#include "gen/copy.cu"

int main() {
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
  return emu_done();
}
