//! NVTX ranges for Nsight Systems / Nsight Compute timelines: training steps and their forward,
//! backward and optimizer phases, model layers, fused ops and every backward node carry a named
//! range (`train_step`, `forward`, `h.3`, `attention`, `gelu.backward`, ...).
//!
//! Ranges cost one relaxed load unless a profiler is attached. Profilers announce themselves with
//! `NVTX_INJECTION64_PATH` (Nsight sets it); `KILN_NVTX=1` turns ranges on without one. Then the
//! NVTX C library is loaded at run time: `$KILN_NVTX_LIB` if set, else `libnvtx3interop.so.1`
//! (CUDA 13's, also in the `nvidia-nvtx` wheel) or `libnvToolsExt.so.1` (CUDA 12 and older). If
//! none loads, ranges stay off (a note on stderr says so). Ranges are per thread, as NVTX's are.
use std::ffi::{c_char, c_int, CString};
use std::sync::OnceLock;

struct Lib {
    push: unsafe extern "C" fn(*const c_char) -> c_int,
    pop: unsafe extern "C" fn() -> c_int,
    _lib: libloading::Library,
}

static LIB: OnceLock<Option<Lib>> = OnceLock::new();

fn wanted() -> bool {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty() && v != "0");
    set("NVTX_INJECTION64_PATH") || set("KILN_NVTX")
}

fn load() -> Option<Lib> {
    if !wanted() {
        return None;
    }
    let names: Vec<String> = match std::env::var("KILN_NVTX_LIB") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => ["libnvtx3interop.so.1", "libnvToolsExt.so.1", "libnvToolsExt.so"].map(String::from).to_vec(),
    };
    for name in &names {
        // SAFETY: loading the NVTX library runs no initialisers with preconditions; the two symbols
        // have these C signatures in every NVTX version (nvToolsExt.h).
        unsafe {
            let Ok(lib) = libloading::Library::new(name) else { continue };
            let push = lib.get::<unsafe extern "C" fn(*const c_char) -> c_int>(b"nvtxRangePushA\0").map(|s| *s);
            let pop = lib.get::<unsafe extern "C" fn() -> c_int>(b"nvtxRangePop\0").map(|s| *s);
            if let (Ok(push), Ok(pop)) = (push, pop) {
                return Some(Lib { push, pop, _lib: lib });
            }
        }
    }
    eprintln!("kiln: NVTX ranges requested but no NVTX library loaded (tried {}; set KILN_NVTX_LIB)", names.join(", "));
    None
}

/// Whether ranges are recorded (a profiler is attached, or `KILN_NVTX=1`, and NVTX loaded).
pub fn enabled() -> bool {
    LIB.get_or_init(load).is_some()
}

/// An open NVTX range; closed when dropped.
#[must_use = "the range closes when this guard is dropped"]
pub struct Range(bool);

impl Drop for Range {
    fn drop(&mut self) {
        if self.0 {
            if let Some(Some(l)) = LIB.get() {
                // SAFETY: a plain C call with no arguments.
                unsafe { (l.pop)() };
            }
        }
    }
}

/// Opens a range named `name` (closed when the guard drops).
pub fn range(name: &str) -> Range {
    range_with(|| name.to_string())
}

/// Opens a range whose name is built only when ranges are on (e.g. `|| format!("h.{i}")`).
pub fn range_with(name: impl FnOnce() -> String) -> Range {
    match LIB.get_or_init(load) {
        Some(l) => {
            let c = CString::new(name().replace('\0', " ")).unwrap_or_default();
            // SAFETY: `c` is a NUL-terminated string that outlives the call (NVTX copies it).
            unsafe { (l.push)(c.as_ptr()) };
            Range(true)
        }
        None => Range(false),
    }
}
