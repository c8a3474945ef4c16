//! `store:` — the on-disk content-addressed blob store (origin, agent, proxy staging).

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Where blobs live on disk and how long they may stay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Root directory. `cache/` (committed blobs), `uploads/` and `downloads/` (staging) are
    /// created under it; staging must be on the same filesystem so commit is an atomic rename.
    pub dir: PathBuf,
    /// Upper bound on the bytes of committed blobs. Above it, the least recently used blobs that
    /// are not pinned (persist flag: not yet written back) are evicted. `0` means unlimited.
    #[serde(with = "crate::units::bytes")]
    pub capacity: ByteSize,
    /// Removal of committed blobs nobody has read for `tti`. Pinned blobs are never removed.
    pub cache_cleanup: CleanupConfig,
    /// Removal of abandoned uploads (no write for `tti`). The proxy does not use it: its upload
    /// sessions expire after `uploads.idle_timeout`.
    pub upload_cleanup: CleanupConfig,
    /// Removal of abandoned partial downloads (no piece written for `tti`).
    pub download_cleanup: CleanupConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/cache/kraken"),
            capacity: ByteSize(0),
            cache_cleanup: CleanupConfig::default(),
            upload_cleanup: CleanupConfig::default(),
            download_cleanup: CleanupConfig::default(),
        }
    }
}

/// A periodic sweep that removes entries idle for longer than `tti`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanupConfig {
    /// Whether the sweep runs at all.
    pub enable: bool,
    /// Time to idle: entries not accessed for this long are removed.
    #[serde(with = "humantime_serde")]
    pub tti: Duration,
    /// How often the sweep runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        Self {
            enable: true,
            tti: Duration::from_secs(6 * 3600),
            interval: Duration::from_secs(30 * 60),
        }
    }
}

impl crate::Validate for StoreConfig {
    fn validate(&self) -> Result<(), crate::ValidationError> {
        use crate::validate::{ensure, nested};
        ensure(
            !self.dir.as_os_str().is_empty(),
            "dir",
            "must be a directory path",
        )?;
        nested("cache_cleanup", &self.cache_cleanup)?;
        nested("upload_cleanup", &self.upload_cleanup)?;
        nested("download_cleanup", &self.download_cleanup)
    }
}

impl crate::Validate for CleanupConfig {
    fn validate(&self) -> Result<(), crate::ValidationError> {
        use crate::validate::positive_duration;
        // A zero TTI would delete every entry on the first sweep; a zero interval would spin.
        if self.enable {
            positive_duration("tti", self.tti)?;
            positive_duration("interval", self.interval)?;
        }
        Ok(())
    }
}
