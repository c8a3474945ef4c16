//! The origin's one error type, and its one mapping to gRPC status codes.

use std::sync::Arc;
use std::time::Duration;

use kraken_core::{Digest, Namespace, NamespaceError, WireError};
use kraken_proto::wire::{RETRY_AFTER_MS, UPLOAD_OFFSET};
use kraken_store::{StoreError, UploadIdError};
use kraken_transport::cluster::ClusterError;
use kraken_transport::grpc::GrpcError;
use kraken_transport::quic::TransportError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::metrics as m;
use kraken_backend::{BackendConfigError, BackendError, NoBackend};

/// What callers are told to wait when the backend is unavailable.
const BACKEND_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why an origin operation failed: a request (mapped to a gRPC status by the one
/// `From<OriginError> for Status`) or start-up.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The request is malformed (missing header, chunk after the end, …).
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("field `namespace`: {0}")]
    Namespace(#[from] NamespaceError),
    #[error("field `upload_id`: {0}")]
    UploadId(#[from] UploadIdError),
    #[error(
        "blob {digest} not found in namespace {namespace}: not on this origin nor in its backend"
    )]
    NotFound {
        namespace: Namespace,
        digest: Digest,
    },
    #[error(
        "blob {digest} of namespace {namespace} is being fetched from its backend; retry in \
         {} ms", retry_after.as_millis()
    )]
    Fetching {
        namespace: Namespace,
        digest: Digest,
        retry_after: Duration,
    },
    #[error("fetching blob {digest} from its backend failed")]
    FetchFailed {
        digest: Digest,
        #[source]
        source: Arc<OriginError>,
    },
    #[error(
        "the backend copy of blob {digest} in namespace {namespace} is corrupt: its content \
         hashes to {actual}; it was not stored"
    )]
    CorruptBackendBlob {
        namespace: Namespace,
        digest: Digest,
        actual: Digest,
    },
    #[error(
        "range of {} at offset {offset} lies outside blob {digest} of {size} bytes",
        length.map_or_else(|| "the rest".to_owned(), |l| format!("{l} bytes"))
    )]
    OutOfRange {
        digest: Digest,
        offset: u64,
        length: Option<u64>,
        size: u64,
    },
    #[error(
        "blob {0} is not yet written back to its backend: deleting it from this origin could \
         lose the only copy"
    )]
    NotPersisted(Digest),
    /// `ReplicateToRemote` named a cluster that is not under `remotes:`.
    #[error(
        "field `remote_cluster`: `{name}` is not a remote of this origin (configured: {configured})"
    )]
    UnknownRemote {
        name: String,
        /// The names under `remotes:`, comma-separated, or `none`.
        configured: String,
    },
    /// Sending a blob to a remote cluster failed (its build-index or origins unreachable,
    /// our certificate refused, an upload refused). This origin did its part: the caller
    /// retries the transfer later (`ABORTED`, not `UNAVAILABLE`, which would count against
    /// this origin's health and send the caller to the next origin, which cannot do better).
    #[error("replicating to remote cluster `{remote}` failed: {reason}")]
    Remote { remote: String, reason: String },
    #[error("the origin is shutting down")]
    ShuttingDown,
    #[error("the client sent nothing for {} s", .0.as_secs())]
    StreamIdle(Duration),
    /// The request stream broke (the client went away or sent something undecodable).
    #[error("reading the request stream: {}", .0.message())]
    Stream(Status),
    #[error("cannot read blob {digest}")]
    ReadBlob {
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    NoBackend(#[from] NoBackend),
    /// The durable write-back queue cannot record or remove a task (disk full, permissions).
    #[error("write-back queue file {}", path.display())]
    WriteBackQueue {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    // Start-up.
    #[error("invalid origin configuration: {0}")]
    Config(String),
    #[error(transparent)]
    BackendConfig(#[from] BackendConfigError),
    #[error("the {what} listener is unusable")]
    Listener {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the blob store")]
    OpenStore(#[source] StoreError),
    #[error("cannot set up the QUIC peer endpoint")]
    Transport(#[source] TransportError),
    #[error(transparent)]
    Advertise(kraken_transport::advertise::AdvertiseError),
    #[error("cannot set up the origin cluster (`cluster.hosts`)")]
    Cluster(#[source] ClusterError),
    #[error("the gRPC server failed")]
    Grpc(#[source] GrpcError),
    #[error("cannot load the CAs of `trusted_remotes`")]
    Trust(#[source] Box<kraken_tls::TlsError>),
    #[error("a background task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl OriginError {
    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidRequest(_)
            | Self::UnknownRemote { .. }
            | Self::Wire(_)
            | Self::Namespace(_)
            | Self::UploadId(_)
            | Self::Store(StoreError::DigestMismatch { .. }) => Code::InvalidArgument,
            Self::NotFound { .. }
            | Self::Store(StoreError::NotFound(_) | StoreError::UploadNotFound(_))
            | Self::Backend(BackendError::NotFound { .. }) => Code::NotFound,
            Self::Fetching { .. }
            | Self::ShuttingDown
            | Self::Backend(BackendError::Unavailable { .. }) => Code::Unavailable,
            Self::FetchFailed { source, .. } => source.code(),
            Self::CorruptBackendBlob { .. } => Code::DataLoss,
            Self::OutOfRange { .. } | Self::Store(StoreError::RangeOutOfBounds { .. }) => {
                Code::OutOfRange
            }
            Self::NotPersisted(_)
            | Self::NoBackend(_)
            | Self::Backend(BackendError::ReadOnly { .. })
            | Self::Store(StoreError::WrongOffset { .. }) => Code::FailedPrecondition,
            Self::Store(StoreError::AlreadyExists(_)) => Code::AlreadyExists,
            Self::Backend(BackendError::Unsupported { .. }) => Code::Unimplemented,
            Self::Remote { .. } => Code::Aborted,
            Self::StreamIdle(_) => Code::DeadlineExceeded,
            Self::Stream(status) => status.code(),
            // A full disk is not a bug: the client may try another origin or come back later.
            Self::Store(error) if error.is_storage_full() => Code::ResourceExhausted,
            Self::Store(_)
            | Self::ReadBlob { .. }
            | Self::Backend(BackendError::Other { .. })
            | Self::WriteBackQueue { .. }
            | Self::Cluster(_)
            | Self::Config(_)
            | Self::BackendConfig(_)
            | Self::Listener { .. }
            | Self::OpenStore(_)
            | Self::Transport(_)
            | Self::Advertise(_)
            | Self::Grpc(_)
            | Self::Trust(_)
            | Self::Task(_) => Code::Internal,
        }
    }

    /// The message with its whole chain of causes, so the caller (an authenticated member of
    /// the cluster) sees why, not just what.
    pub fn chain(&self) -> String {
        kraken_core::error_chain(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Fetching { retry_after, .. } => Some(*retry_after),
            // This origin is up, its backend is not: callers should come back later rather than
            // count a network error against this origin and fail over (every origin shares
            // the backend).
            Self::Backend(BackendError::Unavailable { .. }) => Some(BACKEND_RETRY_AFTER),
            Self::FetchFailed { source, .. } => source.retry_after(),
            _ => None,
        }
    }

    fn resume_offset(&self) -> Option<u64> {
        match self {
            Self::Store(StoreError::WrongOffset { expected, .. }) => Some(*expected),
            _ => None,
        }
    }
}

impl From<OriginError> for Status {
    fn from(error: OriginError) -> Self {
        let code = error.code();
        metrics::counter!(m::ERRORS, "code" => code_label(code)).increment(1);
        if let OriginError::Stream(status) = error {
            return status;
        }
        if code == Code::Internal {
            tracing::warn!(error = %error.chain(), "request failed");
        }
        let mut status = Status::new(code, error.chain());
        if let Some(delay) = error.retry_after() {
            status.metadata_mut().insert(
                RETRY_AFTER_MS,
                MetadataValue::from(delay.as_millis() as u64),
            );
        }
        if let Some(offset) = error.resume_offset() {
            status
                .metadata_mut()
                .insert(UPLOAD_OFFSET, MetadataValue::from(offset));
        }
        status
    }
}

/// A bounded, snake_case label for a status code.
fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use kraken_store::UploadId;

    use super::*;

    fn digest() -> Digest {
        Digest::of(b"x")
    }

    #[test]
    fn codes_follow_the_design() {
        let ns: Namespace = "library/ubuntu".parse().unwrap();
        let cases = [
            (
                OriginError::Store(StoreError::Io {
                    op: "write",
                    path: "/store/uploads/x".into(),
                    source: std::io::Error::from(std::io::ErrorKind::StorageFull),
                }),
                Code::ResourceExhausted,
            ),
            (
                OriginError::Store(StoreError::DigestMismatch {
                    expected: digest(),
                    actual: Digest::of(b"y"),
                }),
                Code::InvalidArgument,
            ),
            (
                OriginError::NotFound {
                    namespace: ns.clone(),
                    digest: digest(),
                },
                Code::NotFound,
            ),
            (
                OriginError::Store(StoreError::UploadNotFound(UploadId::random())),
                Code::NotFound,
            ),
            (
                OriginError::Backend(BackendError::Unavailable {
                    backend: "fs",
                    operation: "stat".into(),
                    source: "down".into(),
                }),
                Code::Unavailable,
            ),
            (
                OriginError::NoBackend(NoBackend {
                    namespace: ns.clone(),
                }),
                Code::FailedPrecondition,
            ),
            (
                OriginError::FetchFailed {
                    digest: digest(),
                    source: Arc::new(OriginError::CorruptBackendBlob {
                        namespace: ns,
                        digest: digest(),
                        actual: Digest::of(b"y"),
                    }),
                },
                Code::DataLoss,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn statuses_carry_retry_and_resume_hints() {
        let status = Status::from(OriginError::Fetching {
            namespace: "a".parse().unwrap(),
            digest: digest(),
            retry_after: Duration::from_millis(500),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.metadata().get(RETRY_AFTER_MS).unwrap(), "500");
        // A backend outage is an answer from a live origin, not a network error.
        let status = Status::from(OriginError::FetchFailed {
            digest: digest(),
            source: Arc::new(OriginError::Backend(BackendError::Unavailable {
                backend: "s3",
                operation: "download".into(),
                source: "connection refused".into(),
            })),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.metadata().get(RETRY_AFTER_MS).unwrap(), "1000");
        assert!(!kraken_transport::health::is_network_error(&status));
        assert!(kraken_transport::health::is_network_error(&Status::from(
            OriginError::ShuttingDown
        )));

        let upload = UploadId::random();
        let status = Status::from(OriginError::Store(StoreError::WrongOffset {
            upload,
            expected: 42,
            got: 7,
        }));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.metadata().get(UPLOAD_OFFSET).unwrap(), "42");
        assert!(
            status.message().contains("offset 42"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn messages_keep_their_causes_once() {
        let error = OriginError::Store(StoreError::DigestMismatch {
            expected: digest(),
            actual: Digest::of(b"y"),
        });
        let message = Status::from(error).message().to_owned();
        assert_eq!(message.matches("expected").count(), 1, "{message}");
        assert!(message.contains(&digest().to_string()));
        assert!(message.contains(&Digest::of(b"y").to_string()));
    }
}
