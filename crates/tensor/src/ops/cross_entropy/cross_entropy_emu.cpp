// Emulator test of cross_entropy.cu (kernels/emu/run.sh builds and runs every
// ops/<op>/<stem>_emu.cpp): forward (loss, logsumexp) and backward against double references, with
// an ignored target (-100).
#include "emu.h"
#include "emu_check.h"
#include "gen/cross_entropy.cu"

int main() {
  // ---- cross_entropy
  { int R = 7, V = 1000; auto x = randv(R * V, 2.f); std::vector<long long> t = {3, 999, -100, 0, 500, 42, 7};
    std::vector<float> loss(R), lse(R), dl(R * V), dloss = {0.5f};
    launch({(unsigned)R}, {256}, [&] { cross_entropy_fwd_f32(loss.data(), lse.data(), x.data(), t.data(), R, V, -100); });
    launch({(unsigned)R}, {256}, [&] { cross_entropy_bwd_f32(dl.data(), lse.data(), dloss.data(), x.data(), t.data(), R, V, 0, -100); });
    std::vector<double> rl(R), rd(R * V);
    for (int r = 0; r < R; ++r) { double m = -INFINITY, s = 0; for (int c = 0; c < V; ++c) m = std::max(m, (double)x[r * V + c]); for (int c = 0; c < V; ++c) s += std::exp(x[r * V + c] - m); double l = m + std::log(s);
      rl[r] = t[r] == -100 ? 0 : l - x[r * V + t[r]]; for (int c = 0; c < V; ++c) rd[r * V + c] = t[r] == -100 ? 0 : 0.5 * (std::exp(x[r * V + c] - l) - (c == t[r])); }
    check("cross_entropy_fwd", err(loss, rl)); check("cross_entropy_bwd", err(dl, rd)); }
  return emu_done();
}
