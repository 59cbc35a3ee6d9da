//! The training loop behind `kiln train`, usable as a library: data → model → loss → backward →
//! clip → AdamW with a schedule, gradient accumulation, held-out evaluation, atomic checkpoints and
//! exact resume.
pub use crate::params::first_non_finite;
use crate::config::ModelConfig;
use crate::data::Batch;
use crate::dist::{Comm, Local};
use crate::model::Model;
use crate::objective::{ModelLoss, Objective};
use crate::nn::ForwardCtx;
use crate::optim::{clip_grads_to, AdamW, AdamWConfig, Optimizer};
use crate::params::ParamStore;
use crate::sched::LrSchedule;
use crate::run_dir::{commit, Commit};
use crate::train_state::{checkpoint_files, TrainState};
use kiln_tensor::{no_grad, DType, Error, Result};
use std::path::PathBuf;
use std::time::Instant;

/// A source of training batches whose position can be saved and restored.
pub trait BatchSource {
    fn next_batch(&mut self) -> Result<Batch>;
    fn position(&self) -> crate::data::DataPosition;
    fn set_position(&mut self, p: &crate::data::DataPosition) -> Result<()>;
}

impl BatchSource for crate::data::CausalLmBatcher {
    fn next_batch(&mut self) -> Result<Batch> {
        crate::data::CausalLmBatcher::next_batch(self)
    }
    fn position(&self) -> crate::data::DataPosition {
        crate::data::CausalLmBatcher::position(self)
    }
    fn set_position(&mut self, p: &crate::data::DataPosition) -> Result<()> {
        crate::data::CausalLmBatcher::set_position(self, p)
    }
}

impl BatchSource for crate::data::BertBatcher {
    fn next_batch(&mut self) -> Result<Batch> {
        crate::data::BertBatcher::next_batch(self)
    }
    fn position(&self) -> crate::data::DataPosition {
        crate::data::BertBatcher::position(self)
    }
    fn set_position(&mut self, p: &crate::data::DataPosition) -> Result<()> {
        crate::data::BertBatcher::set_position(self, p)
    }
}

/// Hyper-parameters of a run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub steps: u64,
    pub schedule: LrSchedule,
    pub adamw: AdamWConfig,
    /// Global-norm clipping threshold (0 = off).
    pub clip: f64,
    /// Micro-batches per update.
    pub accum: usize,
    pub seed: u64,
    /// Evaluate on held-out batches every N updates (0 = only at the end).
    pub eval_every: u64,
    pub eval_batches: usize,
    /// Checkpoint every N updates (0 = only at the end); needs `out`.
    pub ckpt_every: u64,
    /// The run directory checkpoints are committed to (see [`crate::run_dir`]).
    pub out: Option<PathBuf>,
    /// Checkpoints of this run kept in `out`, the newest first (0 = all).
    pub keep: usize,
    /// Let the first checkpoint replace other runs' checkpoints in `out`.
    pub overwrite: bool,
    /// Activations' dtype: f32, or mixed precision with bf16 / f16 activations and GEMMs over f32
    /// master weights and optimizer state (see [`ForwardCtx`]); f16 adds dynamic loss scaling.
    pub compute_dtype: DType,
}

impl TrainOptions {
    /// Errors naming the option for what cannot train: a negative or non-finite learning rate,
    /// weight decay or clip (0 = no clipping), no accumulation, a compute dtype other than
    /// f32 / bf16 / f16, zero evaluation batches.
    pub fn check(&self) -> Result<()> {
        self.adamw.check()?;
        let (lr, min) = (self.schedule.peak_lr, self.schedule.min_lr);
        if !(lr.is_finite() && lr >= 0.0 && min.is_finite() && min >= 0.0) {
            return Err(Error::msg(format!("train: the learning rate must be finite and >= 0, got {lr} (floor {min})")));
        }
        if !(self.clip.is_finite() && self.clip >= 0.0) {
            return Err(Error::msg(format!("train: clip must be finite and >= 0 (0 = no clipping), got {}", self.clip)));
        }
        if self.accum == 0 {
            return Err(Error::msg("train: gradient accumulation must be at least 1"));
        }
        if self.eval_batches == 0 {
            return Err(Error::msg("train: evaluation needs at least 1 batch"));
        }
        if !matches!(self.compute_dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::msg(format!("train: compute dtype {} is not supported (f32, bf16 or f16)", self.compute_dtype)));
        }
        Ok(())
    }
}

/// Dynamic loss scaling for f16 training, with the semantics of PyTorch's `GradScaler`: the loss
/// is multiplied by `scale` before backward and the gradients divided by it after; an update whose
/// gradients overflowed is skipped and halves the scale; `growth_interval` finite updates in a row
/// double it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScaler {
    pub scale: f64,
    pub growth_interval: u64,
    /// Finite updates since the last change of scale.
    pub good: u64,
    /// Updates skipped so far because the gradients overflowed.
    pub skipped: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler { scale: 65536.0, growth_interval: 2000, good: 0, skipped: 0 }
    }
}

impl LossScaler {
    /// Records one update's outcome; returns whether the optimizer may step.
    pub fn update(&mut self, grads_finite: bool) -> bool {
        if !grads_finite {
            self.scale = (self.scale * 0.5).max(f64::MIN_POSITIVE);
            self.good = 0;
            self.skipped += 1;
            return false;
        }
        self.good += 1;
        if self.good >= self.growth_interval {
            self.scale *= 2.0;
            self.good = 0;
        }
        true
    }
}

/// One logged update.
#[derive(Debug, Clone, Copy)]
pub struct StepLog {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub step_ms: f64,
    pub tokens_per_s: f64,
}

/// One evaluation (`perplexity`: `e^loss` where the objective's loss is one token cross-entropy, else `None`).
#[derive(Debug, Clone, Copy)]
pub struct EvalLog {
    pub step: u64,
    pub loss: f64,
    pub perplexity: Option<f64>,
}

/// Receives progress (a progress bar, plain lines, JSON lines, a test recorder...).
pub trait TrainObserver {
    fn on_step(&mut self, _log: &StepLog) {}
    fn on_eval(&mut self, _log: &EvalLog) {}
    fn on_checkpoint(&mut self, _dir: &std::path::Path, _step: u64) {}
    /// Micro-batch `micro` of update `step` (1-based) was skipped: `why`. When every micro-batch
    /// of an update is skipped, the update is (no optimizer step; the data and schedule advance).
    fn on_skip(&mut self, _step: u64, _micro: usize, _why: &str) {}
}

/// `()` observes nothing (a quiet run).
impl TrainObserver for () {}

/// How a run is spread over ranks ([`crate::dist`]): each rank of `comm` trains `accum`
/// micro-batches of every update (micro-batches `rank·accum ..` of the `size·accum` of the update),
/// gradients are summed over ranks, and with `zero` each rank keeps and updates the AdamW state
/// of only its share of the parameters (ZeRO-1). Rank 0 alone evaluates, reports and writes.
#[derive(Clone, Copy)]
pub struct Dist<'c> {
    pub comm: &'c dyn Comm,
    pub zero: bool,
}

impl Dist<'static> {
    /// One process alone.
    pub fn local() -> Self {
        Dist { comm: &Local, zero: false }
    }
}

/// Everything a run needs besides its options.
pub struct Trainer<'a> {
    pub cfg: ModelConfig,
    pub store: ParamStore,
    pub model: Model,
    pub tokenizer: Option<&'a tokenizers::Tokenizer>,
    pub optimizer: AdamW,
    pub step: u64,
    pub losses: Vec<(u64, f64)>,
    pub evals: Vec<EvalLog>,
    /// Used when `compute_dtype` is f16; saved in and restored from the training state.
    pub scaler: LossScaler,
    /// Names this run in its checkpoints (drawn by [`Trainer::new`], restored by [`Trainer::restore`]).
    pub run_id: String,
    /// A caller's values, saved with each checkpoint's training state and restored with it
    /// (e.g. `kiln finetune`'s best metric so far).
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// What is minimised ([`crate::objective`]; default: the model's own loss).
    pub objective: Box<dyn Objective>,
}

/// The dropout seed of micro-batch `micro` of update `step`: a pure function, so resumed runs replay it.
pub fn dropout_seed(seed: u64, step: u64, micro: usize) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (micro as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

impl<'a> Trainer<'a> {
    pub fn new(cfg: ModelConfig, store: ParamStore, tokenizer: Option<&'a tokenizers::Tokenizer>, adamw: AdamWConfig) -> Result<Self> {
        let model = Model::build(&cfg, &store)?;
        Ok(Trainer { cfg, store, model, tokenizer, optimizer: AdamW::new(adamw), step: 0, losses: Vec::new(), evals: Vec::new(), scaler: LossScaler::default(), run_id: crate::run_dir::new_run_id(), extra: Default::default(), objective: Box::new(ModelLoss) })
    }

    /// Trains `objective` instead of the model's own loss.
    pub fn with_objective(mut self, objective: Box<dyn Objective>) -> Self {
        self.objective = objective;
        self
    }

    /// Every trained parameter: the model's and the objective's.
    pub fn trainable(&self) -> Vec<crate::params::Param> {
        let mut p = self.store.trainable();
        p.extend(self.objective.params());
        p
    }

    /// [`Trainer::restore`] from the checkpoint directory `dir` (its training state), and what
    /// the objective keeps there. Returns the training state read (for the caller's own checks,
    /// e.g. the world size a distributed run was split over).
    pub fn restore_dir(&mut self, dir: &std::path::Path, data: &mut dyn BatchSource) -> Result<TrainState> {
        let st = crate::train_state::load_train_state(dir.join(crate::train_state::TRAIN_STATE_FILE))?;
        self.restore(&st, data)?;
        self.objective.restore(dir)?;
        Ok(st)
    }

    /// Restores optimizer moments, the step and the data position from a training-state file.
    pub fn restore(&mut self, st: &TrainState, data: &mut dyn BatchSource) -> Result<()> {
        st.check_config(&self.cfg)?;
        self.optimizer.load_state(&st.optimizer)?;
        data.set_position(&st.data)?;
        self.step = st.step;
        if !st.run_id.is_empty() {
            self.run_id = st.run_id.clone();
        }
        if let Some(l) = st.extra.get("losses").and_then(|v| serde_json::from_value::<Vec<(u64, f64)>>(v.clone()).ok()) {
            self.losses = l;
        }
        if let Some(v) = st.extra.get("loss_scale") {
            let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
            if let (Some(scale), Some(good), Some(skipped)) = (f("scale"), f("good"), f("skipped")) {
                self.scaler = LossScaler { scale, good: good as u64, skipped: skipped as u64, ..self.scaler };
            }
        }
        if let Some(serde_json::Value::Object(m)) = st.extra.get("caller") {
            self.extra = m.clone();
        }
        Ok(())
    }

    /// Mean loss over `n` batches from `eval`, without gradients.
    pub fn evaluate(&self, eval: &mut dyn BatchSource, n: usize) -> Result<f64> {
        if n == 0 {
            return Err(Error::msg("eval: --batches must be at least 1"));
        }
        let ctx = ForwardCtx::eval();
        let mut total = 0.0;
        for _ in 0..n {
            let b = eval.next_batch()?.to_device(self.store.device())?;
            total += no_grad(|| self.objective.loss(&self.model, &b, &ctx))?.to_scalar()?;
        }
        Ok(total / n as f64)
    }

    /// Commits a checkpoint (weights, config, tokenizer, training state) to the run directory
    /// `dir` as one unit and makes it current, keeping this run's newest `keep` (0 = all); see
    /// [`crate::run_dir`]. Returns the checkpoint's directory.
    pub fn save(&self, dir: &std::path::Path, data: &dyn BatchSource, keep: usize) -> Result<PathBuf> {
        self.save_with(dir, data, keep, false)
    }

    /// [`Trainer::save`]; with `overwrite`, other runs' checkpoints in `dir` go too (see
    /// [`crate::run_dir::commit`]).
    pub fn save_with(&self, dir: &std::path::Path, data: &dyn BatchSource, keep: usize, overwrite: bool) -> Result<PathBuf> {
        let ck = self.save_dist(dir, data, keep, overwrite, None)?;
        ck.ok_or_else(|| Error::msg("train: no checkpoint was written"))
    }

    /// [`Trainer::save_with`] from every rank of a distributed run (`dist`, with the per-rank
    /// accumulation, recorded in the training state): gathers a sharded optimizer state on rank
    /// 0, which alone writes; other ranks return `None`.
    fn save_dist(&self, dir: &std::path::Path, data: &dyn BatchSource, keep: usize, overwrite: bool, dist: Option<(Dist, usize)>) -> Result<Option<PathBuf>> {
        let optimizer = match dist {
            Some((d, _)) if d.zero && d.comm.size() > 1 => crate::dist::gather_optimizer(d.comm, &self.optimizer, &self.trainable())?,
            _ => self.optimizer.state()?,
        };
        if dist.is_some_and(|(d, _)| d.comm.rank() != 0) {
            return Ok(None);
        }
        let dist_json = dist.map(|(d, accum)| serde_json::json!({"world_size": d.comm.size(), "accum": accum, "zero": d.zero}));
        let config_hash = self.cfg.hash_hex()?;
        let st = TrainState {
            step: self.step,
            run_id: self.run_id.clone(),
            config_hash: config_hash.clone(),
            data: data.position(),
            extra: serde_json::json!({ "losses": self.losses,
                "loss_scale": { "scale": self.scaler.scale, "good": self.scaler.good, "skipped": self.scaler.skipped },
                "caller": self.extra, "dist": dist_json }),
            optimizer,
            ..Default::default()
        };
        let mut files = checkpoint_files(&self.cfg, &self.store, self.tokenizer, Some(&st));
        files.extend(self.objective.checkpoint_files());
        commit(dir, Commit { files, run_id: &self.run_id, step: self.step, config_hash, keep, overwrite }).map(Some)
    }

    /// Runs updates `self.step .. opts.steps`. A non-finite loss or gradient norm, or weights
    /// that became non-finite before a checkpoint, stop the run with an error naming the step
    /// (1-based, as in [`StepLog::step`]) and the checkpoints `opts.out` holds; nothing is
    /// written then, so the current checkpoint stays as it was.
    pub fn run(&mut self, opts: &TrainOptions, data: &mut dyn BatchSource, eval: Option<&mut dyn BatchSource>, obs: &mut dyn TrainObserver) -> Result<()> {
        self.run_dist(opts, Dist::local(), data, eval, obs)
    }

    /// [`Trainer::run`] as one rank of `dist`; every rank calls it with the same options and the
    /// same data (each draws every micro-batch of an update and trains its own). With one rank and
    /// `accum` = N·A, the same losses and weights as N ranks with `accum` A (bit for bit when A = 1,
    /// see docs/DISTRIBUTED.md).
    pub fn run_dist(&mut self, opts: &TrainOptions, dist: Dist, data: &mut dyn BatchSource, mut eval: Option<&mut dyn BatchSource>, obs: &mut dyn TrainObserver) -> Result<()> {
        opts.check()?;
        let scaling = opts.compute_dtype == DType::F16;
        let params = self.trainable();
        let (comm, rank) = (dist.comm, dist.comm.rank());
        let global_accum = opts.accum * comm.size();
        let mut quiet = ();
        let obs: &mut dyn TrainObserver = if rank == 0 { obs } else { &mut quiet };
        // every rank starts from rank 0's weights; ZeRO-1: each keeps the moments of its share
        crate::dist::broadcast_params(comm, &params, 0)?;
        let owners = (dist.zero && comm.size() > 1).then(|| crate::dist::zero_owners(&params, comm.size()));
        if let Some(o) = &owners {
            let mine: std::collections::HashSet<&str> = params.iter().zip(o).filter(|(_, &r)| r == rank).map(|(p, _)| p.name()).collect();
            self.optimizer.retain(|n| mine.contains(n));
        }
        // Every evaluation reads the same held-out batches.
        let eval_start = eval.as_deref().map(|e| e.position());
        while self.step < opts.steps {
            let _step_range = kiln_tensor::nvtx::range_with(|| format!("train_step {}", self.step + 1));
            crate::dist::test_fault(comm, self.step + 1)?;
            let t0 = Instant::now();
            let lr = opts.schedule.lr_at(self.step);
            self.optimizer.set_lr(lr);
            let mut loss_sum = 0.0;
            let mut tokens = 0usize;
            let mut used = 0usize;
            // micro-batch `micro` of the update is rank micro / accum's (every rank draws them all)
            for micro in 0..global_accum {
                let b = data.next_batch()?;
                if micro / opts.accum != rank {
                    continue;
                }
                if b.labels.to_vec::<i64>()?.iter().all(|&l| l == crate::data::IGNORE_INDEX) {
                    // its loss is the mean of nothing, NaN (as in PyTorch): nothing to learn from
                    obs.on_skip(self.step + 1, micro, "every label is ignored (-100), so its loss is NaN");
                    continue;
                }
                let b = b.to_device(self.store.device())?;
                used += 1;
                tokens += b.input_ids.elem_count();
                let ctx = ForwardCtx::train(dropout_seed(opts.seed, self.step, micro)).with_compute_dtype(opts.compute_dtype);
                let loss = {
                    let _r = kiln_tensor::nvtx::range("forward");
                    self.objective.loss(&self.model, &b, &ctx)?
                };
                let l = loss.to_scalar()?;
                if !l.is_finite() {
                    return Err(stop(&params, format!("the loss became {l}"), self.step + 1, opts));
                }
                loss_sum += l;
                let factor = if scaling { self.scaler.scale } else { 1.0 } / global_accum as f64;
                let scaled = if factor != 1.0 { loss.mul_scalar(factor)? } else { loss };
                scaled.backward()?;
            }
            // the sums over ranks (in rank order: the order one process accumulates in)
            let mut stats = [loss_sum, used as f64, tokens as f64];
            crate::dist::all_reduce_grads(comm, &params, &mut stats)?;
            let (loss_sum, used, tokens) = (stats[0], stats[1] as usize, stats[2] as usize);
            if used > 0 {
                // the gradient is the mean over the micro-batches that had labels
                let unscale = if scaling { 1.0 / self.scaler.scale } else { 1.0 } * global_accum as f64 / used as f64;
                if unscale != 1.0 {
                    crate::optim::scale_grads(&params, unscale)?;
                }
                let grad_norm = crate::optim::grad_norm(&params)?;
                // f16: an overflow skips this update and lowers the scale; otherwise it stops the run
                let step_ok = if scaling { self.scaler.update(grad_norm.is_finite()) } else { true };
                if !grad_norm.is_finite() && !scaling {
                    return Err(stop(&params, format!("the gradient norm became {grad_norm}"), self.step + 1, opts));
                }
                if !step_ok && self.scaler.scale < 1.0 {
                    // overflow is what a scale below 1 cannot cause: the gradients are NaN for good
                    return Err(stop(&params, format!("the f16 gradients stayed non-finite down to loss scale {}", self.scaler.scale), self.step + 1, opts));
                }
                if step_ok {
                    if opts.clip > 0.0 {
                        clip_grads_to(&params, grad_norm, opts.clip)?;
                    }
                    let _r = kiln_tensor::nvtx::range("optimizer");
                    match &owners {
                        None => no_grad(|| self.optimizer.step(&params))?,
                        Some(o) => {
                            let mine: Vec<_> = params.iter().zip(o).filter(|(_, &r)| r == rank).map(|(p, _)| p.clone()).collect();
                            no_grad(|| self.optimizer.step(&mine))?;
                            crate::dist::gather_params(comm, &params, o)?;
                        }
                    }
                }
                for p in &params {
                    p.zero_grad();
                }
                self.step += 1;
                let loss = loss_sum / used as f64;
                self.losses.push((self.step, loss));
                let secs = t0.elapsed().as_secs_f64();
                obs.on_step(&StepLog { step: self.step, loss, lr, grad_norm, step_ms: secs * 1e3, tokens_per_s: tokens as f64 / secs });
            } else {
                // every micro-batch was skipped, so is the update; the data and the schedule
                // advance (a resume replays the same skip)
                self.step += 1;
            }
            let last = self.step == opts.steps;
            if let Some(ev) = eval.as_deref_mut().filter(|_| rank == 0) {
                if last || (opts.eval_every > 0 && self.step.is_multiple_of(opts.eval_every)) {
                    if let Some(p) = &eval_start {
                        ev.set_position(p)?;
                    }
                    let l = self.evaluate(ev, opts.eval_batches)?;
                    let e = EvalLog { step: self.step, loss: l, perplexity: self.objective.loss_is_perplexity().then(|| l.exp()) };
                    self.evals.push(e);
                    obs.on_eval(&e);
                }
            }
            if let Some(dir) = &opts.out {
                if last || (opts.ckpt_every > 0 && self.step.is_multiple_of(opts.ckpt_every)) {
                    // A finite loss and gradient can still give non-finite weights (an absurd
                    // learning rate): never overwrite a good checkpoint with them.
                    if let Some(name) = first_non_finite(&params)? {
                        return Err(stop(&params, format!("parameter '{name}' became non-finite in the update (lr {lr:.3e})"), self.step, opts));
                    }
                    if let Some(ck) = self.save_dist(dir, data, opts.keep, opts.overwrite, Some((dist, opts.accum)))? {
                        obs.on_checkpoint(&ck, self.step);
                    }
                    // no rank goes on (and may fail) before the checkpoint is committed
                    comm.barrier()?;
                }
            }
        }
        Ok(())
    }
}

/// The error that stops a run at `step` (1-based) after `what` went wrong; drops the gradients.
fn stop(params: &[crate::params::Param], what: String, step: u64, opts: &TrainOptions) -> Error {
    for p in params {
        p.zero_grad();
    }
    let ckpt = match &opts.out {
        Some(d) => crate::run_dir::describe(d),
        None => "no checkpoint was being written".to_string(),
    };
    Error::msg(format!("train: {what} at step {step}; stopping ({ckpt}). Try a lower learning rate (--lr)."))
}
