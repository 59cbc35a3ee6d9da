//! Per-kernel resource usage from the ptxas `-v` report, and `kiln kernels`' table.
use super::kernels::KERNEL_FILES;
use super::nvrtc::{self, KernelImage};
use crate::{Error, Result};
use rayon::prelude::*;
use std::path::Path;

/// Resources of one entry point (`extern "C" __global__` function) as reported by ptxas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelReport {
    /// Kernel file stem, e.g. `"layer_norm"`.
    pub file: String,
    /// Entry point, e.g. `"layer_norm_fwd_bf16"`.
    pub kernel: String,
    pub arch: String,
    pub registers: u32,
    pub barriers: u32,
    /// Bytes of register spills stored to / loaded from local memory (0 is what we want).
    pub spill_stores: u32,
    pub spill_loads: u32,
    /// Stack frame bytes (local memory per thread).
    pub stack: u32,
    /// Static shared memory bytes (dynamic shared memory is chosen at launch and not included).
    pub smem: u32,
}

/// Parses NVRTC's log of a `--ptxas-options=-v` compile into one report per entry point.
pub fn parse_ptxas_log(file: &str, arch: &str, log: &str) -> Vec<KernelReport> {
    let mut out: Vec<KernelReport> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default();
            out.push(KernelReport { file: file.into(), kernel: name.into(), arch: arch.into(), ..Default::default() });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        // e.g. "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"
        //      "Used 31 registers, used 1 barriers, 128 bytes smem, 400 bytes cmem[0]"
        let body = line.rsplit(':').next().unwrap_or(line).trim_start_matches([' ', '.']);
        for frag in body.split(',') {
            let words: Vec<&str> = frag.split_whitespace().collect();
            let num = words.iter().find_map(|w| w.parse::<u32>().ok());
            let Some(n) = num else { continue };
            let f = frag.trim();
            if f.ends_with("bytes stack frame") {
                cur.stack = n;
            } else if f.ends_with("bytes spill stores") {
                cur.spill_stores = n;
            } else if f.ends_with("bytes spill loads") {
                cur.spill_loads = n;
            } else if f.starts_with("Used") && f.ends_with("registers") {
                cur.registers = n;
            } else if f.starts_with("used") && f.ends_with("barriers") {
                cur.barriers = n;
            } else if f.ends_with("bytes smem") {
                cur.smem = n;
            }
        }
    }
    out
}

/// Compiles every kernel file for `arch` (through the disk cache) and returns one report per
/// entry point, sorted by file then kernel. Fails on the first file that does not compile.
pub fn compile_all(arch: &str) -> Result<Vec<KernelReport>> {
    compile_all_impl(arch, None)
}

/// Like [`compile_all`], and writes `<stem>.<arch>.cubin` (or `.ptx`) plus `<stem>.<arch>.log`
/// for every kernel file into `out_dir` (created if missing).
pub fn compile_all_into(arch: &str, out_dir: &Path) -> Result<Vec<KernelReport>> {
    compile_all_impl(arch, Some(out_dir))
}

fn compile_all_impl(arch: &str, out_dir: Option<&Path>) -> Result<Vec<KernelReport>> {
    nvrtc::validate_arch(arch)?;
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
    }
    let compiled: Vec<_> = KERNEL_FILES.par_iter().map(|f| nvrtc::compile(f.stem, arch)).collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for c in compiled {
        if let Some(dir) = out_dir {
            let (ext, bytes): (&str, &[u8]) = match &c.image {
                KernelImage::Cubin(b) => ("cubin", b),
                KernelImage::Ptx(s) => ("ptx", s.as_bytes()),
            };
            for (name, data) in [(format!("{}.{arch}.{ext}", c.stem), bytes), (format!("{}.{arch}.log", c.stem), c.log.as_bytes())] {
                let p = dir.join(name);
                std::fs::write(&p, data).map_err(|e| Error::Io { path: p.display().to_string(), source: e })?;
            }
        }
        rows.extend(c.kernels);
    }
    rows.sort_by(|a, b| (&a.file, &a.kernel).cmp(&(&b.file, &b.kernel)));
    Ok(rows)
}

/// A plain-text table: file, kernel, registers, spill stores / loads, static smem, stack.
pub fn format_report(rows: &[KernelReport]) -> String {
    let kw = rows.iter().map(|r| r.kernel.len()).max().unwrap_or(6).max(6);
    let fw = rows.iter().map(|r| r.file.len()).max().unwrap_or(4).max(4);
    let mut s = format!(
        "{:<fw$}  {:<kw$}  {:>4}  {:>11}  {:>10}  {:>9}  {:>11}\n",
        "file", "kernel", "regs", "spill st(B)", "spill ld(B)", "smem(B)", "stack(B)"
    );
    for r in rows {
        s += &format!(
            "{:<fw$}  {:<kw$}  {:>4}  {:>11}  {:>10}  {:>9}  {:>11}\n",
            r.file, r.kernel, r.registers, r.spill_stores, r.spill_loads, r.smem, r.stack
        );
    }
    let spills = rows.iter().filter(|r| r.spill_stores + r.spill_loads > 0).count();
    s += &format!("{} kernels, {} with spills, arch {}\n", rows.len(), spills, rows.first().map_or("-", |r| r.arch.as_str()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "ptxas info    : 12 bytes gmem
ptxas info    : Compiling entry function 'gelu_bwd_f16' for 'sm_90'
ptxas info    : Function properties for gelu_bwd_f16
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
ptxas info    : Compile time = 194.138 ms
ptxas info    : Compiling entry function 'layer_norm_fwd_f32' for 'sm_90'
ptxas info    : Function properties for layer_norm_fwd_f32
ptxas         .     16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 21 registers, used 1 barriers, 128 bytes smem, 400 bytes cmem[0]
";

    #[test]
    fn parses_the_ptxas_report() {
        let r = parse_ptxas_log("x", "sm_90", LOG);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].kernel.as_str(), r[0].registers, r[0].barriers, r[0].smem), ("gelu_bwd_f16", 40, 0, 0));
        assert_eq!((r[1].registers, r[1].barriers, r[1].smem), (21, 1, 128));
        assert_eq!((r[1].stack, r[1].spill_stores, r[1].spill_loads), (16, 8, 4));
        let t = format_report(&r);
        assert!(t.contains("layer_norm_fwd_f32") && t.contains("2 kernels, 1 with spills, arch sm_90"), "{t}");
    }
}
