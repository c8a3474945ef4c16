//! Why the proxy could not start or stopped uncleanly. Request errors are registry errors
//! ([`kraken_oci::RegistryError`]) or gRPC statuses, built where they happen.

use kraken_originclient::ClientError;
use kraken_tagclient::TagClientError;
use kraken_transport::grpc::GrpcError;

use crate::staging::StagingError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("reading the {what} listener's address")]
    Listener {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    #[error("setting up the origin cluster")]
    Origins(#[from] ClientError),
    #[error("setting up the build-index client")]
    BuildIndex(#[from] TagClientError),
    #[error("preparing the upload staging directory")]
    Staging(#[source] StagingErrorSource),
    #[error("setting up registry authentication")]
    Auth(#[from] crate::auth::AuthSetupError),
    #[error("loading the registry port's certificate")]
    RegistryTls(#[source] kraken_transport::http::HttpTlsError),
    #[error("the registry server failed")]
    Serve(#[source] std::io::Error),
    #[error("a proxy task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// The staging error behind [`ProxyError::Staging`] (the staging module is private).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StagingErrorSource(#[from] pub(crate) StagingError);
