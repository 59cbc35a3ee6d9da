//! The AdamW element loop (CPU, f32), in PyTorch's operation order:
//!
//! ```text
//! p = p * decay                         (decoupled weight decay, when enabled)
//! m = lerp(m, g, w1)                    (fma(w1, g - m, m) for w1 < 0.5, like ATen's vectorised lerp)
//! v = v * beta2;  v = v + (one_minus_beta2 * g) * g
//! p = p + (neg_step_size * m) / (sqrt(v) / bc2_sqrt + eps)
//! ```
//!
//! One scalar body compiled three times (scalar, AVX2+FMA, AVX-512) via `#[target_feature]`, chosen
//! by `cpu::simd::level()`. `mul_add` is a correctly rounded FMA on every path, so all
//! paths give bit-identical results. Large tensors are split across rayon threads (elementwise, so
//! the result does not depend on the split).
use super::AdamWScalars as AdamScalars;
use crate::cpu::simd::{level, Level};
use crate::{Error, Result};
use rayon::prelude::*;

#[inline(always)]
fn body(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamScalars) {
    let n = p.len().min(g.len()).min(m.len()).min(v.len());
    let (p, g, m, v) = (&mut p[..n], &g[..n], &mut m[..n], &mut v[..n]);
    if s.decay != 1.0 {
        for x in p.iter_mut() {
            *x *= s.decay;
        }
    }
    let small = s.w1.abs() < 0.5;
    let coeff = if small { s.w1 } else { s.w1 - 1.0 };
    for i in 0..n {
        let gi = g[i];
        let mi = m[i];
        let base = if small { mi } else { gi };
        let mn = coeff.mul_add(gi - mi, base);
        m[i] = mn;
        let vn = v[i] * s.beta2 + (s.one_minus_beta2 * gi) * gi;
        v[i] = vn;
        let denom = vn.sqrt() / s.bc2_sqrt + s.eps;
        p[i] += (s.neg_step_size * mn) / denom;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn body_avx2(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamScalars) {
    body(p, g, m, v, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn body_avx512(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamScalars) {
    body(p, g, m, v, s)
}

fn dispatch(l: Level, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamScalars) {
    match l {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level()` only reports Avx512 when the CPU has avx512f (and fma, checked at detection of Avx2).
        Level::Avx512 if std::is_x86_feature_detected!("fma") => unsafe { body_avx512(p, g, m, v, s) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level()` only reports Avx2 (or higher) when the CPU has avx2 and fma.
        Level::Avx2 | Level::Avx512 => unsafe { body_avx2(p, g, m, v, s) },
        _ => body(p, g, m, v, s),
    }
}

const CHUNK: usize = 1 << 15;

/// Updates `p`, `m`, `v` in place from gradient `g`; an error (nothing updated) unless all four
/// have the same length.
pub fn adamw_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamScalars) -> Result<()> {
    if !(p.len() == g.len() && p.len() == m.len() && p.len() == v.len()) {
        return Err(Error::msg(format!(
            "adamw_update: parameter, gradient and moments must have one length, got {}, {}, {}, {}",
            p.len(),
            g.len(),
            m.len(),
            v.len()
        )));
    }
    let l = level();
    if p.len() < 2 * CHUNK {
        dispatch(l, p, g, m, v, s);
        return Ok(());
    }
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| dispatch(l, p, g, m, v, s));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::{available_levels, with_level};

    #[test]
    fn every_level_matches_scalar_bitwise() {
        let n = 1000;
        let mk = |k: u32| (0..n).map(|i| ((i as f32 * 0.37 + k as f32).sin()) * 0.1).collect::<Vec<f32>>();
        let s = AdamScalars { decay: 0.99999, w1: 0.1, beta2: 0.999, one_minus_beta2: 0.001, bc2_sqrt: 0.0316, eps: 1e-8, neg_step_size: -0.01 };
        let run = |l: Level| {
            with_level(l, || {
                let (mut p, g, mut m, mut v) = (mk(0), mk(1), mk(2), mk(3).iter().map(|x| x.abs()).collect::<Vec<_>>());
                adamw_update(&mut p, &g, &mut m, &mut v, &s).unwrap();
                (p, m, v)
            })
        };
        let reference = run(Level::Scalar);
        for l in available_levels() {
            assert_eq!(run(l), reference, "level {l:?}");
        }
    }

    #[test]
    fn mismatched_lengths_are_an_error_and_update_nothing() {
        let s = AdamScalars { decay: 1.0, w1: 0.1, beta2: 0.999, one_minus_beta2: 0.001, bc2_sqrt: 1.0, eps: 1e-8, neg_step_size: -0.01 };
        let (mut p, g, mut m, mut v) = (vec![1.0f32; 4], vec![1.0f32; 3], vec![0.0f32; 4], vec![0.0f32; 4]);
        let e = adamw_update(&mut p, &g, &mut m, &mut v, &s).unwrap_err().to_string();
        assert!(e.contains("adamw_update") && e.contains("4, 3, 4, 4"), "{e}");
        assert_eq!(p, vec![1.0f32; 4]);
    }
}
