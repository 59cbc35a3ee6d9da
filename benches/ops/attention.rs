//! Fused attention on the CPU. Ids `attention_{fwd,bwd,fwd_bwd}/cpu/f32/b8h4t512d64[/causal]`.
//! Throughput is FLOP/s (criterion prints it as elem/s), counted as in the FlashAttention
//! benchmarks: forward 4·B·H·T²·d (halved when causal), backward 2.5× forward, both 3.5×.
//! `attention_bwd` times the backward alone: the forward (with its saved state) runs in the
//! untimed setup of each iteration.
use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use kiln::tensor::ops::attention::AttentionOpts;
use kiln::{DType, Device, Tensor};

fn bench(c: &mut Criterion) {
    let (b, h, t, d) = (8usize, 4usize, 512usize, 64usize);
    let rnd = |seed| Tensor::randn(seed, &[b, h, t, d], 0.0, 1.0, DType::F32, Device::Cpu).unwrap();
    let (q, k, v, g) = (rnd(1).var(), rnd(2).var(), rnd(3).var(), rnd(4));
    for causal in [false, true] {
        let opts = AttentionOpts { causal, ..Default::default() };
        let fwd_flops = 4 * b * h * t * t * d / if causal { 2 } else { 1 };
        let id = format!("cpu/f32/b{b}h{h}t{t}d{d}{}", if causal { "/causal" } else { "" });
        let fwd = || q.attention(&k, &v, &opts).unwrap();

        let mut grp = c.benchmark_group("attention_fwd");
        grp.throughput(Throughput::Elements(fwd_flops as u64));
        grp.bench_function(&id, |bn| bn.iter(|| kiln::tensor::no_grad(fwd)));
        grp.finish();

        let mut grp = c.benchmark_group("attention_bwd");
        grp.throughput(Throughput::Elements((fwd_flops as f64 * 2.5) as u64));
        grp.bench_function(&id, |bn| {
            bn.iter_batched(
                || {
                    for x in [&q, &k, &v] {
                        x.zero_grad();
                    }
                    fwd()
                },
                |out| out.backward_with(g.clone()).unwrap(),
                BatchSize::PerIteration,
            )
        });
        grp.finish();

        let mut grp = c.benchmark_group("attention_fwd_bwd");
        grp.throughput(Throughput::Elements((fwd_flops as f64 * 3.5) as u64));
        grp.bench_function(&id, |bn| {
            bn.iter(|| {
                for x in [&q, &k, &v] {
                    x.zero_grad();
                }
                fwd().backward_with(g.clone()).unwrap()
            })
        });
        grp.finish();
    }
}

criterion_group!(benches, bench);
