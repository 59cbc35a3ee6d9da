//! The CUDA kernel sources, embedded at build time: an op's own file from its folder
//! (`ops/layer_norm/layer_norm.cu`), the shared ones and the headers from the repository's
//! `kernels/`; `extern "C"` entry points named `<op>_<fwd|bwd>_<f32|bf16|f16>`, declared here once.
//! Headers (`common.cuh`, ...) are handed to NVRTC as in-memory headers, so compiling needs no
//! files on disk and no CUDA include directory. See docs/KERNELS.md.

/// One kernel source file.
#[derive(Debug, Clone, Copy)]
pub struct KernelFile {
    /// File stem, e.g. `"layer_norm"` for `layer_norm.cu`: the name the launchers and the cache use.
    pub stem: &'static str,
    /// Where the file is, from the repository root (`crates/tensor/src/ops/layer_norm/layer_norm.cu`).
    pub path: &'static str,
    /// The CUDA C++ source text.
    pub source: &'static str,
    /// Uses sm_90a-only instructions (wgmma): built for `sm_90a` on sm_90 devices, nowhere else.
    pub sm90a_only: bool,
    /// The float types every entry point exists for (`<entry>_<dtype>`).
    pub dtypes: &'static [&'static str],
    /// The `extern "C"` entry points the file must define, without the dtype suffix.
    pub entries: &'static [&'static str],
}

/// The compute capability of an architecture name as a number: `sm_90a` → 90, `compute_80` → 80;
/// 0 when there is none.
pub fn arch_number(arch: &str) -> u32 {
    arch.trim_start_matches(|c: char| !c.is_ascii_digit()).trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0)
}

impl KernelFile {
    /// The architecture this file is compiled for when the device (or `kiln kernels --arch`) is
    /// `arch`: `arch` itself, or for an sm_90a-only file `sm_90a` / `compute_90a` when `arch` is
    /// 9.0, and `None` (the file does not apply) for any other arch.
    pub fn target(&self, arch: &str) -> Option<String> {
        if !self.sm90a_only {
            return Some(arch.to_string());
        }
        if arch_number(arch) != 90 {
            return None;
        }
        let prefix = if arch.starts_with("compute_") { "compute" } else { "sm" };
        Some(format!("{prefix}_90a"))
    }
}

macro_rules! kernel_file {
    // a shared kernel file in the repository's `kernels/`
    ($stem:literal, $dtypes:expr, [$($e:literal),* $(,)?] $(, $sm90a:ident)?) => {
        KernelFile {
            stem: $stem,
            path: concat!("kernels/", $stem, ".cu"),
            source: include_str!(concat!("../../../../kernels/", $stem, ".cu")),
            sm90a_only: kernel_file!(@sm90a $($sm90a)?),
            dtypes: $dtypes,
            entries: &[$($e),*],
        }
    };
    // an op's kernels, declared in the op's `mod.rs` beside them: `crates/tensor/src/ops/<op>/<stem>.cu`
    // (`include_str!` resolves the file name next to the file the macro is invoked from)
    (op $op:literal / $stem:literal, $dtypes:expr, [$($e:literal),* $(,)?]) => {
        $crate::cuda::kernels::KernelFile {
            stem: $stem,
            path: concat!("crates/tensor/src/ops/", $op, "/", $stem, ".cu"),
            source: include_str!(concat!($stem, ".cu")),
            sm90a_only: false,
            dtypes: $dtypes,
            entries: &[$($e),*],
        }
    };
    (@sm90a sm90a) => { true };
    (@sm90a) => { false };
}
pub(crate) use kernel_file;

/// Every float kernel type (`_f32`, `_bf16`, `_f16` entry points).
pub const ALL_FLOATS: &[&str] = &["f32", "bf16", "f16"];
/// The 16-bit float types only (the tensor-core kernels take 16-bit inputs).
pub const HALF_FLOATS: &[&str] = &["bf16", "f16"];

/// `kernels/attention.cu`.
pub const ATTENTION: KernelFile = kernel_file!("attention", ALL_FLOATS, ["attention_fwd", "attention_bwd_preprocess", "attention_bwd_dq", "attention_bwd_dkdv", "attention_fwd_drop", "attention_bwd_dq_drop", "attention_bwd_dkdv_drop"]);
/// `kernels/attention_tc.cu`.
pub const ATTENTION_TC: KernelFile = kernel_file!("attention_tc", HALF_FLOATS, ["attention_fwd_tc_d64", "attention_fwd_tc_d128", "attention_fwd_tc2_d64", "attention_fwd_tc2_d128", "attention_bwd_tc2_d64", "attention_bwd_tc2_d128", "attention_bwd_dq_convert", "attention_bwd_dq_tc_d64", "attention_bwd_dq_tc_d128", "attention_bwd_dkdv_tc_d64", "attention_bwd_dkdv_tc_d128", "attention_fwd_tc_drop_d64", "attention_fwd_tc_drop_d128", "attention_bwd_dq_tc_drop_d64", "attention_bwd_dq_tc_drop_d128", "attention_bwd_dkdv_tc_drop_d64", "attention_bwd_dkdv_tc_drop_d128"]);
/// `kernels/attention_tma.cu`.
pub const ATTENTION_TMA: KernelFile = kernel_file!("attention_tma", HALF_FLOATS, ["attention_fwd_wgtma_d64", "attention_fwd_wgtma_d128", "attention_fwd_wgtma_pp_d64", "attention_fwd_wgtma_pp_d128"], sm90a);
/// `kernels/attention_wgmma.cu`.
pub const ATTENTION_WGMMA: KernelFile = kernel_file!("attention_wgmma", HALF_FLOATS, ["attention_fwd_wg_d64", "attention_fwd_wg_d128", "attention_fwd_wg_serial_d64", "attention_fwd_wg_serial_d128", "attention_bwd_wg_d64", "attention_bwd_wg_d128"], sm90a);
/// `kernels/copy.cu`.
pub const COPY: KernelFile = kernel_file!("copy", ALL_FLOATS, ["copy", "copy_to_strided"]);
/// `kernels/elementwise.cu`.
pub const ELEMENTWISE: KernelFile = kernel_file!("elementwise", ALL_FLOATS, ["unary_fwd", "unary_bwd", "binary_fwd", "binary_rows_fwd", "affine_fwd", "fill"]);

/// The shared kernel files of the repository's `kernels/`. Each op's own file is declared in its
/// folder's `mod.rs` (`KERNELS`); `crate::ops::KERNEL_FILES` is the whole catalogue. Launchers name
/// the file they launch from (`be.function(&ELEMENTWISE, ..)`, `be.function(&super::KERNELS, ..)`),
/// so this runtime never looks an op up.
pub const SHARED: &[KernelFile] = &[ATTENTION, ATTENTION_TC, ATTENTION_TMA, ATTENTION_WGMMA, COPY, ELEMENTWISE];

/// The headers every program may `#include "name"`: (include name, text).
pub const HEADERS: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../../../../kernels/common.cuh")),
    ("attention_bwd.cuh", include_str!("../../../../kernels/attention_bwd.cuh")),
    ("tensor_core.cuh", include_str!("../../../../kernels/tensor_core.cuh")),
    ("attention_tc_bwd.cuh", include_str!("../../../../kernels/attention_tc_bwd.cuh")),
    ("attention_tile.cuh", include_str!("../../../../kernels/attention_tile.cuh")),
    ("wgmma.cuh", include_str!("../../../../kernels/wgmma.cuh")),
    ("tma.cuh", include_str!("../../../../kernels/tma.cuh")),
    ("attention_wg_fwd.cuh", include_str!("../../../../kernels/attention_wg_fwd.cuh")),
];

/// The 64-bit FNV-1a hash of bytes: stable across Rust versions and platforms (the disk-cache key).
pub fn fnv1a64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Hash of a kernel file together with every header it could include.
pub fn source_hash(file: &KernelFile) -> u64 {
    let mut h = fnv1a64(file.source.as_bytes(), 0);
    for (name, text) in HEADERS {
        h = fnv1a64(name.as_bytes(), h);
        h = fnv1a64(text.as_bytes(), h);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_file_is_embedded_and_includes_common() {
        assert_eq!(SHARED.len(), 6);
        for f in SHARED {
            assert!(f.source.contains("#include \"common.cuh\""), "{} misses common.cuh", f.stem);
            assert!(f.source.contains("extern \"C\""), "{} has no entry point", f.stem);
        }
    }

    #[test]
    fn sm90a_files_target_only_sm90() {
        let wg = ATTENTION_WGMMA;
        assert!(wg.sm90a_only && wg.source.contains("wgmma.cuh"));
        assert_eq!(wg.target("sm_90").as_deref(), Some("sm_90a"));
        assert_eq!(wg.target("sm_90a").as_deref(), Some("sm_90a"));
        assert_eq!(wg.target("compute_90").as_deref(), Some("compute_90a"));
        assert_eq!((wg.target("sm_80"), wg.target("sm_100")), (None, None));
        assert_eq!(COPY.target("sm_80").as_deref(), Some("sm_80"));
        // wgmma appears only in files marked sm90a_only (elsewhere it would fail to compile for sm_80)
        for f in SHARED.iter().filter(|f| !f.sm90a_only) {
            assert!(!f.source.contains("wgmma"), "{} uses wgmma but is not marked sm90a", f.stem);
        }
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        assert_eq!(fnv1a64(b"", 0), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a", 0), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(source_hash(&COPY), source_hash(&ELEMENTWISE));
    }
}
