//! `tls:` — where this component's certificate, key and the cluster CA are. Loading them and
//! building rustls configs is the TLS crate's job; this is only the paths.
//!
//! [`TlsSection`] is the one representation of the section: the loader deserializes and
//! validates it, and the binary asks the same [`TlsSection::files`] for the three paths it hands
//! to `kraken_tls::TlsMaterial::load`, so `kraken config check` and a starting component cannot
//! disagree about what a section means.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::validate::{Validate, ValidationError};

/// The `tls:` section of every component's configuration: certificate paths for mutual TLS
/// between components and between peers.
///
/// All or none: a section gives `ca`, `cert` and `key` together, or none of them (an absent
/// section, `tls:` with nothing under it, or `tls: {}`). A partial section is a config error
/// naming the missing key. Every component runs with mutual TLS, so starting one needs a
/// complete section; `kraken certs --out DIR` writes a development PKI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file with the cluster CA certificate(s) that peers' certificates must chain to.
    pub ca: Option<PathBuf>,
    /// PEM file with this component's certificate chain (leaf first).
    pub cert: Option<PathBuf>,
    /// PEM file with the private key of `cert`. The file itself is secret; its path is not.
    pub key: Option<PathBuf>,
}

impl TlsSection {
    /// Whether any path is set (validation guarantees then all are).
    pub fn is_configured(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The `[ca, cert, key]` paths of a complete section, `None` when no key is set.
    ///
    /// A partial section, or an empty path, is the error validation reports: its key path is
    /// the first missing key (relative to the section) and its message names any other.
    pub fn files(&self) -> Result<Option<[&Path; 3]>, ValidationError> {
        // Half a TLS setup is a mistake, not a choice: every link is mutual TLS, so a component
        // needs its own certificate and key and the CA to check the other side.
        if !self.is_configured() {
            return Ok(None);
        }
        let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else {
            let missing: Vec<&str> = [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)]
                .into_iter()
                .filter_map(|(key, value)| value.is_none().then_some(key))
                .collect();
            let also: String = missing[1..]
                .iter()
                .map(|key| format!(" (and so is `{key}`)"))
                .collect();
            return Err(ValidationError::at(
                missing[0],
                format!("missing{also}: `ca`, `cert` and `key` are set together (or none of them)"),
            ));
        };
        for (name, path) in [("ca", ca), ("cert", cert), ("key", key)] {
            if path.as_os_str().is_empty() {
                return Err(ValidationError::at(name, "must be a file path"));
            }
        }
        Ok(Some([ca.as_path(), cert.as_path(), key.as_path()]))
    }
}

impl Validate for TlsSection {
    fn validate(&self) -> Result<(), ValidationError> {
        self.files().map(|_| ())
    }
}
