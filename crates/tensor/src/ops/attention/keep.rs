//! The attention-dropout mask of a row of keys, vectorised per SIMD level: bit `c` of
//! [`keep_bits`] is `keep(seed, base + c, thr)` of the dropout contract
//! ([`crate::ops::dropout::keep`]) for `c < n <= 128`, 8 counters at a time on AVX-512 (F + DQ:
//! 64-bit lane multiplies, the compare mask used as it is), 4 on AVX2 (64-bit products from 32-bit
//! ones), one at a time at the scalar level. Integer arithmetic only, so every level gives the same
//! bits (tested below).
//!
//! The contract keeps element `idx` when `u = (z >> 40)·2^-24 >= thr` (f32, both exact), i.e. when
//! the integer `z >> 40` is at least `kt = ceil(thr·2^24)`; the vector bodies compare integers.
#[cfg(target_arch = "x86_64")]
use crate::cpu::simd::{level, Level};

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const M1: u64 = 0xBF58_476D_1CE4_E5B9;
const M2: u64 = 0x94D0_49BB_1331_11EB;

/// The integer threshold of `thr`: `z >> 40 >= kt` iff the contract keeps the element.
pub(super) fn int_threshold(thr: f32) -> u64 {
    (thr as f64 * 16_777_216.0).ceil().max(0.0) as u64
}

/// Bit `c` (for `c < n`, `n <= 128`) is `keep(seed, base + c, thr)`; `kt` = [`int_threshold`] of
/// `thr`. Bits from `n` on are 0.
pub(super) fn keep_bits(seed: u64, base: u64, thr: f32, kt: u64, n: usize) -> u128 {
    assert!(n <= 128);
    #[cfg(target_arch = "x86_64")]
    {
        let (bits, done) = match level() {
            // SAFETY: the level is Avx512 only where avx512f was detected; dq is checked here.
            Level::Avx512 if std::is_x86_feature_detected!("avx512dq") => unsafe { x86::avx512(seed, base, kt, n) },
            // SAFETY: Avx512 and Avx2 imply avx2.
            Level::Avx512 | Level::Avx2 => unsafe { x86::avx2(seed, base, kt, n) },
            Level::Scalar => (0, 0),
        };
        bits | scalar(seed, base, thr, done, n)
    }
    #[cfg(not(target_arch = "x86_64"))]
    scalar(seed, base, thr, 0, n)
}

/// Bits `from..n` by the contract's own function.
fn scalar(seed: u64, base: u64, thr: f32, from: usize, n: usize) -> u128 {
    (from..n).filter(|&c| crate::ops::dropout::keep(seed, base.wrapping_add(c as u64), thr)).fold(0, |b, c| b | 1 << c)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{GOLDEN, M1, M2};
    use std::arch::x86_64::*;

    /// The bits of whole groups of 8 counters below `n`, and how many counters that is.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn avx512(seed: u64, base: u64, kt: u64, n: usize) -> (u128, usize) {
        let (g, m1, m2) = (_mm512_set1_epi64(GOLDEN as i64), _mm512_set1_epi64(M1 as i64), _mm512_set1_epi64(M2 as i64));
        let (sv, ktv) = (_mm512_set1_epi64(seed as i64), _mm512_set1_epi64(kt as i64));
        let lanes = _mm512_set_epi64(8, 7, 6, 5, 4, 3, 2, 1); // idx + 1
        let (mut c, mut out) = (0, 0u128);
        while c + 8 <= n {
            let idx1 = _mm512_add_epi64(_mm512_set1_epi64(base.wrapping_add(c as u64) as i64), lanes);
            let mut z = _mm512_add_epi64(sv, _mm512_mullo_epi64(g, idx1));
            z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64::<30>(z)), m1);
            z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64::<27>(z)), m2);
            z = _mm512_xor_si512(z, _mm512_srli_epi64::<31>(z));
            out |= (_mm512_cmpge_epu64_mask(_mm512_srli_epi64::<40>(z), ktv) as u128) << c;
            c += 8;
        }
        (out, c)
    }

    /// `a·m` modulo 2^64 per 64-bit lane, from three 32 × 32 → 64-bit products (AVX2 has no 64-bit
    /// lane multiply); `m_lo` / `m_hi` hold the halves of the constant in every lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn mul64(a: __m256i, m_lo: __m256i, m_hi: __m256i) -> __m256i {
        let lo = _mm256_mul_epu32(a, m_lo);
        let cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64::<32>(a), m_lo), _mm256_mul_epu32(a, m_hi));
        _mm256_add_epi64(lo, _mm256_slli_epi64::<32>(cross))
    }

    /// The bits of whole groups of 4 counters below `n`, and how many counters that is.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2(seed: u64, base: u64, kt: u64, n: usize) -> (u128, usize) {
        let halves = |m: u64| (_mm256_set1_epi64x((m & 0xFFFF_FFFF) as i64), _mm256_set1_epi64x((m >> 32) as i64));
        let ((g_lo, g_hi), (m1_lo, m1_hi), (m2_lo, m2_hi)) = (halves(GOLDEN), halves(M1), halves(M2));
        let sv = _mm256_set1_epi64x(seed as i64);
        // z >> 40 < 2^24 and kt <= 2^24 + 1: a signed compare with kt - 1 is exact
        let ktm1 = _mm256_set1_epi64x(kt as i64 - 1);
        let lanes = _mm256_set_epi64x(4, 3, 2, 1); // idx + 1
        let (mut c, mut out) = (0, 0u128);
        while c + 4 <= n {
            let idx1 = _mm256_add_epi64(_mm256_set1_epi64x(base.wrapping_add(c as u64) as i64), lanes);
            let mut z = _mm256_add_epi64(sv, mul64(idx1, g_lo, g_hi));
            z = mul64(_mm256_xor_si256(z, _mm256_srli_epi64::<30>(z)), m1_lo, m1_hi);
            z = mul64(_mm256_xor_si256(z, _mm256_srli_epi64::<27>(z)), m2_lo, m2_hi);
            z = _mm256_xor_si256(z, _mm256_srli_epi64::<31>(z));
            let keep = _mm256_cmpgt_epi64(_mm256_srli_epi64::<40>(z), ktm1);
            out |= (_mm256_movemask_pd(_mm256_castsi256_pd(keep)) as u128) << c;
            c += 4;
        }
        (out, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::{available_levels, with_level};

    #[test]
    fn every_level_gives_the_contracts_flags() {
        let thrs = [f32::MIN_POSITIVE, 1e-7, 0.1, 0.5, 0.9, 0.999_999_94, 1.0];
        let seeds = [0u64, 42, u64::MAX, 0x0123_4567_89AB_CDEF];
        let bases = [0u64, 1, 1000, u64::MAX - 70, 1 << 40];
        for &thr in &thrs {
            let kt = int_threshold(thr);
            for &seed in &seeds {
                for &base in &bases {
                    for n in [0usize, 1, 3, 4, 7, 8, 9, 64, 67, 128] {
                        let want = (0..n).filter(|&c| crate::ops::dropout::keep(seed, base.wrapping_add(c as u64), thr)).fold(0u128, |b, c| b | 1 << c);
                        for l in available_levels() {
                            let got = with_level(l, || keep_bits(seed, base, thr, kt, n));
                            assert_eq!(got, want, "{l:?} thr {thr} seed {seed} base {base} n {n}");
                        }
                    }
                }
            }
        }
        // thresholds equal to an element's own uniform number: kept (u >= thr), at every level
        for (seed, base) in [(3u64, 17u64), (u64::MAX, 1 << 50)] {
            for c in 0..16u64 {
                let thr = crate::ops::dropout::dropout_uniform(seed, base + c);
                let want = (0..16).filter(|&x| crate::ops::dropout::keep(seed, base + x, thr)).fold(0u128, |b, x| b | 1 << x);
                assert!(want >> c & 1 == 1);
                for l in available_levels() {
                    let got = with_level(l, || keep_bits(seed, base, thr, int_threshold(thr), 16));
                    assert_eq!(got, want, "{l:?} seed {seed} base {base}: threshold of element {c}");
                }
            }
        }
        // the thresholds keep about 1 - thr
        let kept: u32 = (0..1000u64).map(|r| keep_bits(7, r * 100, 0.25, int_threshold(0.25), 100).count_ones()).sum();
        assert!((74_000..76_000).contains(&kept), "{kept}");
    }
}
