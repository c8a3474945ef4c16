//! Why one replication attempt failed, and the [`Cause`] an operator filters and alerts on.
//! The task records the whole chain as its `last_error`; the executor retries every cause
//! (some need an operator first: a CA to list, a remote to configure).

use kraken_core::Digest;
use kraken_oci::TaggedName;
use kraken_originclient::{OriginsError, ReferenceError};
use kraken_tagclient::TagClientError;
use kraken_tls::HandshakeFailure;

use super::peers::PeerError;
use super::task::Cause;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplicationError {
    /// The task names a remote no longer under `remotes:` (the configuration changed since it
    /// was queued). It waits in case the remote comes back; delete its file to drop it.
    #[error("remote `{remote}` is not under `remotes:` (configured: {configured})")]
    UnknownRemote { remote: String, configured: String },
    /// The TLS handshake with the remote's build-index failed.
    #[error("{failure} (build-index of remote `{remote}`)")]
    Tls {
        remote: String,
        failure: HandshakeFailure,
    },
    #[error("cannot reach the build-index of remote `{remote}`")]
    RemoteUnreachable {
        remote: String,
        #[source]
        source: Box<TagClientError>,
    },
    /// The remote's build-index answered with an error.
    #[error("the build-index of remote `{remote}` refused {what}")]
    RemoteRefused {
        remote: String,
        what: &'static str,
        #[source]
        source: Box<TagClientError>,
    },
    #[error("listing what {tag} depends on from the local origins")]
    Dependencies {
        tag: TaggedName,
        #[source]
        source: Box<ReferenceError>,
    },
    /// A local origin could not send a blob: it could not reach the remote's origins, they
    /// refused it, or no local origin could answer.
    #[error("sending {what} {digest} to remote `{remote}`")]
    Blob {
        remote: String,
        digest: Digest,
        what: String,
        #[source]
        source: Box<OriginsError>,
    },
    /// A cluster peer still did not take its copy of a tag write.
    #[error("copying the write to a build-index peer")]
    Peer(#[source] Box<PeerError>),
}

impl ReplicationError {
    /// An error of the remote's build-index while asking it `what`: a failed handshake is
    /// told apart from an unreachable host and from an answer.
    pub(crate) fn from_remote(remote: &str, what: &'static str, source: TagClientError) -> Self {
        let status = match &source {
            TagClientError::Unreachable { status, .. }
            | TagClientError::Rejected { status, .. } => Some(status),
            _ => None,
        };
        // With TLS 1.3 a refused client certificate shows up at the first read, so even an
        // "answer" can be a handshake failure.
        let failure = status
            .and_then(|status| kraken_tls::handshake_failure(status, remote))
            .or_else(|| kraken_tls::handshake_failure(&source, remote));
        if let Some(failure) = failure {
            return Self::Tls {
                remote: remote.to_owned(),
                failure,
            };
        }
        if source.is_unavailable() {
            Self::RemoteUnreachable {
                remote: remote.to_owned(),
                source: Box::new(source),
            }
        } else {
            Self::RemoteRefused {
                remote: remote.to_owned(),
                what,
                source: Box::new(source),
            }
        }
    }

    pub(crate) fn cause(&self) -> Cause {
        match self {
            Self::UnknownRemote { .. } => Cause::Other,
            Self::Tls { .. } => Cause::Tls,
            Self::RemoteUnreachable { .. } => Cause::RemoteUnreachable,
            Self::RemoteRefused { .. } => Cause::RemoteRefused,
            Self::Dependencies { .. } => Cause::Dependencies,
            Self::Blob { .. } => Cause::Origin,
            Self::Peer(_) => Cause::Peer,
        }
    }
}
