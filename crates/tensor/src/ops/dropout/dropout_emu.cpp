// Emulator test of dropout.cu (kernels/emu/run.sh builds and runs every ops/<op>/<stem>_emu.cpp):
// dropout_fwd against the same keep test (dropout_uniform) on the host, and a line with the kept
// count and three uniforms.
#include "emu.h"
#include "emu_check.h"
#include "gen/dropout.cu"

int main() {
  // ---- dropout
  { int n = 20001; auto x = randv(n); std::vector<float> y(n); float p = 0.3f; unsigned long long seed = 12345;
    launch({4}, {256}, [&] { dropout_fwd_f32(y.data(), x.data(), n, p, seed); });
    int kept = 0; double e = 0; for (int i = 0; i < n; ++i) { float u = dropout_uniform(seed, i); float want = u >= p ? x[i] * (1.0f / (1.0f - p)) : 0.f; e = std::max(e, (double)std::fabs(y[i] - want)); kept += u >= p; }
    printf("dropout kept %d of %d (p=%.2f); u(42,0..2) = %.8f %.8f %.8f\n", kept, n, p, dropout_uniform(42, 0), dropout_uniform(42, 1), dropout_uniform(42, 2));
    check("dropout_fwd", e, 1e-9);
  }
  return emu_done();
}
