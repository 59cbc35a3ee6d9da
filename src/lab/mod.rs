//! The kernel lab: benchmark cases shared by `kiln bench` and the criterion suites
//! (`benches/lab.rs`). A [`harness::Case`] is one op at one shape and dtype with its variants
//! (SIMD levels, a composed reference, the CUDA kernel); [`harness::run_case`] checks every
//! variant against the reference and times only those that match. [`row::Row`] is the JSON
//! written by `kiln bench --json` and by `scripts/torch_bench.py`, so the two pair up by id.
//! Work is counted as in `docs/RESULTS.md`: bytes read once + written once for memory-bound ops,
//! 2·M·N·K for GEMMs, FlashAttention's count for attention, 6·P·tokens (+ attention) for a step,
//! the weights' bytes per generated token for decoding.
pub mod cases;
pub mod decode;
pub mod harness;
pub mod row;
pub mod train_step;
