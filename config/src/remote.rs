//! Other clusters: how this one reaches a remote cluster it replicates to (`remotes:`), and
//! which remote clusters' CAs it accepts calls from (`trusted_remotes:`).
//!
//! Every cluster has its own CA, so a remote is a *name* with its own TLS settings, never a
//! bare address: requests name the remote cluster (`ReplicateToRemote{remote_cluster}`), and
//! the TLS material to dial it comes from here. A trusted remote's certificates are held to
//! the short foreign access table (replication only) whatever role they claim.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pattern::Pattern;
use crate::tls::TlsSection;
use crate::tree::KeyPath;
use crate::validate::{Validate, ValidationError, ensure};

/// `remotes.<name>.tls:` — mutual TLS towards one remote cluster: its CA, and the certificate
/// presented to it (this component's own `tls:` certificate unless both `cert` and `key` are
/// set here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteTlsSection {
    /// PEM file with the remote cluster's CA certificate(s): its servers' certificates must
    /// chain to it.
    pub ca: PathBuf,
    /// PEM file with the certificate presented to the remote (chaining to *our* CA, which the
    /// remote lists under its `trusted_remotes`). Absent: `tls.cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM file with the private key of `cert`. Absent: `tls.key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Host name the remote's server certificates are checked against. Absent: the host part
    /// of each address dialed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl RemoteTlsSection {
    /// The `(cert, key)` to present to the remote: this section's, else `own`'s (`None` when
    /// neither is set, which validation of `own` reports).
    pub fn identity<'a>(&'a self, own: &'a TlsSection) -> Option<(&'a Path, &'a Path)> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => own.cert.as_deref().zip(own.key.as_deref()),
        }
    }
}

impl Validate for RemoteTlsSection {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            !self.ca.as_os_str().is_empty(),
            "ca",
            "missing: the remote cluster's CA certificate (PEM), which its servers' certificates \
             chain to",
        )?;
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return Err(ValidationError::at(
                    "key",
                    "missing: `cert` and `key` are set together, or neither (then this \
                     component's `tls.cert` and `tls.key` are presented)",
                ));
            }
            (None, Some(_)) => {
                return Err(ValidationError::at(
                    "cert",
                    "missing: `cert` and `key` are set together, or neither (then this \
                     component's `tls.cert` and `tls.key` are presented)",
                ));
            }
            _ => {}
        }
        for (key, path) in [("cert", &self.cert), ("key", &self.key)] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(ValidationError::at(key, "must be a file path"));
            }
        }
        if let Some(name) = &self.server_name {
            ensure(
                !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == ':'),
                "server_name",
                format!("`{name}` is not a host name (e.g. `build-index.b.example.com`)"),
            )?;
        }
        Ok(())
    }
}

/// `trusted_remotes.<name>:` of an origin — a remote cluster whose origins may upload blobs
/// here (replication), and nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustedRemote {
    /// PEM file with the remote cluster's CA certificate(s). It must differ from our own CA.
    pub ca: PathBuf,
}

impl Validate for TrustedRemote {
    fn validate(&self) -> Result<(), ValidationError> {
        trusted_ca(&self.ca)
    }
}

/// `trusted_remotes.<name>:` of a build-index — a remote cluster whose build-index may put
/// the tags matching `tags` here (and whose origins may ask for our origins' addresses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustedBuildIndexRemote {
    /// PEM file with the remote cluster's CA certificate(s). It must differ from our own CA.
    pub ca: PathBuf,
    /// Regexes (unanchored) of the `repository:tag` names the remote may put; a put of any
    /// other tag is `PERMISSION_DENIED`.
    pub tags: Vec<Pattern>,
}

impl Default for TrustedBuildIndexRemote {
    fn default() -> Self {
        Self {
            ca: PathBuf::new(),
            tags: vec![Pattern::any()],
        }
    }
}

impl TrustedBuildIndexRemote {
    /// Whether the remote may put `tag` (`repository:tag`).
    pub fn may_put(&self, tag: &str) -> bool {
        self.tags.iter().any(|rule| rule.is_match(tag))
    }
}

impl Validate for TrustedBuildIndexRemote {
    fn validate(&self) -> Result<(), ValidationError> {
        trusted_ca(&self.ca)?;
        ensure(
            !self.tags.is_empty(),
            "tags",
            "no rules: list the tag regexes this remote may put (`.*` for every tag), or \
             remove the remote",
        )
    }
}

/// `remotes.<name>.bandwidth:` of an origin — the cap on what this cluster sends to one
/// remote, so replication never starves local pulls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteEgress {
    /// Whether the cap applies.
    #[serde(alias = "enabled")]
    pub enable: bool,
    /// Cap for the whole cluster in bits per second (integer or e.g. `800Mbit`), divided
    /// evenly among the origins in `cluster.hosts`.
    #[serde(with = "crate::units::bits_per_sec")]
    pub egress_bits_per_sec: u64,
}

impl Default for RemoteEgress {
    fn default() -> Self {
        Self {
            enable: false,
            egress_bits_per_sec: 8 << 30,
        }
    }
}

impl Validate for RemoteEgress {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            !self.enable || self.egress_bits_per_sec > 0,
            "egress_bits_per_sec",
            "must be above 0 when enabled",
        )
    }
}

/// `(name, ca)` of every trusted remote, in name order: what
/// `kraken_tls::TrustDomains::load` takes.
pub fn trusted_cas<'a, T: 'a>(
    remotes: &'a BTreeMap<String, T>,
    ca: impl Fn(&T) -> &Path,
) -> Vec<(String, PathBuf)> {
    remotes
        .iter()
        .map(|(name, remote)| (name.clone(), ca(remote).to_owned()))
        .collect()
}

/// Validates every entry of a `key:` map of remote clusters: the name, then the entry.
pub(crate) fn validate_remotes<T: Validate>(
    key: &str,
    remotes: &BTreeMap<String, T>,
) -> Result<(), ValidationError> {
    for (name, remote) in remotes {
        // Built from segments: a bad name may hold dots.
        let path = KeyPath::root().key(key).key(name.clone());
        if !is_remote_name(name) {
            return Err(ValidationError::new(
                path,
                format!(
                    "`{name}` is not a remote cluster name: use lowercase letters, digits and \
                     `-` (at most 63), e.g. `us-west`"
                ),
            ));
        }
        remote.validate().map_err(|mut error| {
            for segment in path.segments().iter().rev() {
                error.path.prepend(segment.clone());
            }
            error
        })?;
    }
    Ok(())
}

/// `[a-z0-9-]{1,63}`: a name that reads the same in a config key, a metric label and a log.
pub fn is_remote_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn trusted_ca(ca: &Path) -> Result<(), ValidationError> {
    ensure(
        !ca.as_os_str().is_empty(),
        "ca",
        "missing: the remote cluster's CA certificate (PEM) its components' certificates chain to",
    )
}
