//! Activation recomputation: `kiln_tensor::checkpoint` (gradcheck in f64, the same gradient bits
//! as the plain graph, parameters used inside and outside, nesting, errors), every architecture of
//! the family with `Model::set_recompute` and dropout on giving the same loss and gradients bit for
//! bit, the trainer's updates likewise, and the peak heap of a training step measured lower.
//!
//! The heap is counted by `kiln_tensor::mem::CountingAlloc` (this binary's global allocator). The
//! counters are process-wide, so every test here holds `SERIAL`: a test running beside the memory
//! test would add its own allocations to the peak.
use kiln::model::config::ModelConfig;
use kiln::model::data::{Batch, DataPosition};
use kiln::model::family::{Family, Task, ARCHITECTURES};
use kiln::model::model::{Inputs, Model};
use kiln::model::nn::ForwardCtx;
use kiln::model::params::ParamStore;
use kiln::model::sched::LrSchedule;
use kiln::model::trainer::{BatchSource, TrainObserver, TrainOptions, Trainer};
use kiln::model::AdamWConfig;
use kiln::tensor::mem::{self, CountingAlloc};
use kiln::tensor::testing::{gradcheck, rand_var};
use kiln::tensor::{checkpoint, no_grad};
use kiln::{DType, Device, Result, Tensor};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

#[global_allocator]
static ALLOC: CountingAlloc<std::alloc::System> = CountingAlloc::new(std::alloc::System);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_vec_f64().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// The body used in the tensor-level tests: `w` (captured, used twice), `b` (captured), dropout
/// with a fixed seed, LayerNorm, softmax and a GELU; `x` comes in as the input.
fn body(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let h = x.matmul(w)?.add(b)?.gelu()?.dropout(0.25, 11, true)?;
    let h = h.matmul(&w.t()?)?.layer_norm(None, None, 1e-5)?;
    h.softmax_last_dim()?.mul(x)
}

/// f64 central differences through a checkpoint: the input's gradient and those of the captured
/// parameters (one also used after the checkpoint, one in a nested checkpoint).
#[test]
fn checkpoint_gradcheck_f64() {
    let _s = serial();
    let (x, w, b) = (rand_var(1, &[3, 5]), rand_var(2, &[5, 5]), rand_var(3, &[5]));
    gradcheck("checkpoint", &[x, w, b], |v| {
        let (w, b) = (v[1].clone(), v[2].clone());
        let y = checkpoint(&[v[0].clone()], move |xs| body(&xs[0], &w, &b))?;
        // used outside too, and a nested checkpoint inside another
        let (w2, b2) = (v[1].clone(), v[2].clone());
        let z = checkpoint(&[y.clone(), v[0].clone()], move |xs| {
            let w3 = w2.clone();
            let inner = checkpoint(&[xs[0].clone()], move |ys| ys[0].matmul(&w3)?.tanh())?;
            inner.add(&xs[1])?.mul(&b2)
        })?;
        z.matmul(&v[1])?.add(&y)
    })
    .unwrap();
}

/// Two blocks `f` chained as `f(f(x) + x)`, then `· w`, with and without checkpoints, twice (the
/// second backward accumulates into the first's gradients): the gradients of x, w and b.
fn chained(f: fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>, ckpt: bool) -> Vec<Tensor> {
    let f32s = |seed, shape: &[usize]| Tensor::randn(seed, shape, 0.0, 1.0, DType::F32, Device::Cpu).unwrap().var();
    let (x, w, b) = (f32s(4, &[6, 8]), f32s(5, &[8, 8]), f32s(6, &[8]));
    for _ in 0..2 {
        let block = |inp: &Tensor| -> Tensor {
            let (w, b) = (w.clone(), b.clone());
            match ckpt {
                true => checkpoint(&[inp.clone()], move |xs| f(&xs[0], &w, &b)).unwrap(),
                false => f(inp, &w, &b).unwrap(),
            }
        };
        let y = block(&block(&x).add(&x).unwrap());
        y.matmul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    }
    [x, w, b].iter().map(|t| t.grad().unwrap()).collect()
}

/// Where each tensor from outside a checkpoint is used once inside it (as a transformer block
/// uses each weight; a weight may also be used by other blocks and outside), the gradients have
/// the plain graph's bits: the outer backward sums the same contributions in the same order.
#[test]
fn checkpoint_gives_the_plain_graphs_gradient_bits() {
    let _s = serial();
    fn once(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        x.matmul(w)?.add(b)?.gelu()?.dropout(0.25, 11, true)?.layer_norm(None, None, 1e-5)?.softmax_last_dim()
    }
    let (plain, ckpt) = (chained(once, false), chained(once, true));
    for (p, c) in plain.iter().zip(&ckpt) {
        assert_eq!(bits(p), bits(c));
    }
    // A tensor used several times inside a checkpoint and also outside it (here w and x in `body`)
    // gets its contributions summed in another grouping: the inner ones first, then added to the
    // rest, where the plain graph adds them one by one. Only the rounding of that sum differs.
    let (plain, ckpt) = (chained(body, false), chained(body, true));
    for (p, c) in plain.iter().zip(&ckpt) {
        let err = kiln::tensor::testing::max_rel_err(c, p).unwrap();
        assert!(err < 1e-6, "{err}");
    }
}

#[test]
fn checkpoint_edge_cases() {
    let _s = serial();
    let x = rand_var(7, &[2, 3]);
    let w = rand_var(8, &[3, 3]);
    // without grad mode it is the function itself: no node
    let w1 = w.clone();
    let y = no_grad(|| checkpoint(&[x.clone()], move |xs| xs[0].matmul(&w1))).unwrap();
    assert!(!y.requires_grad());
    // nothing requiring grad: no node either
    let y = checkpoint(&[x.detach()], |xs| xs[0].exp()).unwrap();
    assert!(!y.requires_grad());
    // an output that is a captured parameter itself, and one that is the input itself
    let w2 = w.clone();
    let y = checkpoint(&[x.clone()], move |_| Ok(w2.clone())).unwrap();
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(w.grad().unwrap().to_vec_f64().unwrap(), vec![1.0; 9]);
    let y = checkpoint(&[x.clone()], |xs| Ok(xs[0].clone())).unwrap();
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec_f64().unwrap(), vec![1.0; 6]);
    // an error in the function is returned, and the next checkpoint is not disturbed by it
    let e = checkpoint(&[x.clone()], |xs| xs[0].matmul(&xs[0])).unwrap_err().to_string();
    assert!(e.contains("matmul"), "{e}");
    w.zero_grad();
    let w3 = w.clone();
    checkpoint(&[x.clone()], move |xs| xs[0].matmul(&w3)).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(w.grad().is_some());
    // a function that computes something else the second time is a clear error, not a wrong gradient
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let y = checkpoint(&[x.clone()], move |xs| match c.fetch_add(1, Ordering::Relaxed) {
        0 => xs[0].exp(),
        _ => xs[0].narrow(1, 0, 2),
    })
    .unwrap();
    let e = y.sum_all().unwrap().backward().unwrap_err().to_string();
    assert!(e.contains("checkpoint") && e.contains("[2, 2]") && e.contains("[2, 3]"), "{e}");
}

/// A tiny config of `arch` with every dropout on at 0.1 (transformers' defaults) and attention
/// dropout at 0.2.
fn tiny(arch: &str) -> ModelConfig {
    let a = kiln::model::family::Arch::by_name(arch).unwrap();
    let mut v = match a.family {
        Family::DistilBert => json!({"dim": 16, "n_layers": 3, "n_heads": 2, "hidden_dim": 24, "attention_dropout": 0.2}),
        Family::OpenAiGpt | Family::Gpt2 => json!({"n_embd": 16, "n_layer": 3, "n_head": 2, "n_positions": 32, "attn_pdrop": 0.2}),
        _ => json!({"hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 24,
            "max_position_embeddings": 40, "attention_probs_dropout_prob": 0.2}),
    };
    let m = v.as_object_mut().unwrap();
    m.insert("model_type".into(), json!(a.family.model_type()));
    m.insert("vocab_size".into(), json!(50));
    m.insert("architectures".into(), json!([arch]));
    if matches!(a.family, Family::Albert | Family::Electra) {
        m.insert("embedding_size".into(), json!(8));
    }
    if a.family == Family::Albert {
        // three depths over two groups: a group's weights are used at two depths
        m.insert("num_hidden_groups".into(), json!(2));
    }
    if a.family.is_decoder() {
        m.insert("pad_token_id".into(), json!(0));
    }
    ModelConfig::from_json_str(&v.to_string(), arch).unwrap()
}

fn ids(shape: &[usize], seed: i64, hi: i64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n as i64).map(|i| 1 + (i * 7 + seed) % (hi - 1)).collect(), shape).unwrap()
}

/// Every architecture's model and head: a training forward (dropout on) and backward with
/// `set_recompute(true)` gives the loss and every parameter's gradient bit for bit as without it.
/// The objective reaches every output (a weighted sum of each), so heads without labels count too.
#[test]
fn every_architecture_same_gradients_with_recompute() {
    let _s = serial();
    let (b, c, t) = (2, 3, 7);
    for a in ARCHITECTURES {
        let run = |recompute: bool| -> (u64, Vec<(String, Vec<u64>)>) {
            let cfg = tiny(a.name);
            let store = ParamStore::new(1, DType::F32, Device::Cpu);
            let mut model = Model::build(&cfg, &store).unwrap();
            model.set_recompute(recompute);
            let mut mask = vec![1i64; b * t];
            mask[b * t - 2..].fill(0);
            let mut inp = Inputs { input_ids: Some(ids(&[b, t], 3, 50)), attention_mask: Some(Tensor::from_vec(mask, &[b, t]).unwrap()), ..Default::default() };
            if a.task == Task::DoubleHeads {
                inp.input_ids = Some(ids(&[b, c, t], 3, 50));
                inp.attention_mask = None;
                inp.mc_token_ids = Some(Tensor::from_vec(vec![6i64, 5, 4, 6, 3, 2], &[b, c]).unwrap());
            }
            if a.task == Task::MultipleChoice {
                inp.input_ids = Some(ids(&[b, c, t], 3, 50));
                inp.attention_mask = None;
            }
            let out = model.forward(&inp, &ForwardCtx::train(7)).unwrap_or_else(|e| panic!("{}: {e}", a.name));
            let mut loss = Tensor::zeros(&[], DType::F32, Device::Cpu).unwrap();
            for (k, (_, o)) in out.tensors.iter().enumerate() {
                let w = Tensor::randn(k as u64, o.shape(), 0.0, 1.0, o.dtype(), Device::Cpu).unwrap();
                loss = loss.add(&o.mul(&w).unwrap().sum_all().unwrap()).unwrap();
            }
            loss.backward().unwrap();
            let grads = store.params().iter().map(|p| (p.name().to_string(), p.grad().map(|g| bits(&g)).unwrap_or_default())).collect();
            (loss.to_scalar().unwrap().to_bits(), grads)
        };
        let (plain, recomputed) = (run(false), run(true));
        assert!(plain.1.iter().any(|(_, g)| !g.is_empty()), "{}: no gradients", a.name);
        assert_eq!(plain.0, recomputed.0, "{}: loss differs", a.name);
        for ((n, g0), (_, g1)) in plain.1.iter().zip(&recomputed.1) {
            assert!(g0 == g1, "{}: the gradient of {n} differs with recompute", a.name);
        }
    }
}

/// The same batches every step.
struct Batches(Vec<Batch>, usize);

impl BatchSource for Batches {
    fn next_batch(&mut self) -> Result<Batch> {
        self.1 += 1;
        Ok(self.0[(self.1 - 1) % self.0.len()].clone())
    }
    fn position(&self) -> DataPosition {
        DataPosition::default()
    }
    fn set_position(&mut self, _: &DataPosition) -> Result<()> {
        Ok(())
    }
}

struct Losses(Vec<u64>);

impl TrainObserver for Losses {
    fn on_step(&mut self, log: &kiln::model::trainer::StepLog) {
        self.0.push(log.loss.to_bits());
    }
}

fn batch(b: usize, t: usize, seed: i64, vocab: i64) -> Batch {
    let ids = |s| ids(&[b, t], s, vocab);
    let labels: Vec<i64> = ids(seed + 1).to_vec::<i64>().unwrap().iter().enumerate().map(|(i, &v)| if i % 3 == 0 { -100 } else { v }).collect();
    Batch {
        input_ids: ids(seed),
        labels: Tensor::from_vec(labels, &[b, t]).unwrap(),
        attention_mask: Tensor::ones(&[b, t], DType::I64, Device::Cpu).unwrap(),
        token_type_ids: Tensor::zeros(&[b, t], DType::I64, Device::Cpu).unwrap(),
        next_sentence_label: None,
    }
}

/// Three updates of a GPT-2 LM and a BERT MLM through the trainer (dropout on, two micro-batches
/// accumulated per update, clipping, AdamW): the same losses and final weights, bit for bit.
#[test]
fn trainer_updates_identical_with_recompute() {
    let _s = serial();
    for arch in ["GPT2LMHeadModel", "BertForMaskedLM"] {
        let run = |recompute: bool| -> (Vec<u64>, Vec<Vec<u64>>) {
            let adamw = AdamWConfig { lr: 1e-2, weight_decay: 0.01, ..Default::default() };
            let store = ParamStore::new(3, DType::F32, Device::Cpu);
            let mut trainer = Trainer::new(tiny(arch), store.clone(), None, adamw).unwrap();
            trainer.model.set_recompute(recompute);
            let opts = TrainOptions {
                steps: 3,
                schedule: LrSchedule::constant(1e-2),
                adamw,
                clip: 0.5,
                accum: 2,
                seed: 9,
                eval_every: 0,
                eval_batches: 1,
                ckpt_every: 0,
                out: None,
                keep: 0,
                overwrite: false,
                compute_dtype: DType::F32,
            };
            let mut data = Batches((0..3).map(|s| batch(2, 8, s, 50)).collect(), 0);
            let mut losses = Losses(Vec::new());
            trainer.run(&opts, &mut data, None, &mut losses).unwrap();
            (losses.0, store.params().iter().map(|p| bits(&p.tensor())).collect())
        };
        let (plain, recomputed) = (run(false), run(true));
        assert_eq!(plain.0.len(), 3);
        assert_eq!(plain, recomputed, "{arch}: recompute changed the training run");
    }
}

/// The peak heap of one forward + backward of a 6-layer GPT-2 LM, above what is live before it
/// (parameters, batch): with recompute, well under that without it. The counts are exact byte
/// counts (they do not depend on timing), so the bound is tight enough to catch a checkpoint that
/// keeps the blocks' activations.
#[test]
fn peak_memory_lower_with_recompute() {
    let _s = serial();
    let mut cfg = tiny("GPT2LMHeadModel");
    if let ModelConfig::Decoder(c) = &mut cfg {
        (c.n_layer, c.n_embd, c.n_head, c.n_positions) = (6, 64, 4, 64);
    }
    let store = ParamStore::new(1, DType::F32, Device::Cpu);
    let mut model = Model::build(&cfg, &store).unwrap();
    let b = batch(4, 64, 1, 50);
    let mut peak = |recompute: bool| -> usize {
        model.set_recompute(recompute);
        for p in store.params() {
            p.zero_grad();
        }
        let before = mem::reset_peak();
        let loss = model.loss(&b, &ForwardCtx::train(5)).unwrap();
        loss.backward().unwrap();
        drop(loss);
        mem::peak_bytes() - before
    };
    peak(false); // first-use allocations (thread pools, caches) out of the way
    let (plain, recomputed) = (peak(false), peak(true));
    // and again, in the other order: the counts repeat
    let (recomputed2, plain2) = (peak(true), peak(false));
    eprintln!("peak above the live heap: {plain} B plain, {recomputed} B with recompute ({:.3}x); again {plain2} / {recomputed2}", recomputed as f64 / plain as f64);
    assert!(plain > 1 << 20, "{plain}");
    assert!((recomputed as f64) < 0.5 * plain as f64, "recompute {recomputed} B vs {plain} B");
    assert!((recomputed2 as f64) < 0.5 * plain2 as f64, "recompute {recomputed2} B vs {plain2} B");
}

/// `kiln train --recompute` on a tiny GPT-2 and BERT: the same per-step losses and the same final
/// weights (the bytes of model.safetensors) as without it.
#[test]
fn cli_train_recompute_same_losses_and_weights() {
    let _s = serial();
    let dir = std::env::temp_dir().join(format!("kiln-recompute-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data.txt");
    let text: String = (0..400).map(|i| format!("The {} cat sat on the {} mat near {} dogs.\n", ["red", "big", "old"][i % 3], ["warm", "flat"][i % 2], i % 7)).collect();
    std::fs::write(&data, text).unwrap();
    for model in ["gpt2-tiny", "bert-tiny"] {
        let run = |recompute: bool| -> (Vec<String>, Vec<u8>) {
            let out = dir.join(format!("{model}-{recompute}"));
            let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
            let mut args = vec!["train", "--model", model, "--data", d, "--steps", "3", "--batch", "2", "--seq", "16", "--vocab", "200", "--accum", "2"];
            args.extend(["--eval-every", "0", "--eval-batches", "1", "--sample-tokens", "0", "--json", "--out", o]);
            if recompute {
                args.push("--recompute");
            }
            let r = std::process::Command::new(env!("CARGO_BIN_EXE_kiln")).args(&args).output().unwrap();
            assert!(r.status.success(), "{model} {recompute}: {}", String::from_utf8_lossy(&r.stderr));
            let losses = String::from_utf8_lossy(&r.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v.get("loss").filter(|_| v.get("step").is_some()).map(|l| l.to_string()))
                .collect();
            (losses, std::fs::read(out.join("model.safetensors")).unwrap())
        };
        let (plain, recomputed) = (run(false), run(true));
        assert_eq!(plain.0.len(), 3, "{model}: {:?}", plain.0);
        assert_eq!(plain.0, recomputed.0, "{model}: losses differ");
        assert!(plain.1 == recomputed.1, "{model}: final weights differ");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
