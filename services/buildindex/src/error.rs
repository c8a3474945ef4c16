//! Build-index errors: why it could not start, and why a tag call failed (with the one mapping
//! to gRPC status codes).

use kraken_backend::{BackendConfigError, BackendError, NoBackend};
use kraken_core::{Digest, WireError, error_chain};
use kraken_oci::TaggedNameError;
use kraken_originclient::{ClientError, OriginsError, ReferenceError};
use kraken_transport::grpc::GrpcError;
use tonic::{Code, Status};

use crate::replication::queue::QueueError;
use crate::store::TagStoreError;

/// Why build-index did not start or stopped uncleanly.
#[derive(Debug, thiserror::Error)]
pub enum BuildIndexError {
    #[error("reading the gRPC listener's address")]
    Listener(#[source] std::io::Error),
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    #[error("setting up the tag storage backends")]
    Backends(#[from] BackendConfigError),
    #[error("setting up the origin cluster")]
    Origins(#[source] ClientError),
    #[error("opening the tag store")]
    Store(#[from] TagStoreError),
    #[error("opening the replication queue")]
    Queue(#[source] QueueError),
    /// A remote under `remotes:` cannot be dialed as configured.
    #[error("remotes.{name}: {reason}")]
    Remote { name: String, reason: String },
    #[error("setting up the `cluster` peers")]
    Peers(#[source] Box<kraken_transport::cluster::ClusterError>),
    #[error("loading the CAs of `trusted_remotes`")]
    Trust(#[source] Box<kraken_tls::TlsError>),
    #[error("a build-index task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Why a `TagService` call failed.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error("field `{field}`: {source}")]
    InvalidName {
        field: &'static str,
        #[source]
        source: TaggedNameError,
    },
    #[error("field `repository`: {0}")]
    InvalidRepository(#[source] kraken_oci::NameError),
    #[error(transparent)]
    InvalidDigest(#[from] WireError),
    #[error("tag {0} is not known")]
    NotFound(String),
    /// A dependency of the tag is not on the origins: the tag is refused.
    #[error("{what} {digest} is not on the origins: push it before the tag")]
    Missing { digest: Digest, what: String },
    #[error("{digest} is not a manifest the tag can point at: {reason}")]
    NotAManifest { digest: Digest, reason: String },
    #[error("the tag depends on more than {max} blobs")]
    TooManyDependencies { max: usize },
    #[error("asking the origins")]
    Origins(#[source] OriginsError),
    #[error(transparent)]
    NoBackend(#[from] NoBackend),
    #[error("the tag's storage backend or upstream registry failed")]
    Backend(#[source] BackendError),
    #[error(
        "{tag} is pulled through from the upstream registry {upstream} (a `registry_tag` \
         namespace): push it there, not here"
    )]
    UpstreamTag { tag: String, upstream: String },
    #[error("the tag record in the storage backend is unreadable: {0}")]
    CorruptBackendRecord(String),
    #[error("the local tag store failed")]
    Store(#[from] TagStoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<ReferenceError> for TagError {
    fn from(error: ReferenceError) -> Self {
        match error {
            ReferenceError::Missing { digest, what } => Self::Missing { digest, what },
            ReferenceError::NotAManifest { digest, reason } => {
                Self::NotAManifest { digest, reason }
            }
            ReferenceError::TooManyDependencies { max } => Self::TooManyDependencies { max },
            ReferenceError::Origins(error) => Self::Origins(error),
        }
    }
}

impl TagError {
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidName { .. } | Self::InvalidRepository(_) | Self::InvalidDigest(_) => {
                Code::InvalidArgument
            }
            Self::NotFound(_) => Code::NotFound,
            Self::Missing { .. } | Self::NotAManifest { .. } | Self::TooManyDependencies { .. } => {
                Code::FailedPrecondition
            }
            Self::Origins(OriginsError::NotFound { .. }) => Code::FailedPrecondition,
            Self::Origins(_) | Self::Backend(_) => Code::Unavailable,
            Self::NoBackend(_) | Self::UpstreamTag { .. } => Code::FailedPrecondition,
            Self::CorruptBackendRecord(_) | Self::Store(_) | Self::Queue(_) => Code::Internal,
        }
    }
}

impl From<TagError> for Status {
    fn from(error: TagError) -> Self {
        let code = error.code();
        if matches!(code, Code::Internal | Code::Unavailable) {
            tracing::warn!(error = %error_chain(&error), "tag call failed");
        }
        Status::new(code, error_chain(&error))
    }
}
