//! The storage backends: where blobs (origins) and tags (build-index) live durably, by
//! namespace. An engine crate: it knows nothing of gRPC, peers or components; the origin and
//! the build-index drive it.
//!
//! [`Backend`] is the seam every storage kind plugs into: [`FsBackend`] (a directory),
//! [`S3Backend`], [`GcsBackend`], [`HdfsBackend`] (WebHDFS), and the read-only
//! [`HttpBackend`] and [`RegistryBlobBackend`]. [`Backends`] routes a namespace to its backend
//! with the config's ordered regex rules: the first match wins, as in Kraken. A rule with
//! `bandwidth` enabled wraps its backend in a [`BandwidthLimited`] decorator, so the kinds
//! themselves never think about rate limits.
//!
//! Tags are not blobs: [`RegistryTagBackend`] resolves `repo:tag` to a manifest digest for the
//! build-index and is deliberately not a [`Backend`] (see its docs).

mod fs;
mod gcs;
mod hdfs;
mod http;
mod layout;
mod limit;
mod registry;
mod request;
mod s3;
mod stream;

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use kraken_config::Pattern;
use kraken_config::backend::{AuthConfig, BackendConfig, BackendKind};
use kraken_core::{Digest, Namespace};
use tokio::io::AsyncRead;

pub use fs::FsBackend;
pub use gcs::{GcsAuth, GcsBackend};
pub use hdfs::HdfsBackend;
pub use http::HttpBackend;
pub use layout::ObjectLayout;
pub use limit::BandwidthLimited;
pub use registry::{RegistryBlobBackend, RegistryTagBackend, TagReference, TagReferenceError};
pub use s3::S3Backend;

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
    /// An upload to a kind that only serves reads (`http`, `registry_blob`): the blob has to
    /// reach that storage some other way (e.g. a `docker push` to the registry itself).
    #[error("the {backend} backend is read-only: blobs cannot be uploaded to it")]
    ReadOnly { backend: &'static str },
    /// An operation the kind cannot do at all, e.g. listing an HTTP URL template.
    #[error("the {backend} backend cannot {operation}")]
    Unsupported {
        backend: &'static str,
        operation: &'static str,
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

    pub(crate) fn unavailable(
        backend: &'static str,
        operation: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Unavailable {
            backend,
            operation: operation.into(),
            source: source.into(),
        }
    }

    pub(crate) fn other(
        backend: &'static str,
        operation: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Other {
            backend,
            operation: operation.into(),
            source: source.into(),
        }
    }

    pub(crate) fn not_found(backend: &'static str, namespace: &Namespace, digest: &Digest) -> Self {
        Self::NotFound {
            backend,
            namespace: namespace.clone(),
            digest: *digest,
        }
    }

    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
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

impl UploadSource {
    /// The content as an async reader, for kinds that stream it over the network.
    pub fn into_reader(self) -> Pin<Box<dyn AsyncRead + Send>> {
        match self {
            Self::File(file) => Box::pin(tokio::fs::File::from_std(file)),
            Self::Reader(reader) => reader,
        }
    }
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
    /// The namespace the blob is stored under; `None` for layouts that name blobs by digest
    /// alone (`sharded_docker_blob`, `identity`), where one object serves every namespace
    /// routed to the backend.
    pub namespace: Option<Namespace>,
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
    /// tooling and repair; request paths never list. Layouts that do not record namespaces
    /// cannot filter by one: they list every blob they hold, with `namespace: None`, whatever
    /// the prefix. Read-only kinds answer [`BackendError::Unsupported`].
    async fn list(&self, namespace_prefix: &str) -> Result<Vec<StoredBlob>, BackendError>;
}

/// Why `backends:` cannot be turned into backends.
#[derive(Debug, thiserror::Error)]
pub enum BackendConfigError {
    /// `registry_tag` maps tags to digests through a registry and stores nothing: it is built
    /// as a [`RegistryTagBackend`], never routed as a blob store.
    #[error(
        "backends[{index}]: `registry_tag` resolves tags through a registry and cannot store \
         blobs (origins pull through with `registry_blob`; the build-index resolves tags with \
         a RegistryTagBackend)"
    )]
    TagsNotBlobs { index: usize },
    #[error("backends[{index}]: cannot set up the `{kind}` backend")]
    Setup {
        index: usize,
        kind: &'static str,
        #[source]
        source: SetupError,
    },
}

/// The credentials of `user` under `auth.<kind>`, and its secret as `secret` reads it; each
/// missing piece is an error that names the key to set.
fn auth_secret<'a, T, S>(
    users: &'a std::collections::BTreeMap<String, T>,
    kind: &'static str,
    user: &str,
    field: &str,
    secret: impl FnOnce(&'a T) -> Result<Option<S>, kraken_config::SecretError>,
) -> Result<(&'a T, S), SetupError> {
    let credentials = users.get(user).ok_or_else(|| SetupError::UnknownUser {
        kind,
        user: user.to_owned(),
    })?;
    let value = secret(credentials)?.ok_or_else(|| {
        SetupError::MissingCredentials(format!("`auth.{kind}.{user}` has no {field}(_file)"))
    })?;
    Ok((credentials, value))
}

/// Why one backend cannot be built from its settings. Nothing here touches the network:
/// credentials, keys and certificates are read and parsed, servers are first contacted by the
/// first request.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("`username: {user}` has no credentials under `auth.{kind}`")]
    UnknownUser { kind: &'static str, user: String },
    #[error("{0}")]
    MissingCredentials(String),
    #[error(transparent)]
    Secret(#[from] kraken_config::SecretError),
    #[error("`{value}` is not a usable URL")]
    Url {
        value: String,
        #[source]
        source: BoxError,
    },
    #[error("cannot read the CA certificates in {}", path.display())]
    CaCertificates {
        path: std::path::PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("the GCS service account key is unusable")]
    ServiceAccountKey(#[source] gcp_auth::Error),
    #[error("cannot build the HTTP client")]
    HttpClient(#[source] reqwest::Error),
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

/// Builds rule `index` of `backends:` as a blob store.
fn blob_backend(
    index: usize,
    config: &BackendConfig,
    auth: &AuthConfig,
    origins: usize,
) -> Result<Arc<dyn Backend>, BackendConfigError> {
    let kind = config.backend.name();
    let setup = |source| BackendConfigError::Setup {
        index,
        kind,
        source,
    };
    let backend: Arc<dyn Backend> = match &config.backend {
        BackendKind::Fs(fs) => Arc::new(FsBackend::new(&fs.root)),
        BackendKind::S3(s3) => Arc::new(S3Backend::from_config(s3, auth).map_err(setup)?),
        BackendKind::Gcs(gcs) => Arc::new(GcsBackend::from_config(gcs, auth).map_err(setup)?),
        BackendKind::Hdfs(hdfs) => Arc::new(HdfsBackend::new(hdfs).map_err(setup)?),
        BackendKind::Http(http) => Arc::new(HttpBackend::new(http).map_err(setup)?),
        BackendKind::RegistryBlob(registry) => {
            Arc::new(RegistryBlobBackend::new(registry).map_err(setup)?)
        }
        BackendKind::RegistryTag(_) => {
            return Err(BackendConfigError::TagsNotBlobs { index });
        }
    };
    let backend = if config.bandwidth.enable {
        BandwidthLimited::for_cluster(backend, &config.bandwidth, origins)
    } else {
        backend
    };
    tracing::debug!(
        index,
        kind,
        namespace = config.namespace.as_str(),
        bandwidth_limited = config.bandwidth.enable,
        "storage backend configured"
    );
    Ok(backend)
}

/// The target of the first rule whose regex matches `namespace`.
fn first_match<'a, T>(
    rules: &'a [(Pattern, T)],
    namespace: &Namespace,
) -> Result<&'a T, NoBackend> {
    rules
        .iter()
        .find(|(pattern, _)| pattern.is_match(namespace.as_str()))
        .map(|(_, target)| target)
        .ok_or_else(|| NoBackend {
            namespace: namespace.clone(),
        })
}

/// Where the build-index keeps or finds a namespace's tags.
#[derive(Debug, Clone)]
pub enum TagRoute {
    /// Tags are ours: written through to (and recovered from) this store.
    Store(Arc<dyn Backend>),
    /// Tags are an upstream registry's (pull-through): resolved there, never written.
    Upstream(Arc<RegistryTagBackend>),
}

/// The build-index's namespace → tag route table: ordered rules, the first matching regex
/// wins, as for [`Backends`].
#[derive(Debug, Clone, Default)]
pub struct TagRoutes {
    rules: Vec<(Pattern, TagRoute)>,
}

impl From<Backends> for TagRoutes {
    /// Every rule a store.
    fn from(backends: Backends) -> Self {
        Self {
            rules: backends
                .rules
                .into_iter()
                .map(|(pattern, backend)| (pattern, TagRoute::Store(backend)))
                .collect(),
        }
    }
}

impl TagRoutes {
    /// Routes with explicit rules (tests).
    pub fn new(rules: impl IntoIterator<Item = (Pattern, TagRoute)>) -> Self {
        Self {
            rules: rules.into_iter().collect(),
        }
    }

    /// Builds every rule of a build-index's `backends:`: `registry_tag` as an upstream, every
    /// other kind as a store.
    pub fn from_config(
        configs: &[BackendConfig],
        auth: &AuthConfig,
    ) -> Result<Self, BackendConfigError> {
        let mut rules = Vec::with_capacity(configs.len());
        for (index, config) in configs.iter().enumerate() {
            let route = match &config.backend {
                BackendKind::RegistryTag(registry) => {
                    TagRoute::Upstream(Arc::new(RegistryTagBackend::new(registry).map_err(
                        |source| BackendConfigError::Setup {
                            index,
                            kind: config.backend.name(),
                            source,
                        },
                    )?))
                }
                _ => TagRoute::Store(blob_backend(index, config, auth, 1)?),
            };
            rules.push((config.namespace.clone(), route));
        }
        Ok(Self { rules })
    }

    /// The route of `namespace`: the first rule whose regex matches it.
    pub fn route_for(&self, namespace: &Namespace) -> Result<&TagRoute, NoBackend> {
        first_match(&self.rules, namespace)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
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

    /// Builds every backend of `backends:`, with credentials from `auth`. Settings that cannot
    /// work (an unknown user, an unreadable secret file, a malformed key) fail here, at
    /// start-up, rather than at the first upload to the namespace.
    ///
    /// `origins` is the number of origins sharing the backends (`cluster.hosts`; 0 counts as
    /// 1): each rule's `bandwidth` caps are for the whole cluster, as in Kraken, so every
    /// origin takes its share.
    pub fn from_config(
        configs: &[BackendConfig],
        auth: &AuthConfig,
        origins: usize,
    ) -> Result<Self, BackendConfigError> {
        let mut rules = Vec::with_capacity(configs.len());
        for (index, config) in configs.iter().enumerate() {
            let backend = blob_backend(index, config, auth, origins)?;
            rules.push((config.namespace.clone(), backend));
        }
        Ok(Self { rules })
    }

    /// The backend of `namespace`: the first rule whose regex matches it.
    pub fn backend_for(&self, namespace: &Namespace) -> Result<&Arc<dyn Backend>, NoBackend> {
        first_match(&self.rules, namespace)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use kraken_config::backend::{
        BackendBandwidthConfig, FsBackendConfig, GcsBackendConfig, HdfsBackendConfig,
        HttpBackendConfig, RegistryBackendConfig, S3BackendConfig, S3Credentials,
    };

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
        let backends = Backends::from_config(
            &[rule("^team/", fs("/a")), rule(".*", fs("/b"))],
            &AuthConfig::default(),
            1,
        )
        .unwrap();
        let route = |ns: &str| format!("{:?}", backends.backend_for(&ns.parse().unwrap()).unwrap());
        assert!(route("team/app").contains("/a"), "{}", route("team/app"));
        assert!(route("library/ubuntu").contains("/b"));
        // Unanchored, as in Kraken: `team/` in the middle matches a rule without `^` only.
        assert!(route("other/team/app").contains("/b"));
    }

    #[test]
    fn an_unmatched_namespace_is_named_in_the_error() {
        let backends =
            Backends::from_config(&[rule("^team/", fs("/a"))], &AuthConfig::default(), 1).unwrap();
        let error = backends
            .backend_for(&"library/ubuntu".parse().unwrap())
            .unwrap_err();
        assert!(error.to_string().contains("`library/ubuntu`"), "{error}");
        assert!(Backends::default().is_empty());
    }

    #[test]
    fn every_blob_kind_is_built_without_touching_the_network() {
        let s3 = S3BackendConfig {
            region: "us-east-1".to_owned(),
            bucket: "blobs".to_owned(),
            username: "kraken".to_owned(),
            ..S3BackendConfig::default()
        };
        let mut auth = AuthConfig::default();
        auth.s3.insert(
            "kraken".to_owned(),
            S3Credentials {
                aws_access_key_id: "id".to_owned(),
                aws_secret_access_key: Some(kraken_config::Secret::new("secret")),
                aws_secret_access_key_file: None,
            },
        );
        let gcs = GcsBackendConfig {
            bucket: "blobs".to_owned(),
            ..GcsBackendConfig::default()
        };
        let hdfs = HdfsBackendConfig {
            name_nodes: vec!["127.0.0.1:9870".to_owned()],
            ..HdfsBackendConfig::default()
        };
        let http = HttpBackendConfig {
            download_url: "http://127.0.0.1:1/blobs/%s".to_owned(),
            ..HttpBackendConfig::default()
        };
        let registry = RegistryBackendConfig {
            address: "127.0.0.1:5000".to_owned(),
            ..RegistryBackendConfig::default()
        };
        let mut limited = rule("^http/", BackendKind::Http(http));
        limited.bandwidth.enable = true;
        let backends = Backends::from_config(
            &[
                rule("^fs/", fs("/a")),
                rule("^s3/", BackendKind::S3(s3)),
                rule("^gcs/", BackendKind::Gcs(gcs)),
                rule("^hdfs/", BackendKind::Hdfs(hdfs)),
                limited,
                rule("^registry/", BackendKind::RegistryBlob(registry)),
            ],
            &auth,
            3,
        )
        .unwrap();
        let kind = |ns: &str| backends.backend_for(&ns.parse().unwrap()).unwrap().kind();
        assert_eq!(kind("fs/a"), "fs");
        assert_eq!(kind("s3/a"), "s3");
        assert_eq!(kind("gcs/a"), "gcs");
        assert_eq!(kind("hdfs/a"), "hdfs");
        assert_eq!(kind("http/a"), "http");
        assert_eq!(kind("registry/a"), "registry_blob");
        let http = backends.backend_for(&"http/a".parse().unwrap()).unwrap();
        assert!(format!("{http:?}").contains("BandwidthLimited"), "{http:?}");
    }

    #[test]
    fn a_tag_kind_or_an_unknown_user_fails_at_start_up() {
        let error = Backends::from_config(
            &[rule(
                ".*",
                BackendKind::RegistryTag(RegistryBackendConfig::default()),
            )],
            &AuthConfig::default(),
            1,
        )
        .unwrap_err();
        assert!(error.to_string().contains("`registry_blob`"), "{error}");

        let s3 = S3BackendConfig {
            region: "us-east-1".to_owned(),
            bucket: "blobs".to_owned(),
            username: "nobody".to_owned(),
            ..S3BackendConfig::default()
        };
        let error = Backends::from_config(
            &[rule(".*", BackendKind::S3(s3))],
            &AuthConfig::default(),
            1,
        )
        .unwrap_err();
        let chain = format!("{error}: {}", std::error::Error::source(&error).unwrap());
        assert!(
            chain.starts_with("backends[0]: cannot set up the `s3` backend"),
            "{chain}"
        );
        assert!(chain.contains("`username: nobody`"), "{chain}");
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
