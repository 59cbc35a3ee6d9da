//! The flags and steps a training run shares between `kiln train` and `kiln distill`: the run
//! flags ([`RunArgs`], flattened into each command's arguments), their checks, the run directory's
//! plan (`--out`, `--resume`, `--overwrite`), the held-out split and the end of a run.
use super::train::Progress;
use crate::{corpus, plot};
use clap::Args;
use kiln::model::optim::AdamWConfig;
use kiln::model::run_dir;
use kiln::model::sched::{Decay, LrSchedule};
use kiln::model::trainer::{TrainOptions, Trainer};
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
