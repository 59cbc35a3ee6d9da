//! Learning-rate schedules: linear warm-up, then constant, linear or cosine decay. Pure functions of
//! the step, so resuming needs nothing but the step number.
//!
//! `step` is the 0-based index of the optimizer update about to be taken. During warm-up
//! (`step < warmup`) the rate is `peak · (step + 1) / warmup`, so the first update already moves the
//! weights and the peak is reached at `step = warmup − 1`. After warm-up, with
//! `progress = (step − warmup) / (total − warmup)` clamped to [0, 1]:
//! linear `min + (peak − min)·(1 − progress)`, cosine `min + (peak − min)·½(1 + cos(π·progress))`.
//!
//! ```
//! use kiln_model::sched::{Decay, LrSchedule};
//! let s = LrSchedule { peak_lr: 1e-3, min_lr: 0.0, warmup_steps: 10, total_steps: 110, decay: Decay::Linear };
//! assert_eq!(s.lr_at(9), 1e-3);
//! assert!((s.lr_at(60) - 5e-4).abs() < 1e-12);
//! assert_eq!(s.lr_at(1000), 0.0);
//! ```
use serde::{Deserialize, Serialize};

/// What happens after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Stay at the peak.
    Constant,
    /// Linear to `min_lr` at `total_steps`.
    Linear,
    /// Half a cosine to `min_lr` at `total_steps`.
    Cosine,
}

impl std::str::FromStr for Decay {
    type Err = kiln_tensor::Error;
    fn from_str(s: &str) -> kiln_tensor::Result<Decay> {
        match s {
            "constant" => Ok(Decay::Constant),
            "linear" => Ok(Decay::Linear),
            "cosine" => Ok(Decay::Cosine),
            _ => Err(kiln_tensor::Error::msg(format!("unknown schedule '{s}' (expected constant, linear or cosine)"))),
        }
    }
}

/// Warm-up plus decay; see the module docs for the exact formulas.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub peak_lr: f64,
    /// The floor reached at `total_steps` (0 for HF's schedules).
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub decay: Decay,
}

impl LrSchedule {
    /// A constant rate with no warm-up.
    pub fn constant(lr: f64) -> LrSchedule {
        LrSchedule { peak_lr: lr, min_lr: lr, warmup_steps: 0, total_steps: 0, decay: Decay::Constant }
    }
    /// The rate for update number `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        lr_at(step, self.peak_lr, self.min_lr, self.warmup_steps, self.total_steps, self.decay)
    }
}

/// The schedule as a free function (see [`LrSchedule`]).
pub fn lr_at(step: u64, peak: f64, min: f64, warmup: u64, total: u64, decay: Decay) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup);
    let progress = if span == 0 { 1.0 } else { ((step - warmup) as f64 / span as f64).min(1.0) };
    match decay {
        Decay::Constant => peak,
        Decay::Linear => min + (peak - min) * (1.0 - progress),
        Decay::Cosine => min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}
