//! `auth:` and `registry_tls:` of the proxy — who may push and pull through its registry port,
//! and the certificate it serves there.
//!
//! Docker clients expect the distribution token flow: a request without credentials gets `401`
//! with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`, the client fetches a short-lived
//! token from the realm (sending the user's password with HTTP basic), and retries with it.
//! HTTP basic on every request is accepted too, for simple clients.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pattern::Pattern;
use crate::validate::{Validate, ValidationError, ensure};

/// `auth:` of the proxy's registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryAuthConfig {
    /// Users and their bcrypt password hashes (`$2y$…`/`$2b$…`, as `htpasswd -B` writes them).
    pub users: BTreeMap<String, String>,
    /// An htpasswd file of `user:bcrypt-hash` lines, read at start, merged with `users`.
    pub htpasswd_file: Option<PathBuf>,
    /// Whether requests without credentials may pull.
    pub anonymous_pull: bool,
    /// Whether requests without credentials may push and move tags. Development only.
    pub anonymous_push: bool,
    /// Who may do what where; with no grant, every user may pull and push everywhere.
    pub grants: Vec<GrantConfig>,
    /// The bearer tokens the proxy issues at `/auth/token`.
    pub token: TokenConfig,
}

impl Default for RegistryAuthConfig {
    fn default() -> Self {
        Self {
            users: BTreeMap::new(),
            htpasswd_file: None,
            anonymous_pull: true,
            anonymous_push: false,
            grants: Vec::new(),
            token: TokenConfig::default(),
        }
    }
}

impl Validate for RegistryAuthConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        for (user, hash) in &self.users {
            ensure(
                valid_user(user),
                "users",
                format!(
                    "user name `{}` must be 1-64 letters, digits, `.`, `_`, `-` or `@`",
                    user.escape_debug()
                ),
            )?;
            ensure(
                is_bcrypt(hash),
                "users",
                format!(
                    "the password of `{user}` must be a bcrypt hash (`$2y$…`, e.g. from \
                     `htpasswd -nbB {user} PASSWORD`), not plain text"
                ),
            )?;
        }
        for (index, grant) in self.grants.iter().enumerate() {
            crate::validate::nested(&format!("grants[{index}]"), grant)?;
        }
        crate::validate::nested("token", &self.token)
    }
}

/// Whether `name` is acceptable as a registry user name.
pub fn valid_user(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// Whether `hash` looks like a bcrypt hash (the only kind accepted: fast hashes of passwords
/// are offline-crackable).
pub fn is_bcrypt(hash: &str) -> bool {
    ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) && hash.len() == 60
}

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryAction {
    Pull,
    Push,
}

/// One rule: `users` may do `actions` on repositories matching `repositories`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// User names; `*` is every authenticated user.
    pub users: Vec<String>,
    /// A regex over repository names (unanchored; write `^team/` to anchor).
    pub repositories: Pattern,
    pub actions: Vec<RegistryAction>,
}

impl Validate for GrantConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            !self.users.is_empty(),
            "users",
            "name at least one user (or `*`)",
        )?;
        ensure(
            !self.actions.is_empty(),
            "actions",
            "name at least one of `pull`, `push`",
        )
    }
}

/// `auth.token:` — the bearer tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// How long a token is valid.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// The `service` named in challenges and tokens.
    pub service: String,
    /// The token endpoint's URL as clients reach it; by default `http(s)://<Host>/auth/token`
    /// from the request.
    pub realm: Option<String>,
    /// PEM private key (EC P-256) tokens are signed with. Without one a key is generated at
    /// start: tokens then do not survive a restart (clients fetch new ones) and several
    /// proxies behind one name must share a file.
    pub signing_key_file: Option<PathBuf>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            service: "kraken-proxy".to_owned(),
            realm: None,
            signing_key_file: None,
        }
    }
}

impl Validate for TokenConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        ensure(
            self.ttl >= Duration::from_secs(10) && self.ttl <= Duration::from_secs(24 * 3600),
            "ttl",
            "must be between 10s and 24h",
        )?;
        ensure(
            !self.service.is_empty() && !self.service.contains('"'),
            "service",
            "must be a non-empty name without quotes",
        )
    }
}

/// `registry_tls:` — the certificate the registry port serves (not the cluster mTLS: clients
/// are Docker, containerd, skopeo). Both or neither.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryTlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

impl RegistryTlsConfig {
    /// The `(cert, key)` paths when TLS is on.
    pub fn files(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.cert.as_ref().zip(self.key.as_ref())
    }
}

impl Validate for RegistryTlsConfig {
    fn validate(&self) -> Result<(), ValidationError> {
        match (&self.cert, &self.key) {
            (Some(_), None) => Err(ValidationError::at(
                "key",
                "missing: `cert` and `key` are set together",
            )),
            (None, Some(_)) => Err(ValidationError::at(
                "cert",
                "missing: `cert` and `key` are set together",
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_passwords_and_odd_names_are_refused() {
        let mut config = RegistryAuthConfig::default();
        config.users.insert("ci".into(), "hunter2".into());
        let error = config.validate().unwrap_err();
        assert!(error.message.contains("bcrypt"), "{error:?}");
        let mut config = RegistryAuthConfig::default();
        config.users.insert(
            "a b".into(),
            "$2y$10$abcdefghijklmnopqrstuuMBQw9hrfiRS2Y8lfLHnJYyNjgQX1H6K".into(),
        );
        assert!(config.validate().unwrap_err().message.contains("user name"));
    }

    #[test]
    fn registry_tls_is_all_or_none() {
        let half = RegistryTlsConfig {
            cert: Some("c.pem".into()),
            key: None,
        };
        assert!(half.validate().is_err());
        assert!(RegistryTlsConfig::default().validate().is_ok());
    }
}
