//! One handle over every model kiln builds from a config: GPT-2 LM or BERT with a head.
use crate::bert::{BertLabels, BertTask, BertWithHead};
use crate::config::ModelConfig;
use crate::data::Batch;
use crate::gpt::Gpt2LmHeadModel;
use crate::nn::ForwardCtx;
use crate::params::ParamStore;
use kiln_tensor::{DType, Device, Error, Result, Tensor};
use std::path::Path;

/// A model built from a [`ModelConfig`], its parameters living in a [`ParamStore`].
pub enum Model {
    Gpt2(Gpt2LmHeadModel),
    Bert(BertWithHead),
}

/// Named outputs of a forward pass (HF output names).
#[derive(Default)]
pub struct Outputs {
    pub tensors: Vec<(String, Tensor)>,
    pub loss: Option<Tensor>,
}

impl Outputs {
    /// The output named `name` (`"logits"`, `"pooler_output"`, ...), if the model produced it.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(k, _)| k == name).map(|(_, t)| t)
    }
}

impl Model {
    /// Builds the model for `cfg`: GPT-2 → GPT2LMHeadModel; BERT → the head named by the
    /// config's `architectures` (default BertForMaskedLM).
    pub fn build(cfg: &ModelConfig, ps: &ParamStore) -> Result<Model> {
        match cfg {
            ModelConfig::Gpt2(c) => Ok(Model::Gpt2(Gpt2LmHeadModel::new(ps, c)?)),
            ModelConfig::Bert(c) => {
                let arch = cfg.architecture().unwrap_or("BertForMaskedLM");
                let task = BertTask::from_architecture(arch)
                    .ok_or_else(|| Error::msg(format!("unsupported BERT architecture '{arch}' (BertForMaskedLM, BertForPreTraining, BertForSequenceClassification, BertForTokenClassification, BertForQuestionAnswering)")))?;
                Ok(Model::Bert(BertWithHead::new(ps, c, task)?))
            }
        }
    }

    /// The GPT-2 language model, or an error naming what was expected (for callers that need one).
    pub fn as_gpt2(&self) -> Result<&Gpt2LmHeadModel> {
        match self {
            Model::Gpt2(m) => Ok(m),
            Model::Bert(_) => Err(Error::msg("expected a GPT-2 (causal LM) model, got a BERT")),
        }
    }

    /// Whether the BERT head is pre-training (MLM + NSP).
    pub fn is_pretraining(&self) -> bool {
        matches!(self, Model::Bert(b) if matches!(b.head, crate::bert::BertHead::PreTraining(..)))
    }

    /// The training loss of a batch (causal LM, MLM or MLM + NSP).
    pub fn loss(&self, b: &Batch, ctx: &ForwardCtx) -> Result<Tensor> {
        let out = match self {
            Model::Gpt2(m) => {
                // Batcher labels are already the next tokens (no HF-style shift here).
                let logits = m.forward(&b.input_ids, Some(&b.attention_mask), None, ctx)?.logits;
                let (bs, t, v) = crate::nn::dims3(&logits)?;
                Some(logits.reshape(&[bs * t, v])?.to_dtype(DType::F32)?.cross_entropy(&b.labels.contiguous()?.reshape(&[bs * t])?, -100)?)
            }
            Model::Bert(m) => {
                let labels = BertLabels { labels: Some(b.labels.clone()), next_sentence_label: b.next_sentence_label.clone(), ..Default::default() };
                m.forward(&b.input_ids, Some(&b.attention_mask), Some(&b.token_type_ids), &labels, ctx)?.loss
            }
        };
        out.ok_or_else(|| Error::msg("the batch produced no loss (missing labels?)"))
    }

    /// A forward pass with optional inputs, returning every named output.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, token_type_ids: Option<&Tensor>, labels: &BertLabels, ctx: &ForwardCtx) -> Result<Outputs> {
        let mut o = Outputs::default();
        match self {
            Model::Gpt2(m) => {
                let r = m.forward(input_ids, attention_mask, labels.labels.as_ref(), ctx)?;
                o.tensors.push(("last_hidden_state".into(), r.last_hidden_state));
                o.tensors.push(("logits".into(), r.logits));
                o.loss = r.loss;
            }
            Model::Bert(m) => {
                let r = m.forward(input_ids, attention_mask, token_type_ids, labels, ctx)?;
                for (k, v) in [
                    ("last_hidden_state", r.last_hidden_state),
                    ("pooler_output", r.pooler_output),
                    ("logits", r.logits),
                    ("seq_relationship_logits", r.seq_relationship_logits),
                    ("start_logits", r.start_logits),
                    ("end_logits", r.end_logits),
                ] {
                    if let Some(v) = v {
                        o.tensors.push((k.to_string(), v));
                    }
                }
                o.loss = r.loss;
            }
        }
        Ok(o)
    }
}

/// A model loaded from a Hugging Face-layout directory: `config.json`, `model.safetensors` when
/// present (a directory with only `config.json` means freshly initialised weights) and
/// `tokenizer.json` when present.
///
/// ```no_run
/// use kiln_model::model::LoadedModel;
/// let m = LoadedModel::from_dir("tests/fixtures/gpt2_lm", 0, kiln_tensor::Device::Cpu)?;
/// let gpt = m.model.as_gpt2()?;
/// # Ok::<(), kiln_tensor::Error>(())
/// ```
pub struct LoadedModel {
    pub cfg: ModelConfig,
    /// The parameters (f32 on the requested device), under their HF names.
    pub store: ParamStore,
    pub model: Model,
    pub tokenizer: Option<crate::tokenize::Tokenizer>,
}

impl LoadedModel {
    /// Loads `dir` strictly (every weight of the model must be in the file, with its shape);
    /// `seed` initialises the weights when the directory has no `model.safetensors`. Missing
    /// directories, bad configs and mismatched weights are errors naming the file.
    pub fn from_dir(dir: impl AsRef<Path>, seed: u64, device: Device) -> Result<LoadedModel> {
        Self::from_dir_as(dir, seed, device, DType::F32)
    }

    /// [`LoadedModel::from_dir`] with the parameters held in `dtype` (f32, bf16 or f16; the file's
    /// tensors are converted on load). For inference: bf16 weights halve the memory and the bytes a
    /// decoding step streams (`Gpt2LmHeadModel::generate` computes in the parameters' dtype).
    pub fn from_dir_as(dir: impl AsRef<Path>, seed: u64, device: Device, dtype: DType) -> Result<LoadedModel> {
        if !dtype.is_float() {
            return Err(Error::msg(format!("model parameters must be a float dtype, got {dtype}")));
        }
        let dir = dir.as_ref();
        kiln_tensor::cuda::check_device(device)?;
        if !dir.is_dir() {
            return Err(Error::msg(format!("model directory {} does not exist", dir.display())));
        }
        let cfg = ModelConfig::load(dir.join(crate::train_state::CONFIG_FILE))?;
        let store = ParamStore::new(seed, dtype, device);
        let weights = dir.join(crate::train_state::MODEL_FILE);
        let model = if weights.exists() {
            // strict: every parameter is overwritten, so none is drawn first
            let model = store.build_for_load(|s| Model::build(&cfg, s))?;
            let map = crate::checkpoint::HfNameMap::for_model_type(cfg.model_type());
            crate::checkpoint::load_params(&weights, &store, &map, &crate::checkpoint::LoadOptions::strict())?;
            model
        } else {
            Model::build(&cfg, &store)?
        };
        let tokenizer = crate::tokenize::find_tokenizer(None, Some(dir))?;
        Ok(LoadedModel { cfg, store, model, tokenizer })
    }
}
