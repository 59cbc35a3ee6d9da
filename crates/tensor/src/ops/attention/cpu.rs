//! CPU kernels of fused attention: the tiled forward with an online softmax (saves the per-row
//! logsumexp) and the tile helpers it shares with the backward (`bwd.rs`, which recomputes the
//! probabilities tile by tile). No Tq×Tk matrix is ever stored; scratch is O(tile²) per task.
//! Parallel with rayon, deterministic: every output element is produced by one task in a fixed
//! order (the backward's optional dQ partials are summed in a fixed order too), and the split into
//! tasks depends only on the shapes.
use super::simd::AttnFloat;
use rayon::prelude::*;

/// Forward tiles: query rows × keys (measured best on AVX-512: 64 × 128; the longer key tile
/// halves the per-row softmax bookkeeping and the accumulator loads/stores per key).
const BQ_F: usize = 64;
const BK_F: usize = 128;

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
    /// Attention-probability dropout, only with p > 0 (`None` runs the kernels without it).
    pub drop: Option<super::AttnDropout>,
}

/// Dropout of the probabilities inside the kernels: whether P[b, h, i, j] is kept depends only on
/// the seed and the counter `((b·H + h)·Tq + i)·Tk + j` (the dropout op's keep function), so the
/// backward regenerates the forward's mask and nothing Tq×Tk is stored.
#[derive(Clone, Copy)]
pub(super) struct DropMask<T> {
    seed: u64,
    thr: f32,
    /// `thr` as the integer threshold of the vectorised keep bits ([`super::keep`]).
    kt: u64,
    /// 1 / (1 - p), as the dropout op computes it.
    pub scale: T,
    h: usize,
    tq: usize,
    tk: usize,
}

impl<T: AttnFloat> DropMask<T> {
    pub fn new(p: &Dims) -> Option<Self> {
        let d = p.drop?;
        let thr = crate::ops::dropout::threshold(d.p);
        Some(DropMask { seed: d.seed, thr, kt: super::keep::int_threshold(thr), scale: T::from_f64(1.0 / (1.0 - d.p)), h: p.h, tq: p.tq, tk: p.tk })
    }
    /// The counter of (b, h, i, j0).
    #[inline]
    fn base(&self, b: usize, h: usize, i: usize, j0: usize) -> u64 {
        (((b * self.h + h) * self.tq + i) * self.tk + j0) as u64
    }
    /// `x = f(x, kept)` for the elements of row `i`, keys `j0..j0 + xs.len()`: the keep bits come
    /// from the SIMD level's body 128 at a time, and `f` is applied without branches (an
    /// unpredictable branch per element cost more than the mask itself).
    #[inline(always)]
    fn each(&self, xs: &mut [T], b: usize, h: usize, i: usize, j0: usize, f: impl Fn(T, bool) -> T) {
        for (n, chunk) in xs.chunks_mut(128).enumerate() {
            let bits = super::keep::keep_bits(self.seed, self.base(b, h, i, j0 + 128 * n), self.thr, self.kt, chunk.len());
            for (w, part) in [bits as u64, (bits >> 64) as u64].into_iter().zip(chunk.chunks_mut(64)) {
                for (c, x) in part.iter_mut().enumerate() {
                    *x = f(*x, (w >> c) & 1 != 0);
                }
            }
        }
    }
    /// Zeroes the dropped probabilities of row `i`, keys `j0..j0 + row.len()` (kept ones stay
    /// unscaled: the forward folds 1/(1-p) into its final normalisation).
    pub fn drop_row(&self, row: &mut [T], b: usize, h: usize, i: usize, j0: usize) {
        self.each(row, b, h, i, j0, |x, kept| if kept { x } else { T::zero() });
    }
    /// `f[c]` = 1/(1-p) where key `j0 + c` of row `i` is kept, 0 where it is dropped.
    pub fn factors(&self, f: &mut [T], b: usize, h: usize, i: usize, j0: usize) {
        let scale = self.scale;
        self.each(f, b, h, i, j0, |_, kept| if kept { scale } else { T::zero() });
    }
}

/// A read-only strided [B, H, T, C] operand: `data[off + b·st0 + h·st1 + t·st2 + c·st3]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a, T> {
    pub data: &'a [T],
    pub off: usize,
    pub st: [usize; 4],
}

impl<'a, T> View<'a, T> {
    /// A contiguous [b, h, t, c] buffer.
    pub(super) fn contiguous(data: &'a [T], h: usize, t: usize, c: usize) -> Self {
        View { data, off: 0, st: [h * t * c, t * c, c, 1] }
    }
    /// Pointer to element (b, h, t, 0); `t` must be a valid row.
    #[inline]
    pub(super) fn row(&self, b: usize, h: usize, t: usize) -> *const T {
        let i = self.off + b * self.st[0] + h * self.st[1] + t * self.st[2];
        debug_assert!(i < self.data.len());
        // SAFETY: (b, h, t, 0) is an element of the tensor, so `i` is inside its storage.
        unsafe { self.data.as_ptr().add(i) }
    }
    #[inline]
    pub(super) fn rs(&self) -> isize {
        self.st[2] as isize
    }
    #[inline]
    pub(super) fn cs(&self) -> isize {
        self.st[3] as isize
    }
}

/// The key-padding mask [b, tk] as additive biases: 0 keeps a key, -inf drops it.
pub(crate) struct KeyMask<T> {
    pub bias: Vec<T>,
    pub tk: usize,
}

impl<T: AttnFloat> KeyMask<T> {
    pub fn new(keep: &[bool], tk: usize) -> Self {
        KeyMask { bias: keep.iter().map(|&k| if k { T::zero() } else { T::neg_infinity() }).collect(), tk }
    }
    /// Whether batch row `b` keeps any of keys j0..j0+nk (fully dropped tiles are skipped).
    pub(super) fn any(&self, b: usize, j0: usize, nk: usize) -> bool {
        self.bias[b * self.tk + j0..][..nk].iter().any(|&x| x == T::zero())
    }
}

/// A copy of `x` [b, h, t, c] with contiguous rows (the tile GEMMs read B operands by rows), or
/// None when its rows are contiguous already.
pub(super) fn rows_packed<T: AttnFloat>(p: &Dims, x: &View<T>, t: usize, c: usize) -> Option<Vec<T>> {
    if x.st[3] == 1 {
        return None;
    }
    let mut out = vec![T::zero(); p.b * p.h * t * c];
    out.par_chunks_mut((t * c).max(1)).enumerate().for_each(|(bh, dst)| {
        for (i, row) in dst.chunks_mut(c).enumerate() {
            let src = x.row(bh / p.h, bh % p.h, i);
            // SAFETY: row i of x has c elements at stride st3.
            row.iter_mut().enumerate().for_each(|(j, y)| *y = unsafe { *src.add(j * x.st[3]) });
        }
    });
    Some(out)
}

/// Rows j0..j0+nk of `x` [b, h, t, c] for one (b, h), transposed into `dst` (c rows of stride
/// `ld`): the B operand of `q·kᵀ` and `dO·vᵀ` for one key tile.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_tile_t<T: AttnFloat>(x: &View<T>, b: usize, h: usize, j0: usize, nk: usize, c: usize, dst: &mut [T], ld: usize) {
    for jj in 0..nk {
        let src = x.row(b, h, j0 + jj);
        for cc in 0..c {
            // SAFETY: row j0 + jj of x has c elements at stride st3.
            dst[cc * ld + jj] = unsafe { *src.add(cc * x.st[3]) };
        }
    }
}

/// The B operand of a tile GEMM: rows read in place, or panels from [`AttnFloat::pack_panels`].
#[derive(Clone, Copy)]
pub(super) enum BOp<T> {
    /// `B[p][j] = b[p·ldb + j]`: (b, ldb).
    Rows(*const T, usize),
    /// (pointer at the tile's first row and 16-column panel, panel stride); see [`AttnFloat::tile_panels`].
    Panels(*const T, usize),
}

impl<T> BOp<T> {
    /// The k × n matrix held in `x` with rows of stride `ld` (checked to fit).
    pub(super) fn rows(x: &[T], ld: usize, k: usize, n: usize) -> Self {
        assert!(n <= ld && x.len() >= (k - 1) * ld + n);
        BOp::Rows(x.as_ptr(), ld)
    }
}

/// [`AttnFloat::tile`] or [`AttnFloat::tile_panels`], by the form of B.
///
/// # Safety
/// As for [`AttnFloat::tile`]; B covers k rows and n columns.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile_b<T: AttnFloat>(m: usize, n: usize, k: usize, alpha: T, a: *const T, rsa: isize, csa: isize, b: BOp<T>, acc: bool, c: *mut T, ldc: usize) {
    match b {
        BOp::Rows(b, ldb) => T::tile(m, n, k, alpha, a, rsa, csa, b, ldb, acc, c, ldc),
        BOp::Panels(b, pstride) => T::tile_panels(m, n, k, alpha, a, rsa, csa, b, pstride, acc, c, ldc),
    }
}

/// Scores of one tile: `s[r·ld + c] = scale·q[i0+r]·k[j0+c] + bias`, causal-masked (key j > query
/// i is dropped: PyTorch's top-left aligned `is_causal`). `kt` is the tile's kᵀ (d × nk: see
/// [`pack_tile_t`], or panels); `s` has rows of stride `ld`.
///
/// # Safety
/// `kt` covers d rows and nk columns.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn scores<T: AttnFloat>(p: &Dims, q: &View<T>, kt: BOp<T>, mask: Option<&KeyMask<T>>, b: usize, h: usize, i0: usize, nq: usize, j0: usize, nk: usize, s: &mut [T], ld: usize) {
    assert!(nk <= ld && s.len() >= nq * ld);
    // SAFETY: rows i0..i0+nq of q exist; kt is this tile's d×nk block (the caller's contract); s
    // holds nq rows of ld.
    unsafe {
        tile_b(nq, nk, p.d, T::from_f64(p.scale), q.row(b, h, i0), q.rs(), q.cs(), kt, false, s.as_mut_ptr(), ld);
    }
    for r in 0..nq {
        let row = &mut s[r * ld..r * ld + nk];
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
pub(super) fn key_end(p: &Dims, i0: usize, nq: usize) -> usize {
    if p.causal {
        p.tk.min(i0 + nq)
    } else {
        p.tk
    }
}

/// Forward: returns (out [b, h, tq, dv], lse [b, h, tq]). A row whose keys are all masked gets
/// output 0 and lse -inf. With dropout (`p.drop`) the dropped probabilities are zeroed before each
/// P·V tile product and the output is scaled by 1/(1-p); `l` and the lse stay those of the
/// undropped softmax (what the backward recomputes P from).
pub(crate) fn forward<T: AttnFloat>(p: &Dims, q: View<T>, k: View<T>, v: View<T>, mask: Option<&KeyMask<T>>) -> (Vec<T>, Vec<T>) {
    let (tq, dv) = (p.tq, p.dv);
    let mut out = vec![T::zero(); p.b * p.h * tq * dv];
    let mut lse = vec![T::neg_infinity(); p.b * p.h * tq];
    if out.is_empty() && lse.is_empty() {
        return (out, lse);
    }
    let nkt = p.tk.div_ceil(BK_F);
    let drop = DropMask::<T>::new(p);
    let v_rows = rows_packed(p, &v, p.tk, dv);
    let v = v_rows.as_deref().map_or(v, |x| View::contiguous(x, p.h, p.tk, dv));
    out.par_chunks_mut((tq * dv).max(1)).zip(lse.par_chunks_mut(tq.max(1))).enumerate().for_each(|(bh, (o_bh, l_bh))| {
        let (b, h) = (bh / p.h, bh % p.h);
        // kᵀ and v of this (b, h) as packed B panels, shared by its query tiles (where the type
        // and SIMD level have a packed-B tile kernel)
        // SAFETY: rows 0..tk of k and v exist (tk > 0 checked), each with d / dv elements.
        let (kp, vp) = if p.tk > 0 {
            unsafe { (T::pack_panels(p.d, p.tk, k.row(b, h, 0), k.cs(), k.rs()), T::pack_panels(p.tk, dv, v.row(b, h, 0), v.st[2] as isize, v.st[3] as isize)) }
        } else {
            (None, None)
        };
        let panels = kp.as_deref().zip(vp.as_deref());
        // otherwise kᵀ tile by tile
        let mut kt = vec![T::zero(); if panels.is_some() { 0 } else { nkt * p.d * BK_F }];
        for (jt, dst) in kt.chunks_mut(p.d * BK_F).enumerate() {
            pack_tile_t(&k, b, h, jt * BK_F, BK_F.min(p.tk - jt * BK_F), p.d, dst, BK_F);
        }
        let kt = &kt;
        o_bh.par_chunks_mut((BQ_F * dv).max(1)).zip(l_bh.par_chunks_mut(BQ_F)).enumerate().for_each(|(it, (o, lse))| {
            let (i0, nq) = (it * BQ_F, lse.len());
            let mut s = vec![T::zero(); BQ_F * BK_F];
            let mut m = vec![T::neg_infinity(); nq];
            let mut l = vec![T::zero(); nq];
            for j0 in (0..key_end(p, i0, nq)).step_by(BK_F) {
                let nk = BK_F.min(p.tk - j0);
                if mask.is_some_and(|m| !m.any(b, j0, nk)) {
                    continue;
                }
                let kt_j = match panels {
                    // j0 is a multiple of BK_F, so of 16: its panel starts at j0 / 16
                    Some((kp, _)) => BOp::Panels(kp[j0 / 16 * p.d * 16..].as_ptr(), p.d * 16),
                    None => BOp::rows(&kt[j0 / BK_F * p.d * BK_F..], BK_F, p.d, nk),
                };
                // SAFETY: either form holds kᵀ of keys j0..j0+nk (d rows).
                unsafe { scores(p, &q, kt_j, mask, b, h, i0, nq, j0, nk, &mut s, BK_F) };
                for r in 0..nq {
                    let row = &mut s[r * BK_F..r * BK_F + nk];
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
                if let Some(dm) = &drop {
                    for r in 0..nq {
                        dm.drop_row(&mut s[r * BK_F..r * BK_F + nk], b, h, i0 + r, j0);
                    }
                }
                let v_j = match panels {
                    Some((_, vp)) => BOp::Panels(vp[j0 * 16..].as_ptr(), p.tk * 16),
                    None => BOp::Rows(v.row(b, h, j0), v.st[2]),
                };
                // SAFETY: s holds nq×nk probabilities; v_j holds v rows j0..j0+nk; o is nq×dv.
                unsafe {
                    tile_b(nq, dv, nk, T::one(), s.as_ptr(), BK_F as isize, 1, v_j, true, o.as_mut_ptr(), dv);
                }
            }
            for r in 0..nq {
                if l[r] > T::zero() {
                    let inv = T::one() / l[r];
                    let inv = drop.as_ref().map_or(inv, |dm| inv * dm.scale);
                    o[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= inv);
                    lse[r] = m[r] + l[r].ln();
                }
            }
        });
    });
    (out, lse)
}
