//! The heads that sit on the stacks, with Hugging Face's names per family. Each is data (names,
//! sizes, activation, where dropout goes) over a few shapes: a masked-LM head tied to the word
//! embeddings, a classifier over a pooled vector, a per-token classifier, span logits for QA,
//! ELECTRA's replaced-token discriminator, a causal LM head, GPT's multiple-choice summary and the
//! encoders' `…ForMultipleChoice` scorers (a classifier with one output per choice row).
use crate::config::{Activation, DecoderConfig, EncoderConfig};
use crate::family::Family;
use crate::nn::{activate, first_token, Dropout, ForwardCtx, LayerNorm, Linear};
use crate::params::{Init, Param, ParamStore};
use kiln_tensor::{DType, Error, Result, Tensor};

/// Dense → activation → LayerNorm → a decoder tied to the word embeddings, plus a bias:
/// BERT's `cls.predictions`, RoBERTa's `lm_head`, ALBERT's `predictions`, DistilBERT's
/// `vocab_transform`/`vocab_layer_norm`/`vocab_projector`, ELECTRA's generator.
pub struct MlmHead {
    pub dense: Linear,
    pub act: Activation,
    pub ln: LayerNorm,
    pub decoder: Linear,
    pub bias: Param,
}

impl MlmHead {
    /// `word` is the word-embedding table ([V, E]); the transform maps H → E.
    pub fn new(ps: &ParamStore, cfg: &EncoderConfig, word: &Param) -> Result<Self> {
        Self::new_under(ps, cfg, word, "")
    }
    /// [`MlmHead::new`] with its names under `prefix` (ELECTRA's generator beside its
    /// discriminator: `generator.generator_predictions.dense`, ...).
    pub fn new_under(ps: &ParamStore, cfg: &EncoderConfig, word: &Param, prefix: &str) -> Result<Self> {
        let n = |s: &str| crate::encoder::join(prefix, s);
        let (h, e, std) = (cfg.hidden_size, cfg.embedding_dim(), cfg.initializer_range);
        // (dense, activation, LayerNorm, bias) names; the decoder itself is the tied table
        let (dense, act, ln, bias) = match cfg.family {
            Family::Bert => ("cls.predictions.transform.dense", cfg.activation()?, "cls.predictions.transform.LayerNorm", "cls.predictions.bias"),
            Family::Roberta => ("lm_head.dense", Activation::Gelu, "lm_head.layer_norm", "lm_head.bias"),
            Family::Albert => ("predictions.dense", cfg.activation()?, "predictions.LayerNorm", "predictions.bias"),
            Family::DistilBert => ("vocab_transform", cfg.activation()?, "vocab_layer_norm", "vocab_projector.bias"),
            Family::Electra => ("generator_predictions.dense", Activation::Gelu, "generator_predictions.LayerNorm", "generator_lm_head.bias"),
            f => return Err(Error::msg(format!("{} has no masked-LM head", f.model_type()))),
        };
        Ok(MlmHead {
            dense: Linear::new(ps, &n(dense), h, e, true, std)?,
            act,
            ln: LayerNorm::new(ps, &n(ln), e, cfg.layer_norm_eps)?,
            decoder: Linear::tied(word),
            bias: ps.get_or_init(&n(bias), &[cfg.vocab_size], Init::Zeros)?,
        })
    }
    /// `[.., H]` → logits `[.., V]`.
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let x = self.ln.forward(&activate(self.act, &self.dense.forward(h)?)?)?;
        let y = self.decoder.forward(&x)?;
        y.add(&self.bias.tensor().to_dtype(y.dtype())?)
    }
}

/// Which vector a sequence classifier reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The pooler's output (BERT, ALBERT).
    Pooler,
    /// The hidden state of position 0 (RoBERTa, ELECTRA, DistilBERT).
    First,
    /// The rightmost token that is not padding (GPT-2: `argmax(position × (id ≠ pad))`, the last
    /// position when the config has no pad id).
    LastNonPad,
}

/// `out(dropout(act(dense(dropout?(pool(h))))))`, the parts a family has.
pub struct Classifier {
    pub pool: Pool,
    /// Dropout before the dense layer too (RoBERTa, ELECTRA).
    pub drop_first: bool,
    pub dense: Option<(Linear, Activation)>,
    pub dropout: Dropout,
    pub out: Linear,
}

impl Classifier {
    /// The sequence classifier of an encoder family, over `num_labels` classes.
    pub fn encoder(ps: &ParamStore, cfg: &EncoderConfig, num_labels: usize) -> Result<Self> {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        let cls_drop = Dropout { p: cfg.extra_f64("classifier_dropout").unwrap_or(cfg.hidden_dropout_prob) };
        let lin = |name: &str, o| Linear::new(ps, name, h, o, true, std);
        Ok(match cfg.family {
            Family::Bert => Classifier { pool: Pool::Pooler, drop_first: false, dense: None, dropout: cls_drop, out: lin("classifier", num_labels)? },
            Family::Albert => Classifier {
                pool: Pool::Pooler,
                drop_first: false,
                dense: None,
                dropout: Dropout { p: cfg.extra_f64("classifier_dropout_prob").unwrap_or(0.1) },
                out: lin("classifier", num_labels)?,
            },
            Family::Roberta | Family::Electra => Classifier {
                pool: Pool::First,
                drop_first: true,
                dense: Some((lin("classifier.dense", h)?, if cfg.family == Family::Roberta { Activation::Tanh } else { Activation::Gelu })),
                dropout: cls_drop,
                out: lin("classifier.out_proj", num_labels)?,
            },
            Family::DistilBert => Classifier {
                pool: Pool::First,
                drop_first: false,
                dense: Some((lin("pre_classifier", h)?, Activation::Relu)),
                dropout: Dropout { p: cfg.extra_f64("seq_classif_dropout").unwrap_or(0.2) },
                out: lin("classifier", num_labels)?,
            },
            f => return Err(Error::msg(format!("{} has no encoder classifier", f.model_type()))),
        })
    }
    /// The `…ForMultipleChoice` head of an encoder family: one score per choice row, as
    /// transformers names it. BERT / ALBERT / RoBERTa: the pooler → dropout → `classifier`
    /// (H → 1) (RoBERTa's multiple-choice model keeps the pooler its classifier lacks);
    /// DistilBERT: token 0 → `pre_classifier` → ReLU → dropout → `classifier`; ELECTRA: token 0 →
    /// `sequence_summary.summary` (H → H) → gelu → dropout (`summary_last_dropout`) → `classifier`.
    pub fn multiple_choice(ps: &ParamStore, cfg: &EncoderConfig) -> Result<Self> {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        let lin = |name: &str, o| Linear::new(ps, name, h, o, true, std);
        let pooled = |p: f64| -> Result<Self> { Ok(Classifier { pool: Pool::Pooler, drop_first: false, dense: None, dropout: Dropout { p }, out: lin("classifier", 1)? }) };
        match cfg.family {
            Family::Bert => pooled(cfg.extra_f64("classifier_dropout").unwrap_or(cfg.hidden_dropout_prob)),
            Family::Roberta => pooled(cfg.hidden_dropout_prob),
            Family::Albert => pooled(cfg.extra_f64("classifier_dropout_prob").unwrap_or(0.1)),
            Family::DistilBert => Ok(Classifier {
                pool: Pool::First,
                drop_first: false,
                dense: Some((lin("pre_classifier", h)?, Activation::Relu)),
                dropout: Dropout { p: cfg.extra_f64("seq_classif_dropout").unwrap_or(0.2) },
                out: lin("classifier", 1)?,
            }),
            Family::Electra => Ok(Classifier {
                pool: Pool::First,
                drop_first: false,
                dense: Some((lin("sequence_summary.summary", h)?, Activation::Gelu)),
                dropout: Dropout { p: cfg.extra_f64("summary_last_dropout").unwrap_or(0.1) },
                out: lin("classifier", 1)?,
            }),
            f => Err(Error::msg(format!("{} has no encoder multiple-choice head", f.model_type()))),
        }
    }
    /// GPT-2's `score` (no bias, no dropout) at the last non-padding token.
    pub fn gpt2(ps: &ParamStore, cfg: &DecoderConfig, num_labels: usize) -> Result<Self> {
        Ok(Classifier {
            pool: Pool::LastNonPad,
            drop_first: false,
            dense: None,
            dropout: Dropout { p: 0.0 },
            out: Linear::new(ps, "score", cfg.n_embd, num_labels, false, cfg.initializer_range)?,
        })
    }
    /// hidden `[B, T, H]` (+ the pooler's output, the ids and the pad id for the pooling) → logits `[B, L]`.
    pub fn forward(&self, h: &Tensor, pooled: Option<&Tensor>, ids: &Tensor, pad: Option<u32>, ctx: &ForwardCtx) -> Result<Tensor> {
        let mut x = match self.pool {
            Pool::Pooler => pooled.cloned().ok_or_else(|| Error::msg("this classifier reads the pooler, which the model lacks"))?,
            Pool::First => first_token(h)?,
            Pool::LastNonPad => last_non_pad(h, ids, pad)?,
        };
        if self.drop_first {
            x = self.dropout.forward(&x, ctx)?;
        }
        if let Some((d, a)) = &self.dense {
            x = activate(*a, &d.forward(&x)?)?;
        }
        self.out.forward(&self.dropout.forward(&x, ctx)?)
    }
}

/// Rows of `h` `[B, T, H]` at each row's rightmost non-pad token → `[B, H]` (HF errors without a
/// pad id when B > 1; so does kiln).
fn last_non_pad(h: &Tensor, ids: &Tensor, pad: Option<u32>) -> Result<Tensor> {
    let (b, t, c) = crate::nn::dims3(h)?;
    let idx: Vec<i64> = match pad {
        None if b > 1 => return Err(Error::msg("sequence classification: cannot handle batch sizes > 1 without a pad_token_id in the config")),
        None => vec![(t - 1) as i64],
        Some(p) => ids
            .to_vec::<i64>()?
            .chunks(t)
            .enumerate()
            .map(|(r, row)| {
                // argmax of position × (id ≠ pad): the first maximum, so 0 for an all-padding row
                let last = row.iter().enumerate().filter(|(_, &id)| id != p as i64).map(|(i, _)| i).max().unwrap_or(0);
                (r * t + last) as i64
            })
            .collect(),
    };
    gather_rows(h, &idx, b * t, c)
}

/// Rows `idx` of `h` viewed as `[rows, c]` → `[idx.len(), c]` (differentiable).
pub fn gather_rows(h: &Tensor, idx: &[i64], rows: usize, c: usize) -> Result<Tensor> {
    let index = Tensor::from_vec(idx.to_vec(), &[idx.len()])?.to_device(h.device())?;
    Tensor::embedding(&index, &h.contiguous()?.reshape(&[rows, c])?)
}

/// A per-position linear layer after dropout: token classification (`classifier`) and QA
/// (`qa_outputs`, 2 outputs).
pub struct TokenHead {
    pub dropout: Dropout,
    pub out: Linear,
}

impl TokenHead {
    pub fn new(ps: &ParamStore, name: &str, hidden: usize, outputs: usize, std: f64, dropout: f64) -> Result<Self> {
        Ok(TokenHead { dropout: Dropout { p: dropout }, out: Linear::new(ps, name, hidden, outputs, true, std)? })
    }
    pub fn forward(&self, h: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        self.out.forward(&self.dropout.forward(h, ctx)?)
    }
}

/// ELECTRA's replaced-token detector: `dense` (H → H) → `hidden_act` → `dense_prediction` (H → 1).
pub struct Discriminator {
    pub dense: Linear,
    pub act: Activation,
    pub prediction: Linear,
}

impl Discriminator {
    pub fn new(ps: &ParamStore, cfg: &EncoderConfig) -> Result<Self> {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        Ok(Discriminator {
            dense: Linear::new(ps, "discriminator_predictions.dense", h, h, true, std)?,
            act: cfg.activation()?,
            prediction: Linear::new(ps, "discriminator_predictions.dense_prediction", h, 1, true, std)?,
        })
    }
    /// `[B, T, H]` → logits `[B, T]`.
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        self.prediction.forward(&activate(self.act, &self.dense.forward(h)?)?)?.squeeze(2)
    }
}

/// GPT's `SequenceSummary` at `cls_index` (`mc_token_ids`, default the last position):
/// first dropout → `summary` (H → 1) → activation → last dropout.
pub struct SequenceSummary {
    pub first_dropout: Dropout,
    pub summary: Linear,
    pub act: Option<Activation>,
    pub last_dropout: Dropout,
}

impl SequenceSummary {
    pub fn new(ps: &ParamStore, cfg: &DecoderConfig) -> Result<Self> {
        let act = match cfg.extra.get("summary_activation").and_then(|v| v.as_str()) {
            Some(a) => Some(Activation::from_hf(a).map_err(|e| Error::msg(format!("summary_activation: {e}")))?),
            None => None,
        };
        if cfg.extra.get("summary_use_proj").and_then(|v| v.as_bool()) == Some(false) || cfg.extra.get("summary_type").and_then(|v| v.as_str()).is_some_and(|t| t != "cls_index") {
            return Err(Error::msg("multiple-choice head: kiln supports summary_type \"cls_index\" with summary_use_proj true"));
        }
        Ok(SequenceSummary {
            first_dropout: Dropout { p: cfg.extra_f64("summary_first_dropout").unwrap_or(0.0) },
            summary: Linear::new(ps, "multiple_choice_head.summary", cfg.n_embd, 1, true, cfg.initializer_range)?,
            act,
            last_dropout: Dropout { p: cfg.extra_f64("summary_last_dropout").unwrap_or(0.0) },
        })
    }
    /// hidden `[N, T, H]` for N = B·C choice rows, `cls_index` `[B, C]` (or the last position) →
    /// `mc_logits` `[B, C]`.
    pub fn forward(&self, h: &Tensor, cls_index: Option<&Tensor>, b: usize, choices: usize, ctx: &ForwardCtx) -> Result<Tensor> {
        let (n, t, c) = crate::nn::dims3(h)?;
        let idx: Vec<i64> = match cls_index {
            Some(ix) => {
                if ix.shape() != [b, choices] {
                    return Err(Error::ShapeMismatch { op: "mc_token_ids", lhs: vec![b, choices], rhs: ix.shape().to_vec() });
                }
                let v = ix.to_vec::<i64>()?;
                if let Some(bad) = v.iter().find(|&&i| i < 0 || i as usize >= t) {
                    return Err(Error::IndexOutOfRange { op: "mc_token_ids", index: *bad, size: t });
                }
                v.iter().enumerate().map(|(r, &i)| r as i64 * t as i64 + i).collect()
            }
            None => (0..n).map(|r| (r * t + t - 1) as i64).collect(),
        };
        let x = self.first_dropout.forward(&gather_rows(h, &idx, n * t, c)?, ctx)?;
        let mut y = self.summary.forward(&x)?;
        if let Some(a) = self.act {
            y = activate(a, &y)?;
        }
        self.last_dropout.forward(&y, ctx)?.reshape(&[b, choices])
    }
}

/// The causal LM head: logits on the token embedding (tied) or on its own `lm_head.weight`.
pub struct LmHead {
    pub weight: Param,
}

impl LmHead {
    /// `tie_word_embeddings` false gives the head its own `lm_head.weight` [V, C].
    pub fn new(ps: &ParamStore, cfg: &DecoderConfig, wte: &Param) -> Result<Self> {
        let weight = if cfg.tie_word_embeddings {
            wte.clone()
        } else {
            ps.get_or_init("lm_head.weight", &[cfg.vocab_size, cfg.n_embd], Init::Normal { std: cfg.initializer_range })?
        };
        Ok(LmHead { weight })
    }
    /// Hidden states `[.., C]` → logits `[.., V]`.
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        Linear::tied(&self.weight).forward(h)
    }
}

/// Cross-entropy of `logits` `[.., N]` against `labels` (one per row), ignoring `ignore`, in f32
/// also when the logits are half precision.
pub fn flat_ce(logits: &Tensor, labels: &Tensor, ignore: i64) -> Result<Tensor> {
    let n = *logits.shape().last().unwrap_or(&0);
    let rows = logits.elem_count() / n.max(1);
    if labels.elem_count() != rows {
        return Err(Error::ShapeMismatch { op: "labels", lhs: logits.shape()[..logits.rank() - 1].to_vec(), rhs: labels.shape().to_vec() });
    }
    logits.reshape(&[rows, n])?.to_dtype(DType::F32)?.cross_entropy(&labels.contiguous()?.reshape(&[rows])?, ignore)
}

/// Cross-entropy of logits[:, :-1] against labels[:, 1:], ignoring -100 (HF's causal-LM loss).
pub fn shifted_lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, t, v) = crate::nn::dims3(logits)?;
    if labels.shape() != [b, t] {
        return Err(Error::ShapeMismatch { op: "lm_loss", lhs: vec![b, t], rhs: labels.shape().to_vec() });
    }
    if t < 2 {
        return Err(Error::msg("lm_loss: need at least 2 positions to shift labels"));
    }
    let lg = logits.narrow(1, 0, t - 1)?.reshape(&[b * (t - 1), v])?.to_dtype(DType::F32)?;
    let lb = labels.narrow(1, 1, t - 1)?.contiguous()?.reshape(&[b * (t - 1)])?;
    lg.cross_entropy(&lb, -100)
}

/// `BCEWithLogits` averaged over positions whose mask is 1 (all when no mask): ELECTRA's
/// replaced-token-detection loss. `labels` are 0 (original) / 1 (replaced).
pub fn masked_bce_with_logits(logits: &Tensor, labels: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    if labels.shape() != logits.shape() {
        return Err(Error::ShapeMismatch { op: "labels", lhs: logits.shape().to_vec(), rhs: labels.shape().to_vec() });
    }
    let x = logits.to_dtype(DType::F32)?;
    let y = labels.to_dtype(DType::F32)?;
    // max(x, 0) − x·y + log(1 + e^−|x|), stable for any x
    let per = x.relu()?.sub(&x.mul(&y)?)?.add(&x.abs()?.neg()?.exp()?.add_scalar(1.0)?.log()?)?;
    match mask {
        Some(m) => {
            let w = m.to_dtype(DType::F32)?.ne_scalar(0.0)?.to_dtype(DType::F32)?;
            per.mul(&w)?.sum_all()?.div(&w.sum_all()?)
        }
        None => per.mean_all(),
    }
}

/// Mean squared error (regression heads, `num_labels` 1).
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let p = pred.to_dtype(DType::F32)?.reshape(&[pred.elem_count()])?;
    let t = target.to_dtype(DType::F32)?.reshape(&[target.elem_count()])?;
    if p.elem_count() != t.elem_count() {
        return Err(Error::ShapeMismatch { op: "labels", lhs: pred.shape().to_vec(), rhs: target.shape().to_vec() });
    }
    p.sub(&t)?.sqr()?.mean_all()
}
