//! The agent's one error type, and its one mapping to gRPC status codes.

use std::net::SocketAddr;

use kraken_core::{Digest, NamespaceError, WireError, error_chain};
use kraken_scheduler::SchedulerError;
use kraken_store::StoreError;
use kraken_transport::grpc::GrpcError;
use kraken_transport::quic::TransportError;
use tonic::{Code, Status};

use crate::tracker::TrackerError;
use kraken_tagclient::TagClientError;

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("loading the registry port's certificate (`registry_tls`)")]
    RegistryTls(#[source] kraken_transport::http::HttpTlsError),
    #[error("field `{field}` is missing")]
    MissingField { field: &'static str },
    #[error(transparent)]
    InvalidDigest(#[from] WireError),
    #[error("field `namespace`: {0}")]
    InvalidNamespace(#[source] NamespaceError),
    #[error("blob {digest} is not known to any peer, origin or storage backend")]
    NotFound { digest: Digest },
    #[error(
        "range at offset {offset}{} lies outside blob {digest} of {size} bytes",
        length.map(|l| format!(" of {l} bytes")).unwrap_or_default()
    )]
    OutOfRange {
        digest: Digest,
        offset: u64,
        length: Option<u64>,
        size: u64,
    },
    #[error("resolving tags needs a build-index: set `build_index.hosts` in the agent's config")]
    TagsUnsupported,
    #[error("field `tag`: {0}")]
    InvalidTag(String),
    #[error(transparent)]
    Tags(#[from] TagClientError),
    #[error("blob {digest} is not a manifest: {reason}")]
    NotAManifest { digest: Digest, reason: String },
    #[error("tracker")]
    Tracker(#[source] Box<TrackerError>),
    #[error("download of {digest} failed: {reason}")]
    DownloadFailed { digest: Digest, reason: String },
    #[error("blob store")]
    Store(#[from] StoreError),
    #[error("the agent is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Advertise(#[from] kraken_transport::advertise::AdvertiseError),
    #[error("cannot bind the P2P port on {addr}")]
    BindP2p {
        addr: SocketAddr,
        #[source]
        source: Box<TransportError>,
    },
    #[error("cannot read the address of the gRPC listener")]
    ListenerAddr(#[source] std::io::Error),
    #[error("gRPC server")]
    Grpc(#[source] Box<GrpcError>),
    #[error("the {task} task failed")]
    Task {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl From<TrackerError> for AgentError {
    fn from(error: TrackerError) -> Self {
        match error {
            TrackerError::NotFound { digest } => Self::NotFound { digest },
            other => Self::Tracker(Box::new(other)),
        }
    }
}

impl From<GrpcError> for AgentError {
    fn from(error: GrpcError) -> Self {
        Self::Grpc(Box::new(error))
    }
}

impl From<SchedulerError> for AgentError {
    fn from(error: SchedulerError) -> Self {
        match error {
            SchedulerError::Failed { digest, source } => Self::DownloadFailed {
                digest,
                reason: error_chain(&source),
            },
            SchedulerError::ShutDown => Self::ShuttingDown,
            // The store's own words (e.g. no room on its disk) reach the caller.
            SchedulerError::Store { source, .. } => Self::Store(source),
        }
    }
}

impl AgentError {
    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            Self::MissingField { .. } | Self::InvalidDigest(_) | Self::InvalidNamespace(_) => {
                Code::InvalidArgument
            }
            Self::NotFound { .. } => Code::NotFound,
            Self::OutOfRange { .. } => Code::OutOfRange,
            Self::TagsUnsupported | Self::NotAManifest { .. } => Code::FailedPrecondition,
            Self::InvalidTag(_) => Code::InvalidArgument,
            Self::Tags(error) => match error {
                TagClientError::NotFound { .. } => Code::NotFound,
                TagClientError::Unreachable { .. } | TagClientError::Cluster(_) => {
                    Code::Unavailable
                }
                TagClientError::NoHosts => Code::FailedPrecondition,
                // The build-index's own refusal (a malformed tag name, say) passes through.
                TagClientError::Rejected { status, .. } => status.code(),
                TagClientError::BadDigest { .. } => Code::Internal,
            },
            Self::Tracker(error) => match **error {
                TrackerError::NotFound { .. } => Code::NotFound,
                TrackerError::Unreachable { .. } => Code::Unavailable,
                TrackerError::MetaInfoTimeout { .. } => Code::DeadlineExceeded,
                TrackerError::LookupAborted => Code::Unavailable,
                TrackerError::NoHosts
                | TrackerError::Cluster(_)
                | TrackerError::Channel { .. }
                | TrackerError::Rejected { .. }
                | TrackerError::BadResponse { .. } => Code::Internal,
            },
            // The swarm may do better on a second try (another peer, a fixed origin).
            Self::DownloadFailed { .. } => Code::Aborted,
            Self::Store(error) if error.is_not_found() => Code::NotFound,
            // This host's disk cannot take the blob: another host, or later, may do better.
            Self::Store(error) if error.is_storage_full() => Code::ResourceExhausted,
            Self::ShuttingDown => Code::Unavailable,
            Self::Store(_)
            | Self::BindP2p { .. }
            | Self::Advertise(_)
            | Self::ListenerAddr(_)
            | Self::RegistryTls(_)
            | Self::Grpc(_)
            | Self::Task { .. } => Code::Internal,
        }
    }
}

impl From<AgentError> for Status {
    fn from(error: AgentError) -> Self {
        let code = error.code();
        if code == Code::Internal {
            tracing::error!(error = %error_chain(&error), "request failed");
        }
        Status::new(code, error_chain(&error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraken_scheduler::DownloadError;

    #[test]
    fn codes_mean_something() {
        let digest = Digest::of(b"x");
        let cases = [
            (
                AgentError::MissingField { field: "blob" },
                Code::InvalidArgument,
            ),
            (TrackerError::NotFound { digest }.into(), Code::NotFound),
            (
                AgentError::OutOfRange {
                    digest,
                    offset: 10,
                    length: Some(5),
                    size: 12,
                },
                Code::OutOfRange,
            ),
            (AgentError::TagsUnsupported, Code::FailedPrecondition),
            (
                TrackerError::Unreachable {
                    tried: 2,
                    host: "t:1".into(),
                    source: Status::unavailable("refused"),
                }
                .into(),
                Code::Unavailable,
            ),
            (
                SchedulerError::Failed {
                    digest,
                    source: DownloadError::Commit(std::sync::Arc::new(
                        StoreError::DigestMismatch {
                            expected: digest,
                            actual: Digest::of(b"y"),
                        },
                    )),
                }
                .into(),
                Code::Aborted,
            ),
            (StoreError::NotFound(digest).into(), Code::NotFound),
            (
                SchedulerError::Store {
                    digest,
                    source: StoreError::NoSpace {
                        digest,
                        needed: 10,
                        available: 1,
                        reserved: 0,
                        unevictable: 0,
                    },
                }
                .into(),
                Code::ResourceExhausted,
            ),
            (AgentError::ShuttingDown, Code::Unavailable),
        ];
        for (error, code) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{}", status.message());
        }
    }

    #[test]
    fn messages_carry_the_cause() {
        let status = Status::from(AgentError::from(TrackerError::Unreachable {
            tried: 1,
            host: "tracker:15003".into(),
            source: Status::unavailable("tcp connect error"),
        }));
        assert!(
            status.message().contains("tracker:15003"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("tcp connect error"),
            "{}",
            status.message()
        );
        let status = Status::from(AgentError::OutOfRange {
            digest: Digest::of(b"x"),
            offset: 10,
            length: None,
            size: 4,
        });
        assert!(
            status.message().contains("offset 10"),
            "{}",
            status.message()
        );
    }
}
