//! Launch helpers shared by the row kernels (softmax, log_softmax, LayerNorm, the row reductions):
//! which `*_warp<E>` kernel holds a row, its name and grid, and the shape-only block counts of the
//! deterministic column sums. The choice between warp and block kernels is [`super::RowKernel`].
use super::launch::{KernelFloat, BLOCK};
use super::{row_kernel_override, RowKernel};
use cudarc::driver::LaunchConfig;

/// Number of row-blocks whose partial column sums layer_norm_bwd / reduce_sum_rows write: a
/// function of the shape only, so results do not depend on the GPU model.
pub(crate) fn row_parts(rows: usize) -> usize {
    rows.div_ceil(32).clamp(1, 512)
}

/// Elements per lane the `*_warp<E>` forward and softmax kernels exist for (`KILN_ROW_E` in
/// kernels/common.cuh): rows of up to 32 E elements.
pub(crate) const ROW_WARP_E: [usize; 6] = [8, 16, 24, 32, 48, 64];

/// Whether the warp-per-row kernels take rows of `cols` elements of `T` at these addresses, with at
/// most `per_lane` elements per lane (see [`RowKernel::Warp`]).
fn warp_rows<T>(cols: usize, per_lane: usize, ptrs: &[u64]) -> bool {
    let pack = 16 / std::mem::size_of::<T>();
    row_kernel_override() != Some(RowKernel::Block) && cols.is_multiple_of(pack) && cols <= 32 * per_lane && ptrs.iter().all(|p| p % 16 == 0)
}

/// The `_warp<E>` kernel (E out of `es`) for rows of `cols` elements of `T` at these addresses: the
/// fewest elements per lane that hold the row (fewer registers, more warps per SM), or `None`
/// where the block kernel must run.
pub(crate) fn warp_e<T>(es: &[usize], cols: usize, ptrs: &[u64]) -> Option<usize> {
    es.iter().copied().find(|&e| 32 * e >= cols).filter(|&e| warp_rows::<T>(cols, e, ptrs))
}

/// A row kernel's name: `{base}_{T}` or `{base}_warp{E}_{T}`.
pub(crate) fn row_kernel_name<T: KernelFloat>(base: &str, e: Option<usize>) -> String {
    match e {
        Some(e) => format!("{base}_warp{e}_{}", T::SUFFIX),
        None => format!("{base}_{}", T::SUFFIX),
    }
}

/// The launch of the `*_warp` kernels: one warp per row, 8 rows per block.
pub(crate) fn grid_warp_rows(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.div_ceil(8) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::{force_row_kernel, with_row_kernel};
    use half::bf16;

    #[test]
    fn warp_row_kernels_apply_where_their_contract_holds() {
        force_row_kernel(None);
        let ok = [256u64, 4096];
        // whole 16-byte packs, 16-byte aligned rows, the fewest elements per lane that hold the row
        let fwd = |cols| warp_e::<bf16>(&ROW_WARP_E, cols, &ok);
        assert_eq!([fwd(8), fwd(256), fwd(264), fwd(768), fwd(1024), fwd(1536), fwd(2048), fwd(2056)], [Some(8), Some(8), Some(16), Some(24), Some(32), Some(48), Some(64), None]);
        assert_eq!(fwd(1030), None, "1030 is not whole packs of 8");
        assert_eq!(warp_e::<f32>(&ROW_WARP_E, 1028, &ok), Some(48));
        assert_eq!(warp_e::<f32>(&ROW_WARP_E, 1030, &ok), None, "1030 f32 is not whole packs of 4");
        assert_eq!(warp_e::<f32>(&ROW_WARP_E, 768, &[256, 4100]), None, "an unaligned row pointer");
        assert_eq!(row_kernel_name::<bf16>("layer_norm_bwd", Some(24)), "layer_norm_bwd_warp24_bf16");
        assert_eq!(row_kernel_name::<f32>("log_softmax_fwd", None), "log_softmax_fwd_f32");
        // the override, and with_row_kernel restoring the previous choice
        with_row_kernel(Some(RowKernel::Block), || {
            assert_eq!(warp_e::<f32>(&ROW_WARP_E, 768, &ok), None);
        });
        assert_eq!(row_kernel_override(), None);
        assert_eq!(warp_e::<f32>(&ROW_WARP_E, 768, &ok), Some(24));
    }
}
