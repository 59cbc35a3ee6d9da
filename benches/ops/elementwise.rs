//! Elementwise and row-reduction ops on the CPU, f32, 8192x768 (a BERT-base activation at 16x512
//! tokens). Throughput is in bytes: every input read once + every output written once.
//! `exp_fwd/.../<level>` variants force a lower SIMD level to show what the vector paths buy.
use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use kiln::tensor::cpu::simd::{self, Level};
use kiln::{DType, Device, Tensor};
use std::hint::black_box;

const ROWS: usize = 8192;
const COLS: usize = 768;

fn shape_id() -> String {
    format!("cpu/f32/{ROWS}x{COLS}")
}

fn input(seed: u64) -> Tensor {
    Tensor::randn(seed, &[ROWS, COLS], 0.0, 1.0, DType::F32, Device::Cpu).unwrap()
}

fn bench(c: &mut Criterion) {
    let n = (ROWS * COLS) as u64;
    let x = input(1);
    let y = input(2);
    let pos = x.abs().unwrap().add_scalar(0.1).unwrap();
    let bias = Tensor::randn(3, &[COLS], 0.0, 1.0, DType::F32, Device::Cpu).unwrap();

    type Unary = fn(&Tensor) -> kiln::Result<Tensor>;
    let unary: [(&str, Unary, &Tensor); 6] =
        [("exp_fwd", Tensor::exp, &x), ("tanh_fwd", Tensor::tanh, &x), ("log_fwd", Tensor::log, &pos), ("sqrt_fwd", Tensor::sqrt, &pos), ("relu_fwd", Tensor::relu, &x), ("sqr_fwd", Tensor::sqr, &x)];
    for (name, f, t) in unary {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(8 * n));
        g.bench_function(shape_id(), |b| b.iter(|| f(black_box(t)).unwrap()));
        if name == "exp_fwd" {
            for l in simd::available_levels() {
                if l == simd::detected() {
                    continue;
                }
                let tag = match l {
                    Level::Scalar => "scalar",
                    Level::Avx2 => "avx2",
                    Level::Avx512 => "avx512",
                };
                g.bench_function(format!("{}/{tag}", shape_id()), |b| {
                    simd::force_level(Some(l));
                    b.iter(|| f(black_box(t)).unwrap());
                    simd::force_level(None);
                });
            }
        }
        g.finish();
    }

    type Binary = fn(&Tensor, &Tensor) -> kiln::Result<Tensor>;
    let binary: [(&str, Binary); 4] = [("add_fwd", Tensor::add), ("sub_fwd", Tensor::sub), ("mul_fwd", Tensor::mul), ("div_fwd", Tensor::div)];
    for (name, f) in binary {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(12 * n));
        let rhs = if name == "div_fwd" { &pos } else { &y };
        g.bench_function(shape_id(), |b| b.iter(|| f(black_box(&x), black_box(rhs)).unwrap()));
        g.finish();
    }
    {
        // a bias row broadcast over the batch: reads x and one row, writes the output
        let mut g = c.benchmark_group("add_bcast_fwd");
        g.throughput(Throughput::Bytes(8 * n + 4 * COLS as u64));
        g.bench_function(shape_id(), |b| b.iter(|| x.add(black_box(&bias)).unwrap()));
        g.finish();
    }
    {
        let mut g = c.benchmark_group("tanh_bwd");
        // reads dy, x, y; writes dx
        g.throughput(Throughput::Bytes(16 * n));
        let dy = input(4);
        g.bench_function(shape_id(), |b| {
            b.iter_batched(|| x.var().tanh().unwrap(), |out| out.backward_with(dy.clone()).unwrap(), BatchSize::PerIteration)
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("where_cond_fwd");
        // mask, on_true, on_false read; output written
        g.throughput(Throughput::Bytes(16 * n));
        let mask = x.gt_scalar(0.0).unwrap();
        g.bench_function(shape_id(), |b| b.iter(|| mask.where_cond(black_box(&x), black_box(&y)).unwrap()));
        g.finish();
    }
    {
        // row sums (last dim) and column sums (dim 0, the bias-gradient shape)
        let mut g = c.benchmark_group("sum_fwd");
        g.throughput(Throughput::Bytes(4 * n + 4 * ROWS as u64));
        g.bench_function(shape_id(), |b| b.iter(|| black_box(&x).sum(-1, false).unwrap()));
        g.throughput(Throughput::Bytes(4 * n + 4 * COLS as u64));
        g.bench_function(format!("{}/dim0", shape_id()), |b| b.iter(|| black_box(&x).sum(0, false).unwrap()));
        g.finish();
    }
    {
        let mut g = c.benchmark_group("max_fwd");
        g.throughput(Throughput::Bytes(4 * n + 4 * ROWS as u64));
        g.bench_function(shape_id(), |b| b.iter(|| black_box(&x).max(-1, false).unwrap()));
        g.finish();
    }
}

criterion_group!(benches, bench);
