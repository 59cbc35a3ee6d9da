//! A training run's output directory, whose checkpoints are written and made current as one unit.
//!
//! ```text
//! OUT/checkpoint-<step>/        config.json, model.safetensors, tokenizer.json,
//!                               training_state.safetensors, kiln_manifest.json
//! OUT/current -> checkpoint-<step>          relative symlink: the current checkpoint
//! OUT/<each of the files above> -> current/<file>   so that OUT itself is an HF model directory
//! ```
//!
//! The manifest ([`Manifest`]) records the run, the step, the config's hash and each file's size
//! and SHA-256. [`commit`] writes a checkpoint so that a crash at any point leaves `current` naming
//! a complete set (or, before the first commit, the directory as it was):
//!
//! 1. stale temporaries of dead processes are removed ([`clean_stale`]);
//! 2. a fresh `.tmp-checkpoint-<step>.<pid>` directory receives each file (written and fsynced),
//!    then the manifest, and is fsynced;
//! 3. it is renamed to `checkpoint-<step>` (the directory above is fsynced after each rename);
//! 4. `current` is switched by renaming a new symlink over it: the one step that changes which
//!    checkpoint is current;
//! 5. the top-level links are created where missing;
//! 6. checkpoints of the same run beyond the newest `keep` (and any past the new step, left by a
//!    resume from an earlier one) are renamed to `.old-…` and then removed; with `overwrite`, so
//!    are other runs' checkpoints.
//!
//! [`resolve`] turns a model directory into the one directory to read: `current`'s target, the
//! directory itself when it holds a manifest, the newest complete `checkpoint-*` when there is no
//! `current` yet (a crash before the first link), or a plain HF directory (no manifest, as
//! transformers writes it, loaded as it is). A manifest is verified before anything is read: a file missing,
//! of another size or checksum, an unlisted model file, or a config of another hash is a torn or
//! foreign set, and an error.
//!
//! For the crash test, `KILN_TEST_KILL_AT=N` kills the process (SIGKILL) at the N-th file operation
//! of the checkpoint writes; `KILN_TEST_KILL_AT=list` prints each operation's number to stderr.
use crate::config::ModelConfig;
use crate::io::{entry_exists, io_err, read_input_text};
use crate::train_state::{CheckpointFile, CONFIG_FILE, MODEL_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, TRAIN_STATE_FILE};
use kiln_tensor::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The manifest's file name, in each checkpoint directory.
pub const MANIFEST_FILE: &str = "kiln_manifest.json";
/// The symlink naming the current checkpoint.
pub const CURRENT_LINK: &str = "current";
const FORMAT: &str = "kiln-checkpoint";
const VERSION: u32 = 1;
/// The files a checkpoint may hold (besides the manifest): any of them in a directory with a
/// manifest must be listed there.
const SET_FILES: [&str; 5] = [MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, TRAIN_STATE_FILE];

/// Size and SHA-256 (lower-case hex) of one file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub bytes: u64,
    pub sha256: String,
}

/// `kiln_manifest.json`: what a complete checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `"kiln-checkpoint"`.
    pub format: String,
    pub version: u32,
    /// The run ([`crate::train_state::TrainState::run_id`]); empty for an export without state.
    pub run_id: String,
    /// Optimizer updates done when the checkpoint was taken.
    pub step: u64,
    /// [`ModelConfig::hash_hex`] of `config.json`.
    pub config_hash: String,
    /// Each file by name.
    pub files: BTreeMap<String, FileDigest>,
}

/// What to commit and how.
pub struct Commit<'a> {
    pub files: Vec<CheckpointFile<'a>>,
    pub run_id: &'a str,
    pub step: u64,
    pub config_hash: String,
    /// Checkpoints of this run to keep, the new one included (0 = all).
    pub keep: usize,
    /// Remove other runs' checkpoints too (the user asked to replace what the directory held).
    pub overwrite: bool,
}

/// The directory a model is read from, and its verified manifest when it has one.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub dir: PathBuf,
    pub manifest: Option<Manifest>,
}

/// A random run id (16 hex digits), drawn when a run starts.
pub fn new_run_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

// ---------------------------------------------------------------------------------------------
// fault injection (the crash test)

fn fault_point(what: &str, path: &Path) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PLAN: OnceLock<Option<String>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let Some(plan) = PLAN.get_or_init(|| std::env::var("KILN_TEST_KILL_AT").ok()) else { return };
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    if plan == "list" {
        eprintln!("kiln fault point {n}: {what} {}", path.display());
    } else if plan.parse::<u64>().ok() == Some(n) {
        kill_self();
    }
}

#[cfg(unix)]
fn kill_self() {
    // SIGKILL: no destructor, flush or handler runs, as with `kill -9`
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}

#[cfg(not(unix))]
fn kill_self() {
    std::process::abort();
}

// ---------------------------------------------------------------------------------------------
// file operations (each one a fault point)

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let res = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    res.map_err(|e| io_err(path, e))?;
    fault_point("wrote", path);
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))?;
    fault_point("synced", dir);
    Ok(())
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::msg(format!("cannot rename {} to {}: {e}", from.display(), to.display())))?;
    fault_point("renamed", to);
    Ok(())
}

#[cfg(unix)]
fn symlink(target: &str, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link).map_err(|e| io_err(link, e))?;
    fault_point("linked", link);
    Ok(())
}

#[cfg(not(unix))]
fn symlink(_target: &str, link: &Path) -> Result<()> {
    Err(Error::msg(format!("{}: checkpoint sets need symbolic links (a unix file system)", link.display())))
}

/// Removes a directory tree by first renaming it to a dot-name (atomic), so that a crash midway
/// leaves a hidden temporary, never a half-deleted checkpoint under its own name.
fn remove_dir(root: &Path, name: &str) -> Result<()> {
    let aside = root.join(format!(".old-{name}.{}", std::process::id()));
    rename(&root.join(name), &aside)?;
    std::fs::remove_dir_all(&aside).map_err(|e| io_err(&aside, e))?;
    fault_point("removed", &aside);
    Ok(())
}

/// Replaces (or creates) `root/name` by a symlink to `target`, atomically.
fn relink(root: &Path, name: &str, target: &str) -> Result<()> {
    let link = root.join(name);
    if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(target)) {
        return Ok(());
    }
    let tmp = root.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    symlink(target, &tmp)?;
    rename(&tmp, &link)
}

// ---------------------------------------------------------------------------------------------
// digests and manifests

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Size and SHA-256 of a file, read in chunks.
pub fn digest_file(path: &Path) -> Result<FileDigest> {
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileDigest { bytes, sha256: hex(&h.finalize()) })
}

/// Reads and checks `dir`'s manifest against the files beside it: each listed file present with
/// its size and SHA-256, no unlisted model file, `config.json`'s hash the manifest's.
pub fn verify(dir: &Path) -> Result<Manifest> {
    let mpath = dir.join(MANIFEST_FILE);
    let text = read_input_text(&mpath)?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: not a kiln checkpoint manifest: {e}", mpath.display())))?;
    if m.format != FORMAT || m.version != VERSION {
        return Err(Error::msg(format!("{}: checkpoint format '{}' version {} is not supported ('{FORMAT}' version {VERSION})", mpath.display(), m.format, m.version)));
    }
    let torn = |what: String| {
        Error::msg(format!(
            "{}: {what}; the checkpoint (step {}) is torn or was modified after it was written. Resume from an intact checkpoint, or delete {MANIFEST_FILE} to load the files as they are",
            dir.display(),
            m.step
        ))
    };
    for (name, want) in &m.files {
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(torn(format!("the manifest lists '{name}', which is not a file of the checkpoint")));
        }
        let p = dir.join(name);
        if !entry_exists(&p) {
            return Err(torn(format!("{name} is missing")));
        }
        crate::io::check_regular(&p)?;
        let got = digest_file(&p)?;
        if got.bytes != want.bytes {
            return Err(torn(format!("{name} has {} bytes, the manifest says {}", got.bytes, want.bytes)));
        }
        if got.sha256 != want.sha256 {
            return Err(torn(format!("{name}'s SHA-256 is {}, the manifest says {}", got.sha256, want.sha256)));
        }
    }
    for f in SET_FILES {
        if !m.files.contains_key(f) && entry_exists(&dir.join(f)) {
            return Err(torn(format!("{f} is not listed in the manifest")));
        }
    }
    if m.files.contains_key(CONFIG_FILE) {
        let h = ModelConfig::load(dir.join(CONFIG_FILE))?.hash_hex()?;
        if h != m.config_hash {
            return Err(torn(format!("config.json's hash is {h}, the manifest says {}", m.config_hash)));
        }
    }
    Ok(m)
}

/// The directory to read a model from (see the module docs), its manifest verified.
pub fn resolve(dir: &Path) -> Result<Resolved> {
    let cur = dir.join(CURRENT_LINK);
    let snapshot = match std::fs::symlink_metadata(&cur) {
        Ok(md) if md.file_type().is_symlink() => {
            let target = std::fs::read_link(&cur).map_err(|e| io_err(&cur, e))?;
            let d = dir.join(&target);
            if !d.join(MANIFEST_FILE).is_file() {
                return Err(Error::msg(format!("{}: '{CURRENT_LINK}' points to {}, which holds no checkpoint manifest", dir.display(), target.display())));
            }
            d
        }
        _ if entry_exists(&dir.join(MANIFEST_FILE)) => dir.to_path_buf(),
        // a crash between a first checkpoint's rename and its `current` link: the newest
        // complete checkpoint (only where the directory is not itself a model)
        _ => match checkpoint_dirs(dir).into_iter().filter(|d| d.manifest.is_some()).max_by_key(|d| d.order()) {
            Some(d) if !entry_exists(&dir.join(CONFIG_FILE)) => dir.join(d.name),
            _ => return Ok(Resolved { dir: dir.to_path_buf(), manifest: None }),
        },
    };
    let manifest = verify(&snapshot)?;
    Ok(Resolved { dir: snapshot, manifest: Some(manifest) })
}

/// The run directory a checkpoint directory belongs to: `dir`'s parent when `dir` is a
/// `checkpoint-*` directory holding a manifest, else `dir`.
pub fn run_root(dir: &Path) -> PathBuf {
    let is_member = dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with("checkpoint-")) && dir.join(MANIFEST_FILE).is_file();
    match dir.parent() {
        Some(p) if is_member => p.to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// The name of `root`'s current checkpoint directory, if any.
pub fn current_name(root: &Path) -> Option<String> {
    std::fs::read_link(root.join(CURRENT_LINK)).ok().map(|t| t.to_string_lossy().into_owned())
}

/// What in `root` makes it hold a model or checkpoint (the entries a new run would replace).
pub fn held_entries(root: &Path) -> Vec<String> {
    let mut held: Vec<String> = SET_FILES.iter().chain([&MANIFEST_FILE, &CURRENT_LINK]).filter(|f| entry_exists(&root.join(f))).map(|f| f.to_string()).collect();
    held.extend(checkpoint_dirs(root).into_iter().map(|c| c.name));
    held
}

/// One `checkpoint-*` directory of a run directory, with its manifest when readable.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    pub name: String,
    pub manifest: Option<Manifest>,
}

impl CheckpointDir {
    /// Order within a run: step, then the collision suffix of `checkpoint-<step>-<k>`.
    fn order(&self) -> (u64, u64) {
        let rest = self.name.strip_prefix("checkpoint-").unwrap_or("");
        let mut it = rest.splitn(2, '-');
        let step = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let k = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        (self.manifest.as_ref().map_or(step, |m| m.step), k)
    }
}

/// The `checkpoint-*` directories of `root` (not following links), sorted by name.
pub fn checkpoint_dirs(root: &Path) -> Vec<CheckpointDir> {
    let Ok(rd) = std::fs::read_dir(root) else { return Vec::new() };
    let mut out: Vec<CheckpointDir> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .map(|name| {
            let manifest = std::fs::read_to_string(root.join(&name).join(MANIFEST_FILE)).ok().and_then(|t| serde_json::from_str(&t).ok());
            CheckpointDir { name, manifest }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

// ---------------------------------------------------------------------------------------------
// stale temporaries

#[cfg(unix)]
fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else { return false };
    // signal 0 checks existence; EPERM means it exists under another user
    let alive = unsafe { libc::kill(p, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn pid_alive(_pid: u32) -> bool {
    true
}

/// The pid a temporary's name ends with (`.<name>.<pid>`), if it is one of ours: `.tmp-…`,
/// `.old-…`, or an [`crate::io::atomic_write`] / link temporary `.<file>.tmp.<pid>`.
fn temp_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (stem, pid) = name.rsplit_once('.')?;
    let ours = stem.starts_with(".tmp-") || stem.starts_with(".old-") || stem.ends_with(".tmp");
    ours.then(|| pid.parse().ok()).flatten()
}

/// Removes the temporaries that dead processes (or this one, earlier) left in `root`; returns
/// their paths. A live process's temporaries are left alone.
pub fn clean_stale(root: &Path) -> Result<Vec<PathBuf>> {
    let Ok(rd) = std::fs::read_dir(root) else { return Ok(Vec::new()) };
    let me = std::process::id();
    let mut removed = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_pid(&name) else { continue };
        if pid != me && pid_alive(pid) {
            continue;
        }
        let p = e.path();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let r = if is_dir { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        r.map_err(|err| io_err(&p, err))?;
        removed.push(p);
    }
    Ok(removed)
}

// ---------------------------------------------------------------------------------------------
// commit

/// Writes a checkpoint into the run directory `root` as one unit and makes it current (see the
/// module docs); returns the checkpoint's directory.
pub fn commit(root: &Path, c: Commit<'_>) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| io_err(root, e))?;
    if std::fs::symlink_metadata(root.join(MANIFEST_FILE)).is_ok_and(|m| m.is_file()) {
        return Err(Error::msg(format!("{} is a checkpoint, not a run directory: write to its parent {}", root.display(), run_root(root).display())));
    }
    clean_stale(root)?;
    let pid = std::process::id();
    let tmp = root.join(format!(".tmp-checkpoint-{}.{pid}", c.step));
    std::fs::create_dir(&tmp).map_err(|e| io_err(&tmp, e))?;
    fault_point("created", &tmp);
    let mut files = BTreeMap::new();
    for (name, make) in c.files {
        let bytes = make().map_err(|e| Error::msg(format!("checkpoint {name}: {e}")))?;
        files.insert(name.to_string(), FileDigest { bytes: bytes.len() as u64, sha256: sha256_hex(&bytes) });
        write_synced(&tmp.join(name), &bytes)?;
    }
    let manifest = Manifest { format: FORMAT.into(), version: VERSION, run_id: c.run_id.to_string(), step: c.step, config_hash: c.config_hash, files };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| Error::msg(format!("checkpoint manifest: {e}")))? + "\n";
    write_synced(&tmp.join(MANIFEST_FILE), text.as_bytes())?;
    sync_dir(&tmp)?;

    // a free name: a stale directory of that name that is not current is replaced when it is
    // this run's (an abandoned later branch) or the user asked to overwrite
    let current = current_name(root);
    let existing = checkpoint_dirs(root);
    let mut name = format!("checkpoint-{}", c.step);
    let mut k = 0;
    while entry_exists(&root.join(&name)) {
        let replaceable = current.as_deref() != Some(name.as_str())
            && existing.iter().find(|d| d.name == name).is_some_and(|d| c.overwrite || d.manifest.as_ref().is_some_and(|m| m.run_id == c.run_id));
        if replaceable {
            remove_dir(root, &name)?;
            break;
        }
        k += 1;
        name = format!("checkpoint-{}-{k}", c.step);
    }
    rename(&tmp, &root.join(&name))?;
    sync_dir(root)?;
    relink(root, CURRENT_LINK, &name)?;
    sync_dir(root)?;
    for f in SET_FILES.iter().chain([&MANIFEST_FILE]) {
        let target = format!("{CURRENT_LINK}/{f}");
        let link = root.join(f);
        if f == &MANIFEST_FILE || manifest.files.contains_key(*f) {
            relink(root, f, &target)?;
        } else if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(&target)) {
            // a file this checkpoint lacks (no tokenizer): no dangling link to it
            std::fs::remove_file(&link).map_err(|e| io_err(&link, e))?;
            fault_point("unlinked", &link);
        }
    }
    sync_dir(root)?;
    prune(root, &name, &manifest, c.keep, c.overwrite)?;
    Ok(root.join(name))
}

/// Removes the checkpoints that `commit` of `kept` (now current) leaves no reason to keep.
fn prune(root: &Path, kept: &str, m: &Manifest, keep: usize, overwrite: bool) -> Result<()> {
    let mut ours: Vec<CheckpointDir> = Vec::new();
    let mut drop: Vec<String> = Vec::new();
    let me = CheckpointDir { name: kept.to_string(), manifest: Some(m.clone()) };
    for d in checkpoint_dirs(root) {
        if d.name == kept {
            continue;
        }
        match &d.manifest {
            Some(dm) if dm.run_id == m.run_id => {
                if d.order() > me.order() {
                    drop.push(d.name); // a later branch, abandoned by resuming an earlier checkpoint
                } else {
                    ours.push(d);
                }
            }
            Some(_) if overwrite => drop.push(d.name),
            _ => {} // another run's, or not a kiln checkpoint: not ours to remove
        }
    }
    if keep > 0 {
        ours.sort_by_key(|d| std::cmp::Reverse(d.order()));
        drop.extend(ours.into_iter().skip(keep - 1).map(|d| d.name));
    }
    for name in drop {
        remove_dir(root, &name)?;
    }
    Ok(())
}

/// A line for an error that stops a run: which checkpoints `root` holds, current first.
pub fn describe(root: &Path) -> String {
    let Some(cur) = current_name(root) else { return format!("{} holds no checkpoint yet", root.display()) };
    let steps: Vec<String> = {
        let mut v: Vec<CheckpointDir> = checkpoint_dirs(root).into_iter().filter(|d| d.manifest.is_some()).collect();
        v.sort_by_key(|d| d.order());
        v.iter().map(|d| format!("{} (step {})", d.name, d.manifest.as_ref().map_or(0, |m| m.step))).collect()
    };
    format!("the current checkpoint in {} is {cur}, left as it was; checkpoints there: {}", root.display(), steps.join(", "))
}
