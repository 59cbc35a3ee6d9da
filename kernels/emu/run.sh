#!/usr/bin/env bash
# Runs the kernels of kernels/*.cu and crates/tensor/src/ops/*/*.cu ON THE CPU under a tiny emulation of the CUDA execution model
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
# (the shared kernels and headers in kernels/, and each op's kernels beside its Rust halves in
# crates/tensor/src/ops/<op>/, flattened into one folder as NVRTC sees them)
for f in "$here"/../*.cu "$here"/../*.cuh "$here"/../../crates/tensor/src/ops/*/*.cu; do
  sed 's/extern __shared__/extern/' "$f" > "$out/gen/$(basename "$f")"
done
# KILN_EMU_TSAN=1: build under ThreadSanitizer (racecheck without a GPU: a shared- or global-memory
# access of one thread that no barrier orders against another thread's write, cp.async landings
# and wgmma operand reads included, is reported and fails the run)
flags=(-O2)
if [ "${KILN_EMU_TSAN:-0}" = 1 ]; then
  flags=(-O1 -g -fsanitize=thread -DKILN_EMU_TSAN=1)
  export TSAN_OPTIONS="halt_on_error=1 exitcode=66 ${TSAN_OPTIONS:-}"
fi
# the programs: kernels/emu/test_*.cpp, and each op's own test beside its kernels
# (crates/tensor/src/ops/<op>/<op>_emu.cpp), found here, not listed; KILN_EMU_TESTS="name ..." picks some
programs=()
for src in "$here"/test_*.cpp "$here"/../../crates/tensor/src/ops/*/*_emu.cpp; do
  [ -e "$src" ] || continue
  name="$(basename "$src" .cpp)"
  if [ -n "${KILN_EMU_TESTS:-}" ] && [[ " $KILN_EMU_TESTS " != *" $name "* ]]; then continue; fi
  programs+=("$src")
done
for src in "${programs[@]}"; do
  t="$(basename "$src" .cpp)"
  echo "== program $t"
  g++ -std=c++20 "${flags[@]}" -pthread -w -I"$out" -I"$here" -o "$out/$t" "$src"
  timeout "${KILN_EMU_TIMEOUT:-900}" "$out/$t"  # a deadlocked kernel (barriers that never complete) fails here
done
