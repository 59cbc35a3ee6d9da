//! Layers built from kiln-tensor ops: Linear, Embedding, LayerNorm, Dropout, multi-head
//! self-attention on the fused attention op, and the GELU feed-forward.
//!
//! Parameters are created through a [`ParamStore`] under their Hugging Face names, so a model's
//! parameter names are exactly the checkpoint's tensor names.
use crate::config::Activation;
use crate::params::{Init, Param, ParamStore};
use kiln_tensor::ops::attention::{AttentionOpts, AttnDropout};
use kiln_tensor::{DType, Result, Tensor};
use std::cell::Cell;

/// Per-forward settings: training mode (dropout on), the dropout seed stream, and the compute
/// dtype of the activations.
///
/// Each dropout call draws the next seed from `seed`, so a forward pass is reproducible from
/// (seed, train) alone — which is what makes `--resume` exact.
///
/// **Mixed precision.** With a compute dtype of bf16 or f16 ([`ForwardCtx::with_compute_dtype`]) the
/// models cast their embeddings' output to it; from there every [`Linear`] runs its GEMM in that
/// dtype (its f32 weight is cast on the way in, and the cast's backward returns f32 gradients to
/// the f32 master weight), element-wise ops, GELU and attention follow their inputs, while
/// [`LayerNorm`] and the losses compute in f32 (as PyTorch's autocast does). Parameters, their
/// gradients and the optimizer state stay f32.
pub struct ForwardCtx {
    pub train: bool,
    seed: u64,
    counter: Cell<u64>,
    compute: DType,
}

impl ForwardCtx {
    /// Inference: dropout off.
    pub fn eval() -> Self {
        ForwardCtx { train: false, seed: 0, counter: Cell::new(0), compute: DType::F32 }
    }
    /// Training with dropout seeds derived from `seed` (e.g. a hash of the run seed and the step).
    pub fn train(seed: u64) -> Self {
        ForwardCtx { train: true, seed, counter: Cell::new(0), compute: DType::F32 }
    }
    /// The same context computing activations in `dtype` (f32, bf16 or f16; see the type's docs).
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.compute = dtype;
        self
    }
    /// The dtype activations are computed in (f32 unless mixed precision is on).
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }
    /// `x` in the compute dtype (a no-op when it already is).
    pub fn to_compute(&self, x: &Tensor) -> Result<Tensor> {
        x.to_dtype(self.compute)
    }
    /// Runs the block `f` under [`kiln_tensor::checkpoint`] (activation recomputation): `f` gets
    /// the inputs and a context that continues this one's dropout seed stream; its recompute in
    /// the backward replays the same seeds (so the same dropout masks), and this context goes on
    /// after the seeds `f` drew. `f` must be a pure function of its inputs, its captures and the
    /// context (as the layers' `forward`s are).
    pub fn checkpoint<F>(&self, inputs: &[Tensor], f: F) -> Result<Tensor>
    where
        F: Fn(&[Tensor], &ForwardCtx) -> Result<Tensor> + Send + Sync + 'static,
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        let (train, seed, start, compute) = (self.train, self.seed, self.counter.get(), self.compute);
        let end = std::sync::Arc::new(AtomicU64::new(start));
        let seen = end.clone();
        let y = kiln_tensor::checkpoint(inputs, move |xs| {
            let ctx = ForwardCtx { train, seed, counter: Cell::new(start), compute };
            let y = f(xs, &ctx)?;
            seen.store(ctx.counter.get(), Ordering::Relaxed);
            Ok(y)
        })?;
        self.counter.set(end.load(Ordering::Relaxed));
        Ok(y)
    }
    /// A fresh seed from this context's stream (what dropout draws; ELECTRA's generator samples
    /// its replacements with one), so a step's draws are a function of (run seed, step).
    pub fn draw_seed(&self) -> u64 {
        self.next_seed()
    }
    fn next_seed(&self) -> u64 {
        let c = self.counter.get();
        self.counter.set(c + 1);
        self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(c.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x5851_F42D)
    }
}

/// Applies an activation (`hidden_act` / `activation_function` of the HF config).
pub fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    match act {
        Activation::Gelu => x.gelu(),
        Activation::GeluTanh => x.gelu_tanh(),
        Activation::Relu => x.relu(),
        Activation::Tanh => x.tanh(),
    }
}

/// `[B, T, C]` → `[B, C]`: position 0 of each row (the `[CLS]` / `<s>` token).
pub fn first_token(x: &Tensor) -> Result<Tensor> {
    x.narrow(1, 0, 1)?.squeeze(1)
}

/// `y = x W^T + b` (PyTorch `nn.Linear`, weight [out, in]) or, with `conv1d` layout, `y = x W + b`
/// (GPT-2's `Conv1D`, weight [in, out]).
#[derive(Clone)]
pub struct Linear {
    pub weight: Param,
    pub bias: Option<Param>,
    conv1d: bool,
}

impl Linear {
    /// An `nn.Linear` named `{name}.weight` / `{name}.bias`.
    pub fn new(ps: &ParamStore, name: &str, d_in: usize, d_out: usize, bias: bool, std: f64) -> Result<Self> {
        let weight = ps.get_or_init(&format!("{name}.weight"), &[d_out, d_in], Init::Normal { std })?;
        let bias = if bias { Some(ps.get_or_init(&format!("{name}.bias"), &[d_out], Init::Zeros)?) } else { None };
        Ok(Linear { weight, bias, conv1d: false })
    }
    /// A GPT-2 `Conv1D` (weight stored [in, out]).
    pub fn conv1d(ps: &ParamStore, name: &str, d_in: usize, d_out: usize, std: f64) -> Result<Self> {
        let weight = ps.get_or_init(&format!("{name}.weight"), &[d_in, d_out], Init::Normal { std })?;
        let bias = Some(ps.get_or_init(&format!("{name}.bias"), &[d_out], Init::Zeros)?);
        Ok(Linear { weight, bias, conv1d: true })
    }
    /// A bias-free projection onto a shared `[out, in]` matrix (LM heads tied to an embedding).
    pub fn tied(weight: &Param) -> Self {
        Linear { weight: weight.clone(), bias: None, conv1d: false }
    }
    /// Applies to the last dim of `x` ([..., in] → [..., out]) as one 2-D GEMM.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d_in = *x.shape().last().unwrap_or(&0);
        let lead: Vec<usize> = x.shape()[..x.rank().saturating_sub(1)].to_vec();
        let rows: usize = lead.iter().product();
        let x2 = x.reshape(&[rows, d_in])?;
        // mixed precision: the GEMM runs in the activations' dtype (a no-op cast in f32)
        let w = self.weight.tensor().to_dtype(x.dtype())?;
        let w = if self.conv1d { w } else { w.t()? };
        // one GEMM that adds the bias on its output tiles (composed matmul + add off the CPU fast path)
        let y = match &self.bias {
            Some(b) => x2.matmul_bias(&w, &b.tensor().to_dtype(x.dtype())?)?,
            None => x2.matmul(&w)?,
        };
        let mut shape = lead;
        shape.push(*y.shape().last().unwrap_or(&0));
        y.reshape(&shape)
    }
}

/// A lookup table `weight [num, dim]`.
#[derive(Clone)]
pub struct Embedding {
    pub weight: Param,
    /// Like PyTorch's `padding_idx`: this row gets no gradient (BERT's word embeddings).
    pub padding_idx: Option<i64>,
}

impl Embedding {
    pub fn new(ps: &ParamStore, name: &str, num: usize, dim: usize, std: f64) -> Result<Self> {
        Ok(Embedding { weight: ps.get_or_init(&format!("{name}.weight"), &[num, dim], Init::Normal { std })?, padding_idx: None })
    }
    /// ids (i64, any shape) → [..ids, dim]. Ids out of range are an error.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let e = Tensor::embedding(ids, &self.weight.tensor())?;
        match self.padding_idx {
            Some(pad) if e.requires_grad() => {
                // Same values; the padding positions take the detached copy, so no gradient reaches that row.
                let m = ids.eq_scalar(pad as f64)?.to_dtype(e.dtype())?.unsqueeze(ids.rank())?;
                e.sub(&e.mul(&m)?)?.add(&e.detach().mul(&m)?)
            }
            _ => Ok(e),
        }
    }
}

/// LayerNorm over the last dim with affine weight and bias.
#[derive(Clone)]
pub struct LayerNorm {
    pub weight: Param,
    pub bias: Param,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(ps: &ParamStore, name: &str, dim: usize, eps: f64) -> Result<Self> {
        let weight = ps.get_or_init(&format!("{name}.weight"), &[dim], Init::Ones)?;
        let bias = ps.get_or_init(&format!("{name}.bias"), &[dim], Init::Zeros)?;
        Ok(LayerNorm { weight, bias, eps })
    }
    /// Computes in the parameters' dtype (f32 master weights under mixed precision: half-precision
    /// inputs are upcast and the output cast back to their dtype; a no-op cast otherwise).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (self.weight.tensor(), self.bias.tensor());
        let y = x.to_dtype(w.dtype())?.layer_norm(Some(&w), Some(&b), self.eps)?;
        y.to_dtype(x.dtype())
    }
}

/// RMSNorm over the last dim with an elementwise weight (T5's and LLaMA's norm; `{name}.weight`
/// as transformers names it).
#[derive(Clone)]
pub struct RmsNorm {
    pub weight: Param,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(ps: &ParamStore, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm { weight: ps.get_or_init(&format!("{name}.weight"), &[dim], Init::Ones)?, eps })
    }
    /// Computes in the weight's dtype, as [`LayerNorm::forward`].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.tensor();
        x.to_dtype(w.dtype())?.rms_norm(Some(&w), self.eps)?.to_dtype(x.dtype())
    }
}

/// Dropout with probability `p`, active only in training contexts.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f64,
}

impl Dropout {
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        if !ctx.train || self.p == 0.0 {
            return Ok(x.clone());
        }
        x.dropout(self.p, ctx.next_seed(), true)
    }
}

/// Multi-head self-attention over the fused attention op. Projections are either three
/// `nn.Linear`s (BERT: query/key/value) or one fused `Conv1D` (GPT-2: c_attn).
#[derive(Clone)]
pub struct SelfAttention {
    pub qkv: QkvProj,
    pub out: Linear,
    pub n_head: usize,
    pub causal: bool,
    pub attn_dropout: Dropout,
}

/// How q, k, v are projected.
#[derive(Clone)]
pub enum QkvProj {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

impl SelfAttention {
    /// x [B, T, C] → q, k, v, each `[B, H, T, d]` (views of the projections; no copy).
    fn heads(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, c) = dims3(x)?;
        let (h, d) = (self.n_head, c / self.n_head);
        let (q, k, v) = match &self.qkv {
            QkvProj::Separate { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
            QkvProj::Fused(p) => {
                let qkv = p.forward(x)?;
                let parts = qkv.split(&[c, c, c], 2)?;
                (parts[0].clone(), parts[1].clone(), parts[2].clone())
            }
        };
        let heads = |z: &Tensor| -> Result<Tensor> { z.reshape(&[b, t, h, d])?.permute(&[0, 2, 1, 3]) };
        Ok((heads(&q)?, heads(&k)?, heads(&v)?))
    }

    /// y `[B, H, T, d]` → merged heads `[B, T, C]` → the output projection.
    fn merge(&self, y: &Tensor) -> Result<Tensor> {
        let (b, h, t, d) = (y.dim(0)?, y.dim(1)?, y.dim(2)?, y.dim(3)?);
        self.out.forward(&y.permute(&[0, 2, 1, 3])?.reshape(&[b, t, h * d])?)
    }

    /// x [B, T, C] (+ key padding mask [B, T], 1 = keep) → [B, T, C].
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, ctx: &ForwardCtx) -> Result<Tensor> {
        let (q, k, v) = self.heads(x)?;
        // attention-probability dropout inside the fused op, its mask seeded from the context's stream
        let p = self.attn_dropout.p;
        let dropout = (ctx.train && p > 0.0).then(|| AttnDropout { p, seed: ctx.next_seed() });
        let opts = AttentionOpts { causal: self.causal, key_padding_mask: mask.cloned(), scale: None, dropout };
        self.merge(&q.attention(&k, &v, &opts)?)
    }

    /// Inference with a key/value cache: x `[B, t, C]` holds the positions that follow the ones in
    /// `slot` (`None`: none yet). The new keys and values are appended to `slot`, and the new queries
    /// attend to all of its positions; causal attention needs `t == 1` once `slot` holds positions
    /// (the models' `forward_cached` feeds longer inputs one position at a time). No dropout.
    pub fn forward_cached(&self, x: &Tensor, slot: &mut Option<LayerKv>) -> Result<Tensor> {
        let (q, k, v) = self.heads(x)?;
        let (t, past) = (q.dim(2)?, slot.as_ref().map_or(0, LayerKv::len));
        if self.causal && past > 0 && t > 1 {
            return Err(kiln_tensor::Error::msg(format!("attention: a causal step after {past} cached positions takes one position at a time, got {t}")));
        }
        match slot {
            None => *slot = Some(LayerKv::new(&k, &v)?),
            Some(kv) => kv.append(&k, &v)?,
        }
        let kv = slot.as_ref().expect("filled above");
        // the first step is causal among its own positions; a later single query sees every key
        let opts = AttentionOpts { causal: self.causal && past == 0, key_padding_mask: None, scale: None, dropout: None };
        let y = q.attention(&kv.keys()?, &kv.values()?, &opts)?;
        self.merge(&y)
    }
}

/// One attention layer's cached keys and values (see [`KvCache`]): buffers `[B, H, capacity, d]`
/// of which the first `len` positions are filled. New positions are written in place (on the
/// CPU; see [`Tensor::assign_narrow`]) and the capacity doubles when full, so a step costs its own
/// positions, not a copy of the whole cache.
#[derive(Clone)]
pub struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl LayerKv {
    /// A slot holding `k`, `v` (`[B, H, t, d]`), with room for at least 16 positions.
    fn new(k: &Tensor, v: &Tensor) -> Result<Self> {
        let cap = k.dim(2)?.next_power_of_two().max(16);
        let mut kv = LayerKv { k: Self::buffer(k, cap)?, v: Self::buffer(v, cap)?, len: 0 };
        kv.append(k, v)?;
        Ok(kv)
    }
    /// An empty buffer like `x` (`[B, H, _, d]`) with `cap` positions.
    fn buffer(x: &Tensor, cap: usize) -> Result<Tensor> {
        let s = x.shape();
        if s.len() != 4 {
            return Err(kiln_tensor::Error::Shape { op: "kv cache", shape: s.to_vec(), msg: "keys and values are [B, H, T, d]".into() });
        }
        Tensor::zeros(&[s[0], s[1], cap, s[3]], x.dtype(), x.device())
    }
    /// Grows the buffers to at least `cap` positions, keeping the filled ones.
    fn reserve(&mut self, cap: usize) -> Result<()> {
        if cap <= self.capacity() {
            return Ok(());
        }
        for b in [&mut self.k, &mut self.v] {
            let nb = Self::buffer(b, cap)?;
            if self.len > 0 {
                nb.assign_narrow(2, 0, &b.narrow(2, 0, self.len)?)?;
            }
            *b = nb;
        }
        Ok(())
    }
    /// Appends `k`, `v` (`[B, H, t, d]`) after the filled positions.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let need = self.len + k.dim(2)?;
        if need > self.capacity() {
            self.reserve(need.max(2 * self.capacity()))?;
        }
        self.k.assign_narrow(2, self.len, k)?;
        self.v.assign_narrow(2, self.len, v)?;
        self.len = need;
        Ok(())
    }
    /// Forgets the positions from `len` on.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
    fn capacity(&self) -> usize {
        self.k.shape()[2]
    }
    /// Cached positions.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The cached keys, `[B, H, len, d]` (a view of the buffer).
    pub fn keys(&self) -> Result<Tensor> {
        self.k.narrow(2, 0, self.len)
    }
    /// The cached values, `[B, H, len, d]` (a view of the buffer).
    pub fn values(&self) -> Result<Tensor> {
        self.v.narrow(2, 0, self.len)
    }
    /// The batch size.
    pub fn batch(&self) -> usize {
        self.k.shape()[0]
    }
}

/// The keys and values a decoder has computed for the positions it has already seen, one slot per
/// layer. With it, generation feeds each new token alone (one row through every layer, attending
/// to the cached keys) instead of the whole sequence again. Made by the model
/// (`Gpt2Model::new_cache`); inference only (no autograd history is kept).
#[derive(Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<LayerKv>>,
}

impl KvCache {
    /// An empty cache for a model of `n_layer` attention layers.
    pub fn new(n_layer: usize) -> Self {
        KvCache { layers: vec![None; n_layer] }
    }
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|s| s.as_ref()).map_or(0, LayerKv::len)
    }
    /// True before the first step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The batch size of the cached positions (`None` when empty).
    pub fn batch(&self) -> Option<usize> {
        self.layers.first().and_then(|s| s.as_ref()).map(LayerKv::batch)
    }
    /// The number of positions each layer holds (to undo a failed step with [`KvCache::truncate`]).
    pub(crate) fn lens(&self) -> Vec<usize> {
        self.layers.iter().map(|s| s.as_ref().map_or(0, LayerKv::len)).collect()
    }
    /// Cuts every layer back to `lens` positions (from [`KvCache::lens`]).
    pub(crate) fn truncate(&mut self, lens: &[usize]) {
        for (s, &l) in self.layers.iter_mut().zip(lens) {
            match s {
                Some(kv) if l > 0 => kv.truncate(l),
                _ => *s = None,
            }
        }
    }
    /// Forgets every position (the next step starts at position 0).
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|s| *s = None);
    }
    /// The layers' slots.
    pub fn layers(&self) -> &[Option<LayerKv>] {
        &self.layers
    }
}

/// The GELU feed-forward: `down(act(up(x)))`.
#[derive(Clone)]
pub struct FeedForward {
    pub up: Linear,
    pub down: Linear,
    pub act: Activation,
}

impl FeedForward {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down.forward(&activate(self.act, &self.up.forward(x)?)?)
    }
}

/// (B, T, C) of a rank-3 tensor, or a shape error.
pub fn dims3(x: &Tensor) -> Result<(usize, usize, usize)> {
    match x.shape() {
        &[b, t, c] => Ok((b, t, c)),
        s => Err(kiln_tensor::Error::Shape { op: "dims3", shape: s.to_vec(), msg: "expected [batch, seq, hidden]".into() }),
    }
}
