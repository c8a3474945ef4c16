//! Semantic checks that run after a config deserialized: things serde cannot express, such as
//! "`static` or `dns` but not both" or "at least one replica".

use std::fmt;
use std::time::Duration;

use crate::tree::{KeyPath, PathSegment};

/// A config section that can check itself. Paths in the error are relative to the section;
/// the caller prefixes its own key with [`ValidationError::within`].
pub trait Validate {
    fn validate(&self) -> Result<(), ValidationError>;
}

/// A failed semantic check: the key it is about and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// The key path, from the top of the document once it has bubbled up.
    pub path: KeyPath,
    /// What is wrong and what would be right.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ValidationError {}

impl ValidationError {
    /// An error at `path`.
    pub fn new(path: KeyPath, message: impl Into<String>) -> Self {
        Self {
            path,
            message: message.into(),
        }
    }

    /// An error about `key` (a dotted path such as `conn.bandwidth.enable` or `hosts[0]`).
    pub fn at(key: &str, message: impl Into<String>) -> Self {
        Self {
            path: KeyPath::parse(key),
            message: message.into(),
        }
    }

    /// An error about the section itself rather than one of its keys.
    pub fn here(message: impl Into<String>) -> Self {
        Self {
            path: KeyPath::root(),
            message: message.into(),
        }
    }

    /// Prefixes the path with the key of the enclosing section.
    #[must_use]
    pub fn within(mut self, key: &str) -> Self {
        for segment in KeyPath::parse(key).segments().iter().rev() {
            self.path.prepend(segment.clone());
        }
        self
    }

    /// Prefixes the path with a list index (for sections inside lists).
    #[must_use]
    pub fn within_index(mut self, index: usize) -> Self {
        self.path.prepend(PathSegment::Index(index));
        self
    }
}

/// Validates a nested section and prefixes errors with its key.
pub(crate) fn nested(key: &str, section: &dyn Validate) -> Result<(), ValidationError> {
    section.validate().map_err(|e| e.within(key))
}

/// Fails with `message` at `key` unless `ok`.
pub(crate) fn ensure(
    ok: bool,
    key: &str,
    message: impl Into<String>,
) -> Result<(), ValidationError> {
    if ok {
        Ok(())
    } else {
        Err(ValidationError::at(key, message))
    }
}

pub(crate) fn positive_duration(key: &str, value: Duration) -> Result<(), ValidationError> {
    ensure(
        !value.is_zero(),
        key,
        "must be longer than 0s (e.g. `30s`, `5m`)",
    )
}

/// `host:port` with a non-empty host and a numeric port.
pub(crate) fn host_port(key: &str, value: &str) -> Result<(), ValidationError> {
    ensure(is_host_port(value), key, not_host_port(value))
}

pub(crate) fn is_host_port(value: &str) -> bool {
    value.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
    })
}

pub(crate) fn not_host_port(value: &str) -> String {
    format!("`{value}` is not `host:port` (e.g. `origin1:15002`)")
}
