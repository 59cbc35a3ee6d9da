//! `kiln train`: from a preset, a config-only directory, a checkpoint, or `--resume`.
use crate::{corpus, plot};
use clap::Args;
use kiln::model::config::ModelConfig;
use kiln::model::generate::SampleOptions;
use kiln::model::optim::AdamWConfig;
use kiln::model::params::ParamStore;
use kiln::model::sched::{Decay, LrSchedule};
use kiln::model::dist::Comm;
use kiln::model::objective::ObjectiveKind;
use kiln::model::tokenize::{self, TokenizerKind};
use kiln::model::trainer::{Dist, EvalLog, StepLog, TrainObserver, TrainOptions, Trainer};
use kiln::model::io::entry_exists;
use kiln::model::{limits, run_dir, LoadOptions};
use kiln::{DType, Device, Error, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// The flags of a training run, shared by `kiln train` and `kiln distill` (flattened into each).
#[derive(Args, Debug)]
pub struct RunArgs {
    /// A UTF-8 text file to train on (default: the built-in generated corpus).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Train on the built-in generated corpus (the default when --data is absent).
    #[arg(long, conflicts_with = "data")]
    pub synthetic: bool,
    #[arg(long, default_value_t = 600)]
    pub steps: u64,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,
    /// constant, linear or cosine decay after warm-up.
    #[arg(long, default_value = "cosine")]
    pub schedule: String,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Gradient accumulation: micro-batches per update.
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// CUDA: let f32 matmuls use TF32 tensor cores (10-bit mantissa inputs; off: strict FP32).
    #[arg(long)]
    pub tf32: bool,
    /// Activation recomputation: each transformer block keeps only its input in the forward and
    /// recomputes its activations in the backward (same gradients, less memory, ~1 more forward).
    #[arg(long)]
    pub recompute: bool,
    /// The run directory: its checkpoints (`checkpoint-<step>/`, the current one linked as
    /// `current` and its files at the top level, an HF model directory) and the loss curve.
    /// Default: out/run, or with --resume the run being continued. A directory that already holds
    /// a model or checkpoint is refused unless --overwrite is given (or --resume continues it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace the model or checkpoints already in --out (they are removed once this run's first
    /// checkpoint is current).
    #[arg(long)]
    pub overwrite: bool,
    /// Continue a run exactly (bit for bit on the CPU): a run directory (its current checkpoint)
    /// or one of its checkpoint-<step> directories.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Checkpoints of this run to keep, the newest ones (0 = all).
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
    #[arg(long, default_value_t = 50)]
    pub eval_every: u64,
    #[arg(long, default_value_t = 4)]
    pub eval_batches: usize,
    /// Checkpoint every N updates (0 = only at the end).
    #[arg(long, default_value_t = 0)]
    pub ckpt_every: u64,
    /// One JSON object per line: first the run (model, parameters, vocabulary, tokens per step,
    /// the config as trained), then per step (step, loss, lr, step_ms, tokens_per_s).
    #[arg(long)]
    pub json: bool,
}

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

/// What a run's flags check to before anything is read or written.
pub(crate) struct Checked {
    pub device: Device,
    pub compute_dtype: DType,
    pub decay: Decay,
    pub adamw: AdamWConfig,
}

impl RunArgs {
    /// Parses and checks the device, dtype, sizes, schedule and optimizer flags (`cmd` names the
    /// command in the errors); turns TF32 on when asked.
    pub(crate) fn check(&self, cmd: &str) -> Result<Checked> {
        let device: Device = self.device.parse()?;
        kiln::tensor::cuda::check_device(device)?;
        let compute_dtype: DType = self.dtype.parse()?;
        if self.tf32 {
            kiln::tensor::cuda::set_tf32(true);
        }
        if !matches!(compute_dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::msg(format!("{cmd}: --dtype {} is not supported (f32, or bf16 / f16 mixed precision)", self.dtype)));
        }
        if self.batch == 0 || self.seq < 2 || self.steps == 0 {
            return Err(Error::msg(format!("{cmd}: --batch, --steps must be positive and --seq at least 2")));
        }
        let decay: Decay = self.schedule.parse()?;
        let adamw = AdamWConfig { lr: self.lr, weight_decay: self.weight_decay, ..Default::default() };
        let c = Checked { device, compute_dtype, decay, adamw };
        self.options(&c, LrSchedule::constant(self.lr), None).check().map_err(|e| Error::msg(format!("{e} (--lr, --weight-decay, --clip, --accum, --eval-batches)")))?;
        Ok(c)
    }
    /// The trainer's options for these flags.
    pub(crate) fn options(&self, c: &Checked, schedule: LrSchedule, out: Option<PathBuf>) -> TrainOptions {
        TrainOptions {
            steps: self.steps,
            schedule,
            adamw: c.adamw,
            clip: self.clip,
            accum: self.accum,
            seed: self.seed,
            eval_every: self.eval_every,
            eval_batches: self.eval_batches,
            ckpt_every: self.ckpt_every,
            out,
            keep: self.keep,
            overwrite: self.overwrite,
            compute_dtype: c.compute_dtype,
        }
    }
    /// Warm-up, then the decay down to a tenth of --lr at --steps.
    pub(crate) fn schedule(&self, decay: Decay) -> LrSchedule {
        LrSchedule { peak_lr: self.lr, min_lr: self.lr * 0.1, warmup_steps: self.warmup.min(self.steps), total_steps: self.steps, decay }
    }
    /// The text trained on: --data, or the built-in corpus.
    pub(crate) fn text(&self) -> Result<String> {
        match &self.data {
            Some(p) => kiln::model::data::read_text(p),
            None => Ok(corpus::default_corpus(self.seed, 400_000)),
        }
    }
    /// The progress reporter of a run of --steps updates starting at `step` (a bar on an
    /// interactive stderr of the lead rank, unless --json).
    pub(crate) fn progress(&self, step: u64, lead: bool) -> Progress {
        let bar = (!self.json && std::io::stderr().is_terminal() && lead).then(|| {
            let b = indicatif::ProgressBar::new(self.steps);
            if let Ok(s) = indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} (eta {eta})") {
                b.set_style(s);
            }
            b.set_position(step);
            b
        });
        Progress { json: self.json, bar, every: 25 }
    }
}

/// The text cut at 90% (on a char boundary): (training, held out).
pub(crate) fn split_held_out(text: &str) -> (&str, &str) {
    let cut = text.char_indices().map(|(i, _)| i).find(|&i| i >= text.len() * 9 / 10).unwrap_or(text.len());
    text.split_at(cut)
}

/// The end of a run on the lead rank: the bar finished, the loss curve written to OUT/loss.svg,
/// the time and the device's peak memory printed.
pub(crate) fn finish(run: &RunArgs, progress: &Progress, out: &Path, trainer: &Trainer, t0: std::time::Instant, device: Device) -> Result<()> {
    if let Some(b) = &progress.bar {
        b.finish();
    }
    let svg = out.join("loss.svg");
    plot::loss_curve(&svg, &trainer.losses, &trainer.evals)?;
    if !run.json {
        println!("done in {:.1}s; loss curve -> {}", t0.elapsed().as_secs_f64(), svg.display());
    }
    if let Some(peak) = kiln::tensor::cuda::peak_memory_bytes(device) {
        if run.json {
            println!("{{\"peak_device_mem_bytes\":{peak},\"device\":\"{device}\"}}");
        } else {
            println!("peak device memory ({device}): {:.1} MiB (caching-allocator high-water mark)", peak as f64 / (1u64 << 20) as f64);
        }
    }
    Ok(())
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

/// Where a run starts from and where it writes.
pub(crate) struct Plan {
    /// The directory read (a run's current checkpoint, a checkpoint, an HF directory), if any.
    pub from: Option<PathBuf>,
    /// The preset (or other name), when there is no directory.
    pub preset: String,
    /// The run directory written.
    pub out: PathBuf,
}

/// Resolves the model (`model`: a directory or a preset name), `--resume` and `--out`, and refuses
/// to write over what was not asked for: a model or checkpoints in `--out` (unless `--overwrite`,
/// or `--resume` continues that run), or, resuming an earlier checkpoint of a run directory, the
/// later ones (unless `--overwrite`). `cmd` names the command in the errors.
pub(crate) fn plan(args: &RunArgs, model: &str, cmd: &str) -> Result<Plan> {
    let (from, preset) = match &args.resume {
        Some(r) => (Some(r.clone()), String::new()),
        None if Path::new(model).is_dir() => (Some(PathBuf::from(model)), String::new()),
        None => (None, model.to_string()),
    };
    let from = from.map(|d| run_dir::resolve(&d).map(|r| r.dir)).transpose()?;
    let continued = args.resume.as_deref().map(run_dir::run_root);
    let out = args.out.clone().or_else(|| continued.clone()).unwrap_or_else(|| PathBuf::from("out/run"));
    let continues_out = continued.as_deref().is_some_and(|c| same_path(c, &out));
    if !args.overwrite && !continues_out {
        let held = run_dir::held_entries(&out);
        if !held.is_empty() {
            return Err(Error::msg(format!("{cmd}: --out {} already holds a model ({}); pass --overwrite to replace it, --resume to continue it, or another --out", out.display(), held.join(", "))));
        }
    }
    if let (Some(r), true, false) = (&args.resume, continues_out, args.overwrite) {
        let name = r.file_name().map(|n| n.to_string_lossy().into_owned());
        if let (Some(cur), Some(name)) = (run_dir::current_name(&out), name.filter(|_| run_dir::run_root(r) != *r)) {
            if cur != name {
                return Err(Error::msg(format!(
                    "{cmd}: --resume {} is not the current checkpoint of {} ({cur}); continuing it there would replace the later checkpoints: pass --overwrite, or --out elsewhere",
                    r.display(),
                    out.display()
                )));
            }
        }
    }
    Ok(Plan { from, preset, out })
}

/// Whether two paths name the same entry (equal, or equal once canonicalized).
pub(crate) fn same_path(a: &Path, b: &Path) -> bool {
    a == b || std::fs::canonicalize(a).ok().zip(std::fs::canonicalize(b).ok()).is_some_and(|(x, y)| x == y)
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
