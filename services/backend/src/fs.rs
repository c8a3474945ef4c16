//! `fs:` — blobs as files under a directory (local disk or a network mount), the storage of
//! development clusters and tests.
//!
//! Layout: `<root>/<namespace>/blobs/sha256/<hex[0:2]>/<hex>`. A blob is written to a hidden
//! temporary file next to its final name, fsynced, renamed into place and its directory
//! fsynced, so a reader sees the whole blob or nothing, even across a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use kraken_core::{Digest, Namespace};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{BackendBlob, BackendError, StoredBlob, UploadSource};

const KIND: &str = "fs";

/// A directory holding blobs by namespace; created on first upload.
#[derive(Debug, Clone)]
pub struct FsBackend {
    root: PathBuf,
}

impl FsBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives. Safe as a path: a validated namespace has no `..`, no leading `/`
    /// and no empty component.
    pub fn blob_path(&self, namespace: &Namespace, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.namespace_dir(namespace).join(&hex[..2]).join(hex)
    }

    fn namespace_dir(&self, namespace: &Namespace) -> PathBuf {
        self.root
            .join(namespace.as_str())
            .join("blobs")
            .join(Digest::ALGORITHM)
    }

    fn not_found(namespace: &Namespace, digest: &Digest) -> BackendError {
        BackendError::not_found(KIND, namespace, digest)
    }
}

#[async_trait]
impl super::Backend for FsBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn stat(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Option<u64>, BackendError> {
        let path = self.blob_path(namespace, digest);
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Ok(None),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error("stat", &path, error)),
        }
    }

    async fn upload(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        source: UploadSource,
        size: u64,
    ) -> Result<(), BackendError> {
        let path = self.blob_path(namespace, digest);
        let dir = parent(&path)?;
        let temp = dir.join(format!(
            ".{}.{:016x}.tmp",
            digest.hex(),
            rand::random::<u64>()
        ));
        let written = match source {
            UploadSource::File(file) => {
                let (dir, temp) = (dir.clone(), temp.clone());
                blocking(move || copy_file(file, &dir, &temp, size)).await
            }
            UploadSource::Reader(reader) => copy_reader(reader, &dir, &temp, size).await,
        };
        let published = match written {
            Ok(()) => {
                let (temp, path) = (temp.clone(), path.clone());
                blocking(move || publish(&temp, &path)).await
            }
            Err(error) => Err(error),
        };
        if published.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        published
    }

    async fn download(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<BackendBlob, BackendError> {
        let path = self.blob_path(namespace, digest);
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(Self::not_found(namespace, digest));
            }
            Err(error) => return Err(io_error("open", &path, error)),
        };
        let size = file
            .metadata()
            .await
            .map_err(|error| io_error("stat", &path, error))?
            .len();
        Ok(BackendBlob {
            size,
            reader: Box::pin(file),
        })
    }

    async fn list(&self, namespace_prefix: &str) -> Result<Vec<StoredBlob>, BackendError> {
        let root = self.root.clone();
        let prefix = namespace_prefix.to_owned();
        blocking(move || {
            let mut found = Vec::new();
            list_dir(&root, "", &prefix, &mut found)?;
            found.sort();
            Ok(found)
        })
        .await
    }
}

/// Collects the blobs of the namespace at `relative` (if any) and recurses into
/// subdirectories that may hold namespaces matching `prefix`. Blocking.
fn list_dir(
    dir: &Path,
    relative: &str,
    prefix: &str,
    found: &mut Vec<StoredBlob>,
) -> Result<(), BackendError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_error("list", dir, error)),
    };
    if relative.starts_with(prefix)
        && let Ok(namespace) = relative.parse::<Namespace>()
    {
        collect_blobs(
            &dir.join("blobs").join(Digest::ALGORITHM),
            &namespace,
            found,
        )?;
    }
    for entry in entries {
        let entry = entry.map_err(|error| io_error("list", dir, error))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let child = if relative.is_empty() {
            name
        } else {
            format!("{relative}/{name}")
        };
        // Only descend where a matching namespace can still be found.
        if child.starts_with(prefix) || prefix.starts_with(&child) {
            list_dir(&entry.path(), &child, prefix, found)?;
        }
    }
    Ok(())
}

/// The `<hex[0:2]>/<hex>` files under a namespace's `blobs/sha256`. Blocking.
fn collect_blobs(
    dir: &Path,
    namespace: &Namespace,
    found: &mut Vec<StoredBlob>,
) -> Result<(), BackendError> {
    let shards = match fs::read_dir(dir) {
        Ok(shards) => shards,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_error("list", dir, error)),
    };
    for shard in shards.flatten() {
        let Ok(blobs) = fs::read_dir(shard.path()) else {
            continue;
        };
        for blob in blobs.flatten() {
            let is_file = blob.file_type().is_ok_and(|t| t.is_file());
            let digest = blob
                .file_name()
                .to_str()
                .and_then(|name| Digest::from_hex(name).ok());
            if let (true, Some(digest)) = (is_file, digest) {
                found.push(StoredBlob {
                    namespace: Some(namespace.clone()),
                    digest,
                });
            }
        }
    }
    Ok(())
}

/// Copies exactly `size` bytes of `source` into a new `temp` file and makes it durable.
/// Blocking; on Linux `io::copy` between files runs in the kernel (`copy_file_range`).
fn copy_file(source: File, dir: &Path, temp: &Path, size: u64) -> Result<(), BackendError> {
    fs::create_dir_all(dir).map_err(|error| io_error("create directory", dir, error))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)
        .map_err(|error| io_error("create", temp, error))?;
    // One byte more than expected reveals a source longer than announced.
    let copied = io::copy(&mut source.take(size + 1), &mut out)
        .map_err(|error| io_error("write", temp, error))?;
    check_size(copied, size, temp)?;
    out.sync_all()
        .map_err(|error| io_error("fsync", temp, error))
}

async fn copy_reader(
    reader: std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>,
    dir: &Path,
    temp: &Path,
    size: u64,
) -> Result<(), BackendError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|error| io_error("create directory", dir, error))?;
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)
        .await
        .map_err(|error| io_error("create", temp, error))?;
    let copied = tokio::io::copy(&mut reader.take(size + 1), &mut out)
        .await
        .map_err(|error| io_error("write", temp, error))?;
    check_size(copied, size, temp)?;
    out.flush()
        .await
        .map_err(|error| io_error("write", temp, error))?;
    out.sync_all()
        .await
        .map_err(|error| io_error("fsync", temp, error))
}

fn check_size(copied: u64, size: u64, temp: &Path) -> Result<(), BackendError> {
    if copied == size {
        return Ok(());
    }
    let what = if copied > size { "more" } else { "fewer" };
    Err(BackendError::Other {
        backend: KIND,
        operation: format!("write {}", temp.display()),
        source: format!("the source holds {what} than the {size} bytes announced").into(),
    })
}

/// Renames the durable temporary file to its final name and makes the rename durable.
/// Blocking.
fn publish(temp: &Path, path: &Path) -> Result<(), BackendError> {
    fs::rename(temp, path).map_err(|error| io_error("rename into place", path, error))?;
    let dir = parent(path)?;
    File::open(&dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| io_error("fsync directory", &dir, error))
}

fn parent(path: &Path) -> Result<PathBuf, BackendError> {
    path.parent().map(Path::to_path_buf).ok_or_else(|| {
        io_error(
            "find directory of",
            path,
            io::Error::from(io::ErrorKind::InvalidInput),
        )
    })
}

fn io_error(operation: &str, path: &Path, error: io::Error) -> BackendError {
    BackendError::from_io(KIND, format!("{operation} {}", path.display()), error)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| BackendError::Other {
            backend: KIND,
            operation: "run file I/O".to_owned(),
            source: Box::new(error),
        })?
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, Write};

    use super::*;
    use crate::Backend;

    fn ns(text: &str) -> Namespace {
        text.parse().unwrap()
    }

    async fn read_all(blob: BackendBlob) -> Vec<u8> {
        let mut data = Vec::new();
        let mut reader = blob.reader;
        reader.read_to_end(&mut data).await.unwrap();
        data
    }

    #[tokio::test]
    async fn uploads_from_a_file_or_a_reader_and_downloads_them() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FsBackend::new(dir.path().join("root"));
        let (a, b) = (b"first blob".to_vec(), vec![7u8; 3 << 20]);
        let (da, db) = (Digest::of(&a), Digest::of(&b));
        let namespace = ns("library/ubuntu");
        assert_eq!(backend.stat(&namespace, &da).await.unwrap(), None);

        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&a).unwrap();
        file.rewind().unwrap();
        backend
            .upload(&namespace, &da, UploadSource::File(file), a.len() as u64)
            .await
            .unwrap();
        backend
            .upload(
                &namespace,
                &db,
                UploadSource::Reader(Box::pin(std::io::Cursor::new(b.clone()))),
                b.len() as u64,
            )
            .await
            .unwrap();

        let hex = da.hex();
        let expected = dir
            .path()
            .join("root/library/ubuntu/blobs/sha256")
            .join(&hex[..2])
            .join(&hex);
        assert_eq!(backend.blob_path(&namespace, &da), expected);
        assert_eq!(fs::read(&expected).unwrap(), a);
        assert_eq!(
            backend.stat(&namespace, &db).await.unwrap(),
            Some(b.len() as u64)
        );
        let blob = backend.download(&namespace, &db).await.unwrap();
        assert_eq!(blob.size, b.len() as u64);
        assert_eq!(read_all(blob).await, b);
        // Namespaces are separate.
        assert_eq!(backend.stat(&ns("other"), &da).await.unwrap(), None);
        assert!(matches!(
            backend.download(&ns("other"), &da).await,
            Err(BackendError::NotFound { .. })
        ));
        // No temporary file is left behind.
        let shard = expected.parent().unwrap();
        let names: Vec<_> = fs::read_dir(shard)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(hex)]);
    }

    #[tokio::test]
    async fn a_source_of_the_wrong_size_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FsBackend::new(dir.path());
        let data = b"twelve bytes".to_vec();
        let digest = Digest::of(&data);
        let namespace = ns("library/ubuntu");
        for announced in [5, 20] {
            let error = backend
                .upload(
                    &namespace,
                    &digest,
                    UploadSource::Reader(Box::pin(std::io::Cursor::new(data.clone()))),
                    announced,
                )
                .await
                .unwrap_err();
            assert!(matches!(error, BackendError::Other { .. }), "{error}");
        }
        assert_eq!(backend.stat(&namespace, &digest).await.unwrap(), None);
        let shard = backend.blob_path(&namespace, &digest);
        let left = fs::read_dir(shard.parent().unwrap()).unwrap().count();
        assert_eq!(left, 0, "temporary files are removed");
    }

    #[tokio::test]
    async fn lists_blobs_by_namespace_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FsBackend::new(dir.path());
        let mut all = Vec::new();
        for (namespace, content) in [
            ("library/ubuntu", "a"),
            ("library/debian", "b"),
            ("team", "c"),
        ] {
            let digest = Digest::of(content.as_bytes());
            backend
                .upload(
                    &ns(namespace),
                    &digest,
                    UploadSource::Reader(Box::pin(std::io::Cursor::new(content.as_bytes()))),
                    1,
                )
                .await
                .unwrap();
            all.push(StoredBlob {
                namespace: Some(ns(namespace)),
                digest,
            });
        }
        all.sort();
        assert_eq!(backend.list("").await.unwrap(), all);
        let library = backend.list("library/").await.unwrap();
        assert_eq!(library.len(), 2);
        assert!(library.iter().all(|b| {
            b.namespace
                .as_ref()
                .unwrap()
                .as_str()
                .starts_with("library/")
        }));
        assert!(backend.list("nothing").await.unwrap().is_empty());
        assert!(
            FsBackend::new(dir.path().join("missing"))
                .list("")
                .await
                .unwrap()
                .is_empty()
        );
    }
}
