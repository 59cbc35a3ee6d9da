//! Generation from a causal LM (GPT-1, GPT-2, and the LM half of their double-heads models):
//! [`CausalLm`] is a view of a decoder and its LM head, decoding one token per step through a
//! key/value cache; [`sample`] picks the next token (greedy, temperature, top-k, top-p).
use crate::decoder::Decoder;
use crate::heads::{shifted_lm_loss, LmHead};
use crate::nn::{ForwardCtx, KvCache};
use kiln_tensor::{DType, Error, Result, Tensor};

/// A decoder with its LM head (borrowed from a [`crate::model::Model`]).
#[derive(Clone, Copy)]
pub struct CausalLm<'a> {
    pub transformer: &'a Decoder,
    pub lm_head: &'a LmHead,
}

/// What a causal-LM forward returns.
pub struct LmOutput {
    pub last_hidden_state: Tensor,
    pub logits: Tensor,
    /// Mean next-token cross-entropy over labels != -100 (labels are shifted inside, as in HF).
    pub loss: Option<Tensor>,
}

impl CausalLm<'_> {
    /// Logits [B, T, V]; with `labels` [B, T] also the shifted LM loss.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, labels: Option<&Tensor>, ctx: &ForwardCtx) -> Result<LmOutput> {
        let h = self.transformer.forward(input_ids, attention_mask, None, ctx)?;
        let logits = self.lm_head.forward(&h)?;
        let loss = labels.map(|l| shifted_lm_loss(&logits, l)).transpose()?;
        Ok(LmOutput { last_hidden_state: h, logits, loss })
    }

    /// Logits `[B, t, V]` of `input_ids` fed after the positions in `cache`
    /// (see [`Decoder::forward_cached`]).
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache, ctx: &ForwardCtx) -> Result<Tensor> {
        let h = self.transformer.forward_cached(input_ids, cache, ctx)?;
        kiln_tensor::no_grad(|| self.lm_head.forward(&h))
    }

    /// The logits of the last of `input_ids`' positions, `[B, V]`, after feeding them as
    /// [`CausalLm::forward_cached`] does: what sampling the next token needs (the LM head runs on
    /// one row per sequence instead of all of them).
    pub fn next_token_logits(&self, input_ids: &Tensor, cache: &mut KvCache, ctx: &ForwardCtx) -> Result<Tensor> {
        let h = self.transformer.forward_cached(input_ids, cache, ctx)?;
        let last = h.narrow(1, h.dim(1)? - 1, 1)?.squeeze(1)?;
        kiln_tensor::no_grad(|| self.lm_head.forward(&last))
    }
}

/// Sampling settings for [`CausalLm::generate`]. `Default`: 50 greedy tokens, no eos.
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

impl CausalLm<'_> {
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
