//! File helpers shared by the checkpoint, config and training-state writers.
use kiln_tensor::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Wraps an `std::io::Error` with the path it happened on.
pub(crate) fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), source }
}

/// Whether a directory entry exists at `path`, a dangling symlink included (which
/// `Path::exists` calls absent: a model whose weights link is broken must be an error when opened,
/// not a freshly initialised model).
pub fn entry_exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Reads a whole input file. It must be a regular file (a symlink to one is followed): a FIFO or a
/// device would block or never end, so they are an error naming the path, as is a broken link.
pub fn read_input(path: &Path) -> Result<Vec<u8>> {
    check_regular(path)?;
    crate::limits::check_file(path)?;
    std::fs::read(path).map_err(|e| io_err(path, e))
}

/// [`read_input`] as UTF-8 text.
pub fn read_input_text(path: &Path) -> Result<String> {
    String::from_utf8(read_input(path)?).map_err(|e| Error::msg(format!("{}: not UTF-8 text: {e}", path.display())))
}

/// Errors unless `path` is a regular file or a symlink to one (see [`read_input`]).
pub(crate) fn check_regular(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.is_dir() => Err(Error::msg(format!("{} is a directory, not a file", path.display()))),
        Ok(_) => Err(Error::msg(format!("{} is not a regular file (a FIFO, socket or device?)", path.display()))),
        Err(e) => match std::fs::read_link(path) {
            Ok(target) => Err(Error::msg(format!("{} is a symlink to {}, which does not exist", path.display(), target.display()))),
            Err(_) => Err(io_err(path, e)),
        },
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written,
/// fsynced and renamed over `path` (then the directory is fsynced). A crash leaves either the old
/// file or the new one, never a torn file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::msg(format!("{}: not a file path", path.display())))?;
    // a rename would replace a symlink or a device node by a regular file: refuse instead
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.is_file() {
            let what = if m.file_type().is_symlink() { "a symlink" } else if m.is_dir() { "a directory" } else { "not a regular file" };
            return Err(Error::msg(format!("refusing to write {}: it is {what} (give the path of a regular file)", path.display())));
        }
    }
    let tmp = dir.join(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

/// 64-bit FNV-1a: a tiny stable hash (not cryptographic) for config fingerprints and seeds.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
