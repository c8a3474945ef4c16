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

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use kraken_core::Digest;
use kraken_oci::TaggedName;
use serde::{Deserialize, Serialize};

const REPOSITORIES: &str = "repositories";
const TAGS: &str = "_tags";

/// What is stored for a tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: Digest,
    /// The tag was put with `replicate`: remotes whose rules match it should receive it.
    #[serde(default)]
    pub replicate: bool,
    /// When the tag was last written, milliseconds since the Unix epoch.
    #[serde(default)]
    pub updated_unix_ms: u64,
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

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TagStoreError {
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

    /// Writes a tag durably, then makes it visible.
    pub async fn put(&self, name: &TaggedName, record: TagRecord) -> Result<(), TagStoreError> {
        let key = name.to_string();
        let body = serde_json::to_vec(&record)
            .map_err(|error| TagStoreError::Encode(key.clone(), error))?;
        let dir = self.root.join(name.repository.as_str()).join(TAGS);
        let tag = name.tag.as_str().to_owned();
        // Held across the file write and the index update, so the two always agree on which
        // of two racing writes came last.
        let _writer = self.writer.lock().await;
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

    fn record(seed: &str) -> TagRecord {
        TagRecord {
            digest: Digest::of(seed.as_bytes()),
            replicate: false,
            updated_unix_ms: 1,
        }
    }

    #[tokio::test]
    async fn tags_survive_a_reopen_and_rewrites_replace_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::open(dir.path()).await.unwrap();
        store.put(&name("a:1"), record("x")).await.unwrap();
        store.put(&name("a/b:1"), record("y")).await.unwrap();
        store.put(&name("a:1"), record("z")).await.unwrap();
        assert_eq!(store.get(&name("a:1")), Some(record("z")));
        // Leftovers of an interrupted write and junk are ignored on open.
        let tags = dir.path().join("repositories/a/_tags");
        fs::write(tags.join(".1.0000.tmp"), b"partial").unwrap();
        fs::write(tags.join("bad"), b"not json").unwrap();
        let reopened = TagStore::open(dir.path()).await.unwrap();
        assert_eq!(reopened.get(&name("a:1")), Some(record("z")));
        assert_eq!(reopened.get(&name("a/b:1")), Some(record("y")));
        assert_eq!(reopened.get(&name("a:bad")), None);
        assert_eq!(reopened.len(), 2);
        assert!(!tags.join(".1.0000.tmp").exists());
    }

    #[tokio::test]
    async fn pages_follow_lexical_order_within_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::open(dir.path()).await.unwrap();
        for tag in ["app:1", "app:2", "app:3", "app/x:1", "apple:1", "b:1"] {
            store.put(&name(tag), record(tag)).await.unwrap();
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
}
