//! BERT: token + position + segment embeddings, post-LN encoder with a padding mask, optional
//! pooler, and the heads (MLM, NSP, pre-training, sequence / token classification, QA).
//! Parameter names are Hugging Face's (`bert.encoder.layer.0.attention.self.query.weight`, ...).
use crate::config::BertConfig;
use crate::gpt::check_ids;
use crate::config::Activation;
use crate::nn::{activate, Dropout, Embedding, FeedForward, ForwardCtx, LayerNorm, Linear, QkvProj, SelfAttention};
use crate::params::{Init, Param, ParamStore};
use kiln_tensor::{DType, Error, Result, Tensor};

/// One post-LN encoder layer.
pub struct BertLayer {
    pub attn: SelfAttention,
    pub attn_ln: LayerNorm,
    pub ffn: FeedForward,
    pub out_ln: LayerNorm,
    pub dropout: Dropout,
}

impl BertLayer {
    fn new(ps: &ParamStore, cfg: &BertConfig, p: &str) -> Result<Self> {
        let (c, std, eps) = (cfg.hidden_size, cfg.initializer_range, cfg.layer_norm_eps);
        let lin = |n: &str, i, o| Linear::new(ps, &format!("{p}.{n}"), i, o, true, std);
        Ok(BertLayer {
            attn: SelfAttention {
                qkv: QkvProj::Separate {
                    q: lin("attention.self.query", c, c)?,
                    k: lin("attention.self.key", c, c)?,
                    v: lin("attention.self.value", c, c)?,
                },
                out: lin("attention.output.dense", c, c)?,
                n_head: cfg.num_attention_heads,
                causal: false,
                attn_dropout: Dropout { p: cfg.attention_probs_dropout_prob },
            },
            attn_ln: LayerNorm::new(ps, &format!("{p}.attention.output.LayerNorm"), c, eps)?,
            ffn: FeedForward {
                up: lin("intermediate.dense", c, cfg.intermediate_size)?,
                down: lin("output.dense", cfg.intermediate_size, c)?,
                act: cfg.activation()?,
            },
            out_ln: LayerNorm::new(ps, &format!("{p}.output.LayerNorm"), c, eps)?,
            dropout: Dropout { p: cfg.hidden_dropout_prob },
        })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, ctx: &ForwardCtx) -> Result<Tensor> {
        let a = self.dropout.forward(&self.attn.forward(x, mask, ctx)?, ctx)?;
        let x = self.attn_ln.forward(&x.add(&a)?)?;
        let f = self.dropout.forward(&self.ffn.forward(&x)?, ctx)?;
        self.out_ln.forward(&x.add(&f)?)
    }
}

/// BertModel (embeddings, encoder, optional pooler) under a name prefix (`"bert"` in head models,
/// `""` for a bare BertModel checkpoint).
pub struct BertModel {
    pub cfg: BertConfig,
    pub word: Embedding,
    pub position: Embedding,
    pub token_type: Embedding,
    pub emb_ln: LayerNorm,
    pub layers: Vec<BertLayer>,
    pub pooler: Option<Linear>,
    pub dropout: Dropout,
}

/// Outputs of [`BertModel::forward`].
pub struct BertOutput {
    pub last_hidden_state: Tensor,
    pub pooler_output: Option<Tensor>,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl BertModel {
    pub fn new(ps: &ParamStore, cfg: &BertConfig, prefix: &str, with_pooler: bool) -> Result<Self> {
        cfg.validate()?;
        let (c, std) = (cfg.hidden_size, cfg.initializer_range);
        let n = |s: &str| join(prefix, s);
        let mut word = Embedding::new(ps, &n("embeddings.word_embeddings"), cfg.vocab_size, c, std)?;
        word.padding_idx = Some(cfg.pad_token_id.unwrap_or(0) as i64);
        Ok(BertModel {
            cfg: cfg.clone(),
            word,
            position: Embedding::new(ps, &n("embeddings.position_embeddings"), cfg.max_position_embeddings, c, std)?,
            token_type: Embedding::new(ps, &n("embeddings.token_type_embeddings"), cfg.type_vocab_size, c, std)?,
            emb_ln: LayerNorm::new(ps, &n("embeddings.LayerNorm"), c, cfg.layer_norm_eps)?,
            layers: (0..cfg.num_hidden_layers).map(|i| BertLayer::new(ps, cfg, &n(&format!("encoder.layer.{i}")))).collect::<Result<_>>()?,
            pooler: if with_pooler { Some(Linear::new(ps, &n("pooler.dense"), c, c, true, std)?) } else { None },
            dropout: Dropout { p: cfg.hidden_dropout_prob },
        })
    }

    /// input_ids [B, T] i64; attention_mask [B, T] (1 = token, 0 = padding); token_type_ids [B, T].
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, token_type_ids: Option<&Tensor>, ctx: &ForwardCtx) -> Result<BertOutput> {
        let (b, t) = check_ids(input_ids, self.cfg.max_position_embeddings, "bert")?;
        let pos = Tensor::arange(0.0, t as f64, 1.0, DType::I64, input_ids.device())?;
        let tt = match token_type_ids {
            Some(tt) => {
                if tt.shape() != [b, t] {
                    return Err(Error::ShapeMismatch { op: "token_type_ids", lhs: vec![b, t], rhs: tt.shape().to_vec() });
                }
                tt.clone()
            }
            None => Tensor::zeros(&[b, t], DType::I64, input_ids.device())?,
        };
        if let Some(m) = attention_mask {
            if m.shape() != [b, t] {
                return Err(Error::ShapeMismatch { op: "attention_mask", lhs: vec![b, t], rhs: m.shape().to_vec() });
            }
        }
        let x = self.word.forward(input_ids)?.add(&self.position.forward(&pos)?)?.add(&self.token_type.forward(&tt)?)?;
        let mut x = self.dropout.forward(&ctx.to_compute(&self.emb_ln.forward(&x)?)?, ctx)?;
        for (i, l) in self.layers.iter().enumerate() {
            let _r = kiln_tensor::nvtx::range_with(|| format!("encoder.layer.{i}"));
            x = l.forward(&x, attention_mask, ctx)?;
        }
        let pooler_output = match &self.pooler {
            Some(p) => Some(p.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()?),
            None => None,
        };
        Ok(BertOutput { last_hidden_state: x, pooler_output })
    }
}

/// The MLM head: transform (dense + act + LayerNorm) then a decoder tied to the word embeddings.
pub struct BertLmHead {
    pub dense: Linear,
    pub act: Activation,
    pub ln: LayerNorm,
    pub decoder: Linear,
    pub bias: Param,
}

impl BertLmHead {
    fn new(ps: &ParamStore, cfg: &BertConfig, word_emb: &Param) -> Result<Self> {
        let (c, std) = (cfg.hidden_size, cfg.initializer_range);
        Ok(BertLmHead {
            dense: Linear::new(ps, "cls.predictions.transform.dense", c, c, true, std)?,
            act: cfg.activation()?,
            ln: LayerNorm::new(ps, "cls.predictions.transform.LayerNorm", c, cfg.layer_norm_eps)?,
            decoder: Linear::tied(word_emb),
            bias: ps.get_or_init("cls.predictions.bias", &[cfg.vocab_size], Init::Zeros)?,
        })
    }
    fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let x = self.ln.forward(&activate(self.act, &self.dense.forward(h)?)?)?;
        let y = self.decoder.forward(&x)?;
        y.add(&self.bias.tensor().to_dtype(y.dtype())?)
    }
}

/// Outputs of the BERT head models (fields absent where a head has none).
#[derive(Default)]
pub struct BertHeadOutput {
    pub last_hidden_state: Option<Tensor>,
    pub pooler_output: Option<Tensor>,
    /// MLM logits [B, T, V], classification logits [B, L] or token logits [B, T, L].
    pub logits: Option<Tensor>,
    pub seq_relationship_logits: Option<Tensor>,
    pub start_logits: Option<Tensor>,
    pub end_logits: Option<Tensor>,
    pub loss: Option<Tensor>,
}

/// Labels for the BERT heads (each optional; -100 = ignored where tokens are labelled).
#[derive(Default, Clone)]
pub struct BertLabels {
    pub labels: Option<Tensor>,
    pub next_sentence_label: Option<Tensor>,
    pub start_positions: Option<Tensor>,
    pub end_positions: Option<Tensor>,
}

/// Which head sits on the encoder.
pub enum BertHead {
    MaskedLm(BertLmHead),
    PreTraining(BertLmHead, Linear),
    SequenceClassification(Linear),
    TokenClassification(Linear),
    QuestionAnswering(Linear),
}

/// A BERT encoder with one head (BertForMaskedLM, BertForPreTraining, ...).
pub struct BertWithHead {
    pub bert: BertModel,
    pub head: BertHead,
    pub dropout: Dropout,
}

/// The head kinds, as HF architecture names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BertTask {
    MaskedLm,
    PreTraining,
    SequenceClassification,
    TokenClassification,
    QuestionAnswering,
}

impl BertTask {
    pub fn from_architecture(name: &str) -> Option<Self> {
        Some(match name {
            "BertForMaskedLM" => BertTask::MaskedLm,
            "BertForPreTraining" => BertTask::PreTraining,
            "BertForSequenceClassification" => BertTask::SequenceClassification,
            "BertForTokenClassification" => BertTask::TokenClassification,
            "BertForQuestionAnswering" => BertTask::QuestionAnswering,
            _ => return None,
        })
    }
}

impl BertWithHead {
    pub fn new(ps: &ParamStore, cfg: &BertConfig, task: BertTask) -> Result<Self> {
        let (c, std) = (cfg.hidden_size, cfg.initializer_range);
        let pooler = matches!(task, BertTask::PreTraining | BertTask::SequenceClassification);
        let bert = BertModel::new(ps, cfg, "bert", pooler)?;
        let nl = cfg.num_labels();
        let head = match task {
            BertTask::MaskedLm => BertHead::MaskedLm(BertLmHead::new(ps, cfg, &bert.word.weight)?),
            BertTask::PreTraining => BertHead::PreTraining(
                BertLmHead::new(ps, cfg, &bert.word.weight)?,
                Linear::new(ps, "cls.seq_relationship", c, 2, true, std)?,
            ),
            BertTask::SequenceClassification => BertHead::SequenceClassification(Linear::new(ps, "classifier", c, nl, true, std)?),
            BertTask::TokenClassification => BertHead::TokenClassification(Linear::new(ps, "classifier", c, nl, true, std)?),
            BertTask::QuestionAnswering => BertHead::QuestionAnswering(Linear::new(ps, "qa_outputs", c, 2, true, std)?),
        };
        Ok(BertWithHead { bert, head, dropout: Dropout { p: cfg.extra.get("classifier_dropout").and_then(|v| v.as_f64()).unwrap_or(cfg.hidden_dropout_prob) } })
    }

    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_type_ids: Option<&Tensor>,
        labels: &BertLabels,
        ctx: &ForwardCtx,
    ) -> Result<BertHeadOutput> {
        let o = self.bert.forward(input_ids, attention_mask, token_type_ids, ctx)?;
        let h = o.last_hidden_state;
        let (b, t, _) = crate::nn::dims3(&h)?;
        let mut out = BertHeadOutput { last_hidden_state: Some(h.clone()), pooler_output: o.pooler_output.clone(), ..Default::default() };
        let flat_ce = |logits: &Tensor, lab: &Tensor, ignore: i64| -> Result<Tensor> {
            let n = *logits.shape().last().unwrap();
            let rows = logits.elem_count() / n;
            if lab.elem_count() != rows {
                return Err(Error::ShapeMismatch { op: "labels", lhs: logits.shape()[..logits.rank() - 1].to_vec(), rhs: lab.shape().to_vec() });
            }
            // in f32 also when the logits are half precision
            logits.reshape(&[rows, n])?.to_dtype(DType::F32)?.cross_entropy(&lab.contiguous()?.reshape(&[rows])?, ignore)
        };
        match &self.head {
            BertHead::MaskedLm(lm) => {
                let logits = lm.forward(&h)?;
                out.loss = labels.labels.as_ref().map(|l| flat_ce(&logits, l, -100)).transpose()?;
                out.logits = Some(logits);
            }
            BertHead::PreTraining(lm, nsp) => {
                let logits = lm.forward(&h)?;
                let pooled = o.pooler_output.ok_or_else(|| Error::msg("pre-training head needs the pooler"))?;
                let rel = nsp.forward(&pooled)?;
                if let (Some(l), Some(n)) = (&labels.labels, &labels.next_sentence_label) {
                    out.loss = Some(flat_ce(&logits, l, -100)?.add(&flat_ce(&rel, n, -100)?)?);
                }
                out.logits = Some(logits);
                out.seq_relationship_logits = Some(rel);
            }
            BertHead::SequenceClassification(cls) => {
                let pooled = o.pooler_output.ok_or_else(|| Error::msg("sequence classification needs the pooler"))?;
                let logits = cls.forward(&self.dropout.forward(&pooled, ctx)?)?;
                out.loss = labels.labels.as_ref().map(|l| flat_ce(&logits, l, -100)).transpose()?;
                out.logits = Some(logits);
            }
            BertHead::TokenClassification(cls) => {
                let logits = cls.forward(&self.dropout.forward(&h, ctx)?)?;
                out.loss = labels.labels.as_ref().map(|l| flat_ce(&logits, l, -100)).transpose()?;
                out.logits = Some(logits);
            }
            BertHead::QuestionAnswering(qa) => {
                let logits = qa.forward(&h)?; // [B, T, 2]
                let parts = logits.split(&[1, 1], 2)?;
                let start = parts[0].squeeze(2)?.contiguous()?;
                let end = parts[1].squeeze(2)?.contiguous()?;
                if let (Some(s), Some(e)) = (&labels.start_positions, &labels.end_positions) {
                    // HF clamps positions to [0, T] and ignores T.
                    let clamp = |p: &Tensor| -> Result<Tensor> {
                        let v: Vec<i64> = p.to_vec::<i64>()?.into_iter().map(|x| x.clamp(0, t as i64)).collect();
                        Tensor::from_vec(v, &[b])?.to_device(start.device())
                    };
                    let ls = flat_ce(&start, &clamp(s)?, t as i64)?;
                    let le = flat_ce(&end, &clamp(e)?, t as i64)?;
                    out.loss = Some(ls.add(&le)?.mul_scalar(0.5)?);
                }
                out.start_logits = Some(start);
                out.end_logits = Some(end);
            }
        }
        Ok(out)
    }
}
