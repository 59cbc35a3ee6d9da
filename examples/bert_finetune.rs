//! Fine-tune BERT for sequence classification from a checkpoint directory, on a small synthetic
//! labelled task, and save the result.
//!
//! ```sh
//! cargo run --release --example bert_finetune                        # tests/fixtures/bert_seq_cls
//! cargo run --release --example bert_finetune -- path/to/bert_dir --steps 300 --out out/cls
//! cargo run --release --example bert_finetune -- --fresh             # a fresh bert-tiny instead
//! ```
//!
//! The checkpoint is any HF-layout BERT directory (`config.json` + `model.safetensors`); its config
//! must name `BertForSequenceClassification` (its `id2label` gives the number of classes). The task:
//! each example is `[1]` followed by random filler tokens, padded to a random length, with three
//! "keywords" of its class and one keyword of another class scattered in it; the label is the class
//! with the most keywords. Training goes through `kiln::model::trainer::Trainer` (AdamW, warm-up +
//! cosine, clipping) fed by a custom `BatchSource`; between chunks the held-out accuracy is printed.
//! At the end the model is saved with `Trainer::save`, loaded back with `LoadedModel::from_dir` and
//! checked to give the same accuracy.
use clap::Parser;
use kiln::model::data::{Batch, DataPosition};
use kiln::model::model::{Inputs, LoadedModel, Model};
use kiln::model::nn::ForwardCtx;
use kiln::model::sched::{Decay, LrSchedule};
use kiln::model::trainer::{BatchSource, TrainOptions, Trainer};
use kiln::model::{AdamWConfig, ModelConfig, ParamStore};
use kiln::tensor::no_grad;
use kiln::{DType, Device, Error, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(about = "Fine-tune BERT for sequence classification on a synthetic keyword task")]
pub struct Args {
    /// A BertForSequenceClassification checkpoint directory (default: tests/fixtures/bert_seq_cls).
    pub model: Option<PathBuf>,
    /// Start from a fresh bert-tiny (3 classes, 128-token vocabulary) instead of a checkpoint.
    #[arg(long, conflicts_with = "model")]
    pub fresh: bool,
    #[arg(long, default_value_t = 150)]
    pub steps: u64,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Padded sequence length.
    #[arg(long, default_value_t = 24)]
    pub seq: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Print the held-out accuracy every N steps.
    #[arg(long, default_value_t = 25)]
    pub eval_every: u64,
    /// Held-out examples.
    #[arg(long, default_value_t = 384)]
    pub eval_examples: usize,
    /// Where the fine-tuned checkpoint goes.
    #[arg(long, default_value = "out/bert_finetune")]
    pub out: PathBuf,
}

/// What a run produced.
pub struct Summary {
    /// (step, held-out accuracy), starting with step 0.
    pub accuracy: Vec<(u64, f64)>,
    pub losses: Vec<(u64, f64)>,
    /// The accuracy of the checkpoint after saving and loading it back.
    pub reloaded_accuracy: f64,
    pub classes: usize,
}

/// The synthetic task: example `i` is a pure function of (seed, i), so the source's position is
/// one counter.
pub struct KeywordTask {
    seed: u64,
    next: u64,
    batch: usize,
    seq: usize,
    classes: usize,
    vocab: usize,
}

/// Keyword ids of class `c`: 4 per class, after the pad (0) and start (1) ids.
const KW_PER_CLASS: usize = 4;

impl KeywordTask {
    pub fn new(seed: u64, batch: usize, seq: usize, classes: usize, vocab: usize) -> Result<KeywordTask> {
        let fillers = vocab.saturating_sub(2 + KW_PER_CLASS * classes);
        if classes < 2 || fillers < 8 {
            return Err(Error::msg(format!("the task needs at least 2 classes and a vocabulary of 2 + 4·classes + 8 tokens (have {classes} classes, {vocab} tokens)")));
        }
        if seq < 8 {
            return Err(Error::msg(format!("--seq {seq} is too short (need at least 8)")));
        }
        Ok(KeywordTask { seed, next: 0, batch, seq, classes, vocab })
    }

    /// (ids padded to `seq` with 0, real length, label).
    fn example(&self, i: u64) -> (Vec<i64>, usize, i64) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let first_filler = (2 + KW_PER_CLASS * self.classes) as i64;
        let len = rng.random_range(8..=self.seq);
        let mut ids: Vec<i64> = (0..len).map(|_| rng.random_range(first_filler..self.vocab as i64)).collect();
        ids[0] = 1;
        let label = rng.random_range(0..self.classes);
        let other = (label + rng.random_range(1..self.classes)) % self.classes;
        let kw = |c: usize, rng: &mut ChaCha8Rng| (2 + c * KW_PER_CLASS + rng.random_range(0..KW_PER_CLASS)) as i64;
        // Four distinct positions after the start token.
        let mut slots: Vec<usize> = (1..len).collect();
        for (k, class) in [label, label, label, other].into_iter().enumerate() {
            let j = rng.random_range(k..slots.len());
            slots.swap(k, j);
            ids[slots[k]] = kw(class, &mut rng);
        }
        ids.resize(self.seq, 0);
        (ids, len, label as i64)
    }

    /// `n` examples starting at example `from`, as one batch.
    pub fn batch_at(&self, from: u64, n: usize) -> Result<Batch> {
        let (mut ids, mut mask, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n as u64 {
            let (x, len, y) = self.example(from + i);
            ids.extend(x);
            mask.extend((0..self.seq).map(|p| (p < len) as i64));
            labels.push(y);
        }
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, &[n, self.seq])?,
            labels: Tensor::from_vec(labels, &[n])?,
            attention_mask: Tensor::from_vec(mask, &[n, self.seq])?,
            token_type_ids: Tensor::from_vec(vec![0i64; n * self.seq], &[n, self.seq])?,
            next_sentence_label: None,
        })
    }
}

impl BatchSource for KeywordTask {
    fn next_batch(&mut self) -> Result<Batch> {
        let b = self.batch_at(self.next, self.batch)?;
        self.next += self.batch as u64;
        Ok(b)
    }
    fn position(&self) -> DataPosition {
        DataPosition { cursor: self.next, ..Default::default() }
    }
    fn set_position(&mut self, p: &DataPosition) -> Result<()> {
        self.next = p.cursor;
        Ok(())
    }
}

/// Fraction of `batch` the model classifies correctly.
pub fn accuracy(model: &Model, batch: &Batch) -> Result<f64> {
    let out = no_grad(|| model.forward(&Inputs { input_ids: Some(batch.input_ids.clone()), attention_mask: Some(batch.attention_mask.clone()), token_type_ids: Some(batch.token_type_ids.clone()), ..Default::default() }, &ForwardCtx::eval()))?;
    let logits = out.get("logits").ok_or_else(|| Error::msg("the model produced no logits"))?;
    let pred = logits.argmax(1, false)?.to_vec::<i64>()?;
    let gold = batch.labels.to_vec::<i64>()?;
    Ok(pred.iter().zip(&gold).filter(|(p, g)| p == g).count() as f64 / gold.len().max(1) as f64)
}

fn default_model_dir() -> Option<PathBuf> {
    let rel = Path::new("tests/fixtures/bert_seq_cls");
    [rel.to_path_buf(), Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)].into_iter().find(|p| p.join("config.json").is_file())
}

/// The starting point: the checkpoint's config and loaded weights, or a fresh bert-tiny.
fn start(a: &Args) -> Result<(ModelConfig, ParamStore, String)> {
    let dir = if a.fresh { None } else { a.model.clone().or_else(default_model_dir) };
    match dir {
        Some(d) => {
            let l = LoadedModel::from_dir(&d, a.seed, Device::Cpu)?;
            if l.cfg.architecture() != Some("BertForSequenceClassification") {
                return Err(Error::msg(format!("{}: expected a BertForSequenceClassification config, found {:?}", d.display(), l.cfg.architecture())));
            }
            Ok((l.cfg, l.store, d.display().to_string()))
        }
        None => {
            let mut cfg = ModelConfig::preset("bert-tiny")?;
            cfg.set_architecture("BertForSequenceClassification");
            cfg.set_vocab_size(128);
            cfg.set_num_labels(3);
            if let ModelConfig::Encoder(c) = &mut cfg {
                c.max_position_embeddings = 128;
                c.attention_probs_dropout_prob = 0.0;
            }
            Ok((cfg, ParamStore::new(a.seed, DType::F32, Device::Cpu), "a fresh bert-tiny".into()))
        }
    }
}

pub fn run(a: &Args) -> Result<Summary> {
    if a.batch == 0 || a.steps == 0 || a.eval_examples == 0 {
        return Err(Error::msg("--batch, --steps and --eval-examples must be positive"));
    }
    let (cfg, store, from) = start(a)?;
    if !matches!(cfg, ModelConfig::Encoder(_)) {
        return Err(Error::msg("expected a BERT config"));
    }
    let classes = cfg.num_labels();
    if a.seq > cfg.max_positions() {
        return Err(Error::msg(format!("--seq {} exceeds the model's {} positions", a.seq, cfg.max_positions())));
    }
    let mut data = KeywordTask::new(a.seed, a.batch, a.seq, classes, cfg.vocab_size())?;
    // Held-out examples come from the far end of the example index space.
    let held_out = data.batch_at(u64::MAX / 2, a.eval_examples)?;
    let adamw = AdamWConfig { lr: a.lr, weight_decay: 0.01, ..Default::default() };
    let mut trainer = Trainer::new(cfg.clone(), store, None, adamw)?;
    println!("fine-tuning {from}: {} params, {classes} classes, {} held-out examples", trainer.store.num_params(), a.eval_examples);
    let schedule = LrSchedule { peak_lr: a.lr, min_lr: a.lr * 0.1, warmup_steps: (a.steps / 10).min(20), total_steps: a.steps, decay: Decay::Cosine };
    let mut opts = TrainOptions { steps: 0, schedule, adamw, clip: 1.0, accum: 1, seed: a.seed, eval_every: 0, eval_batches: 1, ckpt_every: 0, out: None, keep: 2, overwrite: false, compute_dtype: DType::F32 };
    let mut acc = vec![(0, accuracy(&trainer.model, &held_out)?)];
    println!("step {:>4}  held-out accuracy {:5.1}%  (chance {:.1}%)", 0, 100.0 * acc[0].1, 100.0 / classes as f64);
    while trainer.step < a.steps {
        opts.steps = (trainer.step + a.eval_every.max(1)).min(a.steps);
        let from_step = trainer.step;
        trainer.run(&opts, &mut data, None, &mut ())?;
        let chunk: Vec<f64> = trainer.losses.iter().filter(|(s, _)| *s > from_step).map(|&(_, l)| l).collect();
        let mean = chunk.iter().sum::<f64>() / chunk.len().max(1) as f64;
        let a_now = accuracy(&trainer.model, &held_out)?;
        acc.push((trainer.step, a_now));
        println!("step {:>4}  held-out accuracy {:5.1}%  train loss {mean:.4}", trainer.step, 100.0 * a_now);
    }
    trainer.save(&a.out, &data, 1)?;
    let back = LoadedModel::from_dir(&a.out, 0, Device::Cpu)?;
    let reloaded = accuracy(&back.model, &held_out)?;
    println!("saved to {}; loaded back: held-out accuracy {:.1}%", a.out.display(), 100.0 * reloaded);
    Ok(Summary { accuracy: acc, losses: trainer.losses.clone(), reloaded_accuracy: reloaded, classes })
}

#[allow(dead_code)] // the tests include this file and call `run`
fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
