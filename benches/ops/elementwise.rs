use criterion::{criterion_group, Criterion};
fn bench(_c: &mut Criterion) {}
criterion_group!(benches, bench);
