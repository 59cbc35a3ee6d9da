//! Data-parallel training over MPI (issue 21): `mpirun -np 2 kiln train` on the CPU, one thread
//! per rank, gives the losses and final weights of one process with `--accum 2` bit for bit, with
//! and without `--zero 1`; a rank that dies or fails ends the job with a message naming it, the
//! last checkpoint stays intact and `--resume` then matches the uninterrupted run; a checkpoint
//! resumed by another split of the update is refused; 3 ranks equal `--accum 3` too. Needs OpenMPI's `mpirun` (`.ci/run`
//! installs it).
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-dist-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 20 kB of real text, as a file for `--data`.
fn data_file(d: &Path) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/tinyshakespeare.txt");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("these tests read {}: {e}", p.display()));
    let f = d.join("data.txt");
    std::fs::write(&f, &text[..20_000]).unwrap();
    f
}

/// Runs `cmd` with one rayon thread, killing it after `limit` (a hang is a failure, not a wait).
fn run_limited(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    cmd.env("RAYON_NUM_THREADS", "1").stdout(Stdio::piped()).stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("still running after {limit:?} (a hang): {}", String::from_utf8_lossy(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = t0.elapsed();
    (child.wait_with_output().unwrap(), elapsed)
}

/// `kiln train` on `data` with a tiny GPT, a constant schedule and dropout on (the ranks must draw
/// the masks of the micro-batches they train); `extra` adds the steps and the rest.
fn train_args(data: &Path, extra: &[&str]) -> Vec<String> {
    let common = [
        "train", "--data", data.to_str().unwrap(), "--batch", "2", "--seq", "16", "--vocab", "200", "--eval-every", "0", "--sample-tokens", "0",
        "--json", "--schedule", "constant", "--warmup", "0", "--lr", "3e-3", "--seed", "11",
    ];
    common.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn alone(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(train_args(data, extra)).envs(env.iter().copied());
    run_limited(c, Duration::from_secs(240)).0
}

/// `mpirun -np N kiln train ...` (as root too, and on fewer cores than ranks).
fn mpirun(np: usize, data: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--allow-run-as-root", "-np", &np.to_string(), "-x", "RAYON_NUM_THREADS"]);
    for (k, _) in env {
        c.args(["-x", k]);
    }
    c.arg(env!("CARGO_BIN_EXE_kiln")).args(train_args(data, extra)).envs(env.iter().copied());
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1").env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    run_limited(c, Duration::from_secs(240))
}

fn need_mpirun() {
    let ok = Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "these tests need OpenMPI's mpirun on PATH (Debian: apt-get install openmpi-bin libopenmpi-dev)");
}

fn ok(o: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "failed: {err}\n{out}");
    out.into_owned()
}

/// (step, loss bits, grad_norm bits) of each JSON step line.
fn steps(out: &str) -> Vec<(u64, u64, u64)> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some() && v.get("grad_norm").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap().to_bits(), v["grad_norm"].as_f64().unwrap().to_bits()))
        .collect()
}

fn weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("model.safetensors")).unwrap_or_else(|e| panic!("{}: {e}", run.join("model.safetensors").display()))
}

#[test]
fn two_ranks_equal_one_process_with_accum_2_bit_for_bit() {
    need_mpirun();
    let d = tmp("exact");
    let data = data_file(&d);
    let out = |n: &str| d.join(n).to_str().unwrap().to_string();
    let one = ok(&alone(&data, &["--steps", "4", "--accum", "2", "--out", &out("one")], &[]));
    let (two, _) = mpirun(2, &data, &["--steps", "4", "--out", &out("two")], &[]);
    let two = ok(&two);
    let (zero, _) = mpirun(2, &data, &["--steps", "4", "--zero", "1", "--out", &out("zero")], &[]);
    let zero = ok(&zero);
    let s1 = steps(&one);
    assert_eq!(s1.len(), 4, "{one}");
    // rank 0 alone reports: one line per step, and the run says it had 2 ranks
    assert_eq!(steps(&two), s1, "2 ranks: losses or gradient norms differ from 1 process with --accum 2\n{two}\n{one}");
    assert_eq!(steps(&zero), s1, "2 ranks with --zero 1: losses differ\n{zero}");
    assert!(two.contains("\"world_size\":2"), "{two}");
    assert!(weights(&d.join("one")) == weights(&d.join("two")), "2 ranks: final weights differ from 1 process with --accum 2");
    assert!(weights(&d.join("one")) == weights(&d.join("zero")), "2 ranks with --zero 1: final weights differ");
    // the moments too: the sharded run's checkpoint holds the whole optimizer state
    let (a, b) = (kiln::model::train_state::load_train_state(d.join("one").join("training_state.safetensors")).unwrap(), kiln::model::train_state::load_train_state(d.join("zero").join("training_state.safetensors")).unwrap());
    assert!(!a.optimizer.tensors.is_empty());
    assert_eq!(a.optimizer.tensors.len(), b.optimizer.tensors.len());
    for ((na, ta), (nb, tb)) in a.optimizer.tensors.iter().zip(&b.optimizer.tensors) {
        assert_eq!(na, nb);
        assert!(ta.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).eq(tb.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits())), "{na} differs");
    }
    // ZeRO-1 keeps about half of the AdamW state on each of the 2 ranks, all of it between them
    let state_bytes = |out: &str| -> Vec<f64> {
        let v = out.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|v| v.get("optimizer_state_bytes_per_rank").cloned());
        v.unwrap_or_else(|| panic!("no optimizer_state_bytes_per_rank line: {out}")).as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let (full, sharded) = (state_bytes(&two), state_bytes(&zero));
    assert!(full[0] > 0.0 && full[0] == full[1], "{full:?}");
    assert_eq!(sharded.iter().sum::<f64>(), full[0], "{sharded:?} vs {full:?}");
    assert!(sharded.iter().all(|&b| b <= 0.55 * full[0]), "a rank keeps more than 55% of the AdamW state: {sharded:?} of {}", full[0]);
    // and not trivially: 1 process without accumulation takes other steps
    let plain = ok(&alone(&data, &["--steps", "1", "--out", &out("plain")], &[]));
    assert_ne!(steps(&plain)[0].1, s1[0].1);
    let _ = std::fs::remove_dir_all(&d);
}

/// With N > 2 a two-term commutation no longer suffices: the all-reduce adds the ranks' gradients in
/// rank order, the order one process accumulates its micro-batches in, so 3 ranks equal `--accum 3`.
#[test]
fn three_ranks_equal_one_process_with_accum_3_bit_for_bit() {
    need_mpirun();
    let d = tmp("three");
    let data = data_file(&d);
    let out = |n: &str| d.join(n).to_str().unwrap().to_string();
    let one = ok(&alone(&data, &["--steps", "3", "--accum", "3", "--out", &out("one")], &[]));
    let (three, _) = mpirun(3, &data, &["--steps", "3", "--zero", "1", "--out", &out("three")], &[]);
    let three = ok(&three);
    assert_eq!(steps(&three), steps(&one), "3 ranks: losses differ from 1 process with --accum 3\n{three}\n{one}");
    assert!(weights(&d.join("one")) == weights(&d.join("three")), "3 ranks: final weights differ from 1 process with --accum 3");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_rank_that_dies_or_fails_stops_the_job_and_resume_matches() {
    need_mpirun();
    let d = tmp("fault");
    let data = data_file(&d);
    let out = |n: &str| d.join(n).to_str().unwrap().to_string();
    let reference = ok(&alone(&data, &["--steps", "4", "--accum", "2", "--out", &out("ref")], &[]));
    // rank 1 is killed (SIGKILL) as it starts update 3; a checkpoint was committed at step 2
    let run = out("run");
    let (o, took) = mpirun(2, &data, &["--steps", "4", "--ckpt-every", "2", "--out", &run], &[("KILN_TEST_RANK_FAULT", "1@3")]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "the job survived a dead rank: {err}");
    assert!(err.contains("rank 1"), "the message does not name rank 1: {err}");
    assert!(took < Duration::from_secs(120), "took {took:?} to stop");
    let cur = std::fs::read_link(d.join("run").join("current")).unwrap();
    assert_eq!(cur.to_str(), Some("checkpoint-2"));
    // resumed by 2 ranks: steps 3 and 4 and the weights are the uninterrupted run's
    let (r, _) = mpirun(2, &data, &["--steps", "4", "--ckpt-every", "2", "--resume", &run], &[]);
    let r = ok(&r);
    assert_eq!(steps(&r), steps(&reference)[2..].to_vec(), "{r}");
    assert!(weights(&d.join("run")) == weights(&d.join("ref")), "resumed weights differ from the uninterrupted run");

    // an error on rank 1 (not a crash): every rank stops, the message names the rank and the error
    let (o, took) = mpirun(2, &data, &["--steps", "3", "--out", &out("err")], &[("KILN_TEST_RANK_FAULT", "1@2:error")]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    assert!(err.contains("rank 1 of 2") && err.contains("injected failure at step 2"), "{err}");
    assert!(took < Duration::from_secs(120), "took {took:?} to stop");

    // another split of the update is refused; the same micro-batches re-split are not
    let o = alone(&data, &["--steps", "4", "--resume", &out("run"), "--out", &out("other"), "--ckpt-every", "2"], &[]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success() && err.contains("trained by 2 rank(s)"), "{err}");
    let ck2 = d.join("run").join("checkpoint-2");
    let o = ok(&alone(&data, &["--steps", "4", "--accum", "2", "--resume", ck2.to_str().unwrap(), "--out", &out("resplit")], &[]));
    assert_eq!(steps(&o), steps(&reference)[2..].to_vec(), "{o}");
    let _ = std::fs::remove_dir_all(&d);
}
