//! `kiln embed`: sentence embeddings of a text file, one text per line, as sentence-transformers
//! computes them for the directory (see [`kiln::model::embed`]). Every line is a text, an empty
//! line included (it embeds as the empty string, `[CLS] [SEP]`, as sentence-transformers embeds
//! `""`), so row `i` of the output is line `i + 1` of the file; a final line break ends the last
//! line rather than adding an empty one. A file with no line holding more than white space is an
//! error.
use clap::Args;
use kiln::model::embed::{SentenceEncoder, DEFAULT_BATCH};
use kiln::model::limits;
use kiln::{Device, Error, Result, Tensor};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// A sentence-transformers directory (modules.json, pooling config, sentence_bert_config.json,
    /// config.json, model.safetensors, tokenizer.json) or a bare encoder directory (mean pooling).
    #[arg(long)]
    pub model: PathBuf,
    /// UTF-8 text, one text per line.
    #[arg(long)]
    pub texts: PathBuf,
    /// Safetensors file to write, with one tensor `embeddings` [N, dim] f32 (written atomically).
    #[arg(long, required_unless_present = "json")]
    pub out: Option<PathBuf>,
    /// Print one JSON array per text to stdout (in file order) instead of writing --out.
    #[arg(long)]
    pub json: bool,
    /// Texts per forward pass (texts are sorted by length first, so a batch pads little).
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The texts of `file`: its lines, or an error for a missing file, invalid UTF-8 or no text at all.
fn read_texts(file: &std::path::Path) -> Result<Vec<String>> {
    let text = kiln::model::io::read_input_text(file)?;
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.iter().all(|l| l.trim().is_empty()) {
        return Err(Error::msg(format!("{}: the texts file is empty (no line holds text)", file.display())));
    }
    Ok(lines)
}

pub fn run(a: EmbedArgs) -> Result<()> {
    let device: Device = a.device.parse()?;
    if a.batch == 0 {
        return Err(Error::msg("embed: --batch must be at least 1"));
    }
    if a.json && a.out.is_some() {
        return Err(Error::msg("embed: give either --out or --json, not both"));
    }
    if let Some(out) = &a.out {
        super::out_is_not_an_input(out, &[a.texts.clone()], &a.model)?;
    }
    let texts = read_texts(&a.texts)?;
    let enc = SentenceEncoder::from_dir(&a.model, device)?;
    // the batches hold at most --batch texts of at most max_seq_length tokens: checked before they run
    let (batch, seq) = (limits::Size::new("--batch", a.batch.min(texts.len())), limits::Size::new("max_seq_length", enc.max_seq_length));
    limits::check_on(&enc.model.cfg, &limits::Job::Infer { batch, seq }, device).map_err(|e| Error::msg(format!("embed: {e}")))?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batches = texts.len().div_ceil(a.batch);
    let bar = (batches > 4 && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(texts.len() as u64);
        if let Ok(s) = indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} texts (eta {eta})") {
            b.set_style(s);
        }
        b
    });
    let t0 = std::time::Instant::now();
    let emb = enc.embed_batched(&refs, a.batch, &mut |done, _| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let secs = t0.elapsed().as_secs_f64();
    let (n, d) = (texts.len(), enc.dim());
    match &a.out {
        Some(out) => {
            kiln::model::st_io::write_safetensors(out, &[("embeddings".to_string(), emb)], None, None)?;
            println!("wrote embeddings [{n}, {d}] to {}", out.display());
        }
        None => print_json(&emb, d)?,
    }
    // timings on stderr, so that stdout stays machine-readable
    let p = &enc.pipeline;
    let modes: Vec<&str> = p.pooling.modes().iter().map(|m| m.name()).collect();
    eprintln!(
        "embed: {n} texts in {secs:.2} s ({:.1} texts/s), pooling {}{}, max {} tokens, batch {}",
        n as f64 / secs.max(1e-9),
        modes.join("+"),
        if p.normalize { " + normalize" } else { "" },
        enc.max_seq_length,
        a.batch
    );
    Ok(())
}

fn print_json(emb: &Tensor, d: usize) -> Result<()> {
    let v = emb.to_vec::<f32>()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for row in v.chunks(d.max(1)) {
        let line = serde_json::to_string(row).map_err(|e| Error::msg(format!("embed: JSON: {e}")))?;
        // a closed pipe (`kiln embed --json | head`) ends the output, not the program with a panic
        if writeln!(out, "{line}").is_err() {
            return Ok(());
        }
    }
    let _ = out.flush();
    Ok(())
}
