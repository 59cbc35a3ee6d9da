//! Pre-training objectives: what the [`crate::trainer::Trainer`] minimises on a batch, and the
//! batches each one reads. One per family, chosen by the architecture ([`ObjectiveKind::default_for`])
//! or by name (`kiln train --objective`):
//!
//! | name | model | data | loss |
//! |---|---|---|---|
//! | `clm` | GPT-1 / GPT-2 LM head | [`CausalLmBatcher`] | next-token cross-entropy |
//! | `bert` | `BertForPreTraining` | [`BertBatcher`] with NSP pairs | MLM (15%, 80/10/10) + NSP |
//! | `mlm` | any `…ForMaskedLM` | [`BertBatcher`], single segments | MLM |
//! | `roberta` | any `…ForMaskedLM` | [`PackedMlmBatcher`]: full sentences packed across documents, masked per visit | MLM, no NSP |
//! | `albert` | `AlbertForPreTraining` | [`SopBatcher`]: two consecutive segments, swapped half of the time | MLM + SOP |
//! | `electra` | `ElectraForPreTraining` (the discriminator) | [`PackedMlmBatcher`], every chosen token `[MASK]` | generator MLM + 50 · replaced-token detection |
//!
//! ELECTRA's generator ([`Electra`]) is the objective's own model: a smaller encoder with an MLM
//! head whose word, position and token-type embeddings (and their LayerNorm) *are* the
//! discriminator's; its other weights are trained beside the model's ([`Objective::params`]) and
//! checkpointed in `generator.safetensors` (ElectraForMaskedLM names, less the shared embeddings),
//! so `model.safetensors` stays exactly what `ElectraForPreTraining` loads.
use crate::config::{EncoderConfig, ModelConfig};
use crate::data::{encode_documents, encode_stream, BertBatcher, Batch, CausalLmBatcher, IGNORE_INDEX};
use crate::encoder::Encoder;
use crate::family::{Family, Task};
use crate::heads::{flat_ce, MlmHead};
use crate::model::{Head, Inputs, Model, Stack};
use crate::nn::{ForwardCtx, Linear};
use crate::params::{Param, ParamStore};
use crate::pretrain_data::{PackedMlmBatcher, SopBatcher};
use crate::rng::DataRng;
use crate::tokenize::{SpecialIds, Tokenizer};
use crate::train_state::CheckpointFile;
use crate::trainer::BatchSource;
use kiln_tensor::{no_grad, DType, Error, Result, Tensor};
use std::path::Path;

/// What a trainer minimises. The default, [`ModelLoss`], is the model's own loss on the batch.
pub trait Objective {
    /// The objective's name (`kiln train --objective`).
    fn name(&self) -> &'static str;
    /// The training loss of one micro-batch (already on the model's device).
    fn loss(&self, model: &Model, b: &Batch, ctx: &ForwardCtx) -> Result<Tensor>;
    /// Parameters trained besides the model's (ELECTRA's generator).
    fn params(&self) -> Vec<Param> {
        Vec::new()
    }
    /// Files added to each checkpoint (committed with it as one unit).
    fn checkpoint_files(&self) -> Vec<CheckpointFile<'_>> {
        Vec::new()
    }
    /// Reads back what [`Objective::checkpoint_files`] wrote into the checkpoint directory `dir`.
    fn restore(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }
    /// Whether the loss is one token-level cross-entropy, so that `e^loss` is a perplexity (not
    /// for ELECTRA's generator + 50 · detection sum).
    fn loss_is_perplexity(&self) -> bool {
        true
    }
}

/// A shared objective (a caller keeps a handle on ELECTRA's generator while the trainer trains it).
impl<T: Objective + ?Sized> Objective for std::rc::Rc<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn loss(&self, model: &Model, b: &Batch, ctx: &ForwardCtx) -> Result<Tensor> {
        (**self).loss(model, b, ctx)
    }
    fn params(&self) -> Vec<Param> {
        (**self).params()
    }
    fn checkpoint_files(&self) -> Vec<CheckpointFile<'_>> {
        (**self).checkpoint_files()
    }
    fn restore(&self, dir: &Path) -> Result<()> {
        (**self).restore(dir)
    }
    fn loss_is_perplexity(&self) -> bool {
        (**self).loss_is_perplexity()
    }
}

/// [`Model::loss`]: causal LM, MLM, MLM + NSP, and the fine-tuning heads.
pub struct ModelLoss;

impl Objective for ModelLoss {
    fn name(&self) -> &'static str {
        "model"
    }
    fn loss(&self, model: &Model, b: &Batch, ctx: &ForwardCtx) -> Result<Tensor> {
        model.loss(b, ctx)
    }
}

/// ALBERT's MLM + sentence-order prediction; the batch's pair labels
/// ([`Batch::next_sentence_label`]) are the order labels (0 in order, 1 swapped).
pub struct Sop;

impl Objective for Sop {
    fn name(&self) -> &'static str {
        "albert"
    }
    fn loss(&self, model: &Model, b: &Batch, ctx: &ForwardCtx) -> Result<Tensor> {
        let order = b.next_sentence_label.clone().ok_or_else(|| Error::msg("albert objective: the batch has no sentence-order labels (use SopBatcher)"))?;
        let inputs = Inputs {
            input_ids: Some(b.input_ids.clone()),
            attention_mask: Some(b.attention_mask.clone()),
            token_type_ids: Some(b.token_type_ids.clone()),
            labels: Some(b.labels.clone()),
            sentence_order_label: Some(order),
            ..Default::default()
        };
        model.forward(&inputs, ctx)?.loss.ok_or_else(|| Error::msg(format!("albert objective: {} gave no loss (it needs AlbertForPreTraining)", model.arch.name)))
    }
}

/// The objectives by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectiveKind {
    CausalLm,
    Mlm,
    BertNsp,
    Roberta,
    Albert,
    Electra,
}

/// Every objective, in the order error messages list them.
pub const OBJECTIVES: [ObjectiveKind; 6] = [ObjectiveKind::CausalLm, ObjectiveKind::BertNsp, ObjectiveKind::Mlm, ObjectiveKind::Roberta, ObjectiveKind::Albert, ObjectiveKind::Electra];

impl ObjectiveKind {
    pub fn name(self) -> &'static str {
        match self {
            ObjectiveKind::CausalLm => "clm",
            ObjectiveKind::Mlm => "mlm",
            ObjectiveKind::BertNsp => "bert",
            ObjectiveKind::Roberta => "roberta",
            ObjectiveKind::Albert => "albert",
            ObjectiveKind::Electra => "electra",
        }
    }
    /// The objective named `s`, or an error listing them.
    pub fn parse(s: &str) -> Result<ObjectiveKind> {
        OBJECTIVES.into_iter().find(|o| o.name() == s).ok_or_else(|| {
            Error::msg(format!("unknown objective '{s}' (known: {})", OBJECTIVES.map(|o| o.name()).join(", ")))
        })
    }
    /// The family's pre-training objective for the config's architecture: causal LM for GPT-1 /
    /// GPT-2, MLM + NSP for `BertForPreTraining`, RoBERTa's for RoBERTa, MLM + SOP for
    /// `AlbertForPreTraining`, ELECTRA's for `ElectraForPreTraining`, MLM for any other masked LM.
    pub fn default_for(cfg: &ModelConfig) -> Result<ObjectiveKind> {
        let arch = cfg.arch()?;
        Ok(match (arch.family, arch.task) {
            (f, Task::CausalLm | Task::DoubleHeads) if f.is_decoder() => ObjectiveKind::CausalLm,
            (Family::Bert, Task::PreTraining) => ObjectiveKind::BertNsp,
            (Family::Albert, Task::PreTraining) => ObjectiveKind::Albert,
            (Family::Electra, Task::PreTraining) => ObjectiveKind::Electra,
            (Family::Roberta, Task::MaskedLm) => ObjectiveKind::Roberta,
            (_, Task::MaskedLm) => ObjectiveKind::Mlm,
            _ => return Err(Error::msg(format!("train: {} has no pre-training objective (use a …ForMaskedLM, …ForPreTraining or LM-head architecture)", arch.name))),
        })
    }
    /// Whether the config's architecture has the head this objective trains; an error naming
    /// what it needs otherwise.
    pub fn check(self, cfg: &ModelConfig) -> Result<()> {
        let arch = cfg.arch()?;
        let ok = match self {
            ObjectiveKind::CausalLm => arch.family.is_decoder() && matches!(arch.task, Task::CausalLm | Task::DoubleHeads),
            ObjectiveKind::Mlm | ObjectiveKind::Roberta => arch.task == Task::MaskedLm,
            ObjectiveKind::BertNsp => arch.name == "BertForPreTraining",
            ObjectiveKind::Albert => arch.name == "AlbertForPreTraining",
            ObjectiveKind::Electra => arch.name == "ElectraForPreTraining",
        };
        let needs = match self {
            ObjectiveKind::CausalLm => "a GPT-1 / GPT-2 LM-head model",
            ObjectiveKind::Mlm | ObjectiveKind::Roberta => "a …ForMaskedLM model",
            ObjectiveKind::BertNsp => "BertForPreTraining",
            ObjectiveKind::Albert => "AlbertForPreTraining",
            ObjectiveKind::Electra => "ElectraForPreTraining (the discriminator)",
        };
        if ok {
            Ok(())
        } else {
            Err(Error::msg(format!("objective '{}' trains {needs}, but the model is {}", self.name(), arch.name)))
        }
    }
    /// The objective over `model` (built from `cfg` on `store`); `seed` initialises what it adds
    /// (ELECTRA's generator).
    pub fn build(self, cfg: &ModelConfig, model: &Model, store: &ParamStore, seed: u64) -> Result<Box<dyn Objective>> {
        self.check(cfg)?;
        Ok(match self {
            ObjectiveKind::Albert => Box::new(Sop),
            ObjectiveKind::Electra => Box::new(Electra::new(model, store, seed)?),
            _ => Box::new(ModelLoss),
        })
    }
    /// The objective's batches of `text` (training and held-out use one call each), `batch` rows
    /// of `seq` tokens, shuffled from `seed`.
    pub fn batcher(self, tok: &Tokenizer, text: &str, vocab_size: usize, batch: usize, seq: usize, seed: u64) -> Result<Box<dyn BatchSource>> {
        let sp = SpecialIds::of(tok);
        Ok(match self {
            ObjectiveKind::CausalLm => Box::new(CausalLmBatcher::new(encode_stream(tok, text, sp.eot)?, batch, seq, seed)?),
            ObjectiveKind::BertNsp | ObjectiveKind::Mlm => {
                Box::new(BertBatcher::new(encode_documents(tok, text)?, &sp, vocab_size, batch, seq, seed, self == ObjectiveKind::BertNsp)?)
            }
            ObjectiveKind::Roberta => Box::new(PackedMlmBatcher::new(encode_documents(tok, text)?, &sp, vocab_size, batch, seq, seed)?),
            ObjectiveKind::Electra => {
                let mut b = PackedMlmBatcher::new(encode_documents(tok, text)?, &sp, vocab_size, batch, seq, seed)?;
                b.set_replacement(1.0, 0.0)?;
                Box::new(b)
            }
            ObjectiveKind::Albert => Box::new(SopBatcher::new(encode_documents(tok, text)?, &sp, vocab_size, batch, seq, seed)?),
        })
    }
}

impl BatchSource for PackedMlmBatcher {
    fn next_batch(&mut self) -> Result<Batch> {
        PackedMlmBatcher::next_batch(self)
    }
    fn position(&self) -> crate::data::DataPosition {
        PackedMlmBatcher::position(self)
    }
    fn set_position(&mut self, p: &crate::data::DataPosition) -> Result<()> {
        PackedMlmBatcher::set_position(self, p)
    }
}

impl BatchSource for SopBatcher {
    fn next_batch(&mut self) -> Result<Batch> {
        SopBatcher::next_batch(self)
    }
    fn position(&self) -> crate::data::DataPosition {
        SopBatcher::position(self)
    }
    fn set_position(&mut self, p: &crate::data::DataPosition) -> Result<()> {
        SopBatcher::set_position(self, p)
    }
}

/// The generator's name prefix beside the discriminator's parameters.
pub const GENERATOR_PREFIX: &str = "generator.";
/// The checkpoint file holding the generator's own weights.
pub const GENERATOR_FILE: &str = "generator.safetensors";

/// The generator's config for a discriminator: a quarter of the hidden size (at least 16, at most
/// the discriminator's), the discriminator's head width (so `hidden / 64` heads for a base model),
/// the same depth, embedding size and vocabulary, a 4× feed-forward (ELECTRA-Small's generator is
/// 64 wide beside a 256-wide discriminator).
pub fn generator_config(disc: &EncoderConfig) -> EncoderConfig {
    let mut g = disc.clone();
    let head_dim = (disc.hidden_size / disc.num_attention_heads.max(1)).max(1);
    let hidden = (disc.hidden_size / 4).max(16).min(disc.hidden_size);
    let mut heads = (hidden / head_dim).max(1);
    while hidden % heads != 0 {
        heads -= 1;
    }
    g.hidden_size = hidden;
    g.num_attention_heads = heads;
    g.intermediate_size = 4 * hidden;
    g.embedding_size = Some(disc.embedding_dim());
    g.extra.insert("architectures".into(), serde_json::json!(["ElectraForMaskedLM"]));
    g
}

/// ELECTRA: the generator (MLM on the masked positions) and the replaced-token-detection loss of
/// the discriminator (the trained model) on the generator's samples, `gen + disc_weight · disc`.
pub struct Electra {
    pub cfg: EncoderConfig,
    /// The generator's own parameters (`generator.…`): its layers, its projection when the
    /// embedding size differs from its width, its MLM head.
    pub store: ParamStore,
    pub encoder: Encoder,
    pub head: MlmHead,
    /// The weight λ of the discriminator's loss (50).
    pub disc_weight: f64,
}

impl Electra {
    /// A generator ([`generator_config`]) beside the discriminator `model`, sharing its embeddings.
    pub fn new(model: &Model, disc_store: &ParamStore, seed: u64) -> Result<Electra> {
        let (Stack::Encoder(disc), Head::Discriminator(_)) = (&model.stack, &model.head) else {
            return Err(Error::msg(format!("electra objective: the model must be ElectraForPreTraining, got {}", model.arch.name)));
        };
        let cfg = generator_config(&disc.cfg);
        let store = ParamStore::new(seed ^ 0x67656e, disc_store.dtype(), disc_store.device());
        let mut encoder = Encoder::new(&store, &cfg, "generator.electra", false)?;
        // the shared embeddings: the discriminator's tables (and their LayerNorm) take the
        // place of the generator's own, which are dropped from its store
        for name in ["word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias"] {
            store.remove(&format!("generator.electra.embeddings.{name}"));
        }
        encoder.word = disc.word.clone();
        encoder.position = disc.position.clone();
        encoder.token_type = disc.token_type.clone();
        encoder.emb_ln = disc.emb_ln.clone();
        let mut head = MlmHead::new_under(&store, &cfg, &disc.word.weight, "generator")?;
        head.decoder = Linear::tied(&disc.word.weight);
        Ok(Electra { cfg, store, encoder, head, disc_weight: 50.0 })
    }

    /// The generator's MLM logits `[B, T, V]` for `b`.
    pub fn generator_logits(&self, b: &Batch, ctx: &ForwardCtx) -> Result<Tensor> {
        let h = self.encoder.forward(&b.input_ids, Some(&b.attention_mask), Some(&b.token_type_ids), ctx)?.last_hidden_state;
        self.head.forward(&h)
    }

    /// Samples a token at every labelled position of `labels` from the softmax of `logits`
    /// (`[B, T, V]`), with a generator seeded by `seed`: the discriminator's input (the batch's
    /// ids with the samples in place) and its labels (1 where the sample differs from the
    /// original, 0 elsewhere).
    pub fn corrupt(b: &Batch, logits: &Tensor, seed: u64) -> Result<(Tensor, Tensor)> {
        let labels = b.labels.to_vec::<i64>()?;
        let mut ids = b.input_ids.to_vec::<i64>()?;
        let v = *logits.shape().last().unwrap_or(&1);
        let at: Vec<i64> = labels.iter().enumerate().filter(|(_, &l)| l != IGNORE_INDEX).map(|(i, _)| i as i64).collect();
        let mut replaced = vec![0i64; labels.len()];
        if !at.is_empty() {
            let rows = crate::heads::gather_rows(&logits.detach(), &at, labels.len(), v)?.to_dtype(DType::F32)?.to_vec::<f32>()?;
            let mut rng = DataRng::new(seed, 0x454c45);
            for (r, &i) in rows.chunks(v).zip(&at) {
                let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let w: Vec<f64> = r.iter().map(|&x| ((x - m) as f64).exp()).collect();
                let mut u = rng.uniform() * w.iter().sum::<f64>();
                let mut tok = v - 1;
                for (t, &wt) in w.iter().enumerate() {
                    if u < wt {
                        tok = t;
                        break;
                    }
                    u -= wt;
                }
                let i = i as usize;
                ids[i] = tok as i64;
                replaced[i] = (tok as i64 != labels[i]) as i64;
            }
        }
        let dev = b.input_ids.device();
        Ok((Tensor::from_vec(ids, b.input_ids.shape())?.to_device(dev)?, Tensor::from_vec(replaced, b.labels.shape())?.to_device(dev)?))
    }

    /// The generator's MLM loss and the discriminator's replaced-token-detection loss (mean BCE
    /// over real tokens) of one batch.
    pub fn losses(&self, model: &Model, b: &Batch, ctx: &ForwardCtx) -> Result<(Tensor, Tensor)> {
        let logits = self.generator_logits(b, ctx)?;
        let gen = flat_ce(&logits, &b.labels, IGNORE_INDEX)?;
        let (ids, replaced) = no_grad(|| Self::corrupt(b, &logits, ctx.draw_seed()))?;
        let inputs = Inputs {
            input_ids: Some(ids),
            attention_mask: Some(b.attention_mask.clone()),
            token_type_ids: Some(b.token_type_ids.clone()),
            labels: Some(replaced),
            ..Default::default()
        };
        let disc = model.forward(&inputs, ctx)?.loss.ok_or_else(|| Error::msg("electra objective: the discriminator gave no loss"))?;
        Ok((gen, disc))
    }
}

impl Objective for Electra {
    fn name(&self) -> &'static str {
        "electra"
    }
    fn loss(&self, model: &Model, b: &Batch, ctx: &ForwardCtx) -> Result<Tensor> {
        let (gen, disc) = self.losses(model, b, ctx)?;
        gen.add(&disc.mul_scalar(self.disc_weight)?)
    }
    fn loss_is_perplexity(&self) -> bool {
        false
    }
    fn params(&self) -> Vec<Param> {
        self.store.trainable()
    }
    fn checkpoint_files(&self) -> Vec<CheckpointFile<'_>> {
        vec![(
            GENERATOR_FILE,
            Box::new(move || {
                let t: Vec<(String, Tensor)> = self.store.named_tensors().into_iter().map(|(n, t)| (n.strip_prefix(GENERATOR_PREFIX).unwrap_or(&n).to_string(), t)).collect();
                crate::st_io::to_safetensors_bytes(&t, Some(DType::F32), None)
            }),
        )]
    }
    fn restore(&self, dir: &Path) -> Result<()> {
        let path = dir.join(GENERATOR_FILE);
        let f = crate::st_io::StFile::open(&path)?;
        for p in self.store.params() {
            let name = p.name().strip_prefix(GENERATOR_PREFIX).unwrap_or(p.name());
            let t = f.tensor(name).map_err(|e| Error::msg(format!("{}: the generator's '{name}': {e}", path.display())))?;
            if t.shape() != p.shape().as_slice() {
                return Err(Error::msg(format!("{}: '{name}' has shape {:?}, the generator's is {:?}", path.display(), t.shape(), p.shape())));
            }
            p.assign(&t.to_dtype(p.dtype())?.to_device(p.device())?)?;
        }
        Ok(())
    }
}
