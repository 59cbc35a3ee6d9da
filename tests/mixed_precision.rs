//! Mixed-precision training (`--dtype bf16|f16`): activations and GEMMs in half precision over f32
//! master weights and optimizer state, LayerNorm and losses in f32, dynamic loss scaling for f16.
//! Checked against the f32 model on the same weights (losses and every gradient), on training
//! curves over tinyshakespeare, and on the loss scaler's skip-and-regrow behaviour.
use kiln::model::config::ModelConfig;
use kiln::model::data::{read_text, Batch, CausalLmBatcher};
use kiln::model::model::Model;
use kiln::model::nn::ForwardCtx;
use kiln::model::sched::{Decay, LrSchedule};
use kiln::model::trainer::{LossScaler, TrainOptions, Trainer};
use kiln::model::{AdamWConfig, ParamStore};
use kiln::{DType, Device, Tensor};
use std::path::Path;

fn tiny(model: &str, vocab: usize) -> ModelConfig {
    let mut cfg = ModelConfig::preset(model).unwrap();
    match &mut cfg {
        ModelConfig::Decoder(c) => {
            (c.n_embd, c.n_layer, c.n_head, c.vocab_size, c.n_positions) = (64, 2, 2, vocab, 64);
            (c.resid_pdrop, c.embd_pdrop, c.attn_pdrop, c.bos_token_id, c.eos_token_id) = (0.0, 0.0, 0.0, Some(0), Some(0));
        }
        ModelConfig::Encoder(c) => {
            (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.vocab_size) = (64, 2, 2, 128, vocab);
            (c.hidden_dropout_prob, c.attention_probs_dropout_prob, c.pad_token_id) = (0.0, 0.0, Some(0));
            c.extra.insert("architectures".into(), serde_json::json!(["BertForMaskedLM"]));
        }
    }
    cfg
}

fn batch(vocab: u32, b: usize, t: usize, mlm: bool) -> Batch {
    let ids: Vec<i64> = (0..b * t).map(|i| ((i as u64 * 2654435761 % 1000003) % vocab as u64) as i64).collect();
    let labels: Vec<i64> = ids.iter().enumerate().map(|(i, &x)| if !mlm { ids[(i + 1) % ids.len()] } else if i % 5 == 2 { x } else { -100 }).collect();
    Batch {
        input_ids: Tensor::from_vec(ids, &[b, t]).unwrap(),
        labels: Tensor::from_vec(labels, &[b, t]).unwrap(),
        attention_mask: Tensor::from_vec(vec![1i64; b * t], &[b, t]).unwrap(),
        token_type_ids: Tensor::from_vec(vec![0i64; b * t], &[b, t]).unwrap(),
        next_sentence_label: None,
    }
}

/// (loss, every parameter's gradient) of one forward + backward in `dtype`.
fn loss_and_grads(model: &Model, store: &ParamStore, b: &Batch, dtype: DType) -> (f64, Vec<(String, Vec<f64>)>) {
    for p in store.params() {
        p.zero_grad();
    }
    let loss = model.loss(b, &ForwardCtx::train(1).with_compute_dtype(dtype)).unwrap();
    assert_eq!(loss.dtype(), DType::F32, "the loss is computed in f32");
    loss.backward().unwrap();
    let grads = store
        .params()
        .iter()
        .map(|p| {
            let g = p.grad().unwrap_or_else(|| panic!("{} got no gradient in {dtype}", p.name()));
            assert_eq!(g.dtype(), DType::F32, "{}: master gradients stay f32", p.name());
            (p.name().to_string(), g.to_vec_f64().unwrap())
        })
        .collect();
    (loss.to_scalar().unwrap(), grads)
}

#[test]
fn half_precision_losses_and_gradients_track_f32() {
    for (model, mlm) in [("gpt2-tiny", false), ("bert-tiny", true)] {
        let cfg = tiny(model, 97);
        let store = ParamStore::new(3, DType::F32, Device::Cpu);
        let m = Model::build(&cfg, &store).unwrap();
        let b = batch(97, 4, 24, mlm);
        let (l32, g32) = loss_and_grads(&m, &store, &b, DType::F32);
        for (dt, loss_tol, grad_tol) in [(DType::BF16, 2e-2, 0.08), (DType::F16, 2e-3, 0.01)] {
            let (lh, gh) = loss_and_grads(&m, &store, &b, dt);
            assert!(((lh - l32) / l32).abs() < loss_tol, "{model} {dt}: loss {lh} vs f32 {l32}");
            assert_ne!(lh, l32, "{model} {dt}: the half-precision path was not taken");
            // relative L2 error per parameter; a gradient that is ~0 in exact arithmetic (a
            // key bias: softmax ignores a per-row constant) is measured against 1e-3 of the whole
            // gradient's norm instead of its own rounding noise
            let global = g32.iter().flat_map(|g| &g.1).map(|x| x * x).sum::<f64>().sqrt();
            for ((name, a), (_, r)) in gh.iter().zip(&g32) {
                let norm = r.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-3 * global);
                let diff = a.iter().zip(r).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
                assert!(diff / norm < grad_tol, "{model} {dt}: gradient of {name} off by {:.3} (relative L2)", diff / norm);
            }
        }
    }
}

fn curve(dtype: DType, steps: u64) -> (Vec<f64>, LossScaler) {
    let text = read_text(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/tinyshakespeare.txt")).unwrap();
    let ids: Vec<u32> = text.bytes().take(200_000).map(u32::from).collect();
    let cfg = tiny("gpt2-tiny", 256);
    let store = ParamStore::new(7, DType::F32, Device::Cpu);
    let mut tr = Trainer::new(cfg, store, None, AdamWConfig { lr: 3e-3, ..Default::default() }).unwrap();
    let mut data = CausalLmBatcher::new(ids, 8, 64, 11).unwrap();
    let schedule = LrSchedule { peak_lr: 3e-3, min_lr: 3e-4, warmup_steps: 10, total_steps: steps, decay: Decay::Cosine };
    let opts = TrainOptions { steps, schedule, adamw: AdamWConfig { lr: 3e-3, ..Default::default() }, clip: 1.0, accum: 1, seed: 5, eval_every: 0, eval_batches: 1, ckpt_every: 0, out: None, keep: 2, overwrite: false, compute_dtype: dtype };
    tr.run(&opts, &mut data, None, &mut ()).unwrap();
    (tr.losses.iter().map(|l| l.1).collect(), tr.scaler)
}

#[test]
fn bf16_and_f16_training_curves_match_f32() {
    let steps = 150;
    let (f32c, _) = curve(DType::F32, steps);
    let tail = |c: &[f64]| c[c.len() - 30..].iter().sum::<f64>() / 30.0;
    let start = f32c[0];
    assert!(tail(&f32c) < start - 1.5, "f32 did not learn: {start} -> {}", tail(&f32c));
    for dt in [DType::BF16, DType::F16] {
        let (c, scaler) = curve(dt, steps);
        assert_eq!(c.len(), f32c.len());
        eprintln!("{dt}: loss {:.4} -> {:.4} (mean of the last 30 steps); f32 {:.4} -> {:.4}; loss scaler {scaler:?}", c[0], tail(&c), start, tail(&f32c));
        assert!((c[0] - start).abs() < 0.05, "{dt}: first loss {} vs f32 {start}", c[0]);
        // "within noise": the last 30 steps' mean within 3% of f32's, and every step within 0.25 nats
        assert!((tail(&c) - tail(&f32c)).abs() < 0.03 * tail(&f32c), "{dt}: late loss {} vs f32 {}", tail(&c), tail(&f32c));
        let worst = c.iter().zip(&f32c).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 0.25, "{dt}: a step's loss differs from f32 by {worst}");
        if dt == DType::F16 {
            assert_eq!(scaler.skipped, 0, "no overflow expected at the default scale on this model");
            assert_eq!(scaler.scale, 65536.0);
        }
    }
}

#[test]
fn loss_scaler_skips_overflowing_updates_and_regrows() {
    let mut s = LossScaler { scale: 1024.0, growth_interval: 3, good: 0, skipped: 0 };
    assert!(!s.update(false));
    assert_eq!((s.scale, s.skipped), (512.0, 1));
    assert!(s.update(true) && s.update(true));
    assert_eq!(s.scale, 512.0);
    assert!(s.update(true));
    assert_eq!((s.scale, s.good), (1024.0, 0));

    // An absurd starting scale overflows f16 gradients: those updates are skipped (weights
    // untouched), the scale comes down, and training then proceeds.
    let cfg = tiny("gpt2-tiny", 97);
    let store = ParamStore::new(9, DType::F32, Device::Cpu);
    let mut tr = Trainer::new(cfg, store.clone(), None, AdamWConfig { lr: 1e-3, ..Default::default() }).unwrap();
    tr.scaler.scale = 2f64.powi(60);
    let ids: Vec<u32> = (0..20_000u32).map(|i| (i * 31 + i / 7) % 97).collect();
    let mut data = CausalLmBatcher::new(ids, 4, 32, 3).unwrap();
    let before: Vec<Vec<f64>> = store.params().iter().map(|p| p.tensor().to_vec_f64().unwrap()).collect();
    let schedule = LrSchedule { peak_lr: 1e-3, min_lr: 1e-3, warmup_steps: 0, total_steps: 1, decay: Decay::Constant };
    let mut opts = TrainOptions { steps: 1, schedule, adamw: AdamWConfig { lr: 1e-3, ..Default::default() }, clip: 0.0, accum: 1, seed: 1, eval_every: 0, eval_batches: 1, ckpt_every: 0, out: None, keep: 2, overwrite: false, compute_dtype: DType::F16 };
    tr.run(&opts, &mut data, None, &mut ()).unwrap();
    assert_eq!(tr.scaler.skipped, 1, "the first update overflows");
    let after: Vec<Vec<f64>> = store.params().iter().map(|p| p.tensor().to_vec_f64().unwrap()).collect();
    assert_eq!(before, after, "a skipped update leaves the weights as they were");
    opts.steps = 80;
    opts.schedule.total_steps = 80;
    tr.run(&opts, &mut data, None, &mut ()).unwrap();
    assert!(tr.scaler.skipped > 1 && tr.scaler.scale <= 2f64.powi(30) && tr.scaler.good > 10, "{:?}", tr.scaler);
    let after: Vec<Vec<f64>> = store.params().iter().map(|p| p.tensor().to_vec_f64().unwrap()).collect();
    assert_ne!(before, after, "updates resumed once the scale came down");
    assert!(after.iter().flatten().all(|x| x.is_finite()));
    let l = &tr.losses;
    assert!(l[l.len() - 1].1 < l[0].1, "{:?} -> {:?}", l[0], l[l.len() - 1]);
}
