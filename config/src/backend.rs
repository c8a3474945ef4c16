//! `backends:` and `auth:` — the storage behind origins (blobs) and build-index (tags), in
//! Kraken's shape: an ordered list of namespace rules, the first match wins.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::pattern::Pattern;
use crate::secret::{Secret, SecretError, check_secret_pair};
use crate::tree::KeyPath;
use crate::validate::{Validate, ValidationError, ensure, host_port, nested, positive_duration};

/// One routing rule: blobs (or tags) whose namespace matches `namespace` live in `backend`.
///
/// `namespace` and `backend` are required (there is no sensible default for either), so this
/// struct, unlike the others, has no `Default`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Regex on the namespace (for images, the repository: `library/ubuntu`). Unanchored, as in
    /// Kraken: `library/.*` matches anywhere; write `^library/` to anchor.
    pub namespace: Pattern,
    /// The storage, as a single-key mapping naming its kind: `fs`, `s3`, `gcs`, `hdfs`, `http`,
    /// `registry_blob` or `registry_tag`.
    pub backend: BackendKind,
    /// Cap on traffic to and from this backend, divided among the origins.
    #[serde(default)]
    pub bandwidth: BackendBandwidthConfig,
}

/// The first rule whose namespace matches.
pub fn backend_for<'a>(
    backends: &'a [BackendConfig],
    namespace: &str,
) -> Option<&'a BackendConfig> {
    backends
        .iter()
        .find(|rule| rule.namespace.is_match(namespace))
}

/// A storage backend and its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// A local (or network-mounted) directory. Kraken's `testfs` server plays this role.
    Fs(FsBackendConfig),
    /// Amazon S3 or an S3-compatible server (MinIO, Ceph RGW).
    S3(S3BackendConfig),
    /// Google Cloud Storage.
    Gcs(GcsBackendConfig),
    /// HDFS through WebHDFS.
    Hdfs(HdfsBackendConfig),
    /// Read-only blob downloads from an HTTP URL template.
    Http(HttpBackendConfig),
    /// Read-only blobs from a Docker registry (e.g. pull-through from Docker Hub).
    RegistryBlob(RegistryBackendConfig),
    /// Read-only tags from a Docker registry.
    RegistryTag(RegistryBackendConfig),
}

impl BackendKind {
    /// The kind's key, as written in YAML.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Fs(_) => "fs",
            Self::S3(_) => "s3",
            Self::Gcs(_) => "gcs",
            Self::Hdfs(_) => "hdfs",
            Self::Http(_) => "http",
            Self::RegistryBlob(_) => "registry_blob",
            Self::RegistryTag(_) => "registry_tag",
        }
    }

    fn name_path(&self) -> Option<NamePath> {
        match self {
            Self::S3(c) => Some(c.name_path),
            Self::Gcs(c) => Some(c.name_path),
            Self::Hdfs(c) => Some(c.name_path),
            _ => None,
        }
    }
}

impl Validate for BackendKind {
    fn validate(&self) -> Result<(), ValidationError> {
        let result = match self {
            Self::Fs(c) => c.validate(),
            Self::S3(c) => c.validate(),
            Self::Gcs(c) => c.validate(),
            Self::Hdfs(c) => c.validate(),
            Self::Http(c) => c.validate(),
            Self::RegistryBlob(c) | Self::RegistryTag(c) => c.validate(),
        };
        result.map_err(|e| e.within(self.name()))
    }
}

/// How a blob digest or tag maps to an object name in the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamePath {
    /// Docker registry layout: `docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data`.
    #[default]
    ShardedDockerBlob,
    /// The name as is, under `root_directory`.
    Identity,
    /// Docker registry tag layout: `docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link`.
    DockerTag,
}

/// `fs:` — a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FsBackendConfig {
    /// Directory holding the objects; created if missing.
    pub root: PathBuf,
}

impl Validate for FsBackendConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            !self.root.as_os_str().is_empty(),
            "root",
            "missing: set the directory path",
        )
    }
}

/// `s3:` — an S3 bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3BackendConfig {
    /// AWS region, e.g. `us-west-1` (any value for most S3-compatible servers).
    pub region: String,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. `/kraken/default/`.
    pub root_directory: String,
    /// Object naming scheme.
    pub name_path: NamePath,
    /// Key of the credentials in `auth.s3`. Empty: the standard `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` (and optional `AWS_SESSION_TOKEN`) environment variables.
    pub username: String,
    /// Endpoint URL of an S3-compatible server, e.g. `http://127.0.0.1:9000`. Absent: AWS.
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint` (MinIO needs this).
    pub force_path_style: bool,
    /// Use plain HTTP to the endpoint (an `https://` endpoint is rewritten to `http://`).
    pub disable_ssl: bool,
    /// Part size of multipart uploads (S3's minimum is 5MiB). An upload holds at most two
    /// parts in memory; parts grow for blobs that would need more than S3's 10,000.
    #[serde(with = "crate::units::bytes")]
    pub upload_part_size: ByteSize,
    /// Blobs at least this large are uploaded in parts.
    #[serde(with = "crate::units::bytes")]
    pub multipart_threshold: ByteSize,
}

impl Default for S3BackendConfig {
    fn default() -> Self {
        Self {
            region: String::new(),
            bucket: String::new(),
            root_directory: "/".to_owned(),
            name_path: NamePath::default(),
            username: String::new(),
            endpoint: None,
            force_path_style: false,
            disable_ssl: false,
            upload_part_size: ByteSize::mib(64),
            multipart_threshold: ByteSize::mib(64),
        }
    }
}

impl Validate for S3BackendConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            !self.region.is_empty(),
            "region",
            "missing: set the AWS region (e.g. `us-east-1`)",
        )?;
        ensure(
            !self.bucket.is_empty(),
            "bucket",
            "missing: set the bucket name",
        )?;
        ensure(
            self.upload_part_size >= ByteSize::mib(5),
            "upload_part_size",
            "must be at least 5MiB, S3's minimum part size",
        )?;
        if let Some(endpoint) = &self.endpoint {
            url("endpoint", endpoint)?;
        }
        Ok(())
    }
}

/// `gcs:` — a Google Cloud Storage bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcsBackendConfig {
    /// Bucket name.
    pub bucket: String,
    /// Object prefix inside the bucket.
    pub root_directory: String,
    /// Object naming scheme.
    pub name_path: NamePath,
    /// Key of the credentials in `auth.gcs`. Empty: application default credentials.
    pub username: String,
    /// Endpoint URL of a GCS-compatible server (an emulator). Absent: Google.
    pub endpoint: Option<String>,
}

impl Validate for GcsBackendConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            !self.bucket.is_empty(),
            "bucket",
            "missing: set the bucket name",
        )?;
        if let Some(endpoint) = &self.endpoint {
            url("endpoint", endpoint)?;
        }
        Ok(())
    }
}

/// `hdfs:` — HDFS through WebHDFS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HdfsBackendConfig {
    /// WebHDFS name nodes, `host:port`, tried in order.
    pub name_nodes: Vec<String>,
    /// Directory holding the objects.
    pub root_directory: String,
    /// Object naming scheme.
    pub name_path: NamePath,
    /// HDFS user the requests act as.
    pub user_name: String,
    /// Buffer size of uploads.
    #[serde(with = "crate::units::bytes")]
    pub buffer_size: ByteSize,
}

impl Default for HdfsBackendConfig {
    fn default() -> Self {
        Self {
            name_nodes: Vec::new(),
            root_directory: "/infra/dockerRegistry/".to_owned(),
            name_path: NamePath::default(),
            user_name: String::new(),
            buffer_size: ByteSize::mib(64),
        }
    }
}

impl Validate for HdfsBackendConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            !self.name_nodes.is_empty(),
            "name_nodes",
            "missing: list at least one host:port",
        )?;
        for (index, node) in self.name_nodes.iter().enumerate() {
            host_port(&format!("name_nodes[{index}]"), node)?;
        }
        ensure(self.buffer_size.0 > 0, "buffer_size", "must be above 0")
    }
}

/// `http:` — read-only downloads by digest from a URL template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpBackendConfig {
    /// URL with one `%s` replaced by the digest's hex, e.g.
    /// `http://blobs.example.com/download?sha256=%s`.
    pub download_url: String,
    /// Retries of transient failures (refused connections, timeouts, 5xx, 429); a 404 is
    /// never retried.
    pub download_backoff: BackoffConfig,
    /// Timeout of a whole request, body included (Kraken's semantics): size it for the
    /// largest blob at the slowest expected rate.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for HttpBackendConfig {
    fn default() -> Self {
        Self {
            download_url: String::new(),
            download_backoff: BackoffConfig::default(),
            timeout: Duration::from_secs(60),
        }
    }
}

impl Validate for HttpBackendConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        url("download_url", &self.download_url)?;
        ensure(
            self.download_url.matches("%s").count() == 1,
            "download_url",
            "must contain `%s` exactly once, where the digest's hex goes",
        )?;
        positive_duration("timeout", self.timeout)?;
        nested("download_backoff", &self.download_backoff)
    }
}

/// Exponential backoff of retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    /// Whether failed requests are retried at all.
    pub enabled: bool,
    /// First delay; doubles on each retry.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Upper bound of the delay.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Retries before giving up.
    pub max_retries: u32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_retries: 5,
        }
    }
}

impl Validate for BackoffConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.enabled {
            positive_duration("initial", self.initial)?;
            ensure(
                self.max >= self.initial,
                "max",
                "must be at least `initial`",
            )?;
        }
        Ok(())
    }
}

/// `registry_blob:` / `registry_tag:` — a Docker registry read through its v2 API. Basic
/// credentials answer a `Basic` challenge directly and a `Bearer` one through the registry's
/// token server (Docker Hub's scheme); tokens are cached until shortly before they expire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryBackendConfig {
    /// Registry `host[:port]`, e.g. `index.docker.io` or `127.0.0.1:5000`.
    pub address: String,
    /// Longest the registry may stay silent within one request: connecting, sending the
    /// response headers, or between two chunks of a body. A large layer that keeps arriving
    /// is never cut off.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// TLS and credentials.
    pub security: RegistrySecurityConfig,
}

impl Default for RegistryBackendConfig {
    fn default() -> Self {
        Self {
            address: String::new(),
            timeout: Duration::from_secs(60),
            security: RegistrySecurityConfig::default(),
        }
    }
}

impl Validate for RegistryBackendConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            !self.address.is_empty() && !self.address.contains("://"),
            "address",
            format!(
                "`{}` is not a registry `host[:port]` (e.g. `index.docker.io`)",
                self.address
            ),
        )?;
        positive_duration("timeout", self.timeout)?;
        nested("security", &self.security)
    }
}

/// `security:` of a registry backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySecurityConfig {
    /// TLS to the registry.
    pub tls: RegistryTlsConfig,
    /// Basic authentication; an empty username means anonymous.
    pub basic: BasicAuthConfig,
    /// A Docker `config.json` (as `docker login` writes it) whose `auths` entry for this
    /// registry's host gives the credentials, instead of `basic`. Only that entry is read:
    /// the credentials go to this registry (and the token realm its challenge names), never
    /// to another host of the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_config: Option<PathBuf>,
}

impl Validate for RegistrySecurityConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        nested("basic", &self.basic)?;
        ensure(
            self.docker_config.is_none() || self.basic.username.is_empty(),
            "docker_config",
            "set either `basic` or `docker_config`, not both",
        )
    }
}

/// `security.tls:` of a registry backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryTlsConfig {
    /// Client-side TLS settings.
    pub client: RegistryTlsClientConfig,
    /// PEM file with CA certificates to trust besides the system roots (a private registry).
    pub ca: Option<PathBuf>,
}

/// `security.tls.client:` of a registry backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryTlsClientConfig {
    /// Talk plain HTTP (an insecure local registry). Never falls back silently: it is one or
    /// the other.
    pub disabled: bool,
}

/// HTTP basic authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// User name; empty for anonymous access.
    pub username: String,
    /// Password, inline. Prefer `password_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// File holding the password (one trailing newline is ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl BasicAuthConfig {
    /// The password from `password` or `password_file`.
    pub fn password(&self) -> Result<Option<Secret>, SecretError> {
        Secret::resolve(self.password.as_ref(), self.password_file.as_deref())
    }
}

impl Validate for BasicAuthConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        check_secret_pair(
            "password",
            self.password.as_ref(),
            self.password_file.as_ref(),
            false,
        )?;
        let has_password = self
            .password
            .as_ref()
            .is_some_and(|p| !p.expose().is_empty())
            || self.password_file.is_some();
        ensure(
            !has_password || !self.username.is_empty(),
            "username",
            "missing: a password is set, so the username is needed too",
        )
    }
}

/// `bandwidth:` of a backend — caps on traffic between the origins and this backend. The caps
/// are for the whole cluster and are divided by the number of origins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendBandwidthConfig {
    /// Whether the caps apply (`enabled`, as in some Kraken docs, is accepted too).
    #[serde(alias = "enabled")]
    pub enable: bool,
    /// Upload cap towards the backend in bits per second (integer or e.g. `8Gibit`).
    #[serde(with = "crate::units::bits_per_sec")]
    pub egress_bits_per_sec: u64,
    /// Download cap from the backend in bits per second.
    #[serde(with = "crate::units::bits_per_sec")]
    pub ingress_bits_per_sec: u64,
}

impl Default for BackendBandwidthConfig {
    fn default() -> Self {
        // Kraken's S3/GCS defaults: 8 Gbit/s egress, 80 Gbit/s ingress.
        Self {
            enable: false,
            egress_bits_per_sec: 8 << 30,
            ingress_bits_per_sec: 80 << 30,
        }
    }
}

impl Validate for BackendBandwidthConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.enable {
            ensure(
                self.egress_bits_per_sec > 0,
                "egress_bits_per_sec",
                "must be above 0 when enabled",
            )?;
            ensure(
                self.ingress_bits_per_sec > 0,
                "ingress_bits_per_sec",
                "must be above 0 when enabled",
            )?;
        }
        Ok(())
    }
}

/// `auth:` — credentials of the storage backends, keyed by the `username` the backends refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// S3 credentials by user name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub s3: BTreeMap<String, S3Credentials>,
    /// GCS credentials by user name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub gcs: BTreeMap<String, GcsCredentials>,
}

impl Validate for AuthConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        for (user, credentials) in &self.s3 {
            credentials
                .validate()
                .map_err(|e| within_user(e, "s3", user))?;
        }
        for (user, credentials) in &self.gcs {
            credentials
                .validate()
                .map_err(|e| within_user(e, "gcs", user))?;
        }
        Ok(())
    }
}

fn within_user(mut error: ValidationError, kind: &str, user: &str) -> ValidationError {
    // Built from segments because user names may contain dots.
    let mut path = KeyPath::root().key(kind).key(user);
    for segment in error.path.segments() {
        path = match segment {
            crate::tree::PathSegment::Key(key) => path.key(key.clone()),
            crate::tree::PathSegment::Index(index) => path.index(*index),
        };
    }
    error.path = path;
    error
}

/// `auth.s3.<user>:`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Credentials {
    /// Access key id (not secret on its own).
    pub aws_access_key_id: String,
    /// Secret access key, inline. Prefer `aws_secret_access_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_secret_access_key: Option<Secret>,
    /// File holding the secret access key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_secret_access_key_file: Option<PathBuf>,
}

impl S3Credentials {
    /// The secret access key from the inline value or the file.
    pub fn secret_access_key(&self) -> Result<Option<Secret>, SecretError> {
        Secret::resolve(
            self.aws_secret_access_key.as_ref(),
            self.aws_secret_access_key_file.as_deref(),
        )
    }
}

impl Validate for S3Credentials {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            !self.aws_access_key_id.is_empty(),
            "aws_access_key_id",
            "missing",
        )?;
        check_secret_pair(
            "aws_secret_access_key",
            self.aws_secret_access_key.as_ref(),
            self.aws_secret_access_key_file.as_ref(),
            true,
        )
    }
}

/// `auth.gcs.<user>:`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcsCredentials {
    /// Service account key JSON, inline. Prefer `access_blob_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_blob: Option<Secret>,
    /// File holding the service account key JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_blob_file: Option<PathBuf>,
}

impl GcsCredentials {
    /// The service account key from the inline value or the file.
    pub fn access_blob(&self) -> Result<Option<Secret>, SecretError> {
        Secret::resolve(self.access_blob.as_ref(), self.access_blob_file.as_deref())
    }
}

impl Validate for GcsCredentials {
    fn validate(&self) -> Result<(), ValidationError> {
        check_secret_pair(
            "access_blob",
            self.access_blob.as_ref(),
            self.access_blob_file.as_ref(),
            true,
        )
    }
}

/// What a component stores in its backends, which decides the kinds and name paths that make
/// sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Origins: blobs by digest.
    Blobs,
    /// Build-index: tags.
    Tags,
}

/// Validates a `backends:` list (at key `backends`) against `auth`.
pub(crate) fn validate_backends(
    backends: &[BackendConfig],
    auth: &AuthConfig,
    stored: Stored,
) -> Result<(), ValidationError> {
    for (index, rule) in backends.iter().enumerate() {
        let at = |e: ValidationError| e.within_index(index).within("backends");
        validate_rule(rule, auth, stored).map_err(at)?;
        // A catch-all earlier in the list makes this rule dead: first match wins.
        if let Some(earlier) = backends[..index]
            .iter()
            .position(|r| is_catch_all(&r.namespace))
        {
            return Err(at(ValidationError::at(
                "namespace",
                format!(
                    "this rule can never match: backends[{earlier}] has namespace `{}`, which \
                     matches everything and comes first (the first matching rule wins)",
                    backends[earlier].namespace.as_str()
                ),
            )));
        }
    }
    Ok(())
}

fn is_catch_all(pattern: &Pattern) -> bool {
    matches!(pattern.as_str(), "" | ".*" | "^.*" | "^.*$" | ".*$")
}

fn validate_rule(
    rule: &BackendConfig,
    auth: &AuthConfig,
    stored: Stored,
) -> Result<(), ValidationError> {
    nested("backend", &rule.backend)?;
    nested("bandwidth", &rule.bandwidth)?;
    let kind = rule.backend.name();
    match (stored, &rule.backend) {
        (Stored::Blobs, BackendKind::RegistryTag(_)) => {
            return Err(ValidationError::at(
                &format!("backend.{kind}"),
                "stores tags, but this component stores blobs: use `registry_blob`",
            ));
        }
        (Stored::Tags, BackendKind::RegistryBlob(_) | BackendKind::Http(_)) => {
            return Err(ValidationError::at(
                &format!("backend.{kind}"),
                "serves blobs, but this component stores tags (use `registry_tag`, `fs`, `s3`, `gcs` or `hdfs`)",
            ));
        }
        _ => {}
    }
    match (stored, rule.backend.name_path()) {
        (Stored::Blobs, Some(NamePath::DockerTag)) => {
            return Err(ValidationError::at(
                &format!("backend.{kind}.name_path"),
                "`docker_tag` names tags, but this component stores blobs: use `sharded_docker_blob` or `identity`",
            ));
        }
        (Stored::Tags, Some(NamePath::ShardedDockerBlob)) => {
            return Err(ValidationError::at(
                &format!("backend.{kind}.name_path"),
                "`sharded_docker_blob` names blobs by digest, but this component stores tags: use `docker_tag` or `identity`",
            ));
        }
        _ => {}
    }
    let (users, username, auth_key) = match &rule.backend {
        BackendKind::S3(c) => (auth.s3.keys().collect::<Vec<_>>(), &c.username, "auth.s3"),
        BackendKind::Gcs(c) => (auth.gcs.keys().collect::<Vec<_>>(), &c.username, "auth.gcs"),
        _ => return Ok(()),
    };
    if !username.is_empty() && !users.contains(&username) {
        let known = if users.is_empty() {
            format!("`{auth_key}` is empty")
        } else {
            format!(
                "known users: {}",
                users
                    .iter()
                    .map(|u| format!("`{u}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(ValidationError::at(
            &format!("backend.{kind}.username"),
            format!("user `{username}` has no credentials under `{auth_key}` ({known})"),
        ));
    }
    Ok(())
}

fn url(key: &str, value: &str) -> Result<(), ValidationError> {
    ensure(
        value.starts_with("http://") || value.starts_with("https://"),
        key,
        format!("`{value}` is not an http:// or https:// URL"),
    )
}
