//! `kiln eval`: mean loss and perplexity of a checkpoint over a text file (causal LM or MLM).
use clap::Args;
use kiln::model::data::{encode_documents, encode_stream, BertBatcher, CausalLmBatcher};
use kiln::model::limits;
use kiln::model::tokenize::SpecialIds;
use kiln::model::trainer::BatchSource;
use kiln::{Device, Error, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
    /// Batches to average over.
    #[arg(long, default_value_t = 16)]
    pub batches: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.batches == 0 || a.batch == 0 {
        return Err(Error::msg("eval: --batches and --batch must be at least 1"));
    }
    let device: Device = a.device.parse()?;
    kiln::tensor::cuda::check_device(device)?;
    // the sizes are checked before the model is loaded or a batch drawn
    if a.model.is_dir() {
        let cfg = kiln::model::config::ModelConfig::load(a.model.join("config.json"))?;
        let (batch, seq) = (limits::Size::new("--batch", a.batch), limits::Size::new("--seq", a.seq));
        limits::check_positions(&cfg, seq).map_err(|e| Error::msg(format!("eval: {e}")))?;
        limits::check_on(&cfg, &limits::Job::Infer { batch, seq }, device).map_err(|e| Error::msg(format!("eval: {e}")))?;
    }
    let l = super::load_model_dir(&a.model, 0, device)?;
    let tok = l.tokenizer.as_ref().ok_or_else(|| Error::msg(format!("eval: no tokenizer.json in {}", a.model.display())))?;
    let text = kiln::model::data::read_text(&a.data)?;
    let mut src: Box<dyn BatchSource> = match l.cfg.family().is_decoder() {
        true => Box::new(CausalLmBatcher::new(encode_stream(tok, &text, SpecialIds::of(tok).eot)?, a.batch, a.seq, 0)?),
        false => Box::new(BertBatcher::new(encode_documents(tok, &text)?, &SpecialIds::of(tok), l.cfg.vocab_size(), a.batch, a.seq, 0, l.model.is_pretraining())?),
    };
    let trainer = kiln::model::trainer::Trainer { cfg: l.cfg.clone(), store: l.store.clone(), model: l.model, tokenizer: None, optimizer: kiln::model::AdamW::new(Default::default()), step: 0, losses: vec![], evals: vec![], scaler: Default::default(), run_id: String::new(), extra: Default::default(), objective: Box::new(kiln::model::objective::ModelLoss) };
    let loss = trainer.evaluate(src.as_mut(), a.batches)?;
    println!("{}", serde_json::json!({"loss": loss, "perplexity": loss.exp(), "batches": a.batches}));
    Ok(())
}
