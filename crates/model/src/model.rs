//! One handle over every model of the family: a stack ([`Encoder`] or [`Decoder`]) and a head,
//! chosen by the config's architecture ([`crate::family::ARCHITECTURES`]). [`Model::forward`] takes
//! the HF forward arguments by name ([`Inputs`]) and returns the HF output names ([`Outputs`]).
use crate::config::ModelConfig;
use crate::data::Batch;
use crate::decoder::Decoder;
use crate::encoder::Encoder;
use crate::family::{Arch, Family, Task};
pub use crate::inputs::{Inputs, INPUT_NAMES};
use crate::generate::CausalLm;
use crate::heads::{flat_ce, masked_bce_with_logits, mse, shifted_lm_loss, Classifier, Discriminator, LmHead, MlmHead, SequenceSummary, TokenHead};
use crate::nn::{dims3, ForwardCtx, Linear};
use crate::params::ParamStore;
use kiln_tensor::{DType, Device, Error, Result, Tensor};
use std::path::Path;

/// The stack under the head.
pub enum Stack {
    Encoder(Encoder),
    Decoder(Decoder),
}

/// What sits on the stack (see [`crate::heads`] for each).
pub enum Head {
    /// A bare stack (`BertModel`, `GPT2Model`, ...).
    None,
    MaskedLm(MlmHead),
    /// BERT: MLM + next-sentence prediction (`cls.seq_relationship` on the pooled output).
    BertPreTraining(MlmHead, Linear),
    /// ALBERT: MLM + sentence-order prediction (`sop_classifier.classifier` on the pooled output).
    AlbertPreTraining(MlmHead, TokenHead),
    /// ELECTRA's replaced-token discriminator.
    Discriminator(Discriminator),
    SequenceClassification(Classifier),
    TokenClassification(TokenHead),
    QuestionAnswering(TokenHead),
    /// One score per choice (`…ForMultipleChoice`): rows `[B·C, T]` in, logits `[B, C]` out.
    MultipleChoice(Classifier),
    CausalLm(LmHead),
    /// LM head + multiple-choice summary (GPT-1 / GPT-2 `DoubleHeadsModel`).
    DoubleHeads(LmHead, SequenceSummary),
}

/// A model built from a [`ModelConfig`], its parameters living in a [`ParamStore`].
pub struct Model {
    pub arch: Arch,
    pub stack: Stack,
    pub head: Head,
    num_labels: usize,
}

/// Named outputs of a forward pass (HF output names).
#[derive(Default)]
pub struct Outputs {
    pub tensors: Vec<(String, Tensor)>,
    /// HF's `loss` (a double-heads model's LM loss; its `mc_loss` is among the tensors).
    pub loss: Option<Tensor>,
}

impl Outputs {
    /// The output named `name` (`"logits"`, `"pooler_output"`, ...), if the model produced it.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(k, _)| k == name).map(|(_, t)| t)
    }
    fn put(&mut self, name: &str, t: Tensor) {
        self.tensors.push((name.to_string(), t));
    }
    /// What training minimises: `loss`, plus `mc_loss` where the model has one (`None` without
    /// labels).
    pub fn total_loss(&self) -> Result<Option<Tensor>> {
        match (&self.loss, self.get("mc_loss")) {
            (Some(l), Some(m)) => Ok(Some(l.add(m)?)),
            (Some(l), None) => Ok(Some(l.clone())),
            (None, m) => Ok(m.cloned()),
        }
    }
}

impl Model {
    /// Builds the architecture named by the config (`architectures[0]`, default the family's
    /// pre-training LM). A bare encoder gets the pooler its family's base model has.
    pub fn build(cfg: &ModelConfig, ps: &ParamStore) -> Result<Model> {
        Self::build_with_pooler(cfg, ps, None)
    }

    /// [`Model::build`], choosing for a bare BERT / RoBERTa / ALBERT whether it has a pooler
    /// (`add_pooling_layer` in transformers; `None`: yes).
    pub fn build_with_pooler(cfg: &ModelConfig, ps: &ParamStore, pooler: Option<bool>) -> Result<Model> {
        cfg.validate()?;
        // sizes the machine cannot hold are refused before a parameter is allocated
        crate::limits::check_on(cfg, &crate::limits::Job::Load { dtype: ps.dtype() }, ps.device())?;
        let arch = cfg.arch()?;
        let prefix = if arch.prefixed() { arch.family.prefix() } else { "" };
        let nl = cfg.num_labels();
        let (stack, head) = match cfg {
            ModelConfig::Encoder(c) => {
                let spec_pooler = crate::encoder::EncoderSpec::of(c).has_pooler();
                let with_pooler = match arch.task {
                    Task::Base => spec_pooler && pooler.unwrap_or(true),
                    Task::PreTraining | Task::SequenceClassification => matches!(c.family, Family::Bert | Family::Albert),
                    Task::MultipleChoice => matches!(c.family, Family::Bert | Family::Albert | Family::Roberta),
                    _ => false,
                };
                let enc = Encoder::new(ps, c, prefix, with_pooler)?;
                let (h, std) = (c.hidden_size, c.initializer_range);
                // the token classifier's dropout: ALBERT's classifier_dropout_prob, DistilBERT's
                // dropout, the others' classifier_dropout (each falling back to the hidden dropout)
                let cls_drop = match c.family {
                    Family::Albert => c.extra_f64("classifier_dropout_prob"),
                    Family::DistilBert => None,
                    _ => c.extra_f64("classifier_dropout"),
                }
                .unwrap_or(c.hidden_dropout_prob);
                let head = match (c.family, arch.task) {
                    (_, Task::Base) => Head::None,
                    (_, Task::MaskedLm) => Head::MaskedLm(MlmHead::new(ps, c, &enc.word.weight)?),
                    (Family::Bert, Task::PreTraining) => {
                        Head::BertPreTraining(MlmHead::new(ps, c, &enc.word.weight)?, Linear::new(ps, "cls.seq_relationship", h, 2, true, std)?)
                    }
                    (Family::Albert, Task::PreTraining) => Head::AlbertPreTraining(
                        MlmHead::new(ps, c, &enc.word.weight)?,
                        TokenHead::new(ps, "sop_classifier.classifier", h, nl, std, c.extra_f64("classifier_dropout_prob").unwrap_or(0.1))?,
                    ),
                    (Family::Electra, Task::PreTraining) => Head::Discriminator(Discriminator::new(ps, c)?),
                    (_, Task::SequenceClassification) => Head::SequenceClassification(Classifier::encoder(ps, c, nl)?),
                    (_, Task::TokenClassification) => Head::TokenClassification(TokenHead::new(ps, "classifier", h, nl, std, cls_drop)?),
                    (_, Task::MultipleChoice) => Head::MultipleChoice(Classifier::multiple_choice(ps, c)?),
                    (f, Task::QuestionAnswering) => {
                        let drop = if f == Family::DistilBert { c.extra_f64("qa_dropout").unwrap_or(0.1) } else { 0.0 };
                        Head::QuestionAnswering(TokenHead::new(ps, "qa_outputs", h, 2, std, drop)?)
                    }
                    (f, t) => return Err(Error::msg(format!("{}: no {t:?} head", f.model_type()))),
                };
                (Stack::Encoder(enc), head)
            }
            ModelConfig::Decoder(c) => {
                let dec = Decoder::new(ps, c, prefix)?;
                let head = match arch.task {
                    Task::Base => Head::None,
                    Task::CausalLm => Head::CausalLm(LmHead::new(ps, c, &dec.wte.weight)?),
                    Task::DoubleHeads => Head::DoubleHeads(LmHead::new(ps, c, &dec.wte.weight)?, SequenceSummary::new(ps, c)?),
                    Task::SequenceClassification => Head::SequenceClassification(Classifier::gpt2(ps, c, nl)?),
                    Task::TokenClassification => {
                        Head::TokenClassification(TokenHead::new(ps, "classifier", c.n_embd, nl, c.initializer_range, c.extra_f64("classifier_dropout").unwrap_or(0.1))?)
                    }
                    t => return Err(Error::msg(format!("{}: no {t:?} head", c.family.model_type()))),
                };
                (Stack::Decoder(dec), head)
            }
        };
        Ok(Model { arch, stack, head, num_labels: nl })
    }

    /// The decoder and its LM head (GPT-1 / GPT-2 LM and double-heads models), for generation; an
    /// error naming the architecture otherwise.
    pub fn as_causal_lm(&self) -> Result<CausalLm<'_>> {
        match (&self.stack, &self.head) {
            (Stack::Decoder(d), Head::CausalLm(lm) | Head::DoubleHeads(lm, _)) => Ok(CausalLm { transformer: d, lm_head: lm }),
            _ => Err(Error::msg(format!("expected a causal LM (GPT-1 / GPT-2 with an LM head), got {}", self.arch.name))),
        }
    }

    /// Activation recomputation (HF's gradient checkpointing): with `on`, each transformer block
    /// of the stack keeps only its input in a training forward and recomputes its activations in
    /// the backward ([`ForwardCtx::checkpoint`]); same gradients, less memory, one more forward
    /// of the blocks per step. Off by default.
    pub fn set_recompute(&mut self, on: bool) {
        match &mut self.stack {
            Stack::Encoder(e) => e.recompute = on,
            Stack::Decoder(d) => d.recompute = on,
        }
    }

    /// Whether the head is BERT's pre-training (MLM + NSP): its batches carry NSP pairs.
    pub fn is_pretraining(&self) -> bool {
        matches!(self.head, Head::BertPreTraining(..))
    }

    /// The training loss of a batch from kiln's batchers: for a causal LM, next-token windows
    /// (labels already shifted, so no shift here); for every other head, the batch's labels (and
    /// NSP labels, for BERT pre-training) go to the head as HF's `labels` (`loss` + `mc_loss`);
    /// for question answering the labels are `[B, 2]`: HF's `start_positions`, `end_positions`.
    pub fn loss(&self, b: &Batch, ctx: &ForwardCtx) -> Result<Tensor> {
        if let (Stack::Decoder(d), Head::CausalLm(lm)) = (&self.stack, &self.head) {
            let logits = lm.forward(&d.forward(&b.input_ids, Some(&b.attention_mask), None, ctx)?)?;
            return flat_ce(&logits, &b.labels, -100);
        }
        let takes = self.arch.inputs();
        if b.next_sentence_label.is_some() && !takes.contains(&"next_sentence_label") {
            return Err(Error::msg(format!("{} takes no next-sentence labels", self.arch.name)));
        }
        // question answering: the batch's labels are [B, 2], (start, end) token positions
        let qa = self.arch.task == crate::family::Task::QuestionAnswering;
        let column = |i: usize| -> Result<Tensor> { b.labels.narrow(1, i, 1)?.contiguous()?.reshape(&[b.labels.shape()[0]]) };
        let inputs = Inputs {
            input_ids: Some(b.input_ids.clone()),
            attention_mask: Some(b.attention_mask.clone()),
            token_type_ids: takes.contains(&"token_type_ids").then(|| b.token_type_ids.clone()),
            labels: (!qa).then(|| b.labels.clone()),
            next_sentence_label: b.next_sentence_label.clone(),
            start_positions: if qa { Some(column(0)?) } else { None },
            end_positions: if qa { Some(column(1)?) } else { None },
            ..Default::default()
        };
        self.forward(&inputs, ctx)?.total_loss()?.ok_or_else(|| Error::msg(format!("{}: the batch produced no loss (missing labels?)", self.arch.name)))
    }

    /// A forward pass on the HF arguments in `inputs`, returning every HF output and the loss when
    /// labels are given. An argument this architecture does not take is an error naming it.
    pub fn forward(&self, inputs: &Inputs, ctx: &ForwardCtx) -> Result<Outputs> {
        let takes = self.arch.inputs();
        if let Some(bad) = inputs.present().into_iter().find(|n| !takes.contains(n)) {
            return Err(Error::msg(format!("'{bad}' is not an input of {} (its inputs: {})", self.arch.name, takes.join(", "))));
        }
        let ids = inputs.input_ids.as_ref().ok_or_else(|| Error::msg("input_ids is required"))?;
        let mut o = Outputs::default();
        match &self.stack {
            Stack::Encoder(enc) => {
                // multiple choice: [B, C, T] runs as B·C rows
                let (ids, mask, types) = match (&self.head, ids.rank()) {
                    (Head::MultipleChoice(_), 3) => {
                        let flat = |x: &Option<Tensor>| x.as_ref().map(|x| choice_rows(x, ids.shape())).transpose();
                        (choice_rows(ids, ids.shape())?, flat(&inputs.attention_mask)?, flat(&inputs.token_type_ids)?)
                    }
                    (Head::MultipleChoice(_), _) => return Err(Error::Shape { op: "input_ids", shape: ids.shape().to_vec(), msg: "a multiple-choice model takes [batch, choices, seq]".into() }),
                    _ => (ids.clone(), inputs.attention_mask.clone(), inputs.token_type_ids.clone()),
                };
                let r = enc.forward(&ids, mask.as_ref(), types.as_ref(), ctx)?;
                o.put("last_hidden_state", r.last_hidden_state.clone());
                if let Some(p) = &r.pooler_output {
                    o.put("pooler_output", p.clone());
                }
                self.head_forward(&r.last_hidden_state, r.pooler_output.as_ref(), inputs, ctx, &mut o)?;
            }
            Stack::Decoder(dec) => self.decoder_forward(dec, ids, inputs, ctx, &mut o)?,
        }
        Ok(o)
    }

    /// The heads that read hidden states `[B, T, H]` (+ the pooler's output): all but the LM heads.
    fn head_forward(&self, h: &Tensor, pooled: Option<&Tensor>, inp: &Inputs, ctx: &ForwardCtx, o: &mut Outputs) -> Result<()> {
        let ce = |logits: &Tensor, l: &Option<Tensor>| l.as_ref().map(|l| flat_ce(logits, l, -100)).transpose();
        let need_pool = || pooled.ok_or_else(|| Error::msg("this head reads the pooler, which the model lacks"));
        match &self.head {
            Head::None => {}
            Head::MaskedLm(lm) => {
                let logits = lm.forward(h)?;
                o.loss = ce(&logits, &inp.labels)?;
                o.put("logits", logits);
            }
            Head::BertPreTraining(lm, nsp) => {
                let (logits, rel) = (lm.forward(h)?, nsp.forward(need_pool()?)?);
                if let (Some(l), Some(n)) = (&inp.labels, &inp.next_sentence_label) {
                    o.loss = Some(flat_ce(&logits, l, -100)?.add(&flat_ce(&rel, n, -100)?)?);
                }
                o.put("prediction_logits", logits);
                o.put("seq_relationship_logits", rel);
            }
            Head::AlbertPreTraining(lm, sop) => {
                let (logits, order) = (lm.forward(h)?, sop.forward(need_pool()?, ctx)?);
                if let (Some(l), Some(s)) = (&inp.labels, &inp.sentence_order_label) {
                    o.loss = Some(flat_ce(&logits, l, -100)?.add(&flat_ce(&order, s, -100)?)?);
                }
                o.put("prediction_logits", logits);
                o.put("sop_logits", order);
            }
            Head::Discriminator(d) => {
                let logits = d.forward(h)?;
                o.loss = inp.labels.as_ref().map(|l| masked_bce_with_logits(&logits, l, inp.attention_mask.as_ref())).transpose()?;
                o.put("logits", logits);
            }
            Head::SequenceClassification(c) => {
                let pad = match &self.stack {
                    Stack::Encoder(e) => e.cfg.pad_token_id,
                    Stack::Decoder(d) => d.cfg.pad_token_id,
                };
                let ids = inp.input_ids.as_ref().expect("checked");
                let mut logits = c.forward(h, pooled, &choice_rows(ids, ids.shape())?, pad, ctx)?;
                if ids.rank() == 3 {
                    // a decoder's [B, K, T] (GPT-1's similarity: both orders): the K rows' logits
                    // summed, which is the head on the sum of their final states (`score` has no bias)
                    let (b, k) = (ids.shape()[0], ids.shape()[1]);
                    logits = logits.reshape(&[b, k, self.num_labels])?.sum_dims(&[1], false)?;
                }
                o.loss = match (&inp.labels, self.num_labels) {
                    (Some(l), 1) => Some(mse(&logits, l)?),
                    (l, _) => ce(&logits, l)?,
                };
                o.put("logits", logits);
            }
            Head::TokenClassification(c) => {
                let logits = c.forward(h, ctx)?;
                o.loss = ce(&logits, &inp.labels)?;
                o.put("logits", logits);
            }
            Head::QuestionAnswering(qa) => {
                let (b, t, _) = dims3(h)?;
                let logits = qa.forward(h, ctx)?; // [B, T, 2]
                let parts = logits.split(&[1, 1], 2)?;
                let start = parts[0].squeeze(2)?.contiguous()?;
                let end = parts[1].squeeze(2)?.contiguous()?;
                if let (Some(s), Some(e)) = (&inp.start_positions, &inp.end_positions) {
                    // HF clamps positions to [0, T] and ignores T
                    let clamp = |p: &Tensor| -> Result<Tensor> {
                        let v: Vec<i64> = p.to_vec::<i64>()?.into_iter().map(|x| x.clamp(0, t as i64)).collect();
                        if v.len() != b {
                            return Err(Error::ShapeMismatch { op: "start/end_positions", lhs: vec![b], rhs: p.shape().to_vec() });
                        }
                        Tensor::from_vec(v, &[b])?.to_device(start.device())
                    };
                    let ls = flat_ce(&start, &clamp(s)?, t as i64)?;
                    let le = flat_ce(&end, &clamp(e)?, t as i64)?;
                    o.loss = Some(ls.add(&le)?.mul_scalar(0.5)?);
                }
                o.put("start_logits", start);
                o.put("end_logits", end);
            }
            Head::MultipleChoice(c) => {
                let ids = inp.input_ids.as_ref().expect("checked");
                let (b, choices) = (ids.shape()[0], ids.shape()[1]);
                let logits = c.forward(h, pooled, &choice_rows(ids, ids.shape())?, None, ctx)?.reshape(&[b, choices])?;
                o.loss = ce(&logits, &inp.labels)?;
                o.put("logits", logits);
            }
            Head::CausalLm(_) | Head::DoubleHeads(..) => unreachable!("the LM heads run in decoder_forward"),
        }
        Ok(())
    }

    fn decoder_forward(&self, dec: &Decoder, ids: &Tensor, inp: &Inputs, ctx: &ForwardCtx, o: &mut Outputs) -> Result<()> {
        // double heads take [B, C, T]: the choices run as B·C rows
        let shape = ids.shape().to_vec();
        let (b, choices) = match (&self.head, shape.len()) {
            (Head::DoubleHeads(..), 3) => (shape[0], shape[1]),
            (Head::DoubleHeads(..), _) => return Err(Error::Shape { op: "input_ids", shape, msg: "a double-heads model takes [batch, choices, seq]".into() }),
            (Head::SequenceClassification(..), 3) => (shape[0], shape[1]),
            _ => (shape[0], 1),
        };
        let t = *shape.last().unwrap_or(&0);
        let rows = |x: &Option<Tensor>| -> Result<Option<Tensor>> {
            match x {
                Some(x) if x.shape() != shape.as_slice() => Err(Error::ShapeMismatch { op: "attention_mask / token_type_ids / labels", lhs: shape.clone(), rhs: x.shape().to_vec() }),
                Some(x) => Ok(Some(x.reshape(&[b * choices, t])?)),
                None => Ok(None),
            }
        };
        let flat_ids = ids.reshape(&[b * choices, t])?;
        let h = dec.forward(&flat_ids, rows(&inp.attention_mask)?.as_ref(), rows(&inp.token_type_ids)?.as_ref(), ctx)?;
        let unflat = |x: &Tensor| -> Result<Tensor> {
            let mut s = shape.clone();
            s.extend_from_slice(&x.shape()[2..]);
            x.reshape(&s)
        };
        o.put("last_hidden_state", unflat(&h)?);
        match &self.head {
            Head::None => {}
            Head::CausalLm(lm) | Head::DoubleHeads(lm, _) => {
                let logits = lm.forward(&h)?;
                o.loss = rows(&inp.labels)?.map(|l| shifted_lm_loss(&logits, &l)).transpose()?;
                if let Head::DoubleHeads(_, mc) = &self.head {
                    let mc_logits = mc.forward(&h, inp.mc_token_ids.as_ref(), b, choices, ctx)?;
                    if let Some(l) = &inp.mc_labels {
                        o.put("mc_loss", flat_ce(&mc_logits, l, -100)?);
                    }
                    o.put("mc_logits", mc_logits);
                }
                o.put("logits", unflat(&logits)?);
            }
            // the per-sequence and per-token heads read the hidden states as on an encoder
            _ => self.head_forward(&h, None, inp, ctx, o)?,
        }
        Ok(())
    }
}

/// `x` (`[B, C, T]`, or `[B, T]`) as rows `[B·C, T]`, checked against the ids' `shape`.
fn choice_rows(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if x.shape() != shape {
        return Err(Error::ShapeMismatch { op: "attention_mask / token_type_ids", lhs: shape.to_vec(), rhs: x.shape().to_vec() });
    }
    let t = *shape.last().unwrap_or(&0);
    x.reshape(&[x.elem_count() / t.max(1), t])
}

/// Whether a file holds a bare encoder's pooler (`pooler.dense.weight`, ALBERT's `pooler.weight`).
fn file_has_pooler(names: &[String]) -> bool {
    names.iter().any(|n| n.ends_with("pooler.dense.weight") || n == "pooler.weight" || n.ends_with(".pooler.weight"))
}

/// A model loaded from a Hugging Face-layout directory: `config.json`, `model.safetensors` when
/// present (a directory with only `config.json` means freshly initialised weights) and
/// `tokenizer.json` when present. A kiln run directory or checkpoint (with a manifest, see
/// [`crate::run_dir`]) is verified first and read from its current checkpoint.
///
/// ```no_run
/// use kiln_model::model::LoadedModel;
/// let m = LoadedModel::from_dir("tests/fixtures/gpt2_lm", 0, kiln_tensor::Device::Cpu)?;
/// let gpt = m.model.as_causal_lm()?;
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
    /// Loads `dir` strictly (every weight of the model must be in the file, with its shape; a
    /// bare encoder's pooler is there or not as the file says); `seed` initialises the weights when
    /// the directory has no `model.safetensors`. Missing directories, bad configs and mismatched
    /// weights are errors naming the file; a config too large for the memory is refused before
    /// anything is read or allocated ([`crate::limits`]).
    pub fn from_dir(dir: impl AsRef<Path>, seed: u64, device: Device) -> Result<LoadedModel> {
        Self::from_dir_as(dir, seed, device, DType::F32)
    }

    /// [`LoadedModel::from_dir`] with the parameters held in `dtype` (f32, bf16 or f16; the file's
    /// tensors are converted on load). For inference: bf16 weights halve the memory and the bytes a
    /// decoding step streams (`CausalLm::generate` computes in the parameters' dtype).
    pub fn from_dir_as(dir: impl AsRef<Path>, seed: u64, device: Device, dtype: DType) -> Result<LoadedModel> {
        if !dtype.is_float() {
            return Err(Error::msg(format!("model parameters must be a float dtype, got {dtype}")));
        }
        let dir = dir.as_ref();
        kiln_tensor::cuda::check_device(device)?;
        if !dir.is_dir() {
            return Err(Error::msg(format!("model directory {} does not exist", dir.display())));
        }
        // a kiln run directory reads its current checkpoint, verified against its manifest
        let resolved = crate::run_dir::resolve(dir)?;
        let dir = resolved.dir.as_path();
        let config_file = dir.join(crate::train_state::CONFIG_FILE);
        let cfg = ModelConfig::load(&config_file)?;
        // before the weights are read
        crate::limits::check_on(&cfg, &crate::limits::Job::Load { dtype }, device).map_err(|e| Error::msg(format!("{}: {e}", config_file.display())))?;
        let store = ParamStore::new(seed, dtype, device);
        let weights = dir.join(crate::train_state::MODEL_FILE);
        let model = if crate::io::entry_exists(&weights) {
            let file = crate::st_io::StFile::open(&weights)?;
            // strict: every parameter is overwritten, so none is drawn first
            let model = store.build_for_load(|s| Model::build_with_pooler(&cfg, s, Some(file_has_pooler(&file.names()))))?;
            crate::checkpoint::load_params_from(&file, &store, &cfg.family().name_map(), &crate::checkpoint::LoadOptions::strict())?;
            model
        } else {
            Model::build(&cfg, &store)?
        };
        let tokenizer = crate::tokenize::find_tokenizer(None, Some(dir))?;
        Ok(LoadedModel { cfg, store, model, tokenizer })
    }
}
