//! criterion suites for the CPU elementwise ops and GEMM shapes (the fused nn ops, attention and
//! training steps are in `benches/lab.rs`, over the same cases as `kiln bench`). Ids: `<op>_<fwd|bwd>/<device>/<dtype>/<shape>`.
//! Run: `cargo bench --bench ops -- <filter>`.
use criterion::criterion_main;

#[path = "ops/elementwise.rs"]
mod elementwise;
#[path = "ops/matmul.rs"]
mod matmul;

criterion_main!(elementwise::benches, matmul::benches);
