//! The NVRTC pipeline: compile an embedded kernel file `<stem>.cu` (a [`KernelFile`]; `crate::ops::KERNEL_FILES` lists them) for one GPU architecture into a
//! CUBIN (`sm_XX`) or PTX (`compute_XX`), with the ptxas `-v` report, cached on disk.
//!
//! NVRTC (`libnvrtc.so.13`) is loaded at run time by cudarc; it must be on `LD_LIBRARY_PATH`
//! before the process starts (pip: `nvidia-cuda-nvrtc==13.0.*`, see .ci/run). The kernels need
//! no CUDA headers; include directories from `KILN_CUDA_INCLUDE` (or found next to the NVRTC
//! library) are still passed so a kernel may include toolkit headers later.
//!
//! Cache: `$KILN_CACHE_DIR` (or `$XDG_CACHE_HOME/kiln/kernels`, or `~/.cache/kiln/kernels`);
//! `KILN_CACHE_DIR=off` disables it. The key is (hash of the source, its headers and the compile
//! options; arch; NVRTC version), so an edited kernel or a new NVRTC never hits a stale entry.
use super::kernels::{self, KernelFile};
use super::report::{cubin_report, parse_ptxas_log, KernelReport};
use crate::{Error, Result};
use cudarc::nvrtc::{result as nvrtc_result, sys as nvrtc_sys};
use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The compiled machine code of one kernel file.
#[derive(Debug, Clone)]
pub enum KernelImage {
    /// A CUBIN (ELF) for one exact `sm_XX`: loads with no JIT, on any driver that supports the arch.
    Cubin(Vec<u8>),
    /// PTX text (for a `compute_XX` target); the driver JIT-compiles it at load time.
    Ptx(String),
}

/// One kernel file compiled for one architecture.
#[derive(Debug, Clone)]
pub struct CompiledKernel {
    /// File stem, e.g. `"gelu"`.
    pub stem: String,
    /// Target, e.g. `"sm_90"`.
    pub arch: String,
    pub image: KernelImage,
    /// The full NVRTC log (warnings + the ptxas `-v` report).
    pub log: String,
    /// Per-entry-point resource usage parsed from the ptxas report (empty for PTX targets).
    pub kernels: Vec<KernelReport>,
    /// Whether this came from the disk cache.
    pub from_cache: bool,
}

/// Whether libnvrtc can be loaded in this process (probed once; never panics).
pub fn nvrtc_available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| unsafe { nvrtc_sys::is_culib_present() })
}

fn require_nvrtc() -> Result<()> {
    if nvrtc_available() {
        Ok(())
    } else {
        Err(Error::CudaUnavailable(
            "NVRTC (libnvrtc.so.13) not found: put its directory (e.g. <pip target>/nvidia/cu13/lib) \
             on LD_LIBRARY_PATH before starting the process (see .ci/run)"
                .into(),
        ))
    }
}

fn nvrtc_err(what: &str, e: nvrtc_result::NvrtcError) -> Error {
    Error::Cuda(format!("nvrtc: {what}: {e:?}"))
}

/// The NVRTC version `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    require_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }.result().map_err(|e| nvrtc_err("version", e))?;
    Ok((major, minor))
}

/// The `sm_XX` numbers this NVRTC can target (e.g. `[75, 80, 86, 89, 90, 100, 120]`).
pub fn supported_archs() -> Result<Vec<i32>> {
    require_nvrtc()?;
    let mut n = 0;
    unsafe { nvrtc_sys::nvrtcGetNumSupportedArchs(&mut n) }.result().map_err(|e| nvrtc_err("archs", e))?;
    let mut archs = vec![0i32; n.max(0) as usize];
    unsafe { nvrtc_sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }.result().map_err(|e| nvrtc_err("archs", e))?;
    Ok(archs)
}

/// Checks an arch string: `sm_<digits>[a|f]` (CUBIN) or `compute_<digits>[a|f]` (PTX).
pub fn validate_arch(arch: &str) -> Result<()> {
    let rest = arch.strip_prefix("sm_").or_else(|| arch.strip_prefix("compute_"));
    let ok = rest.is_some_and(|r| {
        let digits = r.trim_end_matches(['a', 'f']);
        !digits.is_empty() && digits.len() + 1 >= r.len() && digits.bytes().all(|b| b.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(Error::msg(format!("kernels: invalid GPU architecture '{arch}' (expected e.g. sm_90, sm_80 or compute_90)")))
    }
}

pub use super::kernels::arch_number;

/// Include directories: `KILN_CUDA_INCLUDE` (a `:`-separated list), else `<dir>/../include` for
/// the `LD_LIBRARY_PATH` entry that holds libnvrtc, else `$CUDA_HOME/include` or
/// `/usr/local/cuda/include`. Only existing directories are returned.
pub fn include_dirs() -> Vec<PathBuf> {
    if let Some(v) = std::env::var_os("KILN_CUDA_INCLUDE").filter(|v| !v.is_empty()) {
        return std::env::split_paths(&v).filter(|p| p.is_dir()).collect();
    }
    let mut out = Vec::new();
    if let Some(ld) = std::env::var_os("LD_LIBRARY_PATH") {
        for dir in std::env::split_paths(&ld) {
            let has_nvrtc = std::fs::read_dir(&dir).is_ok_and(|rd| {
                rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libnvrtc.so"))
            });
            let inc = dir.join("../include");
            if has_nvrtc && inc.join("cuda_runtime.h").is_file() {
                out.push(inc);
            }
        }
    }
    if out.is_empty() {
        let home = std::env::var_os("CUDA_HOME").or_else(|| std::env::var_os("CUDA_PATH"));
        let cands = home.map(|h| PathBuf::from(h).join("include")).into_iter().chain([PathBuf::from("/usr/local/cuda/include")]);
        out.extend(cands.filter(|p| p.join("cuda_runtime.h").is_file()).take(1));
    }
    out
}

/// The NVRTC options used for `arch`.
pub fn compile_options(arch: &str) -> Vec<String> {
    let mut opts = vec![format!("--gpu-architecture={arch}"), "-std=c++17".into(), "-lineinfo".into()];
    if arch.starts_with("sm_") {
        opts.push("--ptxas-options=-v".into());
    }
    opts.extend(include_dirs().iter().map(|d| format!("--include-path={}", d.display())));
    opts
}

/// The kernel cache directory, or `None` when caching is off or no home directory is known.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("KILN_CACHE_DIR") {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(|c| PathBuf::from(c).join("kiln/kernels"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln/kernels"))),
    }
}

/// Compiles the kernel file `file` for `arch` (e.g. `"sm_90"`), through the disk cache. A file
/// marked sm90a-only ([`KernelFile::target`]) is compiled for `sm_90a` when `arch` is 9.0 and is an
/// error otherwise; the result's `arch` is the target actually used.
pub fn compile(file: &KernelFile, arch: &str) -> Result<CompiledKernel> {
    compile_impl(file, arch, cache_dir().as_deref())
}

/// Compiles `file` for `arch` with NVRTC, bypassing the cache (reads and writes).
pub fn compile_uncached(file: &KernelFile, arch: &str) -> Result<CompiledKernel> {
    compile_impl(file, arch, None)
}

/// Compiles through a cache in `dir` (e.g. a test's temporary directory).
pub fn compile_cached_in(file: &KernelFile, arch: &str, dir: &Path) -> Result<CompiledKernel> {
    compile_impl(file, arch, Some(dir))
}

fn compile_impl(file: &KernelFile, arch: &str, cache: Option<&Path>) -> Result<CompiledKernel> {
    let stem = file.stem;
    validate_arch(arch)?;
    let target = file.target(arch).ok_or_else(|| {
        Error::msg(format!("{} uses Hopper-only instructions (wgmma) and is built only for sm_90 (as sm_90a), not for {arch}", file.path))
    })?;
    let arch = target.as_str();
    require_nvrtc()?;
    let (major, minor) = nvrtc_version()?;
    let opts = compile_options(arch);
    let key = kernels::fnv1a64(opts.join(" ").as_bytes(), kernels::source_hash(file));
    let ext = if arch.starts_with("sm_") { "cubin" } else { "ptx" };
    let base = format!("{stem}-{arch}-nvrtc{major}.{minor}-{key:016x}");
    if let Some(dir) = cache {
        if let (Ok(bin), Ok(log)) = (std::fs::read(dir.join(format!("{base}.{ext}"))), std::fs::read_to_string(dir.join(format!("{base}.log")))) {
            let image = if ext == "cubin" { KernelImage::Cubin(bin) } else { KernelImage::Ptx(String::from_utf8_lossy(&bin).into_owned()) };
            let kernels = kernel_reports(stem, arch, &image, &log);
            return Ok(CompiledKernel { stem: stem.into(), arch: arch.into(), image, log, kernels, from_cache: true });
        }
    }
    let (image, log) = compile_source(&format!("{stem}.cu"), file.source, &opts)?;
    if let Some(dir) = cache {
        let bytes: &[u8] = match &image {
            KernelImage::Cubin(b) => b,
            KernelImage::Ptx(s) => s.as_bytes(),
        };
        // Best effort: a read-only or full disk only costs a recompile next time.
        let _ = write_atomic(dir, &format!("{base}.{ext}"), bytes).and_then(|_| write_atomic(dir, &format!("{base}.log"), log.as_bytes()));
    }
    let kernels = kernel_reports(stem, arch, &image, &log);
    Ok(CompiledKernel { stem: stem.into(), arch: arch.into(), image, log, kernels, from_cache: false })
}

/// The per-kernel report from the ptxas log; when the log has none (an NVRTC build that leaves the
/// program log empty, as the system NVRTC of the H200 machine did on 2026-11-30), from the CUBIN.
/// The report is diagnostic: an image whose metadata cannot be read still loads (its report is
/// empty, which `kiln kernels` and tests/kernels_compile.rs show; `cubin_report` gives the reason).
fn kernel_reports(stem: &str, arch: &str, image: &KernelImage, log: &str) -> Vec<KernelReport> {
    let from_log = parse_ptxas_log(stem, arch, log);
    match image {
        KernelImage::Cubin(bin) if from_log.is_empty() => cubin_report(stem, arch, bin).unwrap_or_default(),
        _ => from_log,
    }
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Destroys the NVRTC program on every exit path.
struct Program(nvrtc_sys::nvrtcProgram);
impl Drop for Program {
    fn drop(&mut self) {
        let _ = unsafe { nvrtc_result::destroy_program(self.0) };
    }
}

fn c_string(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::msg("kernels: NUL byte in kernel source or option"))
}

/// Compiles one CUDA source with the embedded headers and the given NVRTC options. Returns the
/// image (CUBIN when the options target `sm_XX`, else PTX) and the log; a failed compile is an
/// [`Error::Cuda`] that carries the log.
pub fn compile_source(name: &str, source: &str, options: &[String]) -> Result<(KernelImage, String)> {
    require_nvrtc()?;
    let src = c_string(source)?;
    let cname = c_string(name)?;
    let hdr_text: Vec<CString> = kernels::HEADERS.iter().map(|(_, t)| c_string(t)).collect::<Result<_>>()?;
    let hdr_name: Vec<CString> = kernels::HEADERS.iter().map(|(n, _)| c_string(n)).collect::<Result<_>>()?;
    let hdr_text_ptr: Vec<*const c_char> = hdr_text.iter().map(|s| s.as_ptr()).collect();
    let hdr_name_ptr: Vec<*const c_char> = hdr_name.iter().map(|s| s.as_ptr()).collect();
    let mut raw = std::mem::MaybeUninit::uninit();
    unsafe {
        nvrtc_sys::nvrtcCreateProgram(raw.as_mut_ptr(), src.as_ptr(), cname.as_ptr(), hdr_text.len() as i32, hdr_text_ptr.as_ptr(), hdr_name_ptr.as_ptr())
    }
    .result()
    .map_err(|e| nvrtc_err("create program", e))?;
    let prog = Program(unsafe { raw.assume_init() });
    let compiled = unsafe { nvrtc_result::compile_program(prog.0, options) };
    let log = unsafe { nvrtc_result::get_program_log(prog.0) }
        .map(|v| {
            let bytes: Vec<u8> = v.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    if let Err(e) = compiled {
        return Err(Error::Cuda(format!("nvrtc: compiling {name} ({}) failed with {e:?}:\n{log}", options.join(" "))));
    }
    let cubin = options.iter().any(|o| o.starts_with("--gpu-architecture=sm_"));
    let image = if cubin {
        let mut size = 0usize;
        unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog.0, &mut size) }.result().map_err(|e| nvrtc_err("cubin size", e))?;
        let mut bin = vec![0u8; size];
        unsafe { nvrtc_sys::nvrtcGetCUBIN(prog.0, bin.as_mut_ptr() as *mut c_char) }.result().map_err(|e| nvrtc_err("cubin", e))?;
        KernelImage::Cubin(bin)
    } else {
        let ptx = unsafe { nvrtc_result::get_ptx(prog.0) }.map_err(|e| nvrtc_err("ptx", e))?;
        let bytes: Vec<u8> = ptx.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        KernelImage::Ptx(String::from_utf8_lossy(&bytes).into_owned())
    };
    Ok((image, log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_numbers() {
        assert_eq!((arch_number("sm_90a"), arch_number("sm_80"), arch_number("compute_80"), arch_number("x")), (90, 80, 80, 0));
    }

    #[test]
    fn arch_strings() {
        for ok in ["sm_80", "sm_90", "sm_90a", "sm_100f", "compute_90"] {
            assert!(validate_arch(ok).is_ok(), "{ok}");
        }
        for bad in ["", "sm_", "sm90", "90", "sm_9x", "sm_90aa", "compute_"] {
            let e = validate_arch(bad).unwrap_err().to_string();
            assert!(e.contains("kernels") && e.contains("architecture"), "{bad}: {e}");
        }
    }

    #[test]
    fn options_name_the_arch() {
        let o = compile_options("sm_90");
        assert!(o.contains(&"--gpu-architecture=sm_90".to_string()) && o.contains(&"--ptxas-options=-v".to_string()));
        assert!(!compile_options("compute_90").iter().any(|s| s.contains("ptxas")));
    }

    #[test]
    fn a_hopper_only_file_for_another_arch_is_an_error_naming_it() {
        let e = compile(&super::kernels::ATTENTION_WGMMA, "sm_80").unwrap_err().to_string();
        assert!(e.contains("kernels/attention_wgmma.cu") && e.contains("sm_80"), "{e}");
    }
}
