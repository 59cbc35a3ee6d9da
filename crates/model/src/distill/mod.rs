//! DistilBERT's knowledge distillation as an [`Objective`]: a frozen teacher (any BERT, RoBERTa or
//! DistilBERT masked LM, `BertForPreTraining` included) run in eval mode without a graph, and a
//! student masked LM trained on the MLM batches `kiln train --objective mlm` reads, with the
//! triple loss of DistilBERT's research code (`examples/research_projects/distillation`):
//!
//! `L = α_ce · T² · KL(softmax(t/T) ‖ softmax(s/T)) + α_mlm · CE(s, labels) + α_cos · (1 − cos(h_s, h_t))`
//!
//! - the soft-target term is `KLDivLoss(reduction="batchmean")` of the student's `log_softmax(s/T)`
//!   against the teacher's `softmax(t/T)`, over every position whose attention mask is 1 (the
//!   research code's default, `restrict_ce_to_mask` off), scaled by `T²`;
//! - the MLM term is the student's cross-entropy on the masked positions' hard labels;
//! - the cosine term is `CosineEmbeddingLoss` (target 1, mean) between the student's and the
//!   teacher's last hidden states at the same positions (it needs the same hidden size).
//!
//! Defaults are the weights of DistilBERT's training command (α_ce 5, α_mlm 2, α_cos 1, T = 2).
//! Optionally (`alpha_hidden` > 0) TinyBERT's hidden-state loss is added: `α_hidden · Σ_m
//! MSE(h_s^m W + b, h_t^{g(m)})` over the embeddings' output (m = 0) and each student layer's output
//! m = 1..N, teacher layer `g(m) = ⌊m·L/N⌋`, through one learned projection `fit_dense` (student
//! width → teacher width, TinyBERT's name) trained beside the student and checkpointed in
//! [`PROJECTION_FILE`]. TinyBERT's attention-score loss is not implemented (kiln's fused attention
//! never materialises the scores).
//! [`student_config`] and [`init_from_teacher`] make a student from the teacher as DistilBERT did:
//! the teacher's embeddings and MLM head, and layer `i` from teacher layer `⌊i·L/N⌋` (every other
//! layer when N = L/2; DistilBERT's own script took teacher layers 0, 2, 4, 7, 9, 11).
mod student;
pub use student::{init_from_teacher, student_config, teacher_layer};

use crate::data::{Batch, IGNORE_INDEX};
use crate::encoder::Encoder;
use crate::family::Family;
use crate::heads::{flat_ce, gather_rows, MlmHead};
use crate::model::{Head, Model, Stack};
use crate::nn::{ForwardCtx, Linear};
use crate::objective::Objective;
use crate::params::{Param, ParamStore};
use crate::train_state::CheckpointFile;
use crate::trainer::BatchSource;
use kiln_tensor::{no_grad, DType, Error, Result, Tensor};

/// The weights and temperature of the triple loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillOptions {
    /// Softmax temperature T of the soft targets (the term is scaled by T²).
    pub temperature: f64,
    /// Weight of the soft-target (KL) term.
    pub alpha_ce: f64,
    /// Weight of the student's own MLM loss on the hard labels.
    pub alpha_mlm: f64,
    /// Weight of the cosine loss between the last hidden states.
    pub alpha_cos: f64,
    /// Weight of TinyBERT's hidden-state MSE through a learned projection (0 = off).
    pub alpha_hidden: f64,
}

impl Default for DistillOptions {
    /// DistilBERT's training command: `--temperature 2.0 --alpha_ce 5.0 --alpha_mlm 2.0 --alpha_cos 1.0`.
    fn default() -> Self {
        DistillOptions { temperature: 2.0, alpha_ce: 5.0, alpha_mlm: 2.0, alpha_cos: 1.0, alpha_hidden: 0.0 }
    }
}

impl DistillOptions {
    /// A positive finite temperature; finite, non-negative weights, not all zero.
    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::msg(format!("distill: the temperature must be finite and > 0, got {}", self.temperature)));
        }
        for (name, a) in [("--alpha-ce", self.alpha_ce), ("--alpha-mlm", self.alpha_mlm), ("--alpha-cos", self.alpha_cos), ("--alpha-hidden", self.alpha_hidden)] {
            if !(a.is_finite() && a >= 0.0) {
                return Err(Error::msg(format!("distill: {name} must be finite and >= 0, got {a}")));
            }
        }
        if self.alpha_ce + self.alpha_mlm + self.alpha_cos + self.alpha_hidden == 0.0 {
            return Err(Error::msg("distill: every loss weight is 0 (--alpha-ce, --alpha-mlm, --alpha-cos, --alpha-hidden)"));
        }
        Ok(())
    }
}

/// The three terms of one batch (scalars; a term whose weight is 0 is not computed).
pub struct DistillLosses {
    pub ce: Option<Tensor>,
    pub mlm: Option<Tensor>,
    pub cos: Option<Tensor>,
    /// TinyBERT's hidden-state MSE, summed over the layer pairs.
    pub hidden: Option<Tensor>,
}

/// The families distillation supports, teacher and student alike.
const SUPPORTED: [Family; 3] = [Family::Bert, Family::Roberta, Family::DistilBert];

fn supported(f: Family, role: &str) -> Result<()> {
    if SUPPORTED.contains(&f) {
        Ok(())
    } else {
        Err(Error::msg(format!("distill: a {} {role} is not supported (BERT, RoBERTa and DistilBERT masked LMs are)", f.model_type())))
    }
}

/// The encoder and the MLM head of a masked LM (`…ForMaskedLM`, or the MLM half of
/// `BertForPreTraining` when `pretraining` is allowed); an error naming the architecture otherwise.
pub fn mlm_parts<'m>(model: &'m Model, role: &str, pretraining: bool) -> Result<(&'m Encoder, &'m MlmHead)> {
    supported(model.arch.family, role)?;
    match (&model.stack, &model.head) {
        (Stack::Encoder(e), Head::MaskedLm(h)) => Ok((e, h)),
        (Stack::Encoder(e), Head::BertPreTraining(h, _)) if pretraining => Ok((e, h)),
        _ => {
            let needs = if pretraining { "a …ForMaskedLM or BertForPreTraining" } else { "a …ForMaskedLM" };
            Err(Error::msg(format!("distill: the {role} must be {needs} model (one with an MLM head), got {}", model.arch.name)))
        }
    }
}

/// The last hidden states `[B, T, H]` and the MLM logits `[B, T, V]` of a batch.
pub fn mlm_forward(enc: &Encoder, head: &MlmHead, b: &Batch, ctx: &ForwardCtx) -> Result<(Tensor, Tensor)> {
    let (_, h, logits) = mlm_forward_all(enc, head, b, ctx, false)?;
    Ok((h, logits))
}

/// [`mlm_forward`], with every hidden state (the embeddings' output and each layer's) when `all`.
fn mlm_forward_all(enc: &Encoder, head: &MlmHead, b: &Batch, ctx: &ForwardCtx, all: bool) -> Result<(Vec<Tensor>, Tensor, Tensor)> {
    let tt = enc.token_type.as_ref().map(|_| &b.token_type_ids);
    let (out, hs) = match all {
        true => enc.forward_hidden_states(&b.input_ids, Some(&b.attention_mask), tt, ctx)?,
        false => (enc.forward(&b.input_ids, Some(&b.attention_mask), tt, ctx)?, Vec::new()),
    };
    let logits = head.forward(&out.last_hidden_state)?;
    Ok((hs, out.last_hidden_state, logits))
}

/// f64 stays f64 (the gradchecks); everything else computes the losses in f32.
fn loss_dtype(x: &Tensor) -> DType {
    if x.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// `T² · KL(softmax(t/T) ‖ softmax(s/T))` summed over the classes and averaged over the rows
/// (PyTorch's `KLDivLoss(reduction="batchmean")` times T²) for logits `[N, V]`. No gradient
/// reaches the teacher's logits.
pub fn soft_target_loss(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    if student.shape() != teacher.shape() || student.rank() != 2 {
        return Err(Error::ShapeMismatch { op: "soft_target_loss (student and teacher logits, [N, V])", lhs: student.shape().to_vec(), rhs: teacher.shape().to_vec() });
    }
    let n = student.shape()[0];
    let dt = loss_dtype(student);
    let log_s = student.to_dtype(dt)?.mul_scalar(1.0 / temperature)?.log_softmax_last_dim()?;
    let log_t = teacher.detach().to_dtype(dt)?.mul_scalar(1.0 / temperature)?.log_softmax_last_dim()?;
    log_t.exp()?.mul(&log_t.sub(&log_s)?)?.sum_all()?.mul_scalar(temperature * temperature / n.max(1) as f64)
}

/// PyTorch's `CosineEmbeddingLoss` with target 1 and mean reduction: the mean over rows of
/// `1 − x·y / √((‖x‖² + ε)(‖y‖² + ε))`, ε = 1e-12, for `[N, H]` rows. No gradient reaches `y`.
pub fn cosine_loss(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if x.shape() != y.shape() || x.rank() != 2 {
        return Err(Error::ShapeMismatch { op: "cosine_loss (student and teacher hidden states, [N, H])", lhs: x.shape().to_vec(), rhs: y.shape().to_vec() });
    }
    let dt = loss_dtype(x);
    let (x, y) = (x.to_dtype(dt)?, y.detach().to_dtype(dt)?);
    let dot = x.mul(&y)?.sum(1, false)?;
    let nx = x.sqr()?.sum(1, false)?.add_scalar(1e-12)?;
    let ny = y.sqr()?.sum(1, false)?.add_scalar(1e-12)?;
    dot.div(&nx.mul(&ny)?.sqrt()?)?.neg()?.add_scalar(1.0)?.mean_all()
}

/// The flat indices of the positions whose attention mask is 1.
fn real_positions(mask: &Tensor) -> Result<Vec<i64>> {
    Ok(mask.to_vec::<i64>()?.iter().enumerate().filter(|(_, &m)| m != 0).map(|(i, _)| i as i64).collect())
}

/// The checkpoint file holding TinyBERT's projection `fit_dense` (when `alpha_hidden` > 0).
pub const PROJECTION_FILE: &str = "distill_projection.safetensors";

/// TinyBERT's learned projection of the student's hidden states onto the teacher's width.
pub struct Projection {
    pub store: ParamStore,
    pub fit_dense: Linear,
}

/// DistilBERT's objective: the frozen teacher beside the trained student (the trainer's model).
pub struct Distill {
    pub teacher: Model,
    /// The teacher's parameters (frozen: they require no gradient and are never updated).
    pub teacher_store: ParamStore,
    pub opts: DistillOptions,
    /// TinyBERT's projection, trained beside the student (only when `alpha_hidden` > 0).
    pub projection: Option<Projection>,
}

/// `Σ_m MSE(proj(s[m]), t[⌊m·L/N⌋])` over the `N + 1` student hidden states `s` and the `L + 1`
/// teacher ones `t`, at the flat positions `rows` (the MSE is the mean over those rows' elements).
pub fn hidden_mse(student: &[Tensor], teacher: &[Tensor], rows: &[i64], proj: &Linear) -> Result<Tensor> {
    let (n, l) = (student.len().saturating_sub(1), teacher.len().saturating_sub(1));
    if student.is_empty() || teacher.is_empty() {
        return Err(Error::msg("distill: the hidden-state loss needs the hidden states of both models"));
    }
    let mut total: Option<Tensor> = None;
    for (m, s) in student.iter().enumerate() {
        let t = &teacher[if n == 0 { 0 } else { m * l / n }];
        let (bs, tt, hs) = crate::nn::dims3(s)?;
        let ht = *t.shape().last().unwrap_or(&0);
        let x = proj.forward(&gather_rows(s, rows, bs * tt, hs)?)?;
        let term = crate::heads::mse(&x, &gather_rows(&t.detach(), rows, bs * tt, ht)?)?;
        total = Some(match total {
            Some(a) => a.add(&term)?,
            None => term,
        });
    }
    total.ok_or_else(|| Error::msg("distill: no hidden states"))
}

impl Distill {
    /// The objective distilling `teacher` (its parameters in `teacher_store`, which are frozen
    /// here) into `student`: both masked LMs of the supported families over the same vocabulary,
    /// and of the same hidden size when the cosine term is on.
    pub fn new(teacher: Model, teacher_store: ParamStore, student: &Model, opts: DistillOptions) -> Result<Distill> {
        opts.check()?;
        let (te, _) = mlm_parts(&teacher, "teacher", true)?;
        let (se, _) = mlm_parts(student, "student", false)?;
        if te.cfg.vocab_size != se.cfg.vocab_size {
            return Err(Error::msg(format!(
                "distill: the teacher's vocabulary has {} tokens, the student's {}: the soft targets need the same vocabulary (the teacher's tokenizer)",
                te.cfg.vocab_size, se.cfg.vocab_size
            )));
        }
        if opts.alpha_cos > 0.0 && te.cfg.hidden_size != se.cfg.hidden_size {
            return Err(Error::msg(format!(
                "distill: the cosine loss compares hidden states, but the teacher's are {} wide and the student's {}: pass --alpha-cos 0 or a student of the teacher's width",
                te.cfg.hidden_size, se.cfg.hidden_size
            )));
        }
        let projection = match opts.alpha_hidden > 0.0 {
            true => {
                let store = ParamStore::new(PROJECTION_SEED, DType::F32, se.word.weight.device());
                let fit_dense = Linear::new(&store, "fit_dense", se.cfg.hidden_size, te.cfg.hidden_size, true, se.cfg.initializer_range)?;
                Some(Projection { store, fit_dense })
            }
            false => None,
        };
        for p in teacher_store.params() {
            p.set_frozen(true);
        }
        Ok(Distill { teacher, teacher_store, opts, projection })
    }

    /// The teacher's last hidden states and logits of `b`: eval mode (no dropout), no graph.
    pub fn teacher_outputs(&self, b: &Batch, ctx: &ForwardCtx) -> Result<(Tensor, Tensor)> {
        let (_, h, logits) = self.teacher_outputs_all(b, ctx, false)?;
        Ok((h, logits))
    }

    fn teacher_outputs_all(&self, b: &Batch, ctx: &ForwardCtx, all: bool) -> Result<(Vec<Tensor>, Tensor, Tensor)> {
        let (enc, head) = mlm_parts(&self.teacher, "teacher", true)?;
        let tctx = ForwardCtx::eval().with_compute_dtype(ctx.compute_dtype());
        no_grad(|| mlm_forward_all(enc, head, b, &tctx, all))
    }

    /// The three terms on one batch (`student` is the trained model).
    pub fn losses(&self, student: &Model, b: &Batch, ctx: &ForwardCtx) -> Result<DistillLosses> {
        let (enc, head) = mlm_parts(student, "student", false)?;
        let all = self.projection.is_some();
        let (s_all, s_h, s_logits) = mlm_forward_all(enc, head, b, ctx, all)?;
        let (t_all, t_h, t_logits) = self.teacher_outputs_all(b, ctx, all)?;
        let (bs, t, v) = crate::nn::dims3(&s_logits)?;
        if t_logits.shape() != s_logits.shape() {
            return Err(Error::ShapeMismatch { op: "distill (teacher and student logits)", lhs: t_logits.shape().to_vec(), rhs: s_logits.shape().to_vec() });
        }
        let rows = real_positions(&b.attention_mask)?;
        let o = &self.opts;
        let ce = match o.alpha_ce > 0.0 && !rows.is_empty() {
            true => Some(soft_target_loss(&gather_rows(&s_logits, &rows, bs * t, v)?, &gather_rows(&t_logits, &rows, bs * t, v)?, o.temperature)?),
            false => None,
        };
        let mlm = (o.alpha_mlm > 0.0).then(|| flat_ce(&s_logits, &b.labels, IGNORE_INDEX)).transpose()?;
        let cos = match o.alpha_cos > 0.0 && !rows.is_empty() {
            true => {
                let hd = *s_h.shape().last().unwrap_or(&0);
                Some(cosine_loss(&gather_rows(&s_h, &rows, bs * t, hd)?, &gather_rows(&t_h, &rows, bs * t, hd)?)?)
            }
            false => None,
        };
        let hidden = match (&self.projection, rows.is_empty()) {
            (Some(p), false) => Some(hidden_mse(&s_all, &t_all, &rows, &p.fit_dense)?),
            _ => None,
        };
        Ok(DistillLosses { ce, mlm, cos, hidden })
    }
}

impl Objective for Distill {
    fn name(&self) -> &'static str {
        "distill"
    }
    fn loss(&self, model: &Model, b: &Batch, ctx: &ForwardCtx) -> Result<Tensor> {
        let l = self.losses(model, b, ctx)?;
        let o = &self.opts;
        let mut total: Option<Tensor> = None;
        for (term, a) in [(l.ce, o.alpha_ce), (l.mlm, o.alpha_mlm), (l.cos, o.alpha_cos), (l.hidden, o.alpha_hidden)] {
            if let Some(x) = term {
                let x = x.mul_scalar(a)?;
                total = Some(match total {
                    Some(t) => t.add(&x)?,
                    None => x,
                });
            }
        }
        total.ok_or_else(|| Error::msg("distill: the batch has no real tokens"))
    }
    fn loss_is_perplexity(&self) -> bool {
        false
    }
    fn params(&self) -> Vec<Param> {
        self.projection.as_ref().map(|p| p.store.trainable()).unwrap_or_default()
    }
    fn checkpoint_files(&self) -> Vec<CheckpointFile<'_>> {
        match &self.projection {
            Some(p) => vec![(PROJECTION_FILE, Box::new(move || crate::st_io::to_safetensors_bytes(&p.store.named_tensors(), Some(DType::F32), None)))],
            None => Vec::new(),
        }
    }
    fn restore(&self, dir: &std::path::Path) -> Result<()> {
        let Some(proj) = &self.projection else { return Ok(()) };
        let path = dir.join(PROJECTION_FILE);
        let f = crate::st_io::StFile::open(&path)?;
        for p in proj.store.params() {
            let t = f.tensor(p.name()).map_err(|e| Error::msg(format!("{}: the projection's '{}': {e}", path.display(), p.name())))?;
            if t.shape() != p.shape().as_slice() {
                return Err(Error::msg(format!("{}: '{}' has shape {:?}, the projection's is {:?}", path.display(), p.name(), t.shape(), p.shape())));
            }
            p.assign(&t)?;
        }
        Ok(())
    }
}

/// The seed of TinyBERT's projection (fixed: a resumed run reads it from the checkpoint).
const PROJECTION_SEED: u64 = 0x5469_6e79;

/// The mean MLM loss of `model` (the student's own, on the hard labels) over `n` batches of
/// `data`, in eval mode without gradients: the number distillation is judged by.
pub fn mlm_loss(model: &Model, data: &mut dyn BatchSource, n: usize) -> Result<f64> {
    let (enc, head) = mlm_parts(model, "model", true)?;
    let dev = enc.word.weight.device();
    let ctx = ForwardCtx::eval();
    let mut total = 0.0;
    for _ in 0..n.max(1) {
        let b = data.next_batch()?.to_device(dev)?;
        total += no_grad(|| flat_ce(&mlm_forward(enc, head, &b, &ctx)?.1, &b.labels, IGNORE_INDEX))?.to_scalar()?;
    }
    Ok(total / n.max(1) as f64)
}
