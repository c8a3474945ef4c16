//! Where each kind of file lives, and the ids of uploads (which travel in URLs).

use std::fmt;
use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use kraken_core::Digest;

/// Mode of every file the store creates: blobs are private to the service and its group (an
/// operator's tooling may read them), never world-readable.
pub(crate) const FILE_MODE: u32 = 0o640;
/// Mode of every directory the store creates.
pub(crate) const DIR_MODE: u32 = 0o750;

/// Options that create files with [`FILE_MODE`] (before the umask).
pub(crate) fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// `mkdir -p` with [`DIR_MODE`] for each directory it creates; existing ones are left as they
/// are. Blocking.
pub(crate) fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// `mkdir` with [`DIR_MODE`]. Blocking.
pub(crate) fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Identifies an upload in progress. Random (128 bits) so one client cannot guess and write into
/// another's upload; parsed strictly because it comes back from clients inside URLs and becomes
/// a directory name.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UploadId([u8; 16]);

/// Why a string from a client is not an upload id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an upload id: expected 32 lowercase hex characters")]
pub struct UploadIdError {
    input: String,
}

impl UploadId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl FromStr for UploadId {
    type Err = UploadIdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let well_formed = input.len() == 32
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let mut bytes = [0u8; 16];
        if !well_formed || hex::decode_to_slice(input, &mut bytes).is_err() {
            return Err(UploadIdError { input: clip(input) });
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadId({self})")
    }
}

/// Keeps hostile input from bloating error messages and logs.
fn clip(input: &str) -> String {
    input.chars().take(80).collect()
}

pub(crate) const DATA_FILE: &str = "data";
pub(crate) const META_FILE: &str = "meta";
/// One byte per piece (1 = verified and written) in a download's staging directory, so a piece
/// is recorded with a single one-byte write and no read-modify-write.
pub(crate) const PIECES_FILE: &str = "pieces";

/// The store's directories. Staging lives next to the cache on purpose: commit is a `rename`,
/// which is only atomic within one filesystem.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
    pub(crate) cache: PathBuf,
    pub(crate) uploads: PathBuf,
    pub(crate) downloads: PathBuf,
    pub(crate) tmp: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            cache: root.join("cache"),
            uploads: root.join("uploads"),
            downloads: root.join("downloads"),
            tmp: root.join("tmp"),
        }
    }

    /// `cache/<hex[0:2]>/<hex[2:4]>`: two levels of 256 keep every directory small even with
    /// millions of blobs.
    pub(crate) fn shard_dir(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.cache.join(&hex[..2]).join(&hex[2..4])
    }

    pub(crate) fn entry_dir(&self, digest: &Digest) -> PathBuf {
        self.shard_dir(digest).join(digest.hex())
    }

    pub(crate) fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.uploads.join(id.to_string())
    }

    pub(crate) fn download_dir(&self, digest: &Digest) -> PathBuf {
        self.downloads.join(digest.hex())
    }

    /// A fresh path under `tmp/`, for a metadata rewrite or an entry being removed.
    pub(crate) fn temp_path(&self) -> PathBuf {
        self.tmp.join(hex::encode(rand::random::<[u8; 16]>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_round_trip_and_reject_anything_else() {
        let id = UploadId::random();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<UploadId>().unwrap(), id);
        assert_ne!(UploadId::random(), id);
        for bad in [
            "",
            "../../etc/passwd",
            &text.to_uppercase(),
            &text[..31],
            &format!("{text}0"),
        ] {
            assert!(bad.parse::<UploadId>().is_err(), "{bad:?} was accepted");
        }
        let long = "x".repeat(10_000);
        assert!(long.parse::<UploadId>().unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn cache_entries_are_sharded_by_digest_prefix() {
        let layout = Layout::new(Path::new("/s"));
        let digest = Digest::of(b"x");
        let hex = digest.hex();
        assert_eq!(
            layout.entry_dir(&digest),
            PathBuf::from(format!("/s/cache/{}/{}/{hex}", &hex[..2], &hex[2..4]))
        );
    }
}
