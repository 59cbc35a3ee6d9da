//! Per-kernel resource usage from the ptxas `-v` report, and `kiln kernels`' table.
use super::kernels::KernelFile;
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
    /// Where the numbers come from.
    pub source: ReportSource,
}

/// Where a [`KernelReport`]'s numbers come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReportSource {
    /// NVRTC's log of the ptxas `-v` report: every field is known.
    #[default]
    PtxasLog,
    /// The CUBIN's ELF metadata (used when the log has no report): registers, barriers, stack frame
    /// and static shared memory are known; spill byte counts are not recorded in the image (they
    /// read 0), but a spill needs a stack frame, so `stack == 0` still proves there is none.
    Cubin,
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

// NVIDIA's CUBIN metadata (`.nv.info` sections): a list of attributes, each `[format: u8][attr: u8]`
// then, for the "sized value" format, a little-endian u16 byte count and that many bytes; every other
// format carries a 2-byte value in place.
const EIFMT_SVAL: u8 = 0x04;
const EIATTR_FRAME_SIZE: u8 = 0x11; // [symbol index: u32][bytes: u32]
const EIATTR_REGCOUNT: u8 = 0x2f; // [symbol index: u32][registers: u32]
const EIATTR_NUM_BARRIERS: u8 = 0x4c; // per kernel, value in place

fn cubin_err(file: &str, what: &str) -> Error {
    Error::Cuda(format!("kernels: reading the CUBIN of {file}.cu: {what}"))
}

/// Walks one `.nv.info*` section: `(attr, payload)` for sized values, `(attr, 2 in-place bytes)`
/// for the others. A truncated record is an error.
fn nv_info_records<'a>(file: &str, mut data: &'a [u8]) -> Result<Vec<(u8, &'a [u8])>> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let (fmt, attr) = (data[0], data[1]);
        if fmt == EIFMT_SVAL {
            let len = u16::from_le_bytes([data[2], data[3]]) as usize;
            let payload = data.get(4..4 + len).ok_or_else(|| cubin_err(file, "truncated .nv.info record"))?;
            out.push((attr, payload));
            data = &data[4 + len..];
        } else {
            out.push((attr, &data[2..4]));
            data = &data[4..];
        }
    }
    Ok(out)
}

/// Per-entry-point resources read from a CUBIN's ELF metadata, as ptxas would report them (see
/// [`ReportSource::Cubin`]): the entry points are the kernels with a `.nv.info.<name>` section;
/// registers and the stack frame come from the module-wide `.nv.info` attributes, the barrier
/// count from the kernel's own, and static shared memory from the size of `.nv.shared.<name>`
/// (less the 1 KB that sm_90+ reserve for the system, which that section includes).
pub fn cubin_report(file: &str, arch: &str, cubin: &[u8]) -> Result<Vec<KernelReport>> {
    use object::{Object, ObjectSection, ObjectSymbol, SymbolIndex};
    let elf = object::File::parse(cubin).map_err(|e| cubin_err(file, &format!("not an ELF image ({e})")))?;
    let mut rows: Vec<KernelReport> = Vec::new();
    let mut module_info: &[u8] = &[];
    for sec in elf.sections() {
        let name = sec.name().map_err(|e| cubin_err(file, &e.to_string()))?;
        if name == ".nv.info" {
            module_info = sec.data().map_err(|e| cubin_err(file, &e.to_string()))?;
        } else if let Some(kernel) = name.strip_prefix(".nv.info.") {
            let data = sec.data().map_err(|e| cubin_err(file, &e.to_string()))?;
            let barriers = nv_info_records(file, data)?
                .iter()
                .find(|(a, _)| *a == EIATTR_NUM_BARRIERS)
                .map_or(0, |(_, v)| v[0] as u32);
            rows.push(KernelReport { file: file.into(), kernel: kernel.into(), arch: arch.into(), barriers, source: ReportSource::Cubin, ..Default::default() });
        }
    }
    let reserved = if nvrtc::arch_number(arch) >= 90 { 1024 } else { 0 };
    for sec in elf.sections() {
        let name = sec.name().map_err(|e| cubin_err(file, &e.to_string()))?;
        if let Some(r) = name.strip_prefix(".nv.shared.").and_then(|k| rows.iter_mut().find(|r| r.kernel == k)) {
            let size = u32::try_from(sec.size()).map_err(|_| cubin_err(file, "shared memory section too large"))?;
            r.smem = if size >= reserved { size - reserved } else { size };
        }
    }
    for (attr, payload) in nv_info_records(file, module_info)? {
        if (attr != EIATTR_REGCOUNT && attr != EIATTR_FRAME_SIZE) || payload.len() != 8 {
            continue;
        }
        let sym = u32::from_le_bytes(payload[0..4].try_into().unwrap()) as usize;
        let value = u32::from_le_bytes(payload[4..8].try_into().unwrap());
        let sym = elf.symbol_by_index(SymbolIndex(sym)).map_err(|e| cubin_err(file, &e.to_string()))?;
        let sym_name = sym.name().map_err(|e| cubin_err(file, &e.to_string()))?;
        if let Some(r) = rows.iter_mut().find(|r| r.kernel == sym_name) {
            if attr == EIATTR_REGCOUNT {
                r.registers = value;
            } else {
                r.stack = value;
            }
        }
    }
    if let Some(r) = rows.iter().find(|r| r.registers == 0) {
        return Err(cubin_err(file, &format!("no register count for {}", r.kernel)));
    }
    Ok(rows)
}

/// Compiles every kernel file of `files` (`crate::ops::KERNEL_FILES`: all of them) for `arch`
/// (through the disk cache) and returns one report per entry point, sorted by file then kernel.
/// Fails on the first file that does not compile.
pub fn compile_all(files: &[KernelFile], arch: &str) -> Result<Vec<KernelReport>> {
    compile_all_impl(files, arch, None)
}

/// Like [`compile_all`], and writes `<stem>.<arch>.cubin` (or `.ptx`) plus `<stem>.<arch>.log`
/// for every kernel file into `out_dir` (created if missing).
pub fn compile_all_into(files: &[KernelFile], arch: &str, out_dir: &Path) -> Result<Vec<KernelReport>> {
    compile_all_impl(files, arch, Some(out_dir))
}

fn compile_all_impl(files: &[KernelFile], arch: &str, out_dir: Option<&Path>) -> Result<Vec<KernelReport>> {
    nvrtc::validate_arch(arch)?;
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
    }
    // sm90a-only files are compiled (as sm_90a) when `arch` is 9.0 and left out otherwise
    let compiled: Vec<_> = files.par_iter().filter(|f| f.target(arch).is_some()).map(|f| nvrtc::compile(f, arch)).collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for c in compiled {
        if let Some(dir) = out_dir {
            let (ext, bytes): (&str, &[u8]) = match &c.image {
                KernelImage::Cubin(b) => ("cubin", b),
                KernelImage::Ptx(s) => ("ptx", s.as_bytes()),
            };
            let arch = &c.arch;
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
        let (st, ld) = match r.source {
            ReportSource::PtxasLog => (r.spill_stores.to_string(), r.spill_loads.to_string()),
            ReportSource::Cubin => ("-".to_string(), "-".to_string()),
        };
        s += &format!(
            "{:<fw$}  {:<kw$}  {:>4}  {:>11}  {:>10}  {:>9}  {:>11}\n",
            r.file, r.kernel, r.registers, st, ld, r.smem, r.stack
        );
    }
    if rows.iter().any(|r| r.source == ReportSource::Cubin) {
        s += "(-: NVRTC's log had no ptxas report, so these rows come from the CUBIN, which records no spill counts; a spill needs a stack frame, so stack 0 means none)\n";
    }
    let spills = rows.iter().filter(|r| r.spill_stores + r.spill_loads > 0).count();
    let mut archs: Vec<&str> = rows.iter().map(|r| r.arch.as_str()).collect();
    archs.sort_unstable();
    archs.dedup();
    let archs = if archs.is_empty() { "-".to_string() } else { archs.join(", ") };
    s += &format!("{} kernels, {} with spills, arch {archs}\n", rows.len(), spills);
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
    fn bad_cubins_are_clear_errors() {
        let e = cubin_report("gelu", "sm_90", b"not a cubin").unwrap_err().to_string();
        assert!(e.contains("gelu.cu") && e.contains("not an ELF"), "{e}");
        // a sized record whose length runs past the section
        let e = nv_info_records("gelu", &[EIFMT_SVAL, EIATTR_REGCOUNT, 8, 0, 1, 2]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let recs = nv_info_records("gelu", &[EIFMT_SVAL, EIATTR_REGCOUNT, 2, 0, 7, 9, 0x02, EIATTR_NUM_BARRIERS, 1, 0]).unwrap();
        assert_eq!(recs, vec![(EIATTR_REGCOUNT, &[7u8, 9][..]), (EIATTR_NUM_BARRIERS, &[1u8, 0][..])]);
    }

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
