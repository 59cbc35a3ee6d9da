//! Load a GPT-2 checkpoint directory and continue a prompt, greedily and with seeded top-k sampling.
//!
//! ```sh
//! cargo run --release --example gpt2_generate                                   # tests/fixtures/gpt2_lm (random weights, ids only)
//! cargo run --release -- train && cargo run --release --example gpt2_generate -- out/run --prompt "The baker"
//! cargo run --release --example gpt2_generate -- DIR --prompt-ids 5,17,3 --top-k 10 --seed 3
//! ```
//!
//! With a `tokenizer.json` in the directory the prompt is text and the output is decoded; without
//! one (like the HF-parity fixture) the prompt is a list of token ids and ids are printed.
use clap::Parser;
use kiln::model::generate::SampleOptions;
use kiln::model::model::LoadedModel;
use kiln::model::tokenize::{decode_ids, encode_ids, SpecialIds};
use kiln::{Device, Error, Result};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(about = "Generate from a GPT-2 checkpoint directory (greedy and top-k)")]
pub struct Args {
    /// A GPT-2 checkpoint directory (default: tests/fixtures/gpt2_lm).
    pub model: Option<PathBuf>,
    /// Prompt text (needs a tokenizer.json in the directory).
    #[arg(long, default_value = "The")]
    pub prompt: String,
    /// Prompt token ids, comma- or space-separated (default when there is no tokenizer: 1,2,3).
    #[arg(long)]
    pub prompt_ids: Option<String>,
    #[arg(long, default_value_t = 24)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// What a run produced: the full id sequences (prompt included).
pub struct Summary {
    pub prompt: Vec<i64>,
    pub greedy: Vec<i64>,
    pub top_k: Vec<i64>,
    pub vocab: usize,
}

fn default_model_dir() -> Option<PathBuf> {
    let rel = Path::new("tests/fixtures/gpt2_lm");
    [rel.to_path_buf(), Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)].into_iter().find(|p| p.join("config.json").is_file())
}

fn parse_ids(s: &str) -> Result<Vec<i64>> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<i64>().map_err(|_| Error::msg(format!("--prompt-ids: '{t}' is not a token id"))))
        .collect()
}

pub fn run(a: &Args) -> Result<Summary> {
    if a.temperature.is_nan() || a.temperature <= 0.0 {
        return Err(Error::msg(format!("--temperature must be > 0 (got {}): it scales the top-k sampling; the greedy continuation is always printed", a.temperature)));
    }
    let dir = a.model.clone().or_else(default_model_dir).ok_or_else(|| Error::msg("no model directory given and tests/fixtures/gpt2_lm not found; pass one"))?;
    let l = LoadedModel::from_dir(&dir, 0, Device::Cpu)?;
    let gpt = l.model.as_causal_lm()?;
    let tok = l.tokenizer.as_ref();
    let prompt = match (&a.prompt_ids, tok) {
        (Some(s), _) => parse_ids(s)?,
        (None, Some(t)) => encode_ids(t, &a.prompt)?,
        (None, None) => vec![1, 2, 3],
    };
    // Text when a tokenizer is there, else the ids.
    let show = |ids: &[i64]| -> Result<String> {
        match tok {
            Some(t) => decode_ids(t, ids).map(|s| format!("{s:?}")),
            None => Ok(format!("{ids:?}")),
        }
    };
    let eos = tok.and_then(|t| SpecialIds::of(t).eot).map(|i| i as i64);
    println!("{}: GPT-2, {} layers, vocab {}{}", dir.display(), l.cfg.num_layers(), l.cfg.vocab_size(), if tok.is_some() { "" } else { " (no tokenizer.json: token ids)" });
    println!("prompt: {}", show(&prompt)?);
    let base = SampleOptions { max_new_tokens: a.max_new_tokens, seed: a.seed, eos, ..Default::default() };
    let greedy = gpt.generate(&prompt, &base)?;
    println!("greedy: {}", show(&greedy[prompt.len()..])?);
    let sampled = SampleOptions { temperature: a.temperature, top_k: a.top_k, ..base };
    let top_k = gpt.generate(&prompt, &sampled)?;
    println!("top-{} (temperature {}, seed {}): {}", a.top_k, a.temperature, a.seed, show(&top_k[prompt.len()..])?);
    // The same seed gives the same continuation.
    if gpt.generate(&prompt, &sampled)? != top_k {
        return Err(Error::msg("sampling with the same seed gave a different continuation"));
    }
    Ok(Summary { prompt, greedy, top_k, vocab: l.cfg.vocab_size() })
}

#[allow(dead_code)] // the tests include this file and call `run`
fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
