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
//! [`student_config`] and [`init_from_teacher`] make a student from the teacher as DistilBERT did:
//! the teacher's embeddings and MLM head, and layer `i` from teacher layer `⌊i·L/N⌋` (every other
//! layer when N = L/2; DistilBERT's own script took teacher layers 0, 2, 4, 7, 9, 11).
use crate::config::{EncoderConfig, ModelConfig};
use crate::data::{Batch, IGNORE_INDEX};
use crate::encoder::{Encoder, EncoderLayer};
use crate::family::{Family, Task};
use crate::heads::{flat_ce, gather_rows, MlmHead};
use crate::model::{Head, Model, Stack};
use crate::nn::{ForwardCtx, LayerNorm, Linear, QkvProj};
use crate::objective::Objective;
use crate::params::{Param, ParamStore};
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
}

impl Default for DistillOptions {
    /// DistilBERT's training command: `--temperature 2.0 --alpha_ce 5.0 --alpha_mlm 2.0 --alpha_cos 1.0`.
    fn default() -> Self {
        DistillOptions { temperature: 2.0, alpha_ce: 5.0, alpha_mlm: 2.0, alpha_cos: 1.0 }
    }
}

impl DistillOptions {
    /// A positive finite temperature; finite, non-negative weights, not all zero.
    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::msg(format!("distill: the temperature must be finite and > 0, got {}", self.temperature)));
        }
        for (name, a) in [("--alpha-ce", self.alpha_ce), ("--alpha-mlm", self.alpha_mlm), ("--alpha-cos", self.alpha_cos)] {
            if !(a.is_finite() && a >= 0.0) {
                return Err(Error::msg(format!("distill: {name} must be finite and >= 0, got {a}")));
            }
        }
        if self.alpha_ce + self.alpha_mlm + self.alpha_cos == 0.0 {
            return Err(Error::msg("distill: every loss weight is 0 (--alpha-ce, --alpha-mlm, --alpha-cos)"));
        }
        Ok(())
    }
}

/// The three terms of one batch (scalars; a term whose weight is 0 is not computed).
pub struct DistillLosses {
    pub ce: Option<Tensor>,
    pub mlm: Option<Tensor>,
    pub cos: Option<Tensor>,
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
    let tt = enc.token_type.as_ref().map(|_| &b.token_type_ids);
    let h = enc.forward(&b.input_ids, Some(&b.attention_mask), tt, ctx)?.last_hidden_state;
    let logits = head.forward(&h)?;
    Ok((h, logits))
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

/// DistilBERT's objective: the frozen teacher beside the trained student (the trainer's model).
pub struct Distill {
    pub teacher: Model,
    /// The teacher's parameters (frozen: they require no gradient and are never updated).
    pub teacher_store: ParamStore,
    pub opts: DistillOptions,
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
        for p in teacher_store.params() {
            p.set_frozen(true);
        }
        Ok(Distill { teacher, teacher_store, opts })
    }

    /// The teacher's last hidden states and logits of `b`: eval mode (no dropout), no graph.
    pub fn teacher_outputs(&self, b: &Batch, ctx: &ForwardCtx) -> Result<(Tensor, Tensor)> {
        let (enc, head) = mlm_parts(&self.teacher, "teacher", true)?;
        let tctx = ForwardCtx::eval().with_compute_dtype(ctx.compute_dtype());
        no_grad(|| mlm_forward(enc, head, b, &tctx))
    }

    /// The three terms on one batch (`student` is the trained model).
    pub fn losses(&self, student: &Model, b: &Batch, ctx: &ForwardCtx) -> Result<DistillLosses> {
        let (enc, head) = mlm_parts(student, "student", false)?;
        let (s_h, s_logits) = mlm_forward(enc, head, b, ctx)?;
        let (t_h, t_logits) = self.teacher_outputs(b, ctx)?;
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
        Ok(DistillLosses { ce, mlm, cos })
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
        for (term, a) in [(l.ce, o.alpha_ce), (l.mlm, o.alpha_mlm), (l.cos, o.alpha_cos)] {
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
}

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

/// A student config made from the teacher's: the `family` masked LM (the teacher's family, or
/// DistilBERT from a BERT teacher) with `layers` layers and everything else the teacher's (width,
/// heads, feed-forward, activation, vocabulary, positions, dropouts, initializer).
pub fn student_config(teacher: &ModelConfig, family: Family, layers: usize) -> Result<ModelConfig> {
    let ModelConfig::Encoder(t) = teacher else {
        return Err(Error::msg(format!("distill: the teacher must be an encoder (BERT, RoBERTa, DistilBERT), got {}", teacher.model_type())));
    };
    supported(t.family, "teacher")?;
    supported(family, "student")?;
    pairing(t.family, family)?;
    if layers == 0 {
        return Err(Error::msg("distill: the student needs at least 1 layer (--student-layers)"));
    }
    let mut s = if family == t.family { t.clone() } else { EncoderConfig::defaults(family) };
    if family != t.family {
        // DistilBERT from BERT: the sizes carried over; DistilBERT has no token types and a fixed eps
        if t.layer_norm_eps != s.layer_norm_eps {
            return Err(Error::msg(format!("distill: DistilBERT's LayerNorm eps is fixed at {}, the teacher's is {}: use a BERT student", s.layer_norm_eps, t.layer_norm_eps)));
        }
        (s.vocab_size, s.hidden_size, s.num_attention_heads, s.intermediate_size) = (t.vocab_size, t.hidden_size, t.num_attention_heads, t.intermediate_size);
        (s.hidden_act, s.hidden_dropout_prob, s.attention_probs_dropout_prob) = (t.hidden_act.clone(), t.hidden_dropout_prob, t.attention_probs_dropout_prob);
        (s.max_position_embeddings, s.initializer_range, s.pad_token_id) = (t.max_position_embeddings, t.initializer_range, t.pad_token_id);
    }
    s.num_hidden_layers = layers;
    s.family = family;
    let arch = family.arch_for(Task::MaskedLm).ok_or_else(|| Error::msg(format!("{} has no masked-LM head", family.model_type())))?;
    s.extra.insert("architectures".into(), serde_json::json!([arch.name]));
    Ok(ModelConfig::Encoder(s))
}

/// Which teacher → student families [`init_from_teacher`] can copy between: the same family, or
/// BERT → DistilBERT (the same layers under other names; DistilBERT drops the token types).
/// RoBERTa → DistilBERT is not (RoBERTa's positions start after the padding index): distilroberta
/// is a 6-layer RoBERTa, `--student roberta`.
fn pairing(teacher: Family, student: Family) -> Result<()> {
    if teacher == student || (teacher == Family::Bert && student == Family::DistilBert) {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "distill: a {} student cannot be made from a {} teacher (supported: the teacher's own family, or DistilBERT from BERT)",
            student.model_type(),
            teacher.model_type()
        )))
    }
}

/// Copies `src` into `dst`; shapes must agree.
fn copy(dst: &Param, src: &Param) -> Result<()> {
    if dst.shape() != src.shape() {
        return Err(Error::msg(format!("distill: cannot initialise the student's {} {:?} from the teacher's {} {:?}", dst.name(), dst.shape(), src.name(), src.shape())));
    }
    dst.assign(&src.tensor())
}

fn copy_linear(dst: &Linear, src: &Linear) -> Result<()> {
    copy(&dst.weight, &src.weight)?;
    match (&dst.bias, &src.bias) {
        (Some(d), Some(s)) => copy(d, s),
        (None, None) => Ok(()),
        _ => Err(Error::msg(format!("distill: {} and {} differ in having a bias", dst.weight.name(), src.weight.name()))),
    }
}

fn copy_ln(dst: &LayerNorm, src: &LayerNorm) -> Result<()> {
    copy(&dst.weight, &src.weight)?;
    copy(&dst.bias, &src.bias)
}

fn copy_layer(dst: &EncoderLayer, src: &EncoderLayer) -> Result<()> {
    match (&dst.attn.qkv, &src.attn.qkv) {
        (QkvProj::Separate { q, k, v }, QkvProj::Separate { q: sq, k: sk, v: sv }) => {
            copy_linear(q, sq)?;
            copy_linear(k, sk)?;
            copy_linear(v, sv)?;
        }
        _ => return Err(Error::msg("distill: only separate q, k, v projections can be copied")),
    }
    copy_linear(&dst.attn.out, &src.attn.out)?;
    copy_ln(&dst.attn_ln, &src.attn_ln)?;
    copy_linear(&dst.ffn.up, &src.ffn.up)?;
    copy_linear(&dst.ffn.down, &src.ffn.down)?;
    copy_ln(&dst.out_ln, &src.out_ln)
}

/// The teacher layer student layer `i` of `n` starts from, of `l` teacher layers: `⌊i·l/n⌋`.
pub fn teacher_layer(i: usize, n: usize, l: usize) -> usize {
    i * l / n.max(1)
}

/// Initialises `student` from `teacher` as DistilBERT did: the word and position embeddings (and
/// the token types where both have them) with their LayerNorm, layer `i` from teacher layer
/// [`teacher_layer`] (`2i` for half the depth), and the MLM head's transform and bias (its decoder
/// is tied to the word embeddings). Both must be of one family, or BERT → DistilBERT, of the
/// same width, heads, feed-forward and vocabulary, and the student no deeper than the teacher.
/// Returns the (student, teacher) layer pairs.
pub fn init_from_teacher(student: &Model, teacher: &Model) -> Result<Vec<(usize, usize)>> {
    let (se, sh) = mlm_parts(student, "student", false)?;
    let (te, th) = mlm_parts(teacher, "teacher", true)?;
    pairing(te.cfg.family, se.cfg.family)?;
    let (s, t) = (&se.cfg, &te.cfg);
    for (what, a, b) in [("hidden_size", s.hidden_size, t.hidden_size), ("num_attention_heads", s.num_attention_heads, t.num_attention_heads), ("intermediate_size", s.intermediate_size, t.intermediate_size), ("vocab_size", s.vocab_size, t.vocab_size), ("max_position_embeddings", s.max_position_embeddings, t.max_position_embeddings)] {
        if a != b {
            return Err(Error::msg(format!("distill: the student's {what} is {a}, the teacher's {b}: a student initialised from the teacher needs the teacher's sizes")));
        }
    }
    if s.hidden_act != t.hidden_act {
        return Err(Error::msg(format!("distill: the student's activation is {}, the teacher's {}", s.hidden_act, t.hidden_act)));
    }
    let (n, l) = (se.plan().len(), te.plan().len());
    if n > l || se.layers.len() != n || te.layers.len() != l {
        return Err(Error::msg(format!("distill: a student of {n} layers cannot be initialised from a teacher of {l} (it must be no deeper, without shared layers)")));
    }
    copy(&se.word.weight, &te.word.weight)?;
    copy(&se.position.weight, &te.position.weight)?;
    if let (Some(d), Some(s)) = (&se.token_type, &te.token_type) {
        copy(&d.weight, &s.weight)?;
    }
    copy_ln(&se.emb_ln, &te.emb_ln)?;
    let pairs: Vec<(usize, usize)> = (0..n).map(|i| (i, teacher_layer(i, n, l))).collect();
    for &(i, j) in &pairs {
        copy_layer(&se.layers[i], &te.layers[j])?;
    }
    copy_linear(&sh.dense, &th.dense)?;
    copy_ln(&sh.ln, &th.ln)?;
    copy(&sh.bias, &th.bias)?;
    Ok(pairs)
}
