//! `kiln finetune`: a classification head on a pretrained body, trained from labelled data
//! (JSONL or CSV; see `kiln::model::finetune`), evaluated every N steps, the best checkpoint kept.
use super::train::Progress;
use clap::Args;
use kiln::model::config::ModelConfig;
use kiln::model::family::Task;
use kiln::model::finetune::{self, ExampleBatcher, FinetuneTask, Labels};
use kiln::model::finetune::gpt::{GptFinetune, GptTokens, PairMode};
use kiln::model::optim::AdamWConfig;
use kiln::model::params::ParamStore;
use kiln::model::run_dir::{self, Commit};
use kiln::model::sched::{Decay, LrSchedule};
use kiln::model::train_state::{checkpoint_files, load_train_state};
use kiln::model::trainer::{TrainObserver, TrainOptions, Trainer};
use kiln::model::{limits, tokenize, LoadOptions};
use kiln::{DType, Device, Error, Result};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// The pretrained model: an HF directory (any family with the task's head; a bare encoder
    /// such as a sentence-transformers directory included) or a kiln run directory.
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<PathBuf>,
    /// Continue a fine-tuning run exactly: its run directory (or one of its checkpoints).
    #[arg(long, conflicts_with = "model")]
    pub resume: Option<PathBuf>,
    /// seq-cls (text, label), pair-cls (text, text_pair, label), token-cls (tokens, tags), qa
    /// (question, context, answers with character offsets) or multiple-choice (question, choices
    /// — CSV: choice0, choice1, ... — and label: the right choice's 0-based index or its text).
    #[arg(long)]
    pub task: String,
    /// Training examples: JSONL (one object per line) or CSV (a header row), by extension.
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluation examples, in the same form.
    #[arg(long)]
    pub eval: PathBuf,
    /// The run directory (checkpoints as `kiln train` writes them); the best checkpoint by the
    /// task's metric goes to OUT/best. With --resume: the run's own directory by default.
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Replace the model or checkpoints already in --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Updates (default: --epochs over the training data).
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long, default_value_t = 3)]
    pub epochs: u64,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Tokens per example (longer ones are truncated).
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// constant, linear or cosine decay after warm-up.
    #[arg(long, default_value = "linear")]
    pub schedule: String,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Evaluate (and checkpoint) every N updates (0 = once per epoch) and at the end.
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Checkpoints of this run to keep in --out (0 = all); OUT/best holds the best one.
    #[arg(long, default_value_t = 1)]
    pub keep: usize,
    /// One JSON object per line (the run, steps, evaluations).
    #[arg(long)]
    pub json: bool,
    /// GPT models: the weight λ of the auxiliary causal-LM loss on the same input (GPT-1's
    /// fine-tuning; default 0.5, 0 disables).
    #[arg(long)]
    pub lm_coef: Option<f64>,
    /// GPT models, pair-cls: entailment (premise, delimiter, hypothesis) or similarity (both
    /// orders, their final states summed before the linear head).
    #[arg(long, default_value = "entailment")]
    pub pair_mode: String,
}

pub fn run(a: FinetuneArgs) -> Result<()> {
    let device: Device = a.device.parse()?;
    kiln::tensor::cuda::check_device(device)?;
    let compute: DType = a.dtype.parse()?;
    let task: FinetuneTask = a.task.parse()?;
    let decay: Decay = a.schedule.parse()?;
    if a.batch == 0 || a.seq < 2 {
        return Err(Error::msg("finetune: --batch must be positive and --seq at least 2"));
    }
    let adamw = AdamWConfig { lr: a.lr, weight_decay: a.weight_decay, ..Default::default() };
    let mut opts = TrainOptions {
        steps: 0,
        schedule: LrSchedule::constant(a.lr),
        adamw,
        clip: a.clip,
        accum: 1,
        seed: a.seed,
        eval_every: 0,
        eval_batches: 1,
        ckpt_every: 0,
        // checkpoints are committed after each evaluation, below
        out: None,
        keep: a.keep,
        overwrite: a.overwrite,
        compute_dtype: compute,
    };
    opts.check().map_err(|e| Error::msg(format!("finetune: {e}")))?;
    // where from, where to: a pretrained model into --out, or a run continued (in place by default)
    let (from, out) = match (&a.resume, &a.model) {
        (Some(r), _) => (run_dir::resolve(r)?.dir, a.out.clone().unwrap_or_else(|| run_dir::run_root(r))),
        (None, Some(m)) => (run_dir::resolve(m)?.dir, a.out.clone().ok_or_else(|| Error::msg("finetune: --out is required"))?),
        (None, None) => return Err(Error::msg("finetune: --model or --resume is required")),
    };
    let continues = a.resume.as_deref().is_some_and(|r| run_dir::run_root(r) == out);
    let held = run_dir::held_entries(&out);
    if !held.is_empty() && !a.overwrite && !continues {
        return Err(Error::msg(format!("finetune: --out {} already holds a model ({}); pass --overwrite to replace it, or another --out", out.display(), held.join(", "))));
    }
    let mut cfg = ModelConfig::load(from.join("config.json"))?;
    let mut tok = tokenize::find_tokenizer(None, Some(&from))?.ok_or_else(|| Error::msg(format!("finetune: no tokenizer.json in {}", from.display())))?;
    let fam = cfg.family();
    // GPT-1 / GPT-2 on sentence tasks: GPT-1's input transforms and auxiliary LM loss
    let gpt = fam.is_decoder() && matches!(task, FinetuneTask::SeqCls | FinetuneTask::PairCls | FinetuneTask::MultipleChoice);
    let pair_mode: PairMode = a.pair_mode.parse()?;
    if !gpt && (a.lm_coef.is_some() || pair_mode != PairMode::Entailment) {
        return Err(Error::msg("finetune: --lm-coef and --pair-mode apply to GPT models (GPT-1 / GPT-2) on seq-cls, pair-cls and multiple-choice"));
    }
    if pair_mode == PairMode::Similarity && task != FinetuneTask::PairCls {
        return Err(Error::msg("finetune: --pair-mode similarity is for --task pair-cls"));
    }
    let lm_coef = a.lm_coef.unwrap_or(0.5);
    if !lm_coef.is_finite() || lm_coef < 0.0 {
        return Err(Error::msg(format!("finetune: --lm-coef must be a finite number >= 0, got {lm_coef}")));
    }
    // a decoder answers multiple choice with its double-heads model (LM + multiple_choice_head)
    let head = if fam.is_decoder() && task == FinetuneTask::MultipleChoice { Task::DoubleHeads } else { task.head() };
    let arch = fam.arch_for(head).ok_or_else(|| Error::msg(format!("finetune: the {} family has no {head:?} head", fam.model_type())))?;
    // the data, its labels (a continued run keeps its own), and the head they ask for
    let train_ex = finetune::read_examples(&a.data, task)?;
    let eval_ex = finetune::read_examples(&a.eval, task)?;
    let labels = match &a.resume {
        _ if !task.has_classes() => Labels(Vec::new()),
        Some(_) => {
            if cfg.architecture() != Some(arch.name) {
                return Err(Error::msg(format!("finetune: {} is a {} run, not {}", from.display(), cfg.architecture().unwrap_or("?"), arch.name)));
            }
            Labels::from_config(&cfg).ok_or_else(|| Error::msg(format!("finetune: {}/config.json has no id2label", from.display())))?
        }
        None => Labels::of(&train_ex, task),
    };
    if labels.0.len() < 2 && matches!(task, FinetuneTask::SeqCls | FinetuneTask::PairCls) {
        return Err(Error::msg(format!("{}: the training data has one label ({}); classification needs two or more", a.data.display(), labels.0.join(", "))));
    }
    cfg.set_architecture(arch.name);
    if task.has_classes() {
        labels.write_to(&mut cfg);
    }
    // the start, delimiter and extract tokens in the vocabulary (the embedding grows below)
    let gpt_tokens = if gpt { Some(GptTokens::install(&mut tok, &mut cfg)?) } else { None };
    // a multiple-choice batch runs batch × choices sequences (a similarity pair, both orders)
    let per_example = match task {
        FinetuneTask::MultipleChoice => train_ex.iter().chain(&eval_ex).map(|e| e.choices.len()).max().unwrap_or(1),
        FinetuneTask::PairCls if pair_mode == PairMode::Similarity => 2,
        _ => 1,
    };
    let rows = if per_example > 1 { limits::Size::new("--batch × choices", a.batch.saturating_mul(per_example)) } else { limits::Size::new("--batch", a.batch) };
    limits::check(&cfg, &limits::Job::Train { batch: rows, seq: limits::Size::new("--seq", a.seq) }, limits::Memory::of(device).as_ref())
        .map_err(|e| Error::msg(format!("finetune: {e}")))?;
    limits::check_positions(&cfg, limits::Size::new("--seq", a.seq)).map_err(|e| Error::msg(format!("finetune: {e}")))?;
    let pad = gpt_tokens.map_or_else(|| tokenize::pad_id(&tok, &cfg), |t| t.pad) as i64;
    let encode = |ex: &[finetune::Example], path: &std::path::Path| match &gpt_tokens {
        Some(t) => finetune::gpt::encode(&tok, ex, &labels, task, pair_mode, a.seq, path, t),
        None => finetune::encode(&tok, ex, &labels, task, a.seq, path),
    };
    let (mut train_items, mut eval_items) = (encode(&train_ex, &a.data)?, encode(&eval_ex, &a.eval)?);
    if let ModelConfig::Encoder(c) = &cfg {
        if c.type_vocab_size < 2 {
            finetune::single_segment(&mut train_items);
            finetune::single_segment(&mut eval_items);
        }
    }
    let store = ParamStore::new(a.seed, DType::F32, device);
    let mut trainer = Trainer::new(cfg.clone(), store.clone(), Some(&tok), adamw)?;
    if gpt {
        trainer = trainer.with_objective(Box::new(GptFinetune { lm_coef }));
    }
    let weights = from.join("model.safetensors");
    if a.resume.is_some() {
        kiln::model::load_params(&weights, &store, &fam.name_map(), &LoadOptions::strict())?;
    } else if kiln::model::io::entry_exists(&weights) {
        // the body must load whole; the head may be absent (a new head) or of another size
        let mut rep = kiln::model::load_params(&weights, &store, &fam.name_map(), &LoadOptions::default())?;
        if let Some(t) = &gpt_tokens {
            // the pretrained rows into the embedding grown by the transform tokens
            t.fill_embedding(&weights, &store, &mut rep)?;
        }
        let body = format!("{}.", fam.prefix());
        // a pooler the pretrained model lacks (RoBERTa's masked LM under RobertaForMultipleChoice)
        // starts fresh, as transformers starts it
        let pooler = format!("{body}pooler.");
        let lacking: Vec<&String> = rep.missing.iter().filter(|n| !n.starts_with(&pooler)).chain(rep.shape_mismatches.iter().map(|m| &m.name)).filter(|n| n.starts_with(&body)).collect();
        if !lacking.is_empty() {
            return Err(Error::msg(format!("finetune: {} does not hold the model's body: {rep}", weights.display())));
        }
        if rep.missing.iter().any(|n| n.starts_with(&pooler)) && !a.json {
            println!("note: {} has no pooler: {}'s pooler starts from random weights", weights.display(), arch.name);
        }
    } else if !a.json {
        println!("note: {} has no model.safetensors: the body starts from random weights", from.display());
    }
    let mut data = ExampleBatcher::new(train_items, a.batch, pad, task, a.seed)?;
    if a.resume.is_some() {
        trainer.restore(&load_train_state(from.join("training_state.safetensors"))?, &mut data)?;
    }
    let per_epoch = data.steps_per_epoch();
    let total = a.steps.unwrap_or(a.epochs * per_epoch).max(1);
    let every = if a.eval_every == 0 { per_epoch } else { a.eval_every };
    opts.steps = total;
    opts.schedule = LrSchedule { peak_lr: a.lr, min_lr: 0.0, warmup_steps: a.warmup.min(total), total_steps: total, decay };
    let outside = labels.0.iter().position(|l| l == "O").map(|i| i as i64);
    let mut line = serde_json::json!({"task": a.task, "architecture": arch.name, "params": store.num_params(), "labels": labels.0,
        "train_examples": train_ex.len(), "eval_examples": eval_ex.len(), "steps": total, "steps_per_epoch": per_epoch});
    if let Some(t) = &gpt_tokens {
        line["lm_coef"] = lm_coef.into();
        line["pair_mode"] = a.pair_mode.clone().into();
        line["vocab_size"] = serde_json::json!({"pretrained": t.old_vocab, "fine-tuning": t.vocab});
    }
    if a.json {
        println!("{line}");
    } else {
        println!(
            "kiln finetune: {} ({} params), {} labels, {} training / {} evaluation examples, {total} steps ({per_epoch} per epoch), out {}",
            arch.name,
            store.num_params(),
            labels.0.len(),
            train_ex.len(),
            eval_ex.len(),
            out.display()
        );
    }
    let bar = (!a.json && std::io::stderr().is_terminal()).then(|| indicatif::ProgressBar::new(total));
    let mut progress = Progress { json: a.json, bar, every: 25 };
    let metric = task.metric();
    let best_dir = out.join("best");
    let mut best = trainer.extra.get("best").and_then(|v| v.as_f64()).unwrap_or(f64::NEG_INFINITY);
    if trainer.step >= total {
        return Err(Error::msg(format!("finetune: the run is already at step {} (>= {total} steps)", trainer.step)));
    }
    while trainer.step < total {
        let mut chunk = opts.clone();
        chunk.steps = (trainer.step + every).min(total);
        trainer.run(&chunk, &mut data, None, &mut progress)?;
        let m = finetune::evaluate(&trainer.model, &eval_items, task, labels.0.len(), a.batch, pad, outside, device)?;
        let score = m[metric];
        let improved = score > best;
        if improved {
            best = score;
            let files = checkpoint_files(&trainer.cfg, &trainer.store, Some(&tok), None);
            run_dir::commit(&best_dir, Commit { files, run_id: &trainer.run_id, step: trainer.step, config_hash: trainer.cfg.hash_hex()?, keep: 1, overwrite: true })?;
        }
        // the checkpoint after the evaluation, so that a resumed run knows the best so far
        trainer.extra.insert("best".into(), best.into());
        let ck = trainer.save_with(&out, &data, a.keep, a.overwrite)?;
        progress.on_checkpoint(&ck, trainer.step);
        let mut ev = serde_json::json!({"step": trainer.step, "best": improved});
        for (k, v) in &m {
            ev[*k] = (*v).into();
        }
        match (&progress.bar, a.json) {
            (_, true) => println!("{ev}"),
            (Some(b), false) => b.println(format!("eval  step {:>5}  {}{}", trainer.step, fmt_metrics(&m), if improved { "  (best)" } else { "" })),
            (None, false) => println!("eval  step {:>5}  {}{}", trainer.step, fmt_metrics(&m), if improved { "  (best)" } else { "" }),
        }
    }
    if let Some(b) = &progress.bar {
        b.finish();
    }
    if !a.json {
        println!("best {metric} {best:.4} -> {}; last checkpoint -> {}", best_dir.display(), out.display());
    }
    Ok(())
}

fn fmt_metrics(m: &std::collections::BTreeMap<&'static str, f64>) -> String {
    m.iter().map(|(k, v)| format!("{k} {v:.4}")).collect::<Vec<_>>().join("  ")
}
