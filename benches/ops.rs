//! criterion suites for the CPU ops. Ids: `<op>_<fwd|bwd>/<device>/<dtype>/<shape>`.
//! Run: `cargo bench --bench ops -- <filter>`.
use criterion::criterion_main;

#[path = "ops/attention.rs"]
mod attention;
#[path = "ops/elementwise.rs"]
mod elementwise;
#[path = "ops/matmul.rs"]
mod matmul;
#[path = "ops/nn.rs"]
mod nn;

criterion_main!(elementwise::benches, matmul::benches, nn::benches, attention::benches);
