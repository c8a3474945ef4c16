//! The small JSON file kept next to each blob, and the fsync discipline around it.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use kraken_core::{Digest, MetaInfo};
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::error::Result;

/// Bumped if the format changes incompatibly. Unknown fields are ignored rather than refused so
/// an older binary does not throw away a newer one's cache.
const META_VERSION: u32 = 1;

/// A real metadata file is a few hundred KiB at most (metainfo of a huge blob); reading more
/// means the file is garbage, and refusing it keeps a corrupt file from exhausting memory.
const MAX_META_BYTES: u64 = 16 << 20;

/// Contents of a blob's `meta` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BlobMeta {
    pub(crate) version: u32,
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    /// Pinned: not yet written back to storage, so never evicted or cleaned up.
    pub(crate) persist: bool,
    /// Persisted coarsely (see `BlobStore::flush_access_times`); the in-memory index is exact.
    pub(crate) last_access_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) metainfo: Option<MetaInfo>,
}

impl BlobMeta {
    pub(crate) fn new(
        digest: Digest,
        size: u64,
        persist: bool,
        last_access: SystemTime,
        metainfo: Option<MetaInfo>,
    ) -> Self {
        Self {
            version: META_VERSION,
            digest,
            size,
            persist,
            last_access_unix_ms: unix_ms(last_access),
            metainfo,
        }
    }

    pub(crate) fn last_access(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.last_access_unix_ms)
    }

    pub(crate) fn set_last_access(&mut self, at: SystemTime) {
        self.last_access_unix_ms = unix_ms(at);
    }

    /// Reads and parses a metadata file. Blocking.
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(StoreError::io("open metadata file", path))?;
        let mut text = Vec::new();
        file.take(MAX_META_BYTES)
            .read_to_end(&mut text)
            .map_err(StoreError::io("read metadata file", path))?;
        serde_json::from_slice(&text).map_err(|source| StoreError::CorruptMetadata {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the file at `path` (replacing any previous one in place) and fsyncs it. Only for
    /// staging directories, which nobody reads until they are renamed into the cache. Blocking.
    pub(crate) fn write_new(&self, path: &Path) -> Result<()> {
        let text = self.encode(path)?;
        let mut file = crate::layout::file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(StoreError::io("create metadata file", path))?;
        file.write_all(&text)
            .map_err(StoreError::io("write metadata file", path))?;
        file.sync_all()
            .map_err(StoreError::io("fsync metadata file", path))
    }

    /// Atomically replaces the metadata of a committed entry: write a temp file, fsync, rename
    /// over the old one, fsync the directory. A reader sees the old file or the new one, never a
    /// torn write. Blocking.
    pub(crate) fn replace(&self, entry_dir: &Path, temp: &Path) -> Result<()> {
        self.write_new(temp)?;
        let target = entry_dir.join(crate::layout::META_FILE);
        if let Err(source) = fs::rename(temp, &target) {
            let _ = fs::remove_file(temp);
            return Err(StoreError::Rename {
                from: temp.to_path_buf(),
                to: target,
                source,
            });
        }
        sync_dir(entry_dir)
    }

    fn encode(&self, path: &Path) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| StoreError::CorruptMetadata {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Makes a directory's entries (files created, renamed in or out) durable. Blocking.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(StoreError::io("fsync directory", path))
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let metainfo =
            MetaInfo::generate(&b"hello"[..], 2, kraken_core::PieceHashAlgorithm::Blake3).unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_234_567);
        let meta = BlobMeta::new(*metainfo.digest(), 5, true, at, Some(metainfo.clone()));
        let path = dir.path().join("meta");
        meta.write_new(&path).unwrap();
        let read = BlobMeta::read(&path).unwrap();
        assert_eq!(read.metainfo, Some(metainfo));
        assert_eq!(read.last_access(), at);
        assert!(read.persist);

        let mut changed = read;
        changed.persist = false;
        changed
            .replace(dir.path(), &dir.path().join("tmp"))
            .unwrap();
        assert!(!BlobMeta::read(&path).unwrap().persist);
        assert!(!dir.path().join("tmp").exists());
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        fs::write(&path, b"\x00\xffnot json").unwrap();
        assert!(matches!(
            BlobMeta::read(&path),
            Err(StoreError::CorruptMetadata { .. })
        ));
        assert!(
            BlobMeta::read(&dir.path().join("missing"))
                .unwrap_err()
                .is_not_found()
        );
    }
}
