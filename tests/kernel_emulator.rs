//! Runs the CUDA kernels of kernels/*.cu on the CPU under kernels/emu (a small emulation of the
//! CUDA execution model and of the mma.sync / ldmatrix / cp.async tensor-core instructions) against
//! double-precision references: the element-wise, reduction, LayerNorm and softmax kernels, the simple
//! attention and the tensor-core attention (tc and tc2, forward and backward, bf16 and f16, masks,
//! odd shapes; the sm_90a wgmma forward and backward under an emulation of wgmma's operand layouts
//! and asynchronous completion). This is how kernels without a GPU run get checked in CI; races and timing still
//! need the GPU (compute-sanitizer).
//!
//! Needs g++ >= 11 (C++20 `<barrier>`). Without it this prints SKIPPED, unless `KILN_REQUIRE_EMU=1`
//! (CI), where it fails.
use std::process::Command;

#[test]
fn cuda_kernels_match_double_references_under_the_cpu_emulator() {
    let gxx = Command::new("g++").arg("--version").output();
    if !gxx.as_ref().is_ok_and(|o| o.status.success()) {
        let why = "g++ (>= 11) not found";
        assert!(std::env::var("KILN_REQUIRE_EMU").as_deref() != Ok("1"), "KILN_REQUIRE_EMU=1 but {why}");
        println!("SKIPPED cuda_kernels_match_double_references_under_the_cpu_emulator: {why}");
        return;
    }
    let out_dir = std::env::temp_dir().join(format!("kiln-kernel-emu-{}", std::process::id()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/emu/run.sh");
    let o = Command::new("bash").arg(script).arg(&out_dir).env_remove("KILN_EMU_TESTS").output().expect("run kernels/emu/run.sh");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let _ = std::fs::remove_dir_all(&out_dir);
    let failed: Vec<&str> = stdout.lines().filter(|l| l.contains("FAIL")).collect();
    assert!(o.status.success() && failed.is_empty(), "emulated kernels failed:\n{}\n{}", failed.join("\n"), String::from_utf8_lossy(&o.stderr));
    // three programs (test_ops, test_attention, test_attention_tc), each ending "all ok"
    assert_eq!(stdout.lines().filter(|l| *l == "all ok").count(), 3, "{stdout}");
    for must in ["tc2 out", "tc2 dq", "tc2 dk", "tc2 dv", "wg out", "wg lse", "wg serial out", "wg dq", "wg dk", "wg dv"] {
        assert!(stdout.contains(must), "no {must:?} check ran:\n{stdout}");
    }
}
