//! An open committed blob.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use kraken_core::Digest;
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use crate::StoreError;
use crate::error::Result;
use crate::store::blocking;

/// Chunk size of [`BlobReader::into_stream`]: large enough for few syscalls, small enough that a
/// thousand concurrent streams stay within a few hundred MiB.
const STREAM_CHUNK: usize = 256 << 10;

/// A committed blob held open. It keeps working if the blob is evicted or deleted meanwhile: the
/// open file outlives its directory entry (unix unlink semantics), so a reader that started
/// always finishes with the complete, verified content.
#[derive(Debug)]
pub struct BlobReader {
    digest: Digest,
    size: u64,
    path: PathBuf,
    file: File,
}

impl BlobReader {
    pub(crate) fn new(digest: Digest, size: u64, path: PathBuf, file: File) -> Self {
        Self {
            digest,
            size,
            path,
            file,
        }
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Blob length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The open file, for zero-copy paths (`sendfile`, `splice`).
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn into_file(self) -> File {
        self.file
    }

    /// Reads `len` bytes at `offset` on a blocking thread. The whole range is held in memory:
    /// use it for pieces and small ranges, [`into_stream`](Self::into_stream) for the rest.
    pub async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes> {
        self.check_range(offset, len)?;
        let file = self
            .file
            .try_clone()
            .map_err(StoreError::io("duplicate", &self.path))?;
        let path = self.path.clone();
        blocking(move || read_exact_at(&file, &path, offset, len)).await
    }

    /// Streams `len` bytes from `offset` in bounded chunks, so a blob of any size passes through
    /// in constant memory.
    pub fn into_stream(
        self,
        offset: u64,
        len: u64,
    ) -> Result<impl Stream<Item = io::Result<Bytes>> + Send + 'static> {
        self.check_range(offset, len)?;
        let mut file = self.file;
        // Seeking a regular file only moves the descriptor's offset: no disk I/O, so it is fine
        // on the async thread.
        file.seek(SeekFrom::Start(offset))
            .map_err(StoreError::io("seek", &self.path))?;
        let reader = tokio::fs::File::from_std(file).take(len);
        Ok(ReaderStream::with_capacity(reader, STREAM_CHUNK))
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(StoreError::RangeOutOfBounds {
                digest: self.digest,
                offset,
                len,
                size: self.size,
            }),
        }
    }
}

/// Reads exactly `len` bytes at `offset`. Blocking.
pub(crate) fn read_exact_at(
    file: &File,
    path: &std::path::Path,
    offset: u64,
    len: u64,
) -> Result<Bytes> {
    let len = usize::try_from(len).map_err(|_| StoreError::Io {
        op: "read (range too large for memory)",
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::OutOfMemory),
    })?;
    let mut buf = BytesMut::zeroed(len);
    file.read_exact_at(&mut buf, offset)
        .map_err(StoreError::io("read", path))?;
    Ok(buf.freeze())
}
