// Emulator test of reduce.cu (kernels/emu/run.sh builds and runs every ops/<op>/<stem>_emu.cpp)
// against double references: the sum and the max / argmax over the last dim (a tied maximum), and
// the column sum in parts then finished.
#include "emu.h"
#include "emu_check.h"
#include "gen/reduce.cu"

int main() {
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
  return emu_done();
}
