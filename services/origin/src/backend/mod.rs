//! The storage backends behind an origin: where blobs live durably, by namespace.
//!
//! [`Backend`] is the seam every storage kind plugs into (only [`FsBackend`] exists so far;
//! S3, GCS, HDFS and the read-only kinds are additions behind the same trait). [`Backends`]
//! routes a namespace to its backend with the config's ordered regex rules: the first match
//! wins, as in Kraken.

mod fs;

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use kraken_config::Pattern;
use kraken_config::backend::{BackendConfig, BackendKind};
use kraken_core::{Digest, Namespace};
use tokio::io::AsyncRead;

pub use fs::FsBackend;

/// A boxed error from a backend's client library (an SDK, an HTTP client, the file system).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a backend operation failed. The variants are what a caller decides on: absent (say so),
/// unavailable (retry later), anything else (a bug or a misconfiguration to report).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("blob {digest} is not in namespace {namespace} of the {backend} backend")]
    NotFound {
        backend: &'static str,
        namespace: Namespace,
        digest: Digest,
    },
    /// Transient: the storage is unreachable, overloaded or timed out.
    #[error("the {backend} backend is unavailable: {operation}")]
    Unavailable {
        backend: &'static str,
        operation: String,
        #[source]
        source: BoxError,
    },
    #[error("the {backend} backend failed: {operation}")]
    Other {
        backend: &'static str,
        operation: String,
        #[source]
        source: BoxError,
    },
}

impl BackendError {
    /// Classifies an I/O error of `operation` on `backend`: errors that may go away by
    /// themselves (timeouts, interrupted or refused connections, a busy resource) are
    /// `Unavailable`, the rest `Other`.
    pub fn from_io(backend: &'static str, operation: impl Into<String>, error: io::Error) -> Self {
        use io::ErrorKind as K;
        let operation = operation.into();
        let transient = matches!(
            error.kind(),
            K::TimedOut
                | K::Interrupted
                | K::WouldBlock
                | K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::BrokenPipe
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::NetworkDown
                | K::ResourceBusy
                | K::StaleNetworkFileHandle
        );
        let source = Box::new(error);
        if transient {
            Self::Unavailable {
                backend,
                operation,
                source,
            }
        } else {
            Self::Other {
                backend,
                operation,
                source,
            }
        }
    }
}

/// The content of a blob to upload.
pub enum UploadSource {
    /// An open file holding exactly the blob from its start (e.g. the store's committed copy,
    /// which stays readable even if the store evicts it meanwhile).
    File(std::fs::File),
    /// A reader yielding exactly the blob.
    Reader(Pin<Box<dyn AsyncRead + Send>>),
}

impl fmt::Debug for UploadSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(file) => f.debug_tuple("File").field(file).finish(),
            Self::Reader(_) => f.write_str("Reader(..)"),
        }
    }
}

/// A blob being downloaded from a backend: its size as the backend reports it, and its bytes.
/// Nothing here is verified; the caller checks the content against the digest.
pub struct BackendBlob {
    pub size: u64,
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
}

impl fmt::Debug for BackendBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendBlob")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A blob a backend holds, as [`Backend::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredBlob {
    pub namespace: Namespace,
    pub digest: Digest,
}

/// Durable storage of blobs by namespace and digest. Implementations stream: no operation may
/// hold a whole blob in memory.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// The kind's config key (`fs`, `s3`, …), for messages and metric labels.
    fn kind(&self) -> &'static str;

    /// The blob's size if the backend holds it, `None` if it does not.
    async fn stat(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<Option<u64>, BackendError>;

    /// Stores `size` bytes from `source` as the blob. After it returns `Ok` the blob is durable
    /// and complete under its name; an interrupted upload never leaves a partial blob visible.
    async fn upload(
        &self,
        namespace: &Namespace,
        digest: &Digest,
        source: UploadSource,
        size: u64,
    ) -> Result<(), BackendError>;

    /// Opens the blob for streaming; [`BackendError::NotFound`] if it is absent.
    async fn download(
        &self,
        namespace: &Namespace,
        digest: &Digest,
    ) -> Result<BackendBlob, BackendError>;

    /// Every blob whose namespace starts with `namespace_prefix` (`""` lists everything), for
    /// tooling and repair; request paths never list.
    async fn list(&self, namespace_prefix: &str) -> Result<Vec<StoredBlob>, BackendError>;
}

/// Why `backends:` cannot be turned into backends.
#[derive(Debug, thiserror::Error)]
pub enum BackendConfigError {
    #[error("backends[{index}]: backend kind `{kind}` is not supported yet")]
    Unsupported { index: usize, kind: &'static str },
    #[error("backends[{index}]: cannot set up the `{kind}` backend")]
    Setup {
        index: usize,
        kind: &'static str,
        #[source]
        source: BackendError,
    },
}

/// No routing rule matches a namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no storage backend is configured for namespace `{namespace}`: add a rule to `backends` \
     whose `namespace` regex matches it"
)]
pub struct NoBackend {
    pub namespace: Namespace,
}

/// The namespace → backend routing table: ordered rules, the first matching regex wins.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    rules: Vec<(Pattern, Arc<dyn Backend>)>,
}

impl Backends {
    /// Routes with explicit rules (tests, and kinds built outside this crate).
    pub fn new(rules: impl IntoIterator<Item = (Pattern, Arc<dyn Backend>)>) -> Self {
        Self {
            rules: rules.into_iter().collect(),
        }
    }

    /// Builds every backend of `backends:`. A kind this build cannot serve yet fails here, at
    /// start-up, rather than at the first upload to its namespace.
    pub fn from_config(configs: &[BackendConfig]) -> Result<Self, BackendConfigError> {
        let mut rules = Vec::with_capacity(configs.len());
        for (index, config) in configs.iter().enumerate() {
            let backend: Arc<dyn Backend> = match &config.backend {
                BackendKind::Fs(fs) => Arc::new(FsBackend::new(&fs.root)),
                other => {
                    return Err(BackendConfigError::Unsupported {
                        index,
                        kind: other.name(),
                    });
                }
            };
            rules.push((config.namespace.clone(), backend));
        }
        Ok(Self { rules })
    }

    /// The backend of `namespace`: the first rule whose regex matches it.
    pub fn backend_for(&self, namespace: &Namespace) -> Result<&Arc<dyn Backend>, NoBackend> {
        self.rules
            .iter()
            .find(|(pattern, _)| pattern.is_match(namespace.as_str()))
            .map(|(_, backend)| backend)
            .ok_or_else(|| NoBackend {
                namespace: namespace.clone(),
            })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use kraken_config::backend::{BackendBandwidthConfig, FsBackendConfig, S3BackendConfig};

    use super::*;

    fn rule(namespace: &str, backend: BackendKind) -> BackendConfig {
        BackendConfig {
            namespace: Pattern::new(namespace).unwrap(),
            backend,
            bandwidth: BackendBandwidthConfig::default(),
        }
    }

    fn fs(root: &str) -> BackendKind {
        BackendKind::Fs(FsBackendConfig {
            root: PathBuf::from(root),
        })
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let backends =
            Backends::from_config(&[rule("^team/", fs("/a")), rule(".*", fs("/b"))]).unwrap();
        let route = |ns: &str| format!("{:?}", backends.backend_for(&ns.parse().unwrap()).unwrap());
        assert!(route("team/app").contains("/a"), "{}", route("team/app"));
        assert!(route("library/ubuntu").contains("/b"));
        // Unanchored, as in Kraken: `team/` in the middle matches a rule without `^` only.
        assert!(route("other/team/app").contains("/b"));
    }

    #[test]
    fn an_unmatched_namespace_is_named_in_the_error() {
        let backends = Backends::from_config(&[rule("^team/", fs("/a"))]).unwrap();
        let error = backends
            .backend_for(&"library/ubuntu".parse().unwrap())
            .unwrap_err();
        assert!(error.to_string().contains("`library/ubuntu`"), "{error}");
        assert!(Backends::default().is_empty());
    }

    #[test]
    fn kinds_not_built_yet_fail_at_start_up() {
        let error = Backends::from_config(&[
            rule("^team/", fs("/a")),
            rule(".*", BackendKind::S3(S3BackendConfig::default())),
        ])
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "backends[1]: backend kind `s3` is not supported yet"
        );
    }

    #[test]
    fn io_errors_are_classified() {
        let transient =
            BackendError::from_io("fs", "read", io::Error::from(io::ErrorKind::TimedOut));
        assert!(matches!(transient, BackendError::Unavailable { .. }));
        let permanent = BackendError::from_io(
            "fs",
            "read",
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(matches!(permanent, BackendError::Other { .. }));
    }
}
