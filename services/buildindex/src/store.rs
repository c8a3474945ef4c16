//! Tags on local disk, with an in-memory index in front.
//!
//! Layout: `<dir>/repositories/<repository>/_tags/<tag>`, one small JSON file per tag. `_tags`
//! cannot be a repository path component (components start with a letter or digit), so a tag
//! of `a` never collides with the repository `a/b`. A write goes to a hidden temporary file
//! (tags never start with `.`), is fsynced, renamed over the tag and the directory fsynced:
//! a reader or a restart sees the old record or the new one, never a torn one.
//!
//! The whole index is loaded at start and every read is served from memory; a write updates
//! the disk first and the index right after, under one writer lock, so a re-pointed tag is
//! visible to the next read at once (Kraken's nginx cache kept it stale for minutes).
//!
//! Every record has a version (milliseconds of the original push), compared under that same
//! lock: a write older than the stored record changes nothing ([`PutOutcome::Superseded`]), so
//! racing writes, late replicated ones and restores from the backend can never move a tag back.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use kraken_core::Digest;
use kraken_oci::TaggedName;
use serde::{Deserialize, Serialize};

const REPOSITORIES: &str = "repositories";
const TAGS: &str = "_tags";

/// What is stored for a tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredTagRecord")]
pub struct TagRecord {
    pub digest: Digest,
    /// The tag was put with `replicate`: remotes whose rules match it should receive it.
    pub replicate: bool,
    /// When the tag was last written here, milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
    /// Milliseconds since the Unix epoch of the push that set this digest, assigned by the
    /// first cluster's build-index and kept by replicas; the newer version wins. 0: unknown
    /// (a backend record from before versions), older than any other.
    pub version: u64,
}

/// Whether the outcome of a write is a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// The record was written; it is the tag's record now.
    Stored(TagRecord),
    /// The stored record is newer than the one offered, which was dropped: this is the
    /// stored one.
    Superseded(TagRecord),
}

impl PutOutcome {
    /// The tag's record after the write, whichever won.
    pub fn record(&self) -> &TagRecord {
        match self {
            Self::Stored(record) | Self::Superseded(record) => record,
        }
    }
}

impl TagRecord {
    /// Whether this record may replace `current`: a newer version, or (the same version on
    /// two clusters that each assigned it) the larger digest, so every cluster picks the same.
    pub fn supersedes(&self, current: &TagRecord) -> bool {
        (self.version, self.digest.hex()) >= (current.version, current.digest.hex())
    }
}

/// A record as written on disk: files from before versions have none, and take the time they
/// were written as their version.
#[derive(Deserialize)]
struct StoredTagRecord {
    digest: Digest,
    #[serde(default)]
    replicate: bool,
    #[serde(default)]
    updated_unix_ms: u64,
    version: Option<u64>,
}

impl From<StoredTagRecord> for TagRecord {
    fn from(stored: StoredTagRecord) -> Self {
        Self {
            digest: stored.digest,
            replicate: stored.replicate,
            updated_unix_ms: stored.updated_unix_ms,
            version: stored.version.unwrap_or(stored.updated_unix_ms),
        }
    }
}

/// Why the tag store failed.
#[derive(Debug, thiserror::Error)]
pub enum TagStoreError {
    #[error("{operation} {}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("encoding the record of {0}")]
    Encode(String, #[source] serde_json::Error),
    #[error("the tag store's file task failed")]
    Task(#[source] tokio::task::JoinError),
}

pub(crate) fn io_error(
    operation: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> TagStoreError {
    let path = path.to_owned();
    move |source| TagStoreError::Io {
        operation,
        path,
        source,
    }
}

/// The tag store. Cheap to clone; clones share the index.
#[derive(Debug, Clone)]
pub struct TagStore {
    root: PathBuf,
    index: Arc<RwLock<BTreeMap<String, TagRecord>>>,
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl TagStore {
    /// Opens (or creates) the store under `dir` and loads every tag. Files that are not valid
    /// records are skipped with a warning, and temporary files of interrupted writes removed.
    pub async fn open(dir: &Path) -> Result<Self, TagStoreError> {
        let root = dir.join(REPOSITORIES);
        let scan_root = root.clone();
        let index = tokio::task::spawn_blocking(move || {
            fs::create_dir_all(&scan_root).map_err(io_error("create", &scan_root))?;
            let mut index = BTreeMap::new();
            load_dir(&scan_root, "", &mut index)?;
            Ok::<_, TagStoreError>(index)
        })
        .await
        .map_err(TagStoreError::Task)??;
        tracing::info!(dir = %dir.display(), tags = index.len(), "tag store opened");
        Ok(Self {
            root,
            index: Arc::new(RwLock::new(index)),
            writer: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    pub fn get(&self, name: &TaggedName) -> Option<TagRecord> {
        self.read().get(&name.to_string()).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Points `name` at `digest` with a new version, newer than any the tag had
    /// (`max(now, previous + 1)`, assigned under the writer lock so racing writes get
    /// increasing versions and the last one stays), durably, then visibly. Returns the record.
    pub async fn put(
        &self,
        name: &TaggedName,
        digest: Digest,
        replicate: bool,
    ) -> Result<TagRecord, TagStoreError> {
        let _writer = self.writer.lock().await;
        let record = TagRecord {
            digest,
            replicate,
            updated_unix_ms: now_ms(),
            version: self.next_version(name),
        };
        self.write_locked(name, record.clone()).await?;
        Ok(record)
    }

    /// Writes `record` unless the stored record supersedes it ([`TagRecord::supersedes`]):
    /// for versions assigned elsewhere (a replicated put, a restore from the backend).
    pub async fn put_versioned(
        &self,
        name: &TaggedName,
        record: TagRecord,
    ) -> Result<PutOutcome, TagStoreError> {
        let _writer = self.writer.lock().await;
        if let Some(current) = self.get(name)
            && !record.supersedes(&current)
        {
            return Ok(PutOutcome::Superseded(current));
        }
        self.write_locked(name, record.clone()).await?;
        Ok(PutOutcome::Stored(record))
    }

    /// The version a new write of `name` would get now: later than the stored one, and not
    /// before the clock.
    pub fn next_version(&self, name: &TaggedName) -> u64 {
        let previous = self.get(name).map_or(0, |record| record.version);
        now_ms().max(previous.saturating_add(1))
    }

    /// Writes the tag's file, then the index. The caller holds the writer lock: held across
    /// both, so they always agree on which of two racing writes came last.
    async fn write_locked(
        &self,
        name: &TaggedName,
        record: TagRecord,
    ) -> Result<(), TagStoreError> {
        let key = name.to_string();
        let body = serde_json::to_vec(&record)
            .map_err(|error| TagStoreError::Encode(key.clone(), error))?;
        let dir = self.root.join(name.repository.as_str()).join(TAGS);
        let tag = name.tag.as_str().to_owned();
        tokio::task::spawn_blocking(move || write_atomically(&dir, &tag, &body))
            .await
            .map_err(TagStoreError::Task)??;
        kraken_core::sync::write(&self.index).insert(key, record);
        Ok(())
    }

    /// Up to `limit` tags whose full name starts with `prefix`, in lexical order, after
    /// `after` (exclusive) if given. The flag says whether more follow.
    pub fn page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(String, TagRecord)>, bool) {
        let index = self.read();
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        let mut page: Vec<(String, TagRecord)> = index
            .range((start, Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .take(limit.saturating_add(1))
            .map(|(name, record)| (name.clone(), record.clone()))
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, TagRecord>> {
        // The index is only ever replaced entry by entry: a panic elsewhere cannot leave it
        // half-updated, so a poisoned lock is safe to keep using.
        kraken_core::sync::read(&self.index)
    }
}

/// Loads the tags under `dir` (the repository `relative`) and recurses. Blocking.
fn load_dir(
    dir: &Path,
    relative: &str,
    index: &mut BTreeMap<String, TagRecord>,
) -> Result<(), TagStoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_error("list", dir)(error)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error("list", dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if name == TAGS {
            load_tags(&entry.path(), relative, index)?;
            continue;
        }
        let child = if relative.is_empty() {
            name
        } else {
            format!("{relative}/{name}")
        };
        load_dir(&entry.path(), &child, index)?;
    }
    Ok(())
}

fn load_tags(
    dir: &Path,
    repository: &str,
    index: &mut BTreeMap<String, TagRecord>,
) -> Result<(), TagStoreError> {
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let path = entry.path();
        let Ok(tag) = entry.file_name().into_string() else {
            continue;
        };
        if tag.starts_with('.') {
            // A write interrupted before its rename: the old record (if any) still stands.
            let _ = fs::remove_file(&path);
            continue;
        }
        let key = format!("{repository}:{tag}");
        if key.parse::<TaggedName>().is_err() {
            tracing::warn!(path = %path.display(), "not a valid repository:tag; skipped");
            continue;
        }
        let record = fs::read(&path)
            .map_err(io_error("read", &path))
            .and_then(|bytes| {
                serde_json::from_slice::<TagRecord>(&bytes)
                    .map_err(|error| TagStoreError::Encode(key.clone(), error))
            });
        match record {
            Ok(record) => {
                index.insert(key, record);
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "unreadable tag record; skipped");
            }
        }
    }
    Ok(())
}

/// Milliseconds since the Unix epoch (0 for a clock before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Replaces `dir/name` with `body`, atomically and durably. Blocking.
pub(crate) fn write_atomically(dir: &Path, name: &str, body: &[u8]) -> Result<(), TagStoreError> {
    fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    let temp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let path = dir.join(name);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io_error("create", &temp))?;
        file.write_all(body).map_err(io_error("write", &temp))?;
        file.sync_all().map_err(io_error("fsync", &temp))?;
        fs::rename(&temp, &path).map_err(io_error("rename into place", &path))?;
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error("fsync", dir))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> TaggedName {
        text.parse().unwrap()
    }

    fn digest(seed: &str) -> Digest {
        Digest::of(seed.as_bytes())
    }

    fn versioned(seed: &str, version: u64) -> TagRecord {
        TagRecord {
            digest: digest(seed),
            replicate: false,
            updated_unix_ms: 1,
            version,
        }
    }

    #[tokio::test]
    async fn tags_survive_a_reopen_and_rewrites_replace_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::open(dir.path()).await.unwrap();
        store.put(&name("a:1"), digest("x"), false).await.unwrap();
        let y = store.put(&name("a/b:1"), digest("y"), false).await.unwrap();
        let z = store.put(&name("a:1"), digest("z"), true).await.unwrap();
        assert_eq!(store.get(&name("a:1")), Some(z.clone()));
        // Leftovers of an interrupted write and junk are ignored on open.
        let tags = dir.path().join("repositories/a/_tags");
        fs::write(tags.join(".1.0000.tmp"), b"partial").unwrap();
        fs::write(tags.join("bad"), b"not json").unwrap();
        let reopened = TagStore::open(dir.path()).await.unwrap();
        assert_eq!(reopened.get(&name("a:1")), Some(z));
        assert_eq!(reopened.get(&name("a/b:1")), Some(y));
        assert_eq!(reopened.get(&name("a:bad")), None);
        assert_eq!(reopened.len(), 2);
        assert!(!tags.join(".1.0000.tmp").exists());
    }

    #[tokio::test]
    async fn pages_follow_lexical_order_within_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::open(dir.path()).await.unwrap();
        for tag in ["app:1", "app:2", "app:3", "app/x:1", "apple:1", "b:1"] {
            store.put(&name(tag), digest(tag), false).await.unwrap();
        }
        let names = |page: Vec<(String, TagRecord)>| -> Vec<String> {
            page.into_iter().map(|(n, _)| n).collect()
        };
        let (first, more) = store.page("app:", None, 2);
        assert_eq!(names(first), ["app:1", "app:2"]);
        assert!(more);
        let (second, more) = store.page("app:", Some("app:2"), 2);
        assert_eq!(names(second), ["app:3"]);
        assert!(!more);
        let (all, _) = store.page("app", None, 100);
        assert_eq!(
            names(all),
            ["app/x:1", "app:1", "app:2", "app:3", "apple:1"]
        );
        // A token before the prefix starts at the prefix.
        let (from_prefix, _) = store.page("b", Some("a"), 10);
        assert_eq!(names(from_prefix), ["b:1"]);
    }

    #[tokio::test]
    async fn an_older_replicated_put_is_superseded_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::open(dir.path()).await.unwrap();
        let tag = name("app:1");
        let newer = versioned("new", 2_000);
        assert_eq!(
            store.put_versioned(&tag, newer.clone()).await.unwrap(),
            PutOutcome::Stored(newer.clone())
        );
        let file = dir.path().join("repositories/app/_tags/1");
        let on_disk = fs::read(&file).unwrap();
        let outcome = store
            .put_versioned(&tag, versioned("old", 1_999))
            .await
            .unwrap();
        assert_eq!(outcome, PutOutcome::Superseded(newer.clone()));
        assert_eq!(store.get(&tag), Some(newer.clone()));
        assert_eq!(fs::read(&file).unwrap(), on_disk, "the file is untouched");
        // The same version from two clusters: the larger digest wins, wherever it arrives
        // first, so both clusters end on the same digest.
        let (small, large) = {
            let (a, b) = (versioned("a", 2_000), versioned("b", 2_000));
            if a.digest.hex() < b.digest.hex() {
                (a, b)
            } else {
                (b, a)
            }
        };
        let larger_first = TagStore::open(&dir.path().join("other")).await.unwrap();
        larger_first
            .put_versioned(&tag, large.clone())
            .await
            .unwrap();
        let outcome = larger_first
            .put_versioned(&tag, small.clone())
            .await
            .unwrap();
        assert_eq!(outcome, PutOutcome::Superseded(large.clone()));
        store.put_versioned(&tag, small).await.unwrap();
        store.put_versioned(&tag, large.clone()).await.unwrap();
        assert_eq!(store.get(&tag), Some(large));
        // A local write after a replicated one is newer than it, whatever the clock says.
        let future = versioned("future", u64::MAX / 2);
        store.put_versioned(&tag, future).await.unwrap();
        let local = store.put(&tag, digest("local"), false).await.unwrap();
        assert_eq!(local.version, u64::MAX / 2 + 1);
        // The version survives a reopen.
        let reopened = TagStore::open(dir.path()).await.unwrap();
        assert_eq!(reopened.get(&tag), Some(local));
    }

    #[tokio::test]
    async fn concurrent_puts_of_one_tag_never_leave_an_older_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::open(dir.path()).await.unwrap();
        let tag = name("app:latest");
        // Local writes: each gets a version above every earlier one, and the stored record
        // is the write with the highest.
        let writes: Vec<_> = (0..32)
            .map(|i| {
                let (store, tag) = (store.clone(), tag.clone());
                tokio::spawn(async move { store.put(&tag, digest(&i.to_string()), false).await })
            })
            .collect();
        let mut records = Vec::new();
        for write in writes {
            records.push(write.await.unwrap().unwrap());
        }
        let mut versions: Vec<u64> = records.iter().map(|r| r.version).collect();
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(versions.len(), records.len(), "every write its own version");
        let newest = records.iter().max_by_key(|r| r.version).unwrap();
        assert_eq!(store.get(&tag).as_ref(), Some(newest));

        // Replicated writes arriving in any order: the highest version stays.
        let top = newest.version + 1_000;
        let writes: Vec<_> = (0..32u64)
            .rev()
            .map(|i| {
                let (store, tag) = (store.clone(), tag.clone());
                let record = versioned(&format!("r{i}"), top - i);
                tokio::spawn(async move { store.put_versioned(&tag, record).await })
            })
            .collect();
        for write in writes {
            write.await.unwrap().unwrap();
        }
        assert_eq!(store.get(&tag), Some(versioned("r0", top)));
        let reopened = TagStore::open(dir.path()).await.unwrap();
        assert_eq!(reopened.get(&tag), Some(versioned("r0", top)));
    }

    #[test]
    fn a_record_from_before_versions_takes_its_write_time() {
        let old = format!(
            r#"{{"digest":"{}","replicate":true,"updated_unix_ms":1234}}"#,
            digest("x")
        );
        let record: TagRecord = serde_json::from_str(&old).unwrap();
        assert_eq!(record.version, 1234);
        // Version 0 written explicitly (a restore of an unversioned backend record) stays 0.
        let restored = serde_json::to_string(&versioned("x", 0)).unwrap();
        let record: TagRecord = serde_json::from_str(&restored).unwrap();
        assert_eq!(record.version, 0);
    }
}
