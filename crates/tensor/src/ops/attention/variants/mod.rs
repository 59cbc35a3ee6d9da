//! The attention kernels that are not the default: experiments kept selectable ([`force_attention_kernel`],
//! `kiln bench`'s variants, the GPU tests) until a lent GPU shows one correct and faster, as llm.c keeps
//! its numbered `dev/cuda/` kernels beside the one that ships. The default path (attention.cu's
//! simple kernels and attention_tc.cu's tensor-core ones) is `../launch.rs`, readable without this
//! folder. Here: the choice itself ([`AttnKernel`], thread-local override), the `tc2` forward and the
//! single-pass backwards (attention_tc.cu's tc2, attention_wgmma.cu's wg), the sm_90a TMA forward
//! (`tma.rs`) and the wgmma operand probe (`probe.rs`).
#[cfg(feature = "cuda")]
mod probe_launch;
mod probe;
#[cfg(feature = "cuda")]
mod tma;

pub use probe::wgmma_probe;

/// The CUDA attention kernels a forward can run (its backward runs the matching passes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnKernel {
    /// attention.cu: the simple (reference) kernels; any head dim up to 128, f32 / bf16 / f16.
    Simple,
    /// attention_tc.cu: mma.sync tensor-core kernels, 64-row blocks (bf16 / f16, head dim 64 / 128,
    /// sm_80+). The default where they apply.
    TensorCore,
    /// attention_tc.cu's FlashAttention-2-style kernels: the `attention_fwd_tc2` forward (128-row
    /// blocks, 32 rows per warp, loads overlapped with the math) and the single-pass
    /// `attention_bwd_tc2` backward (5 GEMMs per tile instead of 7; dQ summed with f32 atomics, so
    /// its last bits vary from run to run: `TensorCore` is the deterministic choice). Same
    /// eligibility. Opt in with [`force_attention_kernel`] until GPU benchmarks make it the default.
    TensorCore2,
    /// attention_wgmma.cu: the Hopper forward on wgmma (sm_90a: 2 warpgroups x 64 rows per block,
    /// 128-key tiles double-buffered in shared memory, S and O accumulated by warpgroup MMAs, and
    /// FlashAttention-3's intra-warpgroup overlap: S of tile j and P V of tile j - 1 run together,
    /// the softmax of tile j during P V) and the single-pass wgmma backward `attention_bwd_wg`
    /// (128-key blocks; dQ summed with f32 atomics, so not bit-deterministic). bf16 / f16, head
    /// dim 64 / 128, sm_90 only (on other GPUs a request for it runs `TensorCore`). Opt in with
    /// [`force_attention_kernel`]; it has not yet run on a GPU.
    Wgmma,
    /// `Wgmma` with the forward's plain schedule (S, softmax, P V in turn per tile): `kiln
    /// bench`'s measure of what the overlap brings. Same eligibility and backward.
    WgmmaSerial,
    /// attention_tma.cu: `Wgmma`'s forward loop in FlashAttention-3's warp-specialized form: a
    /// producer warpgroup brings Q, K and V in by TMA (tensor maps, 128-byte swizzle, two stages
    /// completed on mbarriers) while two consumer warpgroups run the wgmmas and the softmax with
    /// all the registers (setmaxnreg). Same eligibility and backward as `Wgmma` (whose forward it
    /// runs when there are no keys, or when q, k or v is not 16-byte aligned).
    WgmmaTma,
    /// `WgmmaTma` with FlashAttention-3's pingpong: the two consumer warpgroups take turns issuing
    /// their wgmmas (named barriers), so that one's softmax overlaps the other's GEMMs. Same
    /// eligibility, fallback and backward.
    WgmmaTmaPingpong,
}

impl AttnKernel {
    /// Whether the kernel is on the default path (`../launch.rs`): the simple and tensor-core
    /// kernels, the only ones with dropout variants and a deterministic backward.
    pub fn is_default_path(self) -> bool {
        matches!(self, AttnKernel::Simple | AttnKernel::TensorCore)
    }
}

thread_local! {
    static ATTN_OVERRIDE: std::cell::Cell<Option<AttnKernel>> = const { std::cell::Cell::new(None) };
}

/// On this thread, makes later CUDA attention forwards run `kernel` (`None`: the default choice).
/// `Simple` applies to every call; the tensor-core kinds only where they are eligible (bf16 / f16,
/// head dim 64 / 128, sm_80+), the simple kernels elsewhere. For `kiln bench`'s variants and the
/// GPU tests; thread-local, so tests running side by side do not see each other's choice.
pub fn force_attention_kernel(kernel: Option<AttnKernel>) {
    ATTN_OVERRIDE.with(|c| c.set(kernel));
}

/// This thread's override (see [`force_attention_kernel`]).
pub fn attention_kernel_override() -> Option<AttnKernel> {
    ATTN_OVERRIDE.with(|c| c.get())
}

#[cfg(feature = "cuda")]
pub(super) use launchers::{attention_bwd_one_pass, attention_fwd};

#[cfg(feature = "cuda")]
mod launchers {
    use super::super::launch::{launch_fwd, push_mask_and_dims, tc_dkdv_smem, AttentionDims, TC_ROWS};
    use super::AttnKernel;
    use crate::cuda::device::CudaBackend;
    use crate::cuda::launch::{allow_smem, KernelFloat};
    use crate::{Error, Result};
    use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

    /// Query rows per block of `attention_fwd_tc2`, and its key tile (by head dim).
    const TC2_ROWS: usize = 128;
    /// Query rows per block of `attention_fwd_wg` (2 warpgroups x 64), and its dynamic shared memory:
    /// the Q tile and two stages of 128-key K and V tiles, unpadded (80 KB at d 64, 160 KB at d 128).
    pub(super) const WG_ROWS: usize = 128;
    fn wg_smem(head_dim: usize) -> u32 {
        ((WG_ROWS + 4 * 128) * head_dim * 2) as u32
    }
    /// Dynamic shared memory of `attention_bwd_wg`: K and V of the 128-key block, two stages of 64-query
    /// Q and dO tiles, the staged dS^T [128][64], and two stages of the tile's lse2 and delta.
    fn wg_bwd_smem(head_dim: usize) -> u32 {
        ((512 * head_dim + 128 * 64) * 2 + 4 * 64 * 4) as u32
    }
    fn tc2_key_tile(head_dim: usize) -> usize {
        if head_dim > 64 {
            32
        } else {
            64
        }
    }

    /// The forward of a kernel off the default path (tc2, wg, wg-serial, wgtma, wgtma-pp; no
    /// dropout: the caller checked).
    #[allow(clippy::too_many_arguments)]
    pub(in crate::ops::attention) fn attention_fwd<T: KernelFloat>(
        be: &CudaBackend, out: &mut CudaViewMut<T>, lse: &mut CudaViewMut<f32>, q: &CudaView<T>, k: &CudaView<T>, v: &CudaView<T>,
        key_mask: Option<&CudaView<f32>>, dims: &AttentionDims, kernel: AttnKernel,
    ) -> Result<()> {
        let d = dims.head_dim;
        let tma = matches!(kernel, AttnKernel::WgmmaTma | AttnKernel::WgmmaTmaPingpong);
        if tma && be.attention_fwd_tma(out, lse, q, k, v, key_mask, dims, kernel == AttnKernel::WgmmaTmaPingpong)? {
            return Ok(());
        }
        let (f, smem, rows, threads) = match kernel {
            AttnKernel::TensorCore2 => {
                let f = be.function(&crate::cuda::kernels::ATTENTION_TC, &format!("attention_fwd_tc2_d{d}_{}", T::SUFFIX))?;
                (f, ((TC2_ROWS + 2 * tc2_key_tile(d)) * (d + 8) * 2) as u32, TC2_ROWS, 128)
            }
            AttnKernel::Wgmma | AttnKernel::WgmmaSerial | AttnKernel::WgmmaTma | AttnKernel::WgmmaTmaPingpong => {
                let serial = if kernel == AttnKernel::WgmmaSerial { "serial_" } else { "" };
                let f = be.function(&crate::cuda::kernels::ATTENTION_WGMMA, &format!("attention_fwd_wg_{serial}d{d}_{}", T::SUFFIX))?;
                (f, wg_smem(d), WG_ROWS, 256)
            }
            AttnKernel::Simple | AttnKernel::TensorCore => return Err(Error::msg(format!("attention_fwd: {kernel:?} is on the default path"))),
        };
        launch_fwd(be, &f, smem, rows, threads, out, lse, q, k, v, key_mask, dims)
    }

    /// The single-pass backwards (dK / dV in registers, dQ added into an f32 buffer with atomics,
    /// then scaled and converted), after the `delta` preprocessing of `CudaBackend::attention_bwd`:
    /// attention_bwd_tc2 for `TensorCore2` (64-key blocks, mma.sync), attention_bwd_wg for the
    /// wgmma kernels (128-key blocks, sm_90a). dQ's last bits depend on the order the atomics land
    /// in; the `TensorCore` passes are the deterministic backward.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::ops::attention) fn attention_bwd_one_pass<T: KernelFloat>(
        be: &CudaBackend, dq: &mut CudaViewMut<T>, dk: &mut CudaViewMut<T>, dv: &mut CudaViewMut<T>, lse: &CudaView<f32>, delta: &CudaSlice<f32>,
        q: &CudaView<T>, k: &CudaView<T>, v: &CudaView<T>, dout: &CudaView<T>, key_mask: Option<&CudaView<f32>>, dims: &AttentionDims,
        kernel: AttnKernel,
    ) -> Result<()> {
        let op = "attention_bwd";
        let d = dims.head_dim;
        let args = dims.args();
        let n = dims.q_elems();
        let mut acc = be.alloc_zeros::<f32>(n.max(1))?;
        if dims.kv_len > 0 {
            let (f, smem, keys, threads) = if kernel == AttnKernel::TensorCore2 {
                (be.function(&crate::cuda::kernels::ATTENTION_TC, &format!("attention_bwd_tc2_d{d}_{}", T::SUFFIX))?, tc_dkdv_smem(d, true), TC_ROWS, 128)
            } else {
                (be.function(&crate::cuda::kernels::ATTENTION_WGMMA, &format!("attention_bwd_wg_d{d}_{}", T::SUFFIX))?, wg_bwd_smem(d), WG_ROWS, 256)
            };
            allow_smem(&f, smem)?;
            let mut b = be.stream().launch_builder(&f);
            b.arg(&mut *acc).arg(&mut *dk).arg(&mut *dv).arg(lse).arg(delta).arg(q).arg(k).arg(v).arg(dout);
            push_mask_and_dims(&mut b, key_mask, &args, &dims.scale);
            let grid = (dims.kv_len.div_ceil(keys) as u32, (dims.batch * dims.heads) as u32, 1);
            unsafe { b.launch(LaunchConfig { grid_dim: grid, block_dim: (threads, 1, 1), shared_mem_bytes: smem }) }?;
        }
        if n > 0 {
            let f = be.function(&crate::cuda::kernels::ATTENTION_TC, &format!("attention_bwd_dq_convert_{}", T::SUFFIX))?;
            let n64 = i64::try_from(n).map_err(|_| Error::msg(format!("{op}: {n} elements")))?;
            let mut b = be.stream().launch_builder(&f);
            b.arg(&mut *dq).arg(&*acc).arg(&n64).arg(&dims.scale);
            let blocks = n.div_ceil(256).min(65_536) as u32;
            unsafe { b.launch(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }?;
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::super::tma::{wgtma_smem, TmaMap};
        use super::*;

        #[test]
        fn shared_memory_sizes_match_the_kernel_headers() {
            assert_eq!([wg_smem(64), wg_smem(128)], [81_920, 163_840], "attention_wgmma.cu's header: 80 / 160 KB");
            assert_eq!([wg_bwd_smem(64), wg_bwd_smem(128)], [82_944, 148_480], "attention_wgmma.cu's header: 81 / 145 KB");
            assert_eq!([wgtma_smem(64), wgtma_smem(128)], [83_016, 164_936], "attention_tma.cu's header: 5 * 128 * D * 2 + 72 + 1024");
            assert_eq!((std::mem::size_of::<TmaMap>(), std::mem::align_of::<TmaMap>() % 64), (128, 0), "CUtensorMap: 128 bytes, 64-byte aligned");
            assert_eq!((tc2_key_tile(64), tc2_key_tile(128)), (64, 32));
            // attention_tc.cu's header: 33 / 57.6 KB with the dS^T tile
            assert_eq!([tc_dkdv_smem(64, true), tc_dkdv_smem(128, true)], [33_024, 57_600]);
        }
    }
}
