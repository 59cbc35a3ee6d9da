//! Training-step rows of `kiln bench`: one full step (forward, backward, AdamW) of a GPT-2-style
//! causal LM and a BERT-style MLM at batch × seq, as scripts/torch_bench.py runs them in PyTorch
//! (same configs, dropout off, AdamW lr 1e-4 wd 0.01, no clipping), taken by `kiln train`'s own
//! loop ([`Trainer::run`]). FLOPs: 6·P·tokens + 12·L·T·d·tokens.
//! Peak memory: the process's resident high-water mark (VmHWM), reset before the row where Linux
//! allows it (`/proc/self/clear_refs`), and the device allocator's peak on CUDA.
use super::harness::{Stats, Work};
use super::row::Row;
use crate::model::config::{DecoderConfig, EncoderConfig, ModelConfig};
use crate::model::family::{Family, FAMILIES};
use crate::model::data::{Batch, DataPosition};
use crate::model::sched::LrSchedule;
use crate::model::trainer::{BatchSource, StepLog, TrainObserver, TrainOptions, Trainer};
use crate::model::{AdamWConfig, ParamStore};
use crate::tensor::{cuda, nvtx};
use crate::{DType, Device, Error, Result, Tensor};

/// The step configs: (op, config, layers, width).
pub fn configs(quick: bool) -> Result<Vec<(&'static str, ModelConfig)>> {
    let (l, d, h, v, ffn) = if quick { (1, 32, 2, 512, 64) } else { (4, 256, 4, 8192, 1024) };
    let mut g = DecoderConfig::defaults(Family::Gpt2);
    (g.n_layer, g.n_embd, g.n_head, g.vocab_size, g.n_positions) = (l, d, h, v, 128);
    (g.resid_pdrop, g.embd_pdrop, g.attn_pdrop) = (0.0, 0.0, 0.0);
    (g.bos_token_id, g.eos_token_id) = (Some(0), Some(0)); // as torch_bench.py (the default 50256 is past a small vocab)
    let mut b = EncoderConfig::defaults(Family::Bert);
    (b.num_hidden_layers, b.hidden_size, b.num_attention_heads, b.intermediate_size, b.vocab_size) = (l, d, h, ffn, v);
    (b.hidden_dropout_prob, b.attention_probs_dropout_prob) = (0.0, 0.0);
    Ok(vec![("train_step_gpt", ModelConfig::Decoder(g)), ("train_step_bert", ModelConfig::Encoder(b))])
}

/// A seeded batch on the host: GPT labels are the next tokens; BERT labels every ~7th position (-100 elsewhere).
fn batch(cfg: &ModelConfig, b: usize, t: usize) -> Result<Batch> {
    let v = cfg.vocab_size() as u64;
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % v) as i64
    };
    let ids: Vec<i64> = (0..b * (t + 1)).map(|_| next()).collect();
    let (inp, lab): (Vec<i64>, Vec<i64>) = match cfg {
        ModelConfig::Decoder(_) => ids.chunks(t + 1).flat_map(|r| (0..t).map(move |i| (r[i], r[i + 1]))).unzip(),
        ModelConfig::Encoder(_) => ids.chunks(t + 1).flat_map(|r| (0..t).map(move |i| (r[i], if (i * 7 + 3) % 20 < 3 { r[i] } else { -100 }))).unzip(),
    };
    Ok(Batch {
        input_ids: Tensor::from_vec(inp, &[b, t])?,
        labels: Tensor::from_vec(lab, &[b, t])?,
        attention_mask: Tensor::from_vec(vec![1i64; b * t], &[b, t])?,
        token_type_ids: Tensor::from_vec(vec![0i64; b * t], &[b, t])?,
        next_sentence_label: None,
    })
}

/// Resets the resident-set high-water mark (Linux ≥ 4.0); false where it cannot.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// VmHWM in MB, where /proc has it.
fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

/// One training-step row to measure.
pub struct StepSpec {
    pub op: &'static str,
    pub cfg: ModelConfig,
    pub batch: usize,
    pub seq: usize,
    /// f32, or bf16 for mixed precision.
    pub compute: DType,
}

/// The training-step rows of a run: the small f32 configs of [`configs`] at 8 × 128 (2 × 16 when
/// `quick`) and the same in bf16 mixed precision when `quick` (so the CI run covers that path);
/// on CUDA also the issue-6 rows, as torch_bench.py runs them: GPT-2 124M at `gpt_batch` × 1024
/// and BERT-base (MLM) at 32 × 128, in bf16 mixed precision.
pub fn specs(device: Device, quick: bool, gpt_batch: usize) -> Result<Vec<StepSpec>> {
    let (b, t) = if quick { (2, 16) } else { (8, 128) };
    let mut out: Vec<StepSpec> = configs(quick)?.into_iter().map(|(op, cfg)| StepSpec { op, cfg, batch: b, seq: t, compute: DType::F32 }).collect();
    if quick {
        out.extend(configs(true)?.into_iter().map(|(op, cfg)| StepSpec { op, cfg, batch: b, seq: t, compute: DType::BF16 }));
    } else if device != Device::Cpu {
        let mut gpt = ModelConfig::preset("gpt2")?;
        let mut bert = ModelConfig::preset("bert-base")?;
        if let ModelConfig::Decoder(g) = &mut gpt {
            (g.resid_pdrop, g.embd_pdrop, g.attn_pdrop) = (0.0, 0.0, 0.0);
        }
        if let ModelConfig::Encoder(c) = &mut bert {
            (c.hidden_dropout_prob, c.attention_probs_dropout_prob) = (0.0, 0.0);
        }
        out.push(StepSpec { op: "train_step_gpt", cfg: gpt, batch: gpt_batch.max(1), seq: 1024, compute: DType::BF16 });
        out.push(StepSpec { op: "train_step_bert", cfg: bert, batch: 32, seq: 128, compute: DType::BF16 });
    }
    Ok(out)
}

/// The family rows (`family_step_<model_type>`): every member's pre-training model (a masked LM,
/// or a causal LM for GPT-1 / GPT-2) at one size, so that a slow path in one member shows against
/// kiln's BERT of the same size: BERT-base (12 layers × 768, 12 heads, FFN 3072, vocabulary 30522,
/// ALBERT's embeddings 128 wide as in albert-base, DistilBERT with 12 layers rather than its 6)
/// (the decoders' FFN is 4 × 768 = 3072 too) at 2 × 128 in f32, dropout off; a one-layer width-32 model at 2 × 16 when `quick`.
pub fn family_specs(quick: bool) -> Result<Vec<StepSpec>> {
    let (l, d, h, ffn, v, b, t) = if quick { (1, 32, 2, 64, 256, 2, 16) } else { (12, 768, 12, 3072, 30522, 2, 128) };
    let mut out = Vec::new();
    for (op, f) in FAMILY_OPS.iter().zip(FAMILIES) {
        let mut j = match f {
            Family::DistilBert => serde_json::json!({"dim": d, "n_layers": l, "n_heads": h, "hidden_dim": ffn, "dropout": 0.0, "attention_dropout": 0.0}),
            Family::OpenAiGpt | Family::Gpt2 => serde_json::json!({"n_embd": d, "n_layer": l, "n_head": h, "n_positions": 512,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "bos_token_id": 0, "eos_token_id": 0}),
            _ => serde_json::json!({"hidden_size": d, "num_hidden_layers": l, "num_attention_heads": h, "intermediate_size": ffn,
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}),
        };
        j["model_type"] = f.model_type().into();
        j["vocab_size"] = v.into();
        match f {
            Family::Roberta => j["max_position_embeddings"] = 514.into(),
            Family::Albert => (j["embedding_size"], j["hidden_act"]) = ((if quick { 16 } else { 128 }).into(), "gelu_new".into()),
            Family::Electra => j["embedding_size"] = d.into(),
            _ => {}
        }
        let cfg = ModelConfig::from_json_str(&j.to_string(), op)?;
        out.push(StepSpec { op, cfg, batch: b, seq: t, compute: DType::F32 });
    }
    Ok(out)
}

/// The op names of [`family_specs`], in [`FAMILIES`] order.
pub const FAMILY_OPS: [&str; 7] =
    ["family_step_bert", "family_step_roberta", "family_step_albert", "family_step_distilbert", "family_step_electra", "family_step_openai-gpt", "family_step_gpt2"];

/// Dense bf16 tensor-core peak (TFLOP/s, from the vendor's data sheet) of a GPU named `name`, for
/// the model-FLOPs utilisation of mixed-precision steps; `None` for GPUs not in the table.
pub fn bf16_peak_tflops(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    // H200 and H100 SXM: 989.4 (1979 with 2:4 sparsity); H100 PCIe: 756; A100: 312.
    if n.contains("H200") || (n.contains("H100") && !n.contains("PCIE")) {
        Some(989.4)
    } else if n.contains("H100") {
        Some(756.0)
    } else if n.contains("A100") {
        Some(312.0)
    } else {
        None
    }
}

/// Times `steps` training steps after 2 warm-up steps; one row per spec of [`specs`].
pub fn rows(device: Device, quick: bool, steps: usize, gpt_batch: usize, filter: &dyn Fn(&str) -> bool) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for spec in specs(device, quick, gpt_batch)?.into_iter().chain(family_specs(quick)?) {
        if !filter(spec.op) {
            continue;
        }
        let mut row = Row::new(spec.op, "kiln", device, spec.compute, &format!("{}x{}", spec.batch, spec.seq), false);
        if spec.compute != DType::F32 {
            // mixed precision (f32 master weights), named as torch_bench.py names its autocast rows
            row.relabel_dtype(&format!("{}-autocast", spec.compute.as_str()));
        }
        if let Err(e) = step_row(&spec, device, steps, &mut row) {
            row.status = format!("error: {e}");
        }
        out.push(row);
    }
    Ok(out)
}

/// One model, its optimizer and a fixed batch, ready to take training steps through
/// [`Trainer::run`], the loop `kiln train` runs: one code path, so this row and `kiln train`'s
/// `step_ms` time the same work (here without clipping, as scripts/torch_bench.py's loop).
pub struct TrainStep {
    trainer: Trainer<'static>,
    data: FixedBatch,
    opts: TrainOptions,
    /// Parameters (tied weights counted once).
    pub n_params: usize,
    /// FLOPs of one step: 6·P·tokens + 12·L·T·d·tokens.
    pub flops: f64,
    /// Tokens per step.
    pub tokens: usize,
}

/// The same batch every step.
struct FixedBatch(Batch);

impl BatchSource for FixedBatch {
    fn next_batch(&mut self) -> Result<Batch> {
        Ok(self.0.clone())
    }
    fn position(&self) -> DataPosition {
        DataPosition::default()
    }
    fn set_position(&mut self, _p: &DataPosition) -> Result<()> {
        Ok(())
    }
}

/// Keeps the last logged step.
struct LastStep(Option<StepLog>);

impl TrainObserver for LastStep {
    fn on_step(&mut self, log: &StepLog) {
        self.0 = Some(*log);
    }
}

impl TrainStep {
    /// A freshly initialised model for `cfg` on `device` with a seeded `[b, t]` batch; `compute`
    /// is f32, or bf16 / f16 for mixed precision (f32 master weights and optimizer state).
    pub fn new(cfg: &ModelConfig, device: Device, b: usize, t: usize, compute: DType) -> Result<TrainStep> {
        let adamw = AdamWConfig { lr: 1e-4, weight_decay: 0.01, ..Default::default() };
        let trainer = Trainer::new(cfg.clone(), ParamStore::new(0, DType::F32, device), None, adamw)?;
        let n_params: usize = trainer.store.trainable().iter().map(|p| p.elem_count()).sum();
        let tokens = b * t;
        let (layers, width) = (cfg.num_layers() as f64, cfg.hidden_size() as f64);
        let flops = 6.0 * n_params as f64 * tokens as f64 + 12.0 * layers * t as f64 * width * tokens as f64;
        let opts = TrainOptions {
            steps: 0,
            schedule: LrSchedule::constant(adamw.lr),
            adamw,
            clip: 0.0,
            accum: 1,
            seed: 0,
            eval_every: 0,
            eval_batches: 1,
            ckpt_every: 0,
            out: None,
            keep: 0,
            overwrite: false,
            compute_dtype: compute,
        };
        // on the host, uploaded by the trainer each step, as `kiln train` does
        Ok(TrainStep { trainer, data: FixedBatch(batch(cfg, b, t)?), opts, n_params, flops, tokens })
    }

    /// Activation recomputation on or off for the next steps (`kiln train --recompute`).
    pub fn set_recompute(&mut self, on: bool) {
        self.trainer.model.set_recompute(on);
    }

    /// One update (forward, backward, AdamW, gradients zeroed) through [`Trainer::run`]; returns
    /// the loss (a non-finite one is the trainer's error).
    pub fn step(&mut self) -> Result<f64> {
        let _step = nvtx::range("train_step");
        self.opts.steps = self.trainer.step + 1;
        let mut last = LastStep(None);
        self.trainer.run(&self.opts, &mut self.data, None, &mut last)?;
        last.0.map(|l| l.loss).ok_or_else(|| Error::msg("train_step: the update was skipped (no labels)"))
    }
}

fn step_row(spec: &StepSpec, device: Device, steps: usize, row: &mut Row) -> Result<()> {
    let (cfg, b, t) = (&spec.cfg, spec.batch, spec.seq);
    let reset = reset_peak_rss();
    cuda::reset_peak_memory(device);
    let mut ts = TrainStep::new(cfg, device, b, t, spec.compute)?;
    let mut losses = Vec::new();
    const WARMUP: usize = 2;
    let mut times = Vec::new();
    for i in 0..WARMUP + steps {
        cuda::synchronize(device)?;
        let (l, ms) = cuda::time_ms(device, || ts.step())?;
        losses.push(l);
        if i >= WARMUP {
            times.push(ms);
        }
    }
    let s = Stats::of(times);
    let tokens = ts.tokens as f64;
    row.set_stats(&s, Work::Flops(ts.flops));
    let x = &mut row.extra;
    x.insert("tokens_per_s".into(), (((tokens / (s.median_ms / 1e3)) * 10.0).round() / 10.0).into());
    x.insert("params".into(), ts.n_params.into());
    x.insert("batch".into(), b.into());
    x.insert("seq".into(), t.into());
    x.insert("first_loss".into(), losses.first().copied().unwrap_or(f64::NAN).into());
    x.insert("last_loss".into(), losses.last().copied().unwrap_or(f64::NAN).into());
    x.insert("flops_formula".into(), "6*P*tokens + 12*L*T*d*tokens".into());
    if spec.compute != DType::F32 {
        x.insert("autocast".into(), spec.compute.as_str().into());
        // model-FLOPs utilisation against the data-sheet peak of the GPU (bf16 tensor cores)
        if let Some((name, peak)) = cuda::device_name(device).and_then(|n| bf16_peak_tflops(&n).map(|p| (n, p))) {
            let achieved = ts.flops / (s.median_ms / 1e3) / 1e12;
            x.insert("gpu".into(), name.into());
            x.insert("peak_tflops_bf16".into(), peak.into());
            x.insert("mfu".into(), ((achieved / peak * 1e4).round() / 1e4).into());
        }
    }
    let cfg_json = match cfg {
        ModelConfig::Decoder(c) => serde_json::to_value(c),
        ModelConfig::Encoder(c) => serde_json::to_value(c),
    };
    x.insert("config".into(), cfg_json.map_err(|e| Error::msg(e.to_string()))?);
    if let Some(mb) = peak_rss_mb() {
        x.insert("peak_rss_mb".into(), mb.into());
        x.insert("peak_rss_is_per_row".into(), reset.into());
    }
    if let Some(bytes) = cuda::peak_memory_bytes(device) {
        x.insert("peak_gpu_mem_mb".into(), (((bytes as f64 / 1048576.0) * 10.0).round() / 10.0).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_peaks_by_name() {
        assert_eq!(bf16_peak_tflops("NVIDIA H200"), Some(989.4));
        assert_eq!(bf16_peak_tflops("NVIDIA H100 80GB HBM3"), Some(989.4));
        assert_eq!(bf16_peak_tflops("NVIDIA H100 PCIe"), Some(756.0));
        assert_eq!(bf16_peak_tflops("NVIDIA A100-SXM4-80GB"), Some(312.0));
        assert_eq!(bf16_peak_tflops("NVIDIA GeForce RTX 4090"), None);
    }

    #[test]
    fn the_cuda_rows_are_the_issue_6_shapes() {
        let cpu = specs(Device::Cpu, false, 16).unwrap();
        assert!(cpu.iter().all(|s| s.compute == DType::F32 && (s.batch, s.seq) == (8, 128)));
        let gpu = specs(Device::Cuda(0), false, 12).unwrap();
        let big: Vec<_> = gpu.iter().filter(|s| s.compute == DType::BF16).map(|s| (s.op, s.cfg.num_layers(), s.cfg.hidden_size(), s.batch, s.seq)).collect();
        assert_eq!(big, vec![("train_step_gpt", 12, 768, 12, 1024), ("train_step_bert", 12, 768, 32, 128)]);
        let quick = specs(Device::Cpu, true, 16).unwrap();
        assert_eq!(quick.iter().filter(|s| s.compute == DType::BF16).count(), 2);
    }
}
