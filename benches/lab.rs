//! criterion suites over the kernel-lab cases (the same cases `kiln bench` times): GELU (erf,
//! tanh), LayerNorm, softmax and cross-entropy at [8192, 768] / [1024, 8192], fused attention at
//! B8 H4 T512 d64 (causal on and off), forward and backward, in every variant, on the CPU (f32 and
//! bf16) and, when a CUDA device is present, on it (bf16 and f32, plus FlashAttention's sweep at
//! d 64/128); one full training step of the GPT-2-style and BERT-style configs.
//! Ids: `<op>/<device>/<dtype>/<shape>[/causal]/<variant>`. Every variant is checked against its
//! case's reference before it is benchmarked; a wrong one is reported and skipped.
//! GPU calls are timed with CUDA events (`iter_custom`); throughput is bytes or FLOPs (criterion
//! prints FLOP/s as elem/s). Run: `cargo bench --bench lab -- <filter>`.
/// The allocator the `kiln` binary uses (src/main.rs), so training-step rows match `kiln bench`.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln::lab::cases::{self, Ctx, Pass};
use kiln::lab::harness::{check, time_once, Case, Work};
use kiln::lab::train_step::{configs, TrainStep};
use kiln::tensor::cuda;
use kiln::{DType, Device};
use std::time::Duration;

fn devices() -> Vec<Device> {
    #[cfg(feature = "mimalloc")]
    kiln::keep_freed_memory(); // as the `kiln` binary does (called again per group: an idempotent option)
    let mut d = vec![Device::Cpu];
    if cuda::is_available() {
        d.push(Device::Cuda(0));
    } else {
        eprintln!("lab: no CUDA device; the CUDA suites are skipped");
    }
    d
}

fn register(c: &mut Criterion, mut case: Case) {
    let verdicts = check(&mut case);
    let mut g = c.benchmark_group(case.op.clone());
    g.throughput(match case.work {
        Work::Bytes(b) => Throughput::Bytes(b),
        Work::Flops(f) => Throughput::Elements(f as u64),
    });
    let (device, base) = (case.device, format!("{}/{}/{}{}", kiln::lab::row::device_name(case.device), case.dtype.as_str(), case.shape, if case.causal { "/causal" } else { "" }));
    for (v, verdict) in case.variants.iter_mut().zip(verdicts) {
        match verdict {
            Err(status) => eprintln!("lab: {}/{base}/{} {status}: not benchmarked", case.op, v.name),
            Ok(_) if v.timed => {
                let mut call = 0usize;
                g.bench_function(format!("{base}/{}", v.name), |b| {
                    b.iter_custom(|iters| {
                        let mut ms = 0.0;
                        for _ in 0..iters {
                            ms += time_once(v, device, call).expect("a checked variant failed while timed");
                            call += 1;
                        }
                        Duration::from_secs_f64(ms / 1e3)
                    })
                });
            }
            Ok(_) => {}
        }
    }
    g.finish();
}

fn ops(c: &mut Criterion) {
    for device in devices() {
        let ctx = Ctx { device };
        let dtypes = if device == Device::Cpu { [DType::F32, DType::BF16] } else { [DType::BF16, DType::F32] };
        for dt in dtypes {
            for case in cases::memory_bound(&ctx, dt, 8192, 768, Some((1024, 8192))).expect("memory-bound cases") {
                register(c, case);
            }
        }
        let (att_dt, shape) = if device == Device::Cpu { (DType::F32, (8, 4, 512, 64)) } else { (DType::BF16, (4, 16, 1024, 128)) };
        for causal in [false, true] {
            for case in cases::attention(&ctx, att_dt, shape, causal, &[Pass::Fwd, Pass::Bwd, Pass::FwdBwd], true, true).expect("attention cases") {
                register(c, case);
            }
        }
        if device != Device::Cpu {
            for d in [64, 128] {
                for n in [512, 1024, 2048, 4096, 8192, 16384] {
                    for causal in [false, true] {
                        for case in cases::attention(&ctx, DType::BF16, (16384 / n, 2048 / d, n, d), causal, &[Pass::Fwd, Pass::Bwd], false, n <= 1024).expect("attention sweep") {
                            register(c, case);
                        }
                    }
                }
            }
        }
    }
}

fn train_steps(c: &mut Criterion) {
    for device in devices() {
        for (op, cfg) in configs(false).expect("configs") {
            let mut ts = TrainStep::new(&cfg, device, 8, 128, kiln::DType::F32).expect("model");
            let mut g = c.benchmark_group(op);
            g.throughput(Throughput::Elements(ts.flops as u64));
            g.sample_size(10);
            g.bench_function(format!("{}/f32/8x128/kiln", kiln::lab::row::device_name(device)), |b| {
                b.iter_custom(|iters| {
                    let mut ms = 0.0;
                    for _ in 0..iters {
                        cuda::synchronize(device).expect("sync");
                        ms += cuda::time_ms(device, || ts.step()).expect("training step").1;
                    }
                    Duration::from_secs_f64(ms / 1e3)
                })
            });
            g.finish();
        }
    }
}

criterion_group!(benches, ops, train_steps);
criterion_main!(benches);
