//! The vector bodies of the primitives in `simd.rs`, written once over [`VF32`] and instantiated
//! for AVX-512F ([`F512`](crate::cpu::vf32::F512)) and AVX2+FMA ([`F256`](crate::cpu::vf32::F256))
//! by `simd.rs`. Every function is `#[inline(always)]`: it only becomes vector code inside a
//! `#[target_feature]` caller. Tails go through [`VF32::load_part`] / [`VF32::store_part`].
//!
//! Safety: callers must run on a CPU with the features of `V`; slices are read / written within
//! their lengths only.
use crate::cpu::vf32::VF32;

/// `x[i] = f(x[i])`; tail lanes are padded with 0.
#[inline(always)]
pub(super) unsafe fn map_inplace<V: VF32>(x: &mut [f32], f: impl Fn(V) -> V) {
    let (n, p, l) = (x.len(), x.as_mut_ptr(), V::LANES);
    let mut i = 0;
    while i + l <= n {
        f(V::load(p.add(i))).store(p.add(i));
        i += l;
    }
    if i < n {
        f(V::load_part(p.add(i), n - i, 0.0)).store_part(p.add(i), n - i);
    }
}

/// `out[i] = f(a[i], b[i])`; tail lanes are padded with 1.0 so that division stays quiet.
#[inline(always)]
pub(super) unsafe fn zip_map<V: VF32>(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(V, V) -> V) {
    let (n, l) = (out.len(), V::LANES);
    let (pa, pb, po) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i + l <= n {
        f(V::load(pa.add(i)), V::load(pb.add(i))).store(po.add(i));
        i += l;
    }
    if i < n {
        f(V::load_part(pa.add(i), n - i, 1.0), V::load_part(pb.add(i), n - i, 1.0)).store_part(po.add(i), n - i);
    }
}

/// `Σ f(a[i], b[i])` with four vector accumulators (`f(x, y, acc)` returns the new accumulator);
/// tail lanes of `a` and `b` are padded with 0, so `f(0, 0, acc)` must be `acc`.
#[inline(always)]
unsafe fn reduce_sum<V: VF32>(a: *const f32, b: *const f32, n: usize, f: impl Fn(V, V, V) -> V) -> f32 {
    let main = n / V::LANES * V::LANES;
    let mut acc = acc4::<V>(main, |i, s| f(V::load(a.add(i)), V::load(b.add(i)), s));
    if main < n {
        acc = f(V::load_part(a.add(main), n - main, 0.0), V::load_part(b.add(main), n - main, 0.0), acc);
    }
    acc.hsum()
}

/// Sum of all elements.
#[inline(always)]
pub(crate) unsafe fn sum<V: VF32>(x: &[f32]) -> f32 {
    reduce_sum::<V>(x.as_ptr(), x.as_ptr(), x.len(), |v, _, s| s.add(v))
}

/// Dot product of equal-length slices.
#[inline(always)]
pub(crate) unsafe fn dot<V: VF32>(a: &[f32], b: &[f32]) -> f32 {
    reduce_sum::<V>(a.as_ptr(), b.as_ptr(), a.len(), |x, y, s| x.fma(y, s))
}

/// Maximum element (-inf for an empty slice; NaN when any element is NaN).
#[inline(always)]
pub(super) unsafe fn max<V: VF32>(x: &[f32]) -> f32 {
    let (n, p, l) = (x.len(), x.as_ptr(), V::LANES);
    let ninf = V::splat(f32::NEG_INFINITY);
    let (mut m0, mut m1) = (ninf, ninf);
    // 1.0 in the lanes where a NaN was seen (`max` lets NaN through only in one operand order)
    let (one, mut nan) = (V::splat(1.0), V::splat(0.0));
    let mut i = 0;
    while i + 2 * l <= n {
        let (a, b) = (V::load(p.add(i)), V::load(p.add(i + l)));
        nan = V::select(a.is_nan(), one, V::select(b.is_nan(), one, nan));
        m0 = a.max(m0);
        m1 = b.max(m1);
        i += 2 * l;
    }
    while i < n {
        let a = if i + l <= n { V::load(p.add(i)) } else { V::load_part(p.add(i), n - i, f32::NEG_INFINITY) };
        nan = V::select(a.is_nan(), one, nan);
        m0 = a.max(m0);
        i += l;
    }
    if nan.hmax() > 0.0 {
        return f32::NAN;
    }
    m0.max(m1).hmax()
}

/// `y += alpha * x`.
#[inline(always)]
pub(super) unsafe fn axpy<V: VF32>(alpha: f32, x: &[f32], y: &mut [f32]) {
    let (n, l, k) = (y.len(), V::LANES, V::splat(alpha));
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let mut i = 0;
    while i + l <= n {
        k.fma(V::load(px.add(i)), V::load(py.add(i))).store(py.add(i));
        i += l;
    }
    if i < n {
        k.fma(V::load_part(px.add(i), n - i, 0.0), V::load_part(py.add(i), n - i, 0.0)).store_part(py.add(i), n - i);
    }
}

/// `Σ e^(x[i] - m)` over `n` floats at `x`; with `y` (room for `n` floats, which may be `x`
/// itself), also stores each `e^(x[i] - m)` there. Tail lanes are padded with -inf (e^-inf = 0).
/// Shared by softmax, cross-entropy and the attention kernels.
#[inline(always)]
pub(crate) unsafe fn exp_sum_row<V: VF32>(x: *const f32, n: usize, m: f32, y: Option<*mut f32>) -> f32 {
    let l = V::LANES;
    let mv = V::splat(m);
    let mut acc = V::splat(0.0);
    let mut i = 0;
    while i + l <= n {
        let e = V::load(x.add(i)).sub(mv).exp();
        if let Some(y) = y {
            e.store(y.add(i));
        }
        acc = acc.add(e);
        i += l;
    }
    if i < n {
        let e = V::load_part(x.add(i), n - i, f32::NEG_INFINITY).sub(mv).exp();
        if let Some(y) = y {
            e.store_part(y.add(i), n - i);
        }
        acc = acc.add(e);
    }
    acc.hsum()
}

/// `Σ` of `f(j, acc)` over the full vectors `j = 0, L, 2L, … < main` (`main` a multiple of `LANES`),
/// with four independent accumulators so that the adds do not wait on each other's latency.
#[inline(always)]
pub(crate) unsafe fn acc4<V: VF32>(main: usize, f: impl Fn(usize, V) -> V) -> V {
    let l = V::LANES;
    let mut a = [V::splat(0.0); 4];
    let mut j = 0;
    while j + 4 * l <= main {
        for (k, a) in a.iter_mut().enumerate() {
            *a = f(j + k * l, *a);
        }
        j += 4 * l;
    }
    while j < main {
        a[0] = f(j, a[0]);
        j += l;
    }
    a[0].add(a[1]).add(a[2].add(a[3]))
}

/// Prefetches into L1 the cache line holding `p[j]` when `j` is a multiple of 16 floats (one
/// line per 64 bytes). The row kernels call it in a row's last pass with `p` the *next* row, so
/// that row is on its way from memory while this one is finished in L1 (the hardware prefetchers
/// alone leave each row's first pass waiting on DRAM). `p` may point past the data: a prefetch
/// never faults.
#[inline(always)]
pub(crate) unsafe fn prefetch_line(p: *const f32, j: usize) {
    if j.is_multiple_of(16) {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.wrapping_add(j).cast());
    }
}

/// Loads lanes `i..` of `s` (a full vector, or the zero-padded tail when fewer remain).
#[inline(always)]
pub(crate) unsafe fn ld<V: VF32>(s: &[f32], i: usize) -> V {
    if i + V::LANES <= s.len() {
        V::load(s.as_ptr().add(i))
    } else {
        V::load_tail(&s[i..], 0.0)
    }
}

/// Stores lanes into `p[i..]` of a row of `n` floats (a full vector, or the `n - i` remaining).
#[inline(always)]
pub(crate) unsafe fn st<V: VF32>(v: V, p: *mut f32, n: usize, i: usize) {
    if i + V::LANES <= n {
        v.store(p.add(i))
    } else {
        v.store_part(p.add(i), n - i)
    }
}
