//! The disk tier: one file per primary key in a local directory (every
//! variant of the key in one [`codec`](super::codec) record), bounded by
//! bytes with the least recently used files removed first, and read again
//! after a restart: the index (key, tags, size, last use) is rebuilt from
//! the files' heads when the tier opens.
//!
//! Every call does blocking file I/O: callers run them on tokio's
//! blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::codec;
use super::store::Purge;

/// File name ending of records.
const EXT: &str = "pce";
/// Bytes read from each file's head when the index is rebuilt.
const HEAD_BYTES: usize = 64 * 1024;

/// Why the tier could not open.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The directory could not be made or read.
    #[error("cache directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A directory of stored answers.
pub struct DiskTier {
    dir: PathBuf,
    max_size: u64,
    index: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    /// By file name (a digest of the key).
    files: HashMap<String, Slot>,
    /// File names by last use, oldest first.
    by_use: BTreeMap<u64, String>,
    clock: u64,
    total: u64,
}

struct Slot {
    key: Box<str>,
    tags: Box<[Box<str>]>,
    size: u64,
    used: u64,
}

impl Index {
    fn touch(&mut self, name: &str) {
        self.clock += 1;
        let now = self.clock;
        if let Some(slot) = self.files.get_mut(name) {
            self.by_use.remove(&slot.used);
            slot.used = now;
            self.by_use.insert(now, name.to_string());
        }
    }

    fn put(&mut self, name: String, slot: Slot) {
        self.forget(&name);
        self.total += slot.size;
        self.by_use.insert(slot.used, name.clone());
        self.files.insert(name, slot);
    }

    fn forget(&mut self, name: &str) -> bool {
        match self.files.remove(name) {
            Some(old) => {
                self.total -= old.size;
                self.by_use.remove(&old.used);
                true
            }
            None => false,
        }
    }
}

/// The file name for a primary key.
fn file_name(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("{}.{EXT}", hex::encode(&digest[..16]))
}

impl DiskTier {
    /// Opens (making it if needed) `dir`, indexing the records already
    /// there, oldest use first by their modification times; files that are
    /// not records are left alone, damaged records removed.
    pub fn open(dir: &Path, max_size: u64) -> Result<DiskTier, DiskError> {
        let err = |source| DiskError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(err)?;
        let mut found = Vec::new();
        for item in fs::read_dir(dir).map_err(err)? {
            let Ok(item) = item else { continue };
            let path = item.path();
            let name = item.file_name().to_string_lossy().into_owned();
            if path.extension().is_none_or(|e| e != EXT) {
                // Half-written records from a crash are removed; anything
                // else is not ours.
                if name.ends_with(".pce.tmp") {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let Ok(meta) = item.metadata() else { continue };
            let mut head = vec![0; HEAD_BYTES.min(meta.len() as usize)];
            let read = fs::File::open(&path).and_then(|mut f| f.read_exact(&mut head));
            let mut parsed = read.ok().and_then(|()| codec::head_of(&head).ok());
            if parsed.is_none() && meta.len() as usize > HEAD_BYTES {
                // Keys and tags longer than the head read: read it all.
                parsed = fs::read(&path)
                    .ok()
                    .and_then(|all| codec::head_of(&all).ok());
            }
            match parsed {
                Some((key, tags)) if file_name(&key) == name => {
                    let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    found.push((modified, name, key, tags, meta.len()));
                }
                _ => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        found.sort_by_key(|f| f.0);
        let mut index = Index::default();
        for (_, name, key, tags, size) in found {
            index.clock += 1;
            let used = index.clock;
            index.put(
                name,
                Slot {
                    key: key.into(),
                    tags: tags.into_iter().map(Box::from).collect(),
                    size,
                    used,
                },
            );
        }
        let tier = DiskTier {
            dir: dir.to_path_buf(),
            max_size,
            index: Mutex::new(index),
        };
        tier.shrink();
        Ok(tier)
    }

    /// The record stored for `key`, if any.
    pub fn load(&self, key: &str) -> Option<Bytes> {
        let name = file_name(key);
        if !crate::lock(&self.index).files.contains_key(&name) {
            return None;
        }
        match fs::read(self.dir.join(&name)) {
            Ok(bytes) => {
                crate::lock(&self.index).touch(&name);
                Some(Bytes::from(bytes))
            }
            Err(_) => {
                crate::lock(&self.index).forget(&name);
                None
            }
        }
    }

    /// Stores `record` (every variant of `key`), replacing what was there,
    /// then removes the least recently used records past `max_size`.
    pub fn save(&self, key: &str, tags: Vec<String>, record: &[u8]) {
        if record.len() as u64 > self.max_size {
            // An older, smaller record of the key would be out of date now.
            self.remove(key);
            return;
        }
        let name = file_name(key);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        // Written aside and renamed: a reader never sees half a record.
        let written = fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(record))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(error = %e, dir = %self.dir.display(), "cache: writing to the disk tier failed");
            let _ = fs::remove_file(&tmp);
            return;
        }
        {
            let mut index = crate::lock(&self.index);
            index.clock += 1;
            let used = index.clock;
            index.put(
                name,
                Slot {
                    key: key.into(),
                    tags: tags.into_iter().map(Box::from).collect(),
                    size: record.len() as u64,
                    used,
                },
            );
        }
        self.shrink();
    }

    /// Removes the record of `key`; whether there was one.
    pub fn remove(&self, key: &str) -> bool {
        let name = file_name(key);
        let known = crate::lock(&self.index).forget(&name);
        if known {
            let _ = fs::remove_file(self.dir.join(&name));
        }
        known
    }

    /// Removes what `purge` selects; how many keys went.
    pub fn purge(&self, purge: &Purge) -> usize {
        let doomed: Vec<String> = crate::lock(&self.index)
            .files
            .iter()
            .filter(|(_, slot)| purge.selects(&slot.key, || slot.tags.iter().map(|t| &**t)))
            .map(|(_, slot)| slot.key.to_string())
            .collect();
        doomed.iter().filter(|k| self.remove(k)).count()
    }

    /// Records and bytes on disk.
    pub fn usage(&self) -> (u64, u64) {
        let index = crate::lock(&self.index);
        (index.files.len() as u64, index.total)
    }

    /// The configured bound.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    fn shrink(&self) {
        loop {
            let doomed = {
                let mut index = crate::lock(&self.index);
                if index.total <= self.max_size {
                    return;
                }
                let Some((_, name)) = index.by_use.pop_first() else {
                    return;
                };
                if let Some(slot) = index.files.remove(&name) {
                    index.total -= slot.size;
                }
                name
            };
            let _ = fs::remove_file(self.dir.join(doomed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::cache::entry::Entry;
    use crate::policy::cache::rules::Heuristic;
    use http::{HeaderMap, HeaderValue, StatusCode};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    const H: Heuristic = Heuristic {
        max: Duration::ZERO,
        default_ttl: Duration::ZERO,
    };

    fn record(key: &str, tag: &str, size: usize) -> (Vec<String>, Bytes) {
        let mut h = HeaderMap::new();
        h.insert("cache-tag", HeaderValue::from_str(tag).unwrap());
        let now = SystemTime::now();
        let e = Arc::new(Entry::new(
            Arc::from(key),
            StatusCode::OK,
            h,
            Bytes::from(vec![b'x'; size]),
            false,
            now,
            now,
            H,
            Box::new([]),
        ));
        (vec![tag.to_string()], codec::encode(key, &[e]))
    }

    #[test]
    fn records_survive_reopening_and_damaged_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        {
            let tier = DiskTier::open(dir.path(), 1 << 20).unwrap();
            let (tags, r) = record("https://h/a", "t", 100);
            tier.save("https://h/a", tags, &r);
            fs::write(dir.path().join("junk.pce"), b"not a record").unwrap();
            fs::write(dir.path().join("x.pce.tmp"), b"half").unwrap();
            fs::write(dir.path().join("other.tmp"), b"not ours").unwrap();
            fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        }
        let tier = DiskTier::open(dir.path(), 1 << 20).unwrap();
        let back = codec::decode(tier.load("https://h/a").unwrap(), H).unwrap();
        assert_eq!(back[0].body.len(), 100);
        assert!(tier.load("https://h/b").is_none());
        assert!(!dir.path().join("junk.pce").exists());
        assert!(!dir.path().join("x.pce.tmp").exists());
        assert!(dir.path().join("notes.txt").exists());
        assert!(dir.path().join("other.tmp").exists());
        assert_eq!(tier.usage().0, 1);
    }

    #[test]
    fn the_least_recently_used_go_first_past_max_size() {
        let dir = tempfile::tempdir().unwrap();
        let (_, one) = record("https://h/0", "t", 1000);
        let tier = DiskTier::open(dir.path(), one.len() as u64 * 3).unwrap();
        for k in ["https://h/1", "https://h/2", "https://h/3"] {
            let (tags, r) = record(k, "t", 1000);
            tier.save(k, tags, &r);
        }
        tier.load("https://h/1");
        let (tags, r) = record("https://h/4", "t", 1000);
        tier.save("https://h/4", tags, &r);
        assert!(tier.load("https://h/1").is_some());
        assert!(tier.load("https://h/2").is_none(), "least recently used");
        assert!(tier.load("https://h/4").is_some());
        assert!(tier.usage().1 <= one.len() as u64 * 3);
    }

    #[test]
    fn purges_by_selector() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::open(dir.path(), 1 << 20).unwrap();
        for (k, t) in [
            ("https://a/x/1", "red"),
            ("https://a/y", "blue"),
            ("https://b/x/2", "red"),
        ] {
            let (tags, r) = record(k, t, 10);
            tier.save(k, tags, &r);
        }
        assert_eq!(tier.purge(&Purge::Tag("red".into())), 2);
        assert_eq!(tier.purge(&Purge::Host("A".into())), 1);
        assert_eq!(tier.usage(), (0, 0));
    }
}
