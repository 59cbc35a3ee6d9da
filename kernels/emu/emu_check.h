// The checking helpers the emulator tests share (kernels/emu/test_*.cpp and each op's
// crates/tensor/src/ops/<op>/<op>_emu.cpp): seeded normal vectors, the max error relative to the
// reference's largest magnitude, and a check line per comparison ("ok" or "FAIL"; run.sh and
// tests/kernel_emulator.rs read them). A test's main() ends with `return emu_done();`.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

static std::mt19937 rng(99);
static std::vector<float> randv(size_t n, float s = 1.f) { std::normal_distribution<float> d(0.f, s); std::vector<float> v(n); for (auto& x : v) x = d(rng); return v; }
static int fails = 0;
template <typename A, typename B> double err(const A& a, const B& b) {
  double m = 0, s = 1e-12; for (size_t i = 0; i < b.size(); ++i) s = std::max(s, std::fabs((double)b[i]));
  if (a.size() != b.size()) return 1e9;
  for (size_t i = 0; i < b.size(); ++i) { double d = std::fabs((double)a[i] - (double)b[i]); if (!(d <= m)) m = d; } return m / s; }
static void check(const char* what, double e, double tol = 1e-5) { printf("%-36s err %.3g %s\n", what, e, e < tol ? "ok" : "FAIL"); if (!(e < tol)) fails++; }
// Prints "all ok" (or the failure count) and gives main()'s exit status.
static int emu_done() { printf(fails ? "FAILURES: %d\n" : "all ok\n", fails); return fails != 0; }
