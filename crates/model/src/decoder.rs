//! The decoder stack of GPT-1 and GPT-2: token + position embeddings (+ token types looked up in
//! the token table), causal blocks, and a final LayerNorm where the family has one. GPT-2's blocks
//! are pre-LN (`x + attn(ln_1(x))`), GPT-1's post-LN (`ln_1(x + attn(x))`) with no final LayerNorm.
//! Parameter names are Hugging Face's (`transformer.h.0.attn.c_attn.weight`, Conv1D `[in, out]`).
use crate::config::DecoderConfig;
use crate::encoder::{check_ids, join};
use crate::family::Family;
use crate::nn::{Dropout, Embedding, FeedForward, ForwardCtx, KvCache, LayerKv, LayerNorm, Linear, QkvProj, SelfAttention};
use crate::params::ParamStore;
use kiln_tensor::{DType, Error, Result, Tensor};

/// One causal block; `pre_ln` picks GPT-2's order, otherwise GPT-1's.
#[derive(Clone)]
pub struct DecoderBlock {
    pub ln_1: LayerNorm,
    pub attn: SelfAttention,
    pub ln_2: LayerNorm,
    pub mlp: FeedForward,
    pub resid_dropout: Dropout,
    pub pre_ln: bool,
}

impl DecoderBlock {
    fn new(ps: &ParamStore, cfg: &DecoderConfig, p: &str) -> Result<Self> {
        let (c, eps, std) = (cfg.n_embd, cfg.layer_norm_epsilon, cfg.initializer_range);
        // GPT-2 scales the init of residual projections by 1/sqrt(2 * n_layer); GPT-1 does not.
        let proj_std = if cfg.family == Family::Gpt2 { std / (2.0 * cfg.n_layer as f64).sqrt() } else { std };
        let inner = cfg.inner_size();
        Ok(DecoderBlock {
            ln_1: LayerNorm::new(ps, &format!("{p}.ln_1"), c, eps)?,
            attn: SelfAttention {
                qkv: QkvProj::Fused(Linear::conv1d(ps, &format!("{p}.attn.c_attn"), c, 3 * c, std)?),
                out: Linear::conv1d(ps, &format!("{p}.attn.c_proj"), c, c, proj_std)?,
                n_head: cfg.n_head,
                causal: true,
                attn_dropout: Dropout { p: cfg.attn_pdrop },
            },
            ln_2: LayerNorm::new(ps, &format!("{p}.ln_2"), c, eps)?,
            mlp: FeedForward {
                up: Linear::conv1d(ps, &format!("{p}.mlp.c_fc"), c, inner, std)?,
                down: Linear::conv1d(ps, &format!("{p}.mlp.c_proj"), inner, c, proj_std)?,
                act: cfg.activation()?,
            },
            resid_dropout: Dropout { p: cfg.resid_pdrop },
            pre_ln: cfg.family == Family::Gpt2,
        })
    }

    /// The block around an attention function (full or cached), so both orders are written once.
    fn run(&self, x: &Tensor, ctx: &ForwardCtx, attn: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        if self.pre_ln {
            let x = x.add(&self.resid_dropout.forward(&attn(&self.ln_1.forward(x)?)?, ctx)?)?;
            let m = self.mlp.forward(&self.ln_2.forward(&x)?)?;
            x.add(&self.resid_dropout.forward(&m, ctx)?)
        } else {
            let n = self.ln_1.forward(&x.add(&self.resid_dropout.forward(&attn(x)?, ctx)?)?)?;
            let m = self.mlp.forward(&n)?;
            self.ln_2.forward(&n.add(&self.resid_dropout.forward(&m, ctx)?)?)
        }
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, ctx: &ForwardCtx) -> Result<Tensor> {
        self.run(x, ctx, |h| self.attn.forward(h, mask, ctx))
    }

    /// Inference with this block's key/value cache slot (see [`Decoder::forward_cached`]).
    pub fn forward_cached(&self, x: &Tensor, slot: &mut Option<LayerKv>, ctx: &ForwardCtx) -> Result<Tensor> {
        self.run(x, ctx, |h| self.attn.forward_cached(h, slot))
    }
}

/// The decoder stack (`GPT2Model` / `OpenAIGPTModel`).
pub struct Decoder {
    pub cfg: DecoderConfig,
    /// The token embedding (`wte`, GPT-1's `tokens_embed`).
    pub wte: Embedding,
    /// The position embedding (`wpe`, GPT-1's `positions_embed`).
    pub wpe: Embedding,
    pub blocks: Vec<DecoderBlock>,
    /// GPT-2's `ln_f` (GPT-1 has none).
    pub ln_f: Option<LayerNorm>,
    pub embd_dropout: Dropout,
    /// Recompute each block's activations in the backward ([`crate::model::Model::set_recompute`]).
    pub recompute: bool,
}

impl Decoder {
    /// The stack under `prefix` (`"transformer"` in head models, `""` for a bare model's file).
    pub fn new(ps: &ParamStore, cfg: &DecoderConfig, prefix: &str) -> Result<Self> {
        cfg.validate()?;
        let std = cfg.initializer_range;
        let n = |s: &str| join(prefix, s);
        let gpt2 = cfg.family == Family::Gpt2;
        let (tok, pos) = if gpt2 { ("wte", "wpe") } else { ("tokens_embed", "positions_embed") };
        Ok(Decoder {
            cfg: cfg.clone(),
            wte: Embedding::new(ps, &n(tok), cfg.vocab_size, cfg.n_embd, std)?,
            wpe: Embedding::new(ps, &n(pos), cfg.n_positions, cfg.n_embd, if gpt2 { std / 2.0 } else { std })?,
            blocks: (0..cfg.n_layer).map(|i| DecoderBlock::new(ps, cfg, &n(&format!("h.{i}")))).collect::<Result<_>>()?,
            ln_f: if gpt2 { Some(LayerNorm::new(ps, &n("ln_f"), cfg.n_embd, cfg.layer_norm_epsilon)?) } else { None },
            embd_dropout: Dropout { p: cfg.embd_pdrop },
            recompute: false,
        })
    }

    fn model_type(&self) -> &'static str {
        self.cfg.family.model_type()
    }

    /// Token + position (+ token type, looked up in the token table) embeddings of positions
    /// `past..past + T`, in the compute dtype.
    fn embed(&self, input_ids: &Tensor, token_type_ids: Option<&Tensor>, past: usize, ctx: &ForwardCtx) -> Result<Tensor> {
        let t = input_ids.dim(1)?;
        let pos = Tensor::arange(past as f64, (past + t) as f64, 1.0, DType::I64, input_ids.device())?;
        let mut x = self.wte.forward(input_ids)?.add(&self.wpe.forward(&pos)?)?;
        if let Some(tt) = token_type_ids {
            if tt.shape() != input_ids.shape() {
                return Err(Error::ShapeMismatch { op: "token_type_ids", lhs: input_ids.shape().to_vec(), rhs: tt.shape().to_vec() });
            }
            x = x.add(&self.wte.forward(tt)?)?;
        }
        ctx.to_compute(&x)
    }

    fn finish(&self, x: Tensor) -> Result<Tensor> {
        match &self.ln_f {
            Some(ln) => ln.forward(&x),
            None => Ok(x),
        }
    }

    /// input_ids `[B, T]` (i64) + optional attention_mask `[B, T]` (1 = real token) and
    /// token_type_ids `[B, T]` → hidden `[B, T, C]`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, token_type_ids: Option<&Tensor>, ctx: &ForwardCtx) -> Result<Tensor> {
        let (b, t) = check_ids(input_ids, self.cfg.n_positions, self.model_type())?;
        if let Some(m) = attention_mask.filter(|m| m.shape() != [b, t]) {
            return Err(Error::ShapeMismatch { op: "attention_mask", lhs: vec![b, t], rhs: m.shape().to_vec() });
        }
        let mut x = self.embd_dropout.forward(&self.embed(input_ids, token_type_ids, 0, ctx)?, ctx)?;
        for (i, blk) in self.blocks.iter().enumerate() {
            let _r = kiln_tensor::nvtx::range_with(|| format!("h.{i}"));
            x = match self.recompute {
                true => {
                    let (blk, mask) = (blk.clone(), attention_mask.cloned());
                    ctx.checkpoint(&[x], move |x, ctx| blk.forward(&x[0], mask.as_ref(), ctx))?
                }
                false => blk.forward(&x, attention_mask, ctx)?,
            };
        }
        self.finish(x)
    }

    /// An empty key/value cache for [`Decoder::forward_cached`].
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.blocks.len())
    }

    /// Inference with a key/value cache: `input_ids` `[B, t]` are the positions that follow the
    /// `cache.len()` already in `cache` (position ids continue from there); returns their hidden
    /// states `[B, t, C]` and appends their keys and values to `cache`. Feeding a sequence in any
    /// number of pieces gives the hidden states of one full causal forward over it (no padding
    /// mask, no dropout, no autograd history). After the first piece, a longer one is fed one
    /// position at a time.
    ///
    /// Errors, leaving `cache` as it was: ids that are not `[B, t]` i64 or out of the vocabulary, a
    /// cache of another model or batch size, or more than `n_positions` positions in all.
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache, ctx: &ForwardCtx) -> Result<Tensor> {
        let (max, mt) = (self.cfg.n_positions, self.model_type());
        let (b, t) = check_ids(input_ids, max, mt)?;
        let past = cache.len();
        if cache.layers.len() != self.blocks.len() {
            return Err(Error::msg(format!("{mt}: the key/value cache has {} layers, the model {}", cache.layers.len(), self.blocks.len())));
        }
        if let Some(cb) = cache.batch().filter(|&cb| cb != b) {
            return Err(Error::ShapeMismatch { op: "key/value cache (batch)", lhs: vec![cb], rhs: vec![b] });
        }
        if past + t > max {
            return Err(Error::msg(format!("{mt}: {past} cached and {t} new positions exceed the maximum of {max} positions")));
        }
        let lens = cache.lens();
        let run = |cache: &mut KvCache| -> Result<Tensor> {
            if past > 0 && t > 1 {
                let steps = (0..t).map(|i| self.forward_cached(&input_ids.narrow(1, i, 1)?, cache, ctx)).collect::<Result<Vec<_>>>()?;
                return Tensor::cat(&steps, 1);
            }
            kiln_tensor::no_grad(|| {
                let mut x = self.embed(input_ids, None, past, ctx)?;
                for (i, (blk, slot)) in self.blocks.iter().zip(cache.layers.iter_mut()).enumerate() {
                    let _r = kiln_tensor::nvtx::range_with(|| format!("h.{i}"));
                    x = blk.forward_cached(&x, slot, ctx)?;
                }
                self.finish(x)
            })
        };
        run(cache).inspect_err(|_| cache.truncate(&lens))
    }
}
