//! NVTX ranges reach a profiler: `kiln bench --quick --op train_step` runs under a stand-in injection
//! library (tests/nvtx_tool.c, built here with `cc`) loaded by the real NVTX library the way Nsight's
//! is, and the ranges it records name the steps, their phases, the model layers, fused ops and
//! backward nodes, balanced. Without a profiler no NVTX library is even loaded.
//!
//! Needs `libnvtx3interop.so.1` (the `nvidia-nvtx` wheel; .ci/run installs it) on LD_LIBRARY_PATH or
//! in `KILN_NVTX_LIB`, and a C compiler. Without them this prints SKIPPED, unless
//! `KILN_REQUIRE_NVTX=1` (CI), where it fails.
use std::path::PathBuf;
use std::process::Command;

fn nvtx_lib() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_NVTX_LIB").map(PathBuf::from).filter(|p| p.is_file()) {
        return Some(p);
    }
    let dirs = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    dirs.split(':').filter(|d| !d.is_empty()).map(|d| PathBuf::from(d).join("libnvtx3interop.so.1")).find(|p| p.is_file())
}

fn skip_or_fail(why: &str) {
    if std::env::var("KILN_REQUIRE_NVTX").as_deref() == Ok("1") {
        panic!("KILN_REQUIRE_NVTX=1 but {why}");
    }
    println!("SKIPPED nvtx_ranges_reach_an_injected_profiler: {why}");
}

#[test]
fn nvtx_ranges_reach_an_injected_profiler() {
    let Some(lib) = nvtx_lib() else {
        return skip_or_fail("libnvtx3interop.so.1 is not on LD_LIBRARY_PATH (pip install nvidia-nvtx==13.0.85; see .ci/run)");
    };
    let dir = std::env::temp_dir().join(format!("kiln-nvtx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tool = dir.join("libfake_nvtx_tool.so");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nvtx_tool.c");
    match Command::new("cc").args(["-shared", "-fPIC", "-O1", "-o"]).arg(&tool).arg(src).status() {
        Ok(s) if s.success() => {}
        other => return skip_or_fail(&format!("cannot build the stand-in tool with cc: {other:?}")),
    }
    let log = dir.join("ranges.txt");
    let run = |with_tool: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.args(["bench", "--quick", "--op", "train_step", "--json"]).env("KILN_NVTX_LIB", &lib).env_remove("KILN_NVTX").env("KILN_FAKE_NVTX_OUT", &log);
        if with_tool {
            c.env("NVTX_INJECTION64_PATH", &tool);
        } else {
            c.env_remove("NVTX_INJECTION64_PATH");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "kiln bench failed: {}", String::from_utf8_lossy(&o.stderr));
    };
    // no profiler: nothing loads NVTX, so the tool never runs
    let _ = std::fs::remove_file(&log);
    run(false);
    assert!(!log.exists(), "ranges were recorded with no profiler attached");

    run(true);
    let text = std::fs::read_to_string(&log).expect("the stand-in tool recorded nothing");
    let pushes: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("push ")).collect();
    let pops = text.lines().filter(|l| *l == "pop").count();
    assert_eq!(pushes.len(), pops, "unbalanced ranges");
    for want in ["train_step", "forward", "backward", "optimizer", "h.0", "encoder.layer.0", "attention", "matmul_bias", "layer_norm", "gelu", "cross_entropy", "embedding", "attention.backward", "layer_norm.backward"] {
        assert!(pushes.contains(&want), "no range {want:?} in {:?}", &pushes[..pushes.len().min(60)]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
