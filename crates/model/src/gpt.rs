//! GPT-2: token + position embeddings, pre-LN blocks with causal attention, final LayerNorm, and
//! an LM head tied to the token embedding. Parameter names are Hugging Face's (`transformer.h.0.attn.c_attn.weight`, ...).
use crate::config::Gpt2Config;
use crate::nn::{Dropout, Embedding, FeedForward, ForwardCtx, KvCache, LayerKv, LayerNorm, Linear, QkvProj, SelfAttention};
use crate::params::ParamStore;
use kiln_tensor::{DType, Error, Result, Tensor};

/// One pre-LN transformer block.
pub struct Gpt2Block {
    pub ln_1: LayerNorm,
    pub attn: SelfAttention,
    pub ln_2: LayerNorm,
    pub mlp: FeedForward,
    pub resid_dropout: Dropout,
}

impl Gpt2Block {
    fn new(ps: &ParamStore, cfg: &Gpt2Config, i: usize) -> Result<Self> {
        let (c, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        let p = format!("transformer.h.{i}");
        let std = cfg.initializer_range;
        // GPT-2 scales the init of residual projections by 1/sqrt(2 * n_layer).
        let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
        let inner = cfg.inner_size();
        Ok(Gpt2Block {
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
        })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, ctx: &ForwardCtx) -> Result<Tensor> {
        let a = self.attn.forward(&self.ln_1.forward(x)?, mask, ctx)?;
        let x = x.add(&self.resid_dropout.forward(&a, ctx)?)?;
        let m = self.mlp.forward(&self.ln_2.forward(&x)?)?;
        x.add(&self.resid_dropout.forward(&m, ctx)?)
    }

    /// Inference with this block's key/value cache slot (see [`Gpt2Model::forward_cached`]).
    pub fn forward_cached(&self, x: &Tensor, slot: &mut Option<LayerKv>) -> Result<Tensor> {
        let x = x.add(&self.attn.forward_cached(&self.ln_1.forward(x)?, slot)?)?;
        x.add(&self.mlp.forward(&self.ln_2.forward(&x)?)?)
    }
}

/// GPT2Model: embeddings + blocks + final LayerNorm.
pub struct Gpt2Model {
    pub cfg: Gpt2Config,
    pub wte: Embedding,
    pub wpe: Embedding,
    pub blocks: Vec<Gpt2Block>,
    pub ln_f: LayerNorm,
    pub embd_dropout: Dropout,
}

impl Gpt2Model {
    pub fn new(ps: &ParamStore, cfg: &Gpt2Config) -> Result<Self> {
        cfg.validate()?;
        let std = cfg.initializer_range;
        Ok(Gpt2Model {
            cfg: cfg.clone(),
            wte: Embedding::new(ps, "transformer.wte", cfg.vocab_size, cfg.n_embd, std)?,
            wpe: Embedding::new(ps, "transformer.wpe", cfg.n_positions, cfg.n_embd, std / 2.0)?,
            blocks: (0..cfg.n_layer).map(|i| Gpt2Block::new(ps, cfg, i)).collect::<Result<_>>()?,
            ln_f: LayerNorm::new(ps, "transformer.ln_f", cfg.n_embd, cfg.layer_norm_epsilon)?,
            embd_dropout: Dropout { p: cfg.embd_pdrop },
        })
    }

    /// input_ids [B, T] (i64) + optional attention_mask [B, T] (1 = real token) → hidden [B, T, C].
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, ctx: &ForwardCtx) -> Result<Tensor> {
        let (_, t) = check_ids(input_ids, self.cfg.n_positions, "gpt2")?;
        let pos = Tensor::arange(0.0, t as f64, 1.0, DType::I64, input_ids.device())?;
        let x = self.wte.forward(input_ids)?.add(&self.wpe.forward(&pos)?)?;
        let mut x = self.embd_dropout.forward(&ctx.to_compute(&x)?, ctx)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let _r = kiln_tensor::nvtx::range_with(|| format!("h.{i}"));
            x = b.forward(&x, attention_mask, ctx)?;
        }
        self.ln_f.forward(&x)
    }

    /// An empty key/value cache for [`Gpt2Model::forward_cached`].
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
        let max = self.cfg.n_positions;
        let (b, t) = check_ids(input_ids, max, "gpt2")?;
        let past = cache.len();
        if cache.layers.len() != self.blocks.len() {
            return Err(Error::msg(format!("gpt2: the key/value cache has {} layers, the model {}", cache.layers.len(), self.blocks.len())));
        }
        if let Some(cb) = cache.batch().filter(|&cb| cb != b) {
            return Err(Error::ShapeMismatch { op: "gpt2 key/value cache (batch)", lhs: vec![cb], rhs: vec![b] });
        }
        if past + t > max {
            return Err(Error::msg(format!("gpt2: {past} cached and {t} new positions exceed the maximum of {max} positions")));
        }
        let lens = cache.lens();
        let run = |cache: &mut KvCache| -> Result<Tensor> {
            if past > 0 && t > 1 {
                let steps = (0..t).map(|i| self.forward_cached(&input_ids.narrow(1, i, 1)?, cache, ctx)).collect::<Result<Vec<_>>>()?;
                return Tensor::cat(&steps, 1);
            }
            kiln_tensor::no_grad(|| {
                let pos = Tensor::arange(past as f64, (past + t) as f64, 1.0, DType::I64, input_ids.device())?;
                let x = self.wte.forward(input_ids)?.add(&self.wpe.forward(&pos)?)?;
                let mut x = ctx.to_compute(&x)?;
                for (i, (blk, slot)) in self.blocks.iter().zip(cache.layers.iter_mut()).enumerate() {
                    let _r = kiln_tensor::nvtx::range_with(|| format!("h.{i}"));
                    x = blk.forward_cached(&x, slot)?;
                }
                self.ln_f.forward(&x)
            })
        };
        run(cache).inspect_err(|_| cache.truncate(&lens))
    }
}

/// What a causal-LM forward returns.
pub struct LmOutput {
    pub last_hidden_state: Tensor,
    pub logits: Tensor,
    /// Mean next-token cross-entropy over labels != -100 (labels are shifted inside, as in HF).
    pub loss: Option<Tensor>,
}

/// GPT2LMHeadModel: GPT2Model + LM head tied to `transformer.wte.weight`.
pub struct Gpt2LmHeadModel {
    pub transformer: Gpt2Model,
}

impl Gpt2LmHeadModel {
    pub fn new(ps: &ParamStore, cfg: &Gpt2Config) -> Result<Self> {
        Ok(Gpt2LmHeadModel { transformer: Gpt2Model::new(ps, cfg)? })
    }

    /// Logits [B, T, V]; with `labels` [B, T] also the shifted LM loss.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: Option<&Tensor>, ctx: &ForwardCtx) -> Result<LmOutput> {
        let h = self.transformer.forward(input_ids, attention_mask, ctx)?;
        let logits = self.lm_head(&h)?;
        let loss = match labels {
            Some(l) => Some(shifted_lm_loss(&logits, l)?),
            None => None,
        };
        Ok(LmOutput { last_hidden_state: h, logits, loss })
    }

    /// Logits `[B, t, V]` of `input_ids` fed after the positions in `cache`
    /// (see [`Gpt2Model::forward_cached`]).
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache, ctx: &ForwardCtx) -> Result<Tensor> {
        let h = self.transformer.forward_cached(input_ids, cache, ctx)?;
        kiln_tensor::no_grad(|| self.lm_head(&h))
    }

    /// The logits of the last of `input_ids`' positions, `[B, V]`, after feeding them as
    /// [`Gpt2LmHeadModel::forward_cached`] does: what sampling the next token needs (the LM head
    /// runs on one row per sequence instead of all of them).
    pub fn next_token_logits(&self, input_ids: &Tensor, cache: &mut KvCache, ctx: &ForwardCtx) -> Result<Tensor> {
        let h = self.transformer.forward_cached(input_ids, cache, ctx)?;
        let last = h.narrow(1, h.dim(1)? - 1, 1)?.squeeze(1)?;
        kiln_tensor::no_grad(|| self.lm_head(&last))
    }

    /// The LM head: hidden states `[.., C]` → logits `[.., V]` on the tied token embedding.
    fn lm_head(&self, h: &Tensor) -> Result<Tensor> {
        Linear::tied(&self.transformer.wte.weight).forward(h)
    }
}

/// Cross-entropy of logits[:, :-1] against labels[:, 1:], ignoring -100.
pub fn shifted_lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (b, t, v) = crate::nn::dims3(logits)?;
    if labels.shape() != [b, t] {
        return Err(Error::ShapeMismatch { op: "lm_loss", lhs: vec![b, t], rhs: labels.shape().to_vec() });
    }
    if t < 2 {
        return Err(Error::msg("lm_loss: need at least 2 positions to shift labels"));
    }
    // the loss is computed in f32 also when the logits are half precision
    let lg = logits.narrow(1, 0, t - 1)?.reshape(&[b * (t - 1), v])?.to_dtype(DType::F32)?;
    let lb = labels.narrow(1, 1, t - 1)?.contiguous()?.reshape(&[b * (t - 1)])?;
    lg.cross_entropy(&lb, -100)
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

/// Sampling settings for [`Gpt2LmHeadModel::generate`]. `Default`: 50 greedy tokens, no eos.
#[derive(Debug, Clone, Copy)]
pub struct SampleOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy; otherwise finite and > 0.
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Nucleus sampling: keep the most likely tokens whose probabilities (after temperature and
    /// top-k) first add up to at least `top_p`, in (0, 1]; 1 keeps them all.
    pub top_p: f64,
    pub seed: u64,
    /// Stop after emitting this token.
    pub eos: Option<i64>,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions { max_new_tokens: 50, temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, eos: None }
    }
}

impl SampleOptions {
    /// A clear error for settings that cannot sample (NaN or negative temperature, top_p outside (0, 1]).
    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::msg(format!("generate: temperature must be finite and >= 0 (0 = greedy), got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::msg(format!("generate: top_p must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }
}

impl Gpt2LmHeadModel {
    /// Continues `prompt` (token ids, at least one) token by token: greedy when temperature is 0,
    /// otherwise softmax(logits / temperature) restricted to the top-k and then to the top-p
    /// nucleus, sampled with a seeded RNG.
    /// Each step feeds only the new token, through a key/value cache, computing in the parameters'
    /// dtype (see [`crate::model::LoadedModel::from_dir_as`]). The context is the last
    /// `n_positions` tokens: past that length every step recomputes the window (positions 0..).
    pub fn generate(&self, prompt: &[i64], o: &SampleOptions) -> Result<Vec<i64>> {
        use rand::SeedableRng;
        o.check()?;
        if prompt.is_empty() {
            return Err(Error::msg("generate: the prompt encodes to no tokens"));
        }
        let v = self.transformer.cfg.vocab_size as i64;
        if let Some(bad) = prompt.iter().find(|&&t| t < 0 || t >= v) {
            return Err(Error::IndexOutOfRange { op: "generate", index: *bad, size: v as usize });
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(o.seed);
        let mut ids = prompt.to_vec();
        // activations in the parameters' dtype: bf16 weights are read as stored, never widened
        let ctx = ForwardCtx::eval().with_compute_dtype(self.transformer.wte.weight.dtype());
        let max_t = self.transformer.cfg.n_positions;
        let device = self.transformer.wte.weight.tensor().device();
        let mut cache = self.transformer.new_cache();
        for _ in 0..o.max_new_tokens {
            // the ids not yet in the cache; past the context length the window moves every step,
            // and its positions start again from 0
            let fresh = if ids.len() > max_t {
                cache.clear();
                &ids[ids.len() - max_t..]
            } else {
                &ids[cache.len()..]
            };
            let x = Tensor::from_vec(fresh.to_vec(), &[1, fresh.len()])?.to_device(device)?;
            let last = self.next_token_logits(&x, &mut cache, &ctx)?.to_dtype(DType::F64)?.to_vec::<f64>()?;
            let next = sample(&last, o, &mut rng);
            ids.push(next as i64);
            if o.eos == Some(next as i64) {
                break;
            }
        }
        Ok(ids)
    }
}

/// The next token from one row of logits: the first maximum when `o.temperature` is 0, otherwise
/// a draw from softmax(logits / temperature) over the `o.top_k` largest (all when 0), cut to the
/// smallest prefix of them holding `o.top_p` of that mass.
pub fn sample(last: &[f64], o: &SampleOptions, rng: &mut impl rand::Rng) -> usize {
    if o.temperature <= 0.0 {
        return last.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0;
    }
    // largest first, ties by index: a total order, so selecting the top k first and sorting only
    // them gives the full sort's prefix (a sort of 50k logits per token was 1% of decoding)
    let desc = |a: &usize, b: &usize| last[*b].total_cmp(&last[*a]).then(a.cmp(b));
    let mut order: Vec<usize> = (0..last.len()).collect();
    if o.top_k > 0 && o.top_k < order.len() {
        order.select_nth_unstable_by(o.top_k - 1, desc);
        order.truncate(o.top_k);
    }
    order.sort_unstable_by(desc);
    let m = last[order[0]];
    let mut w: Vec<f64> = order.iter().map(|&i| ((last[i] - m) / o.temperature).exp()).collect();
    if o.top_p < 1.0 {
        let (total, mut acc) = (w.iter().sum::<f64>(), 0.0);
        let keep = w.iter().position(|&x| {
            acc += x;
            acc >= o.top_p * total
        });
        let keep = keep.map_or(w.len(), |k| k + 1);
        order.truncate(keep);
        w.truncate(keep);
    }
    let mut u = rng.random::<f64>() * w.iter().sum::<f64>();
    for (k, &i) in order.iter().enumerate() {
        if u < w[k] {
            return i;
        }
        u -= w[k];
    }
    order[order.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn draws(logits: &[f64], o: &SampleOptions, n: usize) -> Vec<usize> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        (0..n).map(|_| sample(logits, o, &mut rng)).collect()
    }

    #[test]
    fn sampling_greedy_top_k_top_p() {
        let logits = [2.0, 1.0, 0.0, -1.0, 2.0 - 1e-9];
        let base = SampleOptions { temperature: 1.0, ..Default::default() };
        // greedy: the first maximum
        assert_eq!(draws(&logits, &SampleOptions::default(), 3), vec![0, 0, 0]);
        // top-k 1 and a tiny nucleus: the most likely token only
        assert!(draws(&logits, &SampleOptions { top_k: 1, ..base }, 200).iter().all(|&i| i == 0));
        assert!(draws(&logits, &SampleOptions { top_p: 1e-6, ..base }, 200).iter().all(|&i| i == 0));
        // nucleus 0.8 over probabilities ∝ e², e², e, 1, 1/e: the two e² tokens hold 0.78, so the
        // third (e) is the last kept; each kept token's share follows its weight
        let o = SampleOptions { top_p: 0.8, ..base };
        let d = draws(&logits, &o, 20000);
        assert!(d.iter().all(|&i| [0, 4, 1].contains(&i)), "a token outside the nucleus was drawn");
        let e2 = 2f64.exp();
        let z = 2.0 * e2 + 1f64.exp();
        let share = d.iter().filter(|&&i| i == 1).count() as f64 / d.len() as f64;
        assert!((share - 1f64.exp() / z).abs() < 0.01, "share of token 1: {share}");
        // all tokens with neither filter; the same seed gives the same draws
        let all = SampleOptions { ..base };
        assert!(draws(&logits, &all, 20000).contains(&3));
        assert_eq!(draws(&logits, &o, 50), draws(&logits, &o, 50));
    }

    #[test]
    fn bad_sampling_options_are_errors() {
        for (o, want) in [
            (SampleOptions { temperature: f64::NAN, ..Default::default() }, "temperature"),
            (SampleOptions { temperature: -1.0, ..Default::default() }, "temperature"),
            (SampleOptions { top_p: 0.0, ..Default::default() }, "top_p"),
            (SampleOptions { top_p: 1.5, ..Default::default() }, "top_p"),
            (SampleOptions { top_p: f64::NAN, ..Default::default() }, "top_p"),
        ] {
            assert!(o.check().unwrap_err().to_string().contains(want), "{o:?}");
        }
        assert!(SampleOptions { temperature: 0.7, top_p: 0.9, top_k: 5, ..Default::default() }.check().is_ok());
    }
}
