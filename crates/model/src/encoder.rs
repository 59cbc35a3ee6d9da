//! The encoder stack of BERT, RoBERTa, ALBERT, DistilBERT and ELECTRA: embeddings (word +
//! position [+ token type], LayerNorm, dropout [, a projection E → H]), post-LN layers with a
//! key-padding mask, and an optional pooler. What differs between the members is data, read from
//! the config by [`EncoderSpec::of`]: parameter names, where positions start, token types, the
//! embedding width, layer sharing (ALBERT), which dropouts exist.
use crate::config::EncoderConfig;
use crate::family::Family;
use crate::nn::{dims3, first_token, Dropout, Embedding, FeedForward, ForwardCtx, LayerNorm, Linear, QkvProj, SelfAttention};
use crate::params::ParamStore;
use kiln_tensor::{DType, Error, Result, Tensor};

/// Parameter names of one encoder layer, relative to the layer's prefix.
struct LayerNames {
    q: &'static str,
    k: &'static str,
    v: &'static str,
    out: &'static str,
    attn_ln: &'static str,
    up: &'static str,
    down: &'static str,
    out_ln: &'static str,
}

const BERT_LAYER: LayerNames = LayerNames {
    q: "attention.self.query",
    k: "attention.self.key",
    v: "attention.self.value",
    out: "attention.output.dense",
    attn_ln: "attention.output.LayerNorm",
    up: "intermediate.dense",
    down: "output.dense",
    out_ln: "output.LayerNorm",
};
const ALBERT_LAYER: LayerNames = LayerNames {
    q: "attention.query",
    k: "attention.key",
    v: "attention.value",
    out: "attention.dense",
    attn_ln: "attention.LayerNorm",
    up: "ffn",
    down: "ffn_output",
    out_ln: "full_layer_layer_norm",
};
const DISTILBERT_LAYER: LayerNames = LayerNames {
    q: "attention.q_lin",
    k: "attention.k_lin",
    v: "attention.v_lin",
    out: "attention.out_lin",
    attn_ln: "sa_layer_norm",
    up: "ffn.lin1",
    down: "ffn.lin2",
    out_ln: "output_layer_norm",
};

/// What one family's encoder is, read off its config.
pub struct EncoderSpec {
    names: &'static LayerNames,
    /// The name of stored layer `k` (ALBERT: `encoder.albert_layer_groups.{g}.albert_layers.{j}`).
    layer_name: fn(&EncoderConfig, usize) -> String,
    /// Stored layers (ALBERT: groups × layers per group).
    stored: usize,
    /// The projection from the embeddings' width to the hidden width, if any.
    projection: Option<&'static str>,
    /// The pooler's name, if the base model has one.
    pooler: Option<&'static str>,
    /// Positions start after the padding index (RoBERTa).
    padding_offset_positions: bool,
    /// Dropout after the attention's output projection / after the feed-forward.
    attn_out_dropout: bool,
    ffn_dropout: bool,
}

impl EncoderSpec {
    /// The spec of `cfg`'s family.
    pub fn of(cfg: &EncoderConfig) -> EncoderSpec {
        let bert_name: fn(&EncoderConfig, usize) -> String = |_, k| format!("encoder.layer.{k}");
        let base = EncoderSpec {
            names: &BERT_LAYER,
            layer_name: bert_name,
            stored: cfg.num_hidden_layers,
            projection: None,
            pooler: Some("pooler.dense"),
            padding_offset_positions: false,
            attn_out_dropout: true,
            ffn_dropout: true,
        };
        match cfg.family {
            Family::Roberta => EncoderSpec { padding_offset_positions: true, ..base },
            Family::Albert => EncoderSpec {
                names: &ALBERT_LAYER,
                layer_name: |c, k| {
                    let inner = c.inner_group_num.unwrap_or(1);
                    format!("encoder.albert_layer_groups.{}.albert_layers.{}", k / inner, k % inner)
                },
                stored: cfg.num_hidden_groups.unwrap_or(1).saturating_mul(cfg.inner_group_num.unwrap_or(1)),
                projection: Some("encoder.embedding_hidden_mapping_in"),
                pooler: Some("pooler"),
                ffn_dropout: false,
                ..base
            },
            Family::DistilBert => EncoderSpec {
                names: &DISTILBERT_LAYER,
                layer_name: |_, k| format!("transformer.layer.{k}"),
                pooler: None,
                attn_out_dropout: false,
                ..base
            },
            Family::Electra => EncoderSpec {
                projection: (cfg.embedding_dim() != cfg.hidden_size).then_some("embeddings_project"),
                pooler: None,
                ..base
            },
            _ => base,
        }
    }
    /// Whether the family's base model has a pooler.
    pub fn has_pooler(&self) -> bool {
        self.pooler.is_some()
    }
    /// The stored layers run at each depth: `0..L`, or ALBERT's groups (layer `i` runs group
    /// `⌊i·G/L⌋`, which is transformers' `int(i / (L / G))`, each group its `inner_group_num` layers).
    fn plan(cfg: &EncoderConfig) -> Vec<usize> {
        match (cfg.family, cfg.num_hidden_groups, cfg.inner_group_num) {
            (Family::Albert, g, inner) => {
                let (l, g, inner) = (cfg.num_hidden_layers, g.unwrap_or(1), inner.unwrap_or(1));
                (0..l).flat_map(|i| {
                    let group = i * g / l;
                    (0..inner).map(move |j| group * inner + j)
                })
                .collect()
            }
            _ => (0..cfg.num_hidden_layers).collect(),
        }
    }
}

/// One post-LN layer: `x = LN(x + drop(attn(x)))`, `x = LN(x + drop(ffn(x)))`.
#[derive(Clone)]
pub struct EncoderLayer {
    pub attn: SelfAttention,
    pub attn_ln: LayerNorm,
    pub ffn: FeedForward,
    pub out_ln: LayerNorm,
    pub attn_dropout: Dropout,
    pub ffn_dropout: Dropout,
}

impl EncoderLayer {
    fn new(ps: &ParamStore, cfg: &EncoderConfig, spec: &EncoderSpec, p: &str) -> Result<Self> {
        let (c, std, eps, n) = (cfg.hidden_size, cfg.initializer_range, cfg.layer_norm_eps, spec.names);
        let lin = |name: &str, i, o| Linear::new(ps, &format!("{p}.{name}"), i, o, true, std);
        let drop = |on: bool| Dropout { p: if on { cfg.hidden_dropout_prob } else { 0.0 } };
        Ok(EncoderLayer {
            attn: SelfAttention {
                qkv: QkvProj::Separate { q: lin(n.q, c, c)?, k: lin(n.k, c, c)?, v: lin(n.v, c, c)? },
                out: lin(n.out, c, c)?,
                n_head: cfg.num_attention_heads,
                causal: false,
                attn_dropout: Dropout { p: cfg.attention_probs_dropout_prob },
            },
            attn_ln: LayerNorm::new(ps, &format!("{p}.{}", n.attn_ln), c, eps)?,
            ffn: FeedForward { up: lin(n.up, c, cfg.intermediate_size)?, down: lin(n.down, cfg.intermediate_size, c)?, act: cfg.activation()? },
            out_ln: LayerNorm::new(ps, &format!("{p}.{}", n.out_ln), c, eps)?,
            attn_dropout: drop(spec.attn_out_dropout),
            ffn_dropout: drop(spec.ffn_dropout),
        })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, ctx: &ForwardCtx) -> Result<Tensor> {
        let a = self.attn_dropout.forward(&self.attn.forward(x, mask, ctx)?, ctx)?;
        let x = self.attn_ln.forward(&x.add(&a)?)?;
        let f = self.ffn_dropout.forward(&self.ffn.forward(&x)?, ctx)?;
        self.out_ln.forward(&x.add(&f)?)
    }
}

/// The encoder stack under a name prefix (`"bert"` in head models, `""` for a bare model's file).
pub struct Encoder {
    pub cfg: EncoderConfig,
    pub word: Embedding,
    pub position: Embedding,
    /// Absent in DistilBERT.
    pub token_type: Option<Embedding>,
    pub emb_ln: LayerNorm,
    /// ALBERT's `embedding_hidden_mapping_in`, ELECTRA's `embeddings_project` (E → H).
    pub projection: Option<Linear>,
    /// The stored layers; [`Encoder::plan`] says which runs at each depth.
    pub layers: Vec<EncoderLayer>,
    plan: Vec<usize>,
    pub pooler: Option<Linear>,
    pub dropout: Dropout,
    padding_offset_positions: bool,
    /// Recompute each layer's activations in the backward ([`crate::model::Model::set_recompute`]).
    pub recompute: bool,
}

/// Outputs of [`Encoder::forward`].
pub struct EncoderOutput {
    pub last_hidden_state: Tensor,
    pub pooler_output: Option<Tensor>,
}

/// `prefix.name`, or `name` when the prefix is empty.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl Encoder {
    pub fn new(ps: &ParamStore, cfg: &EncoderConfig, prefix: &str, with_pooler: bool) -> Result<Self> {
        cfg.validate()?;
        let spec = EncoderSpec::of(cfg);
        let (c, e, std) = (cfg.hidden_size, cfg.embedding_dim(), cfg.initializer_range);
        let n = |s: &str| join(prefix, s);
        let pad = cfg.pad_token_id.map(|p| p as i64);
        let mut word = Embedding::new(ps, &n("embeddings.word_embeddings"), cfg.vocab_size, e, std)?;
        word.padding_idx = pad;
        let mut position = Embedding::new(ps, &n("embeddings.position_embeddings"), cfg.max_position_embeddings, e, std)?;
        if spec.padding_offset_positions {
            position.padding_idx = pad;
        }
        if cfg.family == Family::DistilBert && cfg.extra.get("sinusoidal_pos_embds").and_then(|v| v.as_bool()) == Some(true) {
            position.weight.assign(&sinusoidal_table(cfg.max_position_embeddings, e)?)?;
        }
        let token_type = match cfg.type_vocab_size {
            0 => None,
            t => Some(Embedding::new(ps, &n("embeddings.token_type_embeddings"), t, e, std)?),
        };
        let pooler = match (with_pooler, spec.pooler) {
            (true, Some(name)) => Some(Linear::new(ps, &n(name), c, c, true, std)?),
            (true, None) => return Err(Error::msg(format!("{}: the base model has no pooler", cfg.family.model_type()))),
            _ => None,
        };
        Ok(Encoder {
            cfg: cfg.clone(),
            word,
            position,
            token_type,
            emb_ln: LayerNorm::new(ps, &n("embeddings.LayerNorm"), e, cfg.layer_norm_eps)?,
            projection: spec.projection.map(|name| Linear::new(ps, &n(name), e, c, true, std)).transpose()?,
            layers: (0..spec.stored).map(|k| EncoderLayer::new(ps, cfg, &spec, &n(&(spec.layer_name)(cfg, k)))).collect::<Result<_>>()?,
            plan: EncoderSpec::plan(cfg),
            pooler,
            dropout: Dropout { p: cfg.hidden_dropout_prob },
            padding_offset_positions: spec.padding_offset_positions,
            recompute: false,
        })
    }

    /// The stored layer run at each depth (`0..L` except ALBERT, whose groups repeat).
    pub fn plan(&self) -> &[usize] {
        &self.plan
    }

    /// Position ids: `0..T` as `[T]`, or RoBERTa's `[B, T]` (real tokens count from `pad + 1`,
    /// padding tokens get `pad`).
    fn positions(&self, input_ids: &Tensor, t: usize) -> Result<Tensor> {
        if !self.padding_offset_positions {
            return Tensor::arange(0.0, t as f64, 1.0, DType::I64, input_ids.device());
        }
        let pad = self.cfg.pad_token_id.unwrap_or(1) as i64;
        let ids = input_ids.to_vec::<i64>()?;
        let mut pos = Vec::with_capacity(ids.len());
        for row in ids.chunks(t) {
            let mut count = 0;
            pos.extend(row.iter().map(|&id| {
                if id == pad {
                    pad
                } else {
                    count += 1;
                    pad + count
                }
            }));
        }
        Tensor::from_vec(pos, input_ids.shape())?.to_device(input_ids.device())
    }

    /// input_ids `[B, T]` i64; attention_mask `[B, T]` (1 = token, 0 = padding); token_type_ids
    /// `[B, T]` (an error for a family without token types).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, token_type_ids: Option<&Tensor>, ctx: &ForwardCtx) -> Result<EncoderOutput> {
        self.forward_collect(input_ids, attention_mask, token_type_ids, ctx, None)
    }

    /// [`Encoder::forward`], also returning HF's `hidden_states`: the embeddings' output (after the
    /// projection, if any) and each layer's output, `L + 1` tensors `[B, T, H]`.
    pub fn forward_hidden_states(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, token_type_ids: Option<&Tensor>, ctx: &ForwardCtx) -> Result<(EncoderOutput, Vec<Tensor>)> {
        let mut all = Vec::with_capacity(self.plan.len() + 1);
        let out = self.forward_collect(input_ids, attention_mask, token_type_ids, ctx, Some(&mut all))?;
        Ok((out, all))
    }

    fn forward_collect(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, token_type_ids: Option<&Tensor>, ctx: &ForwardCtx, mut all: Option<&mut Vec<Tensor>>) -> Result<EncoderOutput> {
        let mt = self.cfg.family.model_type();
        let (b, t) = check_ids(input_ids, self.cfg.max_positions(), mt)?;
        for (name, m) in [("attention_mask", attention_mask), ("token_type_ids", token_type_ids)] {
            if let Some(m) = m.filter(|m| m.shape() != [b, t]) {
                return Err(Error::ShapeMismatch { op: name, lhs: vec![b, t], rhs: m.shape().to_vec() });
            }
        }
        let mut x = self.word.forward(input_ids)?.add(&self.position.forward(&self.positions(input_ids, t)?)?)?;
        match (&self.token_type, token_type_ids) {
            (Some(emb), Some(tt)) => x = x.add(&emb.forward(tt)?)?,
            (Some(emb), None) => x = x.add(&emb.forward(&Tensor::zeros(&[b, t], DType::I64, input_ids.device())?)?)?,
            (None, Some(_)) => return Err(Error::msg(format!("{mt}: this model takes no token_type_ids"))),
            (None, None) => {}
        }
        let mut x = self.dropout.forward(&ctx.to_compute(&self.emb_ln.forward(&x)?)?, ctx)?;
        if let Some(p) = &self.projection {
            x = p.forward(&x)?;
        }
        if let Some(a) = all.as_deref_mut() {
            a.push(x.clone());
        }
        for (i, &k) in self.plan.iter().enumerate() {
            let _r = kiln_tensor::nvtx::range_with(|| format!("encoder.layer.{i}"));
            x = match self.recompute {
                true => {
                    let (layer, mask) = (self.layers[k].clone(), attention_mask.cloned());
                    ctx.checkpoint(&[x], move |x, ctx| layer.forward(&x[0], mask.as_ref(), ctx))?
                }
                false => self.layers[k].forward(&x, attention_mask, ctx)?,
            };
            if let Some(a) = all.as_deref_mut() {
                a.push(x.clone());
            }
        }
        let pooler_output = self.pooler.as_ref().map(|p| p.forward(&first_token(&x)?)?.tanh()).transpose()?;
        dims3(&x)?;
        Ok(EncoderOutput { last_hidden_state: x, pooler_output })
    }
}

/// DistilBERT's `sinusoidal_pos_embds` table: `sin(pos / 10000^(2⌊j/2⌋/dim))` on even columns,
/// `cos` on odd ones.
fn sinusoidal_table(n_pos: usize, dim: usize) -> Result<Tensor> {
    let mut v = Vec::with_capacity(n_pos * dim);
    for pos in 0..n_pos {
        for j in 0..dim {
            let angle = pos as f64 / 10000f64.powf(2.0 * (j / 2) as f64 / dim as f64);
            v.push(if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32);
        }
    }
    Tensor::from_vec(v, &[n_pos, dim])
}

/// Validates `[B, T]` i64 ids with T ≤ max positions; returns (B, T).
pub fn check_ids(ids: &Tensor, max_pos: usize, model: &str) -> Result<(usize, usize)> {
    if ids.dtype() != DType::I64 {
        return Err(Error::msg(format!("{model}: input_ids must be i64, got {}", ids.dtype())));
    }
    let &[b, t] = ids.shape() else {
        return Err(Error::Shape { op: "input_ids", shape: ids.shape().to_vec(), msg: "expected [batch, seq]".into() });
    };
    if t == 0 || b == 0 {
        return Err(Error::Shape { op: "input_ids", shape: vec![b, t], msg: "empty batch".into() });
    }
    if t > max_pos {
        return Err(Error::msg(format!("{model}: sequence length {t} exceeds the maximum of {max_pos} positions")));
    }
    Ok((b, t))
}
