//! CPU kernels of fused attention: tiled forward with an online softmax (saves the per-row
//! logsumexp) and a fused backward that recomputes the probabilities tile by tile. No Tq×Tk matrix
//! is ever stored; scratch is O(tile²) per task. Parallel with rayon, deterministic: every output
//! element is produced by one task in a fixed order (the backward's optional dQ partials are summed
//! in a fixed order too), and the split into tasks depends only on the shapes.
use super::simd::AttnFloat;
use rayon::prelude::*;

/// Query rows per tile.
pub(crate) const BQ: usize = 64;
/// Keys per tile.
pub(crate) const BK: usize = 64;
/// The backward splits each (batch, head) over key chunks until about this many tasks exist
/// (a function of the shape only, so results do not depend on the thread count).
const MIN_TASKS: usize = 16;

/// Problem sizes: q [b, h, tq, d], k [b, h, tk, d], v [b, h, tk, dv].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub b: usize,
    pub h: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub dv: usize,
    pub scale: f64,
    pub causal: bool,
}

/// A read-only strided [B, H, T, C] operand: `data[off + b·st0 + h·st1 + t·st2 + c·st3]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a, T> {
    pub data: &'a [T],
    pub off: usize,
    pub st: [usize; 4],
}

impl<T> View<'_, T> {
    /// Pointer to element (b, h, t, 0); `t` must be a valid row.
    #[inline]
    fn row(&self, b: usize, h: usize, t: usize) -> *const T {
        let i = self.off + b * self.st[0] + h * self.st[1] + t * self.st[2];
        debug_assert!(i < self.data.len());
        // SAFETY: (b, h, t, 0) is an element of the tensor, so `i` is inside its storage.
        unsafe { self.data.as_ptr().add(i) }
    }
    #[inline]
    fn rs(&self) -> isize {
        self.st[2] as isize
    }
    #[inline]
    fn cs(&self) -> isize {
        self.st[3] as isize
    }
}

/// The key-padding mask as additive biases (0 keep, -inf drop) per batch row, and whether each
/// (batch, key tile) keeps any key (fully dropped tiles are skipped).
pub(crate) struct KeyMask<T> {
    pub bias: Vec<T>,
    pub tile_any: Vec<bool>,
}

impl<T: AttnFloat> KeyMask<T> {
    pub fn new(keep: &[bool], b: usize, tk: usize) -> Self {
        let nkt = tk.div_ceil(BK);
        let bias = keep.iter().map(|&k| if k { T::zero() } else { T::neg_infinity() }).collect();
        let tile_any = (0..b * nkt).map(|i| keep[(i / nkt) * tk..][(i % nkt) * BK..((i % nkt + 1) * BK).min(tk)].iter().any(|&k| k)).collect();
        KeyMask { bias, tile_any }
    }
}

/// Scores of one tile: `s[r·BK + c] = scale·q[i0+r]·k[j0+c] + bias`, causal-masked (key j > query
/// i is dropped: PyTorch's top-left aligned `is_causal`).
#[allow(clippy::too_many_arguments)]
fn scores<T: AttnFloat>(p: &Dims, q: &View<T>, k: &View<T>, mask: Option<&KeyMask<T>>, b: usize, h: usize, i0: usize, nq: usize, j0: usize, nk: usize, s: &mut [T]) {
    // SAFETY: rows i0..i0+nq of q and j0..j0+nk of k exist; s holds nq rows of BK.
    unsafe {
        T::gemm(nq, p.d, nk, T::from_f64(p.scale), q.row(b, h, i0), q.rs(), q.cs(), k.row(b, h, j0), k.cs(), k.rs(), T::zero(), s.as_mut_ptr(), BK as isize, 1);
    }
    for r in 0..nq {
        let row = &mut s[r * BK..r * BK + nk];
        if let Some(m) = mask {
            for (x, &bias) in row.iter_mut().zip(&m.bias[b * p.tk + j0..]) {
                *x += bias;
            }
        }
        if p.causal && j0 + nk > i0 + r + 1 {
            row[(i0 + r + 1).saturating_sub(j0)..].fill(T::neg_infinity());
        }
    }
}

/// Keys the queries of tile [i0, i0+nq) may see.
fn key_end(p: &Dims, i0: usize, nq: usize) -> usize {
    if p.causal {
        p.tk.min(i0 + nq)
    } else {
        p.tk
    }
}

/// Forward: returns (out [b, h, tq, dv], lse [b, h, tq]). A row whose keys are all masked gets
/// output 0 and lse -inf.
pub(crate) fn forward<T: AttnFloat>(p: &Dims, q: View<T>, k: View<T>, v: View<T>, mask: Option<&KeyMask<T>>) -> (Vec<T>, Vec<T>) {
    let (tq, dv) = (p.tq, p.dv);
    let mut out = vec![T::zero(); p.b * p.h * tq * dv];
    let mut lse = vec![T::neg_infinity(); p.b * p.h * tq];
    if out.is_empty() && lse.is_empty() {
        return (out, lse);
    }
    let nkt = p.tk.div_ceil(BK);
    out.par_chunks_mut((tq * dv).max(1)).zip(lse.par_chunks_mut(tq.max(1))).enumerate().for_each(|(bh, (o_bh, l_bh))| {
        let (b, h) = (bh / p.h, bh % p.h);
        o_bh.par_chunks_mut((BQ * dv).max(1)).zip(l_bh.par_chunks_mut(BQ)).enumerate().for_each(|(it, (o, lse))| {
            let (i0, nq) = (it * BQ, lse.len());
            let mut s = vec![T::zero(); BQ * BK];
            let mut m = vec![T::neg_infinity(); nq];
            let mut l = vec![T::zero(); nq];
            for j0 in (0..key_end(p, i0, nq)).step_by(BK) {
                let nk = BK.min(p.tk - j0);
                if mask.is_some_and(|m| !m.tile_any[b * nkt + j0 / BK]) {
                    continue;
                }
                scores(p, &q, &k, mask, b, h, i0, nq, j0, nk, &mut s);
                for r in 0..nq {
                    let row = &mut s[r * BK..r * BK + nk];
                    let m_new = m[r].max(T::row_max(row));
                    if m_new == T::neg_infinity() {
                        row.fill(T::zero());
                        continue;
                    }
                    let sum = T::exp_sub_sum(row, m_new);
                    let alpha = (m[r] - m_new).exp();
                    l[r] = l[r] * alpha + sum;
                    if alpha != T::one() {
                        o[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= alpha);
                    }
                    m[r] = m_new;
                }
                // SAFETY: s holds nq×nk probabilities; v rows j0..j0+nk exist; o is nq×dv.
                unsafe {
                    T::gemm(nq, nk, dv, T::one(), s.as_ptr(), BK as isize, 1, v.row(b, h, j0), v.rs(), v.cs(), T::one(), o.as_mut_ptr(), dv as isize, 1);
                }
            }
            for r in 0..nq {
                if l[r] > T::zero() {
                    let inv = T::one() / l[r];
                    o[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= inv);
                    lse[r] = m[r] + l[r].ln();
                }
            }
        });
    });
    (out, lse)
}

/// Saved forward state and the incoming gradient for [`backward`].
pub(crate) struct Saved<'a, T> {
    /// The forward output, contiguous [b, h, tq, dv].
    pub out: &'a [T],
    /// Per-row logsumexp [b, h, tq].
    pub lse: &'a [T],
    /// dL/d(out).
    pub dout: View<'a, T>,
}

/// Fused backward: returns (dq, dk, dv), contiguous, shaped like q, k, v.
pub(crate) fn backward<T: AttnFloat>(p: &Dims, q: View<T>, k: View<T>, v: View<T>, mask: Option<&KeyMask<T>>, sv: &Saved<T>) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (bhs, tq, tk, d, dv) = (p.b * p.h, p.tq, p.tk, p.d, p.dv);
    let mut dk = vec![T::zero(); bhs * tk * d];
    let mut dvv = vec![T::zero(); bhs * tk * dv];
    if bhs == 0 || tq == 0 || tk == 0 {
        return (vec![T::zero(); bhs * tq * d], dk, dvv);
    }
    // D_i = rowsum(dO_i ∘ O_i)
    let mut dsum = vec![T::zero(); bhs * tq];
    dsum.par_chunks_mut(tq).enumerate().for_each(|(bh, dst)| {
        let (b, h) = (bh / p.h, bh % p.h);
        for (i, x) in dst.iter_mut().enumerate() {
            let o = &sv.out[(bh * tq + i) * dv..][..dv];
            let g = sv.dout.row(b, h, i);
            // SAFETY: row i of dout has dv elements at stride st3.
            *x = o.iter().enumerate().map(|(c, &o)| o * unsafe { *g.add(c * sv.dout.st[3]) }).sum();
        }
    });
    // Key chunks per (b, h): enough tasks for the pool, decided by the shape alone.
    let nkt = tk.div_ceil(BK);
    let chunks = nkt.min(MIN_TASKS.div_ceil(bhs));
    let per = nkt.div_ceil(chunks);
    let chunks = nkt.div_ceil(per);
    let mut dq_parts = vec![T::zero(); bhs * chunks * tq * d];
    let dsum = &dsum;
    dk.par_chunks_mut(tk * d).zip(dvv.par_chunks_mut(tk * dv)).zip(dq_parts.par_chunks_mut(chunks * tq * d)).enumerate().for_each(|(bh, ((dk_bh, dv_bh), dq_bh))| {
        dk_bh.par_chunks_mut(per * BK * d).zip(dv_bh.par_chunks_mut(per * BK * dv)).zip(dq_bh.par_chunks_mut(tq * d)).enumerate().for_each(|(c, ((dk_c, dv_c), dq_c))| {
            let task = Task { p, q: &q, k: &k, v: &v, mask, sv, dsum: &dsum[bh * tq..(bh + 1) * tq], b: bh / p.h, h: bh % p.h };
            task.run(c * per * BK, dk_c, dv_c, dq_c);
        });
    });
    let dq = if chunks == 1 {
        dq_parts
    } else {
        let mut dq = vec![T::zero(); bhs * tq * d];
        dq.par_chunks_mut(tq * d).zip(dq_parts.par_chunks(chunks * tq * d)).for_each(|(dst, parts)| {
            for part in parts.chunks(tq * d) {
                dst.iter_mut().zip(part).for_each(|(x, &y)| *x += y);
            }
        });
        dq
    };
    (dq, dk, dvv)
}

/// One backward task: the keys of one chunk of one (batch, head), against every query tile.
struct Task<'a, T> {
    p: &'a Dims,
    q: &'a View<'a, T>,
    k: &'a View<'a, T>,
    v: &'a View<'a, T>,
    mask: Option<&'a KeyMask<T>>,
    sv: &'a Saved<'a, T>,
    /// D for this (b, h).
    dsum: &'a [T],
    b: usize,
    h: usize,
}

impl<T: AttnFloat> Task<'_, T> {
    /// Keys [j_start, j_start + dk.len()/d): accumulates their dK, dV and this chunk's dQ part.
    fn run(&self, j_start: usize, dk: &mut [T], dv: &mut [T], dq: &mut [T]) {
        let (p, b, h) = (self.p, self.b, self.h);
        let (d, dvd) = (p.d, p.dv);
        let nkeys = dk.len() / d;
        let nkt = p.tk.div_ceil(BK);
        let lse = &self.sv.lse[(b * p.h + h) * p.tq..][..p.tq];
        let dout = &self.sv.dout;
        let mut s = vec![T::zero(); BQ * BK];
        let mut dp = vec![T::zero(); BQ * BK];
        let scale = T::from_f64(p.scale);
        for j0 in (j_start..j_start + nkeys).step_by(BK) {
            let nk = BK.min(p.tk - j0);
            if self.mask.is_some_and(|m| !m.tile_any[b * nkt + j0 / BK]) {
                continue;
            }
            let (dk_j, dv_j) = (dk[(j0 - j_start) * d..].as_mut_ptr(), dv[(j0 - j_start) * dvd..].as_mut_ptr());
            let i_start = if p.causal { j0 / BQ * BQ } else { 0 };
            for i0 in (i_start..p.tq).step_by(BQ) {
                let nq = BQ.min(p.tq - i0);
                if key_end(p, i0, nq) <= j0 {
                    continue;
                }
                // P = exp(S - lse): the forward's probabilities, recomputed.
                scores(p, self.q, self.k, self.mask, b, h, i0, nq, j0, nk, &mut s);
                for r in 0..nq {
                    let row = &mut s[r * BK..r * BK + nk];
                    if lse[i0 + r] == T::neg_infinity() {
                        row.fill(T::zero());
                    } else {
                        T::exp_sub_sum(row, lse[i0 + r]);
                    }
                }
                let (qi, gi, kj, vj) = (self.q.row(b, h, i0), dout.row(b, h, i0), self.k.row(b, h, j0), self.v.row(b, h, j0));
                // SAFETY: all operands are in-bounds tiles: s/dp are nq×nk with leading dim BK,
                // dk_j/dv_j are nk rows of this task's exclusive output, dq rows i0..i0+nq.
                unsafe {
                    // dV_j += Pᵀ dO_i
                    T::gemm(nk, nq, dvd, T::one(), s.as_ptr(), 1, BK as isize, gi, dout.rs(), dout.cs(), T::one(), dv_j, dvd as isize, 1);
                    // dP = dO_i V_jᵀ
                    T::gemm(nq, dvd, nk, T::one(), gi, dout.rs(), dout.cs(), vj, self.v.cs(), self.v.rs(), T::zero(), dp.as_mut_ptr(), BK as isize, 1);
                }
                // dS = P ∘ (dP - D)
                for r in 0..nq {
                    let di = self.dsum[i0 + r];
                    for (x, &pr) in dp[r * BK..r * BK + nk].iter_mut().zip(&s[r * BK..r * BK + nk]) {
                        *x = pr * (*x - di);
                    }
                }
                unsafe {
                    // dK_j += scale · dSᵀ Q_i
                    T::gemm(nk, nq, d, scale, dp.as_ptr(), 1, BK as isize, qi, self.q.rs(), self.q.cs(), T::one(), dk_j, d as isize, 1);
                    // dQ_i += scale · dS K_j
                    T::gemm(nq, nk, d, scale, dp.as_ptr(), BK as isize, 1, kj, self.k.rs(), self.k.cs(), T::one(), dq[i0 * d..].as_mut_ptr(), d as isize, 1);
                }
            }
        }
    }
}
