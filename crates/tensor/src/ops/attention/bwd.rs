//! The fused attention backward on the CPU: recomputes the probabilities tile by tile from the
//! saved logsumexp (no Tq×Tk matrix), splits each (batch, head) over key chunks, and sums the
//! chunks' dQ partials in a fixed order (deterministic whatever the thread count).
use super::cpu::{key_end, pack_tile_t, rows_packed, scores, tile_b, BOp, Dims, DropMask, KeyMask, View};
use super::simd::AttnFloat;
use rayon::prelude::*;

/// Backward tiles: query rows × keys.
const BQ_B: usize = 64;
const BK_B: usize = 64;
/// The backward splits each (batch, head) over key chunks until about this many tasks exist
/// (a function of the shape only, so results do not depend on the thread count).
const MIN_TASKS: usize = 16;

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
    let nkt = tk.div_ceil(BK_B);
    let chunks = nkt.min(MIN_TASKS.div_ceil(bhs));
    let per = nkt.div_ceil(chunks);
    let chunks = nkt.div_ceil(per);
    let mut dq_parts = vec![T::zero(); bhs * chunks * tq * d];
    let dsum = &dsum;
    // B operands with contiguous rows: q, k, dO as they are (or copied), kᵀ and vᵀ per key tile.
    let (q_rows, k_rows, g_rows) = (rows_packed(p, &q, tq, d), rows_packed(p, &k, tk, d), rows_packed(p, &sv.dout, tq, dv));
    let q = q_rows.as_deref().map_or(q, |x| View::contiguous(x, p.h, tq, d));
    let k = k_rows.as_deref().map_or(k, |x| View::contiguous(x, p.h, tk, d));
    let dout = g_rows.as_deref().map_or(sv.dout, |x| View::contiguous(x, p.h, tq, dv));
    let sv = &Saved { out: sv.out, lse: sv.lse, dout };
    dk.par_chunks_mut(tk * d).zip(dvv.par_chunks_mut(tk * dv)).zip(dq_parts.par_chunks_mut(chunks * tq * d)).enumerate().for_each(|(bh, ((dk_bh, dv_bh), dq_bh))| {
        dk_bh.par_chunks_mut(per * BK_B * d).zip(dv_bh.par_chunks_mut(per * BK_B * dv)).zip(dq_bh.par_chunks_mut(tq * d)).enumerate().for_each(|(c, ((dk_c, dv_c), dq_c))| {
            let task = Task { p, q: &q, k: &k, v: &v, mask, sv, dsum: &dsum[bh * tq..(bh + 1) * tq], b: bh / p.h, h: bh % p.h };
            task.run(c * per * BK_B, dk_c, dv_c, dq_c);
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
    /// q and k with contiguous rows.
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
        let lse = &self.sv.lse[(b * p.h + h) * p.tq..][..p.tq];
        let dout = &self.sv.dout;
        let mut s = vec![T::zero(); BQ_B * BK_B];
        let mut dp = vec![T::zero(); BQ_B * BK_B];
        let (mut kt, mut vt) = (vec![T::zero(); d * BK_B], vec![T::zero(); dvd * BK_B]);
        let scale = T::from_f64(p.scale);
        // dropout: the tile's keep factors M/(1-p), and P ∘ M/(1-p) (the probabilities the forward
        // multiplied V by)
        let drop = DropMask::<T>::new(p);
        let tile_len = if drop.is_some() { BQ_B * BK_B } else { 0 };
        let (mut mk, mut pd) = (vec![T::zero(); tile_len], vec![T::zero(); tile_len]);
        for j0 in (j_start..j_start + nkeys).step_by(BK_B) {
            let nk = BK_B.min(p.tk - j0);
            if self.mask.is_some_and(|m| !m.any(b, j0, nk)) {
                continue;
            }
            let (dk_j, dv_j) = (dk[(j0 - j_start) * d..].as_mut_ptr(), dv[(j0 - j_start) * dvd..].as_mut_ptr());
            // the B operands fixed for this key tile, packed once where there is a packed-B kernel:
            // K_jᵀ (scores), V_jᵀ (dP), K_j (dQ)
            let (kr, vr) = (self.k.row(b, h, j0), self.v.row(b, h, j0));
            // SAFETY: rows j0..j0+nk of k and v exist, with d / dv elements each.
            let panels = unsafe {
                match (T::pack_panels(d, nk, kr, self.k.cs(), self.k.rs()), T::pack_panels(dvd, nk, vr, self.v.cs(), self.v.rs()), T::pack_panels(nk, d, kr, self.k.rs(), self.k.cs())) {
                    (Some(kt_p), Some(vt_p), Some(kj_p)) => Some((kt_p, vt_p, kj_p)),
                    _ => None,
                }
            };
            let (kt_j, vt_j, k_j) = match &panels {
                Some((kt_p, vt_p, kj_p)) => (BOp::Panels(kt_p.as_ptr(), d * 16), BOp::Panels(vt_p.as_ptr(), dvd * 16), BOp::Panels(kj_p.as_ptr(), nk * 16)),
                None => {
                    pack_tile_t(self.k, b, h, j0, nk, d, &mut kt, BK_B);
                    pack_tile_t(self.v, b, h, j0, nk, dvd, &mut vt, BK_B);
                    (BOp::rows(&kt, BK_B, d, nk), BOp::rows(&vt, BK_B, dvd, nk), BOp::Rows(kr, self.k.st[2]))
                }
            };
            let i_start = if p.causal { j0 / BQ_B * BQ_B } else { 0 };
            for i0 in (i_start..p.tq).step_by(BQ_B) {
                let nq = BQ_B.min(p.tq - i0);
                if key_end(p, i0, nq) <= j0 {
                    continue;
                }
                // P = exp(S - lse): the forward's probabilities, recomputed.
                // SAFETY: kt_j holds K_jᵀ (d × nk).
                unsafe { scores(p, self.q, kt_j, self.mask, b, h, i0, nq, j0, nk, &mut s, BK_B) };
                for r in 0..nq {
                    let row = &mut s[r * BK_B..r * BK_B + nk];
                    if lse[i0 + r] == T::neg_infinity() {
                        row.fill(T::zero());
                    } else {
                        T::exp_sub_sum(row, lse[i0 + r]);
                    }
                }
                let pv = match &drop {
                    None => s.as_ptr(),
                    Some(dm) => {
                        for r in 0..nq {
                            let t = r * BK_B..r * BK_B + nk;
                            dm.factors(&mut mk[t.clone()], b, h, i0 + r, j0);
                            pd[t.clone()].iter_mut().zip(&s[t.clone()]).zip(&mk[t]).for_each(|((y, &x), &f)| *y = x * f);
                        }
                        pd.as_ptr()
                    }
                };
                let (qi, gi) = (self.q.row(b, h, i0), dout.row(b, h, i0));
                // SAFETY: all operands are in-bounds tiles: s/pd/dp are nq×nk with leading dim BK_B,
                // dk_j/dv_j are nk rows of this task's exclusive output, dq rows i0..i0+nq.
                unsafe {
                    // dV_j += Pᵀ dO_i (with dropout: (P ∘ M/(1-p))ᵀ dO_i)
                    T::tile(nk, dvd, nq, T::one(), pv, 1, BK_B as isize, gi, dout.st[2], true, dv_j, dvd);
                    // dP = dO_i V_jᵀ
                    tile_b(nq, nk, dvd, T::one(), gi, dout.rs(), dout.cs(), vt_j, false, dp.as_mut_ptr(), BK_B);
                }
                // dS = P ∘ (dP - D); with dropout dP' = dP ∘ M/(1-p) takes dP's place (D = rowsum(dO ∘ O)
                // is unchanged: O already holds the dropped probabilities)
                for r in 0..nq {
                    let (di, t) = (self.dsum[i0 + r], r * BK_B..r * BK_B + nk);
                    if drop.is_some() {
                        for ((x, &pr), &f) in dp[t.clone()].iter_mut().zip(&s[t.clone()]).zip(&mk[t]) {
                            *x = pr * (*x * f - di);
                        }
                    } else {
                        for (x, &pr) in dp[t.clone()].iter_mut().zip(&s[t]) {
                            *x = pr * (*x - di);
                        }
                    }
                }
                unsafe {
                    // dK_j += scale · dSᵀ Q_i
                    T::tile(nk, d, nq, scale, dp.as_ptr(), 1, BK_B as isize, qi, self.q.st[2], true, dk_j, d);
                    // dQ_i += scale · dS K_j
                    tile_b(nq, d, nk, scale, dp.as_ptr(), BK_B as isize, 1, k_j, true, dq[i0 * d..].as_mut_ptr(), d);
                }
            }
        }
    }
}
