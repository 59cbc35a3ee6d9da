//! Optimizers over any set of [`Param`]s: [`AdamW`] (decoupled weight decay, PyTorch semantics),
//! [`Sgd`], and global-norm gradient clipping ([`clip_grad_norm`]).
//!
//! Optimizer state is keyed by parameter name, so it can be saved and restored
//! ([`Optimizer::state`] / [`Optimizer::load_state`]) and survives re-building the model.
//!
//! ```
//! use kiln_model::optim::{AdamW, AdamWConfig, Optimizer};
//! use kiln_model::params::{Init, ParamStore};
//! use kiln_tensor::{DType, Device, Tensor};
//! let store = ParamStore::new(0, DType::F32, Device::Cpu);
//! let w = store.get_or_init("w", &[3], Init::Ones)?;
//! w.set_grad(Some(Tensor::from_slice(&[1.0f32, -1.0, 0.0], &[3])?));
//! let mut opt = AdamW::new(AdamWConfig { lr: 0.1, weight_decay: 0.0, ..Default::default() });
//! opt.step(&store.trainable())?;
//! let v = w.tensor().to_vec::<f32>()?;
//! assert!((v[0] - 0.9).abs() < 1e-6 && (v[1] - 1.1).abs() < 1e-6 && v[2] == 1.0);
//! # Ok::<(), kiln_tensor::Error>(())
//! ```
use kiln_tensor::ops::adamw::{adamw_update, AdamWScalars as AdamScalars};
use crate::params::Param;
use kiln_tensor::{no_grad, CpuStorage, DType, Device, Error, Result, Storage, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A snapshot of an optimizer's state: per-parameter step counts and named state tensors.
#[derive(Debug, Clone, Default)]
pub struct OptimState {
    /// `"adamw"` or `"sgd"`.
    pub kind: String,
    /// Hyper-parameters as JSON (informational; restored by [`Optimizer::load_state`]).
    pub hyper: serde_json::Value,
    /// Updates taken per parameter.
    pub steps: BTreeMap<String, u64>,
    /// State tensors, e.g. `exp_avg.<param>` and `exp_avg_sq.<param>` (f32, CPU).
    pub tensors: Vec<(String, Tensor)>,
}

impl OptimState {
    /// A state of `kind` with `cfg` as its hyper-parameters.
    fn new<C: Serialize>(kind: &str, cfg: &C, steps: BTreeMap<String, u64>, tensors: Vec<(String, Tensor)>) -> Result<Self> {
        let hyper = serde_json::to_value(cfg).map_err(|e| Error::msg(format!("{kind}: {e}")))?;
        Ok(OptimState { kind: kind.into(), hyper, steps, tensors })
    }

    /// Checks that this state is of `kind`, restores the hyper-parameters into `cfg` (when
    /// present) and returns a lookup `name -> tensor` whose misses are errors naming the tensor.
    fn open<'a, C: serde::de::DeserializeOwned>(&'a self, kind: &'static str, cfg: &mut C) -> Result<impl Fn(&str) -> Result<&'a Tensor> + 'a> {
        if self.kind != kind {
            return Err(Error::msg(format!("{kind}: cannot load optimizer state of kind '{}'", self.kind)));
        }
        if !self.hyper.is_null() {
            *cfg = serde_json::from_value(self.hyper.clone()).map_err(|e| Error::msg(format!("{kind}: bad hyper-parameters in state: {e}")))?;
        }
        let map: BTreeMap<&str, &Tensor> = self.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Ok(move |k: &str| -> Result<&'a Tensor> { map.get(k).copied().ok_or_else(|| Error::msg(format!("{kind}: state tensor '{k}' missing"))) })
    }
}

/// What every optimizer offers.
pub trait Optimizer {
    /// One update of every parameter in `params` that has a gradient and is not frozen.
    fn step(&mut self, params: &[Param]) -> Result<()>;
    /// The learning rate the next `step` uses.
    fn lr(&self) -> f64;
    /// Sets the learning rate (from a schedule) for the next `step`.
    fn set_lr(&mut self, lr: f64);
    /// A snapshot of the state (for the training-state file).
    fn state(&self) -> Result<OptimState>;
    /// Restores a snapshot made by [`Optimizer::state`] of the same optimizer kind.
    fn load_state(&mut self, s: &OptimState) -> Result<()>;
}

/// AdamW hyper-parameters (PyTorch defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, wd 0.01).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay; skipped for parameters marked [`Param::no_decay`].
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// PyTorch's checks: lr ≥ 0, eps ≥ 0, betas in [0, 1), weight decay ≥ 0, all finite; the error
    /// names the hyper-parameter.
    pub fn check(&self) -> Result<()> {
        let bad = |name: &str, v: f64, want: &str| Err(Error::msg(format!("adamw: {name} = {v} is invalid ({want})")));
        for (name, v) in [("lr", self.lr), ("eps", self.eps), ("weight_decay", self.weight_decay)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(name, v, "must be finite and >= 0");
            }
        }
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(name, v, "must be in [0, 1)");
            }
        }
        Ok(())
    }
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// One parameter's AdamW step count and moments (m, v), as [`AdamW::moments`] returns them.
pub type ParamMoments = (u64, Vec<f32>, Vec<f32>);

struct Moments {
    step: u64,
    buf: MomentBuf,
}

/// Where a parameter's moments live: beside it (host vectors for a CPU parameter, f32 device
/// tensors for a CUDA one), so a step moves no optimizer state across the bus.
enum MomentBuf {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

impl MomentBuf {
    fn len(&self) -> usize {
        match self {
            MomentBuf::Host { m, .. } => m.len(),
            MomentBuf::Device { m, .. } => m.elem_count(),
        }
    }
    /// The moments as host vectors (downloaded if they are on a device).
    fn to_host(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        match self {
            MomentBuf::Host { m, v } => Ok((m.clone(), v.clone())),
            MomentBuf::Device { m, v } => Ok((m.to_device(Device::Cpu)?.to_vec::<f32>()?, v.to_device(Device::Cpu)?.to_vec::<f32>()?)),
        }
    }
    /// Makes the moments live on `device` (CPU: host vectors), moving them if needed.
    fn move_to(&mut self, device: Device) -> Result<()> {
        let here = match self {
            MomentBuf::Host { .. } => Device::Cpu,
            MomentBuf::Device { m, .. } => m.device(),
        };
        if here == device {
            return Ok(());
        }
        let (m, v) = self.to_host()?;
        *self = if device == Device::Cpu {
            MomentBuf::Host { m, v }
        } else {
            let n = m.len();
            MomentBuf::Device { m: Tensor::from_vec(m, &[n])?.to_device(device)?, v: Tensor::from_vec(v, &[n])?.to_device(device)? }
        };
        Ok(())
    }
}

/// AdamW exactly like `torch.optim.AdamW` (single-tensor path), in f32:
/// `p ← p·(1 − lr·wd)`, `m ← lerp(m, g, 1 − β1)`, `v ← β2·v + (1 − β2)·g²`,
/// `p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + eps)`, with a per-parameter step `t`.
/// Parameters without a gradient or frozen are skipped (their step does not advance).
/// CPU f32 parameters are updated in place by a SIMD loop; f32 CUDA parameters on their device by
/// one fused kernel per parameter (moments kept on the device, the same bits as the CPU loop);
/// other dtypes are computed in f32 on the host and written back.
pub struct AdamW {
    cfg: AdamWConfig,
    state: BTreeMap<String, Moments>,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig) -> AdamW {
        AdamW { cfg, state: BTreeMap::new() }
    }
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }
    /// The step count of parameter `name` (0 before its first update).
    pub fn step_of(&self, name: &str) -> u64 {
        self.state.get(name).map(|s| s.step).unwrap_or(0)
    }
    /// Drops all moments.
    pub fn reset(&mut self) {
        self.state.clear();
    }
    /// Bytes of moments held (two f32 per element of each parameter it has state for).
    pub fn state_bytes(&self) -> usize {
        self.state.values().map(|s| s.buf.len() * 2 * std::mem::size_of::<f32>()).sum()
    }
    /// Keeps the moments of the parameters `keep` accepts and drops the others (a ZeRO-1 shard).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.state.retain(|name, _| keep(name));
    }
    /// Parameter `name`'s step count and moments (m, v) as host vectors, if it has any.
    pub fn moments(&self, name: &str) -> Result<Option<ParamMoments>> {
        let Some(s) = self.state.get(name) else { return Ok(None) };
        let (m, v) = s.buf.to_host()?;
        Ok(Some((s.step, m, v)))
    }
    /// Sets parameter `name`'s step count and moments (from [`AdamW::moments`] of another shard).
    pub fn set_moments(&mut self, name: &str, step: u64, m: Vec<f32>, v: Vec<f32>) -> Result<()> {
        if m.len() != v.len() {
            return Err(Error::msg(format!("adamw: moments of '{name}' differ in size")));
        }
        self.state.insert(name.to_string(), Moments { step, buf: MomentBuf::Host { m, v } });
        Ok(())
    }

    fn step_param(&mut self, p: &Param) -> Result<()> {
        if p.is_frozen() {
            return Ok(());
        }
        let Some(g) = p.grad() else { return Ok(()) };
        let t = p.tensor();
        if g.shape() != t.shape() {
            return Err(Error::ShapeMismatch { op: "adamw", lhs: t.shape().to_vec(), rhs: g.shape().to_vec() });
        }
        let n = t.elem_count();
        let st = self.state.entry(p.name().to_string()).or_insert_with(|| Moments { step: 0, buf: MomentBuf::Host { m: vec![0.0; n], v: vec![0.0; n] } });
        if st.buf.len() != n {
            return Err(Error::msg(format!("adamw: state of '{}' has {} elements, parameter has {n}", p.name(), st.buf.len())));
        }
        // an f32 CUDA parameter is updated on its device by the fused kernel (moments kept there)
        let on_device = t.device().is_cuda() && t.dtype() == DType::F32 && g.device() == t.device();
        st.buf.move_to(if on_device { t.device() } else { Device::Cpu })?;
        st.step += 1;
        let c = &self.cfg;
        let step = st.step as f64;
        let wd = if p.no_decay() { 0.0 } else { c.weight_decay };
        let s = AdamScalars {
            decay: if wd != 0.0 { (1.0 - c.lr * wd) as f32 } else { 1.0 },
            w1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            bc2_sqrt: (1.0 - c.beta2.powf(step)).sqrt() as f32,
            eps: c.eps as f32,
            neg_step_size: (-(c.lr / (1.0 - c.beta1.powf(step)))) as f32,
        };
        let (m, v) = match &mut st.buf {
            MomentBuf::Device { m, v } => {
                let (p2, m2, v2) = no_grad(|| kiln_tensor::ops::adamw::adamw_step(&t.detach(), &g.detach(), m, v, &s))?;
                no_grad(|| t.assign(&p2))?;
                (*m, *v) = (m2, v2);
                return Ok(());
            }
            MomentBuf::Host { m, v } => (m, v),
        };
        let g32 = g.to_dtype(DType::F32)?.to_device(Device::Cpu)?.contiguous()?;
        no_grad(|| {
            g32.with_slice::<f32, _>(|gs| {
                let fast = t.dtype() == DType::F32 && t.device() == Device::Cpu && t.is_contiguous();
                if fast {
                    let off = t.layout().offset();
                    t.update_storage(|stg| {
                        let ps = &mut stg.as_cpu_mut()?.as_mut_slice::<f32>()?[off..off + n];
                        adamw_update(ps, gs, m, v, &s)
                    })
                } else {
                    let mut ps = t.to_dtype(DType::F32)?.to_device(Device::Cpu)?.to_vec::<f32>()?;
                    adamw_update(&mut ps, gs, m, v, &s)?;
                    let upd = Tensor::from_storage(Storage::Cpu(CpuStorage::F32(ps)), t.shape())?;
                    t.assign(&upd.to_dtype(t.dtype())?.to_device(t.device())?)
                }
            })?
        })
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, params: &[Param]) -> Result<()> {
        params.iter().try_for_each(|p| self.step_param(p))
    }
    fn lr(&self) -> f64 {
        self.cfg.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }
    fn state(&self) -> Result<OptimState> {
        let mut tensors = Vec::new();
        let mut steps = BTreeMap::new();
        for (name, s) in &self.state {
            steps.insert(name.clone(), s.step);
            let (m, v) = s.buf.to_host()?;
            let n = m.len();
            tensors.push((format!("exp_avg.{name}"), Tensor::from_vec(m, &[n])?));
            tensors.push((format!("exp_avg_sq.{name}"), Tensor::from_vec(v, &[n])?));
        }
        OptimState::new("adamw", &self.cfg, steps, tensors)
    }
    fn load_state(&mut self, s: &OptimState) -> Result<()> {
        let lookup = s.open("adamw", &mut self.cfg)?;
        let mut state = BTreeMap::new();
        for (name, &step) in &s.steps {
            let get = |k: String| -> Result<Vec<f32>> { lookup(&k)?.to_dtype(DType::F32)?.to_vec::<f32>() };
            let (m, v) = (get(format!("exp_avg.{name}"))?, get(format!("exp_avg_sq.{name}"))?);
            if m.len() != v.len() {
                return Err(Error::msg(format!("adamw: moments of '{name}' differ in size")));
            }
            state.insert(name.clone(), Moments { step, buf: MomentBuf::Host { m, v } });
        }
        self.state = state;
        Ok(())
    }
}

/// SGD hyper-parameters (PyTorch semantics: coupled L2 `weight_decay`, heavy-ball `momentum`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

/// Plain SGD with optional momentum: `d = g + wd·p`, `buf ← μ·buf + d` (`buf = d` at first),
/// `p ← p − lr·buf`. Computed in f64 per element, stored in the parameter's dtype.
pub struct Sgd {
    cfg: SgdConfig,
    bufs: BTreeMap<String, (u64, Vec<f64>)>,
}

impl Sgd {
    pub fn new(cfg: SgdConfig) -> Sgd {
        Sgd { cfg, bufs: BTreeMap::new() }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &[Param]) -> Result<()> {
        for p in params {
            if p.is_frozen() {
                continue;
            }
            let Some(g) = p.grad() else { continue };
            let t = p.tensor();
            let (gv, pv) = (g.to_vec_f64()?, t.to_vec_f64()?);
            let c = self.cfg;
            let wd = if p.no_decay() { 0.0 } else { c.weight_decay };
            let d: Vec<f64> = gv.iter().zip(&pv).map(|(g, p)| g + wd * p).collect();
            let upd: Vec<f64> = if c.momentum != 0.0 {
                let e = self.bufs.entry(p.name().to_string()).or_insert_with(|| (0, Vec::new()));
                e.1 = if e.0 == 0 { d } else { e.1.iter().zip(&d).map(|(b, d)| c.momentum * b + d).collect() };
                e.0 += 1;
                e.1.clone()
            } else {
                d
            };
            let new: Vec<f64> = pv.iter().zip(&upd).map(|(p, u)| p - c.lr * u).collect();
            let nt = Tensor::from_storage(Storage::Cpu(CpuStorage::from_f64_iter(t.dtype(), new.into_iter())), t.shape())?;
            no_grad(|| t.assign(&nt.to_device(t.device())?))?;
        }
        Ok(())
    }
    fn lr(&self) -> f64 {
        self.cfg.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }
    fn state(&self) -> Result<OptimState> {
        let mut tensors = Vec::new();
        let mut steps = BTreeMap::new();
        for (name, (s, b)) in &self.bufs {
            steps.insert(name.clone(), *s);
            tensors.push((format!("momentum_buffer.{name}"), Tensor::from_slice(b, &[b.len()])?));
        }
        OptimState::new("sgd", &self.cfg, steps, tensors)
    }
    fn load_state(&mut self, s: &OptimState) -> Result<()> {
        let lookup = s.open("sgd", &mut self.cfg)?;
        let mut bufs = BTreeMap::new();
        for (name, &step) in &s.steps {
            bufs.insert(name.clone(), (step, lookup(&format!("momentum_buffer.{name}"))?.to_vec_f64()?));
        }
        self.bufs = bufs;
        Ok(())
    }
}

/// The global L2 norm of all gradients of `params` (accumulated in f64 on the host; the squares of
/// CUDA gradients are summed on their device in f32 first).
pub fn grad_norm(params: &[Param]) -> Result<f64> {
    let mut ss = 0.0f64;
    // CUDA gradients: squares summed on their device in f32 (one small download per device, not
    // every gradient); CPU gradients: summed in f64 on the host
    let mut on_device: Vec<Tensor> = Vec::new();
    for p in params {
        if let Some(g) = p.grad() {
            if g.device().is_cuda() {
                let s = no_grad(|| g.to_dtype(DType::F32)?.sqr()?.sum_all())?;
                match on_device.iter_mut().find(|t| t.device() == s.device()) {
                    Some(t) => *t = no_grad(|| t.add(&s))?,
                    None => on_device.push(s),
                }
                continue;
            }
            ss += match g.dtype() {
                DType::F32 => g.with_slice::<f32, _>(|s| s.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())?,
                _ => g.to_vec_f64()?.iter().map(|x| x * x).sum::<f64>(),
            };
        }
    }
    for t in on_device {
        ss += t.to_vec_f64()?[0];
    }
    Ok(ss.sqrt())
}

/// Clips gradients by their global norm like `torch.nn.utils.clip_grad_norm_`: with
/// `total = ‖all grads‖₂`, every gradient is scaled by `max_norm / (total + 1e-6)` when that is
/// below 1. Returns `total` (before clipping). A non-finite total is returned unchanged and the
/// gradients are left as they are, so the caller can detect it and skip the step.
pub fn clip_grad_norm(params: &[Param], max_norm: f64) -> Result<f64> {
    if !(max_norm > 0.0) {
        return Err(Error::msg(format!("clip_grad_norm: max_norm must be > 0, got {max_norm}")));
    }
    let total = grad_norm(params)?;
    clip_grads_to(params, total, max_norm)?;
    Ok(total)
}

/// The scaling half of [`clip_grad_norm`] for a caller that already has the global norm `total`
/// (from [`grad_norm`]): scales every gradient by `max_norm / (total + 1e-6)` when that is below 1;
/// a non-finite `total` leaves them as they are.
pub fn clip_grads_to(params: &[Param], total: f64, max_norm: f64) -> Result<()> {
    if !total.is_finite() {
        return Ok(());
    }
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        let c32 = coef as f32 as f64;
        no_grad(|| -> Result<()> {
            for p in params {
                if let Some(g) = p.grad() {
                    p.set_grad(Some(g.mul_scalar(c32)?));
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Multiplies every gradient by `factor` (e.g. `1 / accumulation_steps`).
pub fn scale_grads(params: &[Param], factor: f64) -> Result<()> {
    no_grad(|| {
        params.iter().try_for_each(|p| {
            if let Some(g) = p.grad() {
                p.set_grad(Some(g.mul_scalar(factor)?));
            }
            Ok(())
        })
    })
}
