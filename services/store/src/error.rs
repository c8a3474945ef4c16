//! The one error type of every store operation.

use std::io;
use std::path::PathBuf;

use kraken_core::{Digest, MetaInfoError, PieceError};

use crate::{DownloadState, UploadId};

pub(crate) type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Why a store operation failed. I/O variants name the operation and the path, so a log line
/// alone tells an operator which file to look at.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob {0} is not in the store")]
    NotFound(Digest),
    #[error("blob {0} is already in the store")]
    AlreadyExists(Digest),
    #[error(
        "no room for blob {digest} ({needed} bytes) on the store's disk: {available} bytes are \
         free after evicting every blob that could go, other downloads in progress hold \
         {reserved} more, and {unevictable} bytes of stored blobs are pinned (not yet written \
         back) or in use"
    )]
    NoSpace {
        digest: Digest,
        needed: u64,
        available: u64,
        reserved: u64,
        unevictable: u64,
    },
    #[error("content does not match its digest: expected {expected}, computed {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error(
        "upload {0} does not exist: it was never created, or was committed, aborted or cleaned up"
    )]
    UploadNotFound(UploadId),
    #[error(
        "upload {upload} holds {expected} bytes, so the next chunk must start at offset \
         {expected}, not {got}"
    )]
    WrongOffset {
        upload: UploadId,
        expected: u64,
        got: u64,
    },
    #[error(transparent)]
    Piece(#[from] PieceError),
    #[error("piece {index} of {digest} has not been downloaded yet")]
    PieceNotHeld { digest: Digest, index: u32 },
    #[error("download of {digest} is {state} and accepts no more operations")]
    DownloadClosed {
        digest: Digest,
        state: DownloadState,
    },
    #[error("download of {digest} still misses {missing} of {total} pieces")]
    DownloadIncomplete {
        digest: Digest,
        missing: u32,
        total: u32,
    },
    #[error("a download of {digest} is already in progress with different metainfo")]
    MetaInfoConflict { digest: Digest },
    #[error("metainfo does not describe blob {digest}: {reason}")]
    MetaInfoMismatch { digest: Digest, reason: String },
    #[error("range of {len} bytes at offset {offset} lies outside blob {digest} of {size} bytes")]
    RangeOutOfBounds {
        digest: Digest,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("cannot read the content being stored")]
    Source(#[source] io::Error),
    #[error("cannot build metainfo")]
    MetaInfo(#[from] MetaInfoError),
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot rename {} to {}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("metadata file {} is not valid", path.display())]
    CorruptMetadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("a store task stopped before finishing")]
    TaskFailed(#[source] tokio::task::JoinError),
}

impl StoreError {
    /// Builds the `map_err` closure for an I/O operation on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }

    /// Whether the store's disk (or the user's quota on it) is full: the caller should hear
    /// "no space", not "internal error", and may retry elsewhere or later.
    pub fn is_storage_full(&self) -> bool {
        match self {
            Self::NoSpace { .. } => true,
            Self::Io { source, .. } | Self::Rename { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }

    /// Whether the error means a file or blob is absent (as opposed to unreadable).
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::NotFound(_) | Self::UploadNotFound(_) => true,
            Self::Io { source, .. } | Self::Rename { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
            }
            _ => false,
        }
    }
}
