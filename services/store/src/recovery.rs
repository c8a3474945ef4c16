//! Start-up: create the directories, throw away what a previous run left half-done, and rebuild
//! the index from the cache, dropping any entry that is not provably whole.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use kraken_core::{Digest, error_chain};

use crate::StoreError;
use crate::error::Result;
use crate::layout::{self, DATA_FILE, Layout, META_FILE};
use crate::meta::BlobMeta;

/// A cache entry that survived the start-up checks.
#[derive(Debug, Clone)]
pub(crate) struct RecoveredBlob {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) persist: bool,
    pub(crate) last_access: SystemTime,
}

/// Prepares the directory tree and returns the usable cache entries, least recently used first.
/// Blocking.
pub(crate) fn recover(layout: &Layout) -> Result<Vec<RecoveredBlob>> {
    for dir in [
        &layout.root,
        &layout.cache,
        &layout.uploads,
        &layout.downloads,
        &layout.tmp,
    ] {
        layout::create_dir_all(dir).map_err(StoreError::io("create directory", dir))?;
    }
    // Staging never survives a restart: an upload's client is gone with its connection, and an
    // agent re-requests the blob (its pieces come back from peers fast).
    clear_dir(&layout.uploads, "upload")?;
    clear_dir(&layout.downloads, "download")?;
    clear_dir(&layout.tmp, "temporary file")?;
    let mut blobs = scan_cache(&layout.cache)?;
    blobs.sort_by_key(|blob| blob.last_access);
    Ok(blobs)
}

fn clear_dir(dir: &Path, what: &str) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(StoreError::io("list directory", dir))? {
        let entry = entry.map_err(StoreError::io("list directory", dir))?;
        let path = entry.path();
        tracing::warn!(path = %path.display(), "removing leftover {what} from a previous run");
        remove_path(&path);
    }
    Ok(())
}

fn scan_cache(cache: &Path) -> Result<Vec<RecoveredBlob>> {
    let mut blobs = Vec::new();
    for first in fs::read_dir(cache).map_err(StoreError::io("list directory", cache))? {
        let first = first.map_err(StoreError::io("list directory", cache))?;
        let first_path = first.path();
        let Some(first_name) = shard_name(&first_path, &first.file_name()) else {
            continue;
        };
        for second in list_or_warn(&first_path) {
            let second_path = second.path();
            let Some(second_name) = shard_name(&second_path, &second.file_name()) else {
                continue;
            };
            for entry in list_or_warn(&second_path) {
                let path = entry.path();
                match load_entry(&path, &entry.file_name(), &first_name, &second_name) {
                    Ok(blob) => blobs.push(blob),
                    Err(reason) => {
                        tracing::warn!(path = %path.display(), %reason, "removing unusable cache entry");
                        remove_path(&path);
                    }
                }
            }
        }
    }
    Ok(blobs)
}

/// The name of a shard directory (two lowercase hex characters), or `None` after removing
/// whatever else sits at that level.
fn shard_name(path: &Path, name: &OsStr) -> Option<String> {
    let valid = name
        .to_str()
        .filter(|name| {
            name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
        .filter(|_| path.is_dir());
    if valid.is_none() {
        tracing::warn!(path = %path.display(), "removing unexpected file in the cache");
        remove_path(path);
    }
    valid.map(str::to_owned)
}

/// Lists a directory inside the cache. An unreadable one is skipped, not removed: the cause may
/// be permissions an operator can fix, and the blobs in it may be fine.
fn list_or_warn(dir: &Path) -> Vec<fs::DirEntry> {
    match fs::read_dir(dir).and_then(|entries| entries.collect::<io::Result<Vec<_>>>()) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(path = %dir.display(), error = %error, "skipping unreadable cache directory");
            Vec::new()
        }
    }
}

/// Checks one `cache/<aa>/<bb>/<hex>` entry; the error is the reason it is unusable.
fn load_entry(
    dir: &Path,
    name: &OsStr,
    first: &str,
    second: &str,
) -> Result<RecoveredBlob, String> {
    let hex = name.to_str().ok_or("its name is not valid UTF-8")?;
    let digest = Digest::from_hex(hex).map_err(|e| format!("its name is not a digest: {e}"))?;
    if hex.get(..2) != Some(first) || hex.get(2..4) != Some(second) {
        return Err(format!(
            "it sits in shard {first}/{second}, which does not match its digest"
        ));
    }
    if !dir.is_dir() {
        return Err("it is not a directory".into());
    }
    let meta = BlobMeta::read(&dir.join(META_FILE)).map_err(|e| error_chain(&e))?;
    if meta.digest != digest {
        return Err(format!("its metadata names another blob, {}", meta.digest));
    }
    if let Some(metainfo) = &meta.metainfo
        && (*metainfo.digest() != digest || metainfo.length() != meta.size)
    {
        return Err("its metainfo describes another blob".into());
    }
    let data = dir.join(DATA_FILE);
    let data_meta = fs::metadata(&data).map_err(|e| format!("its data is unusable: {e}"))?;
    if !data_meta.is_file() || data_meta.len() != meta.size {
        return Err(format!(
            "its data holds {} bytes, its metadata says {}",
            data_meta.len(),
            meta.size
        ));
    }
    // Nothing else belongs in an entry; remove strays (they cannot be part of the blob).
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name != DATA_FILE && name != META_FILE {
                tracing::warn!(path = %entry.path().display(), "removing unexpected file in a cache entry");
                remove_path(&entry.path());
            }
        }
    }
    Ok(RecoveredBlob {
        digest,
        size: meta.size,
        persist: meta.persist,
        last_access: meta.last_access(),
    })
}

/// Removes a file or directory tree, logging instead of failing: start-up and cleanup carry on
/// with whatever could not be removed.
pub(crate) fn remove_path(path: &Path) {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    };
    if let Err(error) = result {
        tracing::warn!(path = %path.display(), error = %error, "cannot remove");
    }
}
