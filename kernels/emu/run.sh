#!/usr/bin/env bash
# Runs the kernels of kernels/*.cu ON THE CPU under a tiny emulation of the CUDA execution model
# (emu.h: blocks in sequence, a block's threads as std::threads, barriers, warp shuffles/ballots)
# and compares them with double-precision references. Covers the f32 paths (and the pre-sm_80
# software bf16 rounding; f16 conversions use the host compiler's _Float16); the sm_80+ `cvt`
# instructions themselves need a GPU. Needs g++ >= 11 and about a minute; tests/kernel_emulator.rs
# runs it (so `cargo test` and CI do); run it by hand after editing a kernel:  kernels/emu/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../../target/kernel-emu}"
mkdir -p "$out/gen"
# the emulator maps __shared__ to `static`, which cannot combine with `extern`
for f in "$here"/../*.cu "$here"/../*.cuh; do
  sed 's/extern __shared__/extern/' "$f" > "$out/gen/$(basename "$f")"
done
for t in ${KILN_EMU_TESTS:-test_ops test_attention test_attention_tc}; do
  g++ -std=c++20 -O2 -pthread -w -I"$out" -I"$here" -o "$out/$t" "$here/$t.cpp"
  "$out/$t"
done
