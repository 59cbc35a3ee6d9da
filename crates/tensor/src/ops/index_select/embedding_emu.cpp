// Emulator test of embedding.cu (kernels/emu/run.sh builds and runs every ops/<op>/<stem>_emu.cpp)
// against double references: the gather forward and the deterministic scatter-add backward
// (repeated ids, several rows per block).
#include "emu.h"
#include "emu_check.h"
#include "gen/embedding.cu"

int main() {
  // ---- embedding
  { int V = 23, D = 37, N = 150; auto w = randv(V * D), g = randv(N * D); std::vector<long long> ids(N);
    for (int i = 0; i < N; ++i) ids[i] = (i * 7 + i / 3) % V; ids[10] = 22;
    std::vector<float> out(N * D), dw(V * D, NAN); std::vector<double> ro(N * D), rdw(V * D, 0);
    for (int i = 0; i < N; ++i) for (int d = 0; d < D; ++d) { ro[i * D + d] = w[ids[i] * D + d]; rdw[ids[i] * D + d] += g[i * D + d]; }
    launch({(unsigned)N}, {32}, [&] { embedding_fwd_f32(out.data(), w.data(), ids.data(), N, D, V); });
    int Rb = 4;  // rows per block; smem in floats: acc + tile ids + masks
    launch({(unsigned)((V + Rb - 1) / Rb)}, {64}, [&] { embedding_bwd_f32(dw.data(), g.data(), ids.data(), N, D, V, Rb); });
    check("embedding_fwd", err(out, ro), 1e-9); check("embedding_bwd", err(dw, rdw)); }
  return emu_done();
}
