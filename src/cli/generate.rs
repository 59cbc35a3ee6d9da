//! `kiln generate`: greedy or sampled continuation from a GPT-2 checkpoint.
use clap::Args;
use kiln::model::generate::SampleOptions;
use kiln::model::tokenize;
use kiln::{DType, Device, Error, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 50)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: keep the most likely tokens holding this much probability, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The weights' dtype for generation: f32 (as stored in the checkpoint) or bf16 (half the
    /// memory; each token reads half the bytes).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let device: Device = a.device.parse()?;
    let opts = SampleOptions { max_new_tokens: a.max_new_tokens, temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed, eos: None };
    opts.check()?; // before loading the model
    let dtype: DType = a.dtype.parse()?;
    if dtype != DType::F32 && dtype != DType::BF16 {
        return Err(Error::msg(format!("generate: --dtype must be f32 or bf16, got {dtype}")));
    }
    let l = kiln::model::model::LoadedModel::from_dir_as(&a.model, 0, device, dtype)?;
    let m = l.model.as_causal_lm().map_err(|e| Error::msg(format!("generate: {e}")))?;
    let tok = l.tokenizer.ok_or_else(|| Error::msg(format!("generate: no tokenizer.json in {}", a.model.display())))?;
    let prompt = tokenize::encode_ids(&tok, &a.prompt)?;
    // past the context the window would slide, recomputed every token: a huge --max-new-tokens
    // would then run for hours before printing anything
    let context = m.transformer.cfg.n_positions;
    if prompt.len() + a.max_new_tokens > context {
        return Err(Error::msg(format!(
            "generate: {} prompt tokens + --max-new-tokens {} exceed the model's context of {context} positions (at most {} new tokens fit)",
            prompt.len(),
            a.max_new_tokens,
            context.saturating_sub(prompt.len())
        )));
    }
    let eos = tokenize::SpecialIds::of(&tok).eot.map(|i| i as i64);
    let t0 = std::time::Instant::now();
    let ids = m.generate(&prompt, &SampleOptions { eos, ..opts })?;
    let (secs, new) = (t0.elapsed().as_secs_f64(), ids.len() - prompt.len());
    println!("{}", tokenize::decode_ids(&tok, &ids)?);
    // timings on stderr, so stdout is only the text
    eprintln!("generate: {} prompt tokens, {new} new in {secs:.2} s ({:.1} tokens/s, prefill included)", prompt.len(), new as f64 / secs.max(1e-9));
    Ok(())
}
