//! Runs the CUDA kernels (kernels/*.cu and crates/tensor/src/ops/*/*.cu) on the CPU under kernels/emu (a small emulation of the
//! CUDA execution model and of the mma.sync / ldmatrix / cp.async tensor-core instructions) against
//! double-precision references: the element-wise, reduction, LayerNorm and softmax kernels, the simple
//! attention and the tensor-core attention (tc and tc2, forward and backward, bf16 and f16, masks,
//! odd shapes; the sm_90a wgmma forward and backward under an emulation of wgmma's operand layouts
//! and asynchronous completion; the attention kernels' dropout variants against a double reference
//! that builds the mask with its own SplitMix64). This is how kernels without a GPU run get checked in CI.
//!
//! The second test builds the same programs under ThreadSanitizer: the emulator runs a block's
//! threads as real threads that meet at real barriers, lands cp.async copies only at the issuing
//! thread's wait (NaN before) and has wgmma read its shared-memory operands at issue and at the
//! wait, so an access that no barrier orders against another thread's write is a reported data
//! race: compute-sanitizer's racecheck, on the CPU, for shared and global memory. Timing still
//! needs the GPU.
//!
//! Needs g++ >= 11 (C++20 `<barrier>`) and its ThreadSanitizer runtime. Without them these print
//! SKIPPED, unless `KILN_REQUIRE_EMU=1` (CI), where they fail.
use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs kernels/emu/run.sh (under ThreadSanitizer when `tsan`), or None (with SKIPPED printed) when
/// the compiler or the sanitizer is missing and KILN_REQUIRE_EMU is not 1.
fn run_emulator(test: &str, tsan: bool) -> Option<Output> {
    let out_dir = std::env::temp_dir().join(format!("kiln-kernel-emu-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&out_dir).expect("create the emulator's build folder");
    let missing = if tsan { tsan_missing(&out_dir) } else { gxx_missing() };
    if let Some(why) = missing {
        let _ = std::fs::remove_dir_all(&out_dir);
        assert!(std::env::var("KILN_REQUIRE_EMU").as_deref() != Ok("1"), "KILN_REQUIRE_EMU=1 but {why}");
        println!("SKIPPED {test}: {why}");
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/emu/run.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script).arg(&out_dir).env_remove("KILN_EMU_TESTS").env_remove("TSAN_OPTIONS");
    if tsan {
        cmd.env("KILN_EMU_TSAN", "1");
    } else {
        cmd.env_remove("KILN_EMU_TSAN");
    }
    let o = cmd.output().expect("run kernels/emu/run.sh");
    let _ = std::fs::remove_dir_all(&out_dir);
    Some(o)
}

fn gxx_missing() -> Option<String> {
    let gxx = Command::new("g++").arg("--version").output();
    (!gxx.as_ref().is_ok_and(|o| o.status.success())).then(|| "g++ (>= 11) not found".to_string())
}

/// Whether g++ can build and run a program under -fsanitize=thread here.
fn tsan_missing(dir: &std::path::Path) -> Option<String> {
    if let Some(why) = gxx_missing() {
        return Some(why);
    }
    let src: PathBuf = dir.join("probe.cpp");
    let exe: PathBuf = dir.join("probe");
    std::fs::write(&src, "#include <thread>\nint main() { int x = 0; std::thread t([&] { x = 1; }); t.join(); return x - 1; }\n")
        .expect("write the probe");
    let built = Command::new("g++").args(["-std=c++20", "-fsanitize=thread", "-pthread", "-o"]).arg(&exe).arg(&src).output();
    if !built.as_ref().is_ok_and(|o| o.status.success()) {
        let err = built.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_else(|e| e.to_string());
        return Some(format!("g++ -fsanitize=thread cannot build (is libtsan installed?): {}", err.trim()));
    }
    let ran = Command::new(&exe).output();
    (!ran.as_ref().is_ok_and(|o| o.status.success())).then(|| format!("a -fsanitize=thread program does not run here: {ran:?}"))
}

/// The emulator programs run.sh must run: kernels/emu/test_*.cpp and every op's own
/// crates/tensor/src/ops/<op>/<op>_emu.cpp (read from the tree, as run.sh finds them).
fn programs() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = Vec::new();
    let mut add = |dir: PathBuf, keep: &dyn Fn(&str) -> bool| {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())).flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".cpp").filter(|s| keep(s)) {
                names.push(stem.to_string());
            }
        }
    };
    add(root.join("kernels/emu"), &|s| s.starts_with("test_"));
    for op in std::fs::read_dir(root.join("crates/tensor/src/ops")).unwrap().flatten().filter(|e| e.path().is_dir()) {
        add(op.path(), &|s| s.ends_with("_emu"));
    }
    names.sort();
    names
}

/// The checks every run must show: no FAIL line, exit status 0, each program of [`programs`]
/// started and "all ok" once per program, and the tensor-core and dropout kernels' checks.
fn assert_all_ok(o: &Output) {
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let failed: Vec<&str> = stdout.lines().filter(|l| l.contains("FAIL")).collect();
    assert!(o.status.success() && failed.is_empty(), "emulated kernels failed:\n{}\n{stdout}\n{stderr}", failed.join("\n"));
    let programs = programs();
    assert!(programs.len() >= 5, "{programs:?}");
    for p in &programs {
        assert!(stdout.lines().any(|l| l == format!("== program {p}")), "{p} did not run:\n{stdout}");
    }
    assert_eq!(stdout.lines().filter(|l| *l == "all ok").count(), programs.len(), "{stdout}");
    for must in ["drop out", "drop dq", "drop dk", "drop dv", "tc drop out", "tc drop dq", "tc drop dk", "tc drop dv", "tc2 out", "tc2 dq", "tc2 dk", "tc2 dv", "wg out", "wg lse", "wg serial out", "wgtma out", "wgtma lse", "wgtma pingpong out", "wg dq", "wg dk", "wg dv"] {
        assert!(stdout.contains(must), "no {must:?} check ran:\n{stdout}");
    }
}

#[test]
fn cuda_kernels_match_double_references_under_the_cpu_emulator() {
    if let Some(o) = run_emulator("cuda_kernels_match_double_references_under_the_cpu_emulator", false) {
        assert_all_ok(&o);
    }
}

#[test]
fn cuda_kernels_have_no_data_races_under_thread_sanitizer() {
    if let Some(o) = run_emulator("cuda_kernels_have_no_data_races_under_thread_sanitizer", true) {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains("ThreadSanitizer"), "ThreadSanitizer reported:\n{stderr}");
        assert_all_ok(&o);
    }
}
