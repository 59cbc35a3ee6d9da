//! Helpers shared by the integration tests (`mod common;` in each test file that uses them).
#![allow(dead_code)]
pub mod finetune;

use std::collections::BTreeMap;
use std::path::Path;

/// Every entry under `dir` by relative path: a regular file's bytes, a symlink's target, another
/// kind's type (a FIFO is never opened). Two snapshots are equal when nothing under `dir` changed.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()) {
            let (p, t) = (e.path(), e.file_type().unwrap());
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if t.is_symlink() {
                out.insert(rel, format!("-> {}", std::fs::read_link(&p).unwrap().display()).into_bytes());
            } else if t.is_dir() {
                walk(root, &p, out);
            } else if t.is_file() {
                out.insert(rel, std::fs::read(&p).unwrap());
            } else {
                out.insert(rel, b"(not a regular file)".to_vec());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// `../shared/data/tinyshakespeare.txt` beside the repository (1.1 MB), read in place.
pub fn shakespeare() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/tinyshakespeare.txt");
    kiln::model::data::read_text(&p).unwrap_or_else(|e| panic!("these tests read ../shared/data/tinyshakespeare.txt beside the repository: {e}"))
}

/// The text cut at 90% (on a char boundary): (train, held out).
pub fn split(text: &str) -> (&str, &str) {
    let cut = text.char_indices().map(|(i, _)| i).find(|&i| i >= text.len() * 9 / 10).unwrap_or(text.len());
    text.split_at(cut)
}

/// The commonest token of `docs` (documents of tokenized sentences) that is not a special token:
/// the MLM tests' "always predict it" baseline.
pub fn most_frequent_token(docs: &[Vec<Vec<u32>>], special: &kiln::model::tokenize::SpecialIds) -> i64 {
    let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
    for &i in docs.iter().flatten().flatten() {
        *counts.entry(i).or_default() += 1;
    }
    counts.iter().filter(|(i, _)| !special.all().contains(i)).max_by_key(|(_, &c)| c).map(|(&i, _)| i as i64).expect("a non-special token")
}
