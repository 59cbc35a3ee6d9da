//! A seeded, serialisable random generator for data pipelines ([`DataRng`], ChaCha8) and its saved
//! form ([`RngState`]: seed, stream and word position), so a resumed run draws exactly the numbers
//! an uninterrupted run would have drawn.
//!
//! The sampling helpers are written here (not taken from `rand`'s distributions) so the stream of
//! draws is fixed by this file alone.
use kiln_tensor::{Error, Result};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// The saved position of a [`DataRng`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte ChaCha key, hex.
    pub seed: String,
    pub stream: u64,
    /// Words (32-bit) consumed so far; a decimal string because JSON numbers cannot hold a u128.
    pub word_pos: String,
}

/// ChaCha8 with exact save/restore and a few samplers.
#[derive(Debug, Clone)]
pub struct DataRng(ChaCha8Rng);

impl DataRng {
    /// A generator seeded from `seed` (ChaCha8's `seed_from_u64`) on stream `stream`.
    pub fn new(seed: u64, stream: u64) -> DataRng {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        r.set_stream(stream);
        DataRng(r)
    }
    /// The position to save.
    pub fn state(&self) -> RngState {
        let seed: String = self.0.get_seed().iter().map(|b| format!("{b:02x}")).collect();
        RngState { seed, stream: self.0.get_stream(), word_pos: self.0.get_word_pos().to_string() }
    }
    /// A generator at a saved position.
    pub fn from_state(s: &RngState) -> Result<DataRng> {
        let bad = || Error::msg(format!("rng state: bad seed '{}' (expected 64 hex digits)", s.seed));
        if s.seed.len() != 64 {
            return Err(bad());
        }
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&s.seed[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        let pos: u128 = s.word_pos.parse().map_err(|_| Error::msg(format!("rng state: bad word_pos '{}'", s.word_pos)))?;
        let mut r = ChaCha8Rng::from_seed(key);
        r.set_stream(s.stream);
        r.set_word_pos(pos);
        Ok(DataRng(r))
    }
    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform integer in [0, n) without modulo bias (Lemire's method). `n` must be > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "DataRng::below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let x = self.next_u64();
            let m = (x as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
    /// True with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
    /// `k` distinct indices from [0, n), in draw order (partial Fisher-Yates).
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below((n - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx.truncate(k);
        idx
    }
}

/// The permutation of `0..n` for `epoch` of a pipeline seeded with `seed` (independent of any
/// other draw, so a data position `(epoch, cursor)` is enough to resume).
pub fn epoch_permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut rng = DataRng::new(seed ^ 0x5eed_da7a_0000_0000, epoch);
    let mut p: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut p);
    p
}
