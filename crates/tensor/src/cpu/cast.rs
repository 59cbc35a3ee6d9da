//! Whole-buffer f32 ↔ bf16 casts (`CpuStorage::to_dtype`; mixed precision casts every weight and
//! many activations each step): split across rayon's threads in chunks of 64K elements, and the
//! f32 → bf16 rounding done 16 lanes at a time on AVX-512 (BW + VL) with the bits of
//! `half::bf16::from_f32` (nearest even, NaN kept quiet). Elsewhere the same conversions, scalar.
use half::bf16;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per task (256 KB of f32).
const CHUNK: usize = 1 << 16;

/// A fresh buffer of `v.len()` elements, `conv` writing each chunk's outputs from its inputs,
/// the chunks across rayon's threads when there is more than one. `conv` must write every
/// element of the output slice it is given.
fn map_chunks<S: Sync, D: Send>(v: &[S], conv: impl Fn((&[S], &mut [MaybeUninit<D>])) + Sync + Send) -> Vec<D> {
    // SAFETY: `conv` writes every element of each chunk (its contract), so all `v.len()` are written
    unsafe {
        super::uninit_vec(v.len(), |out| {
            if v.len() > CHUNK {
                v.par_chunks(CHUNK).zip(out.par_chunks_mut(CHUNK)).for_each(&conv);
            } else {
                conv((v, out));
            }
        })
    }
}

/// `v` rounded to bf16, element by element: the bits of `half::bf16::from_f32`.
pub(crate) fn f32_to_bf16(v: &[f32]) -> Vec<bf16> {
    let conv = |(src, dst): (&[f32], &mut [MaybeUninit<bf16>])| {
        #[cfg(target_arch = "x86_64")]
        if super::sbgemm::round_available() {
            // SAFETY: the CPU has the features (checked); `dst` holds src.len() elements
            unsafe { super::sbgemm::round_row(src.as_ptr(), dst.as_mut_ptr() as *mut u16, src.len()) };
            return;
        }
        for (d, &s) in dst.iter_mut().zip(src) {
            d.write(bf16::from_f32(s));
        }
    };
    map_chunks(v, conv)
}

/// `v` widened to f32 (exact; a NaN keeps its payload with the quiet bit set, as `bf16::to_f32`).
pub(crate) fn bf16_to_f32(v: &[bf16]) -> Vec<f32> {
    let conv = |(src, dst): (&[bf16], &mut [MaybeUninit<f32>])| {
        for (d, s) in dst.iter_mut().zip(src) {
            let x = s.to_bits() as u32;
            let x = if x & 0x7FFF > 0x7F80 { x | 0x40 } else { x };
            d.write(f32::from_bits(x << 16));
        }
    };
    map_chunks(v, conv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both casts give `half`'s bits on special values and on a buffer long enough to be split
    /// across threads, at every SIMD level this CPU has.
    #[test]
    fn casts_match_half_at_every_level() {
        let mut xs: Vec<f32> = vec![0.0, -0.0, 1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::MAX, f32::MIN, 1e-40, -3e-39, f32::MIN_POSITIVE];
        xs.extend([0x3F80_8000u32, 0x3F81_8000, 0x3F80_8001, 0x3F80_7FFF, 0x7F7F_FFFF, 0x7FC0_0001, 0x7F80_0001, 0xFF80_0001].map(f32::from_bits));
        xs.extend((0..3 * CHUNK + 17).map(|i| ((i as u64 * 2654435761) % 100_000) as f32 * 1.37e-3 - 60.0));
        for l in super::super::simd::available_levels() {
            super::super::simd::with_level(l, || {
                let h = f32_to_bf16(&xs);
                assert_eq!(h.len(), xs.len());
                for (x, y) in xs.iter().zip(&h) {
                    assert_eq!(y.to_bits(), bf16::from_f32(*x).to_bits(), "{l:?}: {x:e}");
                }
                let back = bf16_to_f32(&h);
                for (x, y) in h.iter().zip(&back) {
                    assert_eq!(y.to_bits(), x.to_f32().to_bits(), "{l:?}: {x}");
                }
            });
        }
        assert!(f32_to_bf16(&[]).is_empty() && bf16_to_f32(&[]).is_empty());
    }
}
