//! A small custom transformer built from kiln's public layers, trained on a text file.
//!
//! ```sh
//! cargo run --release --example custom_transformer                      # tinyshakespeare if ../shared has it
//! cargo run --release --example custom_transformer -- my_text.txt --steps 500
//! ```
//!
//! It is a character-level language model, written here rather than taken from `kiln::model::gpt`:
//! token + learned position embeddings, pre-LN blocks (`nn::SelfAttention` with a fused QKV
//! projection and a causal mask, `nn::FeedForward`), a final `nn::LayerNorm` and an untied output
//! `nn::Linear`. The parameters live in a `ParamStore` (so the weights are saved by name), the
//! windows come from `data::CausalLmBatcher`, and the update is AdamW with warm-up + cosine decay
//! and global-norm clipping. It prints the training loss as it falls, the held-out loss before and
//! after, and a sampled continuation.
use clap::Parser;
use kiln::model::config::Activation;
use kiln::model::data::CausalLmBatcher;
use kiln::model::nn::{dims3, Dropout, Embedding, FeedForward, ForwardCtx, LayerNorm, Linear, QkvProj, SelfAttention};
use kiln::model::sched::{Decay, LrSchedule};
use kiln::model::{clip_grad_norm, AdamW, AdamWConfig, Optimizer, ParamStore};
use kiln::tensor::no_grad;
use kiln::{DType, Device, Error, Result, Tensor};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(about = "Train a small custom character-level transformer on a text file")]
pub struct Args {
    /// A UTF-8 text file (default: ../shared/data/tinyshakespeare.txt if present, else a built-in text).
    pub file: Option<PathBuf>,
    /// Same as the positional FILE.
    #[arg(long, conflicts_with = "file")]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 400)]
    pub steps: u64,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 96)]
    pub dim: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Print the training loss every N steps.
    #[arg(long, default_value_t = 25)]
    pub log_every: u64,
    /// Characters of sampled text printed at the end.
    #[arg(long, default_value_t = 200)]
    pub sample: usize,
}

/// What a run produced (the losses are what the example prints).
pub struct Summary {
    pub losses: Vec<(u64, f64)>,
    pub eval_before: f64,
    pub eval_after: f64,
    pub vocab: usize,
    pub sample: String,
}

const BUILTIN: &str = "The quick brown fox jumps over the lazy dog. A small model learns which letter tends to follow which, \
then which words follow which. The more text it reads, the lower its loss becomes. Every line of this little \
text is read many times, so the model soon knows it almost by heart.\n";

/// One pre-LN block: `x + attn(ln1(x))`, then `+ mlp(ln2(x))`.
struct Block {
    ln1: LayerNorm,
    attn: SelfAttention,
    ln2: LayerNorm,
    mlp: FeedForward,
}

/// The whole model; every weight is a `Param` in the store, named like `blocks.0.attn.qkv.weight`.
struct TinyLm {
    tok: Embedding,
    pos: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Linear,
}

impl TinyLm {
    fn new(ps: &ParamStore, vocab: usize, max_t: usize, d: usize, layers: usize, heads: usize) -> Result<TinyLm> {
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(Error::msg(format!("--dim {d} must be a positive multiple of --heads {heads}")));
        }
        let std = 0.02;
        let proj_std = std / (2.0 * layers as f64).sqrt();
        let blocks = (0..layers)
            .map(|i| {
                let p = format!("blocks.{i}");
                Ok(Block {
                    ln1: LayerNorm::new(ps, &format!("{p}.ln1"), d, 1e-5)?,
                    attn: SelfAttention {
                        qkv: QkvProj::Fused(Linear::new(ps, &format!("{p}.attn.qkv"), d, 3 * d, true, std)?),
                        out: Linear::new(ps, &format!("{p}.attn.out"), d, d, true, proj_std)?,
                        n_head: heads,
                        causal: true,
                        attn_dropout: Dropout { p: 0.0 },
                    },
                    ln2: LayerNorm::new(ps, &format!("{p}.ln2"), d, 1e-5)?,
                    mlp: FeedForward {
                        up: Linear::new(ps, &format!("{p}.mlp.up"), d, 4 * d, true, std)?,
                        down: Linear::new(ps, &format!("{p}.mlp.down"), 4 * d, d, true, proj_std)?,
                        act: Activation::GeluTanh,
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(TinyLm {
            tok: Embedding::new(ps, "tok_emb", vocab, d, std)?,
            pos: Embedding::new(ps, "pos_emb", max_t, d, std)?,
            blocks,
            ln_f: LayerNorm::new(ps, "ln_f", d, 1e-5)?,
            head: Linear::new(ps, "head", d, vocab, false, std)?,
        })
    }

    /// ids [B, T] (i64) → logits [B, T, V].
    fn forward(&self, ids: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let t = ids.shape()[1];
        let pos = Tensor::arange(0.0, t as f64, 1.0, DType::I64, ids.device())?;
        let mut x = self.tok.forward(ids)?.add(&self.pos.forward(&pos)?)?;
        for b in &self.blocks {
            x = x.add(&b.attn.forward(&b.ln1.forward(&x)?, None, ctx)?)?;
            x = x.add(&b.mlp.forward(&b.ln2.forward(&x)?)?)?;
        }
        self.head.forward(&self.ln_f.forward(&x)?)
    }

    /// Mean next-character cross-entropy of a batch.
    fn loss(&self, ids: &Tensor, labels: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let logits = self.forward(ids, ctx)?;
        let (b, t, v) = dims3(&logits)?;
        logits.reshape(&[b * t, v])?.cross_entropy(&labels.contiguous()?.reshape(&[b * t])?, -100)
    }
}

/// The default data file: tinyshakespeare next to the repository, looked up from the working
/// directory and from this crate's directory.
fn default_data() -> Option<PathBuf> {
    let rel = Path::new("../shared/data/tinyshakespeare.txt");
    [rel.to_path_buf(), Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)].into_iter().find(|p| p.is_file())
}

fn mean_loss(m: &TinyLm, data: &mut CausalLmBatcher, n: usize) -> Result<f64> {
    let ctx = ForwardCtx::eval();
    let mut total = 0.0;
    for _ in 0..n {
        let b = data.next_batch()?;
        total += no_grad(|| m.loss(&b.input_ids, &b.labels, &ctx))?.to_scalar()?;
    }
    Ok(total / n as f64)
}

/// Samples `n` characters after `prompt` (temperature 0.8, seeded), feeding the last `max_t`.
fn sample(m: &TinyLm, chars: &[char], prompt: &[u32], n: usize, max_t: usize, seed: u64) -> Result<String> {
    let mut ids: Vec<i64> = prompt.iter().map(|&i| i as i64).collect();
    let mut state = seed | 1;
    let ctx = ForwardCtx::eval();
    for _ in 0..n {
        let w = &ids[ids.len().saturating_sub(max_t)..];
        let logits = no_grad(|| m.forward(&Tensor::from_vec(w.to_vec(), &[1, w.len()])?, &ctx))?;
        let last = logits.narrow(1, w.len() - 1, 1)?.to_dtype(DType::F64)?.to_vec::<f64>()?;
        let mx = last.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let p: Vec<f64> = last.iter().map(|&l| ((l - mx) / 0.8).exp()).collect();
        // xorshift: a tiny seeded generator is enough to pick from the distribution.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut u = (state >> 11) as f64 / (1u64 << 53) as f64 * p.iter().sum::<f64>();
        let mut next = p.len() - 1;
        for (i, &pi) in p.iter().enumerate() {
            if u < pi {
                next = i;
                break;
            }
            u -= pi;
        }
        ids.push(next as i64);
    }
    Ok(ids[prompt.len()..].iter().map(|&i| chars[i as usize]).collect())
}

pub fn run(a: &Args) -> Result<Summary> {
    if a.batch == 0 || a.seq < 2 || a.steps == 0 || a.dim == 0 || a.layers == 0 {
        return Err(Error::msg("--batch, --steps, --dim and --layers must be positive and --seq at least 2"));
    }
    let path = a.file.clone().or_else(|| a.data.clone()).or_else(default_data);
    let text = match &path {
        Some(p) => kiln::model::data::read_text(p)?,
        None => BUILTIN.repeat(40),
    };
    // A character vocabulary; the last 10% of the text is held out.
    let chars: Vec<char> = text.chars().collect::<BTreeSet<_>>().into_iter().collect();
    let ids: Vec<u32> = text.chars().map(|c| chars.binary_search(&c).unwrap_or(0) as u32).collect();
    let cut = ids.len() * 9 / 10;
    let (train, held) = ids.split_at(cut);
    if held.len() < a.seq + 1 {
        return Err(Error::msg(format!("the text has {} characters: too short for --seq {} (need about {})", ids.len(), a.seq, 10 * (a.seq + 1))));
    }
    let mut data = CausalLmBatcher::new(train.to_vec(), a.batch, a.seq, a.seed)?;
    let mut eval = CausalLmBatcher::new(held.to_vec(), a.batch, a.seq, a.seed ^ 1)?;
    let eval_pos = eval.position();

    let store = ParamStore::new(a.seed, DType::F32, Device::Cpu);
    let model = TinyLm::new(&store, chars.len(), a.seq, a.dim, a.layers, a.heads)?;
    let params = store.trainable();
    let mut opt = AdamW::new(AdamWConfig { lr: a.lr, weight_decay: 0.01, ..Default::default() });
    let sched = LrSchedule { peak_lr: a.lr, min_lr: a.lr * 0.1, warmup_steps: (a.steps / 10).min(20), total_steps: a.steps, decay: Decay::Cosine };
    let src = path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the built-in text".into());
    println!("custom transformer: {} layers, dim {}, {} heads, {} params; {} characters ({} distinct) from {src}", a.layers, a.dim, a.heads, store.num_params(), ids.len(), chars.len());

    let eval_before = mean_loss(&model, &mut eval, 4)?;
    println!("held-out loss before training: {eval_before:.4} (uniform guess: ln {} = {:.4})", chars.len(), (chars.len() as f64).ln());
    let mut losses = Vec::new();
    let t0 = std::time::Instant::now();
    for step in 0..a.steps {
        let b = data.next_batch()?;
        let loss = model.loss(&b.input_ids, &b.labels, &ForwardCtx::train(step))?;
        let l = loss.to_scalar()?;
        if !l.is_finite() {
            return Err(Error::msg(format!("the loss became {l} at step {}; try a lower --lr", step + 1)));
        }
        loss.backward()?;
        clip_grad_norm(&params, 1.0)?;
        opt.set_lr(sched.lr_at(step));
        no_grad(|| opt.step(&params))?;
        store.zero_grad();
        losses.push((step + 1, l));
        if step == 0 || (step + 1) % a.log_every.max(1) == 0 || step + 1 == a.steps {
            println!("step {:>4}  loss {l:.4}  lr {:.2e}  {:.1} s", step + 1, sched.lr_at(step), t0.elapsed().as_secs_f64());
        }
    }
    eval.set_position(&eval_pos)?;
    let eval_after = mean_loss(&model, &mut eval, 4)?;
    println!("held-out loss after {} steps: {eval_after:.4} (before: {eval_before:.4})", a.steps);
    let prompt = &held[..a.seq.min(16)];
    let text = sample(&model, &chars, prompt, a.sample, a.seq, a.seed)?;
    let shown: String = prompt.iter().map(|&i| chars[i as usize]).collect();
    println!("sample:\n{shown}{text}");
    Ok(Summary { losses, eval_before, eval_after, vocab: chars.len(), sample: text })
}

#[allow(dead_code)] // the tests include this file and call `run`
fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
