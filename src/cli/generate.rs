//! `kiln generate`: greedy or sampled continuation from a GPT-2 checkpoint.
use clap::Args;
use kiln::model::gpt::SampleOptions;
use kiln::model::model::Model;
use kiln::{Device, Error, Result};
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
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let device: Device = a.device.parse()?;
    let l = super::load_model_dir(&a.model, 0, device)?;
    let Model::Gpt2(m) = &l.model else {
        return Err(Error::msg("generate: the model is not a GPT-2 (causal LM)"));
    };
    let tok = l.tokenizer.ok_or_else(|| Error::msg(format!("generate: no tokenizer.json in {}", a.model.display())))?;
    let enc = tok.encode(a.prompt.as_str(), false).map_err(|e| Error::msg(format!("tokenizer: {e}")))?;
    let prompt: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
    let eos = kiln::model::tokenize::SpecialIds::of(&tok).eot.map(|i| i as i64);
    let ids = m.generate(&prompt, &SampleOptions { max_new_tokens: a.max_new_tokens, temperature: a.temperature, top_k: a.top_k, seed: a.seed, eos })?;
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    println!("{}", tok.decode(&ids, true).map_err(|e| Error::msg(format!("tokenizer: {e}")))?);
    Ok(())
}
