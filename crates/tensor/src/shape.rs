//! Shapes, dims (negative dims count from the end) and strided layouts.
use crate::{Error, Result};

/// A dimension argument: `usize` counts from the front, negative `i32`/`i64`/`isize` from the back.
pub trait Dim: Copy {
    fn resolve(self, rank: usize, op: &'static str) -> Result<usize>;
}

impl Dim for usize {
    fn resolve(self, rank: usize, op: &'static str) -> Result<usize> {
        if self < rank {
            Ok(self)
        } else {
            Err(Error::DimOutOfRange { op, dim: self as i64, rank })
        }
    }
}

macro_rules! signed_dim {
    ($t:ty) => {
        impl Dim for $t {
            fn resolve(self, rank: usize, op: &'static str) -> Result<usize> {
                let d = self as i64;
                let r = if d < 0 { d + rank as i64 } else { d };
                if r >= 0 && (r as usize) < rank {
                    Ok(r as usize)
                } else {
                    Err(Error::DimOutOfRange { op, dim: d, rank })
                }
            }
        }
    };
}
signed_dim!(i32);
signed_dim!(i64);
signed_dim!(isize);

/// Row-major strides for a contiguous tensor of this shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![0; shape.len()];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        s[i] = acc;
        acc *= shape[i];
    }
    s
}

/// The broadcast of two shapes (numpy rules), or a shape error naming `op`.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::ShapeMismatch { op, lhs: a.to_vec(), rhs: b.to_vec() });
        };
    }
    Ok(out)
}

/// Where a tensor's elements live in its storage: shape, strides (in elements; 0 = broadcast) and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }
    pub fn new(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Self {
        debug_assert_eq!(shape.len(), strides.len());
        Layout { shape, strides, offset }
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
    /// True when the elements are laid out row-major with no gaps (size-1 dims may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1;
        for i in (0..self.shape.len()).rev() {
            if self.shape[i] != 1 && self.strides[i] != acc {
                return false;
            }
            acc *= self.shape[i];
        }
        true
    }
    /// Storage index of every element, in row-major order of the logical shape.
    pub fn indices(&self) -> StridedIndex<'_> {
        StridedIndex::new(self)
    }
}

/// Strides that let a view with `old` shape/strides be read as `new_shape` without a copy, or None
/// when the elements of `new_shape` cannot be reached by one set of strides (e.g. merging a
/// transposed pair of dims).
///
/// The old dims are walked innermost first in maximal runs that are contiguous with respect to each
/// other ("chunks"); each chunk must be covered exactly by a run of new dims, which then step through
/// it row-major from the chunk's innermost stride. Size-1 dims fit anywhere.
pub fn view_strides(old_shape: &[usize], old_strides: &[usize], new_shape: &[usize]) -> Option<Vec<usize>> {
    let numel: usize = old_shape.iter().product();
    if numel == 0 || old_shape.is_empty() {
        // nothing to address, or a single element: any row-major strides do
        return (new_shape.iter().product::<usize>() == numel).then(|| contiguous_strides(new_shape));
    }
    let mut strides = vec![0usize; new_shape.len()];
    let mut nd = new_shape.len(); // new dims not placed yet: 0..nd
    let mut base = old_strides[old_shape.len() - 1];
    let (mut chunk_n, mut view_n) = (1usize, 1usize);
    for od in (0..old_shape.len()).rev() {
        chunk_n *= old_shape[od];
        let chunk_ends = od == 0 || (old_shape[od - 1] != 1 && old_strides[od - 1] != chunk_n * base);
        if !chunk_ends {
            continue;
        }
        while nd > 0 && (view_n < chunk_n || new_shape[nd - 1] == 1) {
            nd -= 1;
            strides[nd] = view_n * base;
            view_n *= new_shape[nd];
        }
        if view_n != chunk_n {
            return None;
        }
        if od > 0 {
            base = old_strides[od - 1];
            chunk_n = 1;
            view_n = 1;
        }
    }
    (nd == 0).then_some(strides)
}

/// Iterator over storage offsets of a strided layout in logical row-major order.
pub struct StridedIndex<'a> {
    layout: &'a Layout,
    counter: Vec<usize>,
    next: Option<usize>,
}

impl<'a> StridedIndex<'a> {
    fn new(layout: &'a Layout) -> Self {
        let next = if layout.elem_count() == 0 { None } else { Some(layout.offset) };
        StridedIndex { layout, counter: vec![0; layout.rank()], next }
    }
}

impl Iterator for StridedIndex<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        let cur = self.next?;
        let mut idx = cur;
        let mut done = true;
        for d in (0..self.layout.rank()).rev() {
            self.counter[d] += 1;
            if self.counter[d] < self.layout.shape[d] {
                idx += self.layout.strides[d];
                done = false;
                break;
            }
            idx -= (self.counter[d] - 1) * self.layout.strides[d];
            self.counter[d] = 0;
        }
        self.next = if done { None } else { Some(idx) };
        Some(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn view_strides_split_merge_and_refuse() {
        // [B, T, 3C] narrowed to its first C columns, split into heads: a view
        let (b, t, c, h) = (2, 5, 12, 3);
        let st = [t * 3 * c, 3 * c, 1];
        assert_eq!(view_strides(&[b, t, c], &st, &[b, t, h, c / h]), Some(vec![t * 3 * c, 3 * c, c / h, 1]));
        // merging B and T of that narrow is fine (T steps 3C, B steps T·3C); merging T and C is not
        assert_eq!(view_strides(&[b, t, c], &st, &[b * t, c]), Some(vec![3 * c, 1]));
        assert_eq!(view_strides(&[b, t, c], &st, &[b, t * c]), None);
        // a transposed matrix cannot be flattened, but size-1 dims can be added anywhere
        assert_eq!(view_strides(&[3, 4], &[1, 3], &[12]), None);
        assert_eq!(view_strides(&[3, 4], &[1, 3], &[3, 1, 4]), Some(vec![1, 12, 3]));
        // contiguous input: plain row-major strides
        assert_eq!(view_strides(&[2, 3, 4], &[12, 4, 1], &[6, 4]), Some(vec![4, 1]));
        // wrong element count, empty and scalar cases
        assert_eq!(view_strides(&[2, 3], &[3, 1], &[7]), None);
        assert_eq!(view_strides(&[0, 3], &[3, 1], &[3, 0]), Some(vec![0, 1]));
        assert_eq!(view_strides(&[], &[], &[1, 1]), Some(vec![1, 1]));
        // every view it returns addresses the same elements as the copy would
        let cases: [(&[usize], &[usize], &[usize]); 4] = [
            (&[4, 6], &[12, 1], &[2, 2, 6]),
            (&[3, 2, 5], &[1, 15, 3], &[3, 2, 5, 1]),
            (&[2, 6, 4], &[48, 8, 2], &[12, 2, 2]),
            (&[6, 4, 1], &[4, 1, 9], &[2, 3, 2, 2]),
        ];
        for (shape, stv, new) in cases {
            let old = Layout::new(shape.to_vec(), stv.to_vec(), 3);
            let ns = view_strides(shape, stv, new).expect("viewable");
            let want: Vec<usize> = old.indices().collect();
            assert_eq!(Layout::new(new.to_vec(), ns, 3).indices().collect::<Vec<_>>(), want, "{shape:?} {stv:?} -> {new:?}");
        }
    }

    #[test]
    fn strided_index_transposed() {
        // a 2x3 row-major buffer read as its 3x2 transpose
        let l = Layout::new(vec![3, 2], vec![1, 3], 0);
        assert_eq!(l.indices().collect::<Vec<_>>(), vec![0, 3, 1, 4, 2, 5]);
        assert!(!l.is_contiguous());
        assert!(Layout::contiguous(&[2, 1, 3]).is_contiguous());
    }
    #[test]
    fn broadcast_rules() {
        assert_eq!(broadcast_shapes("t", &[4, 1, 3], &[5, 1]).unwrap(), vec![4, 5, 3]);
        assert!(broadcast_shapes("t", &[2, 3], &[4]).is_err());
        assert_eq!((-1i32).resolve(3, "t").unwrap(), 2);
        assert!(3usize.resolve(3, "t").is_err());
    }
}
