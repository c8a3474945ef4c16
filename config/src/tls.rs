//! `tls:` — where this component's certificate, key and the cluster CA are. Loading them and
//! building rustls configs is the TLS crate's job; this is only the paths.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::validate::{Validate, ValidationError};

/// Certificate paths for mutual TLS between components and between peers.
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
}

impl Validate for TlsSection {
    fn validate(&self) -> Result<(), ValidationError> {
        // Half a TLS setup is a mistake, not a choice: every link is mutual TLS, so a component
        // needs its own certificate and key and the CA to check the other side.
        if !self.is_configured() {
            return Ok(());
        }
        for (key, value) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            match value {
                None => {
                    return Err(ValidationError::at(
                        key,
                        "missing: `ca`, `cert` and `key` are set together (or none of them)",
                    ));
                }
                Some(path) if path.as_os_str().is_empty() => {
                    return Err(ValidationError::at(key, "must be a file path"));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}
