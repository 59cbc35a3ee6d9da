//! `kiln train`: from a preset, a config-only directory, a checkpoint, or `--resume`.
use super::run::{finish, plan, split_held_out, Plan, RunArgs};
use clap::Args;
use kiln::model::config::ModelConfig;
use kiln::model::generate::SampleOptions;
use kiln::model::params::ParamStore;
use kiln::model::dist::Comm;
use kiln::model::objective::ObjectiveKind;
use kiln::model::tokenize::{self, TokenizerKind};
use kiln::model::trainer::{Dist, EvalLog, StepLog, TrainObserver, Trainer};
use kiln::model::io::entry_exists;
use kiln::model::{limits, LoadOptions};
use kiln::{DType, Error, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A preset (gpt2-tiny, bert-tiny, roberta-tiny, albert-tiny, electra-tiny, gpt2, gpt2-medium, bert-base,
    /// bert-large) or an HF directory.
    #[arg(long, default_value = "gpt2-tiny")]
    pub model: String,
    /// A tokenizer.json (default: the model directory's, else one trained on the data).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary size of a tokenizer trained here (default: the config's vocab_size for a model
    /// directory, 512 for a preset). The model's vocab_size becomes the trained tokenizer's size.
    #[arg(long)]
    pub vocab: Option<usize>,
    /// The pre-training objective: clm, bert (MLM + NSP), mlm, roberta (dynamic masking of packed
    /// full sentences, no NSP), albert (MLM + sentence order), electra (generator + discriminator).
    /// Default: the architecture's (GPT-1/2 clm, BertForPreTraining bert, RoBERTa roberta,
    /// AlbertForPreTraining albert, ElectraForPreTraining electra, other masked LMs mlm).
    #[arg(long)]
    pub objective: Option<String>,
    /// Tokens of sample text printed at the end (GPT-2 only; 0 = none).
    #[arg(long, default_value_t = 60)]
    pub sample_tokens: usize,
    /// Under `mpirun -np N`: 1 = ZeRO-1, each rank keeps and updates the AdamW state of 1/N of
    /// the parameters (0 = every rank keeps all of it).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub zero: u8,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `args.steps` and the other shared flags read as before the split.
impl std::ops::Deref for TrainArgs {
    type Target = RunArgs;
    fn deref(&self) -> &RunArgs {
        &self.run
    }
}

/// Progress of a run: a bar on an interactive stderr, else a line every `every` steps, or JSON
/// lines (shared with `kiln finetune`).
pub(crate) struct Progress {
    pub json: bool,
    pub bar: Option<indicatif::ProgressBar>,
    pub every: u64,
}

impl TrainObserver for Progress {
    fn on_step(&mut self, l: &StepLog) {
        if self.json {
            println!(
                "{}",
                serde_json::json!({"step": l.step, "loss": l.loss, "lr": l.lr, "grad_norm": l.grad_norm, "step_ms": l.step_ms, "tokens_per_s": l.tokens_per_s})
            );
        } else if let Some(b) = &self.bar {
            b.set_position(l.step);
            b.set_message(format!("loss {:.4}  lr {:.2e}  {:.0} tok/s", l.loss, l.lr, l.tokens_per_s));
        } else if l.step == 1 || l.step.is_multiple_of(self.every) {
            println!("step {:>5}  loss {:.4}  lr {:.2e}  |g| {:.3}  {:.0} ms  {:.0} tok/s", l.step, l.loss, l.lr, l.grad_norm, l.step_ms, l.tokens_per_s);
        }
    }
    fn on_eval(&mut self, e: &EvalLog) {
        let ppl = e.perplexity.map(|p| format!("  perplexity {p:.2}")).unwrap_or_default();
        let line = format!("eval  step {:>5}  loss {:.4}{ppl}", e.step, e.loss);
        if self.json {
            println!("{}", serde_json::json!({"step": e.step, "eval_loss": e.loss, "perplexity": e.perplexity}));
        } else if let Some(b) = &self.bar {
            b.println(line);
        } else {
            println!("{line}");
        }
    }
    fn on_skip(&mut self, step: u64, micro: usize, why: &str) {
        if self.json {
            println!("{}", serde_json::json!({"step": step, "micro_batch": micro, "skipped": why}));
        } else {
            let line = format!("step {step}: skipped micro-batch {micro}: {why}");
            match &self.bar {
                Some(b) => b.println(line),
                None => println!("{line}"),
            }
        }
    }
    fn on_checkpoint(&mut self, dir: &Path, step: u64) {
        if !self.json {
            let line = format!("checkpoint  step {step}  -> {}", dir.display());
            match &self.bar {
                Some(b) => b.println(line),
                None => println!("{line}"),
            }
        }
    }
}

/// `kiln train`, alone or as one rank of `mpirun -np N kiln train ...` ([`kiln::model::dist`]):
/// a rank that fails ends every rank of the job, with a message naming it.
pub fn run(args: TrainArgs) -> Result<()> {
    let world = kiln::model::dist::world()?;
    match run_in(args, &*world) {
        Err(e) if world.size() > 1 => world.abort(&format!("error: kiln train, {}: {e}; stopping every rank", world.describe())),
        r => r,
    }
}

fn run_in(args: TrainArgs, world: &dyn Comm) -> Result<()> {
    let lead = world.rank() == 0;
    let checked = args.run.check("train")?;
    let (device, compute_dtype, adamw) = (checked.device, checked.compute_dtype, checked.adamw);
    let Plan { from: dir, preset, out } = plan(&args.run, &args.model, "train")?;
    let mut cfg = match &dir {
        Some(d) => ModelConfig::load(d.join("config.json"))?,
        None => ModelConfig::preset(&preset)?,
    };
    // Text: the user's file, or the built-in corpus. Held out: the last 10%.
    let text = args.text()?;
    let (train_text, eval_text) = split_held_out(&text);
    // Tokenizer: explicit, in the model dir, or trained here on the training text.
    let found = tokenize::find_tokenizer(args.tokenizer.as_deref(), dir.as_deref())?;
    // the sizes are checked before anything is allocated (a tokenizer trained, a model built)
    let job = limits::Job::Train { batch: limits::Size::new("--batch", args.batch), seq: limits::Size::new("--seq", args.seq) };
    let memory = limits::Memory::of(device);
    limits::check_positions(&cfg, limits::Size::new("--seq", args.seq)).map_err(|e| Error::msg(format!("train: {e}")))?;
    // a tokenizer trained here aims at --vocab, else at the vocabulary the config asks for
    let vocab = match (args.vocab, &dir) {
        (Some(v), _) => limits::Size::new("--vocab", v),
        (None, Some(_)) => limits::Size::new("vocab_size", cfg.vocab_size()),
        (None, None) => limits::Size::new("--vocab", 512),
    };
    if found.is_none() {
        let what = "training a tokenizer with that vocabulary";
        limits::check_bytes(vocab, limits::TOKENIZER_BYTES_PER_TOKEN, what, memory.as_ref()).map_err(|e| Error::msg(format!("train: {e}")))?;
    }
    // (a tokenizer trained here sets the vocabulary: until then, the model without one)
    let mut sized = cfg.clone();
    if found.is_none() {
        sized.set_vocab_size(1);
    }
    limits::check(&sized, &job, memory.as_ref()).map_err(|e| Error::msg(format!("train: {e}")))?;
    let tok = match found {
        Some(t) => t,
        None => {
            if dir.as_ref().is_some_and(|d| entry_exists(&d.join("model.safetensors"))) {
                return Err(Error::msg("train: the checkpoint has weights but no tokenizer.json; pass --tokenizer"));
            }
            let kind = if cfg.family().is_decoder() { TokenizerKind::Bpe } else { TokenizerKind::WordPiece };
            // the tokenizers crate's own bars, on an interactive stderr only (as the training bar)
            let show_progress = !args.json && std::io::stderr().is_terminal() && lead;
            // trained by rank 0 alone and sent to the others, so that every rank has the same one
            let mut json = Vec::new();
            if lead {
                let t = tokenize::train_from_texts(kind, &[train_text], vocab.value, show_progress)?;
                json = t.to_string(false).map_err(|e| Error::msg(format!("tokenizer: {e}")))?.into_bytes();
            }
            world.broadcast_bytes(&mut json, 0)?;
            let t = tokenizers::Tokenizer::from_bytes(&json).map_err(|e| Error::msg(format!("tokenizer: {e}")))?;
            tokenize::sync_config(&mut cfg, &t);
            t
        }
    };
    if tok.get_vocab_size(true) > cfg.vocab_size() {
        return Err(Error::msg(format!("train: tokenizer has {} tokens but the model's vocab_size is {}", tok.get_vocab_size(true), cfg.vocab_size())));
    }
    limits::check(&cfg, &job, memory.as_ref()).map_err(|e| Error::msg(format!("train: {e}")))?;
    let objective = match &args.objective {
        Some(o) => ObjectiveKind::parse(o)?,
        None => ObjectiveKind::default_for(&cfg)?,
    };
    objective.check(&cfg).map_err(|e| Error::msg(format!("train: {e} (--objective)")))?;
    let store = ParamStore::new(args.seed, DType::F32, device);
    let mut trainer = Trainer::new(cfg.clone(), store.clone(), Some(&tok), adamw)?;
    trainer.model.set_recompute(args.recompute);
    trainer.objective = objective.build(&cfg, &trainer.model, &store, args.seed)?;
    if let Some(d) = &dir {
        let w = d.join("model.safetensors");
        if entry_exists(&w) {
            kiln::model::load_params(&w, &store, &cfg.family().name_map(), &LoadOptions::strict())?;
        }
    }
    let v = cfg.vocab_size();
    let mut data = objective.batcher(&tok, train_text, v, args.batch, args.seq, args.seed)?;
    let mut eval = objective.batcher(&tok, eval_text, v, args.batch, args.seq, args.seed ^ 1)?;
    if let (Some(_), Some(r)) = (&args.resume, &dir) {
        let st = trainer.restore_dir(r, data.as_mut())?;
        kiln::model::dist::check_resume(&st, world.size(), args.accum)?;
        if trainer.step >= args.steps {
            return Err(Error::msg(format!("train: the checkpoint is already at step {} (>= --steps {})", trainer.step, args.steps)));
        }
    }
    std::fs::create_dir_all(&out).map_err(|e| Error::Io { path: out.display().to_string(), source: e })?;
    let total = args.steps;
    let opts = args.run.options(&checked, args.run.schedule(checked.decay), Some(out.clone()));
    let tokens_per_step = args.batch * args.seq * args.accum * world.size();
    if lead && args.json {
        // what is trained, so that step_ms compares with `kiln bench`'s train_step rows (same loop)
        let run = serde_json::json!({"model_type": cfg.model_type(), "params": store.num_params(), "vocab_size": cfg.vocab_size(),
            "layers": cfg.num_layers(), "batch": args.batch, "seq": args.seq, "accum": args.accum, "world_size": world.size(), "zero": args.zero, "tokens_per_step": tokens_per_step,
            "steps": total, "objective": objective.name(), "device": device.to_string(), "dtype": compute_dtype.as_str(), "config": cfg.to_json_value()?});
        println!("{run}");
    } else if lead {
        println!(
            "kiln train: {} ({} params, {} layers, vocabulary {}), objective {}, {tokens_per_step} tokens/step, {total} steps, lr {:.1e}, device {device}, out {}",
            cfg.model_type(),
            store.num_params(),
            cfg.num_layers(),
            cfg.vocab_size(),
            objective.name(),
            args.lr,
            out.display()
        );
    }
    let mut progress = args.run.progress(trainer.step, lead);
    let t0 = std::time::Instant::now();
    trainer.run_dist(&opts, Dist { comm: world, zero: args.zero == 1 }, data.as_mut(), Some(eval.as_mut()), &mut progress)?;
    if world.size() > 1 {
        // each rank's AdamW state (with --zero 1 about 1/N of the unsharded one)
        let mut bytes = vec![0.0; world.size()];
        bytes[world.rank()] = trainer.optimizer.state_bytes() as f64;
        world.all_reduce_sum_f64(&mut bytes)?;
        if lead && args.json {
            println!("{}", serde_json::json!({"optimizer_state_bytes_per_rank": bytes, "world_size": world.size(), "zero": args.zero}));
        } else if lead {
            let mib: Vec<String> = bytes.iter().map(|b| format!("{:.2}", b / (1u64 << 20) as f64)).collect();
            println!("AdamW state per rank (MiB): {}", mib.join(", "));
        }
    }
    if !lead {
        return Ok(());
    }
    finish(&args.run, &progress, &out, &trainer, t0, device)?;
    if let (Ok(m), true) = (trainer.model.as_causal_lm(), args.sample_tokens > 0 && !args.json) {
        let prompt = tok.encode("The", false).map_err(|e| Error::msg(format!("tokenizer: {e}")))?.get_ids().iter().map(|&i| i as i64).collect::<Vec<_>>();
        let ids = m.generate(&prompt, &SampleOptions { max_new_tokens: args.sample_tokens, temperature: 0.8, top_k: 40, seed: args.seed, ..Default::default() })?;
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        println!("sample: {}", tok.decode(&ids, true).map_err(|e| Error::msg(format!("tokenizer: {e}")))?);
    }
    Ok(())
}
